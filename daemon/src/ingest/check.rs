//! The received data set, checked before it is made durable.
//!
//! First its structure, without reading a single value: every length an
//! element or item declares must fit in what actually follows it in the
//! spooled file (for a deflated data set: in what decompresses, at most
//! `max-instance-size-mib`). A parser that believed a declared length would
//! allocate it first, so a 4 KiB message declaring 4 GiB would cost 4 GiB.
//! Only then its identity, read up to the pixel data (every value it reads
//! is now known to fit in the file), against the C-STORE request.

use std::cell::Cell;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::rc::Rc;

use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::{Codec, TransferSyntaxIndex};
use dicom_object::meta::FileMetaTable;
use dicom_object::OpenFileOptions;
use dicom_parser::dataset::lazy_read::LazyDataSetReader;
use dicom_parser::dataset::LazyDataToken;
use dicom_parser::stateful::decode::{StatefulDecode, StatefulDecoder};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::dimse::{self, status, Command};

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

/// Checks the spooled file (preamble, our file meta group, the received data
/// set) and returns its identity, or the failure status with its reason.
pub fn check(path: &Path, command: &Command, max_data_set_bytes: u64) -> Result<Identity, (u16, String)> {
    check_structure(path, max_data_set_bytes)?;
    identity(path, command)
}

/// Walks every element and item header of the data set, skipping values
/// unread, and refuses the first declared length that does not fit.
pub fn check_structure(path: &Path, max_data_set_bytes: u64) -> Result<(), (u16, String)> {
    let cannot = |why: String| (status::CANNOT_UNDERSTAND, why);
    let io = |e: std::io::Error| (status::OUT_OF_RESOURCES, format!("cannot read the spooled data set: {e}"));
    let mut file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    file.seek(SeekFrom::Start(128)).map_err(io)?;
    let mut file = BufReader::new(file);
    // The meta group is ours (written from the request), never the peer's.
    let meta = FileMetaTable::from_reader(&mut file).map_err(|e| cannot(format!("file meta group: {e}")))?;
    let data_set_start = file.stream_position().map_err(io)?;
    let ts_uid = meta.transfer_syntax();
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| cannot(format!("transfer syntax {ts_uid} is not supported")))?;
    let counter = Rc::new(Counter::default());
    let (source, limit, deflated): (Box<dyn Read>, u64, bool) = match ts.codec() {
        Codec::Dataset(Some(adapter)) => (adapter.adapt_reader(Box::new(file)), max_data_set_bytes, true),
        _ => (Box::new(file), file_len - data_set_start, false),
    };
    if limit > max_data_set_bytes {
        return Err((
            status::OUT_OF_RESOURCES,
            format!("data set of {limit} bytes exceeds max-instance-size-mib ({max_data_set_bytes} bytes)"),
        ));
    }
    let source = Counted { inner: source, counter: counter.clone(), limit };
    // A read refused at the limit fails the parse; it is answered as too large.
    let failed = |what: String| {
        if counter.exceeded.get() {
            (
                status::OUT_OF_RESOURCES,
                format!("the data set decompresses to more than max-instance-size-mib ({limit} bytes)"),
            )
        } else {
            cannot(what)
        }
    };
    let decoder =
        StatefulDecoder::new_with_ts(source, ts, 0).map_err(|e| cannot(format!("transfer syntax {ts_uid}: {e}")))?;
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
        let remaining = limit.saturating_sub(position);
        if deflated && u64::from(declared) > remaining {
            return Err((
                status::OUT_OF_RESOURCES,
                format!(
                    "{what} declares {declared} bytes at offset {position}: the data set would decompress to more \
                     than max-instance-size-mib ({limit} bytes)"
                ),
            ));
        }
        if u64::from(declared) > remaining {
            return Err(cannot(format!(
                "{what} declares {declared} bytes at offset {position}, but only {remaining} follow: \
                 the data set is truncated or its length is false"
            )));
        }
        token.skip().map_err(|e| failed(format!("cannot read {what}: {e}")))?;
        // A deflated stream may end before what the lengths promised.
        if counter.consumed.get() < position + u64::from(declared) {
            return Err(cannot(format!(
                "{what} declares {declared} bytes at offset {position}, but the data set ends first"
            )));
        }
    }
    Ok(())
}

/// Reads the data set up to the pixel data and compares it with the request.
fn identity(path: &Path, command: &Command) -> Result<Identity, (u16, String)> {
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
struct Counted {
    inner: Box<dyn Read>,
    counter: Rc<Counter>,
    limit: u64,
}

impl Read for Counted {
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
    use dicom_object::{open_file, FileMetaTableBuilder};
    use dicom_transfer_syntax_registry::entries;

    const CR: &str = "1.2.840.10008.5.1.4.1.1.1";
    const MIB: u64 = 1 << 20;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    /// A spooled file as the ingest writes it: preamble, meta group, `data_set`.
    fn spooled(dir: &Path, transfer_syntax: &str, data_set: &[u8]) -> std::path::PathBuf {
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(CR)
            .media_storage_sop_instance_uid("1.2.3")
            .transfer_syntax(transfer_syntax)
            .implementation_class_uid("1.2.3.4")
            .build()
            .unwrap();
        let mut bytes = vec![0u8; 128];
        bytes.extend_from_slice(b"DICM");
        meta.write(&mut bytes).unwrap();
        bytes.extend_from_slice(data_set);
        let path = dir.join("spooled.dcm");
        std::fs::write(&path, bytes).unwrap();
        path
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
            let obj = open_file(fixture(name)).unwrap();
            let identity = check(&fixture(name), &request(&obj), 512 * MIB).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert!(!identity.study_instance_uid.is_empty(), "{name}");
        }
    }

    #[test]
    fn a_length_beyond_the_file_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = spooled(dir.path(), entries::EXPLICIT_VR_LITTLE_ENDIAN.uid(), &lying_ob(0xFFFF_FFF0, 4096));
        let (code, why) = check_structure(&path, 512 * MIB).unwrap_err();
        assert_eq!(code, status::CANNOT_UNDERSTAND);
        assert!(
            why.contains("element (0009,1010) declares 4294967280 bytes") && why.contains("only 4096 follow"),
            "{why}"
        );

        // Implicit VR: the same lie in a 4-byte length.
        let mut implicit = vec![0x09, 0x00, 0x10, 0x10];
        implicit.extend_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        implicit.extend(std::iter::repeat_n(0u8, 4096));
        let path = spooled(dir.path(), entries::IMPLICIT_VR_LITTLE_ENDIAN.uid(), &implicit);
        assert_eq!(check_structure(&path, 512 * MIB).unwrap_err().0, status::CANNOT_UNDERSTAND);
    }

    #[test]
    fn a_truncated_image_and_a_lying_fragment_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // The uncompressed CR minus the last 100 bytes of its pixel data.
        let obj = open_file(fixture("CR1_6154.dcm")).unwrap();
        let mut data_set = Vec::new();
        obj.write_dataset_with_ts(&mut data_set, &entries::EXPLICIT_VR_LITTLE_ENDIAN.erased()).unwrap();
        data_set.truncate(data_set.len() - 100);
        let path = spooled(dir.path(), entries::EXPLICIT_VR_LITTLE_ENDIAN.uid(), &data_set);
        let (code, why) = check_structure(&path, 512 * MIB).unwrap_err();
        assert_eq!(code, status::CANNOT_UNDERSTAND);
        assert!(why.contains("element (7FE0,0010)"), "{why}");

        // Encapsulated pixel data whose second fragment claims 1 GiB.
        let mut encapsulated = vec![0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF];
        encapsulated.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]); // empty offset table
        encapsulated.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        encapsulated.extend_from_slice(&(1u32 << 30).to_le_bytes());
        encapsulated.extend(std::iter::repeat_n(0u8, 64));
        let path = spooled(dir.path(), entries::JPEG_BASELINE.uid(), &encapsulated);
        let (code, why) = check_structure(&path, 512 * MIB).unwrap_err();
        assert_eq!(code, status::CANNOT_UNDERSTAND);
        assert!(why.contains("a pixel data fragment declares 1073741824 bytes"), "{why}");
    }

    #[test]
    fn a_deflated_data_set_is_held_to_the_maximum_after_decompression() {
        let dir = tempfile::tempdir().unwrap();
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
        let path = spooled(dir.path(), entries::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN.uid(), &deflated);
        check_structure(&path, 8 * MIB).unwrap();
        let (code, why) = check_structure(&path, MIB).unwrap_err();
        assert_eq!(code, status::OUT_OF_RESOURCES, "{why}");
        assert!(why.contains("decompress to more than max-instance-size-mib"), "{why}");

        // Cut short, the deflated stream ends before its lengths.
        let path =
            spooled(dir.path(), entries::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN.uid(), &deflated[..deflated.len() / 2]);
        assert!(check_structure(&path, 8 * MIB).is_err());
    }

    #[test]
    fn an_uncompressed_data_set_over_the_maximum_is_too_large() {
        let dir = tempfile::tempdir().unwrap();
        let path = spooled(dir.path(), entries::EXPLICIT_VR_LITTLE_ENDIAN.uid(), &lying_ob(4096, 4096));
        assert!(check_structure(&path, MIB).is_ok());
        assert_eq!(check_structure(&path, 1024).unwrap_err().0, status::OUT_OF_RESOURCES);
    }
}
