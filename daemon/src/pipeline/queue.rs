//! The study job queue in PostgreSQL: a worker claims one job at a time with
//! `FOR UPDATE SKIP LOCKED` and holds it under a lease it renews while
//! working. A worker that dies stops renewing; once the lease expires any
//! worker (in this process or another daemon on the same database) claims
//! the job again. Failures retry with exponential backoff; after the last
//! attempt the job goes to the dead-letter state `dead` with its reason.
//!
//! Claiming counts an attempt, so a study that kills its worker every time
//! (a crash, not an error) still ends in `dead` instead of looping.

use std::time::Duration;

use sqlx::{PgPool, Row};

use crate::audit;

/// A job held by this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedJob {
    /// `job.id`.
    pub id: i64,
    /// The study to process.
    pub study_instance_uid: String,
    /// This attempt's number (1 for the first).
    pub attempt: i32,
}

/// Claims the oldest claimable job: queued and due, or running with an
/// expired lease. A job already past `max_attempts` is sent to `dead`
/// instead (its worker keeps dying) and the next one is tried.
pub async fn claim(
    db: &PgPool,
    worker: &str,
    lease: Duration,
    max_attempts: i32,
) -> Result<Option<ClaimedJob>, sqlx::Error> {
    loop {
        let mut tx = db.begin().await?;
        let row = sqlx::query(
            "SELECT id, study_instance_uid, attempts, state, lease_owner FROM job \
             WHERE (state = 'queued' AND available_at <= now()) \
                OR (state = 'running' AND lease_expires_at < now()) \
             ORDER BY available_at, id LIMIT 1 FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let id: i64 = row.try_get("id")?;
        let study: String = row.try_get("study_instance_uid")?;
        let attempts: i32 = row.try_get("attempts")?;
        let state: String = row.try_get("state")?;
        let previous_owner: Option<String> = row.try_get("lease_owner")?;
        if attempts >= max_attempts {
            let reason = if state == "running" {
                format!("lease expired after attempt {attempts} of {max_attempts}: the worker died or hung")
            } else {
                format!("{attempts} attempts failed")
            };
            sqlx::query(
                "UPDATE job SET state = 'dead', lease_owner = NULL, lease_expires_at = NULL, \
                 finished_at = now(), last_error = coalesce(last_error || '; ', '') || $2 WHERE id = $1",
            )
            .bind(id)
            .bind(&reason)
            .execute(&mut *tx)
            .await?;
            audit::record(
                &mut *tx,
                &audit::Event {
                    event: audit::JOB_DEAD,
                    outcome: "failure",
                    study_instance_uid: Some(&study),
                    detail: Some(&reason),
                    ..Default::default()
                },
            )
            .await?;
            tx.commit().await?;
            tracing::error!(study = %study, job = id, "job moved to dead letter: {reason}");
            continue;
        }
        sqlx::query(
            "UPDATE job SET state = 'running', lease_owner = $2, \
             lease_expires_at = now() + make_interval(secs => $3), attempts = attempts + 1 WHERE id = $1",
        )
        .bind(id)
        .bind(worker)
        .bind(lease.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        if state == "running" {
            // The last worker died or hung mid-job: say so, or the trail
            // would show one attempt that never ended.
            let reason = format!(
                "the lease of {} expired during attempt {attempts}; taken over by {worker} for attempt {} of {max_attempts}",
                previous_owner.as_deref().unwrap_or("an unknown worker"),
                attempts + 1
            );
            audit::record(
                &mut *tx,
                &audit::Event {
                    event: audit::JOB_TAKEN_OVER,
                    outcome: "success",
                    study_instance_uid: Some(&study),
                    detail: Some(&reason),
                    ..Default::default()
                },
            )
            .await?;
            tracing::warn!(study = %study, job = id, "{reason}");
        }
        tx.commit().await?;
        return Ok(Some(ClaimedJob { id, study_instance_uid: study, attempt: attempts + 1 }));
    }
}

/// Renews the lease; `false` when this worker no longer holds the job (its
/// lease expired and another worker took it over).
pub async fn heartbeat(db: &PgPool, job: &ClaimedJob, worker: &str, lease: Duration) -> Result<bool, sqlx::Error> {
    let renewed = sqlx::query(
        "UPDATE job SET lease_expires_at = now() + make_interval(secs => $3) \
         WHERE id = $1 AND state = 'running' AND lease_owner = $2",
    )
    .bind(job.id)
    .bind(worker)
    .bind(lease.as_secs_f64())
    .execute(db)
    .await?
    .rows_affected();
    Ok(renewed == 1)
}

/// Marks the job done (only while this worker holds it).
pub async fn complete(db: &PgPool, job: &ClaimedJob, worker: &str, summary: &str) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let done = sqlx::query(
        "UPDATE job SET state = 'done', lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), \
         last_error = NULL WHERE id = $1 AND state = 'running' AND lease_owner = $2",
    )
    .bind(job.id)
    .bind(worker)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if done == 1 {
        audit::record(
            &mut *tx,
            &audit::Event {
                event: audit::STUDY_PROCESSED,
                outcome: "success",
                study_instance_uid: Some(&job.study_instance_uid),
                detail: Some(summary),
                ..Default::default()
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(done == 1)
}

/// What [`fail`] did with the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// Queued again after the delay.
    Retry(Duration),
    /// Out of attempts (or the error is permanent): dead letter.
    Dead,
    /// This worker no longer held the job; nothing changed.
    LeaseLost,
}

/// Records a failed attempt: retry after `retry_delay` unless the attempts
/// are spent or `permanent`, then dead letter with the reason.
pub async fn fail(
    db: &PgPool,
    job: &ClaimedJob,
    worker: &str,
    error: &str,
    permanent: bool,
    max_attempts: i32,
    retry_delay: Duration,
) -> Result<FailOutcome, sqlx::Error> {
    let dead = permanent || job.attempt >= max_attempts;
    let mut tx = db.begin().await?;
    let updated = if dead {
        sqlx::query(
            "UPDATE job SET state = 'dead', lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), \
             last_error = $3 WHERE id = $1 AND state = 'running' AND lease_owner = $2",
        )
        .bind(job.id)
        .bind(worker)
        .bind(error)
        .execute(&mut *tx)
        .await?
    } else {
        sqlx::query(
            "UPDATE job SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL, \
             available_at = now() + make_interval(secs => $4), last_error = $3 \
             WHERE id = $1 AND state = 'running' AND lease_owner = $2",
        )
        .bind(job.id)
        .bind(worker)
        .bind(error)
        .bind(retry_delay.as_secs_f64())
        .execute(&mut *tx)
        .await?
    }
    .rows_affected();
    if updated == 0 {
        tx.rollback().await?;
        return Ok(FailOutcome::LeaseLost);
    }
    let detail = format!("attempt {} of {max_attempts}: {error}", job.attempt);
    audit::record(
        &mut *tx,
        &audit::Event {
            event: if dead { audit::JOB_DEAD } else { audit::JOB_RETRY },
            outcome: "failure",
            study_instance_uid: Some(&job.study_instance_uid),
            detail: Some(&detail),
            ..Default::default()
        },
    )
    .await?;
    tx.commit().await?;
    Ok(if dead { FailOutcome::Dead } else { FailOutcome::Retry(retry_delay) })
}

/// Hands a job back without counting the attempt (graceful shutdown).
pub async fn release(db: &PgPool, job: &ClaimedJob, worker: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE job SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL, \
         attempts = greatest(attempts - 1, 0), available_at = now() \
         WHERE id = $1 AND state = 'running' AND lease_owner = $2",
    )
    .bind(job.id)
    .bind(worker)
    .execute(db)
    .await?;
    Ok(())
}

/// Number of jobs waiting (queued or running), for metrics and tests.
pub async fn depth(db: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM job WHERE state IN ('queued', 'running')").fetch_one(db).await
}
