//! The systemd integration files in `systemd/`: the unit passes `systemd-analyze verify`
//! silently and keeps a low exposure score, the example config passes `ferry check-config`,
//! sysusers/tmpfiles create what the unit expects, and the files agree on names and paths.
//!
//! Needs `systemd-analyze`, `systemd-sysusers` and `systemd-tmpfiles` (Debian package
//! `systemd`; none of them needs systemd to be running). Missing tools fail the tests.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::harness::{ferry, Scratch};

/// Exposure limit for `systemd-analyze security --threshold=` (tenths: 20 = "2.0").
/// The unit scores 1.3 with systemd 252; what is left is inherent to the job (network,
/// AF_UNIX/AF_INET sockets, the spool group, no PrivateUsers=, no IP allow list).
const EXPOSURE_LIMIT_TENTHS: u32 = 20;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The failure for a missing tool: says how to install it.
fn missing(name: &str) -> ! {
    panic!(
        "`{name}` is not installed: these tests need it to check the files in systemd/.\n\
         Install it with `apt-get install -y --no-install-recommends systemd` (Debian/Ubuntu; \
         systemd does not need to be running). .ci/run installs it when it is missing."
    )
}

/// Runs a systemd tool with `input` (if any) on stdin.
fn run_tool(cmd: &mut Command, input: Option<&str>) -> Output {
    use std::io::Write;
    let name = cmd.get_program().to_string_lossy().into_owned();
    let spawned = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing(&name),
        Err(e) => panic!("cannot run `{name}`: {e}"),
    };
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A copy of the unit, as `ferry.service`, whose ExecStart= runs the binary under test
/// (`verify` insists that the ExecStart= binary exists).
fn unit_copy(scratch: &Scratch) -> PathBuf {
    let unit = read("systemd/ferry.service");
    let from = "\nExecStart=/usr/bin/ferry ";
    assert_eq!(
        unit.matches(from).count(),
        1,
        "the unit must have one `ExecStart=/usr/bin/ferry ...` line"
    );
    let to = format!("\nExecStart={} ", env!("CARGO_BIN_EXE_ferry"));
    let path = scratch.dir.join("ferry.service");
    std::fs::write(&path, unit.replace(from, &to)).unwrap();
    path
}

#[test]
fn unit_passes_systemd_analyze_verify_without_any_output() {
    let scratch = Scratch::new("unit-verify");
    let unit = unit_copy(&scratch);
    let out = run_tool(
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .current_dir(&scratch.dir),
        None,
    );
    // verify exits 0 even for unknown keys and invalid values: it only prints them.
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "systemd-analyze verify must accept systemd/ferry.service silently:\n{}",
        text(&out)
    );
}

#[test]
fn unit_exposure_score_stays_low() {
    let scratch = Scratch::new("unit-security");
    let unit = unit_copy(&scratch);
    let out = run_tool(
        Command::new("systemd-analyze")
            .arg("security")
            .arg("--offline=true")
            .arg(format!("--threshold={EXPOSURE_LIMIT_TENTHS}"))
            .arg(&unit)
            .current_dir(&scratch.dir),
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let score = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for ferry.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure score in the output:\n{}", text(&out)));
    println!("systemd-analyze security --offline=true: exposure {score}");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "exposure {score} is above {}.{} (or systemd-analyze complained):\n{}",
        EXPOSURE_LIMIT_TENTHS / 10,
        EXPOSURE_LIMIT_TENTHS % 10,
        text(&out)
    );
    assert!(score <= f64::from(EXPOSURE_LIMIT_TENTHS) / 10.0, "{score}");
}

/// `ferry check-config` on `config`, with the spool and state dirs in `scratch`.
fn check_config(scratch: &Scratch, config: &Path, credentials: Option<&Path>) -> Output {
    let spool = scratch.dir.join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    let mut cmd = ferry();
    cmd.arg("check-config")
        .arg("--config")
        .arg(config)
        .arg("--spool")
        .arg(&spool)
        .arg("--state-dir")
        .arg(scratch.state())
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("STATE_DIRECTORY")
        .env_remove("JOURNAL_STREAM");
    if let Some(dir) = credentials {
        cmd.env("CREDENTIALS_DIRECTORY", dir);
    }
    cmd.output().unwrap()
}

#[test]
fn example_config_passes_check_config() {
    let scratch = Scratch::new("unit-example");
    let out = check_config(&scratch, &repo_file("systemd/ferry.toml.example"), None);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("configuration OK"),
        "ferry check-config on systemd/ferry.toml.example:\n{}",
        text(&out)
    );
}

/// The example with its optional lines switched on (all but the TLS files, which would have
/// to exist): what an operator gets by uncommenting them must be valid too.
#[test]
fn example_config_optional_lines_are_valid_and_the_credential_fallback_is_refused() {
    let scratch = Scratch::new("unit-example-optional");
    let example = read("systemd/ferry.toml.example");
    let mut uncommented = 0;
    let enabled: String = example
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if key_of(rest)
                    .is_some_and(|k| !["ca_file", "client_cert", "client_key"].contains(&k)) =>
            {
                uncommented += 1;
                format!("{rest}\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    assert!(
        enabled.contains("\nheader_files = { Authorization = \"credential:auth-header\" }"),
        "the example should show the credential header line"
    );
    assert!(uncommented >= 5, "{uncommented} lines uncommented");
    let config = scratch.dir.join("optional.toml");
    std::fs::write(&config, &enabled).unwrap();
    let creds = scratch.dir.join("credentials");
    std::fs::create_dir_all(&creds).unwrap();

    // The credential as LoadCredential= provides it.
    std::fs::write(creds.join("auth-header"), "Bearer 0123456789\n").unwrap();
    let out = check_config(&scratch, &config, Some(&creds));
    assert!(
        out.status.success(),
        "the example with its optional lines on:\n{}\n{enabled}",
        text(&out)
    );

    // The unit's SetCredential= fallback (a lone newline) when /etc/ferry/auth-header is
    // missing: ferry must call it a configuration error (exit 2: not restarted), never send it.
    let unit = read("systemd/ferry.service");
    assert!(
        unit.lines().any(|l| l == "SetCredential=auth-header:\\n"),
        "the unit's credential fallback changed: update this test"
    );
    std::fs::write(creds.join("auth-header"), "\n").unwrap();
    let out = check_config(&scratch, &config, Some(&creds));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("auth-header is empty"),
        "{}",
        text(&out)
    );
}

/// `key` of a `key = value` line, if it is one.
fn key_of(line: &str) -> Option<&str> {
    let (key, _) = line.split_once(" = ")?;
    (!key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')).then_some(key)
}

/// (section, key) of every `key = ...` line, commented out (`# key = `) or not.
fn keys(lines: impl Iterator<Item = String>) -> BTreeSet<(String, String)> {
    let mut section = String::new();
    let mut out = BTreeSet::new();
    for l in lines {
        let l = l.trim_start();
        let l = l.strip_prefix("# ").unwrap_or(l);
        if let Some(s) = l.strip_prefix('[') {
            section = s.split(']').next().unwrap_or("").to_string();
        } else if let Some(k) = key_of(l) {
            out.insert((section.clone(), k.to_string()));
        }
    }
    out
}

#[test]
fn example_config_has_every_documented_key() {
    // src/config/mod.rs documents every key in its module doc's ```toml block.
    let source = read("src/config/mod.rs");
    let documented = keys(
        source
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .skip_while(|l| l.trim() != "```toml")
            .skip(1)
            .take_while(|l| l.trim() != "```")
            .map(str::to_string),
    );
    assert!(documented.len() > 20, "{documented:?}");
    let example = keys(
        read("systemd/ferry.toml.example")
            .lines()
            .map(str::to_string),
    );
    let missing: Vec<_> = documented.difference(&example).collect();
    let unknown: Vec<_> = example.difference(&documented).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "systemd/ferry.toml.example vs the keys documented in src/config/mod.rs:\n\
         missing from the example: {missing:?}\nnot documented: {unknown:?}"
    );
}

/// The value of the first `Key=` line of the unit.
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    unit.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
}

#[test]
fn unit_sysusers_tmpfiles_and_example_agree() {
    let unit = read("systemd/ferry.service");
    let sysusers = read("systemd/ferry.sysusers");
    let tmpfiles = read("systemd/ferry.tmpfiles");
    let example = read("systemd/ferry.toml.example");
    let entries = |text: &str, kind: &str| -> Vec<Vec<String>> {
        text.lines()
            .filter(|l| l.split_whitespace().next() == Some(kind))
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    };

    let user = unit_value(&unit, "User");
    let spool_group = unit_value(&unit, "SupplementaryGroups");
    assert_eq!(unit_value(&unit, "Group"), user);
    assert!(
        entries(&sysusers, "u").iter().any(|e| e[1] == user),
        "ferry.sysusers must create user {user}"
    );
    assert!(
        entries(&sysusers, "g").iter().any(|e| e[1] == spool_group),
        "ferry.sysusers must create group {spool_group}"
    );

    let spool = unit_value(&unit, "ReadWritePaths");
    let dirs = entries(&tmpfiles, "d");
    assert!(!dirs.is_empty());
    for d in &dirs {
        assert!(
            Path::new(&d[1]).starts_with(spool),
            "{} is outside ReadWritePaths={spool}",
            d[1]
        );
        assert_eq!(d[4], spool_group, "{} must have group {spool_group}", d[1]);
        assert!(d[2].starts_with('2'), "{} must be setgid", d[1]);
    }
    assert!(dirs.iter().any(|d| d[1] == spool && d[2] == "2770"));

    let state = format!("/var/lib/{}", unit_value(&unit, "StateDirectory"));
    assert!(example.contains(&format!("\nstate_dir = \"{state}\"")));
    assert!(example.contains(&format!("\ndir = \"{spool}\"")));
    assert!(example.contains(&format!("\nfailed_dir = \"{spool}/failed\"")));
    assert!(dirs.iter().any(|d| d[1] == format!("{spool}/failed")));
    assert!(dirs.iter().any(|d| d[1] == format!("{spool}/done")));
    assert!(example.contains(&format!("move:{spool}/done")));
    assert!(unit_value(&unit, "ExecStart").ends_with(" run --config /etc/ferry/ferry.toml"));
}

#[test]
fn sysusers_and_tmpfiles_create_the_spool() {
    let scratch = Scratch::new("unit-tmpfiles");
    let root = scratch.dir.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let out = run_tool(
        Command::new("systemd-sysusers")
            .arg(format!("--root={}", root.display()))
            .arg("-"),
        Some(&read("systemd/ferry.sysusers")),
    );
    assert!(out.status.success(), "systemd-sysusers:\n{}", text(&out));
    let id = |file: &str, name: &str| -> u32 {
        let text = std::fs::read_to_string(root.join("etc").join(file)).unwrap();
        text.lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f[0] == name).then(|| f[2].parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no {name} in {file}:\n{text}"))
    };
    let ferry_uid = id("passwd", "ferry");
    let spool_gid = id("group", "ferry-spool");
    id("group", "ferry");

    // Setting owners needs root; elsewhere the sysusers check above is all there is.
    let probe = scratch.dir.join("probe");
    std::fs::write(&probe, "").unwrap();
    if std::fs::metadata(&probe).unwrap().uid() != 0 {
        println!("not root: systemd-tmpfiles --create not tried");
        return;
    }
    let out = run_tool(
        Command::new("systemd-tmpfiles")
            .arg(format!("--root={}", root.display()))
            .arg("--create")
            .arg("-"),
        Some(&read("systemd/ferry.tmpfiles")),
    );
    assert!(out.status.success(), "systemd-tmpfiles:\n{}", text(&out));
    for (dir, mode, uid) in [
        ("var/spool/ferry", 0o2770, 0),
        ("var/spool/ferry/done", 0o2750, ferry_uid),
        ("var/spool/ferry/failed", 0o2750, ferry_uid),
    ] {
        let m = std::fs::metadata(root.join(dir)).unwrap();
        assert!(m.is_dir(), "{dir}");
        assert_eq!(
            m.mode() & 0o7777,
            mode,
            "{dir}: mode {:o}",
            m.mode() & 0o7777
        );
        assert_eq!((m.uid(), m.gid()), (uid, spool_gid), "{dir}: owner");
    }
}

/// The system calls the unit lets ferry make, by name: its `SystemCallFilter=` lines expanded
/// with this host's `systemd-analyze syscall-filter`, in order (the first line makes it an
/// allow-list, a later line adds to it, a `~` line removes). systemd resolves the names with
/// libseccomp for the running architecture and skips those it cannot resolve there, so compare
/// by number (see arm/syscalls.rs). A device's systemd may know fewer names (buster has 241).
pub(crate) fn unit_syscall_allow_list() -> BTreeSet<String> {
    let out = run_tool(Command::new("systemd-analyze").arg("syscall-filter"), None);
    assert!(out.status.success(), "{}", text(&out));
    let groups = syscall_groups(&String::from_utf8_lossy(&out.stdout));
    let unit = read("systemd/ferry.service");
    let lines: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
        .collect();
    assert!(
        lines.first().is_some_and(|l| !l.starts_with('~')),
        "the unit's first SystemCallFilter= must be an allow-list: {lines:?}"
    );
    let mut allowed = BTreeSet::new();
    for line in &lines {
        let (deny, items) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, *line),
        };
        for item in items.split_whitespace() {
            let mut names = BTreeSet::new();
            expand(item, &groups, &mut names);
            if deny {
                allowed.retain(|n| !names.contains(n));
            } else {
                allowed.extend(names);
            }
        }
    }
    allowed
}

/// `systemd-analyze syscall-filter`'s groups: `@name` at the start of a line, then its members
/// (system calls or other groups) indented, `#` comments anywhere.
fn syscall_groups(listing: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut groups = std::collections::BTreeMap::new();
    let mut current: Option<String> = None;
    for line in listing.lines() {
        if line.starts_with('@') {
            let name = line.trim().to_string();
            groups.insert(name.clone(), Vec::new());
            current = Some(name);
        } else if line.starts_with(char::is_whitespace) {
            let member = line.trim();
            if let (Some(g), false) = (&current, member.is_empty() || member.starts_with('#')) {
                groups.get_mut(g).unwrap().push(member.to_string());
            }
        } else {
            current = None;
        }
    }
    groups
}

fn expand(
    item: &str,
    groups: &std::collections::BTreeMap<String, Vec<String>>,
    out: &mut BTreeSet<String>,
) {
    if item.starts_with('@') {
        let members = groups
            .get(item)
            .unwrap_or_else(|| panic!("systemd-analyze knows no group {item}"));
        for m in members {
            expand(m, groups, out);
        }
    } else {
        out.insert(item.to_string());
    }
}

#[test]
fn unit_syscall_filter_expands_to_what_a_daemon_needs_and_no_privileged_call() {
    let allowed = unit_syscall_allow_list();
    for needed in [
        "openat",
        "read",
        "write",
        "fsync",
        "inotify_add_watch",
        "sendmsg",
        "clone",
    ] {
        assert!(
            allowed.contains(needed),
            "{needed} is not allowed: {allowed:?}"
        );
    }
    // @privileged and @resources are removed from @system-service.
    for denied in ["setuid", "setrlimit", "chroot", "mount", "reboot"] {
        assert!(!allowed.contains(denied), "{denied} is allowed");
    }
}
