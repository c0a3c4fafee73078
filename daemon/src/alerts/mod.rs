//! Alerts: a loop that looks in the database for what a person must know about
//! and mails it, once.
//!
//! - `held`: an enhancement whose hallucination-check score passed the hold
//!   threshold (key: derived SOP Instance UID).
//! - `dead-job`: a job that failed for good (key: job id), with its last error.
//! - `pacs-unreachable`: a destination with a derived instance pending in the
//!   outbox for longer than `pacs-unreachable-after-secs` and no successful
//!   delivery in that time (key: destination and its last successful delivery,
//!   so one alert per destination per outage, however many rows wait).
//!
//! "Once" is the `alert` table: its row is inserted, the mail sent, then the
//! `alert-sent` audit event written and all committed together. A mail that
//! fails rolls the row back, so the next pass tries again; two daemons never
//! both send one alert (the second waits on the first's row, then skips it).
//! Mails carry UIDs, figures and the audit query to run, never patient names,
//! IDs or birth dates (the tables hold none).

pub mod mail;

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use self::mail::Mailer;
use crate::audit;
use crate::config::AlertsConfig;
use crate::db::{JobState, OutboxState};

/// Alert kind: a result held back by the hallucination check.
pub const HELD: &str = "held";
/// Alert kind: a job that failed for good.
pub const DEAD_JOB: &str = "dead-job";
/// Alert kind: a PACS destination that takes nothing.
pub const PACS_UNREACHABLE: &str = "pacs-unreachable";

/// Alerts looked at per kind and pass (the rest wait for the next pass).
const BATCH: i64 = 50;
/// UIDs listed in one mail at most.
const MAX_UIDS: usize = 20;

/// One alert to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// [`HELD`], [`DEAD_JOB`] or [`PACS_UNREACHABLE`].
    pub kind: &'static str,
    /// What it is about; (kind, key) is sent once.
    pub key: String,
    /// Mail subject.
    pub subject: String,
    /// Mail body (plain text).
    pub body: String,
    /// The figures, for the audit event's `data`.
    pub data: serde_json::Value,
    /// The instance concerned, if one.
    pub sop_instance_uid: Option<String>,
    /// The study concerned, if one.
    pub study_instance_uid: Option<String>,
}

/// An alert pass that stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading candidates or recording a sent alert failed.
    #[error("alerts: database: {0}")]
    Database(#[from] sqlx::Error),
    /// The mail server did not take a mail; nothing was recorded for it.
    #[error("alert {kind} {key} not sent (will retry next pass): {source}")]
    Mail {
        /// The alert's kind.
        kind: &'static str,
        /// The alert's key.
        key: String,
        /// Why.
        source: mail::Error,
    },
}

/// A string as an SQL literal, for the audit queries quoted in mails.
fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn uid_list(uids: &[String]) -> String {
    let mut text: String = uids.iter().take(MAX_UIDS).map(|u| format!("  {u}\n")).collect();
    if uids.len() > MAX_UIDS {
        text.push_str(&format!("  ... and {} more\n", uids.len() - MAX_UIDS));
    }
    text
}

const FOOTER: &str = "\nThis mail carries no patient names, IDs or birth dates: look the study up in the PACS by its \
                      Study Instance UID.\n-- \ncxr-led (cxr-ledd)\n";

/// Held results not alerted yet.
async fn held(db: &PgPool) -> Result<Vec<Alert>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT e.derived_sop_instance_uid, e.source_sop_instance_uid, e.study_instance_uid, e.score,
                  e.hold_threshold, e.score_components::text AS "components!", e.bundle_name, e.bundle_version,
                  to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC' AS "created!"
           FROM enhancement e WHERE e.held
           AND NOT EXISTS (SELECT 1 FROM alert a WHERE a.kind = 'held' AND a.key = e.derived_sop_instance_uid)
           ORDER BY e.created_at LIMIT $1"#,
        BATCH,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let (derived, source, study) =
                (row.derived_sop_instance_uid, row.source_sop_instance_uid, row.study_instance_uid);
            let (score, threshold, components) = (row.score, row.hold_threshold, row.components);
            let (bundle, version, created) = (row.bundle_name, row.bundle_version, row.created);
            let subject =
                format!("[cxr-led] Result held: hallucination-check score {score:.4} above {threshold:.4} ({derived})");
            let body = format!(
                "cxr-led held back an enhanced image: its hallucination-check score is above the hold threshold,\n\
                 so it is not delivered to the PACS. The source image in the PACS is unchanged.\n\n\
                 Derived SOP Instance UID:  {derived}\n\
                 Source SOP Instance UID:   {source}\n\
                 Study Instance UID:        {study}\n\
                 Score:                     {score:.4} (hold threshold {threshold:.4})\n\
                 Score components:          {components}\n\
                 Model bundle:              {bundle} {version}\n\
                 Enhanced at:               {created}\n\n\
                 Audit query:\n  SELECT * FROM audit_derived_instance WHERE derived_sop_instance_uid = {};\n{FOOTER}",
                sql_literal(&derived)
            );
            Alert {
                kind: HELD,
                key: derived.clone(),
                subject,
                body,
                data: json!({"kind": HELD, "key": derived, "source_sop_instance_uid": source,
                             "score": score, "hold_threshold": threshold}),
                sop_instance_uid: Some(derived),
                study_instance_uid: Some(study),
            }
        })
        .collect())
}

/// Dead jobs not alerted yet.
async fn dead_jobs(db: &PgPool) -> Result<Vec<Alert>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT j.id, j.study_instance_uid, j.attempts,
                  coalesce(j.last_error, '(no error recorded)') AS "last_error!",
                  coalesce(to_char(j.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC', 'unknown')
                      AS "finished!",
                  array(SELECT i.sop_instance_uid FROM instance i WHERE i.study_instance_uid = j.study_instance_uid
                        ORDER BY i.received_at, i.sop_instance_uid) AS "instances!"
           FROM job j WHERE j.state = $2
           AND NOT EXISTS (SELECT 1 FROM alert a WHERE a.kind = 'dead-job' AND a.key = j.id::text)
           ORDER BY j.id LIMIT $1"#,
        BATCH,
        JobState::Dead as JobState,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let (id, study, attempts) = (row.id, row.study_instance_uid, row.attempts);
            let (reason, finished, instances) = (row.last_error, row.finished, row.instances);
            let subject = format!("[cxr-led] Job {id} failed for good after {attempts} attempts (study {study})");
            let body = format!(
                "cxr-led gave up on a study: its job failed {attempts} times and will not be retried.\n\
                 Its images were not enhanced; the originals in the PACS are unchanged.\n\n\
                 Job:                 {id}\n\
                 Study Instance UID:  {study}\n\
                 Gave up at:          {finished}\n\
                 Reason (last error): {reason}\n\
                 Instances ({count}):\n{list}\n\
                 Audit queries:\n  SELECT * FROM audit_dead_jobs WHERE job_id = {id};\n  \
                 SELECT * FROM audit_study_timeline WHERE study_instance_uid = {study_lit} ORDER BY seq;\n{FOOTER}",
                count = instances.len(),
                list = uid_list(&instances),
                study_lit = sql_literal(&study),
            );
            Alert {
                kind: DEAD_JOB,
                key: id.to_string(),
                subject,
                body,
                data: json!({"kind": DEAD_JOB, "key": id.to_string(), "job_id": id, "attempts": attempts,
                             "last_error": reason}),
                sop_instance_uid: None,
                study_instance_uid: Some(study),
            }
        })
        .collect())
}

/// Destinations with a derived instance pending for longer than `after` and no
/// delivery in that time, not alerted yet for this outage.
async fn unreachable(db: &PgPool, after: Duration) -> Result<Vec<Alert>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"WITH stale AS (
               SELECT destination, count(*) AS pending, min(created_at) AS oldest, max(attempts) AS attempts,
                      (array_agg(last_error ORDER BY next_attempt_at DESC) FILTER (WHERE last_error IS NOT NULL))[1]
                          AS last_error,
                      (array_agg(sop_instance_uid ORDER BY created_at, sop_instance_uid))[1:$3] AS uids
               FROM outbox WHERE state = $4 AND created_at < now() - make_interval(secs => $1)
               GROUP BY destination),
           outage AS (
               SELECT s.*, (SELECT max(o.sent_at) FROM outbox o WHERE o.destination = s.destination
                            AND o.state = $5) AS last_sent
               FROM stale s),
           keyed AS (
               SELECT o.*, o.destination || ' last-sent=' || coalesce(to_char(o.last_sent AT TIME ZONE 'UTC',
                      'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), 'never') AS key
               FROM outage o
               WHERE o.last_sent IS NULL OR o.last_sent < now() - make_interval(secs => $1))
           SELECT k.destination AS "destination!", k.key AS "key!", k.pending AS "pending!",
                  k.attempts AS "attempts!", k.last_error, k.uids AS "uids!",
                  to_char(k.oldest AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC' AS "oldest!",
                  coalesce(to_char(k.last_sent AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' UTC', 'never')
                      AS "last_sent!"
           FROM keyed k
           WHERE NOT EXISTS (SELECT 1 FROM alert a WHERE a.kind = 'pacs-unreachable' AND a.key = k.key)
           ORDER BY k.destination LIMIT $2"#,
        after.as_secs_f64(),
        BATCH,
        MAX_UIDS as i32,
        OutboxState::Pending as OutboxState,
        OutboxState::Sent as OutboxState,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let (destination, key, pending, attempts) = (row.destination, row.key, row.pending, row.attempts);
            let (last_error, uids, oldest, last_sent) = (row.last_error, row.uids, row.oldest, row.last_sent);
            let minutes = after.as_secs() / 60;
            let subject = format!(
                "[cxr-led] PACS unreachable: {destination}: {pending} derived instances waiting since {oldest}"
            );
            let mut list = uid_list(&uids);
            if pending as usize > uids.len() {
                list.push_str(&format!("  ... and {} more\n", pending as usize - uids.len()));
            }
            let body = format!(
                "cxr-led cannot deliver to a PACS destination: derived instances have waited in the outbox for\n\
                 more than {minutes} minutes and nothing reached this destination in that time. Delivery keeps\n\
                 retrying; this alert is sent once per outage.\n\n\
                 Destination:              {destination}\n\
                 Waiting instances:        {pending}\n\
                 Oldest waiting since:     {oldest}\n\
                 Last successful delivery: {last_sent}\n\
                 Attempts (most retried):  {attempts}\n\
                 Last error:               {error}\n\
                 Waiting SOP Instance UIDs:\n{list}\n\
                 Audit query:\n  SELECT * FROM audit_undelivered WHERE destination = {dest_lit};\n{FOOTER}",
                error = last_error.as_deref().unwrap_or("(none recorded)"),
                dest_lit = sql_literal(&destination),
            );
            Alert {
                kind: PACS_UNREACHABLE,
                key: key.clone(),
                subject,
                body,
                data: json!({"kind": PACS_UNREACHABLE, "key": key, "destination": destination,
                             "pending": pending, "attempts": attempts}),
                sop_instance_uid: None,
                study_instance_uid: None,
            }
        })
        .collect())
}

/// Every alert due now, not sent yet: held results, dead jobs, unreachable destinations.
pub async fn pending(db: &PgPool, config: &AlertsConfig) -> Result<Vec<Alert>, sqlx::Error> {
    let mut alerts = held(db).await?;
    alerts.extend(dead_jobs(db).await?);
    alerts.extend(unreachable(db, Duration::from_secs(config.pacs_unreachable_after_secs)).await?);
    Ok(alerts)
}

/// Sends one alert unless it was sent already (by us or another daemon);
/// returns whether this call sent it. The `alert` row and the `alert-sent`
/// audit event commit together, after the server took the mail.
pub async fn send(db: &PgPool, mailer: &Mailer, alert: &Alert) -> Result<bool, Error> {
    let recipients = mailer.recipients();
    let mut tx = db.begin().await?;
    let inserted = sqlx::query!(
        "INSERT INTO alert (kind, key, recipients, subject) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        alert.kind,
        alert.key,
        recipients,
        alert.subject,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok(false);
    }
    // The row (uncommitted) makes a second daemon wait here rather than send
    // the same mail; a failed send drops `tx`, which rolls the row back.
    mailer.send(&alert.subject, &alert.body).await.map_err(|source| Error::Mail {
        kind: alert.kind,
        key: alert.key.clone(),
        source,
    })?;
    let detail = format!("{} alert mailed to {recipients}: {}", alert.kind, alert.subject);
    audit::record(
        &mut *tx,
        &audit::Event {
            event: audit::ALERT_SENT,
            outcome: "success",
            sop_instance_uid: alert.sop_instance_uid.as_deref(),
            study_instance_uid: alert.study_instance_uid.as_deref(),
            detail: Some(&detail),
            data: Some(&alert.data),
            ..Default::default()
        },
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// One pass: finds the alerts due and sends them; returns those it sent. Stops
/// at the first mail the server refuses (the rest would fail alike); what was
/// not sent is found again next pass.
pub async fn run_once(db: &PgPool, mailer: &Mailer, config: &AlertsConfig) -> Result<Vec<Alert>, Error> {
    let mut sent = Vec::new();
    for alert in pending(db, config).await? {
        if send(db, mailer, &alert).await? {
            tracing::warn!(kind = alert.kind, key = %alert.key, "alert mailed: {}", alert.subject);
            sent.push(alert);
        }
    }
    Ok(sent)
}

/// What the alert loop works with; swapped whole on reload.
#[derive(Debug, Clone)]
pub struct Alerting {
    /// The mail transport; `None` when `[mail]` is off (no pass runs).
    pub mailer: Option<Mailer>,
    /// `[alerts]`.
    pub config: AlertsConfig,
}

/// Runs [`run_once`] every `poll-interval-ms` until the task is dropped,
/// reading the mailer and settings afresh for every pass (hot reload); passes
/// are skipped while mail is off.
pub async fn run(db: PgPool, alerting: std::sync::Arc<crate::live::Live<Alerting>>) {
    loop {
        let current = alerting.get();
        if let Some(mailer) = &current.mailer {
            if let Err(e) = run_once(&db, mailer, &current.config).await {
                tracing::error!(error = %e, "alert pass failed");
            }
        }
        tokio::time::sleep(Duration::from_millis(current.config.poll_interval_ms.max(100))).await;
    }
}
