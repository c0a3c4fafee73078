//! DIMSE command sets: reading a request, writing C-ECHO-RSP and C-STORE-RSP
//! (PS3.7 §9.3). Commands are always Implicit VR Little Endian.

use dicom_core::{dicom_value, DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::{entries::IMPLICIT_VR_LITTLE_ENDIAN, TransferSyntaxRegistry};

/// Command Field of C-STORE-RQ.
pub const C_STORE_RQ: u16 = 0x0001;
/// Command Field of C-STORE-RSP.
pub const C_STORE_RSP: u16 = 0x8001;
/// Command Field of C-ECHO-RQ.
pub const C_ECHO_RQ: u16 = 0x0030;
/// Command Field of C-ECHO-RSP.
pub const C_ECHO_RSP: u16 = 0x8030;
/// Command Data Set Type value meaning "no data set follows".
pub const NO_DATA_SET: u16 = 0x0101;

/// DIMSE status codes used by the ingest (PS3.4 Annex B.2.3, PS3.7 Annex C).
pub mod status {
    /// Success (also answered for a duplicate SOP Instance UID, see INGEST.md).
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: SOP class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Refused: out of resources.
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: data set does not match SOP class.
    pub const DATA_SET_DOES_NOT_MATCH_SOP_CLASS: u16 = 0xA900;
    /// Error: cannot understand.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
}

/// The fields of a request command set the ingest uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Command Field (0000,0100).
    pub field: u16,
    /// Message ID (0000,0110).
    pub message_id: u16,
    /// Affected SOP Class UID (0000,0002), empty when absent.
    pub affected_sop_class_uid: String,
    /// Affected SOP Instance UID (0000,1000), empty when absent.
    pub affected_sop_instance_uid: String,
    /// Whether a data set follows (Command Data Set Type != 0x0101).
    pub has_data_set: bool,
}

/// Trims the padding of a UID or code string.
pub fn trim(value: &str) -> &str {
    value.trim_end_matches(['\0', ' ']).trim_start()
}

/// Why `value` (already trimmed) is not a UID, or None when it is one: PS3.5
/// 9.1 allows digits and dots only. (The length, 64 at most, is not
/// enforced: a long UID is stored as well as a short one, and refusing it
/// would only keep a legacy study out.)
pub fn uid_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("is empty".into());
    }
    value
        .chars()
        .find(|c| !(c.is_ascii_digit() || *c == '.'))
        .map(|c| format!("holds {:?}; a UID is digits and dots only", c.escape_debug().to_string()))
}

/// Parses a command set.
pub fn parse_command(bytes: &[u8]) -> Result<Command, String> {
    let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, &ts).map_err(|e| format!("unreadable command: {e}"))?;
    let uint = |tag| -> Result<u16, String> {
        obj.element(tag).map_err(|e| e.to_string())?.to_int::<u16>().map_err(|e| e.to_string())
    };
    let string = |tag| -> String {
        obj.element(tag).ok().and_then(|e| e.to_str().ok()).map(|s| trim(&s).to_string()).unwrap_or_default()
    };
    Ok(Command {
        field: uint(tags::COMMAND_FIELD)?,
        message_id: uint(tags::MESSAGE_ID).unwrap_or(0),
        affected_sop_class_uid: string(tags::AFFECTED_SOP_CLASS_UID),
        affected_sop_instance_uid: string(tags::AFFECTED_SOP_INSTANCE_UID),
        has_data_set: uint(tags::COMMAND_DATA_SET_TYPE).map(|t| t != NO_DATA_SET).unwrap_or(false),
    })
}

fn uid_value(uid: &str) -> PrimitiveValue {
    let mut s = uid.to_string();
    if s.len() % 2 == 1 {
        s.push('\0');
    }
    PrimitiveValue::from(s)
}

fn text_value(text: &str) -> PrimitiveValue {
    // Error Comment is LO: at most 64 characters, padded with a space.
    let mut s: String = text.chars().filter(|c| c.is_ascii() && !c.is_ascii_control()).take(64).collect();
    if s.len() % 2 == 1 {
        s.push(' ');
    }
    PrimitiveValue::from(s)
}

fn encode(elements: Vec<DataElement<InMemDicomObject>>) -> Vec<u8> {
    let ts = TransferSyntaxRegistry.get(IMPLICIT_VR_LITTLE_ENDIAN.uid()).expect("implicit VR LE is built in");
    let body = InMemDicomObject::from_element_iter(elements.clone());
    let mut bytes = Vec::new();
    body.write_dataset_with_ts(&mut bytes, ts).expect("writing to memory");
    let mut with_length =
        vec![DataElement::new(tags::COMMAND_GROUP_LENGTH, VR::UL, dicom_value!(U32, [bytes.len() as u32]))];
    with_length.extend(elements);
    let obj = InMemDicomObject::from_element_iter(with_length);
    let mut out = Vec::with_capacity(bytes.len() + 12);
    obj.write_dataset_with_ts(&mut out, ts).expect("writing to memory");
    out
}

/// A C-STORE-RQ (priority medium) announcing a data set.
pub fn store_request(message_id: u16, sop_class_uid: &str, sop_instance_uid: &str) -> Vec<u8> {
    encode(vec![
        DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, uid_value(sop_class_uid)),
        DataElement::new(tags::COMMAND_FIELD, VR::US, dicom_value!(U16, [C_STORE_RQ])),
        DataElement::new(tags::MESSAGE_ID, VR::US, dicom_value!(U16, [message_id])),
        DataElement::new(tags::PRIORITY, VR::US, dicom_value!(U16, [0])),
        DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, dicom_value!(U16, [0x0000])),
        DataElement::new(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, uid_value(sop_instance_uid)),
    ])
}

/// The Status (0000,0900) of a response command set.
pub fn response_status(bytes: &[u8]) -> Result<u16, String> {
    let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, &ts).map_err(|e| format!("unreadable response: {e}"))?;
    obj.element(tags::STATUS).map_err(|e| e.to_string())?.to_int::<u16>().map_err(|e| e.to_string())
}

/// A C-ECHO-RSP with status Success.
pub fn echo_response(request: &Command) -> Vec<u8> {
    let sop_class = if request.affected_sop_class_uid.is_empty() {
        crate::uids::VERIFICATION
    } else {
        &request.affected_sop_class_uid
    };
    encode(vec![
        DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, uid_value(sop_class)),
        DataElement::new(tags::COMMAND_FIELD, VR::US, dicom_value!(U16, [C_ECHO_RSP])),
        DataElement::new(tags::MESSAGE_ID_BEING_RESPONDED_TO, VR::US, dicom_value!(U16, [request.message_id])),
        DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, dicom_value!(U16, [NO_DATA_SET])),
        DataElement::new(tags::STATUS, VR::US, dicom_value!(U16, [status::SUCCESS])),
    ])
}

/// A C-STORE-RSP with the given status and, for failures, an Error Comment.
pub fn store_response(request: &Command, status: u16, comment: Option<&str>) -> Vec<u8> {
    let mut elements = vec![
        DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, uid_value(&request.affected_sop_class_uid)),
        DataElement::new(tags::COMMAND_FIELD, VR::US, dicom_value!(U16, [C_STORE_RSP])),
        DataElement::new(tags::MESSAGE_ID_BEING_RESPONDED_TO, VR::US, dicom_value!(U16, [request.message_id])),
        DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, dicom_value!(U16, [NO_DATA_SET])),
        DataElement::new(tags::STATUS, VR::US, dicom_value!(U16, [status])),
        DataElement::new(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, uid_value(&request.affected_sop_instance_uid)),
    ];
    if let Some(comment) = comment {
        elements.push(DataElement::new(tags::ERROR_COMMENT, VR::LO, text_value(comment)));
    }
    encode(elements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_is_digits_and_dots() {
        assert_eq!(uid_problem("1.2.840.10008.5.1.4.1.1.1"), None);
        assert_eq!(uid_problem(trim("1.2.3\0")), None, "trailing padding is trimmed first");
        assert!(uid_problem("").unwrap().contains("empty"));
        let nul_inside = "1.2\x003";
        assert!(uid_problem(nul_inside).unwrap().contains("\\0"), "{:?}", uid_problem(nul_inside));
        assert!(uid_problem("1.2.x").unwrap().contains("digits and dots"));
    }

    #[test]
    fn store_response_round_trips() {
        let request = Command {
            field: C_STORE_RQ,
            message_id: 7,
            affected_sop_class_uid: "1.2.840.10008.5.1.4.1.1.1".into(),
            affected_sop_instance_uid: "1.2.3".into(),
            has_data_set: true,
        };
        let bytes = store_response(&request, status::CANNOT_UNDERSTAND, Some("bad"));
        let parsed = parse_command(&bytes).unwrap();
        assert_eq!(parsed.field, C_STORE_RSP);
        assert_eq!(parsed.affected_sop_instance_uid, "1.2.3");
        assert!(!parsed.has_data_set);
        let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let obj = InMemDicomObject::read_dataset_with_ts(bytes.as_slice(), &ts).unwrap();
        assert_eq!(obj.element(tags::STATUS).unwrap().to_int::<u16>().unwrap(), 0xC000);
        let group_length = obj.element(tags::COMMAND_GROUP_LENGTH).unwrap().to_int::<u32>().unwrap();
        assert_eq!(group_length as usize, bytes.len() - 12);
    }
}
