//! The `[network]` settings and the policies they make: which interfaces uploads may leave
//! through ([`super::interfaces`]) and a condition command ([`super::condition`]).
//!
//! Key idea: both are ordinary [`Policy`]s for the daemon's gate; `bind_interface` is not a
//! policy but a socket option the transport sets on every upload connection, so that even a
//! route that changes between the gate's check and the send cannot carry a byte elsewhere.

use std::sync::Arc;
use std::time::Duration;

use super::condition::ConditionPolicy;
use super::interfaces::InterfacePolicy;
use super::Policy;
use crate::clock::Clock;

/// `network.condition_interval` when unset.
pub(crate) const CONDITION_INTERVAL: Duration = Duration::from_secs(60);
/// `network.condition_timeout` when unset.
pub(crate) const CONDITION_TIMEOUT: Duration = Duration::from_secs(10);

/// `[network]`, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NetworkSettings {
    /// Uploads go only while the route to the endpoint leaves through one of these; empty: any.
    pub interfaces: Vec<String>,
    /// Every upload socket is bound to this interface (SO_BINDTODEVICE).
    pub bind_interface: Option<String>,
    /// The condition command, if any.
    pub condition: Option<ConditionSettings>,
}

/// `network.condition` and its timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConditionSettings {
    /// Program (an absolute path) and arguments; no shell.
    pub argv: Vec<String>,
    /// It runs at most this often.
    pub interval: Duration,
    /// A run taking longer is killed and counts as "wait".
    pub timeout: Duration,
}

impl NetworkSettings {
    /// The policies these settings ask for (none when `[network]` sets neither `interfaces`
    /// nor `condition`), for the uploads to `endpoint`. A condition's thread starts here and
    /// ends when its policy is dropped.
    pub(crate) fn policies(&self, endpoint: &str, clock: &Arc<dyn Clock>) -> Vec<Box<dyn Policy>> {
        let mut out: Vec<Box<dyn Policy>> = Vec::new();
        if !self.interfaces.is_empty() {
            out.push(Box::new(InterfacePolicy::new(
                endpoint,
                self.interfaces.clone(),
                clock.clone(),
            )));
        }
        if let Some(c) = &self.condition {
            out.push(Box::new(ConditionPolicy::start(c.clone(), clock.clone())));
        }
        out
    }
}

/// Why `name` cannot be a Linux interface name (linux/net/core/dev.c `dev_valid_name`), or
/// `None` when it can: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or whitespace.
pub(crate) fn interface_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.len() > 15 {
        Some("is longer than 15 bytes, the longest interface name Linux has")
    } else if name == "." || name == ".." {
        Some("is not a name")
    } else if name.contains(['/', ':']) || name.chars().any(char::is_whitespace) {
        Some("holds a '/', ':' or whitespace, which no interface name has")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_linux_cannot_have_are_told() {
        for ok in [
            "wlan0",
            "eth0",
            "wwan0",
            "enp0s31f6",
            "br-lan",
            "a.b",
            "fifteen_bytes15",
        ] {
            assert_eq!(interface_name_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "sixteen_bytes_16",
            ".",
            "..",
            "eth0/1",
            "eth0:1",
            "wlan 0",
            "x\t",
        ] {
            assert!(interface_name_problem(bad).is_some(), "{bad:?}");
        }
    }
}
