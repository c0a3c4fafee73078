//! Delivery of derived instances: the `outbox` table and a C-STORE SCU.
//!
//! [`enqueue`] adds one row per (instance, destination), in the caller's
//! transaction (the one that records the enhancement). [`run`] is the sender
//! loop; each pass ([`deliver_due`]):
//!
//! 1. claims due rows with `FOR UPDATE SKIP LOCKED` and, in the same
//!    statement, pushes their `next_attempt_at` forward by a lease, then
//!    commits: no transaction stays open across the network, and another
//!    daemon on the same database skips the rows until the lease runs out
//!    (which is also how a row claimed by a daemon that died comes back);
//! 2. per destination, opens one association (over DICOM TLS when the
//!    destination has a `tls` table) proposing, per SOP class, the
//!    file's Explicit VR Little Endian and Implicit VR Little Endian (the data
//!    set is re-encoded when the peer picks Implicit), and sends each file as
//!    a C-STORE split into P-DATA PDUs of at most the peer's maximum length;
//! 3. records each outcome in one transaction with its audit row: Success or
//!    Warning makes the row `sent`; anything else adds an attempt, keeps the
//!    error and status and schedules the next attempt with capped exponential
//!    backoff, until `max-attempts` (0 = never) marks it `failed`.
//!
//! The same file, hence the same SOP Instance UID, goes out on every attempt:
//! a PACS that stored it but whose answer we never saw gets it again and
//! treats it as the same instance.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::meta::FileMetaTable;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::{EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::AsyncClientAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::{ClientAssociationOptions, Pdu};
use sqlx::{PgConnection, PgPool, Row};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::audit::{self, error_chain};
use crate::config::{DeliveryConfig, DestinationConfig, DestinationTlsConfig};
use crate::ingest::dimse;
use crate::metrics::Metrics;
use crate::tls::TcpSocket;

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
    for destination in destinations {
        sqlx::query(
            "INSERT INTO outbox (sop_instance_uid, sop_class_uid, study_instance_uid, destination, file) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sop_instance_uid, destination) DO NOTHING",
        )
        .bind(sop_instance_uid)
        .bind(sop_class_uid)
        .bind(study_instance_uid)
        .bind(&destination.name)
        .bind(file.to_string_lossy().as_ref())
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Outbox rows per state (only states that have rows), for the metrics scrape.
pub async fn counts_by_state(db: &PgPool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT state, count(*) FROM outbox GROUP BY state ORDER BY state").fetch_all(db).await
}

/// The sender: a pass every `poll-interval-ms` (at once again after a pass
/// that found work) until `shutdown` resolves. A pass in progress finishes
/// first.
/// The configuration is read afresh for every pass (hot reload: destinations
/// and retry settings).
pub async fn run(
    db: PgPool,
    live: Arc<crate::reload::Live<DeliveryConfig>>,
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

/// One claimed outbox row.
#[derive(Debug, Clone)]
struct Claimed {
    id: i64,
    sop_instance_uid: String,
    sop_class_uid: String,
    study_instance_uid: String,
    destination: String,
    file: PathBuf,
    attempts: i32,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// The peer answered Success or a Warning status.
    Stored { status: u16 },
    /// The peer answered a failure status.
    Refused { status: u16, comment: String },
    /// No answer: connection, association, file or protocol trouble.
    Error(String),
}

/// Claims due rows, sends them and records (and counts) the outcomes.
/// Returns how many rows were attempted (0 when nothing was due).
pub async fn deliver_due(db: &PgPool, config: &DeliveryConfig, metrics: &Metrics) -> anyhow::Result<usize> {
    let rows = sqlx::query(
        "WITH due AS ( \
             SELECT id FROM outbox WHERE state = 'pending' AND next_attempt_at <= now() \
             ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) \
         UPDATE outbox o SET next_attempt_at = now() + make_interval(secs => $2) FROM due WHERE o.id = due.id \
         RETURNING o.id, o.sop_instance_uid, o.sop_class_uid, o.study_instance_uid, o.destination, o.file, o.attempts",
    )
    .bind(i64::from(config.batch_size))
    .bind(config.lease().as_secs_f64())
    .fetch_all(db)
    .await?;
    let mut by_destination: BTreeMap<String, Vec<Claimed>> = BTreeMap::new();
    for row in &rows {
        let claimed = Claimed {
            id: row.try_get("id")?,
            sop_instance_uid: row.try_get("sop_instance_uid")?,
            sop_class_uid: row.try_get("sop_class_uid")?,
            study_instance_uid: row.try_get("study_instance_uid")?,
            destination: row.try_get("destination")?,
            file: PathBuf::from(row.try_get::<String, _>("file")?),
            attempts: row.try_get("attempts")?,
        };
        by_destination.entry(claimed.destination.clone()).or_default().push(claimed);
    }
    for (name, mut batch) in by_destination {
        batch.sort_by_key(|c| c.id);
        let Some(destination) = config.destinations.iter().find(|d| d.name == name) else {
            let error =
                format!("destination {name:?} is not in [delivery] destinations (removed from the configuration?)");
            for claimed in &batch {
                record(db, config, metrics, None, claimed, &Outcome::Error(error.clone())).await?;
            }
            continue;
        };
        send_batch(db, config, metrics, destination, &batch).await?;
    }
    Ok(rows.len())
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
    let options = association_options(config, destination, &classes);
    let error = match &destination.tls {
        None => match establish(config, destination, options.establish_async(destination.address.as_str())).await {
            Ok(association) => return send_over(association, db, config, metrics, destination, batch).await,
            Err(error) => error,
        },
        Some(tls) => match tls_options(options, tls, destination) {
            Ok(options) => {
                match establish(config, destination, options.establish_tls_async(destination.address.as_str())).await {
                    Ok(association) => return send_over(association, db, config, metrics, destination, batch).await,
                    Err(error) => error,
                }
            }
            Err(error) => error,
        },
    };
    tracing::warn!(destination = %destination.name, error = %error, "cannot associate with destination");
    for claimed in batch {
        record(db, config, metrics, Some(destination), claimed, &Outcome::Error(error.clone())).await?;
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
        sqlx::query(
            "UPDATE outbox SET next_attempt_at = now() + make_interval(secs => $2) \
             WHERE id = ANY($1) AND state = 'pending'",
        )
        .bind(&remaining)
        .bind(config.lease().as_secs_f64())
        .execute(db)
        .await?;
        let store_started = std::time::Instant::now();
        let attempt = store(&mut association, config, claimed, message_id).await;
        metrics.stage_seconds.delivery.observe_duration(store_started.elapsed());
        message_id = message_id.wrapping_add(1).max(1);
        let (outcome, association_usable) = match attempt {
            Ok(outcome) => (outcome, true),
            Err(StoreError::Local(e)) => (Outcome::Error(e), true),
            Err(StoreError::Association(e)) => (Outcome::Error(e), false),
        };
        record(db, config, metrics, Some(destination), claimed, &outcome).await?;
        if !association_usable {
            // The rest was not tried: make it due again without counting an attempt.
            let rest: Vec<i64> = batch[i + 1..].iter().map(|c| c.id).collect();
            if !rest.is_empty() {
                sqlx::query("UPDATE outbox SET next_attempt_at = now() WHERE id = ANY($1) AND state = 'pending'")
                    .bind(&rest)
                    .execute(db)
                    .await?;
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

/// Association options proposing each SOP class with Explicit and Implicit VR Little Endian.
fn association_options<'a>(
    config: &DeliveryConfig,
    destination: &DestinationConfig,
    classes: &[&str],
) -> ClientAssociationOptions<'a> {
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(config.calling_ae_title.clone())
        .called_ae_title(destination.ae_title.clone())
        .max_pdu_length(config.max_pdu_length)
        .connection_timeout(config.connect_timeout())
        // Every read on the association, the C-STORE response's included,
        // is bounded by this: a PACS may take up to `response-timeout-secs`
        // to answer (the association answer stays bounded by the
        // connect-timeout in `establish`).
        .read_timeout(config.response_timeout())
        .write_timeout(config.response_timeout());
    for class in classes {
        options = options.with_presentation_context(
            class.to_string(),
            vec![EXPLICIT_VR_LITTLE_ENDIAN.uid().to_string(), IMPLICIT_VR_LITTLE_ENDIAN.uid().to_string()],
        );
    }
    options
}

/// Adds the destination's TLS configuration, read from its files now (so a
/// renewed certificate is picked up without a restart).
fn tls_options<'a>(
    options: ClientAssociationOptions<'a>,
    tls: &DestinationTlsConfig,
    destination: &DestinationConfig,
) -> Result<ClientAssociationOptions<'a>, String> {
    let prefix = format!("destination {} tls", destination.name);
    let client = crate::tls::client_config(tls).map_err(|e| e.at(&prefix))?;
    let name = crate::tls::server_name(tls, destination.host()).map_err(|e| e.at(&prefix))?;
    Ok(options.tls_config(client).server_name(&name.to_str()))
}

/// Waits for the association (TCP or TLS) within twice the connect timeout.
async fn establish<S: AsyncRead + AsyncWrite + Unpin + Send + TcpSocket>(
    config: &DeliveryConfig,
    destination: &DestinationConfig,
    establish: impl Future<Output = Result<AsyncClientAssociation<S>, dicom_ul::association::Error>>,
) -> Result<AsyncClientAssociation<S>, String> {
    let transport = if destination.tls.is_some() { " over TLS" } else { "" };
    match tokio::time::timeout(config.connect_timeout() * 2, establish).await {
        Ok(Ok(mut association)) => {
            // Small PDUs (the command, the last fragment) go out at once rather than after a delayed ACK.
            let _ = association.inner_stream().tcp().set_nodelay(true);
            Ok(association)
        }
        Ok(Err(e)) => Err(format!(
            "association with {} ({} at {}){transport} failed: {}",
            destination.name,
            destination.ae_title,
            destination.address,
            error_chain(&e)
        )),
        Err(_) => Err(format!(
            "association with {} ({} at {}){transport} timed out",
            destination.name, destination.ae_title, destination.address
        )),
    }
}

/// Why one C-STORE did not produce a status.
#[derive(Debug)]
enum StoreError {
    /// The association is still usable (the file was unreadable, no context for its SOP class).
    Local(String),
    /// The association is broken or in an unknown state.
    Association(String),
}

/// Sends one file and waits for its C-STORE response.
async fn store<S: AsyncRead + AsyncWrite + Unpin + Send>(
    association: &mut AsyncClientAssociation<S>,
    config: &DeliveryConfig,
    claimed: &Claimed,
    message_id: u16,
) -> Result<Outcome, StoreError> {
    let Some(context) = association
        .presentation_contexts()
        .iter()
        .find(|pc| dimse::trim(&pc.abstract_syntax) == claimed.sop_class_uid)
        .cloned()
    else {
        return Err(StoreError::Local(format!(
            "the destination accepted no presentation context for SOP class {}",
            claimed.sop_class_uid
        )));
    };
    let implicit = dimse::trim(&context.transfer_syntax) == IMPLICIT_VR_LITTLE_ENDIAN.uid();
    let data = encode_file(&claimed.file, &claimed.sop_instance_uid, implicit).await.map_err(StoreError::Local)?;
    let command = dimse::store_request(message_id, &claimed.sop_class_uid, &claimed.sop_instance_uid);
    let exchange = async {
        association
            .send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: context.id,
                    value_type: PDataValueType::Command,
                    is_last: true,
                    data: command,
                }],
            })
            .await
            .map_err(|e| format!("sending the C-STORE request: {}", error_chain(&e)))?;
        {
            let mut writer = association.send_pdata(context.id);
            writer.write_all(&data).await.map_err(|e| format!("sending the data set: {e}"))?;
            writer.finish().await.map_err(|e| format!("sending the data set: {e}"))?;
        }
        receive_response(association).await
    };
    match tokio::time::timeout(config.response_timeout(), exchange).await {
        Ok(Ok((status, _))) if is_stored(status) => Ok(Outcome::Stored { status }),
        Ok(Ok((status, comment))) => Ok(Outcome::Refused { status, comment }),
        Ok(Err(e)) => Err(StoreError::Association(e)),
        Err(_) => Err(StoreError::Association(format!(
            "no C-STORE response within {} s",
            config.response_timeout().as_secs()
        ))),
    }
}

/// Reads PDUs until a complete command (the C-STORE-RSP) arrived; returns
/// its Status and Error Comment.
async fn receive_response<S: AsyncRead + AsyncWrite + Unpin + Send>(
    association: &mut AsyncClientAssociation<S>,
) -> Result<(u16, String), String> {
    let mut command = Vec::new();
    loop {
        let pdu = association
            .receive()
            .await
            .map_err(|e| format!("waiting for the C-STORE response: {}", error_chain(&e)))?;
        match pdu {
            Pdu::PData { data } => {
                for value in data {
                    if value.value_type != PDataValueType::Command {
                        return Err("the peer sent a data set instead of a C-STORE response".into());
                    }
                    command.extend_from_slice(&value.data);
                    if value.is_last {
                        return parse_response(&command);
                    }
                }
            }
            Pdu::AbortRQ { source } => return Err(format!("the peer aborted the association ({source:?})")),
            Pdu::ReleaseRQ => return Err("the peer asked to release the association before answering".into()),
            other => return Err(format!("unexpected PDU while waiting for the C-STORE response: {other:?}")),
        }
    }
}

fn parse_response(bytes: &[u8]) -> Result<(u16, String), String> {
    let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
    let obj =
        InMemDicomObject::read_dataset_with_ts(bytes, &ts).map_err(|e| format!("unreadable C-STORE response: {e}"))?;
    let field = obj.get(tags::COMMAND_FIELD).and_then(|e| e.to_int::<u16>().ok());
    if field != Some(dimse::C_STORE_RSP) {
        return Err(format!("expected a C-STORE response, got command field {field:?}"));
    }
    let status = obj
        .get(tags::STATUS)
        .and_then(|e| e.to_int::<u16>().ok())
        .ok_or_else(|| "C-STORE response without Status".to_string())?;
    let comment = obj
        .get(tags::ERROR_COMMENT)
        .and_then(|e| e.to_str().ok())
        .map(|s| dimse::trim(&s).chars().filter(|c| c.is_ascii() && !c.is_ascii_control()).take(64).collect())
        .unwrap_or_default();
    Ok((status, comment))
}

/// Success (0000) and the Warning statuses of PS3.4 B.2.3 (0001, Bxxx): the peer stored the instance.
fn is_stored(status: u16) -> bool {
    status == 0x0000 || status == 0x0001 || status & 0xf000 == 0xb000
}

/// Reads a file we wrote and returns its data set in the negotiated transfer
/// syntax, after checking that it is the instance the row names. A file
/// already in Explicit VR Little Endian going out as such is sent as its
/// bytes (no parse); otherwise the data set is decoded and re-encoded.
async fn encode_file(path: &Path, sop_instance_uid: &str, implicit: bool) -> Result<Vec<u8>, String> {
    let path = path.to_path_buf();
    let uid = sop_instance_uid.to_string();
    tokio::task::spawn_blocking(move || {
        let mut bytes = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        if bytes.len() < 132 || &bytes[128..132] != b"DICM" {
            return Err(format!("{} is not a DICOM Part 10 file", path.display()));
        }
        let mut cursor = std::io::Cursor::new(&bytes[128..]);
        let meta = FileMetaTable::from_reader(&mut cursor)
            .map_err(|e| format!("reading the file meta group of {}: {e}", path.display()))?;
        let start = 128 + cursor.position() as usize;
        let in_file = dimse::trim(meta.media_storage_sop_instance_uid());
        if in_file != uid {
            return Err(format!("{} holds SOP Instance UID {in_file}, not {uid}", path.display()));
        }
        let file_ts = dimse::trim(meta.transfer_syntax()).to_string();
        if !implicit && file_ts == EXPLICIT_VR_LITTLE_ENDIAN.uid() {
            bytes.drain(..start);
            return Ok(bytes);
        }
        let ts = TransferSyntaxRegistry
            .get(&file_ts)
            .ok_or_else(|| format!("{} has an unknown transfer syntax {file_ts}", path.display()))?;
        let obj = InMemDicomObject::read_dataset_with_ts(&bytes[start..], ts)
            .map_err(|e| format!("parsing {}: {e}", path.display()))?;
        let target = if implicit { IMPLICIT_VR_LITTLE_ENDIAN.erased() } else { EXPLICIT_VR_LITTLE_ENDIAN.erased() };
        let mut out = Vec::with_capacity(bytes.len());
        obj.write_dataset_with_ts(&mut out, &target).map_err(|e| format!("encoding {}: {e}", path.display()))?;
        Ok(out)
    })
    .await
    .map_err(|e| format!("encoding task failed: {e}"))?
}

/// The delay before attempt `attempts + 1`: `retry-initial-secs * 2^(attempts-1)`
/// capped at `retry-max-secs`, plus up to 10% jitter derived from the row
/// id so that rows failing together do not retry in lock-step.
pub fn backoff(config: &DeliveryConfig, attempts: u32, row_id: i64) -> Duration {
    let exponent = attempts.saturating_sub(1).min(30);
    let base = config.retry_initial_secs.saturating_mul(1u64 << exponent).min(config.retry_max_secs) as f64;
    let jitter =
        ((row_id as u64).wrapping_mul(2_654_435_761).wrapping_add(u64::from(attempts)) % 1000) as f64 / 10_000.0;
    Duration::from_secs_f64((base * (1.0 + jitter)).min(config.retry_max_secs as f64 * 1.1))
}

/// Records one attempt's outcome and its audit row in one transaction.
async fn record(
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
            sqlx::query(
                "UPDATE outbox SET state = 'sent', sent_at = now(), attempts = $2, last_status = $3, last_error = NULL \
                 WHERE id = $1",
            )
            .bind(claimed.id)
            .bind(attempt)
            .bind(i32::from(*status))
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
            let delay = backoff(config, attempt as u32, claimed.id);
            sqlx::query(
                "UPDATE outbox SET attempts = $2, last_status = $3, last_error = $4, \
                 next_attempt_at = now() + make_interval(secs => $5), state = $6 WHERE id = $1",
            )
            .bind(claimed.id)
            .bind(attempt)
            .bind(status)
            .bind(&error)
            .bind(delay.as_secs_f64())
            .bind(if give_up { "failed" } else { "pending" })
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
    let counts = &metrics.delivery_attempts;
    match outcome_word {
        "success" | "warning" => counts.sent.inc(),
        "gave-up" => counts.failed.inc(),
        _ => counts.retry.inc(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let config = DeliveryConfig { retry_initial_secs: 10, retry_max_secs: 600, ..Default::default() };
        let secs = |attempts| backoff(&config, attempts, 7).as_secs_f64();
        assert!((10.0..11.0).contains(&secs(1)), "{}", secs(1));
        assert!((20.0..22.0).contains(&secs(2)));
        assert!((80.0..88.0).contains(&secs(4)));
        assert!((600.0..=660.0).contains(&secs(10)));
        assert!((600.0..=660.0).contains(&secs(1000)));
    }

    #[test]
    fn warnings_count_as_stored() {
        assert!(is_stored(0x0000));
        assert!(is_stored(0x0001));
        assert!(is_stored(0xB000));
        assert!(is_stored(0xB007));
        assert!(!is_stored(0xA700));
        assert!(!is_stored(0xC000));
        assert!(!is_stored(0x0122));
    }
}
