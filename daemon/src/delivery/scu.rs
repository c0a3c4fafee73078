//! The C-STORE SCU: opens an association with a destination (over DICOM TLS
//! when it has a `tls` table) proposing, per SOP class, Explicit and Implicit
//! VR Little Endian, and sends one file per C-STORE, re-encoded when the peer
//! picked Implicit, split into P-DATA PDUs of at most the peer's maximum
//! length. No SQL here: [`super::outbox`] records what came of it.

use std::future::Future;
use std::path::Path;

use cxr_led_dicom::dimse;
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::meta::FileMetaTable;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::{EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::association::AsyncClientAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType};
use dicom_ul::{ClientAssociationOptions, Pdu};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::audit::error_chain;
use crate::config::{DeliveryConfig, DestinationConfig, DestinationTlsConfig};
use crate::tls::TcpSocket;

/// One instance to send: the file we wrote and the identity it must carry.
#[derive(Debug, Clone, Copy)]
pub struct Instance<'a> {
    /// The Part 10 file.
    pub file: &'a Path,
    /// Its SOP Class UID.
    pub sop_class_uid: &'a str,
    /// Its SOP Instance UID (checked against the file before sending).
    pub sop_instance_uid: &'a str,
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The peer answered Success or a Warning status.
    Stored {
        /// The status.
        status: u16,
    },
    /// The peer answered a failure status.
    Refused {
        /// The status.
        status: u16,
        /// Its Error Comment, printable ASCII only.
        comment: String,
    },
    /// No answer: connection, association, file or protocol trouble.
    Error(String),
}

/// Association options proposing each SOP class with Explicit and Implicit VR Little Endian.
pub fn association_options<'a>(
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
pub fn tls_options<'a>(
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
pub async fn establish<S: AsyncRead + AsyncWrite + Unpin + Send + TcpSocket>(
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
pub enum StoreError {
    /// The association is still usable (the file was unreadable, no context for its SOP class).
    Local(String),
    /// The association is broken or in an unknown state.
    Association(String),
}

/// Sends one file and waits for its C-STORE response.
pub async fn store<S: AsyncRead + AsyncWrite + Unpin + Send>(
    association: &mut AsyncClientAssociation<S>,
    config: &DeliveryConfig,
    instance: &Instance<'_>,
    message_id: u16,
) -> Result<Outcome, StoreError> {
    let Some(context) = association
        .presentation_contexts()
        .iter()
        .find(|pc| dimse::trim(&pc.abstract_syntax) == instance.sop_class_uid)
        .cloned()
    else {
        return Err(StoreError::Local(format!(
            "the destination accepted no presentation context for SOP class {}",
            instance.sop_class_uid
        )));
    };
    let implicit = dimse::trim(&context.transfer_syntax) == IMPLICIT_VR_LITTLE_ENDIAN.uid();
    let data = encode_file(instance.file, instance.sop_instance_uid, implicit).await.map_err(StoreError::Local)?;
    let command = dimse::store_request(message_id, instance.sop_class_uid, instance.sop_instance_uid);
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

#[cfg(test)]
mod tests {
    use super::*;

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
