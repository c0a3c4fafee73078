//! One C-STORE: the data set is written to a temporary file and its
//! structure checked as it arrives (`receive`), its identity read and the
//! file fsynced while the database is asked whether the instance is known;
//! then the file is renamed into the spool, the folder fsynced, the instance
//! row, its study's upsert and its audit event committed in one call, and
//! only then is Success answered.
//!
//! Every failure answers a failure status and leaves neither a file nor a row:
//! the temporary file is removed, a spooled file whose transaction did not
//! commit is removed. (If the commit itself fails with an unknown outcome the
//! spooled file is kept; start-up recovery removes it when no row exists.)

use std::sync::Arc;
use std::time::Duration;

use cxr_led_dicom::dimse::{status, Command};
use dicom_object::FileMetaTableBuilder;

use super::check::Identity;
use super::receive::{Incoming, Received};
use super::Shared;
use crate::audit;
use crate::ops::metrics::{ReceiveOutcome, Stage};
use crate::spool::Spool;

/// Our Implementation Class UID (file meta group of spooled files).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.160934586124567883390151283911830312769";
/// Our Implementation Version Name.
pub const IMPLEMENTATION_VERSION_NAME: &str = "CXRLED_0_1";

/// Who sent the data set.
#[derive(Debug, Clone)]
pub struct Peer {
    /// IP address and port.
    pub address: String,
    /// The peer's AE title.
    pub calling_ae_title: String,
    /// The AE title it called (ours).
    pub called_ae_title: String,
}

/// A C-STORE whose data set is being received.
#[derive(Debug)]
pub struct Pending {
    /// The presentation context of the command and its data set.
    pub presentation_context_id: u8,
    /// The request.
    pub command: Command,
    transfer_syntax: String,
    incoming: Option<Incoming>,
    /// The failure status decided so far; the rest of the data set is still read and dropped.
    failure: Option<(u16, String)>,
    received: u64,
    /// `max-instance-size-mib` in bytes, as it was when the request arrived.
    max_bytes: u64,
    /// When the C-STORE request arrived (the receive stage's latency).
    started: std::time::Instant,
}

fn file_meta_bytes(command: &Command, transfer_syntax: &str, peer: &Peer) -> Result<Vec<u8>, String> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(command.affected_sop_class_uid.as_str())
        .media_storage_sop_instance_uid(command.affected_sop_instance_uid.as_str())
        .transfer_syntax(transfer_syntax)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
        .source_application_entity_title(peer.calling_ae_title.as_str())
        .build()
        .map_err(|e| format!("cannot build file meta group: {e}"))?;
    let mut bytes = vec![0u8; 128];
    bytes.extend_from_slice(b"DICM");
    meta.write(&mut bytes).map_err(|e| format!("cannot write file meta group: {e}"))?;
    Ok(bytes)
}

impl Pending {
    /// Opens the temporary file and writes the preamble and file meta group;
    /// `refusal` is a status already decided from the command alone.
    pub async fn start(
        shared: &Arc<Shared>,
        presentation_context_id: u8,
        transfer_syntax: &str,
        command: Command,
        peer: &Peer,
        refusal: Option<(u16, String)>,
    ) -> Pending {
        let mut pending = Pending {
            presentation_context_id,
            command,
            transfer_syntax: transfer_syntax.to_string(),
            incoming: None,
            failure: refusal,
            received: 0,
            max_bytes: shared.live.get().max_instance_bytes(),
            started: std::time::Instant::now(),
        };
        if pending.failure.is_some() {
            return pending;
        }
        let meta = match file_meta_bytes(&pending.command, transfer_syntax, peer) {
            Ok(meta) => meta,
            Err(e) => {
                pending.failure = Some((status::CANNOT_UNDERSTAND, e));
                return pending;
            }
        };
        pending.incoming = Some(Incoming::start(
            shared.spool.clone(),
            meta,
            pending.transfer_syntax.clone(),
            pending.command.clone(),
            pending.max_bytes,
        ));
        pending
    }

    /// Appends a fragment of the data set (dropped once a failure is decided,
    /// or once the data set has grown past `max-instance-size-mib`).
    pub async fn append(&mut self, bytes: Vec<u8>) {
        self.received += bytes.len() as u64;
        if self.received > self.max_bytes && self.failure.is_none() {
            self.failure = Some((
                status::OUT_OF_RESOURCES,
                format!(
                    "data set larger than max-instance-size-mib ({} bytes); the rest was read and dropped",
                    self.max_bytes
                ),
            ));
            if let Some(incoming) = self.incoming.take() {
                incoming.abandon().await;
            }
        }
        if let Some(incoming) = self.incoming.as_mut() {
            incoming.push(bytes).await;
        }
    }

    /// The association ended before the data set was complete: remove the
    /// temporary file and record the failure.
    pub async fn abandon(mut self, shared: &Arc<Shared>, peer: &Peer, why: &str) {
        if let Some(incoming) = self.incoming.take() {
            incoming.abandon().await;
        }
        shared.metrics.instances_received.get_or_create(&ReceiveOutcome::Abandoned).inc();
        let detail = format!("association ended mid-transfer ({why}) after {} bytes; nothing stored", self.received);
        tracing::warn!(sop_instance_uid = %self.command.affected_sop_instance_uid, "{detail}");
        record_instance(shared, peer, &self.command.affected_sop_instance_uid, None, "failure", &detail).await;
    }

    /// The data set is complete: finish its check, make it durable, register
    /// it and return the status to answer (with an Error Comment for failures).
    pub async fn finish(mut self, shared: &Arc<Shared>, peer: &Peer) -> (u16, Option<String>) {
        let uid = self.command.affected_sop_instance_uid.clone();
        let outcome = match (self.failure.take(), self.incoming.take()) {
            (Some(failure), incoming) => {
                if let Some(incoming) = incoming {
                    incoming.abandon().await;
                }
                Err(failure)
            }
            (None, None) => Err((status::OUT_OF_RESOURCES, "no spool file".to_string())),
            (None, Some(incoming)) => self.store(shared, peer, incoming).await,
        };
        let received = &shared.metrics.instances_received;
        shared.metrics.observe_stage(Stage::Receive, self.started.elapsed());
        match outcome {
            Ok(None) => {
                received.get_or_create(&ReceiveOutcome::Stored).inc();
                (status::SUCCESS, None)
            }
            Ok(Some(note)) => {
                received.get_or_create(&ReceiveOutcome::Duplicate).inc();
                (status::SUCCESS, Some(note))
            }
            Err((code, comment)) => {
                received.get_or_create(&ReceiveOutcome::Failed).inc();
                tracing::warn!(sop_instance_uid = %uid, status = format!("{code:04X}"), "C-STORE failed: {comment}");
                let detail = format!("status {code:04X}: {comment}");
                record_instance(shared, peer, &uid, None, "failure", &detail).await;
                (code, Some(comment))
            }
        }
    }

    /// Returns Ok(None) when stored, Ok(Some(note)) for a duplicate, or the failure.
    async fn store(
        &self,
        shared: &Arc<Shared>,
        peer: &Peer,
        incoming: Incoming,
    ) -> Result<Option<String>, (u16, String)> {
        let started = std::time::Instant::now();
        // The receiving thread reads the identity and fsyncs the file; the
        // duplicate lookup goes to the database meanwhile, under the
        // request's UID, which the check requires the data set to carry.
        let _guard = InFlight::acquire(shared, &self.command.affected_sop_instance_uid).await;
        let (received, lookup) =
            tokio::join!(incoming.finish(), is_known(&shared.db, &self.command.affected_sop_instance_uid));
        let Received { file: temp, identity } = received?;
        let sealed = started.elapsed();
        match lookup {
            Ok(true) => {
                discard(temp).await;
                // A resend is the sender still at work: its study is not quiet yet.
                if let Err(e) = refresh_activity(&shared.db, &identity.study_instance_uid).await {
                    tracing::warn!(error = %e, "could not refresh the study's last activity for a duplicate");
                }
                let note = "duplicate SOP Instance UID: already stored, this copy was discarded".to_string();
                record_instance(
                    shared,
                    peer,
                    &identity.sop_instance_uid,
                    Some(&identity.study_instance_uid),
                    "duplicate",
                    &note,
                )
                .await;
                return Ok(Some(note));
            }
            Ok(false) => {}
            Err(e) => {
                discard(temp).await;
                return Err((status::OUT_OF_RESOURCES, format!("database unavailable: {e}")));
            }
        }
        let size = temp.len();
        let file_name = Spool::file_name(&identity.sop_instance_uid);
        if let Err(e) = shared.spool.commit(temp, &file_name).await {
            return Err((status::OUT_OF_RESOURCES, format!("spool commit failed: {e}")));
        }
        let spooled = started.elapsed();
        let registered = self.register(shared, peer, &identity, &file_name, size).await;
        // Identified by UIDs only: patient data never goes to the log.
        tracing::info!(
            study_instance_uid = %identity.study_instance_uid,
            sop_instance_uid = %identity.sop_instance_uid,
            bytes = size,
            ?sealed,
            ?spooled,
            total = ?started.elapsed(),
            "instance stored (cumulative timings)"
        );
        match registered {
            Ok(true) => Ok(None),
            Ok(false) => Ok(Some("duplicate SOP Instance UID (registered concurrently)".to_string())),
            Err((e, committed_unknown)) => {
                if !committed_unknown {
                    if let Err(e) = shared.spool.remove(&file_name).await {
                        tracing::error!(file = %file_name, error = %e, "could not remove spooled file after a failed insert");
                    }
                }
                Err((status::OUT_OF_RESOURCES, format!("database insert failed: {e}")))
            }
        }
    }

    /// Registers the instance: its row, its study's upsert and its audit
    /// event, committed together by one call of `register_instance` (migration
    /// `20261206000007`), so the study's and the audit chain's locks are held
    /// only inside the server. Returns whether the instance was new; the
    /// error says whether the commit's outcome is unknown (then the spooled
    /// file is kept for recovery).
    async fn register(
        &self,
        shared: &Arc<Shared>,
        peer: &Peer,
        identity: &Identity,
        file_name: &str,
        size: u64,
    ) -> Result<bool, (sqlx::Error, bool)> {
        let detail = format!("stored {size} bytes, {}", self.transfer_syntax);
        let late_detail = format!(
            "{detail}; late: its study was already enqueued, so the study is re-opened and \
             this instance gets a job of its own after the quiet period"
        );
        let registered = sqlx::query_scalar!(
            "SELECT register_instance($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            identity.sop_instance_uid,
            identity.sop_class_uid,
            identity.study_instance_uid,
            identity.series_instance_uid,
            self.transfer_syntax,
            file_name,
            size as i64,
            audit::storable(&peer.calling_ae_title),
            audit::storable(&peer.called_ae_title),
            audit::storable(&peer.address),
            detail,
            late_detail,
        )
        .fetch_one(&shared.db)
        .await;
        match registered {
            Ok(_late) => Ok(true), // the audit detail already says whether it was late
            // Another daemon on the same database stored it first; the whole call
            // rolled back. (The spool file name comes from the UID, so its unique
            // index may be the one that refuses.)
            Err(sqlx::Error::Database(e))
                if matches!(e.constraint(), Some("instance_pkey" | "instance_spool_file_key")) =>
            {
                Ok(false)
            }
            Err(e) => {
                let committed_unknown = commit_outcome_unknown(&e);
                Err((e, committed_unknown))
            }
        }
    }
}

/// Whether a failed call may still have committed: the server refused it
/// (then it rolled back) or it was never sent, unless the connection broke
/// after the statement went out.
fn commit_outcome_unknown(error: &sqlx::Error) -> bool {
    !matches!(
        error,
        sqlx::Error::Database(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Configuration(_)
            | sqlx::Error::Encode(_)
    )
}

/// Removes a received file that will not be spooled, off the async threads.
async fn discard(temp: crate::spool::TempFile) {
    let _ = tokio::task::spawn_blocking(move || temp.discard()).await;
}

async fn is_known(db: &sqlx::PgPool, sop_instance_uid: &str) -> Result<bool, sqlx::Error> {
    let row = sqlx::query_scalar!("SELECT 1 AS known FROM instance WHERE sop_instance_uid = $1", sop_instance_uid)
        .fetch_optional(db)
        .await?;
    Ok(row.is_some())
}

/// Moves a study's last activity to now while it waits for its quiet period.
async fn refresh_activity(db: &sqlx::PgPool, study_instance_uid: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE study SET last_received_at = now() WHERE study_instance_uid = $1 AND enqueued_at IS NULL",
        study_instance_uid,
    )
    .execute(db)
    .await?;
    Ok(())
}

async fn record_instance(
    shared: &Arc<Shared>,
    peer: &Peer,
    uid: &str,
    study: Option<&str>,
    outcome: &str,
    detail: &str,
) {
    audit::record_or_log(
        &shared.db,
        &audit::Event {
            event: audit::INSTANCE_RECEIVED,
            outcome,
            peer_address: Some(&peer.address),
            calling_ae_title: Some(&peer.calling_ae_title),
            called_ae_title: Some(&peer.called_ae_title),
            sop_instance_uid: (!uid.is_empty()).then_some(uid),
            study_instance_uid: study,
            detail: Some(detail),
            ..Default::default()
        },
    )
    .await;
}

/// Marks a SOP Instance UID as being stored; a second association storing
/// the same UID waits until the first is done.
struct InFlight<'a> {
    shared: &'a Shared,
    uid: String,
}

impl<'a> InFlight<'a> {
    async fn acquire(shared: &'a Shared, uid: &str) -> InFlight<'a> {
        loop {
            if shared.in_flight.lock().expect("not poisoned").insert(uid.to_string()) {
                return InFlight { shared, uid: uid.to_string() };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.shared.in_flight.lock().expect("not poisoned").remove(&self.uid);
    }
}
