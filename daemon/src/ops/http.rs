//! The operators' HTTP endpoints on the `[http]` address: `/healthz` (the
//! process runs), `/readyz` (see [`crate::ops::health`]) and `/metrics` (see
//! [`crate::ops::metrics`]).
//!
//! axum routes, served by hyper's HTTP/1 one request per connection
//! (`Connection: close`). Every request is bounded so that a slow or huge one
//! cannot hurt the daemon:
//! - the request head must arrive within [`REQUEST_TIMEOUT`] (else 408) and
//!   fit in [`MAX_HEAD_BYTES`] (else hyper answers 431); a body is never read;
//! - the answer must be ready within [`REQUEST_TIMEOUT`] (else 408, tower-http);
//! - a whole connection lasts at most [`CONNECTION_TIMEOUT`] (a client that
//!   does not take its answer is dropped);
//! - at most [`MAX_CONNECTIONS`] are served at once (more are closed unanswered).
//!
//! The server is a supervised stage (`http`): if it dies, `/readyz` cannot
//! say so, but the service exits and systemd restarts it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

use crate::ops::health::{Readiness, CHECK_TIMEOUT};
use crate::ops::metrics::{self, DatabaseCounts, Metrics};
use crate::supervise::Supervisor;

/// Time for the request head to arrive, and again for the answer to be ready.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head (request line and headers) we read.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Longest a connection is kept: head, answer, and as long again to write it.
pub const CONNECTION_TIMEOUT: Duration = REQUEST_TIMEOUT.saturating_mul(3);
/// After answering: how long, and how much, unread input is still taken before closing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_DRAIN_BYTES: u64 = 1 << 20;
/// The answer to a head that did not arrive in time (hyper closes without one).
const HEAD_TIMEOUT_ANSWER: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n\
Content-Length: 34\r\nCache-Control: no-store\r\nConnection: close\r\n\r\nrequest head not received in time\n";

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
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `listen` and serves, as the supervised stage `http`, until
    /// stopped. It has its own stop token: the endpoints stay up while the
    /// other stages drain after the service's shutdown token.
    pub async fn start(
        listen: SocketAddr,
        endpoints: Arc<Endpoints>,
        supervisor: &Supervisor,
    ) -> std::io::Result<Server> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task = supervisor.spawn("http", serve(listener, router(endpoints), stop.clone()));
        tracing::info!(address = %local_addr, "HTTP health and metrics listening");
        Ok(Server { local_addr, stop, task: Some(task) })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops listening and drops the connections still open.
    pub async fn stop(mut self) {
        self.stop.cancel();
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

/// The three endpoints; anything else is 404, any other method 405.
fn router(endpoints: Arc<Endpoints>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(scrape))
        .method_not_allowed_fallback(|| async { (StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n") })
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: the endpoints are /healthz, /readyz and /metrics\n") })
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .layer(SetResponseHeaderLayer::overriding(CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .layer(SetResponseHeaderLayer::overriding(CONNECTION, HeaderValue::from_static("close")))
        .with_state(endpoints)
}

async fn readyz(State(endpoints): State<Arc<Endpoints>>) -> impl IntoResponse {
    let failures = endpoints.readiness.failures().await;
    if failures.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, failures.iter().map(|f| format!("{f}\n")).collect::<String>())
    }
}

async fn scrape(State(endpoints): State<Arc<Endpoints>>) -> impl IntoResponse {
    let counts = database_counts(&endpoints.db).await;
    if let Err(e) = &counts {
        tracing::debug!(error = %e, "metrics: database counts unavailable");
    }
    ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], endpoints.metrics.encode(counts.ok().as_ref()))
}

async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let router = router.clone();
                        connections.spawn(async move {
                            if tokio::time::timeout(CONNECTION_TIMEOUT, answer(socket, router)).await.is_err() {
                                tracing::debug!(peer = %peer, "HTTP connection over its time; closed");
                            }
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

/// Serves the one request of a connection. hyper borrows the socket, so that
/// afterwards we can still answer a head that timed out and drain the input.
async fn answer(mut socket: TcpStream, router: Router) {
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(false)
        .serve_connection(TokioIo::new(&mut socket), TowerToHyperService::new(router))
        .await;
    match served {
        Ok(()) => {}
        Err(e) if e.is_timeout() => {
            let _ = socket.write_all(HEAD_TIMEOUT_ANSWER).await;
        }
        Err(e) => tracing::debug!(error = %e, "HTTP connection ended with an error"),
    }
    // The end of the answer (FIN), then what the client still sends.
    let _ = socket.shutdown().await;
    drain(&mut socket).await;
}

/// Reads (and drops) what the client still sends, bounded, until it closes.
/// Closing a socket with unread input makes the kernel send a reset, which
/// can destroy our answer before the client read it (a request body, or the
/// rest of a head that was too large).
async fn drain(socket: &mut TcpStream) {
    let mut rest = (&mut *socket).take(MAX_DRAIN_BYTES);
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, tokio::io::copy(&mut rest, &mut tokio::io::sink())).await;
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
