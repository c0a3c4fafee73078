//! The `outbox` table: one row per (derived instance, destination), added in
//! the transaction that records the enhancement ([`enqueue`]), claimed under
//! a lease by the sender ([`claim_due`]) and closed with its audit row
//! ([`record`]). All of delivery's SQL is here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::{PgConnection, PgPool};

use super::scu::Outcome;
use crate::audit;
use crate::config::{DeliveryConfig, DestinationConfig};
use crate::db::OutboxState;
use crate::ops::metrics::{DeliveryOutcome, Metrics};

/// Adds one pending outbox row per destination for a derived instance, in
/// the caller's transaction. A row that already exists (a re-run after a
/// crash derives the same UID) is left as it is.
pub async fn enqueue(
    tx: &mut PgConnection,
    sop_instance_uid: &str,
    sop_class_uid: &str,
    study_instance_uid: &str,
    file: &Path,
    destinations: &[DestinationConfig],
) -> Result<(), sqlx::Error> {
    let file = file.to_string_lossy();
    for destination in destinations {
        sqlx::query!(
            "INSERT INTO outbox (sop_instance_uid, sop_class_uid, study_instance_uid, destination, file) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sop_instance_uid, destination) DO NOTHING",
            sop_instance_uid,
            sop_class_uid,
            study_instance_uid,
            destination.name,
            file.as_ref(),
        )
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// One claimed outbox row.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Outbox row id.
    pub id: i64,
    /// The derived instance.
    pub sop_instance_uid: String,
    /// Its SOP class.
    pub sop_class_uid: String,
    /// Its study.
    pub study_instance_uid: String,
    /// The destination's name.
    pub destination: String,
    /// The file to send.
    pub file: PathBuf,
    /// Attempts made before this one.
    pub attempts: i32,
}

/// Claims up to `batch-size` due rows and, in the same statement, pushes
/// their next attempt a lease into the future, then commits: no transaction
/// stays open across the network, and another daemon on the same database
/// skips the rows until the lease runs out (which is also how a row claimed
/// by a daemon that died comes back).
pub async fn claim_due(db: &PgPool, config: &DeliveryConfig) -> Result<Vec<Claimed>, sqlx::Error> {
    // 'pending' is a literal so that the planner matches the partial index
    // outbox_pending_idx (its predicate names it).
    let rows = sqlx::query!(
        "WITH due AS ( \
             SELECT id FROM outbox WHERE state = 'pending' AND next_attempt_at <= now() \
             ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) \
         UPDATE outbox o SET next_attempt_at = now() + make_interval(secs => $2) FROM due WHERE o.id = due.id \
         RETURNING o.id, o.sop_instance_uid, o.sop_class_uid, o.study_instance_uid, o.destination, o.file, o.attempts",
        i64::from(config.batch_size),
        config.lease().as_secs_f64(),
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| Claimed {
            id: row.id,
            sop_instance_uid: row.sop_instance_uid,
            sop_class_uid: row.sop_class_uid,
            study_instance_uid: row.study_instance_uid,
            destination: row.destination,
            file: PathBuf::from(row.file),
            attempts: row.attempts,
        })
        .collect())
}

/// Renews the lease of rows still to be sent in a long batch, so that it
/// never runs out and another daemon does not send them meanwhile.
pub async fn renew_lease(db: &PgPool, ids: &[i64], lease: Duration) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE outbox SET next_attempt_at = now() + make_interval(secs => $2) WHERE id = ANY($1) AND state = $3",
        ids,
        lease.as_secs_f64(),
        OutboxState::Pending as OutboxState,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Makes rows that were claimed but not tried due again, without counting an attempt.
pub async fn make_due(db: &PgPool, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE outbox SET next_attempt_at = now() WHERE id = ANY($1) AND state = $2",
        ids,
        OutboxState::Pending as OutboxState,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Records one attempt's outcome and its audit row in one transaction:
/// Success or Warning makes the row `sent`; anything else adds an attempt,
/// keeps the error and status and schedules the next attempt with
/// [`crate::backoff`], until `max-attempts` (0 = never) marks it `failed`.
pub async fn record(
    db: &PgPool,
    config: &DeliveryConfig,
    metrics: &Metrics,
    destination: Option<&DestinationConfig>,
    claimed: &Claimed,
    outcome: &Outcome,
) -> anyhow::Result<()> {
    let attempt = claimed.attempts + 1;
    let (ae, address) = destination.map(|d| (d.ae_title.as_str(), d.address.as_str())).unwrap_or(("", ""));
    let mut tx = db.begin().await?;
    let (event, outcome_word, detail) = match outcome {
        Outcome::Stored { status } => {
            sqlx::query!(
                "UPDATE outbox SET state = $4, sent_at = now(), attempts = $2, last_status = $3, last_error = NULL \
                 WHERE id = $1",
                claimed.id,
                attempt,
                i32::from(*status),
                OutboxState::Sent as OutboxState,
            )
            .execute(&mut *tx)
            .await?;
            tracing::info!(
                study_instance_uid = %claimed.study_instance_uid, sop_instance_uid = %claimed.sop_instance_uid,
                destination = %claimed.destination, status = format!("{status:04X}"), attempt, "instance delivered"
            );
            let word = if *status == 0 { "success" } else { "warning" };
            (
                audit::INSTANCE_SENT,
                word,
                format!(
                    "destination {} ({ae} at {address}); status {status:04X}; attempt {attempt}",
                    claimed.destination
                ),
            )
        }
        Outcome::Refused { .. } | Outcome::Error(_) => {
            let (status, error) = match outcome {
                Outcome::Refused { status, comment } => (
                    Some(i32::from(*status)),
                    if comment.is_empty() {
                        format!("refused with status {status:04X}")
                    } else {
                        format!("refused with status {status:04X}: {comment}")
                    },
                ),
                Outcome::Error(e) => (None, e.clone()),
                Outcome::Stored { .. } => unreachable!(),
            };
            let give_up = config.max_attempts > 0 && attempt as u32 >= config.max_attempts;
            let delay = config.retry_backoff().delay_with_jitter(attempt as u32, claimed.id);
            let state = if give_up { OutboxState::Failed } else { OutboxState::Pending };
            sqlx::query!(
                "UPDATE outbox SET attempts = $2, last_status = $3, last_error = $4, \
                 next_attempt_at = now() + make_interval(secs => $5), state = $6 WHERE id = $1",
                claimed.id,
                attempt,
                status,
                error,
                delay.as_secs_f64(),
                state as OutboxState,
            )
            .execute(&mut *tx)
            .await?;
            let next = if give_up {
                format!("giving up after {attempt} attempts (max-attempts)")
            } else {
                format!("next attempt in {} s", delay.as_secs())
            };
            tracing::warn!(
                sop_instance_uid = %claimed.sop_instance_uid, destination = %claimed.destination,
                attempt, error = %error, "{next}"
            );
            (
                audit::DELIVERY_FAILED,
                if give_up { "gave-up" } else { "failure" },
                format!("destination {} ({ae} at {address}); {error}; attempt {attempt}; {next}", claimed.destination),
            )
        }
    };
    audit::record(
        &mut *tx,
        &audit::Event {
            event,
            outcome: outcome_word,
            peer_address: (!address.is_empty()).then_some(address),
            calling_ae_title: Some(&config.calling_ae_title),
            called_ae_title: (!ae.is_empty()).then_some(ae),
            sop_instance_uid: Some(&claimed.sop_instance_uid),
            study_instance_uid: Some(&claimed.study_instance_uid),
            detail: Some(&detail),
            data: None,
        },
    )
    .await?;
    tx.commit().await?;
    // Counted once recorded, so the counts match the outbox and the audit trail.
    let counted = match outcome_word {
        "success" | "warning" => DeliveryOutcome::Sent,
        "gave-up" => DeliveryOutcome::Failed,
        _ => DeliveryOutcome::Retry,
    };
    metrics.delivery_attempts.get_or_create(&counted).inc();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let config = DeliveryConfig { retry_initial_secs: 10, retry_max_secs: 600, ..Default::default() };
        let secs = |attempts| config.retry_backoff().delay_with_jitter(attempts, 7).as_secs_f64();
        assert!((10.0..11.0).contains(&secs(1)), "{}", secs(1));
        assert!((20.0..22.0).contains(&secs(2)));
        assert!((80.0..88.0).contains(&secs(4)));
        assert!((600.0..=660.0).contains(&secs(10)));
        assert!((600.0..=660.0).contains(&secs(1000)));
    }
}
