//! The audit trail: every association (accepted or rejected), every received
//! instance and every later state change leaves a row in `audit_event`,
//! written in the same transaction as the state change it reports where there
//! is one.
//!
//! The table is append-only and hash-chained by the database itself
//! (migration `20261125000004_audit_chain.sql`): a trigger gives each row its
//! chain position `seq`, the previous row's hash and its own
//! `row_hash = sha256(prev_hash || canonical text)`. [`verify_chain`]
//! recomputes that chain here, in Rust, from the stored columns, so a row
//! changed or removed behind the triggers' back is found. daemon/AUDIT.md
//! explains the encoding and what the chain proves.
//!
//! Event names follow DICOM PS3.15 A.5 where they fit: `association` is an
//! Application Activity / Security Alert for rejections, `instance-received`
//! an Instances Transferred (110104) event, `alert-sent` a Security Alert
//! (110113) or Application Activity (110100).

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::{PgExecutor, PgPool};

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
/// Event: a running job's lease expired (its worker died or hung) and another worker took it over.
pub const JOB_TAKEN_OVER: &str = "job-taken-over";
/// Event: a job is out of attempts (dead letter).
pub const JOB_DEAD: &str = "job-dead";
/// Event: `cxr-ledd reproduce` re-ran an enhancement (Instances Accessed, 110103).
pub const REPRODUCED: &str = "reproduced";
/// Event: a derived instance was stored by a destination (PS3.15 110104 Instances Transferred).
pub const INSTANCE_SENT: &str = "instance-sent";
/// Event: an attempt to deliver a derived instance failed (it is retried unless max-attempts was reached).
pub const DELIVERY_FAILED: &str = "delivery-failed";
/// Event: an alert mail was accepted by the SMTP server (PS3.15 Security
/// Alert 110113 / Application Activity 110100); `data` says which alert.
pub const ALERT_SENT: &str = "alert-sent";
/// A configuration or model bundle reload (`success` or `failure`; the detail
/// names the trigger, the changed keys, or why it was refused).
pub const CONFIG_RELOAD: &str = "config-reload";

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
    /// Structured figures (decision numbers, score components, timings), stored as jsonb.
    pub data: Option<&'a serde_json::Value>,
}

/// Inserts one audit row. The insert takes the chain's lock until the
/// transaction ends, so in a transaction make it the last statement before
/// commit: every other audit writer waits for it.
pub async fn record<'e>(db: impl PgExecutor<'e>, event: &Event<'_>) -> Result<(), sqlx::Error> {
    let text = |value: Option<&'_ str>| value.map(storable);
    sqlx::query!(
        "INSERT INTO audit_event (event, outcome, peer_address, calling_ae_title, called_ae_title, \
         sop_instance_uid, study_instance_uid, detail, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        event.event,
        event.outcome,
        text(event.peer_address),
        text(event.calling_ae_title),
        text(event.called_ae_title),
        text(event.sop_instance_uid),
        text(event.study_instance_uid),
        text(event.detail),
        event.data,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A peer's text as an audit column can hold it: PostgreSQL text cannot hold
/// NUL, and a peer's bytes (an AE title, a UID it sent) must not make the
/// audit row itself fail, so NUL becomes U+FFFD.
pub fn storable(value: &str) -> String {
    value.replace('\0', "\u{FFFD}")
}

/// Inserts one audit row; a failure is logged, not returned (for events that
/// accompany no state change, such as a rejected association).
pub async fn record_or_log<'e>(db: impl PgExecutor<'e>, event: &Event<'_>) {
    if let Err(e) = record(db, event).await {
        tracing::error!(error = %e, event = event.event, "could not write audit event");
    }
}

/// `prev_hash` of the first row of the chain (seq 1): 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Rows read per query while verifying: the chain is walked in pages by
/// `seq`, never loaded whole.
const VERIFY_PAGE: i64 = 1000;

/// One audit row as the chain sees it: every column, `data` as PostgreSQL
/// prints jsonb.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainRow {
    /// Chain position, 1, 2, 3, ... without gaps.
    pub seq: i64,
    /// The row id (drawn before the chain lock, so not the chain order).
    pub id: i64,
    /// When the event was recorded.
    pub at: DateTime<Utc>,
    /// Event name.
    pub event: String,
    /// Outcome.
    pub outcome: String,
    /// Peer address.
    pub peer_address: Option<String>,
    /// Calling AE title.
    pub calling_ae_title: Option<String>,
    /// Called AE title.
    pub called_ae_title: Option<String>,
    /// SOP Instance UID.
    pub sop_instance_uid: Option<String>,
    /// Study Instance UID.
    pub study_instance_uid: Option<String>,
    /// Free text.
    pub detail: Option<String>,
    /// `data::text`: jsonb's own text form (sorted keys, fixed spacing), which
    /// is what the database hashed.
    pub data: Option<String>,
    /// The previous row's `row_hash`, or [`GENESIS_HASH`].
    pub prev_hash: String,
    /// Hex sha256 of `prev_hash` followed by [`ChainRow::canonical`].
    pub row_hash: String,
}

impl ChainRow {
    /// The canonical text of the row, exactly as the migration's
    /// `audit_event_canonical()` writes it: seq, id, at, event, outcome,
    /// peer_address, calling_ae_title, called_ae_title, sop_instance_uid,
    /// study_instance_uid, detail, data; each `<UTF-8 length>:<text>`, or `~`
    /// for NULL; `at` in UTC with microseconds.
    pub fn canonical(&self) -> String {
        let mut out = String::with_capacity(256);
        let fields: [Option<&str>; 12] = [
            Some(&self.seq.to_string()),
            Some(&self.id.to_string()),
            Some(&self.at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()),
            Some(&self.event),
            Some(&self.outcome),
            self.peer_address.as_deref(),
            self.calling_ae_title.as_deref(),
            self.called_ae_title.as_deref(),
            self.sop_instance_uid.as_deref(),
            self.study_instance_uid.as_deref(),
            self.detail.as_deref(),
            self.data.as_deref(),
        ];
        for field in fields {
            match field {
                None => out.push('~'),
                Some(text) => {
                    out.push_str(&text.len().to_string());
                    out.push(':');
                    out.push_str(text);
                }
            }
        }
        out
    }

    /// The row's hash given the previous row's hash: hex sha256 of
    /// `prev_hash || canonical`.
    pub fn compute_hash(&self, prev_hash: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(prev_hash.as_bytes());
        hasher.update(self.canonical().as_bytes());
        hex::encode(hasher.finalize())
    }
}

/// Which check a row failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// `seq` is not the previous seq + 1 (a row was removed, or the first row is not seq 1).
    SeqGap,
    /// `prev_hash` is not the previous row's `row_hash` (or the genesis value).
    PrevLink,
    /// `row_hash` does not match the row's columns (the row was changed).
    RowHash,
    /// The row at the anchor's seq has another hash than the anchor kept
    /// elsewhere: the chain was rewritten (and re-hashed) at or before it.
    AnchorMismatch,
    /// The chain ends before the anchor's seq: rows were removed from its end.
    AnchorMissing,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Check::SeqGap => "gap in seq (a row is missing)",
            Check::PrevLink => "prev_hash does not link to the previous row",
            Check::RowHash => "row_hash does not match the row's contents (the row was changed)",
            Check::AnchorMismatch => {
                "row_hash differs from the head kept elsewhere (the chain was rewritten at or before this row)"
            }
            Check::AnchorMissing => "the chain ends before the head kept elsewhere (rows were removed)",
        })
    }
}

/// The first row where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The row's seq.
    pub seq: i64,
    /// The row's id.
    pub id: i64,
    /// What failed.
    pub check: Check,
    /// What the chain says the value should be.
    pub expected: String,
    /// What the row holds.
    pub found: String,
}

impl std::fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seq {} (id {}): {}: expected {}, found {}", self.seq, self.id, self.check, self.expected, self.found)
    }
}

/// The last row that verified: anchor its hash elsewhere (an external log, a
/// ticket, a mail) to detect a later rewrite of the whole chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// Its seq.
    pub seq: i64,
    /// Its id.
    pub id: i64,
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// Its row hash, which commits to every row before it.
    pub row_hash: String,
}

/// A chain head kept outside the database, written `SEQ:HASH` (as the
/// daemon's journal line and `cxr-ledd audit verify` print it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// The head's seq.
    pub seq: i64,
    /// Its row hash (64 lowercase hex digits).
    pub row_hash: String,
}

impl std::fmt::Display for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, self.row_hash)
    }
}

impl std::str::FromStr for Anchor {
    type Err = String;

    fn from_str(text: &str) -> Result<Anchor, String> {
        let usage = || {
            format!("{text:?} is not a chain head: write SEQ:HASH as the journal line \"audit chain head\" gives it, e.g. 42:{}", "0".repeat(64))
        };
        let (seq, hash) = text.trim().split_once(':').ok_or_else(usage)?;
        let seq: i64 = seq.parse().ok().filter(|s| *s >= 1).ok_or_else(usage)?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(usage());
        }
        Ok(Anchor { seq, row_hash: hash.to_ascii_lowercase() })
    }
}

/// The newest row's (seq, row_hash), or None for an empty trail.
pub async fn current_head(db: &PgPool) -> Result<Option<Anchor>, sqlx::Error> {
    sqlx::query_as!(Anchor, "SELECT seq, row_hash FROM audit_event WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1")
        .fetch_optional(db)
        .await
}

/// Writes the chain head to the journal, for a copy kept outside the
/// database (`cxr-ledd audit verify --expect-head SEQ:HASH` checks against it).
pub async fn log_head(db: &PgPool, when: &str) {
    match current_head(db).await {
        Ok(Some(head)) => tracing::info!(
            head = %head,
            "audit chain head {when}: {head} (keep it elsewhere; `cxr-ledd audit verify --expect-head {head}` \
             proves the chain up to it unchanged)"
        ),
        Ok(None) => tracing::info!("audit chain head {when}: no events yet"),
        Err(e) => tracing::warn!(error = %e, "cannot read the audit chain head {when}"),
    }
}

/// Logs the chain head every `interval` until the task is dropped.
pub async fn log_head_every(db: PgPool, interval: std::time::Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        log_head(&db, "now").await;
    }
}

/// What [`verify_chain`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChainReport {
    /// Rows that verified (before the break, if any).
    pub rows: u64,
    /// The last row that verified; None for an empty table (or a break at the first row).
    pub head: Option<ChainHead>,
    /// The first broken link; None when the whole chain verified.
    pub broken: Option<BrokenLink>,
}

impl ChainReport {
    /// True when every row verified.
    pub fn is_intact(&self) -> bool {
        self.broken.is_none()
    }
}

impl std::fmt::Display for ChainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.broken, &self.head) {
            (None, None) => write!(f, "audit chain intact: no events"),
            (None, Some(head)) => write!(
                f,
                "audit chain intact: {} events, head seq {} (id {}) at {} row_hash {}",
                self.rows,
                head.seq,
                head.id,
                head.at.format("%Y-%m-%dT%H:%M:%S%.6fZ"),
                head.row_hash
            ),
            (Some(broken), _) => {
                write!(f, "audit chain BROKEN at {broken}; {} events before it verified", self.rows)
            }
        }
    }
}

/// Walks the chain in seq order, a page at a time, recomputes every hash
/// here and stops at the first broken link. Rows appended while it runs are
/// verified too. Needs only SELECT on `audit_event` (the auditor role will do).
pub async fn verify_chain(db: &PgPool) -> Result<ChainReport, sqlx::Error> {
    verify_chain_against(db, None).await
}

/// [`verify_chain`], and the row at the anchor's seq must carry the anchor's
/// hash: a chain rewritten and re-hashed by someone with the owner's rights
/// verifies on its own, but not against a head kept elsewhere before.
pub async fn verify_chain_against(db: &PgPool, anchor: Option<&Anchor>) -> Result<ChainReport, sqlx::Error> {
    let mut report = ChainReport::default();
    let mut expected_seq: i64 = 1;
    let mut expected_prev = GENESIS_HASH.to_string();
    let mut after: i64 = i64::MIN;
    loop {
        let rows = sqlx::query_as!(
            ChainRow,
            "SELECT seq, id, at, event, outcome, peer_address, calling_ae_title, called_ae_title, \
             sop_instance_uid, study_instance_uid, detail, data::text AS data, prev_hash, row_hash \
             FROM audit_event WHERE seq > $1 ORDER BY seq LIMIT $2",
            after,
            VERIFY_PAGE,
        )
        .fetch_all(db)
        .await?;
        let page_len = rows.len();
        for row in rows {
            let broken = |check, expected: String, found: String| BrokenLink {
                seq: row.seq,
                id: row.id,
                check,
                expected,
                found,
            };
            if row.seq != expected_seq {
                report.broken = Some(broken(Check::SeqGap, expected_seq.to_string(), row.seq.to_string()));
                return Ok(report);
            }
            if row.prev_hash != expected_prev {
                report.broken = Some(broken(Check::PrevLink, expected_prev, row.prev_hash.clone()));
                return Ok(report);
            }
            let computed = row.compute_hash(&row.prev_hash);
            if computed != row.row_hash {
                report.broken = Some(broken(Check::RowHash, computed, row.row_hash.clone()));
                return Ok(report);
            }
            if let Some(anchor) = anchor.filter(|a| a.seq == row.seq && a.row_hash != row.row_hash) {
                report.broken = Some(broken(Check::AnchorMismatch, anchor.row_hash.clone(), row.row_hash.clone()));
                return Ok(report);
            }
            report.rows += 1;
            expected_seq = row.seq + 1;
            after = row.seq;
            expected_prev = row.row_hash.clone();
            report.head = Some(ChainHead { seq: row.seq, id: row.id, at: row.at, row_hash: row.row_hash });
        }
        if page_len < VERIFY_PAGE as usize {
            let last = report.head.as_ref().map_or(0, |h| h.seq);
            if let Some(anchor) = anchor.filter(|a| a.seq > last) {
                report.broken = Some(BrokenLink {
                    seq: anchor.seq,
                    id: 0,
                    check: Check::AnchorMissing,
                    expected: format!("a row at seq {}", anchor.seq),
                    found: format!("the last row at seq {last}"),
                });
            }
            return Ok(report);
        }
    }
}

/// An error with its sources, on one line, for log lines and audit details
/// (a TLS handshake failure, for one, says why only in its source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row and hash the migration's SQL produced for the same values
    /// (`SELECT audit_event_canonical(a), row_hash FROM audit_event a`).
    #[test]
    fn canonical_encoding_matches_the_database() {
        let row = ChainRow {
            seq: 3,
            id: 3,
            at: DateTime::parse_from_rfc3339("2026-11-25T15:11:28.773446Z").unwrap().with_timezone(&Utc),
            event: "a".into(),
            outcome: "success".into(),
            peer_address: None,
            calling_ae_title: None,
            called_ae_title: None,
            sop_instance_uid: None,
            study_instance_uid: None,
            detail: None,
            data: Some(r#"{"a": [1, 2], "b": 1.50}"#.into()),
            prev_hash: "c120c151ef00052eef7c658700092f42acd4415ea63854efa803b4a5ad529b88".into(),
            row_hash: "208e3cfd3a0be55102fccb2345edcf59cab4e9f4fc9df7210b8422b70c67cf68".into(),
        };
        assert_eq!(
            row.canonical(),
            r#"1:31:327:2026-11-25T15:11:28.773446Z1:a7:success~~~~~~24:{"a": [1, 2], "b": 1.50}"#
        );
        assert_eq!(row.compute_hash(&row.prev_hash), row.row_hash);
    }

    #[test]
    fn lengths_are_utf8_bytes() {
        let row = ChainRow {
            seq: 1,
            id: 7,
            at: DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z").unwrap().with_timezone(&Utc),
            event: "e".into(),
            outcome: "o".into(),
            peer_address: None,
            calling_ae_title: None,
            called_ae_title: None,
            sop_instance_uid: None,
            study_instance_uid: None,
            detail: Some("Ä:~".into()),
            data: None,
            prev_hash: GENESIS_HASH.into(),
            row_hash: String::new(),
        };
        assert_eq!(row.canonical(), "1:11:727:2026-01-02T03:04:05.000000Z1:e1:o~~~~~4:Ä:~~");
    }
}
