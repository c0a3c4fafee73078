//! A structured-mutation test of the ingest path (proptest, on stable Rust):
//! well-formed data sets (the small CR, in Explicit and in Implicit VR Little
//! Endian, with sequences nested up to 48 deep) are cut short, get length
//! fields set to extremes (0, odd, one past, past the end, undefined,
//! 0xFFFFFFF0, ...), unknown VRs, flipped bytes, a dropped or a repeated
//! element, and are sent as C-STOREs over a real association to the daemon
//! on a real database. Every case must end in a C-STORE status on the same
//! association, and leave a clean spool: a Success has its row and its file,
//! anything else neither, and no temporary file stays behind.
//!
//! `CXR_LED_MUTATION_CASES` sets the number of cases (default 256, a few
//! seconds); the seed is fixed, so a CI failure reproduces.

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use cxr_led_dicom::dimse::status;
use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestCaseError, TestRng, TestRunner};

const IMPLICIT_LE: &str = "1.2.840.10008.1.2";

/// The sequence tags the nested data sets use (an Implicit VR walk needs to
/// know which elements are sequences).
const SEQUENCES: [Tag; 2] = [tags::CONTENT_SEQUENCE, tags::REFERENCED_IMAGE_SEQUENCE];

/// One element header in an encoded data set: where its length field is.
#[derive(Debug, Clone, Copy)]
struct Header {
    /// Offset of the tag.
    at: usize,
    /// Offset of the length field and its size (2 or 4 bytes).
    length_at: usize,
    length_bytes: usize,
    /// Offset of the value and its declared length.
    value_at: usize,
    length: u32,
}

impl Header {
    /// Where the element ends in a data set of `total` bytes: after its value,
    /// or after the header alone when its length is undefined.
    fn end(&self, total: usize) -> usize {
        if self.length == u32::MAX {
            self.value_at
        } else {
            (self.value_at + self.length as usize).min(total)
        }
    }
}

/// Every element, item and delimiter header of a well-formed data set, in
/// file order, descending into sequences and items.
fn headers(bytes: &[u8], explicit: bool) -> Vec<Header> {
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let mut found = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let tag = Tag(u16_at(at), u16_at(at + 2));
        let (length_at, length_bytes, value_at, container) = if tag.0 == 0xFFFE {
            // Item and delimiters: no VR in any transfer syntax.
            (at + 4, 4, at + 8, true)
        } else if explicit {
            let vr = &bytes[at + 4..at + 6];
            let long = [b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"]
                .iter()
                .any(|v| v.as_slice() == vr);
            if long {
                (at + 8, 4, at + 12, vr == b"SQ")
            } else {
                (at + 6, 2, at + 8, false)
            }
        } else {
            (at + 4, 4, at + 8, SEQUENCES.contains(&tag))
        };
        if value_at > bytes.len() {
            break;
        }
        let length = if length_bytes == 2 { u32::from(u16_at(length_at)) } else { u32_at(length_at) };
        found.push(Header { at, length_at, length_bytes, value_at, length });
        // Containers (and undefined lengths) are walked into; values skipped.
        at = if container || length == u32::MAX { value_at } else { value_at + length as usize };
    }
    found
}

/// What a length field is set to.
#[derive(Debug, Clone, Copy)]
enum Extreme {
    Zero,
    One,
    Odd,
    OnePast,
    OneShort,
    ToTheEnd,
    PastTheEnd,
    Undefined,
    Lie,
    Max,
}

/// An edit that keeps every offset where it was.
#[derive(Debug, Clone)]
enum Edit {
    /// The length of header number `header` (a fraction of the count).
    Length { header: f64, to: Extreme },
    /// The VR of a header (Explicit VR only; a no-op on items and in Implicit VR).
    Vr { header: f64, vr: [u8; 2] },
    /// One byte anywhere.
    Byte { at: f64, value: u8 },
}

/// An edit that moves what follows it, applied last.
#[derive(Debug, Clone)]
enum Cut {
    /// The data set ends early.
    Truncate { at: f64 },
    /// An element (or item header) is removed.
    Drop { header: f64 },
    /// An element's header and value appear twice in a row.
    Repeat { header: f64 },
}

#[derive(Debug, Clone)]
struct Case {
    implicit: bool,
    /// Sequence depth added to the CR (0: none).
    nesting: usize,
    edits: Vec<Edit>,
    cut: Option<Cut>,
}

fn extreme() -> impl Strategy<Value = Extreme> {
    prop_oneof![
        Just(Extreme::Zero),
        Just(Extreme::One),
        Just(Extreme::Odd),
        Just(Extreme::OnePast),
        Just(Extreme::OneShort),
        Just(Extreme::ToTheEnd),
        Just(Extreme::PastTheEnd),
        Just(Extreme::Undefined),
        Just(Extreme::Lie),
        Just(Extreme::Max),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (0.0..1.0f64, extreme()).prop_map(|(header, to)| Edit::Length { header, to }),
        1 => (0.0..1.0f64, any::<[u8; 2]>()).prop_map(|(header, vr)| Edit::Vr { header, vr }),
        1 => (0.0..1.0f64, any::<u8>()).prop_map(|(at, value)| Edit::Byte { at, value }),
    ]
}

fn cut() -> impl Strategy<Value = Cut> {
    prop_oneof![
        (0.0..1.0f64).prop_map(|at| Cut::Truncate { at }),
        (0.0..1.0f64).prop_map(|header| Cut::Drop { header }),
        (0.0..1.0f64).prop_map(|header| Cut::Repeat { header }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        prop_oneof![Just(0usize), 1usize..4, 4usize..48],
        proptest::collection::vec(edit(), 0..4),
        proptest::option::weighted(0.6, cut()),
    )
        .prop_map(|(implicit, nesting, edits, cut)| Case { implicit, nesting, edits, cut })
}

/// A sequence `depth` items deep, each item a code and the next sequence.
fn nested(depth: usize, tag: Tag) -> DataElement<InMemDicomObject> {
    let mut item = InMemDicomObject::new_empty();
    item.put(DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(format!("L{depth}"))));
    if depth > 1 {
        let next = if tag == SEQUENCES[0] { SEQUENCES[1] } else { SEQUENCES[0] };
        item.put(nested(depth - 1, next));
    }
    DataElement::new(tag, VR::SQ, DataSetSequence::from(vec![item]))
}

/// The well-formed data set of a case, with its own SOP Instance UID.
fn base(case: &Case, uid: &str) -> Vec<u8> {
    let mut object = dicom_object::open_file(fixture("CR1_6154.dcm")).unwrap();
    object.put(DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(uid)));
    if case.nesting > 0 {
        object.put(nested(case.nesting, SEQUENCES[0]));
    }
    let ts = if case.implicit {
        dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN.erased()
    } else {
        dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased()
    };
    let mut bytes = Vec::new();
    object.write_dataset_with_ts(&mut bytes, &ts).unwrap();
    bytes
}

fn pick(count: usize, fraction: f64) -> usize {
    ((fraction * count as f64) as usize).min(count.saturating_sub(1))
}

/// The mutated data set of a case.
fn mutate(case: &Case, mut bytes: Vec<u8>) -> Vec<u8> {
    let found = headers(&bytes, !case.implicit);
    assert!(found.len() > 10, "the walk found the elements");
    let total = bytes.len();
    for edit in &case.edits {
        match *edit {
            Edit::Length { header, to } => {
                let h = found[pick(found.len(), header)];
                let remaining = (total - h.value_at) as u64;
                let value: u64 = match to {
                    Extreme::Zero => 0,
                    Extreme::One => 1,
                    Extreme::Odd => u64::from(h.length | 1),
                    Extreme::OnePast => u64::from(h.length) + 1,
                    Extreme::OneShort => u64::from(h.length).saturating_sub(1),
                    Extreme::ToTheEnd => remaining,
                    Extreme::PastTheEnd => remaining + 2,
                    Extreme::Undefined => u64::from(u32::MAX),
                    Extreme::Lie => 0xFFFF_FFF0,
                    Extreme::Max => u64::from(u32::MAX - 1),
                };
                if h.length_bytes == 2 {
                    let value = value.min(0xFFFF) as u16;
                    bytes[h.length_at..h.length_at + 2].copy_from_slice(&value.to_le_bytes());
                } else {
                    let value = value.min(u64::from(u32::MAX)) as u32;
                    bytes[h.length_at..h.length_at + 4].copy_from_slice(&value.to_le_bytes());
                }
            }
            Edit::Vr { header, vr } => {
                let h = found[pick(found.len(), header)];
                let is_item = bytes[h.at..h.at + 2] == [0xFE, 0xFF];
                if !case.implicit && !is_item {
                    bytes[h.at + 4..h.at + 6].copy_from_slice(&vr);
                }
            }
            Edit::Byte { at, value } => {
                let at = pick(total, at);
                bytes[at] = value;
            }
        }
    }
    match case.cut {
        None => {}
        // At least one byte: a C-STORE without data PDVs is answered by no one.
        Some(Cut::Truncate { at }) => bytes.truncate(pick(total, at).max(1)),
        Some(Cut::Drop { header }) => {
            let h = found[pick(found.len(), header)];
            bytes.drain(h.at..h.end(total));
        }
        Some(Cut::Repeat { header }) => {
            let h = found[pick(found.len(), header)];
            let end = h.end(total);
            let copy = bytes[h.at..end].to_vec();
            bytes.splice(end..end, copy);
        }
    }
    bytes
}

/// The statuses a mutated data set may end in. Not A700 (out of resources):
/// the disk and the database are well here, and A700 tells the sender to try
/// the same bad data set again later (as a NUL in the Study Instance UID once
/// did, through the database's refusal).
fn is_final_status(code: u16) -> bool {
    matches!(code, status::SUCCESS | status::DATA_SET_DOES_NOT_MATCH_SOP_CLASS | status::CANNOT_UNDERSTAND)
}

/// Spool files and instance rows agree, and nothing is left in `tmp/`.
async fn clean_spool(pool: &sqlx::PgPool, spool: &Path, uid: &str, stored: bool) -> Result<(), String> {
    let rows = count(pool, "SELECT count(*) FROM instance").await;
    let files = spool_files(spool).len() as i64;
    if rows != files {
        return Err(format!("{rows} instance rows but {files} spooled files"));
    }
    if temp_files(spool) != 0 {
        return Err(format!("{} temporary files left in the spool", temp_files(spool)));
    }
    let own = count(pool, &format!("SELECT count(*) FROM instance WHERE sop_instance_uid = '{uid}'")).await;
    if own != i64::from(stored) {
        return Err(format!("answered {} but {own} rows for its UID", if stored { "Success" } else { "a failure" }));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutated_data_set_ends_in_a_status_and_a_clean_spool() {
    let db = TestDb::create().await;
    let spool = tempfile::tempdir().unwrap();
    let mut config = test_config(&db, spool.path());
    config.ingest.max_instance_size_mib = 4;
    let daemon = start(config).await;
    let addr: SocketAddr = daemon.local_addr;
    let pool = db.pool().await;
    let cases: u32 = std::env::var("CXR_LED_MUTATION_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let spool_path = spool.path().to_path_buf();
    let runtime = tokio::runtime::Handle::current();

    let tally = tokio::task::spawn_blocking(move || {
        // One association per transfer syntax, kept across the cases and
        // opened again after a case that broke it (so that proptest's
        // shrinking sees each case on its own). RefCell: the case is an Fn.
        let explicit = RefCell::new(None::<RawScu>);
        let implicit = RefCell::new(None::<RawScu>);
        let next = AtomicUsize::new(0);
        let tally = std::sync::Mutex::new(BTreeMap::<String, usize>::new());
        let config = ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() };
        let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
        let result = runner.run(&case(), |case| {
            let uid = format!("2.25.9090{}", next.fetch_add(1, Ordering::Relaxed));
            let bytes = mutate(&case, base(&case, &uid));
            let (slot, syntax) = if case.implicit { (&implicit, IMPLICIT_LE) } else { (&explicit, EXPLICIT_LE) };
            let mut slot = slot.borrow_mut();
            let scu = slot.get_or_insert_with(|| RawScu::connect(addr, CR, syntax));
            let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scu.store(CR, &uid, &bytes, None)));
            let Ok(Some(code)) = sent else {
                *slot = None;
                return Err(TestCaseError::fail("no C-STORE status: the association broke"));
            };
            drop(slot);
            if !is_final_status(code) {
                return Err(TestCaseError::fail(format!("status {code:04X} is not what a bad data set gets")));
            }
            runtime
                .block_on(clean_spool(&pool, &spool_path, &uid, code == status::SUCCESS))
                .map_err(TestCaseError::fail)?;
            *tally.lock().unwrap().entry(format!("{code:04X}")).or_default() += 1;
            Ok(())
        });
        if let Err(failure) = result {
            panic!("{failure}");
        }
        // The daemon is still well: a good instance on each association.
        let good_explicit = base(&Case { implicit: false, nesting: 3, edits: vec![], cut: None }, "2.25.808081");
        let mut explicit = explicit.into_inner().unwrap_or_else(|| RawScu::connect(addr, CR, EXPLICIT_LE));
        let mut implicit = implicit.into_inner().unwrap_or_else(|| RawScu::connect(addr, CR, IMPLICIT_LE));
        assert_eq!(explicit.store(CR, "2.25.808081", &good_explicit, None), Some(status::SUCCESS));
        let good_implicit = base(&Case { implicit: true, nesting: 3, edits: vec![], cut: None }, "2.25.808082");
        assert_eq!(implicit.store(CR, "2.25.808082", &good_implicit, None), Some(status::SUCCESS));
        explicit.association.release().unwrap();
        implicit.association.release().unwrap();
        tally.into_inner().unwrap()
    })
    .await
    .unwrap();

    eprintln!("{cases} mutated data sets, answered: {tally:?}");
    assert_eq!(tally.values().sum::<usize>(), cases as usize);
    assert!(tally.len() >= 2, "the mutations reached more than one outcome: {tally:?}");
    daemon.stop().await;
}
