//! The loopback HTTP/1.1 core of the test servers: connections, request heads, bodies, answers.
//!
//! The key idea: the core frames and nothing more. A server's handler gets each request head as
//! a [`Request`], reads the body and answers through an [`Exchange`], and says with an [`After`]
//! how the connection goes on, abortive ways included (a TCP reset, a silent drop), since test
//! servers fail on purpose. Where a server must misbehave below HTTP (cut a body mid-way, stall,
//! write what no HTTP server would), it reads the body in the steps it likes and writes to the
//! raw socket, [`Conn::stream`].
//!
//! A connection's states: waiting for a request head (keep-alive idle) → in the handler (body,
//! after `100 Continue` when asked; answer, or by choice none) → waiting again, until either side
//! closes, a read times out, or the server stops. A head that is not HTTP/1.x gets 400 and a
//! close without reaching the handler (at its first byte when that cannot start a method: a
//! TLS handshake sent to this plain-HTTP server is answered at once, as Node does).
#![allow(
    dead_code,
    reason = "each test uses a different part of the support code"
)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::accept::{self, Acceptor, Stop};

/// The size of the buffers bodies stream through.
pub const BUF_BYTES: usize = 64 * 1024;
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_LINE_BYTES: u64 = 8 * 1024;
/// How long a graceful close keeps reading (and discarding) what the client still sends.
const LINGER: Duration = Duration::from_secs(2);

/// How a connection goes on after one exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    KeepAlive,
    /// Graceful close: FIN, then discard what the client still sends for a moment.
    Close,
    /// Abortive close: TCP RST.
    Reset,
    /// Just drop the socket.
    Drop,
}

/// Serves HTTP/1.1 on `listener` until `stop`: `handle` runs for every request head.
/// `read_timeout` bounds each wait for the client (idle keep-alive or mid-body) and each write,
/// after which the connection is closed, as the tus spec asks servers to do.
pub fn serve<H>(
    listener: TcpListener,
    name: &str,
    stop: &Stop,
    read_timeout: Duration,
    handle: H,
) -> Acceptor
where
    H: Fn(&mut Conn, Request) -> After + Send + Sync + 'static,
{
    let conn_stop = stop.clone();
    Acceptor::start(listener, name, stop, move |stream| {
        if let Some(mut conn) = Conn::new(stream, &conn_stop, read_timeout) {
            conn.serve(&handle);
        }
    })
}

/// A socket read with short timeouts, so that the thread notices shutdown, and gives up after
/// `read_timeout` without data.
struct Patient {
    stream: TcpStream,
    stop: Stop,
    read_timeout: Duration,
}

impl Read for Patient {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let started = Instant::now();
        loop {
            match self.stream.read(buf) {
                Err(e) if accept::is_timeout(&e) => {
                    if started.elapsed() >= self.read_timeout || self.stop.is_set() {
                        return Err(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
}

type Reader = BufReader<Patient>;

/// One client connection.
pub struct Conn {
    reader: Reader,
}

impl Conn {
    fn new(stream: TcpStream, stop: &Stop, read_timeout: Duration) -> Option<Conn> {
        let _ = stream.set_nodelay(true);
        stream.set_read_timeout(Some(accept::POLL)).ok()?;
        stream.set_write_timeout(Some(read_timeout)).ok()?;
        let patient = Patient {
            stream,
            stop: stop.clone(),
            read_timeout,
        };
        let reader = BufReader::with_capacity(BUF_BYTES, patient);
        Some(Conn { reader })
    }

    /// The raw socket, for writing what HTTP framing would not.
    pub fn stream(&self) -> &TcpStream {
        &self.reader.get_ref().stream
    }

    /// Whether the client closed or reset the connection while nobody read from it.
    pub fn peer_gone(&self) -> bool {
        let mut probe = [0u8; 1];
        match self.stream().peek(&mut probe) {
            Ok(0) => self.reader.buffer().is_empty(),
            Ok(_) => false,
            Err(e) => !accept::is_timeout(&e),
        }
    }

    fn serve<H: Fn(&mut Conn, Request) -> After>(&mut self, handle: &H) {
        loop {
            let after = match read_head(&mut self.reader) {
                Ok(Some(req)) => handle(self, req),
                Ok(None) | Err(HeadError::Io) => After::Drop,
                Err(HeadError::Malformed(msg)) => {
                    let reply = Response::new(400).text(&msg).closing();
                    let _ = write_response(self.stream(), &reply, false);
                    After::Close
                }
            };
            match after {
                After::KeepAlive => {}
                After::Close => return graceful_close(self.stream()),
                After::Reset => return accept::set_reset_on_close(self.stream()),
                After::Drop => return,
            }
        }
    }
}

/// Sends FIN and reads until the client closes (or [`LINGER`] passes), so that a client still
/// sending a body gets our response instead of a reset.
fn graceful_close(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut buf = [0u8; 8192];
    let mut reader = stream;
    while Instant::now() < deadline {
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if accept::is_timeout(&e) => {}
            Err(_) => return,
        }
    }
}

/// A parsed request head.
#[derive(Clone, Debug)]
pub struct Request {
    /// The method as sent.
    pub method: String,
    /// Path and query, origin-form (an absolute-form target loses its scheme and authority).
    pub target: String,
    pub http10: bool,
    /// All headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        let found = self.headers.iter().find(|(n, _)| n == name);
        found.map(|(_, v)| v.as_str())
    }

    /// The target's path, without query.
    pub fn path(&self) -> &str {
        self.target.split(['?', '#']).next().unwrap_or_default()
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        let values = self.headers.iter().filter(|(n, _)| n == name);
        values
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn wants_close(&self) -> bool {
        self.has_token("connection", "close")
            || (self.http10 && !self.has_token("connection", "keep-alive"))
    }

    fn expects_continue(&self) -> bool {
        let expect = self.header("expect");
        !self.http10 && expect.is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    }
}

enum HeadError {
    /// The connection ended or failed: close quietly.
    Io,
    /// Not HTTP/1.x: answer 400 and close.
    Malformed(String),
}

/// Reads one request head; `Ok(None)` when the client closed the connection between requests.
fn read_head(reader: &mut Reader) -> Result<Option<Request>, HeadError> {
    // Like Node's parser (@tus/server), judge the first byte at once: a TLS ClientHello
    // (0x16) gets its 400 now, instead of waiting for a line end that may never come.
    match reader.fill_buf().map_err(|_| HeadError::Io)?.first() {
        Some(b) if !(b.is_ascii_alphabetic() || b"\r\n".contains(b)) => {
            return Err(HeadError::Malformed(format!(
                "a request line cannot start with byte {b:#04x}"
            )))
        }
        _ => {}
    }
    let mut lines: Vec<String> = Vec::new();
    let mut total = 0usize;
    loop {
        let mut line = Vec::new();
        let read = reader
            .by_ref()
            .take(MAX_LINE_BYTES)
            .read_until(b'\n', &mut line);
        let n = read.map_err(|_| HeadError::Io)?;
        if n == 0 {
            return if total == 0 {
                Ok(None)
            } else {
                Err(HeadError::Io)
            };
        }
        total += n;
        if !line.ends_with(b"\n") && (line.len() as u64) < MAX_LINE_BYTES {
            return Err(HeadError::Io); // the connection ended mid-line
        }
        if total > MAX_HEAD_BYTES || !line.ends_with(b"\n") {
            return Err(HeadError::Malformed("request head too large".to_string()));
        }
        let text = String::from_utf8(line)
            .map_err(|_| HeadError::Malformed("request head is not UTF-8".to_string()))?;
        let text = text.trim_end_matches('\n').trim_end_matches('\r');
        match (text.is_empty(), lines.is_empty()) {
            (true, true) => {} // RFC 9112 §2.2: ignore empty lines before the request line
            (true, false) => return parse_head(&lines).map(Some).map_err(HeadError::Malformed),
            (false, _) => lines.push(text.to_string()),
        }
    }
}

fn parse_head(lines: &[String]) -> Result<Request, String> {
    let request_line = lines.first().map(String::as_str).unwrap_or_default();
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(format!("bad request line {request_line:?}"));
    };
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(format!("unsupported HTTP version {version:?}")),
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!("bad method {method:?}"));
    }
    let headers = lines[1..]
        .iter()
        .map(|l| parse_header_line(l))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Request {
        method: method.to_string(),
        target: origin_form(target)?,
        http10,
        headers,
    })
}

fn parse_header_line(line: &str) -> Result<(String, String), String> {
    let Some((name, value)) = line.split_once(':') else {
        return Err(format!("bad header line {line:?}"));
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("bad header name {name:?}"));
    }
    let value = value.trim_matches([' ', '\t']).to_string();
    Ok((name.to_ascii_lowercase(), value))
}

/// An origin-form or absolute-form request target (or `*`) as origin-form.
fn origin_form(target: &str) -> Result<String, String> {
    let without_origin = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    if without_origin.starts_with('/') || without_origin == "*" {
        Ok(without_origin.to_string())
    } else {
        Err(format!("bad request target {target:?}"))
    }
}

/// A non-negative decimal integer, digits only (no sign, no spaces).
pub fn parse_u64(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// How the request body is delimited.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

fn framing(req: &Request) -> Result<Framing, String> {
    let lengths: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .collect();
    if let Some(te) = req.header("transfer-encoding") {
        if !lengths.is_empty() {
            return Err("both Content-Length and Transfer-Encoding".to_string());
        }
        if !te.eq_ignore_ascii_case("chunked") {
            return Err(format!("unsupported Transfer-Encoding {te:?}"));
        }
        return Ok(Framing::Chunked);
    }
    let Some(first) = lengths.first() else {
        return Ok(Framing::None);
    };
    let length = parse_u64(first).ok_or_else(|| format!("bad Content-Length {first:?}"))?;
    if lengths.iter().any(|l| l != first) {
        return Err("conflicting Content-Length values".to_string());
    }
    Ok(if length == 0 {
        Framing::None
    } else {
        Framing::Length(length)
    })
}

/// Where the reading of one request body stands.
pub struct Body {
    framing: Framing,
    /// Bytes left in the body (Length) or in the current chunk (Chunked).
    left: u64,
    finished: bool,
    received: u64,
}

impl Body {
    fn new(framing: Framing) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        Body {
            framing,
            left,
            finished: framing == Framing::None,
            received: 0,
        }
    }

    /// The whole body has been read (true at once for a request without one).
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Body bytes read so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The body's length when the head declared it (`Some(0)` without a body); `None` when
    /// chunked.
    pub fn declared(&self) -> Option<u64> {
        match self.framing {
            Framing::None => Some(0),
            Framing::Length(n) => Some(n),
            Framing::Chunked => None,
        }
    }

    /// Reads body bytes; `Ok(0)` at the end of the body; `UnexpectedEof` if the connection ends
    /// first; `InvalidData` on bad chunk framing.
    fn read(&mut self, reader: &mut Reader, buf: &mut [u8]) -> io::Result<usize> {
        if self.finished || buf.is_empty() {
            return Ok(0);
        }
        if self.framing == Framing::Chunked && self.left == 0 {
            self.left = read_chunk_size(reader)?;
            if self.left == 0 {
                skip_trailers(reader)?;
                self.finished = true;
                return Ok(0);
            }
        }
        let want = usize::try_from(self.left).map_or(buf.len(), |left| left.min(buf.len()));
        let n = reader.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        self.received += n as u64;
        if self.left == 0 {
            match self.framing {
                Framing::Chunked => expect_empty_line(reader)?,
                _ => self.finished = true,
            }
        }
        Ok(n)
    }
}

fn read_line(reader: &mut Reader) -> io::Result<String> {
    let mut line = Vec::new();
    reader
        .by_ref()
        .take(MAX_LINE_BYTES)
        .read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\n") {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let text = String::from_utf8(line).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    Ok(text
        .trim_end_matches('\n')
        .trim_end_matches('\r')
        .to_string())
}

fn read_chunk_size(reader: &mut Reader) -> io::Result<u64> {
    let line = read_line(reader)?;
    let size = line.split(';').next().unwrap_or_default().trim();
    let valid = !size.is_empty() && size.len() <= 15 && size.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"));
    }
    u64::from_str_radix(size, 16).map_err(|_| io::ErrorKind::InvalidData.into())
}

fn expect_empty_line(reader: &mut Reader) -> io::Result<()> {
    if read_line(reader)?.is_empty() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "chunk data longer than its size",
        ))
    }
}

fn skip_trailers(reader: &mut Reader) -> io::Result<()> {
    for _ in 0..100 {
        if read_line(reader)?.is_empty() {
            return Ok(());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "too many trailers",
    ))
}

/// One request being served: its head, its body, and the way its answer goes out.
pub struct Exchange<'c> {
    conn: &'c mut Conn,
    pub req: Request,
    body: Body,
    continue_sent: bool,
}

impl<'c> Exchange<'c> {
    /// Starts serving `req`. A body this core cannot delimit is answered 400 (closing) here:
    /// `Err` holds the status sent, `None` if even that failed; the connection should close.
    pub fn start(conn: &'c mut Conn, req: Request) -> Result<Exchange<'c>, Option<u16>> {
        match framing(&req) {
            Ok(framing) => Ok(Exchange {
                conn,
                req,
                body: Body::new(framing),
                continue_sent: false,
            }),
            Err(msg) => {
                let reply = Response::new(400).text(&msg).closing();
                let sent = write_response(conn.stream(), &reply, false).is_ok();
                Err(sent.then_some(400))
            }
        }
    }

    pub fn conn(&self) -> &Conn {
        self.conn
    }

    pub fn body(&self) -> &Body {
        &self.body
    }

    /// Reads the next body bytes (see [`Body`]); `Ok(0)` at the end of the body.
    pub fn read_body(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.body.read(&mut self.conn.reader, buf)
    }

    /// Sends `100 Continue` if the client waits for it before sending its body.
    pub fn send_continue(&mut self) -> io::Result<()> {
        if self.req.expects_continue() && !self.continue_sent && !self.body.finished {
            let mut writer = self.conn.stream();
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            self.continue_sent = true;
        }
        Ok(())
    }

    /// Reads and discards the rest of the body.
    pub fn drain(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; BUF_BYTES];
        while self.read_body(&mut buf)? > 0 {}
        Ok(())
    }

    /// Readies the connection for `reply`: the unread body is drained (keep-alive), unless the
    /// client still holds it back for `100 Continue`; then `reply` closes the connection, since
    /// what the client sends next must not be read as a request.
    pub fn prepare(&mut self, reply: &mut Response) -> io::Result<()> {
        if self.body.finished {
            return Ok(());
        }
        if self.req.expects_continue() && !self.continue_sent {
            reply.close = true;
            Ok(())
        } else {
            self.drain()
        }
    }

    /// Writes `reply` (closing if the client asked to); how the connection goes on.
    pub fn send(&mut self, mut reply: Response) -> io::Result<After> {
        reply.close |= self.req.wants_close();
        let head_request = self.req.method == "HEAD";
        write_response(self.conn.stream(), &reply, head_request)?;
        Ok(if reply.close {
            After::Close
        } else {
            After::KeepAlive
        })
    }

    /// [`Exchange::prepare`], then [`Exchange::send`].
    pub fn answer(&mut self, mut reply: Response) -> io::Result<After> {
        self.prepare(&mut reply)?;
        self.send(reply)
    }
}

/// A response to write.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send `Connection: close` and close after it.
    pub close: bool,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            close: false,
        }
    }

    pub fn header(mut self, name: &str, value: impl ToString) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// A `text/plain` body: `message` and a newline.
    pub fn text(self, message: &str) -> Self {
        let with_type = self.header("Content-Type", "text/plain; charset=utf-8");
        with_type.with_body(format!("{message}\n").into_bytes())
    }

    /// `body` as it is (its `Content-Type` is the caller's to set).
    pub fn with_body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

fn write_response(stream: &TcpStream, resp: &Response, head_request: bool) -> io::Result<()> {
    let bytes = render(resp, head_request);
    let mut writer = stream;
    writer.write_all(&bytes)?;
    writer.flush()
}

/// `resp` as the bytes on the wire (for a server that writes them its own way, e.g. slowly).
pub fn render(resp: &Response, head_request: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (name, value) in &resp.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    // RFC 9110 §8.6: no Content-Length on 1xx/204; on HEAD it would describe a GET body.
    if resp.status >= 200 && resp.status != 204 && !head_request {
        out.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    }
    if resp.close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_request {
        bytes.extend_from_slice(&resp.body);
    }
    bytes
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        423 => "Locked",
        429 => "Too Many Requests",
        460 => "Checksum Mismatch",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
