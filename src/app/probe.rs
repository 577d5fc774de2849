//! `ferry check-config --probe`: asks the endpoint, with the configured credentials and TLS
//! settings, what it offers, and leaves nothing behind on it.
//!
//! Key idea: the probe asks what a first upload asks, so an answer that would stop a fleet's
//! uploads shows here, worded as what to fix, before a rollout ships. Nothing stays on the
//! server: OPTIONS changes nothing; a creation is tried only where the server advertises
//! termination, as a 1-byte upload (never complete, so no processing of a finished upload
//! starts) that is deleted at once. A Cloudflare Stream endpoint is asked OPTIONS only (a
//! creation makes a video in the account); a URL broker's creation would spend a one-time
//! upload URL, so its `/healthz` is asked instead.
//!
//! Steps, one printed line each: `discover` (reachable, TLS, tus version, extensions, max size)
//! → `creation` (POST, then DELETE) for a tus target, or `broker_health` for a URL broker.

use super::print_line;
use crate::config::Config;
use crate::error::Result;
use crate::progress::human_bytes;
use crate::stream::Target;
use crate::transport::http::UreqTransport;
use crate::transport::{FailureKind, Transport, TransportError};
use crate::tus::response::{self, ServerCaps};
use crate::tus::{metadata, request, url, Outcome, Request, Response};
use crate::upload::{scope_headers, Settings};

/// `check-config --probe`'s exit code when the configuration is valid but the endpoint did not
/// pass the probe (unreachable, TLS, not tus, or refused with these credentials).
pub(super) const PROBE_FAILED: i32 = 4;

/// The `filename` a test upload carries, so that it is recognised in a server's logs.
const PROBE_NAME: &str = "ferry-check-config-probe";

/// Probes `config`'s endpoint, printing what it finds; the exit code.
pub(super) fn probe(config: &Config) -> Result<i32> {
    let transport = UreqTransport::new(&config.http)?;
    let probe = Probe {
        transport: &transport,
        settings: &config.upload,
    };
    Ok(match probe.run() {
        Ok(()) => {
            print_line("probe OK");
            0
        }
        Err(why) => {
            log::error!("probe failed: {why}");
            PROBE_FAILED
        }
    })
}

struct Probe<'a> {
    transport: &'a dyn Transport,
    settings: &'a Settings,
}

impl Probe<'_> {
    fn run(&self) -> std::result::Result<(), String> {
        let caps = self.discover()?;
        match self.settings.target {
            Target::Tus => self.creation(&caps),
            Target::CloudflareStream => {
                show(
                    "creation",
                    "not tried: on Cloudflare Stream it would make a video in the account",
                );
                Ok(())
            }
            Target::UrlBroker => self.broker_health(),
        }
    }

    /// Sends `req` with the configured headers (credentials only to the endpoint's origin).
    fn send(&self, mut req: Request) -> std::result::Result<Response, TransportError> {
        scope_headers(self.settings, &self.settings.endpoint, &mut req);
        self.transport.send(&req, None)
    }

    /// OPTIONS: reachable, TLS, and what the server says of tus.
    fn discover(&self) -> std::result::Result<ServerCaps, String> {
        let endpoint = &self.settings.endpoint;
        let peer = host_port(endpoint);
        let resp = match self.send(request::options(endpoint)) {
            Ok(r) => r,
            Err(e) => {
                show("reachable", &format!("no: {}", unreachable(&e)));
                return Err(format!("{peer} gave no answer"));
            }
        };
        let tls = if endpoint.to_ascii_lowercase().starts_with("https:") {
            ", TLS OK (certificate verified)"
        } else {
            " (plain HTTP: no TLS)"
        };
        show("reachable", &format!("{peer}{tls}"));
        if !(200..300).contains(&resp.status) {
            if [401, 403, 404].contains(&resp.status) {
                return Err(refusal("OPTIONS", &resp));
            }
            show(
                "tus",
                &format!(
                    "OPTIONS answered {}: no discovery; uploads assume tus core + creation",
                    resp.message()
                ),
            );
            return Ok(ServerCaps::default());
        }
        let Some(version) = resp.header("Tus-Version") else {
            return Err(format!(
                "OPTIONS answered {} without Tus-Version: is {} a tus endpoint?",
                resp.message(),
                url::redact(endpoint)
            ));
        };
        if !version.split(',').any(|v| v.trim() == "1.0.0") {
            return Err(format!(
                "the server speaks tus {version}; ferry needs 1.0.0"
            ));
        }
        let caps = ServerCaps::from_options(&resp);
        show("tus", &describe(version, &caps));
        Ok(caps)
    }

    /// POST a 1-byte upload and DELETE it at once, where the server can terminate uploads.
    fn creation(&self, caps: &ServerCaps) -> std::result::Result<(), String> {
        if !caps.discovered {
            show(
                "creation",
                "not tried: without discovery it is not known that a test upload could be removed",
            );
            return Ok(());
        }
        if !caps.supports("creation") {
            return Err(
                "the server does not advertise the creation extension, which ferry needs".into(),
            );
        }
        if !caps.supports("termination") {
            show("creation", "not tried: the server does not advertise termination, so a test upload could not be removed");
            return Ok(());
        }
        let endpoint = &self.settings.endpoint;
        let meta = metadata::encode(&[("filename".into(), Some(PROBE_NAME.into()))])
            .map_err(|e| e.to_string())?;
        let resp = self
            .send(request::create(endpoint, 1, meta.as_deref(), None))
            .map_err(|e| format!("creation: {e}"))?;
        let sent = response::Sent {
            offset: 0,
            len: 0,
            length: 1,
            checksum: false,
        };
        let Outcome::Created { url: upload, .. } = response::created(&resp, endpoint, sent) else {
            show("creation", &format!("refused: {}", resp.message()));
            return Err(refusal("creation (POST)", &resp));
        };
        self.remove(&upload)?;
        show(
            "creation",
            "allowed with these credentials (a 1-byte test upload was created and deleted at once)",
        );
        Ok(())
    }

    /// DELETE the test upload at `upload`.
    fn remove(&self, upload: &str) -> std::result::Result<(), String> {
        let left = |why: String| {
            format!(
                "a 1-byte test upload was created at {} and could not be deleted ({why}): delete it by hand",
                url::redact(upload)
            )
        };
        let mut req = request::delete(upload);
        scope_headers(self.settings, &self.settings.endpoint, &mut req);
        match self.transport.send(&req, None) {
            Ok(resp) => match response::deleted(&resp) {
                Outcome::Gone { .. } => Ok(()),
                _ => Err(left(resp.message())),
            },
            Err(e) => Err(left(e.to_string())),
        }
    }

    /// `GET /healthz` on a URL broker's origin (a creation would spend a one-time URL).
    fn broker_health(&self) -> std::result::Result<(), String> {
        let origin = url::origin(&self.settings.endpoint).map_err(|e| e.to_string())?;
        let health = format!("{origin}/healthz");
        let resp = self
            .send(request::get(&health))
            .map_err(|e| format!("{health}: {e}"))?;
        let said: serde_json::Value = serde_json::from_str(&resp.body).unwrap_or_default();
        let state = said["status"].as_str().unwrap_or("no status given");
        let devices = said["devices"]
            .as_u64()
            .map_or(String::new(), |n| format!(", {n} devices"));
        match resp.status {
            200 => {
                show("broker", &format!("/healthz: {state}{devices} (creation not tried: it would spend a one-time upload URL)"));
                Ok(())
            }
            404 => {
                show("broker", "no /healthz (not a ferry broker?); creation not tried: it would spend a one-time upload URL");
                Ok(())
            }
            _ => Err(format!(
                "the broker's /healthz answered {}: {state}{devices}",
                resp.message()
            )),
        }
    }
}

/// One finding, aligned as `check-config` prints its lines.
fn show(what: &str, text: &str) {
    print_line(&format!("{what:<11} {text}"));
}

/// `host:port` of an endpoint.
fn host_port(endpoint: &str) -> String {
    url::origin(endpoint).map_or_else(
        |_| endpoint.to_string(),
        |o| {
            o.split_once("://")
                .map_or(o.clone(), |(_, hp)| hp.to_string())
        },
    )
}

/// Why no answer came, as the transport tells it (it names `host:port`).
fn unreachable(e: &TransportError) -> String {
    match e.kind {
        FailureKind::Tls => format!("{e} (check server.ca_file, client_cert and client_key)"),
        _ => e.to_string(),
    }
}

/// The tus line: version, extensions, max size.
fn describe(version: &str, caps: &ServerCaps) -> String {
    let extensions = if caps.extensions.is_empty() {
        "none".to_string()
    } else {
        caps.extensions.join(", ")
    };
    let max = caps.max_size.map_or("not given".to_string(), |m| {
        format!("{} ({m} bytes)", human_bytes(m))
    });
    format!("version {version}; extensions: {extensions}; max size {max}")
}

/// An answer that refuses `what`, with what to do about it.
fn refusal(what: &str, resp: &Response) -> String {
    let advice = match resp.status {
        401 => "the server wants other credentials: check the Authorization header (server.headers, or the secret file it names)",
        403 => "these credentials may not create uploads here",
        404 => "nothing is at this URL: check the path of server.endpoint",
        405 => "this URL takes no such request: is server.endpoint the creation URL?",
        413 => "the server refuses even a 1-byte upload (Tus-Max-Size, or a proxy's limit)",
        _ => "see the server's message",
    };
    format!("{what} answered {}: {advice}", resp.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    #[test]
    fn refusals_say_what_to_fix() {
        assert!(refusal("creation (POST)", &resp(401)).contains("Authorization header"));
        assert!(refusal("creation (POST)", &resp(403)).contains("may not create"));
        assert!(refusal("creation (POST)", &resp(404)).contains("path of server.endpoint"));
    }

    #[test]
    fn findings_name_the_port_and_the_size() {
        assert_eq!(
            host_port("https://tus.example.com/files/"),
            "tus.example.com:443"
        );
        assert_eq!(host_port("http://127.0.0.1:1080/files/"), "127.0.0.1:1080");
        let caps = ServerCaps {
            discovered: true,
            extensions: vec!["creation".into(), "termination".into()],
            max_size: Some(1 << 30),
            checksum_algorithms: Vec::new(),
        };
        assert_eq!(
            describe("1.0.0", &caps),
            "version 1.0.0; extensions: creation, termination; max size 1.0 GiB (1073741824 bytes)"
        );
    }
}
