//! Audit events of the ingest: every association (accepted or rejected) and
//! every received instance leaves a row in `audit_event`, written in the same
//! transaction as the state change it reports where there is one.
//!
//! Event names follow DICOM PS3.15 A.5 where they fit: `association` is an
//! Application Activity / Security Alert for rejections, `instance-received`
//! an Instances Transferred (110104) event.

use sqlx::PgExecutor;

/// Event: an association was accepted or rejected.
pub const ASSOCIATION: &str = "association";
/// Event: a C-STORE data set was stored, recognised as a duplicate or refused.
pub const INSTANCE_RECEIVED: &str = "instance-received";
/// Event: a study became complete and was enqueued.
pub const STUDY_ENQUEUED: &str = "study-enqueued";
/// Event: start-up recovery removed or found something in the spool.
pub const SPOOL_RECOVERY: &str = "spool-recovery";
/// Event: the exposure gate decided on an instance (flagged or not, and why).
pub const EXPOSURE_DECISION: &str = "exposure-decision";
/// Event: an instance was enhanced and its derived instance queued for delivery.
pub const INSTANCE_ENHANCED: &str = "instance-enhanced";
/// Event: an enhanced result was held (hallucination score above the threshold).
pub const RESULT_HELD: &str = "result-held";
/// Event: an instance could not be enhanced (permanent, recorded, not retried).
pub const INSTANCE_FAILED: &str = "instance-failed";
/// Event: every instance of a study was decided; the job is done.
pub const STUDY_PROCESSED: &str = "study-processed";
/// Event: a job attempt failed and will be retried.
pub const JOB_RETRY: &str = "job-retry";
/// Event: a job is out of attempts (dead letter).
pub const JOB_DEAD: &str = "job-dead";
/// Event: `cxr-ledd reproduce` re-ran an enhancement (Instances Accessed, 110103).
pub const REPRODUCED: &str = "reproduced";
/// Event: a derived instance was stored by a destination (PS3.15 110104 Instances Transferred).
pub const INSTANCE_SENT: &str = "instance-sent";
/// Event: an attempt to deliver a derived instance failed (it is retried unless max-attempts was reached).
pub const DELIVERY_FAILED: &str = "delivery-failed";

/// One audit row.
#[derive(Debug, Default, Clone)]
pub struct Event<'a> {
    /// What happened (one of this module's constants).
    pub event: &'a str,
    /// `success`, `rejected`, `duplicate`, `failure`, ...
    pub outcome: &'a str,
    /// The peer's IP address and port.
    pub peer_address: Option<&'a str>,
    /// The peer's (calling) AE title.
    pub calling_ae_title: Option<&'a str>,
    /// The AE title the peer called.
    pub called_ae_title: Option<&'a str>,
    /// The instance concerned.
    pub sop_instance_uid: Option<&'a str>,
    /// The study concerned.
    pub study_instance_uid: Option<&'a str>,
    /// Free text: reason, status, counts. Never patient names.
    pub detail: Option<&'a str>,
}

/// Inserts one audit row.
pub async fn record<'e>(db: impl PgExecutor<'e>, event: &Event<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_event (event, outcome, peer_address, calling_ae_title, called_ae_title, \
         sop_instance_uid, study_instance_uid, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(event.event)
    .bind(event.outcome)
    .bind(event.peer_address)
    .bind(event.calling_ae_title)
    .bind(event.called_ae_title)
    .bind(event.sop_instance_uid)
    .bind(event.study_instance_uid)
    .bind(event.detail)
    .execute(db)
    .await?;
    Ok(())
}

/// Inserts one audit row; a failure is logged, not returned (for events that
/// accompany no state change, such as a rejected association).
pub async fn record_or_log<'e>(db: impl PgExecutor<'e>, event: &Event<'_>) {
    if let Err(e) = record(db, event).await {
        tracing::error!(error = %e, event = event.event, "could not write audit event");
    }
}
