//! The sample studies: copies of the repository's fixtures with fresh UIDs,
//! a chosen Deviation Index, and sentinel patient data that the log scan
//! looks for.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cxr_led_dicom::derive::uid_from_parts;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::open_file;

/// Patient data written into every sample: none of it may reach a log line.
pub const PATIENT_NAME: &str = "Sentinel^Zephyrine^Quill";
/// The sample patient ID.
pub const PATIENT_ID: &str = "PHI-7741-ZQ";
/// The sample birth date.
pub const PATIENT_BIRTH_DATE: &str = "19230517";

/// The repository's DICOM fixtures (kept in the daemon's tests).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/tests/fixtures").join(name)
}

/// One sample study of one instance.
#[derive(Debug, Clone)]
pub struct Sample {
    /// What it is, for messages.
    pub label: String,
    /// The file to send.
    pub path: PathBuf,
    /// Its Study Instance UID.
    pub study_uid: String,
    /// Its SOP Instance UID.
    pub sop_uid: String,
    /// The Deviation Index written into it.
    pub deviation_index: f64,
    /// Rows and columns of the fixture.
    pub rows: u32,
    /// Columns.
    pub columns: u32,
}

/// Copies `fixture_name` into `dir` as a study of its own with Deviation
/// Index `deviation_index`, new UIDs (unique per `run` and `label`) and the
/// sentinel patient.
pub fn sample(dir: &Path, fixture_name: &str, label: &str, run: &str, deviation_index: f64) -> anyhow::Result<Sample> {
    let source = fixture(fixture_name);
    let mut object = open_file(&source).with_context(|| format!("opening {}", source.display()))?;
    let uid = |kind: &str| uid_from_parts(&[b"cxr-led e2e", run.as_bytes(), label.as_bytes(), kind.as_bytes()]);
    let (study_uid, series_uid, sop_uid) = (uid("study"), uid("series"), uid("instance"));
    object.put(DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, PrimitiveValue::from(study_uid.as_str())));
    object.put(DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, PrimitiveValue::from(series_uid.as_str())));
    object.put(DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(sop_uid.as_str())));
    object.put(DataElement::new(tags::DEVIATION_INDEX, VR::DS, PrimitiveValue::from(format!("{deviation_index:.1}"))));
    object.put(DataElement::new(tags::PATIENT_NAME, VR::PN, PrimitiveValue::from(PATIENT_NAME)));
    object.put(DataElement::new(tags::PATIENT_ID, VR::LO, PrimitiveValue::from(PATIENT_ID)));
    object.put(DataElement::new(tags::PATIENT_BIRTH_DATE, VR::DA, PrimitiveValue::from(PATIENT_BIRTH_DATE)));
    object.update_meta(|meta| meta.media_storage_sop_instance_uid = sop_uid.clone());
    let rows = object.element(tags::ROWS)?.to_int::<u32>()?;
    let columns = object.element(tags::COLUMNS)?.to_int::<u32>()?;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{label}.dcm"));
    object.write_to_file(&path).with_context(|| format!("writing {}", path.display()))?;
    Ok(Sample { label: label.to_string(), path, study_uid, sop_uid, deviation_index, rows, columns })
}

/// The demo's and tests' set: the NEMA chest CR (1955x1841) at DI -4, the
/// small DX thorax at DI -7, and the same DX thorax well exposed (DI +0.2).
pub fn standard_set(dir: &Path, run: &str) -> anyhow::Result<Vec<Sample>> {
    Ok(vec![
        sample(dir, "RG1_UNCR.dcm", "chest-cr-di-minus-4", run, -4.0)?,
        sample(dir, "dx_image.dcm", "thorax-dx-di-minus-7", run, -7.0)?,
        sample(dir, "dx_image.dcm", "thorax-dx-well-exposed", run, 0.2)?,
    ])
}
