//! Study assembly: a study is complete once its quiet period has passed since
//! its last instance arrived; it then becomes one job in the queue. An
//! instance that arrives later re-opens the study (the ingest sets
//! `enqueued_at` back to NULL), and the study's next quiet period gives it
//! another job, which decides only what no job has decided yet.
//!
//! The tracker keeps no state of its own: the `study` table is the state
//! (`last_received_at`, `enqueued_at`), so after a restart nothing is
//! forgotten, and since the job insert and `enqueued_at` are set in one
//! transaction (and a study has at most one open job) nothing is enqueued
//! twice, even with several daemons on one database (`FOR UPDATE SKIP LOCKED`).
//! While a study's job is running, its re-opened study waits: the running
//! job may have listed its instances before the late one arrived.
//! Time comes from the database clock, which all daemons share.

use std::time::Duration;

use sqlx::PgPool;

use crate::audit;
use crate::db::JobState;

/// Enqueues every study whose quiet period has passed; returns the enqueued Study Instance UIDs.
pub async fn enqueue_complete(db: &PgPool, quiet_period: Duration) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let rows = sqlx::query!(
        "SELECT study_instance_uid, instance_count FROM study \
         WHERE enqueued_at IS NULL AND last_received_at <= now() - make_interval(secs => $1) \
         ORDER BY last_received_at LIMIT 500 FOR UPDATE SKIP LOCKED",
        quiet_period.as_secs_f64(),
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut enqueued = Vec::with_capacity(rows.len());
    for row in rows {
        let (study, count) = (row.study_instance_uid, row.instance_count);
        let open = sqlx::query_scalar!(
            r#"SELECT state AS "state: JobState" FROM job WHERE study_instance_uid = $1 AND state IN ($2, $3)"#,
            study,
            JobState::Queued as JobState,
            JobState::Running as JobState,
        )
        .fetch_optional(&mut *tx)
        .await?;
        match open {
            // It may have listed the study's instances before the late one: wait for it to end.
            Some(JobState::Running) => continue,
            // It has not started: it will find the late instance itself.
            Some(_) => {}
            None => {
                let history = sqlx::query!(
                    r#"SELECT (SELECT count(*) FROM job WHERE study_instance_uid = $1) AS "earlier!",
                       (SELECT count(*) FROM instance i WHERE i.study_instance_uid = $1 AND NOT EXISTS
                        (SELECT 1 FROM exposure_decision d WHERE d.sop_instance_uid = i.sop_instance_uid)) AS "undecided!""#,
                    study,
                )
                .fetch_one(&mut *tx)
                .await?;
                let (earlier, undecided) = (history.earlier, history.undecided);
                sqlx::query!("INSERT INTO job (study_instance_uid) VALUES ($1)", study).execute(&mut *tx).await?;
                let detail = if earlier == 0 {
                    format!("{count} instances")
                } else {
                    format!("{undecided} late instances after {earlier} earlier job(s); {count} instances in the study")
                };
                audit::record(
                    &mut *tx,
                    &audit::Event {
                        event: audit::STUDY_ENQUEUED,
                        outcome: "success",
                        study_instance_uid: Some(&study),
                        detail: Some(&detail),
                        ..Default::default()
                    },
                )
                .await?;
                enqueued.push(study.clone());
            }
        }
        sqlx::query!("UPDATE study SET enqueued_at = now() WHERE study_instance_uid = $1", study)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(enqueued)
}

/// Runs [`enqueue_complete`] every `poll_interval` until the task is dropped.
pub async fn run(db: PgPool, quiet_period: Duration, poll_interval: Duration) {
    let mut ticker = tokio::time::interval(poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match enqueue_complete(&db, quiet_period).await {
            Ok(studies) => {
                for study in studies {
                    tracing::info!(study = %study, "study complete, job enqueued");
                }
            }
            Err(e) => tracing::warn!(error = %e, "study tracker: database error, retrying"),
        }
    }
}
