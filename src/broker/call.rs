//! A Stream API call with a deadline on the whole exchange (connect, send, the answer's head
//! and body), not only on each read: a Stream (or a proxy) that trickles its answer a byte at
//! a time never holds a device's request past `api_timeout`.
//!
//! Key idea: the transport's timeouts are per operation, and nothing can cut a call from
//! outside, so the call runs on a thread of its own and the device's request waits for it only
//! until the deadline. A call still running after its deadline ("late") ends at the
//! transport's own timeouts; late calls are counted, and beyond [`MAX_LATE`] new calls are
//! not started (the device gets 503), so a Stream that trickles cannot use up the threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::transport::{Transport, TransportError};
use crate::tus::{Request, Response};

/// Late calls allowed at once (below the task limit's spare, see `sizing::SPARE_TASKS`).
pub(crate) const MAX_LATE: usize = 32;

/// Why a call gave no answer.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The transport failed (its own time-out included).
    Transport(TransportError),
    /// No answer within the deadline (the call goes on, late, until the transport ends it).
    Deadline,
    /// Too many late calls, or no thread: the call was not made.
    Busy,
}

/// Makes Stream calls with a deadline.
pub(crate) struct Caller {
    transport: Arc<dyn Transport>,
    late: Arc<AtomicUsize>,
}

impl Caller {
    /// Calls through `transport`.
    pub(crate) fn new(transport: Arc<dyn Transport>) -> Self {
        Self {
            transport,
            late: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Calls still running after their deadline.
    pub(crate) fn late(&self) -> usize {
        self.late.load(Ordering::SeqCst)
    }

    /// Sends `req` (no body) and waits for the answer at most `within`.
    pub(crate) fn call(&self, req: &Request, within: Duration) -> Result<Response, CallError> {
        if self.late() >= MAX_LATE {
            return Err(CallError::Busy);
        }
        let handoff = Arc::new((Mutex::new(Handoff::default()), Condvar::new()));
        let (transport, req_owned, late) = (self.transport.clone(), req.clone(), self.late.clone());
        let theirs = handoff.clone();
        let spawned = std::thread::Builder::new()
            .name("broker-stream".into())
            .spawn(move || {
                let result = transport.send(&req_owned, None);
                let mut h = lock(&theirs.0);
                if h.abandoned {
                    drop(h);
                    late.fetch_sub(1, Ordering::SeqCst);
                    log_late(&req_owned.url, &result);
                } else {
                    h.result = Some(result);
                    theirs.1.notify_one();
                }
            });
        if let Err(e) = spawned {
            log::error!("cannot start a thread for the Stream call: {e}");
            return Err(CallError::Busy);
        }
        let h = lock(&handoff.0);
        let (mut h, _) = handoff
            .1
            .wait_timeout_while(h, within, |h| h.result.is_none())
            .unwrap_or_else(|e| e.into_inner());
        if let Some(result) = h.result.take() {
            return result.map_err(CallError::Transport);
        }
        // Under the lock: the thread sees `abandoned` only after the count went up.
        h.abandoned = true;
        self.late.fetch_add(1, Ordering::SeqCst);
        Err(CallError::Deadline)
    }
}

/// What the calling thread hands the waiting one.
#[derive(Default)]
struct Handoff {
    result: Option<Result<Response, TransportError>>,
    /// The waiter gave up (the deadline passed).
    abandoned: bool,
}

fn lock(m: &Mutex<Handoff>) -> MutexGuard<'_, Handoff> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A late call's end, for operators: a video Stream created then was never handed out (an
/// unused direct upload expires at Stream by itself).
fn log_late(url: &str, result: &Result<Response, TransportError>) {
    let path = url.split('?').next().unwrap_or_default();
    match result {
        Ok(r) => log::warn!(
            "Stream answered {} after the deadline (POST {path}): the device had 504; a video \
             created then is left to expire unused",
            r.status
        ),
        Err(e) => {
            log::info!("Stream call past its deadline ended without an answer ({e}, POST {path})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tus::{Body, Method};
    use std::sync::mpsc;

    /// Answers 201 when let through by `gate`; counts calls.
    struct Gated {
        gate: Mutex<mpsc::Receiver<()>>,
        calls: AtomicUsize,
    }

    impl Transport for Gated {
        fn send(
            &self,
            _req: &Request,
            _body: Option<Box<dyn std::io::Read + Send + 'static>>,
        ) -> Result<Response, TransportError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let _ = self.gate.lock().unwrap().recv();
            Ok(Response {
                status: 201,
                headers: Vec::new(),
                body: String::new(),
            })
        }
    }

    fn request() -> Request {
        Request {
            method: Method::Post,
            url: "http://127.0.0.1:9/client/v4/accounts/a/stream?direct_user=true".into(),
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    #[test]
    fn answers_in_time_pass_and_late_calls_are_bounded() {
        let (open, gate) = mpsc::channel();
        let transport = Arc::new(Gated {
            gate: Mutex::new(gate),
            calls: AtomicUsize::new(0),
        });
        let caller = Caller::new(transport.clone());
        open.send(()).unwrap();
        let answer = caller.call(&request(), Duration::from_secs(60)).unwrap();
        assert_eq!(answer.status, 201);
        assert_eq!(caller.late(), 0);
        // The gate stays shut: every call misses its (short) deadline and is counted.
        for n in 1..=MAX_LATE {
            let e = caller.call(&request(), Duration::from_millis(5));
            assert!(matches!(e, Err(CallError::Deadline)), "{e:?}");
            assert_eq!(caller.late(), n);
        }
        let busy = caller.call(&request(), Duration::from_secs(60));
        assert!(matches!(busy, Err(CallError::Busy)), "{busy:?}");
        assert_eq!(transport.calls.load(Ordering::SeqCst), 1 + MAX_LATE);
        // The late calls end (the transport's own time-outs, here the gate): counted down.
        drop(open);
        let mut spins = 0u64;
        while caller.late() > 0 {
            spins += 1;
            assert!(spins < 1 << 32, "late calls never ended");
            std::thread::yield_now();
        }
        let (open, gate) = mpsc::channel();
        *transport.gate.lock().unwrap() = gate;
        open.send(()).unwrap();
        assert_eq!(
            caller
                .call(&request(), Duration::from_secs(60))
                .unwrap()
                .status,
            201
        );
    }
}
