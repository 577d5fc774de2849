//! [`FileKey`]: how the store names a file, built once from its path.
//!
//! Key idea: the key is the file's absolute path as UTF-8 text (symlinks in it are not
//! resolved), so a record says which file it is about and a key turns back into the path
//! without a lookup. A path that is not UTF-8 has no key: such a file is refused, by name.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A file's key in the store: its absolute path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct FileKey(String);

impl FileKey {
    /// The key of the file at `path` (made absolute against the working directory).
    pub(crate) fn for_path(path: &Path) -> Result<Self> {
        let abs = std::path::absolute(path)
            .map_err(|e| Error::source_file(path, format!("cannot make the path absolute: {e}")))?;
        abs.to_str()
            .map(|s| Self(s.to_string()))
            .ok_or_else(|| Error::source_file(path, "path is not valid UTF-8; rename the file"))
    }

    /// The file's absolute path.
    pub(crate) fn path(&self) -> &Path {
        Path::new(&self.0)
    }

    /// The key as text (what the database and the status snapshot hold).
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Tests name files by literal absolute paths.
#[cfg(test)]
impl From<&str> for FileKey {
    fn from(path: &str) -> Self {
        Self(path.to_string())
    }
}

impl fmt::Display for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_the_absolute_path_and_turns_back_into_it() {
        let k = FileKey::for_path(Path::new("/spool/a.mp4")).unwrap();
        assert_eq!(k.as_str(), "/spool/a.mp4");
        assert_eq!(k.path(), Path::new("/spool/a.mp4"));
        let rel = FileKey::for_path(Path::new("b.bin")).unwrap();
        assert!(rel.path().is_absolute() && rel.as_str().ends_with("/b.bin"));
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"/spool/a.mp4\"");
    }

    #[test]
    fn a_path_that_is_not_utf8_has_no_key_and_the_error_names_it() {
        use std::os::unix::ffi::OsStrExt;
        let bad = Path::new(std::ffi::OsStr::from_bytes(b"/spool/\xff.bin"));
        let e = FileKey::for_path(bad).unwrap_err().to_string();
        assert!(e.contains("not valid UTF-8"), "{e}");
    }
}
