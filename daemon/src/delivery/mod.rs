//! Delivery of derived instances to the PACS: the [`outbox`] table and the
//! C-STORE [`scu`]. [`outbox::enqueue`] adds one row per (instance,
//! destination) in the worker's transaction; [`run`] is the sender loop, and
//! each pass ([`deliver_due`]):
//!
//! 1. claims due rows under a lease ([`outbox::claim_due`]), committed before
//!    anything goes over the network;
//! 2. per destination, opens one association and sends each file as a
//!    C-STORE ([`scu`]), renewing the lease of the rows still to go;
//! 3. records each outcome in one transaction with its audit row
//!    ([`outbox::record`]): sent, or retried with [`crate::backoff`] until
//!    `max-attempts`.
//!
//! The same file, hence the same SOP Instance UID, goes out on every attempt:
//! a PACS that stored it but whose answer we never saw gets it again and
//! treats it as the same instance.

pub mod outbox;
pub mod scu;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dicom_ul::association::AsyncClientAssociation;
use sqlx::PgPool;
use tokio::io::{AsyncRead, AsyncWrite};

use self::outbox::Claimed;
use self::scu::{Outcome, StoreError};
use crate::config::{DeliveryConfig, DestinationConfig};
use crate::ops::metrics::{Metrics, Stage};

/// The sender: a pass every `poll-interval-ms` (at once again after a pass
/// that found work) until `shutdown` resolves. A pass in progress finishes
/// first.
/// The configuration is read afresh for every pass (hot reload: destinations
/// and retry settings).
pub async fn run(
    db: PgPool,
    live: Arc<crate::live::Live<DeliveryConfig>>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let config = live.get();
        let poll = Duration::from_millis(config.poll_interval_ms.max(10));
        let wait = match deliver_due(&db, &config, &metrics).await {
            Ok(0) => poll,
            Ok(_) => Duration::ZERO,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "delivery pass failed; retrying");
                poll
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Claims due rows, sends them and records (and counts) the outcomes.
/// Returns how many rows were attempted (0 when nothing was due).
pub async fn deliver_due(db: &PgPool, config: &DeliveryConfig, metrics: &Metrics) -> anyhow::Result<usize> {
    let claimed = outbox::claim_due(db, config).await?;
    let attempted = claimed.len();
    let mut by_destination: BTreeMap<String, Vec<Claimed>> = BTreeMap::new();
    for row in claimed {
        by_destination.entry(row.destination.clone()).or_default().push(row);
    }
    for (name, mut batch) in by_destination {
        batch.sort_by_key(|c| c.id);
        let Some(destination) = config.destinations.iter().find(|d| d.name == name) else {
            let error =
                format!("destination {name:?} is not in [delivery] destinations (removed from the configuration?)");
            for claimed in &batch {
                outbox::record(db, config, metrics, None, claimed, &Outcome::Error(error.clone())).await?;
            }
            continue;
        };
        send_batch(db, config, metrics, destination, &batch).await?;
    }
    Ok(attempted)
}

/// Sends a destination's claimed rows over one association (plain or TLS)
/// and records each outcome as soon as it is known.
async fn send_batch(
    db: &PgPool,
    config: &DeliveryConfig,
    metrics: &Metrics,
    destination: &DestinationConfig,
    batch: &[Claimed],
) -> anyhow::Result<()> {
    let mut classes: Vec<&str> = batch.iter().map(|c| c.sop_class_uid.as_str()).collect();
    classes.sort_unstable();
    classes.dedup();
    let options = scu::association_options(config, destination, &classes);
    let error = match &destination.tls {
        None => {
            match scu::establish(config, destination, options.establish_async(destination.address.as_str())).await {
                Ok(association) => return send_over(association, db, config, metrics, destination, batch).await,
                Err(error) => error,
            }
        }
        Some(tls) => match scu::tls_options(options, tls, destination) {
            Ok(options) => {
                match scu::establish(config, destination, options.establish_tls_async(destination.address.as_str()))
                    .await
                {
                    Ok(association) => return send_over(association, db, config, metrics, destination, batch).await,
                    Err(error) => error,
                }
            }
            Err(error) => error,
        },
    };
    tracing::warn!(destination = %destination.name, error = %error, "cannot associate with destination");
    for claimed in batch {
        outbox::record(db, config, metrics, Some(destination), claimed, &Outcome::Error(error.clone())).await?;
    }
    Ok(())
}

/// Sends the rows over an established association.
async fn send_over<S>(
    mut association: AsyncClientAssociation<S>,
    db: &PgPool,
    config: &DeliveryConfig,
    metrics: &Metrics,
    destination: &DestinationConfig,
    batch: &[Claimed],
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut message_id: u16 = 1;
    for (i, claimed) in batch.iter().enumerate() {
        // Renew the lease of the rows still to go, so that a long batch never
        // outlives it and another daemon does not send them meanwhile.
        let remaining: Vec<i64> = batch[i..].iter().map(|c| c.id).collect();
        outbox::renew_lease(db, &remaining, config.lease()).await?;
        let store_started = std::time::Instant::now();
        let instance = scu::Instance {
            file: &claimed.file,
            sop_class_uid: &claimed.sop_class_uid,
            sop_instance_uid: &claimed.sop_instance_uid,
        };
        let attempt = scu::store(&mut association, config, &instance, message_id).await;
        metrics.observe_stage(Stage::Delivery, store_started.elapsed());
        message_id = message_id.wrapping_add(1).max(1);
        let (outcome, association_usable) = match attempt {
            Ok(outcome) => (outcome, true),
            Err(StoreError::Local(e)) => (Outcome::Error(e), true),
            Err(StoreError::Association(e)) => (Outcome::Error(e), false),
        };
        outbox::record(db, config, metrics, Some(destination), claimed, &outcome).await?;
        if !association_usable {
            // The rest was not tried: make it due again without counting an attempt.
            let rest: Vec<i64> = batch[i + 1..].iter().map(|c| c.id).collect();
            if !rest.is_empty() {
                outbox::make_due(db, &rest).await?;
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), association.abort()).await;
            return Ok(());
        }
    }
    if let Ok(Err(e)) = tokio::time::timeout(config.connect_timeout(), association.release()).await {
        tracing::debug!(destination = %destination.name, error = %e, "association release failed");
    }
    Ok(())
}
