//! How the config file's sizes, durations and counts are read (serde `deserialize_with`).
//!
//! Key idea: take what people write and say what is expected in words. A size or a duration
//! may be a string (`"6MiB"`, `"30s"`) or a plain integer (bytes; seconds), kept as text for
//! [`super::units`] to check like the same flag; a wrong type is refused with an example
//! ("a size such as \"6MiB\" or 262144 (bytes)"), never serde's "expected u32".

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, Unexpected, Visitor};

/// What a size key takes, in words.
const SIZE: &str = "a size such as \"6MiB\", \"5MB\" or 262144 (bytes)";
/// What a duration key takes, in words.
const DURATION: &str =
    "a duration such as \"30s\", \"500ms\" or \"2m\", or whole seconds such as 30";
/// What a count key takes, in words.
const COUNT: &str = "a whole number such as 3 (without quotes)";

/// What a command key takes, in words.
const COMMAND: &str =
    "a program's absolute path such as \"/usr/local/bin/may-upload\", or a list of the program and its arguments such as [\"/usr/bin/nmcli-check\", \"wwan0\"]";

/// A command: one program path (no arguments, no shell), or a list of program and arguments.
pub(super) fn command<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    d.deserialize_any(Argv).map(Some)
}

/// A size: a string or a non-negative integer of bytes.
pub(super) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    d.deserialize_any(Text(SIZE)).map(Some)
}

/// A duration: a string or a non-negative integer of seconds.
pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    d.deserialize_any(Text(DURATION)).map(Some)
}

/// A count: a non-negative integer that fits `T`.
pub(super) fn count<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    d.deserialize_any(Count(PhantomData)).map(Some)
}

/// Any value, skipped: what a collected unknown key holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Ignored;

impl<'de> serde::Deserialize<'de> for Ignored {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de::IgnoredAny::deserialize(d).map(|_| Ignored)
    }
}

/// Text, or an integer written as its digits.
struct Text(&'static str);

impl Visitor<'_> for Text {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        u64::try_from(v)
            .map(|v| v.to_string())
            .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
    }
}

/// A string (the program alone) or a list of strings (program and arguments).
struct Argv;

impl<'de> Visitor<'de> for Argv {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(COMMAND)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
        Ok(vec![v.to_string()])
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut argv = Vec::new();
        while let Some(arg) = seq.next_element::<String>()? {
            argv.push(arg);
        }
        Ok(argv)
    }
}

/// A non-negative integer that fits `T`.
struct Count<T>(PhantomData<T>);

impl<T: TryFrom<u64>> Visitor<'_> for Count<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(COUNT)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &"a smaller number"))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        let n = u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))?;
        self.visit_u64(n)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Keys {
        #[serde(default, deserialize_with = "super::size")]
        size: Option<String>,
        #[serde(default, deserialize_with = "super::duration")]
        wait: Option<String>,
        #[serde(default, deserialize_with = "super::count")]
        n: Option<u32>,
    }

    fn keys(text: &str) -> Result<Keys, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn integers_and_strings_are_both_taken() {
        let k = keys("size = 262144\nwait = 30\nn = 3").unwrap();
        assert_eq!(
            (k.size.as_deref(), k.wait.as_deref(), k.n),
            (Some("262144"), Some("30"), Some(3))
        );
        let k = keys("size = \"6MiB\"\nwait = \"30s\"").unwrap();
        assert_eq!(
            (k.size.as_deref(), k.wait.as_deref()),
            (Some("6MiB"), Some("30s"))
        );
        let k = keys("").unwrap();
        assert_eq!((k.size, k.wait, k.n), (None, None, None));
    }

    #[test]
    fn a_wrong_type_is_refused_in_words() {
        let e = keys("n = \"3\"").unwrap_err();
        assert!(e.contains("expected a whole number such as 3"), "{e}");
        assert!(!e.contains("u32"), "{e}");
        let e = keys("size = 1.5").unwrap_err();
        assert!(e.contains("expected a size such as \"6MiB\""), "{e}");
        let e = keys("wait = true").unwrap_err();
        assert!(e.contains("expected a duration such as \"30s\""), "{e}");
        let e = keys("size = -1").unwrap_err();
        assert!(e.contains("-1") && e.contains("a size such as"), "{e}");
        let e = keys("n = 5000000000").unwrap_err();
        assert!(e.contains("a smaller number"), "{e}");
    }
}
