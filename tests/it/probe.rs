//! End to end: `ferry check-config --probe` asks the endpoint with the configured credentials,
//! says what it found, exits 4 when the endpoint fails it, and leaves no upload behind
//! (issue 13, item 5).

use std::net::TcpListener;
use std::process::Output;

use crate::harness::{ferry, Scratch};
use crate::support::peers::{NodeOpts, Peer};
use crate::support::tus_server::{Fault, ServerConfig, TusServer};

/// `check-config --probe`'s exit code for an endpoint that failed the probe.
const PROBE_FAILED: i32 = 4;

fn probe(s: &Scratch, endpoint: &str, extra: &str) -> Output {
    let config = s.config(endpoint, extra);
    ferry()
        .args(["check-config", "--probe", "--config"])
        .arg(&config)
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The methods the server received, in order.
fn methods(server: &TusServer) -> Vec<String> {
    server.requests().into_iter().map(|r| r.method).collect()
}

#[test]
fn a_probe_reports_the_server_and_leaves_no_upload_behind() {
    let server = TusServer::start(ServerConfig {
        max_size: Some(1 << 30),
        ..ServerConfig::default()
    });
    let s = Scratch::new("probe-ok");
    let out = probe(
        &s,
        &server.endpoint(),
        "[server.headers]\nAuthorization = \"Bearer probe-token\"",
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let port = server.addr().port();
    for want in [
        format!("reachable   127.0.0.1:{port} (plain HTTP: no TLS)"),
        "tus         version 1.0.0; extensions: creation, creation-with-upload, termination, checksum, expiration; max size 1.0 GiB".into(),
        "creation    allowed with these credentials".into(),
        "probe OK".into(),
    ] {
        assert!(stdout.contains(&want), "{want:?} in:\n{stdout}");
    }
    assert_eq!(methods(&server), ["OPTIONS", "POST", "DELETE"]);
    let post = &server.requests()[1];
    assert_eq!(post.header("authorization"), Some("Bearer probe-token"));
    let uploads = server.uploads();
    assert_eq!(uploads.len(), 1);
    assert!(
        uploads[0].deleted,
        "the test upload is deleted: {uploads:?}"
    );
    assert_eq!(uploads[0].length, 1);
}

#[test]
fn a_404_on_creation_names_the_path_and_exits_4() {
    let server = TusServer::start(ServerConfig::default());
    server.push_fault(
        "POST",
        Fault::Status {
            code: 404,
            body: "no such route".into(),
        },
    );
    let s = Scratch::new("probe-404");
    let out = probe(&s, &server.endpoint(), "");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(PROBE_FAILED), "{stdout}{stderr}");
    assert!(
        stdout.contains("creation    refused: HTTP 404: no such route"),
        "{stdout}"
    );
    assert!(
        stderr.contains("check the path of server.endpoint"),
        "{stderr}"
    );
    assert!(server.uploads().is_empty());
}

#[test]
fn a_401_on_creation_points_at_the_credentials() {
    let server = TusServer::start(ServerConfig::default());
    server.push_fault(
        "POST",
        Fault::Status {
            code: 401,
            body: "token expired".into(),
        },
    );
    let s = Scratch::new("probe-401");
    let out = probe(&s, &server.endpoint(), "");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(PROBE_FAILED), "{stdout}{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    assert!(
        stderr.contains("check the Authorization header"),
        "{stderr}"
    );
    assert!(server.uploads().is_empty());
}

#[test]
fn a_refused_connection_names_host_and_port_and_exits_4() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let s = Scratch::new("probe-refused");
    let out = probe(&s, &format!("http://127.0.0.1:{port}/files/"), "");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(PROBE_FAILED), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "reachable   no: connection failed: 127.0.0.1:{port}"
        )),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("127.0.0.1:{port} gave no answer")),
        "{stderr}"
    );
    assert!(!stdout.contains("probe OK"));
}

#[test]
fn without_termination_no_test_upload_is_made() {
    let server = TusServer::start(ServerConfig {
        extensions: vec!["creation".into()],
        ..ServerConfig::default()
    });
    let s = Scratch::new("probe-no-termination");
    let out = probe(&s, &server.endpoint(), "");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("creation    not tried: the server does not advertise termination"),
        "{stdout}"
    );
    assert_eq!(methods(&server), ["OPTIONS"]);
}

#[test]
fn a_url_broker_is_asked_its_health_not_a_one_time_url() {
    let server = TusServer::start(ServerConfig::default());
    let s = Scratch::new("probe-broker");
    let config = s.config(&server.endpoint(), "");
    let text_config = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text_config.replace("[server]\n", "[server]\ntarget = \"url-broker\"\n"),
    )
    .unwrap();
    let out = ferry()
        .args(["check-config", "--probe", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(
        stdout.contains("creation not tried: it would spend a one-time upload URL"),
        "{stdout}{stderr}"
    );
    assert!(
        !methods(&server).contains(&"POST".to_string()),
        "{:?}",
        methods(&server)
    );
}

#[test]
fn tus_node_server_is_probed_and_keeps_nothing() {
    let peer = Peer::node_tus_server(NodeOpts::default());
    let s = Scratch::new("probe-node");
    let out = probe(&s, &peer.endpoint(), "");
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{stderr}\n{}",
        peer.logs()
    );
    assert!(stdout.contains("version 1.0.0"), "{stdout}");
    assert!(stdout.contains("termination"), "{stdout}");
    assert!(
        stdout.contains("creation    allowed with these credentials"),
        "{stdout}"
    );
    assert_eq!(peer.upload_count(), 0, "the test upload was deleted");
}
