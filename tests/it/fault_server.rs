//! End to end: the real `ferry` binary against our fault-injecting tus server, through a proxy
//! that cuts real TCP connections.

use std::time::Duration;

use crate::harness::{
    assert_same_bytes, finished, server_behind_proxy, spawn_upload, stderr, upload, Scratch,
};
use crate::support::flaky_proxy::ProxyPlan;
use crate::support::tus_server::{Fault, LocationStyle, ServerConfig, TusServer};

const CHUNK: usize = 256 * 1024;

fn id_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

/// Every request but OPTIONS carried `Tus-Resumable: 1.0.0`; PATCHes the right content type.
fn assert_protocol_hygiene(server: &TusServer) {
    for r in server.requests() {
        if r.method != "OPTIONS" {
            assert_eq!(
                r.header("tus-resumable"),
                Some("1.0.0"),
                "{} {}",
                r.method,
                r.path
            );
        }
        if r.method == "PATCH" {
            assert_eq!(
                r.header("content-type"),
                Some("application/offset+octet-stream")
            );
        }
    }
}

#[test]
fn every_edge_size_arrives_intact_through_a_link_cut_every_300_kib() {
    let (server, proxy) = server_behind_proxy(ProxyPlan {
        cut_every_bytes: Some(300 * 1024),
        ..ProxyPlan::default()
    });
    let s = Scratch::new("edges");
    let sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * 1024 * 1024 + 17];
    let files: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| s.file(&format!("f{i}.bin"), *n, i as u64))
        .collect();
    let cfg = s.config(
        &proxy.rewrite(&server.endpoint()),
        "[upload]\nchunk_size = \"256KiB\"",
    );
    let refs: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    let out = upload(&cfg, &[], &refs);
    let lines = finished(&out);
    assert_eq!(lines.len(), files.len(), "{}", stderr(&out));
    assert!(proxy.cuts() >= 8, "only {} cuts", proxy.cuts());
    assert_eq!(
        server.uploads().len(),
        files.len(),
        "exactly one upload per file"
    );
    for ((path, url), file) in lines.iter().zip(&files) {
        assert_eq!(path, &file.display().to_string());
        let want = std::fs::read(file).unwrap();
        assert_same_bytes(&server.upload_bytes(id_of(url)), &want, path);
        let info = server.upload(id_of(url)).unwrap();
        assert_eq!(
            (info.offset, info.length),
            (want.len() as u64, want.len() as u64)
        );
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            info.metadata
                .contains(&("filename".into(), Some(name.into()))),
            "{:?}",
            info.metadata
        );
    }
    assert_protocol_hygiene(&server);
}

#[test]
fn a_second_run_resumes_and_never_creates_a_second_upload() {
    let server = TusServer::start(ServerConfig::default());
    let s = Scratch::new("rerun");
    let f = s.file("a.bin", 1_000_000, 9);
    // Without checksums the server keeps a cut PATCH's bytes (with one it must discard them).
    let cfg = s.config(
        &server.endpoint(),
        "[upload]\nchunk_size = \"256KiB\"\nchecksum = \"off\"",
    );
    server.push_fault("PATCH", Fault::CutAfter { bytes: 100_000 });
    let out = upload(&cfg, &["--max-attempts", "1"], &[&f]);
    assert_eq!(out.status.code(), Some(1), "gave up: {}", stderr(&out));
    assert!(
        stderr(&out).contains("gave up after 1 attempts"),
        "{}",
        stderr(&out)
    );
    let url = format!("{}{}", server.endpoint(), server.uploads()[0].id);
    assert_eq!(
        server.uploads()[0].offset,
        100_000,
        "server kept the bytes of the cut PATCH"
    );
    let again = finished(&upload(&cfg, &[], &[&f]));
    assert_eq!(again, [(f.display().to_string(), url.clone())]);
    assert_eq!(server.uploads().len(), 1);
    let patches: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert_eq!(
        patches[1].header("upload-offset"),
        Some("100000"),
        "resumed at the server's byte, not a chunk boundary"
    );
    assert_same_bytes(
        &server.upload_bytes(id_of(&url)),
        &std::fs::read(&f).unwrap(),
        "a.bin",
    );
    let third = finished(&upload(&cfg, &[], &[&f]));
    assert_eq!(
        third[0].1, url,
        "a complete file is reported, not uploaded again"
    );
    assert_eq!(server.uploads().len(), 1);
}

#[test]
fn transient_statuses_are_retried_and_the_upload_completes() {
    let server = TusServer::start(ServerConfig::default());
    let s = Scratch::new("statuses");
    let f = s.file("a.bin", 700_000, 3);
    let cfg = s.config(&server.endpoint(), "[upload]\nchunk_size = \"256KiB\"");
    server.push_fault(
        "POST",
        Fault::Status {
            code: 503,
            body: "warming up".into(),
        },
    );
    server.push_fault(
        "PATCH",
        Fault::Status {
            code: 423,
            body: "locked".into(),
        },
    );
    server.push_fault(
        "PATCH",
        Fault::Status {
            code: 500,
            body: "lock timeout".into(),
        },
    );
    server.push_fault(
        "PATCH",
        Fault::StatusWithHeaders {
            code: 429,
            headers: vec![("Retry-After".into(), "1".into())],
            body: String::new(),
        },
    );
    server.push_fault(
        "PATCH",
        Fault::Status {
            code: 409,
            body: "offset mismatch".into(),
        },
    );
    server.push_fault(
        "PATCH",
        Fault::Status {
            code: 400,
            body: "ERR_UPLOAD_INTERRUPTED".into(),
        },
    );
    server.push_fault(
        "HEAD",
        Fault::Status {
            code: 502,
            body: "bad gateway".into(),
        },
    );
    server.push_fault("PATCH", Fault::DropResponse);
    server.push_fault("PATCH", Fault::Garbage);
    let out = upload(&cfg, &[], &[&f]);
    let lines = finished(&out);
    assert_eq!(server.pending_faults(), 0, "every fault was hit");
    assert_eq!(server.uploads().len(), 1, "no fault made a second upload");
    assert_same_bytes(
        &server.upload_bytes(id_of(&lines[0].1)),
        &std::fs::read(&f).unwrap(),
        "a.bin",
    );
    assert_protocol_hygiene(&server);
}

#[test]
fn checksums_are_sent_and_a_mismatch_resends_the_chunk() {
    let server = TusServer::start(ServerConfig::default());
    let s = Scratch::new("sums");
    let f = s.file("a.bin", 600_000, 4);
    let cfg = s.config(&server.endpoint(), "[upload]\nchunk_size = \"256KiB\"");
    server.push_fault(
        "PATCH",
        Fault::Status {
            code: 460,
            body: "checksum mismatch".into(),
        },
    );
    let lines = finished(&upload(&cfg, &[], &[&f]));
    assert_same_bytes(
        &server.upload_bytes(id_of(&lines[0].1)),
        &std::fs::read(&f).unwrap(),
        "a.bin",
    );
    let patches: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 4, "3 chunks + 1 resend");
    assert!(patches.iter().all(|p| p
        .header("upload-checksum")
        .is_some_and(|c| c.starts_with("sha256 "))));
    assert_eq!(
        patches[0].header("upload-offset"),
        patches[1].header("upload-offset"),
        "same chunk resent"
    );
}

#[test]
fn rustus_style_417_mismatch_is_also_resent() {
    let server = TusServer::start(ServerConfig {
        checksum_mismatch_status: 417,
        checksum_algorithms: vec!["sha1".into()],
        ..ServerConfig::default()
    });
    let s = Scratch::new("417");
    let f = s.file("a.bin", 100_000, 5);
    let cfg = s.config(&server.endpoint(), "");
    server.push_fault(
        "PATCH",
        Fault::Status {
            code: 417,
            body: String::new(),
        },
    );
    let lines = finished(&upload(&cfg, &[], &[&f]));
    assert_same_bytes(
        &server.upload_bytes(id_of(&lines[0].1)),
        &std::fs::read(&f).unwrap(),
        "a.bin",
    );
    let patches: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert!(patches[0]
        .header("upload-checksum")
        .unwrap()
        .starts_with("sha1 "));
}

#[test]
fn a_forgotten_or_expired_upload_is_replaced_by_a_new_one() {
    for fault in [Fault::Forget, Fault::Expire] {
        let server = TusServer::start(ServerConfig::default());
        let s = Scratch::new("lost");
        let f = s.file("a.bin", 600_000, 6);
        let cfg = s.config(&server.endpoint(), "[upload]\nchunk_size = \"256KiB\"");
        server.push_fault(
            "PATCH",
            Fault::StatusWithHeaders {
                code: 200,
                headers: vec![],
                body: String::new(),
            },
        );
        server.push_fault("HEAD", fault.clone());
        let lines = finished(&upload(&cfg, &[], &[&f]));
        let uploads = server.uploads();
        assert_eq!(
            uploads.len(),
            2,
            "{fault:?}: the lost upload and its replacement"
        );
        assert_eq!(id_of(&lines[0].1), uploads[1].id);
        assert_same_bytes(
            &server.upload_bytes(&uploads[1].id),
            &std::fs::read(&f).unwrap(),
            "a.bin",
        );
    }
}

#[test]
fn upload_expires_in_the_past_means_a_new_upload_without_asking() {
    let server = TusServer::start(ServerConfig {
        expires_in: Some(Duration::from_secs(1)),
        ..ServerConfig::default()
    });
    let s = Scratch::new("expires");
    let f = s.file("a.bin", 300_000, 7);
    let cfg = s.config(&server.endpoint(), "[upload]\nchunk_size = \"256KiB\"");
    server.push_fault("PATCH", Fault::CutAfter { bytes: 1000 });
    let out = upload(&cfg, &["--max-attempts", "1"], &[&f]);
    assert_eq!(out.status.code(), Some(1));
    std::thread::sleep(Duration::from_millis(2100));
    let lines = finished(&upload(&cfg, &[], &[&f]));
    let heads = server
        .requests()
        .iter()
        .filter(|r| r.method == "HEAD")
        .count();
    assert_eq!(heads, 0, "an upload past its Upload-Expires is not probed");
    assert_eq!(server.uploads().len(), 2);
    assert_same_bytes(
        &server.upload_bytes(id_of(&lines[0].1)),
        &std::fs::read(&f).unwrap(),
        "a.bin",
    );
}

#[test]
fn relative_and_protocol_relative_locations_and_refused_options() {
    for (loc, options) in [
        (LocationStyle::Relative, Some(405)),
        (LocationStyle::ProtocolRelative, None),
    ] {
        let server = TusServer::start(ServerConfig {
            location: loc,
            options_status: options,
            ..ServerConfig::default()
        });
        let s = Scratch::new("loc");
        let f = s.file("a.bin", 50_000, 8);
        let cfg = s.config(&server.endpoint(), "");
        let lines = finished(&upload(&cfg, &[], &[&f]));
        assert!(lines[0].1.starts_with(&server.endpoint()), "{}", lines[0].1);
        assert_same_bytes(
            &server.upload_bytes(id_of(&lines[0].1)),
            &std::fs::read(&f).unwrap(),
            "a.bin",
        );
    }
}

#[test]
fn a_stalled_link_is_detected_and_the_upload_resumes_on_a_new_connection() {
    let server = TusServer::start(ServerConfig::default());
    let s = Scratch::new("stall");
    let f = s.file("a.bin", 400_000, 10);
    let cfg = s.config(&server.endpoint(), "[upload]\nchunk_size = \"256KiB\"");
    server.push_fault(
        "PATCH",
        Fault::StallBeforeResponse {
            dur: Duration::from_secs(4),
        },
    );
    let started = std::time::Instant::now();
    let out = upload(&cfg, &["--idle-timeout", "1s"], &[&f]);
    let lines = finished(&out);
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_same_bytes(
        &server.upload_bytes(id_of(&lines[0].1)),
        &std::fs::read(&f).unwrap(),
        "a.bin",
    );
}

#[test]
fn fatal_answers_fail_the_file_with_the_server_message_and_exit_1() {
    let server = TusServer::start(ServerConfig {
        max_size: Some(1000),
        ..ServerConfig::default()
    });
    let s = Scratch::new("fatal");
    let big = s.file("big.bin", 2000, 1);
    let ok = s.file("ok.bin", 10, 2);
    let cfg = s.config(&server.endpoint(), "");
    server.push_fault(
        "POST",
        Fault::Status {
            code: 403,
            body: "device not allowed".into(),
        },
    );
    let out = upload(&cfg, &[], &[&big, &ok, &big]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("at most 1000 (Tus-Max-Size)"), "{err}");
    let lines: Vec<_> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(lines.is_empty(), "403 on the small file: {lines:?}");
    assert!(
        err.contains("device not allowed") && err.contains("403"),
        "{err}"
    );
    let post_count = server
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(post_count, 1, "the oversized file never reached POST");
}

#[test]
fn kill_9_mid_file_then_rerun_completes_the_same_upload() {
    let (server, proxy) = server_behind_proxy(ProxyPlan {
        throttle_bytes_per_sec: Some(2 * 1024 * 1024),
        ..ProxyPlan::default()
    });
    let s = Scratch::new("kill");
    let f = s.file("a.bin", 12 * 1024 * 1024, 11);
    let cfg = s.config(
        &proxy.rewrite(&server.endpoint()),
        "[upload]\nchunk_size = \"1MiB\"",
    );
    let mut child = spawn_upload(&cfg, &[], &[&f]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server
        .uploads()
        .first()
        .is_none_or(|u| u.offset < 2 * 1024 * 1024)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no progress before the kill"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at_kill = server.uploads()[0].offset;
    assert!(at_kill < 12 * 1024 * 1024, "killed mid-file");
    proxy.set_plan(ProxyPlan::default());
    let lines = finished(&upload(&cfg, &[], &[&f]));
    assert_eq!(server.uploads().len(), 1, "same upload after kill -9");
    assert_eq!(id_of(&lines[0].1), server.uploads()[0].id);
    assert_same_bytes(
        &server.upload_bytes(id_of(&lines[0].1)),
        &std::fs::read(&f).unwrap(),
        "a.bin",
    );
}

#[test]
fn cancel_terminates_the_upload_and_forgets_it() {
    let server = TusServer::start(ServerConfig::default());
    let s = Scratch::new("cancel");
    let f = s.file("a.bin", 300_000, 12);
    let cfg = s.config(&server.endpoint(), "[upload]\nchunk_size = \"256KiB\"");
    server.push_fault(
        "PATCH",
        Fault::Status {
            code: 507,
            body: "full".into(),
        },
    );
    assert_eq!(
        upload(&cfg, &["--max-attempts", "1"], &[&f]).status.code(),
        Some(1)
    );
    let out = upload(&cfg, &["--cancel"], &[&f]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(server.uploads()[0].deleted);
    let again = upload(&cfg, &["--cancel"], &[&f]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("nothing to cancel"),
        "{}",
        stderr(&again)
    );
}

/// Issue 13: a symbolic link named on the command line is the user's choice (curl and rclone
/// follow those): it is followed to its regular file, and the line names the link as given. A
/// link to something else, a dangling link and a missing file are refused, each by name, and
/// the other files still upload. (The daemon never follows links: daemon.rs.)
#[test]
fn a_named_symlink_is_followed_to_its_file_and_bad_ones_are_refused_by_name() {
    let server = TusServer::start(ServerConfig::default());
    let s = Scratch::new("links");
    let real = s.file("real.bin", 10, 1);
    let link = s.dir.join("files/link.bin");
    std::os::unix::fs::symlink("real.bin", &link).unwrap();
    let to_dir = s.dir.join("files/dir-link");
    std::os::unix::fs::symlink(&s.dir, &to_dir).unwrap();
    let dangling = s.dir.join("files/dangling.bin");
    std::os::unix::fs::symlink("gone.bin", &dangling).unwrap();
    let cfg = s.config(&server.endpoint(), "");
    let missing = s.dir.join("files/missing.bin");
    let out = upload(&cfg, &[], &[&link, &to_dir, &dangling, &missing]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}: a symbolic link; uploading its target {}",
            link.display(),
            real.display()
        )),
        "{err}"
    );
    assert!(err.contains("files/gone.bin: does not exist"), "{err}");
    assert!(err.contains("missing.bin: does not exist"), "{err}");
    assert!(err.contains("is not a regular file"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<_> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(
        lines[0].starts_with(&format!("{}\t", link.display())),
        "{stdout}"
    );
    assert_eq!(server.uploads().len(), 1);
    // The link and its target are one file: the target alone is already complete.
    let again = upload(&cfg, &[], &[&real]);
    assert!(
        stderr(&again).contains("(already complete)"),
        "{}",
        stderr(&again)
    );
    assert_eq!(server.uploads().len(), 1);
}

#[test]
fn config_errors_exit_2_and_name_the_key() {
    let s = Scratch::new("cfg");
    let f = s.file("a.bin", 1, 1);
    let cfg = s.config(
        "http://127.0.0.1:9/files/",
        "[upload]\nchunk_sise = \"1MiB\"",
    );
    let out = upload(&cfg, &[], &[&f]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("chunk_sise"), "{}", stderr(&out));
}

#[test]
fn a_second_process_on_the_same_state_dir_is_refused_clearly() {
    let (server, proxy) = server_behind_proxy(ProxyPlan {
        throttle_bytes_per_sec: Some(512 * 1024),
        ..ProxyPlan::default()
    });
    let s = Scratch::new("lock");
    let f = s.file("a.bin", 4 * 1024 * 1024, 13);
    let cfg = s.config(&proxy.rewrite(&server.endpoint()), "");
    let mut first = spawn_upload(&cfg, &[], &[&f]);
    while server.uploads().is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = upload(&cfg, &[], &[&f]);
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(second.status.code(), Some(1));
    // Issue 13: it says which process and what to do.
    let want = format!(
        "state directory {}: is in use by another ferry process (pid {}, `ferry upload`); one process per state directory: wait for it to end, stop it, or give this command its own --state-dir",
        s.state().display(),
        first.id()
    );
    assert!(stderr(&second).contains(&want), "{}", stderr(&second));
}

#[test]
fn creation_with_upload_sends_small_files_in_the_post_and_its_documented_orphan() {
    let server = TusServer::start(ServerConfig::default());
    let s = Scratch::new("cwu");
    let small = s.file("small.bin", 100_000, 21);
    let big = s.file("big.bin", 300_000, 22);
    let cfg = s.config(
        &server.endpoint(),
        "[upload]\nchunk_size = \"256KiB\"\ncreation_with_upload = true",
    );
    let lines = finished(&upload(&cfg, &[], &[&small, &big]));
    let reqs = server.requests();
    let posts: Vec<_> = reqs.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(
        posts[0].body_bytes, 100_000,
        "the small file rode in its POST"
    );
    assert_eq!(
        posts[1].body_bytes, 0,
        "a file larger than a chunk uses plain creation"
    );
    assert_eq!(
        reqs.iter().filter(|r| r.method == "PATCH").count(),
        2,
        "PATCHes only for big.bin"
    );
    for ((path, url), f) in lines.iter().zip([&small, &big]) {
        assert_same_bytes(
            &server.upload_bytes(id_of(url)),
            &std::fs::read(f).unwrap(),
            path,
        );
    }
    // The price (README): a POST cut mid-body leaves an orphaned upload the rerun cannot know.
    let other = s.file("other.bin", 50_000, 23);
    server.push_fault("POST", Fault::CutAfter { bytes: 10_000 });
    let lines = finished(&upload(&cfg, &[], &[&other]));
    let uploads = server.uploads();
    assert_eq!(
        uploads.len(),
        4,
        "small, big, the orphan and its replacement"
    );
    assert!(
        uploads[2].offset < uploads[2].length,
        "the orphan is incomplete"
    );
    assert_eq!(id_of(&lines[0].1), uploads[3].id);
}
