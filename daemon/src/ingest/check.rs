//! The received data set, checked before it is made durable.
//!
//! First its structure, without keeping a single value: every element and
//! item header is walked as the bytes arrive (`receive` feeds them in while
//! it writes them to the temporary file), each value skipped, and every
//! declared length must be matched by bytes that actually follow (for a
//! deflated data set: by what decompresses, at most `max-instance-size-mib`).
//! A parser that believed a declared length would allocate it first, so a
//! 4 KiB message declaring 4 GiB would cost 4 GiB. Only then its identity,
//! read from the written file up to the pixel data (every value it reads is
//! now known to be there), against the C-STORE request.

use std::cell::Cell;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::{Codec, TransferSyntaxIndex};
use dicom_object::OpenFileOptions;
use dicom_parser::dataset::lazy_read::LazyDataSetReader;
use dicom_parser::dataset::LazyDataToken;
use dicom_parser::stateful::decode::{StatefulDecode, StatefulDecoder};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use cxr_led_dicom::dimse::{self, status, Command};

/// The fields of a received data set the ingest records.
#[derive(Debug)]
pub struct Identity {
    /// SOP Class UID (0008,0016), equal to the request's.
    pub sop_class_uid: String,
    /// SOP Instance UID (0008,0018), equal to the request's.
    pub sop_instance_uid: String,
    /// Study Instance UID (0020,000D), present.
    pub study_instance_uid: String,
    /// Series Instance UID (0020,000E), when present.
    pub series_instance_uid: Option<String>,
}

/// Walks every element and item header of the data set read from `source`
/// (the bytes after the file meta group, in `transfer_syntax`), skipping
/// values unkept, to the end of `source`, and refuses the first declared
/// length that the bytes after it do not cover. `source` ends where the data
/// set does; `max_data_set_bytes` bounds what it may hold (for a deflated
/// data set, what it may decompress to).
pub fn check_structure(source: impl Read, transfer_syntax: &str, max_data_set_bytes: u64) -> Result<(), (u16, String)> {
    let cannot = |why: String| (status::CANNOT_UNDERSTAND, why);
    let ts = TransferSyntaxRegistry
        .get(transfer_syntax)
        .ok_or_else(|| cannot(format!("transfer syntax {transfer_syntax} is not supported")))?;
    let counter = Rc::new(Counter::default());
    let limit = max_data_set_bytes;
    let (source, deflated): (Box<dyn Read + '_>, bool) = match ts.codec() {
        Codec::Dataset(Some(adapter)) => (adapter.adapt_reader(Box::new(source)), true),
        _ => (Box::new(source), false),
    };
    let source = Counted { inner: source, counter: counter.clone(), limit };
    // A read refused at the limit fails the parse; it is answered as too large.
    let failed = |what: String| {
        if counter.exceeded.get() {
            let grows = if deflated { "decompresses to" } else { "holds" };
            (status::OUT_OF_RESOURCES, format!("the data set {grows} more than max-instance-size-mib ({limit} bytes)"))
        } else {
            cannot(what)
        }
    };
    let decoder = StatefulDecoder::new_with_ts(source, ts, 0)
        .map_err(|e| cannot(format!("transfer syntax {transfer_syntax}: {e}")))?;
    let mut tokens = LazyDataSetReader::new(decoder);
    while let Some(token) = tokens.advance() {
        let token = token.map_err(|e| failed(format!("cannot parse data set: {e}")))?;
        let (declared, position, what) = match &token {
            LazyDataToken::LazyValue { header, decoder } => {
                (header.len.get(), decoder.position(), format!("element {}", header.tag))
            }
            LazyDataToken::LazyItemValue { len, decoder } => {
                (Some(*len), decoder.position(), "a pixel data fragment".to_string())
            }
            _ => continue,
        };
        let Some(declared) = declared else {
            return Err(cannot(format!("{what} has an undefined length where a value is expected")));
        };
        if deflated && u64::from(declared) > limit.saturating_sub(position) {
            return Err((
                status::OUT_OF_RESOURCES,
                format!(
                    "{what} declares {declared} bytes at offset {position}: the data set would decompress to more \
                     than max-instance-size-mib ({limit} bytes)"
                ),
            ));
        }
        // Skipping reads the value in small pieces and keeps none of it, so
        // a false length costs the bytes that really follow, never more.
        token.skip().map_err(|e| failed(format!("cannot read {what}: {e}")))?;
        let followed = counter.consumed.get().saturating_sub(position);
        if followed < u64::from(declared) {
            return Err(cannot(format!(
                "{what} declares {declared} bytes at offset {position}, but only {followed} follow: \
                 the data set is truncated or its length is false"
            )));
        }
    }
    Ok(())
}

/// Reads the written file's data set up to the pixel data and compares it
/// with the request; call it only on a data set whose structure was checked.
pub fn identity(path: &Path, command: &Command) -> Result<Identity, (u16, String)> {
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| (status::CANNOT_UNDERSTAND, format!("cannot parse data set: {e}")))?;
    let text = |tag| obj.element(tag).ok().and_then(|e| e.to_str().ok()).map(|s| dimse::trim(&s).to_string());
    let sop_class_uid = text(tags::SOP_CLASS_UID).unwrap_or_default();
    let sop_instance_uid = text(tags::SOP_INSTANCE_UID).unwrap_or_default();
    if sop_class_uid != command.affected_sop_class_uid {
        return Err((
            status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            format!("SOP Class UID {sop_class_uid:?} differs from the request's"),
        ));
    }
    if sop_instance_uid != command.affected_sop_instance_uid {
        return Err((
            status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "SOP Instance UID differs from the request's".to_string(),
        ));
    }
    let study_instance_uid = text(tags::STUDY_INSTANCE_UID).filter(|s| !s.is_empty()).ok_or_else(|| {
        (status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "Study Instance UID (0020,000D) missing".to_string())
    })?;
    let series_instance_uid = text(tags::SERIES_INSTANCE_UID);
    // These go into the database and the derived series: a NUL or other
    // stray byte (the database refuses NUL in text) is the sender's error,
    // answered as such, not "out of resources", which invites a retry.
    for (name, value) in
        [("Study", Some(&study_instance_uid)), ("Series", series_instance_uid.as_ref().filter(|s| !s.is_empty()))]
    {
        if let Some(problem) = value.and_then(|v| dimse::uid_problem(v)) {
            return Err((status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS, format!("{name} Instance UID {problem}")));
        }
    }
    Ok(Identity { sop_class_uid, sop_instance_uid, study_instance_uid, series_instance_uid })
}

/// What [`Counted`] has read, shared with the walk (the decoder owns the reader).
#[derive(Default)]
struct Counter {
    consumed: Cell<u64>,
    exceeded: Cell<bool>,
}

/// Counts the bytes read, and refuses to read past `limit` (a deflated data
/// set that decompresses to more than the maximum).
struct Counted<'a> {
    inner: Box<dyn Read + 'a>,
    counter: Rc<Counter>,
    limit: u64,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.limit - self.counter.consumed.get();
        // One byte more than allowed tells "over the limit" from "at the end".
        let want = buf.len().min(usize::try_from(left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > left {
            self.counter.exceeded.set(true);
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "over max-instance-size-mib"));
        }
        self.counter.consumed.set(self.counter.consumed.get() + n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_object::meta::FileMetaTable;
    use dicom_object::open_file;
    use dicom_transfer_syntax_registry::entries;

    const MIB: u64 = 1 << 20;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    /// A Part 10 file's transfer syntax and data set bytes, as an association delivers them.
    fn data_set_of(path: &Path) -> (String, Vec<u8>) {
        let bytes = std::fs::read(path).unwrap();
        let mut rest = &bytes[128..];
        let meta = FileMetaTable::from_reader(&mut rest).unwrap();
        (meta.transfer_syntax().to_string(), rest.to_vec())
    }

    fn request(obj: &dicom_object::DefaultDicomObject) -> Command {
        let uid = |tag| dimse::trim(&obj.element(tag).unwrap().to_str().unwrap()).to_string();
        Command {
            field: dimse::C_STORE_RQ,
            message_id: 1,
            affected_sop_class_uid: uid(tags::SOP_CLASS_UID),
            affected_sop_instance_uid: uid(tags::SOP_INSTANCE_UID),
            has_data_set: true,
        }
    }

    /// (0009,1010) OB declaring `length`, then `present` bytes.
    fn lying_ob(length: u32, present: usize) -> Vec<u8> {
        let mut bytes = vec![0x09, 0x00, 0x10, 0x10, b'O', b'B', 0, 0];
        bytes.extend_from_slice(&length.to_le_bytes());
        bytes.extend(std::iter::repeat_n(0x55, present));
        bytes
    }

    #[test]
    fn real_images_pass_in_every_encoding() {
        for name in ["CR1_6154.dcm", "dx_image.dcm", "RG1_J2KI.dcm", "RG1_JLSN.dcm"] {
            let (ts, data_set) = data_set_of(&fixture(name));
            check_structure(&data_set[..], &ts, 512 * MIB).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let obj = open_file(fixture(name)).unwrap();
            let identity = identity(&fixture(name), &request(&obj)).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert!(!identity.study_instance_uid.is_empty(), "{name}");
        }
    }

    #[test]
    fn a_length_beyond_the_data_set_is_refused_without_keeping_it() {
        let explicit = entries::EXPLICIT_VR_LITTLE_ENDIAN.uid();
        let (code, why) = check_structure(&lying_ob(0xFFFF_FFF0, 4096)[..], explicit, 512 * MIB).unwrap_err();
        assert_eq!(code, status::CANNOT_UNDERSTAND);
        assert!(
            why.contains("element (0009,1010) declares 4294967280 bytes") && why.contains("only 4096 follow"),
            "{why}"
        );

        // Implicit VR: the same lie in a 4-byte length.
        let mut implicit = vec![0x09, 0x00, 0x10, 0x10];
        implicit.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        implicit.extend(std::iter::repeat_n(0u8, 4096));
        let refused = check_structure(&implicit[..], entries::IMPLICIT_VR_LITTLE_ENDIAN.uid(), 512 * MIB);
        assert_eq!(refused.unwrap_err().0, status::CANNOT_UNDERSTAND);
    }

    #[test]
    fn a_truncated_image_and_a_lying_fragment_are_refused() {
        // The uncompressed CR minus the last 100 bytes of its pixel data.
        let obj = open_file(fixture("CR1_6154.dcm")).unwrap();
        let mut data_set = Vec::new();
        obj.write_dataset_with_ts(&mut data_set, &entries::EXPLICIT_VR_LITTLE_ENDIAN.erased()).unwrap();
        data_set.truncate(data_set.len() - 100);
        let (code, why) =
            check_structure(&data_set[..], entries::EXPLICIT_VR_LITTLE_ENDIAN.uid(), 512 * MIB).unwrap_err();
        assert_eq!(code, status::CANNOT_UNDERSTAND);
        assert!(why.contains("element (7FE0,0010)"), "{why}");

        // Encapsulated pixel data whose second fragment claims 1 GiB.
        let mut encapsulated = vec![0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF];
        encapsulated.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]); // empty offset table
        encapsulated.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        encapsulated.extend_from_slice(&(1u32 << 30).to_le_bytes());
        encapsulated.extend(std::iter::repeat_n(0u8, 64));
        let (code, why) = check_structure(&encapsulated[..], entries::JPEG_BASELINE.uid(), 512 * MIB).unwrap_err();
        assert_eq!(code, status::CANNOT_UNDERSTAND);
        assert!(why.contains("a pixel data fragment declares 1073741824 bytes"), "{why}");
    }

    #[test]
    fn a_deflated_data_set_is_held_to_the_maximum_after_decompression() {
        // 4 MiB of zeros deflate to a few KiB: a small message, a large data set.
        let mut obj = open_file(fixture("CR1_6154.dcm")).unwrap().into_inner();
        obj.put(dicom_core::DataElement::new(
            dicom_core::Tag(0x0009, 0x1010),
            dicom_core::VR::OB,
            dicom_core::PrimitiveValue::from(vec![0u8; 4 * MIB as usize]),
        ));
        let mut deflated = Vec::new();
        obj.write_dataset_with_ts(&mut deflated, &entries::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN.erased()).unwrap();
        assert!(deflated.len() < 64 * 1024, "{} bytes", deflated.len());
        let ts = entries::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN.uid();
        check_structure(&deflated[..], ts, 8 * MIB).unwrap();
        let (code, why) = check_structure(&deflated[..], ts, MIB).unwrap_err();
        assert_eq!(code, status::OUT_OF_RESOURCES, "{why}");
        assert!(why.contains("decompress to more than max-instance-size-mib"), "{why}");

        // Cut short, the deflated stream ends before its lengths.
        assert!(check_structure(&deflated[..deflated.len() / 2], ts, 8 * MIB).is_err());
    }

    #[test]
    fn an_uncompressed_data_set_over_the_maximum_is_too_large() {
        let explicit = entries::EXPLICIT_VR_LITTLE_ENDIAN.uid();
        assert!(check_structure(&lying_ob(4096, 4096)[..], explicit, MIB).is_ok());
        assert_eq!(check_structure(&lying_ob(4096, 4096)[..], explicit, 1024).unwrap_err().0, status::OUT_OF_RESOURCES);
    }
}
