//! One association: negotiation with the allow-lists, then the DIMSE loop.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use cxr_led_dicom::dimse::{self, status, Command};
use cxr_led_dicom::uids::{STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES, VERIFICATION};
use dicom_ul::association::server::AccessControl;
use dicom_ul::association::{Association as _, Error as UlError};
use dicom_ul::pdu::{
    AssociationRJServiceUserReason, PDataValue, PDataValueType, PresentationContextResultReason, UserIdentity,
};
use dicom_ul::{Pdu, ServerAssociationOptions};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::store::{self, Pending};
use super::Shared;
use crate::audit::{self, error_chain};
use crate::ops::metrics::{AssociationOutcome, Metrics};
use crate::tls::TcpSocket;

/// The access policy of one incoming association: called AE title, calling
/// AE title allow-list and peer address allow-list. It remembers what it saw
/// and why it refused, for the audit trail.
struct AllowList {
    shared: Arc<Shared>,
    peer: IpAddr,
    seen: Arc<Mutex<Seen>>,
}

#[derive(Default, Clone)]
struct Seen {
    calling: String,
    called: String,
    refusal: Option<String>,
}

impl AccessControl for AllowList {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let calling = dimse::trim(calling_ae_title).to_string();
        let called = dimse::trim(called_ae_title).to_string();
        // The allow-lists as last reloaded.
        let config = self.shared.live.get();
        let verdict = if called != this_ae_title {
            Err((
                AssociationRJServiceUserReason::CalledAETitleNotRecognized,
                format!("called AE title {called:?} is not ours"),
            ))
        } else if !config.allowed_calling_ae_titles.is_empty() && !config.allowed_calling_ae_titles.contains(&calling) {
            Err((
                AssociationRJServiceUserReason::CallingAETitleNotRecognized,
                format!("calling AE title {calling:?} is not in allowed-calling-ae-titles"),
            ))
        } else if !config.allowed_peer_addresses.is_empty() && !config.allowed_peer_addresses.contains(&self.peer) {
            Err((
                AssociationRJServiceUserReason::NoReasonGiven,
                format!("peer address {} is not in allowed-peer-addresses", self.peer),
            ))
        } else {
            Ok(())
        };
        let mut seen = self.seen.lock().expect("not poisoned");
        seen.calling = calling;
        seen.called = called;
        verdict.map_err(|(reason, text)| {
            seen.refusal = Some(text);
            reason
        })
    }
}

/// How an accepted connection speaks: plain TCP, or TLS with this configuration.
#[derive(Clone)]
pub enum Transport {
    /// The `[ingest] listen` socket.
    Plain,
    /// The `[ingest.tls] listen` socket.
    Tls(Arc<rustls::ServerConfig>),
}

impl Transport {
    fn name(&self) -> &'static str {
        match self {
            Transport::Plain => "TCP",
            Transport::Tls(_) => "TLS",
        }
    }
}

/// Runs one association from its first byte to its end.
pub async fn run(socket: TcpStream, peer: SocketAddr, shared: Arc<Shared>, transport: Transport) {
    let peer_text = peer.to_string();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let config = &shared.config;
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(AllowList { shared: shared.clone(), peer: peer.ip(), seen: seen.clone() })
        .ae_title(config.ae_title.clone())
        .max_pdu_length(config.max_pdu_length)
        // No read timeout here: dicom-ul would apply it to every receive, also
        // between messages; the DIMSE loop applies read and idle timeouts itself.
        .write_timeout(config.read_timeout())
        .with_abstract_syntax(VERIFICATION);
    for uid in STORAGE_SOP_CLASSES {
        options = options.with_abstract_syntax(*uid);
    }
    for uid in TRANSFER_SYNTAXES {
        options = options.with_transfer_syntax(*uid);
    }
    let name = transport.name();
    // The timeout covers the TLS handshake too: a peer that stalls in it is dropped.
    let timeout = config.read_timeout();
    match transport {
        Transport::Plain => {
            let established = tokio::time::timeout(timeout, options.establish_async(socket)).await;
            negotiate_and_serve(established, &shared, &peer_text, &seen, name).await;
        }
        Transport::Tls(tls) => {
            let options = options.tls_config(tls);
            let established = tokio::time::timeout(timeout, options.establish_tls_async(socket)).await;
            negotiate_and_serve(established, &shared, &peer_text, &seen, name).await;
        }
    }
}

/// Audits the negotiation's outcome and, when it was accepted, runs the DIMSE loop.
async fn negotiate_and_serve<S>(
    established: Result<Result<Association<S>, UlError>, tokio::time::error::Elapsed>,
    shared: &Arc<Shared>,
    peer_text: &str,
    seen: &Mutex<Seen>,
    transport: &str,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + TcpSocket,
{
    let seen = seen.lock().expect("not poisoned").clone();
    if let Some(association) = negotiated(established, shared, peer_text, &seen).await {
        serve(association, shared, peer_text, seen, transport).await;
    }
}

/// The association, or None once a rejection, a failed negotiation (a TLS
/// handshake included) or a timeout has been counted, logged and audited.
async fn negotiated<S>(
    established: Result<Result<Association<S>, UlError>, tokio::time::error::Elapsed>,
    shared: &Shared,
    peer_text: &str,
    seen: &Seen,
) -> Option<Association<S>> {
    match established {
        Ok(Ok(association)) => Some(association),
        Ok(Err(UlError::Rejected { association_rj, .. })) => {
            shared.metrics.associations.get_or_create(&AssociationOutcome::Rejected).inc();
            let detail = seen.refusal.clone().unwrap_or_else(|| association_rj.source.to_string());
            tracing::warn!(peer = %peer_text, calling = %seen.calling, reason = %detail, "association rejected");
            audit::record_or_log(
                &shared.db,
                &audit::Event {
                    event: audit::ASSOCIATION,
                    outcome: "rejected",
                    peer_address: Some(peer_text),
                    calling_ae_title: Some(&seen.calling),
                    called_ae_title: Some(&seen.called),
                    detail: Some(&detail),
                    ..Default::default()
                },
            )
            .await;
            None
        }
        Ok(Err(e)) => {
            shared.metrics.associations.get_or_create(&AssociationOutcome::Failed).inc();
            let detail = format!("negotiation failed: {}", error_chain(&e));
            tracing::info!(peer = %peer_text, "association {detail}");
            audit_failed(shared, peer_text, seen, &detail).await;
            None
        }
        Err(_) => {
            shared.metrics.associations.get_or_create(&AssociationOutcome::Failed).inc();
            tracing::info!(peer = %peer_text, "association request timed out");
            audit_failed(shared, peer_text, seen, "no A-ASSOCIATE-RQ within read-timeout-secs").await;
            None
        }
    }
}

/// The DIMSE loop of an accepted association, until release, abort or timeout.
async fn serve<S>(mut association: Association<S>, shared: &Arc<Shared>, peer_text: &str, seen: Seen, transport: &str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + TcpSocket,
{
    let peer_text = peer_text.to_string();
    shared.metrics.associations.get_or_create(&AssociationOutcome::Accepted).inc();
    let _active = ActiveAssociation::count(&shared.metrics);
    let calling = association.peer_ae_title().trim().to_string();
    let called = seen.called;
    let accepted: Vec<String> = association
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| format!("{}:{}", pc.abstract_syntax, pc.transfer_syntax))
        .collect();
    let detail = format!(
        "over {transport}: {} of {} presentation contexts accepted: {}",
        accepted.len(),
        association.presentation_contexts().len(),
        accepted.join(" ")
    );
    tracing::info!(peer = %peer_text, calling = %calling, "association accepted; {detail}");
    audit::record_or_log(
        &shared.db,
        &audit::Event {
            event: audit::ASSOCIATION,
            outcome: "accepted",
            peer_address: Some(&peer_text),
            calling_ae_title: Some(&calling),
            called_ae_title: Some(&called),
            detail: Some(&detail),
            ..Default::default()
        },
    )
    .await;

    quick_ack(&mut association);
    let peer_info =
        store::Peer { address: peer_text.clone(), calling_ae_title: calling.clone(), called_ae_title: called };
    let mut command_bytes: Vec<u8> = Vec::new();
    let mut pending: Option<Pending> = None;
    let end = loop {
        let timeout = if pending.is_some() || !command_bytes.is_empty() {
            shared.config.read_timeout()
        } else {
            shared.config.idle_timeout()
        };
        quick_ack(&mut association);
        let pdu = match tokio::time::timeout(timeout, association.receive()).await {
            Err(_) => break "timed out; aborted",
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer_text, error = %e, "receive failed");
                break "connection lost";
            }
            Ok(Ok(pdu)) => pdu,
        };
        match pdu {
            Pdu::PData { data } => {
                let mut failed = None;
                for value in data {
                    if let Err(why) =
                        on_pdata(&mut association, shared, &peer_info, &mut command_bytes, &mut pending, value).await
                    {
                        failed = Some(why);
                        break;
                    }
                }
                if let Some(why) = failed {
                    tracing::warn!(peer = %peer_text, "{why}; aborting association");
                    break "protocol error; aborted";
                }
            }
            Pdu::ReleaseRQ => {
                let _ = association.send(&Pdu::ReleaseRP).await;
                break "released";
            }
            Pdu::AbortRQ { .. } => break "aborted by peer",
            other => {
                tracing::warn!(peer = %peer_text, pdu = %other.short_description(), "unexpected PDU; aborting");
                break "unexpected PDU; aborted";
            }
        }
    };
    if let Some(pending) = pending.take() {
        pending.abandon(shared, &peer_info, end).await;
    }
    if end != "released" && end != "aborted by peer" && end != "connection lost" {
        let _ = association.abort().await;
    }
    tracing::info!(peer = %peer_text, calling = %calling, "association ended: {end}");
}

/// Counts an association as active until dropped (also when its task is
/// aborted at shutdown).
struct ActiveAssociation<'a>(&'a Metrics);

impl<'a> ActiveAssociation<'a> {
    fn count(metrics: &'a Metrics) -> ActiveAssociation<'a> {
        metrics.associations_active.inc();
        ActiveAssociation(metrics)
    }
}

impl Drop for ActiveAssociation<'_> {
    fn drop(&mut self) {
        self.0.associations_active.dec();
    }
}

async fn audit_failed(shared: &Shared, peer: &str, seen: &Seen, detail: &str) {
    audit::record_or_log(
        &shared.db,
        &audit::Event {
            event: audit::ASSOCIATION,
            outcome: "failure",
            peer_address: Some(peer),
            calling_ae_title: (!seen.calling.is_empty()).then_some(seen.calling.as_str()),
            called_ae_title: (!seen.called.is_empty()).then_some(seen.called.as_str()),
            detail: Some(detail),
            ..Default::default()
        },
    )
    .await;
}

/// Asks the kernel to acknowledge received segments at once. dcmtk's storescu
/// writes each PDU header and body in separate writes without TCP_NODELAY, so
/// with delayed ACKs (40 ms) on our side Nagle's algorithm stalls every small
/// instance; quick ACKs remove that stall. The flag is not sticky, hence one
/// call per PDU.
fn quick_ack<S: AsyncRead + AsyncWrite + Unpin + Send + TcpSocket>(association: &mut Association<S>) {
    #[cfg(target_os = "linux")]
    {
        let _ = socket2::SockRef::from(association.inner_stream().tcp()).set_tcp_quickack(true);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = association;
}

type Association<S> = dicom_ul::association::server::AsyncServerAssociation<S>;

async fn send_command<S: AsyncRead + AsyncWrite + Unpin + Send>(
    association: &mut Association<S>,
    pc_id: u8,
    bytes: Vec<u8>,
) -> Result<(), String> {
    let pdu = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc_id,
            value_type: PDataValueType::Command,
            is_last: true,
            data: bytes,
        }],
    };
    association.send(&pdu).await.map_err(|e| format!("sending response failed: {e}"))
}

/// The longest command set we assemble from fragments.
const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// Handles one presentation data value; an error aborts the association.
async fn on_pdata<S: AsyncRead + AsyncWrite + Unpin + Send>(
    association: &mut Association<S>,
    shared: &Arc<Shared>,
    peer: &store::Peer,
    command_bytes: &mut Vec<u8>,
    pending: &mut Option<Pending>,
    value: PDataValue,
) -> Result<(), String> {
    match value.value_type {
        PDataValueType::Command => {
            if pending.is_some() {
                return Err("command received while a data set was expected".into());
            }
            command_bytes.extend_from_slice(&value.data);
            // A command set is a few hundred bytes; one that keeps growing is not one.
            if command_bytes.len() > MAX_COMMAND_BYTES {
                return Err(format!("command set longer than {MAX_COMMAND_BYTES} bytes"));
            }
            if !value.is_last {
                return Ok(());
            }
            let command = dimse::parse_command(command_bytes)?;
            command_bytes.clear();
            on_command(association, shared, peer, pending, value.presentation_context_id, command).await
        }
        PDataValueType::Data => {
            let Some(store) = pending.as_mut() else {
                return Err("data set received without a C-STORE request".into());
            };
            if store.presentation_context_id != value.presentation_context_id {
                return Err("data set on another presentation context than its command".into());
            }
            let is_last = value.is_last;
            store.append(value.data).await;
            if is_last {
                let store = pending.take().expect("checked above");
                let pc_id = store.presentation_context_id;
                let command = store.command.clone();
                let (code, note) = store.finish(shared, peer).await;
                // An Error Comment only accompanies failures (a duplicate's note stays in the audit).
                let comment = if code == status::SUCCESS { None } else { note.as_deref() };
                send_command(association, pc_id, dimse::store_response(&command, code, comment)).await?;
            }
            Ok(())
        }
    }
}

async fn on_command<S: AsyncRead + AsyncWrite + Unpin + Send>(
    association: &mut Association<S>,
    shared: &Arc<Shared>,
    peer: &store::Peer,
    pending: &mut Option<Pending>,
    pc_id: u8,
    command: Command,
) -> Result<(), String> {
    let context = association
        .presentation_contexts()
        .iter()
        .find(|pc| pc.id == pc_id && pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| (pc.abstract_syntax.clone(), pc.transfer_syntax.clone()));
    let Some((abstract_syntax, transfer_syntax)) = context else {
        return Err(format!("command on presentation context {pc_id}, which was not accepted"));
    };
    match command.field {
        dimse::C_ECHO_RQ => send_command(association, pc_id, dimse::echo_response(&command)).await,
        dimse::C_STORE_RQ => {
            if !command.has_data_set {
                let comment = "C-STORE-RQ without a data set";
                return send_command(
                    association,
                    pc_id,
                    dimse::store_response(&command, status::CANNOT_UNDERSTAND, Some(comment)),
                )
                .await;
            }
            let refusal = if dimse::trim(&abstract_syntax) != command.affected_sop_class_uid {
                Some((
                    status::SOP_CLASS_NOT_SUPPORTED,
                    "affected SOP class differs from the presentation context".into(),
                ))
            } else if command.affected_sop_instance_uid.is_empty() {
                Some((status::CANNOT_UNDERSTAND, "C-STORE-RQ without an Affected SOP Instance UID".into()))
            } else {
                dimse::uid_problem(&command.affected_sop_instance_uid)
                    .map(|problem| (status::CANNOT_UNDERSTAND, format!("the Affected SOP Instance UID {problem}")))
            };
            *pending = Some(Pending::start(shared, pc_id, dimse::trim(&transfer_syntax), command, peer, refusal).await);
            Ok(())
        }
        other => Err(format!("unsupported DIMSE command 0x{other:04X}")),
    }
}
