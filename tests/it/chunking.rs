//! End to end: the chunk policy learns from the HEAD after a cut whether the server keeps the
//! bytes of a cut PATCH (issue 16, target 2), with default settings (no `chunk_size`).

use crate::harness::{finished, stderr, upload, Scratch};
use crate::support::flaky_proxy::{FlakyProxy, ProxyPlan};
use crate::support::tus_server::{LocationStyle, ServerConfig, TusServer};

const MIB: usize = 1024 * 1024;

/// Uploads 40 MiB with default settings through a proxy that cuts the link once, 20 MiB in, to
/// our server keeping (or dropping) the bytes of a cut PATCH; returns ferry's stderr. The first
/// PATCH is 4 MiB (no rate yet), the second the rest (10 s of loopback's rate), cut 16 MiB in:
/// more than a loopback send buffer holds, so ferry knows bytes were acknowledged even when
/// the kernel can no longer be asked about the reset connection.
fn upload_through_one_cut(keeps: bool) -> String {
    let server = TusServer::start(ServerConfig {
        store_partial_on_cut: keeps,
        location: LocationStyle::Relative,
        ..ServerConfig::default()
    });
    let proxy = FlakyProxy::start(
        server.addr(),
        ProxyPlan {
            cut_every_bytes: Some(20 * MIB as u64),
            max_cuts: Some(1),
            ..ProxyPlan::default()
        },
    );
    let s = Scratch::new(if keeps {
        "policy-keeps"
    } else {
        "policy-drops"
    });
    let file = s.file("clip.bin", 40 * MIB, 5);
    // Without checksums: a server cannot check a partial body against a checksum of the
    // whole, so with one it drops a cut PATCH (ours does, as the spec implies).
    let cfg = s.config(
        &proxy.rewrite(&server.endpoint()),
        "[upload]\nchecksum = \"off\"",
    );
    let out = upload(&cfg, &[], &[file.as_path()]);
    let done = finished(&out);
    let id = done[0].1.rsplit('/').next().unwrap().to_string();
    assert_eq!(server.upload(&id).unwrap().offset, 40 * MIB as u64);
    assert_eq!(proxy.cuts(), 1);
    stderr(&out)
}

#[test]
fn a_server_that_keeps_a_cut_patchs_bytes_is_recognised() {
    let log = upload_through_one_cut(true);
    assert!(
        log.contains("the server keeps the bytes of a cut PATCH"),
        "{log}"
    );
}

#[test]
fn a_server_that_drops_a_cut_patch_is_recognised() {
    let log = upload_through_one_cut(false);
    assert!(log.contains("the server drops a cut PATCH whole"), "{log}");
}
