//! The front door (issue 13): help on every command, usage errors that point at the right
//! help page, `-q`/`-v`, and the messages and exit codes a new user meets first.

use std::process::Output;
use std::time::Duration;

use crate::harness::{
    ferry, finished, server_behind_proxy, signal, spawn_upload, stderr, upload, wait_until, Scratch,
};
use crate::support::flaky_proxy::ProxyPlan;
use crate::support::tus_server::{Fault, ServerConfig, TusServer};

const MIB: u64 = 1024 * 1024;

/// `ferry ARGS`, waited for.
fn run(args: &[&str]) -> Output {
    ferry().args(args).output().unwrap()
}

/// `ferry ARGS` without `RUST_LOG` (which wins over `-q`/`-v`), waited for.
fn run_without_rust_log(args: &[&str]) -> Output {
    ferry().env_remove("RUST_LOG").args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_command_takes_help_and_prints_it_to_stdout() {
    let mut commands = vec!["upload", "run", "status", "pause", "resume", "check-config"];
    if cfg!(feature = "broker") {
        commands.push("broker");
    }
    for cmd in commands {
        for flag in ["--help", "-h"] {
            let out = run(&[cmd, flag]);
            let text = stdout(&out);
            assert_eq!(
                out.status.code(),
                Some(0),
                "ferry {cmd} {flag}: {}",
                stderr(&out)
            );
            assert!(
                text.contains(&format!("USAGE:\n    ferry {cmd} ")) && text.contains("EXIT:"),
                "ferry {cmd} {flag}:\n{text}"
            );
            assert!(
                stderr(&out).is_empty(),
                "ferry {cmd} {flag}: {}",
                stderr(&out)
            );
        }
    }
    for args in [&["--help"][..], &["-h"], &["help"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0));
        assert!(stdout(&out).contains("ferry COMMAND --help"), "{args:?}");
    }
    let version = run(&["--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert!(stdout(&version).starts_with("ferry "));
}

#[test]
fn ferry_alone_prints_the_usage_to_stderr_and_exits_2() {
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty());
    assert!(stderr(&out).contains("USAGE:"), "{}", stderr(&out));
}

#[test]
fn usage_mistakes_are_usage_errors_that_point_at_the_help() {
    for (args, says) in [
        (
            &["upload"][..],
            "usage error: no files given; see `ferry upload --help`",
        ),
        (
            &["upload", "--chunksize", "1MiB", "a"],
            "usage error: unknown option --chunksize; see `ferry upload --help`",
        ),
        (
            &["uplaod", "a"],
            "usage error: unknown command \"uplaod\" (did you mean \"upload\"?); see `ferry --help`",
        ),
        (
            &["status", "--state-dir"],
            "usage error: missing argument for option '--state-dir'; see `ferry status --help`",
        ),
    ] {
        let out = run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("configuration error"), "{args:?}: {err}");
    }
}

#[test]
fn quiet_says_only_errors_and_verbose_shows_ferrys_debug_lines_only() {
    let server = TusServer::start(ServerConfig::default());
    let s = Scratch::new("verbosity");
    let cfg = s.config(&server.endpoint(), "");
    let state = s.state();
    let upload_args = |flag: &str, name: &str| {
        let file = s.file(name, 70_000, 1);
        vec![
            "upload".to_string(),
            flag.to_string(),
            "--config".into(),
            cfg.display().to_string(),
            file.display().to_string(),
        ]
    };
    let quiet = upload_args("-q", "q.bin");
    let out = run_without_rust_log(&quiet.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(finished(&out).len(), 1);
    assert!(stderr(&out).is_empty(), "-q: {}", stderr(&out));

    let verbose = upload_args("-v", "v.bin");
    let out = run_without_rust_log(&verbose.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(finished(&out).len(), 1);
    let err = stderr(&out);
    assert!(
        err.contains("DEBUG] PATCH "),
        "-v shows each request:\n{err}"
    );
    assert!(err.contains("INFO ]"), "{err}");
    // sled's recovery and ureq's call states are not ferry's story.
    for internal in ["Call<", "lsn", "Resolved:", "PoolKey"] {
        assert!(!err.contains(internal), "-v shows {internal:?}:\n{err}");
    }
    // RUST_LOG names a library: then it is shown.
    let named = upload_args("-v", "n.bin");
    let out = ferry()
        .env("RUST_LOG", "debug,ureq=debug")
        .args(&named)
        .output()
        .unwrap();
    assert_eq!(finished(&out).len(), 1);
    assert!(stderr(&out).contains("Call<"), "{}", stderr(&out));
    assert!(state.exists());
    // Without -q the same command logs; the plain default is info.
    let plain = upload(&cfg, &[], &[&s.file("p.bin", 10, 2)]);
    assert!(
        stderr(&plain).contains("complete, 10 bytes"),
        "{}",
        stderr(&plain)
    );
}

/// The shipped example says sizes may be written `262144`: integers are bytes (sizes) and
/// seconds (durations); a count in quotes is refused in words, naming the key and line.
#[test]
fn integer_sizes_and_durations_work_and_a_quoted_count_is_explained() {
    let server = TusServer::start(ServerConfig::default());
    let s = Scratch::new("integers");
    let file = s.file("a.bin", 300_000, 3);
    let cfg = s.config(
        &server.endpoint(),
        "give_up_after = 600\n[upload]\nchunk_size = 131072",
    );
    assert_eq!(finished(&upload(&cfg, &[], &[&file])).len(), 1);
    let patches = server
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .count();
    assert_eq!(patches, 3, "300000 bytes in chunks of 131072");

    let cfg = s.config(&server.endpoint(), "max_attempts = \"3\"");
    let out = upload(&cfg, &[], &[&file]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("max_attempts = \"3\"") && err.contains("expected a whole number such as 3"),
        "{err}"
    );
}

/// `--chunk-size 1` sent one byte per request (a 3 KB file took 9 s): below 64 KiB it is a
/// configuration error, before anything is sent.
#[test]
fn a_tiny_chunk_size_is_refused_before_anything_is_sent() {
    let server = TusServer::start(ServerConfig::default());
    let s = Scratch::new("tiny-chunk");
    let cfg = s.config(&server.endpoint(), "");
    let out = upload(&cfg, &["--chunk-size", "1"], &[&s.file("a.bin", 3000, 1)]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("upload.chunk_size = \"1\" is below the smallest chunk, 64KiB"),
        "{err}"
    );
    assert!(server.requests().is_empty());
}

/// Without a daemon on the state directory, `ferry status` exits 3 (like `systemctl
/// is-active`), and `pause`/`resume` say so and still set or clear the marker.
#[test]
fn without_a_daemon_status_exits_3_and_pause_warns_but_sets_the_marker() {
    let s = Scratch::new("no-daemon");
    let state = s.state().display().to_string();
    let status = run(&["status", "--state-dir", &state]);
    assert_eq!(status.status.code(), Some(3), "{}", stderr(&status));
    assert!(
        stderr(&status).contains(&format!("no ferry daemon has run on {state}")),
        "{}",
        stderr(&status)
    );
    let json = run(&["status", "--json", "--state-dir", &state]);
    assert_eq!(json.status.code(), Some(3));

    let pause = run(&["pause", "--state-dir", &state]);
    assert_eq!(pause.status.code(), Some(0), "{}", stderr(&pause));
    assert!(
        stderr(&pause).contains(&format!(
            "no ferry daemon is running on {state}; it will start paused"
        )),
        "{}",
        stderr(&pause)
    );
    assert!(s.state().join("paused").exists());
    let resume = run(&["resume", "--state-dir", &state]);
    assert_eq!(resume.status.code(), Some(0), "{}", stderr(&resume));
    assert!(
        stderr(&resume).contains("; it will start uploading"),
        "{}",
        stderr(&resume)
    );
    assert!(!s.state().join("paused").exists());
}

/// Issue 13: Ctrl-C said nothing, and a rerun resumed without saying where. Now Ctrl-C stops,
/// says how to resume and still ends by SIGINT (130 in a shell, as before); the rerun says
/// where it resumes, by the server's offset.
#[test]
fn ctrl_c_says_how_to_resume_and_the_rerun_says_where_it_resumes() {
    use std::os::unix::process::ExitStatusExt;
    let (server, proxy) = server_behind_proxy(ProxyPlan {
        throttle_bytes_per_sec: Some(2 * MIB),
        ..ProxyPlan::default()
    });
    let s = Scratch::new("ctrl-c");
    let f = s.file("a.bin", 8 * MIB as usize, 5);
    let cfg = s.config(
        &proxy.rewrite(&server.endpoint()),
        "[upload]\nchunk_size = \"1MiB\"",
    );
    let child = spawn_upload(&cfg, &[], &[&f]);
    wait_until("upload progress", Duration::from_secs(30), || {
        server.uploads().first().is_some_and(|u| u.offset >= MIB)
    });
    signal(&child, "INT");
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(
        out.status.signal(),
        Some(2),
        "ended by SIGINT, as before: {err}"
    );
    assert!(
        err.contains("interrupted: run the same command again to resume"),
        "{err}"
    );
    let held = server.uploads()[0].offset;
    assert!(held < 8 * MIB, "interrupted mid-file");
    proxy.set_plan(ProxyPlan::default());
    let again = upload(&cfg, &[], &[&f]);
    let err = stderr(&again);
    let url = &finished(&again)[0].1;
    let at = format!(
        "{}: resuming {url} at {:.1} MiB (server offset)",
        f.display(),
        held as f64 / MIB as f64
    );
    assert!(err.contains(&at), "want {at:?} in:\n{err}");
    assert_eq!(server.uploads().len(), 1, "the same upload");
}

/// Issue 13: a 404 on POST printed two identical lines that named no file.
#[test]
fn every_per_file_error_names_its_file() {
    let server = TusServer::start(ServerConfig::default());
    let s = Scratch::new("names");
    let (a, b) = (s.file("a.bin", 10, 1), s.file("b.bin", 10, 2));
    for _ in 0..2 {
        server.push_fault(
            "POST",
            Fault::Status {
                code: 404,
                body: "no such endpoint".into(),
            },
        );
    }
    let cfg = s.config(&server.endpoint(), "");
    let out = upload(&cfg, &["--max-attempts", "1"], &[&a, &b]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for f in [&a, &b] {
        let line = err
            .lines()
            .find(|l| l.contains("ERROR") && l.contains(&f.display().to_string()));
        assert!(
            line.is_some_and(|l| l.contains("404") && l.contains("no such endpoint")),
            "no error line names {}:\n{err}",
            f.display()
        );
    }
}

/// Issue 13: `--cancel` deleted a completed upload without a word. It is refused (the server's
/// copy would go) unless `--force`, and then said per file.
#[test]
fn cancel_of_a_complete_upload_needs_force_and_says_so() {
    let server = TusServer::start(ServerConfig::default());
    let s = Scratch::new("cancel-done");
    let f = s.file("a.bin", 1000, 4);
    let cfg = s.config(&server.endpoint(), "");
    finished(&upload(&cfg, &[], &[&f]));
    let refused = upload(&cfg, &["--cancel"], &[&f]);
    let err = stderr(&refused);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{}: its upload", f.display()))
            && err.contains("is complete: the server holds all of it, and --cancel would delete it there; add --force to do so"),
        "{err}"
    );
    assert!(!server.uploads()[0].deleted);
    let forced = upload(&cfg, &["--cancel", "--force"], &[&f]);
    let err = stderr(&forced);
    assert_eq!(forced.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "{}: the server already held all of it; its upload",
            f.display()
        )) && err.contains("was terminated (--force) and forgotten"),
        "{err}"
    );
    assert!(server.uploads()[0].deleted);
    let misuse = upload(&cfg, &["--force"], &[&f]);
    assert_eq!(misuse.status.code(), Some(2));
    assert!(stderr(&misuse).contains("--force goes with --cancel only"));
}

/// Issue 13: no Rust `Debug` in messages: check-config and the daemon's start line said
/// `after upload: Move("/…/done")`.
#[test]
fn the_after_upload_action_is_said_in_words() {
    let s = Scratch::new("words");
    let spool = s.dir.join("files");
    let done = s.dir.join("done");
    let cfg = s.config("http://127.0.0.1:9/files/", "");
    let out = ferry()
        .arg("check-config")
        .arg("--config")
        .arg(&cfg)
        .arg("--spool")
        .arg(&spool)
        .arg("--after-upload")
        .arg(format!("move:{}", done.display()))
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        text.contains(&format!(
            "(after upload: move to {}, failed: kept in place)",
            done.display()
        )),
        "{text}"
    );
    assert!(!text.contains("Move("), "{text}");
}
