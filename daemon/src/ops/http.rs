//! A small HTTP/1.1 server for operators and monitoring, on the `[http]`
//! address: `/healthz` (the process runs), `/readyz` (see [`crate::ops::health`])
//! and `/metrics` (see [`crate::ops::metrics`]).
//!
//! Hand-written on tokio instead of a web framework: three GET routes do not
//! pay for the compile time. One request per connection (`Connection:
//! close`), GET and HEAD only, and every request is bounded so that a slow or
//! huge one cannot hurt the daemon: the request head must arrive within
//! [`REQUEST_TIMEOUT`] and fit in [`MAX_HEAD_BYTES`] (a body is never read),
//! and at most [`MAX_CONNECTIONS`] are served at once (more are closed
//! unanswered).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::ops::health::{Readiness, CHECK_TIMEOUT};
use crate::ops::metrics::{DatabaseCounts, Metrics};

/// Time for the request head to arrive, and again for the response to be written.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head (request line and headers) we read.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// After answering: how long, and how much, unread input is still taken before closing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_DRAIN_BYTES: u64 = 1 << 20;

/// What the routes answer from.
#[derive(Debug)]
pub struct Endpoints {
    /// The service's metrics.
    pub metrics: Arc<Metrics>,
    /// The readiness checks.
    pub readiness: Arc<Readiness>,
    /// The database, for the counts read at scrape time.
    pub db: PgPool,
}

/// A running server; stopped by [`Server::stop`], or aborted when dropped
/// (a start-up that fails after binding it).
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `listen` and serves until stopped.
    pub async fn start(listen: SocketAddr, endpoints: Arc<Endpoints>) -> std::io::Result<Server> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let (shutdown, stop) = oneshot::channel();
        let task = tokio::spawn(serve(listener, endpoints, stop));
        tracing::info!(address = %local_addr, "HTTP health and metrics listening");
        Ok(Server { local_addr, shutdown: Some(shutdown), task: Some(task) })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops listening and drops the connections still open.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn serve(listener: TcpListener, endpoints: Arc<Endpoints>, mut stop: oneshot::Receiver<()>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let endpoints = endpoints.clone();
                        connections.spawn(async move {
                            handle(socket, &endpoints).await;
                            drop(permit);
                        });
                    }
                    // Dropping the socket closes it: a client over the limit gets no answer.
                    Err(_) => tracing::debug!(peer = %peer, "HTTP connection limit reached; closed"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    connections.shutdown().await;
}

/// A parsed request line.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    /// The path, without the query string.
    path: String,
}

/// An answer, written with `Connection: close`.
#[derive(Debug)]
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Response {
        Response { status, content_type: "text/plain; charset=utf-8", body: body.into(), allow: false }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Why no request could be read.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// Longer than [`MAX_HEAD_BYTES`].
    TooLarge,
    /// The connection ended or failed first (nobody to answer).
    Closed,
}

async fn handle(mut socket: TcpStream, endpoints: &Endpoints) {
    let (response, head_only) = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut socket)).await {
        Err(_) => (Response::text(408, "request head not received in time\n"), false),
        Ok(Err(HeadError::Closed)) => return,
        Ok(Err(HeadError::TooLarge)) => (Response::text(431, "request head too large\n"), false),
        Ok(Ok(head)) => match parse_request_line(&head) {
            Some(request) => (route(&request, endpoints).await, request.method == "HEAD"),
            None => (Response::text(400, "malformed request line\n"), false),
        },
    };
    let write = write_response(&mut socket, &response, head_only);
    match tokio::time::timeout(REQUEST_TIMEOUT, write).await {
        Ok(Ok(())) => drain(&mut socket).await,
        Ok(Err(e)) => tracing::debug!(error = %e, "HTTP response not written"),
        Err(_) => tracing::debug!("HTTP response not taken in time; closed"),
    }
}

/// Reads (and drops) what the client still sends, bounded, until it closes.
/// Closing a socket with unread input makes the kernel send a reset, which
/// can destroy our answer before the client read it (a request body, or the
/// rest of a head that was too large).
async fn drain(socket: &mut TcpStream) {
    let mut rest = (&mut *socket).take(MAX_DRAIN_BYTES);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, tokio::io::copy(&mut rest, &mut tokio::io::sink())).await;
}

/// Reads up to the end of the request head (an empty line).
async fn read_head(socket: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = socket.read(&mut chunk).await.map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_head_end(&head) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Where the head ends: after CRLF CRLF (or a bare LF LF, which some clients send).
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `METHOD SP target SP HTTP/1.x` of the head's first line.
fn parse_request_line(head: &[u8]) -> Option<Request> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
        || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
    {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Some(Request { method: method.to_string(), path: path.to_string() })
}

async fn route(request: &Request, endpoints: &Endpoints) -> Response {
    if !matches!(request.path.as_str(), "/healthz" | "/readyz" | "/metrics") {
        return Response::text(404, "not found: the endpoints are /healthz, /readyz and /metrics\n");
    }
    if request.method != "GET" && request.method != "HEAD" {
        return Response { allow: true, ..Response::text(405, "only GET and HEAD\n") };
    }
    match request.path.as_str() {
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => {
            let failures = endpoints.readiness.failures().await;
            if failures.is_empty() {
                Response::text(200, "ready\n")
            } else {
                Response::text(503, failures.iter().map(|f| format!("{f}\n")).collect::<String>())
            }
        }
        _ => {
            let counts = database_counts(&endpoints.db).await;
            if let Err(e) = &counts {
                tracing::debug!(error = %e, "metrics: database counts unavailable");
            }
            Response {
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                ..Response::text(200, endpoints.metrics.render(counts.ok().as_ref()))
            }
        }
    }
}

/// Jobs and outbox rows by state (only states that have rows), bounded by
/// [`CHECK_TIMEOUT`]. The scrape reads the tables itself rather than asking
/// the stages that own them, so that operators' endpoints sit below every stage.
async fn database_counts(db: &PgPool) -> Result<DatabaseCounts, String> {
    let read = async {
        Ok::<_, sqlx::Error>(DatabaseCounts {
            jobs_by_state: sqlx::query!(r#"SELECT state, count(*) AS "count!" FROM job GROUP BY state ORDER BY state"#)
                .fetch_all(db)
                .await?
                .into_iter()
                .map(|row| (row.state, row.count))
                .collect(),
            outbox_by_state: sqlx::query!(
                r#"SELECT state, count(*) AS "count!" FROM outbox GROUP BY state ORDER BY state"#
            )
            .fetch_all(db)
            .await?
            .into_iter()
            .map(|row| (row.state, row.count))
            .collect(),
        })
    };
    match tokio::time::timeout(CHECK_TIMEOUT, read).await {
        Ok(Ok(counts)) => Ok(counts),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

async fn write_response(socket: &mut TcpStream, response: &Response, head_only: bool) -> std::io::Result<()> {
    let mut bytes = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    if response.allow {
        bytes.push_str("Allow: GET, HEAD\r\n");
    }
    bytes.push_str("\r\n");
    if !head_only {
        bytes.push_str(&response.body);
    }
    socket.write_all(bytes.as_bytes()).await?;
    socket.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        let parse = |line: &str| parse_request_line(line.as_bytes());
        assert_eq!(
            parse("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(Request { method: "GET".into(), path: "/metrics".into() })
        );
        assert_eq!(parse("HEAD /healthz HTTP/1.0\n\n").unwrap().method, "HEAD");
        assert_eq!(parse("GET /metrics\r\n\r\n"), None);
        assert_eq!(parse("GET metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse("GET /metrics HTTP/2\r\n\r\n"), None);
        assert_eq!(parse("get /metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse("GET  /metrics HTTP/1.1\r\n\r\n"), None);
    }

    #[test]
    fn head_ends_at_the_first_empty_line() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(24));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }
}
