//! The DICOM SCP: C-ECHO and C-STORE over dicom-ul on tokio.
//!
//! - [`serve`] accepts TCP connections, and DICOM TLS ones when
//!   `[ingest.tls]` is set, one task per association, at most
//!   `max-associations` at once (more are rejected as transient,
//!   local-limit-exceeded).
//! - [`association`] negotiates (AE title and peer allow-lists, presentation
//!   contexts) and runs the DIMSE loop with read and idle timeouts.
//! - [`receive`] writes a data set to a temporary file as its PDUs arrive,
//!   checking its structure in the same pass.
//! - [`store`] turns the received data set into a spooled file and a
//!   database row, then picks the C-STORE status.
//! - [`check`] walks a data set's structure without believing a declared
//!   length, and reads its identity.
//! - [`cxr_led_dicom::dimse`] reads and writes command sets.

pub mod association;
pub mod check;
pub mod receive;
pub mod store;

pub use association::Transport;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason, AssociationRJSource,
};
use dicom_ul::Pdu;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::audit;
use crate::config::IngestConfig;
use crate::live::Live;
use crate::ops::metrics::{AssociationOutcome, Metrics};
use crate::spool::Spool;

/// What every association task shares.
#[derive(Debug)]
pub struct Shared {
    /// The `[ingest]` configuration at start-up (listener, limits, timeouts).
    pub config: IngestConfig,
    /// `[ingest]` as last reloaded: every association reads the allow-lists
    /// from it (hot reload).
    pub live: Arc<Live<IngestConfig>>,
    /// The spool folder (its receiving threads hold it too).
    pub spool: Arc<Spool>,
    /// The database.
    pub db: PgPool,
    /// SOP Instance UIDs being stored right now: a second copy waits for the
    /// first to finish, then is recognised as a duplicate.
    pub in_flight: Mutex<HashSet<String>>,
    /// Where associations and received instances are counted.
    pub metrics: Arc<Metrics>,
}

impl Shared {
    /// Bundles the parts.
    pub fn new(config: IngestConfig, spool: Arc<Spool>, db: PgPool, metrics: Arc<Metrics>) -> Shared {
        let live = Arc::new(Live::new(config.clone()));
        Shared { config, live, spool, db, in_flight: Mutex::new(HashSet::new()), metrics }
    }
}

/// The TLS listener and its rustls configuration (`[ingest.tls]`).
pub struct TlsListener {
    /// The bound socket.
    pub listener: TcpListener,
    /// Our certificate, key and client-certificate policy.
    pub config: Arc<rustls::ServerConfig>,
}

/// Accepts on the TLS listener, or never when there is none.
async fn accept_tls(tls: Option<&TlsListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match tls {
        Some(tls) => tls.listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Accepts associations on the plain listener and, when configured, the TLS
/// listener until `shutdown` resolves, then gives running associations
/// `grace` to finish and aborts the rest (their temporary files are removed
/// at the next start; they never got Success). Both listeners share the
/// `max-associations` limit.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsListener>,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let permits = Arc::new(Semaphore::new(shared.config.max_associations));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (accepted, transport) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => (accepted, Transport::Plain),
            accepted = accept_tls(tls.as_ref()) => {
                (accepted, Transport::Tls(tls.as_ref().expect("accepts only with a listener").config.clone()))
            }
        };
        match accepted {
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                let shared = shared.clone();
                match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tasks.spawn(async move {
                            association::run(socket, peer, shared, transport).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        tasks.spawn(reject_busy(socket, peer, shared, transport));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    drop(tls);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        tracing::warn!(remaining = tasks.len(), "aborting associations still running at shutdown");
        tasks.shutdown().await;
    }
}

/// Reads the A-ASSOCIATE-RQ of a connection over the association limit and
/// answers A-ASSOCIATE-RJ (transient, service provider, local limit
/// exceeded). A TLS connection is closed before its handshake instead: no
/// handshake is spent on a connection we cannot serve.
async fn reject_busy(mut socket: TcpStream, peer: SocketAddr, shared: Arc<Shared>, transport: Transport) {
    let read_rq = async {
        let mut header = [0u8; 6];
        socket.read_exact(&mut header).await?;
        let length = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as u64;
        let mut rest = (&mut socket).take(length.min(1 << 20));
        tokio::io::copy(&mut rest, &mut tokio::io::sink()).await?;
        std::io::Result::Ok(())
    };
    let plain = matches!(transport, Transport::Plain);
    if plain && tokio::time::timeout(shared.config.read_timeout(), read_rq).await.is_ok() {
        let rj = Pdu::AssociationRJ(AssociationRJ {
            result: AssociationRJResult::Transient,
            source: AssociationRJSource::ServiceProviderPresentation(
                AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
            ),
        });
        let mut bytes = Vec::new();
        if dicom_ul::write_pdu(&mut bytes, &rj).is_ok() {
            let _ = socket.write_all(&bytes).await;
            let _ = socket.shutdown().await;
        }
    }
    shared.metrics.associations.get_or_create(&AssociationOutcome::Rejected).inc();
    let peer = peer.to_string();
    tracing::warn!(peer = %peer, "association rejected: too many concurrent associations");
    audit::record_or_log(
        &shared.db,
        &audit::Event {
            event: audit::ASSOCIATION,
            outcome: "rejected",
            peer_address: Some(&peer),
            detail: Some(if plain {
                "transient: local limit exceeded (max-associations)"
            } else {
                "TLS connection closed: local limit exceeded (max-associations)"
            }),
            ..Default::default()
        },
    )
    .await;
}
