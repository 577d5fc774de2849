//! `GET /healthz`: what a load balancer and an operator need to know about the broker's state,
//! as JSON, without reading logs.
//!
//! Key idea: a broken device tokens file must be visible, but must not take the broker out of
//! service while it can still serve the devices of the file's valid lines. So the answer is
//! 200 while the file is read (`"status": "ok"`, or `"degraded"` with the bad lines listed),
//! and 503 (`"down"`) only when a problem leaves no device to serve: the file cannot be read
//! (deleted, no permission), or none of its lines is valid. A clean file that lists no device
//! (every device revoked on purpose) is 200: that is what the operator asked for.
//!
//! ```json
//! {"status": "degraded", "devices": 2,
//!  "device_tokens_file": {"ok": false, "readable": true, "problems": ["line 7: …"]}}
//! ```
//!
//! Problems name line numbers and what is wrong, never a line's text, a hash or a token,
//! since the endpoint needs no authentication. The file's path is left out for the same reason.

use serde_json::json;

use super::devices::Health;
use super::http::Response;

/// Where the health answer is served (unless the endpoint's own path is this).
pub(crate) const PATH: &str = "/healthz";

/// The answer to `GET` (or `HEAD`) `/healthz` for the device tokens file's `health`.
pub(crate) fn answer(health: &Health) -> Response {
    let ok = health.readable && health.problems.is_empty();
    let (status, word) = if ok {
        (200, "ok")
    } else if health.devices == 0 {
        (503, "down")
    } else {
        (200, "degraded")
    };
    let body = json!({
        "status": word,
        "devices": health.devices,
        "device_tokens_file": {
            "ok": ok,
            "readable": health.readable,
            "problems": health.problems,
        },
    });
    let mut r = Response::new(status);
    r.set("Content-Type", "application/json");
    r.set("Cache-Control", "no-store");
    r.body = body.to_string().into_bytes();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(devices: usize, readable: bool, problems: &[&str]) -> Health {
        Health {
            devices,
            readable,
            problems: problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn answered(h: &Health) -> (u16, serde_json::Value) {
        let r = answer(h);
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.header("Cache-Control"), Some("no-store"));
        (r.status, serde_json::from_slice(&r.body).unwrap())
    }

    #[test]
    fn a_clean_file_is_ok_even_with_no_devices() {
        for n in [3, 0] {
            let (status, body) = answered(&health(n, true, &[]));
            assert_eq!(status, 200);
            assert_eq!(
                body,
                json!({"status": "ok", "devices": n, "device_tokens_file":
                    {"ok": true, "readable": true, "problems": []}})
            );
        }
    }

    #[test]
    fn bad_lines_beside_valid_ones_are_degraded_but_still_200() {
        let (status, body) = answered(&health(2, true, &["line 7: bad"]));
        assert_eq!(status, 200);
        assert_eq!(
            body,
            json!({"status": "degraded", "devices": 2, "device_tokens_file":
                {"ok": false, "readable": true, "problems": ["line 7: bad"]}})
        );
    }

    #[test]
    fn no_device_left_by_a_problem_is_503() {
        let (status, body) = answered(&health(0, false, &["the file cannot be read: gone"]));
        assert_eq!((status, &body["status"]), (503, &json!("down")));
        assert_eq!(body["device_tokens_file"]["readable"], false);
        let (status, body) = answered(&health(0, true, &["line 1: bad"]));
        assert_eq!((status, &body["status"]), (503, &json!("down")));
        assert_eq!(
            body["device_tokens_file"]["problems"],
            json!(["line 1: bad"])
        );
    }
}
