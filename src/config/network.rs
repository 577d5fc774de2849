//! `[network]` checked: interface names Linux can have, `bind_interface` among `interfaces`,
//! a condition that is an absolute program path, intervals above zero.

use std::time::Duration;

use super::file::RawNetwork;
use super::units::parse_duration;
use crate::error::{Error, Result};
use crate::policy::network::{
    interface_name_problem, ConditionSettings, NetworkSettings, CONDITION_INTERVAL,
    CONDITION_TIMEOUT,
};

/// Checks the `[network]` keys.
pub(super) fn resolve(raw: &RawNetwork) -> Result<NetworkSettings> {
    let interfaces = raw.interfaces.clone().unwrap_or_default();
    if raw.interfaces.as_ref().is_some_and(Vec::is_empty) {
        return Err(Error::config(
            "network.interfaces is empty, so nothing could ever be sent: list the interfaces uploads may use, e.g. [\"wlan0\", \"eth0\"], or remove the key to allow any",
        ));
    }
    for name in &interfaces {
        check_name(name, "network.interfaces")?;
    }
    if let Some(name) = &raw.bind_interface {
        check_name(name, "network.bind_interface")?;
        if !interfaces.is_empty() && !interfaces.contains(name) {
            return Err(Error::config(format!(
                "network.bind_interface = {name:?} is not in network.interfaces {interfaces:?}: uploads bound to it would never be allowed; add it to the list or bind to one of them"
            )));
        }
    }
    Ok(NetworkSettings {
        interfaces,
        bind_interface: raw.bind_interface.clone(),
        condition: condition(raw)?,
    })
}

fn check_name(name: &str, key: &str) -> Result<()> {
    match interface_name_problem(name) {
        Some(why) => Err(Error::config(format!(
            "{key}: {name:?} {why}: give the name `ip link` shows, e.g. \"wlan0\""
        ))),
        None => Ok(()),
    }
}

fn condition(raw: &RawNetwork) -> Result<Option<ConditionSettings>> {
    let Some(argv) = &raw.condition else {
        if raw.condition_interval.is_some() || raw.condition_timeout.is_some() {
            return Err(Error::config(
                "network.condition_interval and network.condition_timeout are for network.condition, which is not set",
            ));
        }
        return Ok(None);
    };
    let program = argv.first().map(String::as_str).unwrap_or_default();
    if program.is_empty() {
        return Err(Error::config(
            "network.condition is empty: give the program's absolute path, e.g. \"/usr/local/bin/may-upload\", or a list of it and its arguments",
        ));
    }
    if !program.starts_with('/') {
        return Err(Error::config(format!(
            "network.condition: {program:?} is not an absolute path: give the program's full path, e.g. \"/usr/local/bin/may-upload\" (it runs without a shell, and the service's PATH is not yours)"
        )));
    }
    let interval = positive(
        &raw.condition_interval,
        "network.condition_interval",
        CONDITION_INTERVAL,
    )?;
    let timeout = positive(
        &raw.condition_timeout,
        "network.condition_timeout",
        CONDITION_TIMEOUT,
    )?;
    Ok(Some(ConditionSettings {
        argv: argv.clone(),
        interval,
        timeout,
    }))
}

fn positive(v: &Option<String>, key: &str, default: Duration) -> Result<Duration> {
    let Some(text) = v else {
        return Ok(default);
    };
    let d = parse_duration(text).map_err(|e| Error::config(format!("{key}: {e}")))?;
    if d.is_zero() {
        return Err(Error::config(format!(
            "{key} must be above 0, e.g. \"{}s\" (the default)",
            default.as_secs()
        )));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{from_toml, Env};

    const BASE: &str =
        "state_dir = \"/s\"\n[server]\nendpoint = \"http://h/files/\"\n[spool]\ndir = \"/sp\"\n";

    fn config(text: &str) -> std::result::Result<crate::config::Config, String> {
        from_toml(&format!("{BASE}[network]\n{text}"), "ferry.toml")
            .and_then(|r| r.resolve(&Env::default()))
            .map_err(|e| e.to_string())
    }

    /// The daemon's `[network]`; the transport binds to the same interface.
    fn network(text: &str) -> NetworkSettings {
        let c = config(text).unwrap();
        let n = c.daemon.unwrap().network;
        assert_eq!(c.http.bind_interface, n.bind_interface);
        n
    }

    fn err(text: &str) -> String {
        match config(text) {
            Ok(c) => panic!("accepted {text:?}: {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn absent_means_any_interface_and_no_condition() {
        assert_eq!(network(""), NetworkSettings::default());
    }

    #[test]
    fn every_key_is_read() {
        let n = network(
            "interfaces = [\"wlan0\", \"eth0\"]\nbind_interface = \"wlan0\"\ncondition = [\"/usr/bin/check\", \"wwan0\"]\ncondition_interval = \"30s\"\ncondition_timeout = 5\n",
        );
        assert_eq!(n.interfaces, ["wlan0", "eth0"]);
        assert_eq!(n.bind_interface.as_deref(), Some("wlan0"));
        assert_eq!(
            n.condition,
            Some(ConditionSettings {
                argv: vec!["/usr/bin/check".into(), "wwan0".into()],
                interval: Duration::from_secs(30),
                timeout: Duration::from_secs(5),
            })
        );
    }

    #[test]
    fn a_condition_may_be_one_path_and_has_defaults() {
        let n = network("condition = \"/usr/local/bin/may-upload\"");
        assert_eq!(
            n.condition,
            Some(ConditionSettings {
                argv: vec!["/usr/local/bin/may-upload".into()],
                interval: Duration::from_secs(60),
                timeout: Duration::from_secs(10),
            })
        );
        let n = network("bind_interface = \"eth0\"");
        assert_eq!(n.bind_interface.as_deref(), Some("eth0"));
        assert!(n.interfaces.is_empty(), "bind alone allows any route");
    }

    #[test]
    fn errors_name_the_key_and_what_to_do() {
        let cases = [
            ("interfaces = []", "network.interfaces is empty"),
            ("interfaces = [\"\"]", "network.interfaces: \"\" is empty"),
            (
                "interfaces = [\"wlan0\", \"a_very_long_name0\"]",
                "longer than 15 bytes",
            ),
            (
                "interfaces = [\"eth0/1\"]",
                "network.interfaces: \"eth0/1\" holds a '/'",
            ),
            (
                "bind_interface = \"wl an\"",
                "network.bind_interface: \"wl an\"",
            ),
            (
                "interfaces = [\"eth0\"]\nbind_interface = \"wlan0\"",
                "network.bind_interface = \"wlan0\" is not in network.interfaces",
            ),
            ("condition = \"may-upload\"", "not an absolute path"),
            ("condition = []", "network.condition is empty"),
            ("condition = 3", "a program's absolute path"),
            ("condition = [\"/bin/x\", 3]", "invalid type"),
            (
                "condition = \"/bin/true\"\ncondition_interval = \"0s\"",
                "network.condition_interval must be above 0",
            ),
            (
                "condition = \"/bin/true\"\ncondition_timeout = 0",
                "network.condition_timeout must be above 0",
            ),
            (
                "condition = \"/bin/true\"\ncondition_timeout = \"ten\"",
                "network.condition_timeout",
            ),
            (
                "condition_interval = \"5s\"",
                "network.condition, which is not set",
            ),
            ("interface = [\"wlan0\"]", "unknown field `interface`"),
        ];
        for (text, want) in cases {
            let e = err(text);
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
