//! The derived instance and the doubt map, built from every fixture with
//! synthetic "enhanced" pixels (the source's own stored values, inverted
//! within the stored range), written to disk, read back, checked tag by tag
//! and validated with dicom3tools' `dciodvfy` (IOD validator).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::TimeZone;
use common::fixture;
use cxr_led_dicom::derive::{self, DeriveError, Provenance, StoredPixels};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{open_file, DefaultDicomObject};
use dicom_pixeldata::PixelDecoder;

/// `dciodvfy` warnings we accept on derived instances, and why:
/// - "not present in standard DICOM IOD" / "Standard Extended SOP Class":
///   public attributes copied from the source that its vendor added (e.g.
///   collimator edges, film layout) and our private block; allowed by PS3.4
///   for a Standard Extended SOP Class.
/// - "Retired attribute" / "retired attributes": copied from the source
///   (Other Patient IDs, Postprocessing Function); patient data is never
///   rewritten.
/// - "Unrecognized defined term <99CXRLED>": our local coding scheme (PS3.16
///   8.2 allows "99" designators; dciodvfy only knows registered ones).
/// - "Retired Person Name form", "Unrecognized defined term", "Value is zero
///   for value 1 of attribute <Exposure|KVP|Sensitivity>", "should be absent
///   (not empty)": source values we copy as they are (acquisition facts).
const ACCEPTED_WARNINGS: &[&str] = &[
    "not present in standard DICOM IOD",
    "Standard Extended SOP Class",
    "Retired attribute",
    "contains retired attributes",
    "Retired Person Name form",
    "Unrecognized defined term",
    "Value is zero for value 1 of attribute <Exposure>",
    "Value is zero for value 1 of attribute <KVP>",
    "Value is zero for value 1 of attribute <Sensitivity>",
    "should be absent (not empty)",
];

/// Runs dciodvfy; fails unless it recognised the IOD (`CRImage`, `DXImage`,
/// `SCImage`, ...), on any Error line, and on a warning not in [`ACCEPTED_WARNINGS`].
fn validate(path: &Path, iod: &str) -> String {
    let out = Command::new("dciodvfy")
        .arg(path)
        .output()
        .expect("running dciodvfy (dicom3tools; .ci/env.sh cxr_led_test_services installs it)");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("dciodvfy {}:\n{report}", path.display());
    assert!(
        report.lines().any(|l| l.trim() == iod),
        "dciodvfy did not validate {} as {iod}:\n{report}",
        path.display()
    );
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("Error")).collect();
    assert!(
        errors.is_empty(),
        "dciodvfy errors for {}:\n{}\n--- full report:\n{report}",
        path.display(),
        errors.join("\n")
    );
    let unexpected: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("Warning") && !ACCEPTED_WARNINGS.iter().any(|w| l.contains(w)))
        .collect();
    assert!(unexpected.is_empty(), "unexpected dciodvfy warnings for {}:\n{}", path.display(), unexpected.join("\n"));
    report
}

fn provenance(source_uid: &str) -> Provenance {
    let sha = "3f".repeat(32);
    Provenance {
        derived_sop_instance_uid: derive::uid_from_parts(&[b"instance", source_uid.as_bytes(), sha.as_bytes()]),
        derived_series_instance_uid: derive::uid_from_parts(&[b"series", source_uid.as_bytes(), sha.as_bytes()]),
        model_name: "led-tiny".into(),
        model_version: "0.1.0".into(),
        bundle_sha256: sha,
        t0: 200,
        steps: 10,
        precision: "f32".into(),
        device: "cpu".into(),
        score: 0.125,
        score_components: vec![("degradation-consistency".into(), 0.1), ("sample-spread".into(), 0.025)],
        hold_threshold: 0.5,
        software_version: env!("CARGO_PKG_VERSION").into(),
        created: chrono::Utc.with_ymd_and_hms(2026, 11, 25, 12, 30, 45).unwrap(),
    }
}

fn str_of(obj: &DefaultDicomObject, tag: Tag) -> String {
    obj.element(tag).unwrap().to_str().unwrap().trim_end_matches(['\0', ' ']).to_string()
}

/// The source's stored values, inverted within Bits Stored (a stand-in for the enhancement).
fn inverted(source: &DefaultDicomObject) -> StoredPixels {
    let decoded = source.decode_pixel_data().expect("decode the source");
    let bits_stored = decoded.bits_stored();
    let max = (1u32 << bits_stored) - 1;
    if decoded.bits_allocated() == 8 {
        StoredPixels::U8(decoded.data().iter().map(|&v| (max - (u32::from(v) & max)) as u8).collect())
    } else {
        StoredPixels::U16(decoded.data_ow().iter().map(|&v| (max - (u32::from(v) & max)) as u16).collect())
    }
}

struct Derived {
    path: PathBuf,
    object: DefaultDicomObject,
    provenance: Provenance,
}

fn derive_from(source: &DefaultDicomObject, dir: &Path, name: &str) -> Derived {
    let pixels = inverted(source);
    let provenance = provenance(&str_of(source, tags::SOP_INSTANCE_UID));
    let derived = derive::derive_instance(source, pixels.clone(), &provenance).expect("derive");
    let path = dir.join(name);
    derive::write_durably(&derived, &path).expect("write");
    let object = open_file(&path).expect("read back");
    // The pixel data round-trips exactly.
    match pixels {
        StoredPixels::U8(v) => {
            let bytes = object.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
            assert_eq!(&bytes[..v.len()], &v[..]);
            assert!(bytes.len() - v.len() <= 1 && bytes.len() % 2 == 0);
        }
        StoredPixels::U16(v) => {
            let decoded = object.decode_pixel_data().unwrap();
            assert_eq!(decoded.data_ow(), v);
        }
    }
    Derived { path, object, provenance }
}

/// The tags every derived instance must carry, whatever its source.
fn check_common(source: &DefaultDicomObject, d: &Derived, iod: &str) {
    let obj = &d.object;
    assert_eq!(obj.meta().transfer_syntax().trim_end_matches('\0'), derive::EXPLICIT_VR_LITTLE_ENDIAN);
    assert_eq!(str_of(obj, tags::SOP_INSTANCE_UID), d.provenance.derived_sop_instance_uid);
    assert_eq!(
        obj.meta().media_storage_sop_instance_uid().trim_end_matches('\0'),
        d.provenance.derived_sop_instance_uid
    );
    assert_ne!(str_of(obj, tags::SOP_INSTANCE_UID), str_of(source, tags::SOP_INSTANCE_UID));
    assert_eq!(str_of(obj, tags::SERIES_INSTANCE_UID), d.provenance.derived_series_instance_uid);
    assert_ne!(str_of(obj, tags::SERIES_INSTANCE_UID), str_of(source, tags::SERIES_INSTANCE_UID));
    assert_eq!(str_of(obj, tags::STUDY_INSTANCE_UID), str_of(source, tags::STUDY_INSTANCE_UID));
    for tag in [tags::PATIENT_NAME, tags::PATIENT_ID, tags::ACCESSION_NUMBER, tags::STUDY_DATE] {
        if source.element_opt(tag).unwrap().is_some() {
            assert_eq!(str_of(obj, tag), str_of(source, tag), "{tag}");
        }
    }
    for tag in [tags::ROWS, tags::COLUMNS, tags::BITS_STORED, tags::PIXEL_REPRESENTATION] {
        assert_eq!(
            obj.element(tag).unwrap().to_int::<u16>().unwrap(),
            source.element(tag).unwrap().to_int::<u16>().unwrap(),
            "{tag}"
        );
    }
    assert_eq!(str_of(obj, tags::PHOTOMETRIC_INTERPRETATION), str_of(source, tags::PHOTOMETRIC_INTERPRETATION));
    let image_type = obj.element(tags::IMAGE_TYPE).unwrap().to_multi_str().unwrap().to_vec();
    assert_eq!(&image_type[..2], ["DERIVED", "SECONDARY"]);
    assert_eq!(str_of(obj, tags::BURNED_IN_ANNOTATION), "NO");
    assert!(str_of(obj, tags::SERIES_DESCRIPTION).contains("not for primary diagnosis"));
    let description = str_of(obj, tags::DERIVATION_DESCRIPTION);
    for needle in ["led-tiny", "0.1.0", &d.provenance.bundle_sha256, "t0 200", "steps 10", "score 0.125000"] {
        assert!(description.contains(needle), "{needle} missing in {description}");
    }
    let codes = obj.element(tags::DERIVATION_CODE_SEQUENCE).unwrap().items().unwrap();
    assert_eq!(str_of_item(&codes[0], tags::CODE_VALUE), "113087");
    let sources = obj.element(tags::SOURCE_IMAGE_SEQUENCE).unwrap().items().unwrap();
    assert_eq!(sources.len(), 1);
    assert_eq!(str_of_item(&sources[0], tags::REFERENCED_SOP_INSTANCE_UID), str_of(source, tags::SOP_INSTANCE_UID));
    assert_eq!(str_of_item(&sources[0], tags::REFERENCED_SOP_CLASS_UID), str_of(source, tags::SOP_CLASS_UID));
    let purpose = sources[0].element(tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE).unwrap().items().unwrap();
    assert_eq!(str_of_item(&purpose[0], tags::CODE_VALUE), "121322");
    let equipment = obj.element(tags::CONTRIBUTING_EQUIPMENT_SEQUENCE).unwrap().items().unwrap();
    let ours = equipment.last().unwrap();
    assert_eq!(str_of_item(ours, tags::MANUFACTURER), "cxr-led");
    assert_eq!(str_of_item(ours, tags::SOFTWARE_VERSIONS), env!("CARGO_PKG_VERSION"));
    let purpose = ours.element(tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE).unwrap().items().unwrap();
    assert_eq!(str_of_item(&purpose[0], tags::CODE_VALUE), "109102");
    // The private block: creator at (0071,0010), elements at (0071,10xx), and
    // no creator at (0071,0001) (what dicom-object's put_private_element does).
    assert_eq!(str_of(obj, Tag(0x0071, 0x0010)), derive::PRIVATE_CREATOR);
    assert!(obj.element_opt(Tag(0x0071, 0x0001)).unwrap().is_none());
    assert_eq!(obj.element(derive::PRIVATE_SCORE).unwrap().to_float64().unwrap(), 0.125);
    assert_eq!(obj.element(derive::PRIVATE_HOLD_THRESHOLD).unwrap().to_float64().unwrap(), 0.5);
    assert_eq!(str_of(obj, derive::PRIVATE_BUNDLE_SHA256), d.provenance.bundle_sha256);
    assert_eq!(obj.element(derive::PRIVATE_T0).unwrap().to_int::<u32>().unwrap(), 200);
    assert_eq!(obj.element(derive::PRIVATE_COMPONENT_VALUES).unwrap().to_multi_float64().unwrap(), vec![0.1, 0.025]);
    assert_eq!(
        obj.element(derive::PRIVATE_COMPONENT_NAMES).unwrap().to_multi_str().unwrap().to_vec(),
        vec!["degradation-consistency".to_string(), "sample-spread".to_string()]
    );
    // No private element of the source survives (only our group 0071).
    assert!(obj.iter().all(|e| e.header().tag.0 % 2 == 0 || e.header().tag.0 == 0x0071));
    assert!(obj.element_opt(tags::ICON_IMAGE_SEQUENCE).unwrap().is_none());
    validate(&d.path, iod);
}

fn str_of_item(item: &dicom_object::InMemDicomObject, tag: Tag) -> String {
    item.element(tag).unwrap().to_str().unwrap().trim_end_matches(['\0', ' ']).to_string()
}

#[test]
fn cr_uncompressed_stays_cr_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let source = open_file(fixture("RG1_UNCR.dcm")).unwrap();
    let d = derive_from(&source, dir.path(), "rg1.dcm");
    check_common(&source, &d, "CRImage");
    assert_eq!(str_of(&d.object, tags::SOP_CLASS_UID), derive::CR_IMAGE_STORAGE);
    assert_eq!((d.object.element(tags::ROWS).unwrap().to_int::<u16>().unwrap()), 1955);
    // The source does not say whether it was ever lossy, so neither do we.
    assert!(d.object.element_opt(tags::LOSSY_IMAGE_COMPRESSION).unwrap().is_none());
    // The source carries a Pixel Spacing of 0\0, which is invalid: dropped, not copied.
    assert!(d.object.element_opt(tags::PIXEL_SPACING).unwrap().is_none());
    assert_eq!(str_of(&d.object, tags::SERIES_NUMBER), "1001");
    // The source's timezone (-0400) governs the content time: 12:30:45 UTC is 08:30:45 there.
    assert_eq!(str_of(&d.object, tags::CONTENT_TIME), "083045.000000");
    // One instance dumped with dcmdump into the test output, for the record.
    let dump = Command::new("dcmdump").arg("-q").arg(&d.path).output().expect("dcmdump (dcmtk)");
    assert!(dump.status.success());
    let text = String::from_utf8_lossy(&dump.stdout);
    let without_patient: Vec<&str> = text.lines().filter(|l| !l.starts_with("(0010,")).collect();
    println!("dcmdump of the derived RG1 instance (patient group left out):\n{}", without_patient.join("\n"));
    assert!(text.contains("(0071,0010) LO [CXR-LED 1.0]"), "{text}");
}

#[test]
fn lossy_sources_make_lossy_derived_instances() {
    let dir = tempfile::tempdir().unwrap();
    // JPEG 2000 irreversible: the source already says 01; it stays 01.
    let j2ki = open_file(fixture("RG1_J2KI.dcm")).unwrap();
    let d = derive_from(&j2ki, dir.path(), "j2ki.dcm");
    check_common(&j2ki, &d, "CRImage");
    assert_eq!(str_of(&d.object, tags::LOSSY_IMAGE_COMPRESSION), "01");
    assert_eq!(str_of(&d.object, tags::SOP_CLASS_UID), derive::CR_IMAGE_STORAGE);
    // The source's own Source Image Sequence (its uncompressed predecessor) is replaced by ours.
    let sources = d.object.element(tags::SOURCE_IMAGE_SEQUENCE).unwrap().items().unwrap();
    assert_eq!(str_of_item(&sources[0], tags::REFERENCED_SOP_INSTANCE_UID), str_of(&j2ki, tags::SOP_INSTANCE_UID));

    // JPEG-LS near-lossless whose data set does not say it is lossy: the transfer syntax does.
    let mut jlsn = open_file(fixture("RG1_JLSN.dcm")).unwrap();
    jlsn.remove_element(tags::LOSSY_IMAGE_COMPRESSION);
    jlsn.remove_element(tags::LOSSY_IMAGE_COMPRESSION_METHOD);
    jlsn.remove_element(tags::LOSSY_IMAGE_COMPRESSION_RATIO);
    let d = derive_from(&jlsn, dir.path(), "jlsn.dcm");
    check_common(&jlsn, &d, "CRImage");
    assert_eq!(str_of(&d.object, tags::LOSSY_IMAGE_COMPRESSION), "01");
    assert_eq!(str_of(&d.object, tags::LOSSY_IMAGE_COMPRESSION_METHOD), "ISO_14495_1");
    let ratio: f64 = str_of(&d.object, tags::LOSSY_IMAGE_COMPRESSION_RATIO).parse().unwrap();
    assert!(ratio > 1.0, "{ratio}");

    // JPEG 2000 lossless only, saying "00": stays "00".
    let j2kr = open_file(fixture("RG1_J2KR.dcm")).unwrap();
    let d = derive_from(&j2kr, dir.path(), "j2kr.dcm");
    check_common(&j2kr, &d, "CRImage");
    assert_eq!(str_of(&d.object, tags::LOSSY_IMAGE_COMPRESSION), "00");

    // "01" is never reset, even when the source arrived uncompressed.
    let mut decompressed = open_file(fixture("RG1_UNCR.dcm")).unwrap();
    decompressed.put(DataElement::new(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, PrimitiveValue::from("01")));
    let d = derive_from(&decompressed, dir.path(), "decompressed.dcm");
    check_common(&decompressed, &d, "CRImage");
    assert_eq!(str_of(&d.object, tags::LOSSY_IMAGE_COMPRESSION), "01");
}

#[test]
fn dx_8_bit_monochrome1_stays_dx_for_presentation() {
    let dir = tempfile::tempdir().unwrap();
    let source = open_file(fixture("dx_image.dcm")).unwrap();
    let d = derive_from(&source, dir.path(), "dx.dcm");
    check_common(&source, &d, "DXImageForPresentation");
    let obj = &d.object;
    assert_eq!(str_of(obj, tags::SOP_CLASS_UID), derive::DX_FOR_PRESENTATION);
    assert_eq!(obj.element(tags::IMAGE_TYPE).unwrap().to_multi_str().unwrap().to_vec(), ["DERIVED", "SECONDARY", ""]);
    assert_eq!(obj.element(tags::BITS_ALLOCATED).unwrap().to_int::<u16>().unwrap(), 8);
    assert_eq!(str_of(obj, tags::PHOTOMETRIC_INTERPRETATION), "MONOCHROME1");
    assert_eq!(str_of(obj, tags::PRESENTATION_LUT_SHAPE), "INVERSE");
    assert_eq!(str_of(obj, tags::PRESENTATION_INTENT_TYPE), "FOR PRESENTATION");
    assert_eq!(str_of(obj, tags::WINDOW_CENTER), "128.0");
    assert_eq!(str_of(obj, tags::IMAGER_PIXEL_SPACING), str_of(&source, tags::IMAGER_PIXEL_SPACING));
    // The acquisition facts stay: the derived image was acquired at the same dose.
    assert_eq!(str_of(obj, tags::DEVIATION_INDEX), "-7.0");
    // The 169 x 211 = 35659 bytes of 8-bit pixel data are padded to an even length.
    assert_eq!(obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap().len(), 35660);
}

#[test]
fn dx_for_processing_becomes_dx_for_presentation_with_a_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut source = open_file(fixture("dx_image.dcm")).unwrap();
    source.put(DataElement::new(tags::SOP_CLASS_UID, VR::UI, PrimitiveValue::from(derive::DX_FOR_PROCESSING)));
    source.put(DataElement::new(tags::PRESENTATION_INTENT_TYPE, VR::CS, PrimitiveValue::from("FOR PROCESSING")));
    source.remove_element(tags::WINDOW_CENTER);
    source.remove_element(tags::WINDOW_WIDTH);
    source.remove_element(tags::PRESENTATION_LUT_SHAPE);
    let d = derive_from(&source, dir.path(), "dxproc.dcm");
    check_common(&source, &d, "DXImageForPresentation");
    let obj = &d.object;
    assert_eq!(str_of(obj, tags::SOP_CLASS_UID), derive::DX_FOR_PRESENTATION);
    assert_eq!(str_of(obj, tags::PRESENTATION_INTENT_TYPE), "FOR PRESENTATION");
    assert_eq!(str_of(obj, tags::PRESENTATION_LUT_SHAPE), "INVERSE");
    let smallest = obj.element(tags::SMALLEST_IMAGE_PIXEL_VALUE).unwrap().to_int::<i64>().unwrap();
    let largest = obj.element(tags::LARGEST_IMAGE_PIXEL_VALUE).unwrap().to_int::<i64>().unwrap();
    let center: f64 = str_of(obj, tags::WINDOW_CENTER).parse().unwrap();
    let width: f64 = str_of(obj, tags::WINDOW_WIDTH).parse().unwrap();
    assert_eq!(center, (smallest + largest) as f64 / 2.0);
    assert_eq!(width, (largest - smallest + 1) as f64);
}

#[test]
fn small_cr_and_its_doubt_map_validate() {
    let dir = tempfile::tempdir().unwrap();
    let source = open_file(fixture("CR1_6154.dcm")).unwrap();
    let d = derive_from(&source, dir.path(), "cr1.dcm");
    check_common(&source, &d, "CRImage");

    let rows = source.element(tags::ROWS).unwrap().to_int::<u32>().unwrap();
    let columns = source.element(tags::COLUMNS).unwrap().to_int::<u32>().unwrap();
    let doubt: Vec<f32> = (0..rows * columns).map(|i| i as f32 / (rows * columns - 1) as f32).collect();
    let uid = derive::uid_from_parts(&[b"doubt", d.provenance.derived_sop_instance_uid.as_bytes()]);
    let map = derive::doubt_map_instance(&source, &doubt, rows, columns, &d.provenance, &uid).unwrap();
    let path = dir.path().join("doubt.dcm");
    derive::write_durably(&map, &path).unwrap();
    let map = open_file(&path).unwrap();
    validate(&path, "SCImage");
    assert_eq!(str_of(&map, tags::SOP_CLASS_UID), derive::SECONDARY_CAPTURE);
    assert_eq!(str_of(&map, tags::SOP_INSTANCE_UID), uid);
    assert_eq!(str_of(&map, tags::SERIES_INSTANCE_UID), d.provenance.derived_series_instance_uid);
    assert_eq!(str_of(&map, tags::STUDY_INSTANCE_UID), str_of(&source, tags::STUDY_INSTANCE_UID));
    assert_eq!(str_of(&map, tags::MODALITY), str_of(&d.object, tags::MODALITY));
    assert_eq!(str_of(&map, tags::PHOTOMETRIC_INTERPRETATION), "MONOCHROME2");
    assert_eq!(map.element(tags::BITS_ALLOCATED).unwrap().to_int::<u16>().unwrap(), 8);
    let pixels = map.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    assert_eq!(pixels[0], 0);
    assert_eq!(pixels[(rows * columns - 1) as usize], 255);
    let refs = map.element(tags::SOURCE_IMAGE_SEQUENCE).unwrap().items().unwrap();
    let referenced: Vec<String> = refs.iter().map(|i| str_of_item(i, tags::REFERENCED_SOP_INSTANCE_UID)).collect();
    assert_eq!(
        referenced,
        vec![str_of(&source, tags::SOP_INSTANCE_UID), d.provenance.derived_sop_instance_uid.clone()]
    );
    assert_eq!(str_of(&map, Tag(0x0071, 0x0010)), derive::PRIVATE_CREATOR);

    // A doubt map of the big CR, at full size, validates too.
    let big = open_file(fixture("RG1_UNCR.dcm")).unwrap();
    let (rows, columns) = (1955u32, 1841u32);
    let doubt: Vec<f32> = (0..rows * columns).map(|i| ((i % columns) as f32 / columns as f32).powi(2)).collect();
    let provenance = provenance(&str_of(&big, tags::SOP_INSTANCE_UID));
    let map = derive::doubt_map_instance(&big, &doubt, rows, columns, &provenance, "2.25.12345").unwrap();
    let path = dir.path().join("doubt_big.dcm");
    derive::write_durably(&map, &path).unwrap();
    validate(&path, "SCImage");
}

#[test]
fn same_input_same_bytes() {
    // A re-run after a crash rebuilds the same instance, byte for byte: same UIDs, same file.
    let dir = tempfile::tempdir().unwrap();
    let source = open_file(fixture("CR1_6154.dcm")).unwrap();
    let a = derive_from(&source, dir.path(), "a.dcm");
    let b = derive_from(&source, dir.path(), "b.dcm");
    assert_eq!(std::fs::read(&a.path).unwrap(), std::fs::read(&b.path).unwrap());
    // write_durably leaves no temporary file behind.
    let names: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn bad_inputs_are_named() {
    let source = open_file(fixture("CR1_6154.dcm")).unwrap();
    let p = provenance("1.2.3");
    let err = derive::derive_instance(&source, StoredPixels::U16(vec![0; 10]), &p).unwrap_err();
    assert!(matches!(err, DeriveError::PixelCount { got: 10, expected: 256, .. }), "{err}");
    assert!(err.to_string().contains("16 x 16"), "{err}");

    let bits_stored = source.element(tags::BITS_STORED).unwrap().to_int::<u32>().unwrap();
    let err = derive::derive_instance(&source, StoredPixels::U16(vec![1 << bits_stored; 256]), &p).unwrap_err();
    assert!(matches!(err, DeriveError::PixelOutOfRange { index: 0, .. }), "{err}");
    assert!(err.to_string().contains("clamp"), "{err}");

    let mut no_rows = source.clone();
    no_rows.remove_element(tags::ROWS);
    let err = derive::derive_instance(&no_rows, StoredPixels::U16(vec![0; 256]), &p).unwrap_err();
    assert!(err.to_string().contains("Rows"), "{err}");

    let mut color = source.clone();
    color.put(DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, PrimitiveValue::from("RGB")));
    color.put(DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(3u16)));
    let err = derive::derive_instance(&color, StoredPixels::U16(vec![0; 256]), &p).unwrap_err();
    assert!(matches!(err, DeriveError::NotGrayscale { samples: 3, .. }), "{err}");

    let err = derive::derive_instance(&source, StoredPixels::U8(vec![0; 256]), &p).unwrap_err();
    assert!(matches!(err, DeriveError::PixelKind { kind: "U8", .. }), "{err}");

    let err = derive::doubt_map_instance(&source, &[f32::NAN; 4], 2, 2, &p, "2.25.1").unwrap_err();
    assert!(matches!(err, DeriveError::DoubtNotANumber { index: 0 }), "{err}");
}
