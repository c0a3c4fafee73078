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

use sqlx::PgPool;

use crate::audit;
use crate::db::JobState;

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
        // The states are literals here so that the planner matches the
        // partial index job_claimable_idx (its predicate names them).
        let row = sqlx::query!(
            r#"SELECT id, study_instance_uid, attempts, state AS "state: JobState", lease_owner FROM job
               WHERE (state = 'queued' AND available_at <= now()) OR (state = 'running' AND lease_expires_at < now())
               ORDER BY available_at, id LIMIT 1 FOR UPDATE SKIP LOCKED"#
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (id, study, attempts, state, previous_owner) =
            (row.id, row.study_instance_uid, row.attempts, row.state, row.lease_owner);
        if attempts >= max_attempts {
            let reason = if state == JobState::Running {
                format!("lease expired after attempt {attempts} of {max_attempts}: the worker died or hung")
            } else {
                format!("{attempts} attempts failed")
            };
            sqlx::query!(
                "UPDATE job SET state = $3, lease_owner = NULL, lease_expires_at = NULL, \
                 finished_at = now(), last_error = coalesce(last_error || '; ', '') || $2 WHERE id = $1",
                id,
                reason,
                JobState::Dead as JobState,
            )
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
        sqlx::query!(
            "UPDATE job SET state = $4, lease_owner = $2, \
             lease_expires_at = now() + make_interval(secs => $3), attempts = attempts + 1 WHERE id = $1",
            id,
            worker,
            lease.as_secs_f64(),
            JobState::Running as JobState,
        )
        .execute(&mut *tx)
        .await?;
        if state == JobState::Running {
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
    let renewed = sqlx::query!(
        "UPDATE job SET lease_expires_at = now() + make_interval(secs => $3) \
         WHERE id = $1 AND state = $4 AND lease_owner = $2",
        job.id,
        worker,
        lease.as_secs_f64(),
        JobState::Running as JobState,
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(renewed == 1)
}

/// Marks the job done (only while this worker holds it).
pub async fn complete(db: &PgPool, job: &ClaimedJob, worker: &str, summary: &str) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let done = sqlx::query!(
        "UPDATE job SET state = $3, lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), \
         last_error = NULL WHERE id = $1 AND state = $4 AND lease_owner = $2",
        job.id,
        worker,
        JobState::Done as JobState,
        JobState::Running as JobState,
    )
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
        sqlx::query!(
            "UPDATE job SET state = $4, lease_owner = NULL, lease_expires_at = NULL, finished_at = now(), \
             last_error = $3 WHERE id = $1 AND state = $5 AND lease_owner = $2",
            job.id,
            worker,
            error,
            JobState::Dead as JobState,
            JobState::Running as JobState,
        )
        .execute(&mut *tx)
        .await?
    } else {
        sqlx::query!(
            "UPDATE job SET state = $5, lease_owner = NULL, lease_expires_at = NULL, \
             available_at = now() + make_interval(secs => $4), last_error = $3 \
             WHERE id = $1 AND state = $6 AND lease_owner = $2",
            job.id,
            worker,
            error,
            retry_delay.as_secs_f64(),
            JobState::Queued as JobState,
            JobState::Running as JobState,
        )
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
    sqlx::query!(
        "UPDATE job SET state = $3, lease_owner = NULL, lease_expires_at = NULL, \
         attempts = greatest(attempts - 1, 0), available_at = now() \
         WHERE id = $1 AND state = $4 AND lease_owner = $2",
        job.id,
        worker,
        JobState::Queued as JobState,
        JobState::Running as JobState,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Number of jobs waiting (queued or running), for metrics and tests.
pub async fn depth(db: &PgPool) -> Result<i64, sqlx::Error> {
    let waiting = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM job WHERE state IN ($1, $2)"#,
        JobState::Queued as JobState,
        JobState::Running as JobState,
    )
    .fetch_one(db)
    .await?;
    Ok(waiting)
}
