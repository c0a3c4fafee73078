//! The derived DICOM instance: the enhanced pixels wrapped in a new instance
//! of the source's study, with its provenance (PS3.3 rules in
//! `/work/shared/ARCHITECTURE.md`, tag by tag in `daemon/OUTPUT.md`).
//!
//! Pure: [`derive_instance`] and [`doubt_map_instance`] build objects in
//! memory; only [`write_durably`] touches the disk. Nothing here logs: the
//! objects carry patient data, the caller logs UIDs.
//!
//! How the instance is built: every public attribute of the source is copied,
//! then what no longer holds is removed (the source's private groups, pixel
//! data and everything computed from it, icon, derivation history, instance
//! identity), what is new is set (UIDs, series, Image Type, derivation,
//! equipment, the private block), and a few defects that sources are known to
//! carry and that would make the derived instance invalid are repaired (see
//! [`repair`]). Copying everything public keeps the acquisition attributes
//! (exposure, Deviation Index, detector, positioning) that still describe the
//! image: enhancement changes the pixels, not how they were acquired.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, FixedOffset, Utc};
use dicom_core::header::Header;
use dicom_core::value::{DataSetSequence, C};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use sha2::{Digest, Sha256};

pub use crate::uids::{
    CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING, EXPLICIT_VR_LITTLE_ENDIAN, SECONDARY_CAPTURE,
};

/// Private creator of our block (0071,0010); its elements are (0071,10xx).
pub const PRIVATE_CREATOR: &str = "CXR-LED 1.0";
/// Group of our private block.
pub const PRIVATE_GROUP: u16 = 0x0071;
/// Private element (0071,1001) FD: hallucination-check score.
pub const PRIVATE_SCORE: Tag = Tag(PRIVATE_GROUP, 0x1001);
/// Private element (0071,1002) FD: hold threshold the score was compared against.
pub const PRIVATE_HOLD_THRESHOLD: Tag = Tag(PRIVATE_GROUP, 0x1002);
/// Private element (0071,1003) LO: sha256 of the model bundle (64 hex digits).
pub const PRIVATE_BUNDLE_SHA256: Tag = Tag(PRIVATE_GROUP, 0x1003);
/// Private element (0071,1004) LO: model (bundle) name.
pub const PRIVATE_MODEL_NAME: Tag = Tag(PRIVATE_GROUP, 0x1004);
/// Private element (0071,1005) LO: model (bundle) version.
pub const PRIVATE_MODEL_VERSION: Tag = Tag(PRIVATE_GROUP, 0x1005);
/// Private element (0071,1006) UL: diffusion start step t0.
pub const PRIVATE_T0: Tag = Tag(PRIVATE_GROUP, 0x1006);
/// Private element (0071,1007) UL: number of sampler steps.
pub const PRIVATE_STEPS: Tag = Tag(PRIVATE_GROUP, 0x1007);
/// Private element (0071,1008) LO: numeric precision (e.g. `f32`).
pub const PRIVATE_PRECISION: Tag = Tag(PRIVATE_GROUP, 0x1008);
/// Private element (0071,1009) LO: device the model ran on.
pub const PRIVATE_DEVICE: Tag = Tag(PRIVATE_GROUP, 0x1009);
/// Private element (0071,1010) LO, VM 1-n: names of the score components.
pub const PRIVATE_COMPONENT_NAMES: Tag = Tag(PRIVATE_GROUP, 0x1010);
/// Private element (0071,1011) FD, VM 1-n: values of the score components, in the order of the names.
pub const PRIVATE_COMPONENT_VALUES: Tag = Tag(PRIVATE_GROUP, 0x1011);

/// Series Number of the derived series: the source's plus this (1000 when the source has none).
pub const SERIES_NUMBER_OFFSET: i64 = 1000;
/// Series Description of the derived series.
pub const SERIES_DESCRIPTION: &str = "AI-enhanced (cxr-led), not for primary diagnosis";
/// Manufacturer written in the Contributing Equipment Sequence.
pub const MANUFACTURER: &str = "cxr-led";

/// Stored pixel values of the derived image, row-major, rows x columns, in the
/// source's Bits Stored / Pixel Representation / Photometric Interpretation
/// (MONOCHROME1 stays MONOCHROME1).
#[derive(Debug, Clone, PartialEq)]
pub enum StoredPixels {
    /// Bits Allocated 8, unsigned.
    U8(Vec<u8>),
    /// Bits Allocated 16; signed values (Pixel Representation 1) as two's complement.
    U16(Vec<u16>),
}

impl StoredPixels {
    fn len(&self) -> usize {
        match self {
            StoredPixels::U8(v) => v.len(),
            StoredPixels::U16(v) => v.len(),
        }
    }
}

/// What the derived instance records about how it was made.
#[derive(Debug, Clone, PartialEq)]
pub struct Provenance {
    /// SOP Instance UID of the derived instance (see [`uid_from_parts`]).
    pub derived_sop_instance_uid: String,
    /// Series Instance UID of the derived series.
    pub derived_series_instance_uid: String,
    /// Model bundle name.
    pub model_name: String,
    /// Model bundle version.
    pub model_version: String,
    /// sha256 of the model bundle (hex).
    pub bundle_sha256: String,
    /// Diffusion start step.
    pub t0: usize,
    /// Sampler steps.
    pub steps: usize,
    /// Numeric precision, e.g. `f32`.
    pub precision: String,
    /// Device, e.g. `cpu` or `cuda:0`.
    pub device: String,
    /// Hallucination-check score.
    pub score: f64,
    /// The score's components, by name.
    pub score_components: Vec<(String, f64)>,
    /// Hold threshold the score was compared against.
    pub hold_threshold: f64,
    /// The daemon's version (`env!("CARGO_PKG_VERSION")`).
    pub software_version: String,
    /// When the instance was made.
    pub created: DateTime<Utc>,
}

/// Why a derived instance could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DeriveError {
    /// The source lacks an attribute the derived instance needs.
    #[error("the source lacks {name} {tag}, which the derived instance needs; the source is not a usable image")]
    Missing {
        /// Attribute keyword.
        name: &'static str,
        /// Its tag.
        tag: Tag,
    },
    /// A source attribute has a value we cannot use.
    #[error("the source's {name} {tag} is invalid: {reason}")]
    Invalid {
        /// Attribute keyword.
        name: &'static str,
        /// Its tag.
        tag: Tag,
        /// What is wrong.
        reason: String,
    },
    /// The source is not a single-sample grayscale image.
    #[error(
        "the source is {photometric} with {samples} samples per pixel; only MONOCHROME1/MONOCHROME2 with one sample are enhanced"
    )]
    NotGrayscale {
        /// Photometric Interpretation.
        photometric: String,
        /// Samples per Pixel.
        samples: u16,
    },
    /// The pixel buffer does not match the matrix.
    #[error("{what} has {got} values but the matrix is {rows} x {columns} = {expected}")]
    PixelCount {
        /// Which buffer.
        what: &'static str,
        /// Values given.
        got: usize,
        /// Rows.
        rows: u32,
        /// Columns.
        columns: u32,
        /// Rows times columns.
        expected: usize,
    },
    /// The pixel kind cannot carry the source's stored range.
    #[error("{kind} pixels cannot hold the source's Bits Stored {bits_stored}, Pixel Representation {pixel_representation}; map them to the source's stored range first")]
    PixelKind {
        /// `U8` or `U16`.
        kind: &'static str,
        /// The source's Bits Stored.
        bits_stored: u16,
        /// The source's Pixel Representation.
        pixel_representation: u16,
    },
    /// A stored value lies outside Bits Stored.
    #[error("stored value {value} at pixel {index} lies outside the {bits_stored}-bit {signedness} range of the source; clamp to the source's stored range first")]
    PixelOutOfRange {
        /// The value (as a signed number for Pixel Representation 1).
        value: i64,
        /// Its index in the buffer.
        index: usize,
        /// The source's Bits Stored.
        bits_stored: u16,
        /// `unsigned` or `signed`.
        signedness: &'static str,
    },
    /// A doubt-map value is not a number.
    #[error("doubt map value at pixel {index} is not a number")]
    DoubtNotANumber {
        /// Its index.
        index: usize,
    },
    /// The file meta group could not be built.
    #[error("building the file meta group: {0}")]
    Meta(String),
}

/// `2.25.` + the decimal value of a UUID (RFC 9562 version 8 layout) made
/// from sha256 of the parts: deterministic derived UIDs, so a re-run after a
/// crash yields the same SOP Instance UID. Each part is length-prefixed, so
/// `["ab", "c"]` and `["a", "bc"]` differ.
pub fn uid_from_parts(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80; // version 8
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // variant 0b10
    format!("2.25.{}", u128::from_be_bytes(bytes))
}

/// Writes a Part 10 file to a temporary name beside `path`, fsyncs it,
/// renames it to `path` and fsyncs the folder: a file with the final name is
/// complete and on disk.
pub fn write_durably(object: &DefaultDicomObject, path: &Path) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let temp = dir.join(format!(".{}.{}-{nanos}.part", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&temp)?;
        object.write_all(&mut file).map_err(std::io::Error::other)?;
        file.flush()?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// What the derived instance is: the SOP class and whether it follows the DX IOD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Cr,
    Dx,
    SecondaryCapture,
}

impl Target {
    /// CR stays CR and DX For Presentation stays DX For Presentation. DX For
    /// Processing becomes DX For Presentation: the enhanced image is made to
    /// be looked at, and "For Processing" promises raw detector data that a
    /// viewer must still process, which it no longer is. Anything else
    /// becomes Secondary Capture, whose IOD asks for no acquisition modules.
    fn of(source_sop_class: &str) -> (Target, &'static str) {
        match source_sop_class {
            CR_IMAGE_STORAGE => (Target::Cr, CR_IMAGE_STORAGE),
            DX_FOR_PRESENTATION | DX_FOR_PROCESSING => (Target::Dx, DX_FOR_PRESENTATION),
            _ => (Target::SecondaryCapture, SECONDARY_CAPTURE),
        }
    }
}

/// Builds the derived instance of `source` carrying `pixels` (see the module
/// doc and `daemon/OUTPUT.md` for every attribute).
pub fn derive_instance(
    source: &DefaultDicomObject,
    pixels: StoredPixels,
    provenance: &Provenance,
) -> Result<DefaultDicomObject, DeriveError> {
    let image = ImageDescription::of(source)?;
    let expected = image.rows as usize * image.columns as usize;
    if pixels.len() != expected {
        return Err(DeriveError::PixelCount {
            what: "the derived pixel buffer",
            got: pixels.len(),
            rows: image.rows,
            columns: image.columns,
            expected,
        });
    }
    let (min, max) = image.check_range(&pixels)?;
    let source_class = required_str(source, tags::SOP_CLASS_UID, "SOPClassUID")?;
    let source_instance = required_str(source, tags::SOP_INSTANCE_UID, "SOPInstanceUID")?;
    required_str(source, tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?;
    let (target, sop_class) = Target::of(&source_class);

    let mut obj = InMemDicomObject::from_element_iter(source.iter().filter(|e| copied(e.tag())).cloned());
    repair(&mut obj);

    // Identity and series.
    put_uid(&mut obj, tags::SOP_CLASS_UID, sop_class);
    put_uid(&mut obj, tags::SOP_INSTANCE_UID, &provenance.derived_sop_instance_uid);
    set_series(&mut obj, source, provenance);
    let when = local_time(source, provenance.created);
    put_str(&mut obj, tags::INSTANCE_CREATION_DATE, VR::DA, &when.format("%Y%m%d").to_string());
    put_str(&mut obj, tags::INSTANCE_CREATION_TIME, VR::TM, &when.format("%H%M%S%.6f").to_string());
    put_str(&mut obj, tags::CONTENT_DATE, VR::DA, &when.format("%Y%m%d").to_string());
    put_str(&mut obj, tags::CONTENT_TIME, VR::TM, &when.format("%H%M%S%.6f").to_string());
    put_str(&mut obj, tags::INSTANCE_NUMBER, VR::IS, "1");
    let image_type: &[&str] =
        if target == Target::Dx { &["DERIVED", "SECONDARY", ""] } else { &["DERIVED", "SECONDARY"] };
    obj.put(DataElement::new(
        tags::IMAGE_TYPE,
        VR::CS,
        PrimitiveValue::Strs(image_type.iter().map(|s| s.to_string()).collect()),
    ));
    put_str(&mut obj, tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
    if target == Target::Dx {
        put_str(&mut obj, tags::PRESENTATION_INTENT_TYPE, VR::CS, "FOR PRESENTATION");
    }
    if target == Target::SecondaryCapture && obj.get(tags::CONVERSION_TYPE).is_none() {
        put_str(&mut obj, tags::CONVERSION_TYPE, VR::CS, "WSD");
    }
    if obj.get(tags::MODALITY).is_none() {
        put_str(&mut obj, tags::MODALITY, VR::CS, "OT");
    }

    // Pixels: uncompressed, in the source's stored range.
    image.put_pixels(&mut obj, pixels, min, max);
    if target == Target::Dx {
        ensure_presentation(&mut obj, &image, min, max);
    }
    set_lossy(&mut obj, source, &image);

    // Provenance.
    put_str(&mut obj, tags::DERIVATION_DESCRIPTION, VR::ST, &derivation_description(provenance));
    obj.put(sequence(
        tags::DERIVATION_CODE_SEQUENCE,
        vec![
            code("113087", "DCM", "Smoothing"),
            code("LED-ENHANCE", "99CXRLED", "Low-dose enhancement by conditional diffusion (LED)"),
        ],
    ));
    obj.put(sequence(tags::SOURCE_IMAGE_SEQUENCE, vec![image_reference(&source_class, &source_instance, Some(true))]));
    add_contributing_equipment(&mut obj, source, provenance);
    put_private_block(&mut obj, provenance);

    finish(obj)
}

/// A Secondary Capture (8-bit MONOCHROME2) of the per-pixel doubt map (values
/// in [0,1], rows x columns; 0 maps to 0, 1 to 255), same study, in the
/// derived series, referencing the source and the derived instance.
pub fn doubt_map_instance(
    source: &DefaultDicomObject,
    doubt_map: &[f32],
    rows: u32,
    columns: u32,
    provenance: &Provenance,
    sop_instance_uid: &str,
) -> Result<DefaultDicomObject, DeriveError> {
    let expected = rows as usize * columns as usize;
    if doubt_map.len() != expected || rows == 0 || columns == 0 || rows > 0xffff || columns > 0xffff {
        return Err(DeriveError::PixelCount { what: "the doubt map", got: doubt_map.len(), rows, columns, expected });
    }
    let source_class = required_str(source, tags::SOP_CLASS_UID, "SOPClassUID")?;
    let source_instance = required_str(source, tags::SOP_INSTANCE_UID, "SOPInstanceUID")?;
    required_str(source, tags::STUDY_INSTANCE_UID, "StudyInstanceUID")?;
    let (derived_class, _) = Target::of(&source_class);
    let derived_class = match derived_class {
        Target::Cr => CR_IMAGE_STORAGE,
        Target::Dx => DX_FOR_PRESENTATION,
        Target::SecondaryCapture => SECONDARY_CAPTURE,
    };
    let mut values = Vec::with_capacity(expected + 1);
    for (index, &v) in doubt_map.iter().enumerate() {
        if v.is_nan() {
            return Err(DeriveError::DoubtNotANumber { index });
        }
        values.push((v.clamp(0.0, 1.0) * 255.0).round() as u8);
    }
    let (min, max) = values.iter().fold((u8::MAX, 0u8), |(lo, hi), &v| (lo.min(v), hi.max(v)));

    // Patient, study, equipment and series-level attributes as in the derived instance.
    let mut obj =
        InMemDicomObject::from_element_iter(source.iter().filter(|e| is_patient_study_or_equipment(e.tag())).cloned());
    repair(&mut obj);
    // The series-level Laterality (Type 2C) of an image whose laterality the
    // source states only at image level (Image Laterality), as DX images do:
    // the SC IOD has no Image Laterality, so the series must carry it.
    if obj.get(tags::LATERALITY).is_none() {
        if let Some(laterality) = get_str(source, tags::IMAGE_LATERALITY).filter(|l| matches!(l.as_str(), "R" | "L")) {
            put_str(&mut obj, tags::LATERALITY, VR::CS, &laterality);
        }
    }
    put_uid(&mut obj, tags::SOP_CLASS_UID, SECONDARY_CAPTURE);
    put_uid(&mut obj, tags::SOP_INSTANCE_UID, sop_instance_uid);
    set_series(&mut obj, source, provenance);
    if obj.get(tags::MODALITY).is_none() {
        put_str(&mut obj, tags::MODALITY, VR::CS, "OT");
    }
    put_str(&mut obj, tags::CONVERSION_TYPE, VR::CS, "WSD");
    put_str(&mut obj, tags::SECONDARY_CAPTURE_DEVICE_MANUFACTURER, VR::LO, MANUFACTURER);
    put_str(&mut obj, tags::SECONDARY_CAPTURE_DEVICE_SOFTWARE_VERSIONS, VR::LO, &provenance.software_version);
    let when = local_time(source, provenance.created);
    for (date, time) in [
        (tags::INSTANCE_CREATION_DATE, tags::INSTANCE_CREATION_TIME),
        (tags::CONTENT_DATE, tags::CONTENT_TIME),
        (tags::DATE_OF_SECONDARY_CAPTURE, tags::TIME_OF_SECONDARY_CAPTURE),
    ] {
        put_str(&mut obj, date, VR::DA, &when.format("%Y%m%d").to_string());
        put_str(&mut obj, time, VR::TM, &when.format("%H%M%S%.6f").to_string());
    }
    put_str(&mut obj, tags::INSTANCE_NUMBER, VR::IS, "2");
    obj.put(DataElement::new(
        tags::IMAGE_TYPE,
        VR::CS,
        PrimitiveValue::Strs(["DERIVED", "SECONDARY"].iter().map(|s| s.to_string()).collect()),
    ));
    let orientation = source.get(tags::PATIENT_ORIENTATION).cloned();
    match orientation {
        Some(e) if rows == image_rows(source) && columns == image_columns(source) => {
            obj.put(e);
        }
        _ => {
            obj.put(DataElement::new(tags::PATIENT_ORIENTATION, VR::CS, PrimitiveValue::Empty));
        }
    }
    put_str(&mut obj, tags::BURNED_IN_ANNOTATION, VR::CS, "NO");
    put_str(
        &mut obj,
        tags::IMAGE_COMMENTS,
        VR::LT,
        "Hallucination-check doubt map: 0 = no doubt, 255 = doubt 1.0. Not for diagnosis.",
    );
    let image =
        ImageDescription { rows, columns, bits_stored: 8, pixel_representation: 0, photometric: "MONOCHROME2".into() };
    image.put_pixels(&mut obj, StoredPixels::U8(values), i64::from(min), i64::from(max));
    put_str(&mut obj, tags::WINDOW_CENTER, VR::DS, "127.5");
    put_str(&mut obj, tags::WINDOW_WIDTH, VR::DS, "256");

    let description = format!(
        "Per-pixel doubt of the hallucination check of {}; score {:.6} (hold threshold {:.6}); model {} {}",
        provenance.derived_sop_instance_uid,
        provenance.score,
        provenance.hold_threshold,
        ascii(&provenance.model_name),
        ascii(&provenance.model_version),
    );
    put_str(&mut obj, tags::DERIVATION_DESCRIPTION, VR::ST, &truncate(&description, 1024));
    obj.put(sequence(
        tags::DERIVATION_CODE_SEQUENCE,
        vec![code("DOUBT-MAP", "99CXRLED", "Hallucination-check doubt map")],
    ));
    let spatial = rows == image_rows(source) && columns == image_columns(source);
    obj.put(sequence(
        tags::SOURCE_IMAGE_SEQUENCE,
        vec![
            image_reference(&source_class, &source_instance, Some(spatial)),
            image_reference(derived_class, &provenance.derived_sop_instance_uid, Some(spatial)),
        ],
    ));
    add_contributing_equipment(&mut obj, source, provenance);
    put_private_block(&mut obj, provenance);
    finish(obj)
}

/// Wraps a data set in a Part 10 file meta group (Explicit VR Little Endian).
fn finish(obj: InMemDicomObject) -> Result<DefaultDicomObject, DeriveError> {
    obj.with_meta(
        FileMetaTableBuilder::new()
            .transfer_syntax(EXPLICIT_VR_LITTLE_ENDIAN)
            .implementation_class_uid(uid_from_parts(&[b"cxr-led implementation class"]))
            .implementation_version_name(IMPLEMENTATION_VERSION_NAME),
    )
    .map_err(|e| DeriveError::Meta(e.to_string()))
}

/// Implementation Version Name (SH, at most 16 characters).
const IMPLEMENTATION_VERSION_NAME: &str = concat!("CXRLED_", env!("CARGO_PKG_VERSION"));

/// The source's pixel matrix and stored range.
#[derive(Debug, Clone)]
struct ImageDescription {
    rows: u32,
    columns: u32,
    bits_stored: u16,
    pixel_representation: u16,
    photometric: String,
}

impl ImageDescription {
    fn of(source: &InMemDicomObject) -> Result<ImageDescription, DeriveError> {
        let rows = required_u16(source, tags::ROWS, "Rows")?;
        let columns = required_u16(source, tags::COLUMNS, "Columns")?;
        let bits_stored = required_u16(source, tags::BITS_STORED, "BitsStored")?;
        let pixel_representation = required_u16(source, tags::PIXEL_REPRESENTATION, "PixelRepresentation")?;
        let photometric = required_str(source, tags::PHOTOMETRIC_INTERPRETATION, "PhotometricInterpretation")?;
        let samples = get_u16(source, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
        if samples != 1 || !matches!(photometric.as_str(), "MONOCHROME1" | "MONOCHROME2") {
            return Err(DeriveError::NotGrayscale { photometric, samples });
        }
        if rows == 0 || columns == 0 {
            return Err(DeriveError::Invalid {
                name: "Rows/Columns",
                tag: tags::ROWS,
                reason: format!("the matrix is {rows} x {columns}"),
            });
        }
        if !(1..=16).contains(&bits_stored) {
            return Err(DeriveError::Invalid {
                name: "BitsStored",
                tag: tags::BITS_STORED,
                reason: format!("{bits_stored} is not between 1 and 16"),
            });
        }
        if pixel_representation > 1 {
            return Err(DeriveError::Invalid {
                name: "PixelRepresentation",
                tag: tags::PIXEL_REPRESENTATION,
                reason: format!("{pixel_representation} is neither 0 nor 1"),
            });
        }
        Ok(ImageDescription {
            rows: rows.into(),
            columns: columns.into(),
            bits_stored,
            pixel_representation,
            photometric,
        })
    }

    /// Checks that every value fits Bits Stored; returns the smallest and largest (signed where signed).
    fn check_range(&self, pixels: &StoredPixels) -> Result<(i64, i64), DeriveError> {
        let signed = self.pixel_representation == 1;
        let (lo, hi) = if signed {
            (-(1i64 << (self.bits_stored - 1)), (1i64 << (self.bits_stored - 1)) - 1)
        } else {
            (0, (1i64 << self.bits_stored) - 1)
        };
        let kind_error = |kind| DeriveError::PixelKind {
            kind,
            bits_stored: self.bits_stored,
            pixel_representation: self.pixel_representation,
        };
        let values: Box<dyn Iterator<Item = i64> + '_> = match pixels {
            StoredPixels::U8(v) => {
                if signed || self.bits_stored > 8 {
                    return Err(kind_error("U8"));
                }
                Box::new(v.iter().map(|&x| i64::from(x)))
            }
            StoredPixels::U16(v) if signed => Box::new(v.iter().map(|&x| i64::from(x as i16))),
            StoredPixels::U16(v) => Box::new(v.iter().map(|&x| i64::from(x))),
        };
        let mut range = (i64::MAX, i64::MIN);
        for (index, value) in values.enumerate() {
            if value < lo || value > hi {
                return Err(DeriveError::PixelOutOfRange {
                    value,
                    index,
                    bits_stored: self.bits_stored,
                    signedness: if signed { "signed" } else { "unsigned" },
                });
            }
            range = (range.0.min(value), range.1.max(value));
        }
        Ok(range)
    }

    /// Writes the Image Pixel module: matrix, bits, photometric, pixel data
    /// (OB for 8 bits, padded to even length; OW for 16), smallest/largest value.
    fn put_pixels(&self, obj: &mut InMemDicomObject, pixels: StoredPixels, min: i64, max: i64) {
        let bits_allocated: u16 = match pixels {
            StoredPixels::U8(_) => 8,
            StoredPixels::U16(_) => 16,
        };
        obj.put(DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)));
        put_str(obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, &self.photometric);
        obj.put(DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(self.rows as u16)));
        obj.put(DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(self.columns as u16)));
        obj.put(DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(bits_allocated)));
        obj.put(DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(self.bits_stored)));
        obj.put(DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(self.bits_stored - 1)));
        obj.put(DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(self.pixel_representation)));
        obj.remove_element(tags::PLANAR_CONFIGURATION);
        if self.pixel_representation == 1 {
            obj.put(DataElement::new(tags::SMALLEST_IMAGE_PIXEL_VALUE, VR::SS, PrimitiveValue::from(min as i16)));
            obj.put(DataElement::new(tags::LARGEST_IMAGE_PIXEL_VALUE, VR::SS, PrimitiveValue::from(max as i16)));
        } else {
            obj.put(DataElement::new(tags::SMALLEST_IMAGE_PIXEL_VALUE, VR::US, PrimitiveValue::from(min as u16)));
            obj.put(DataElement::new(tags::LARGEST_IMAGE_PIXEL_VALUE, VR::US, PrimitiveValue::from(max as u16)));
        }
        match pixels {
            StoredPixels::U8(mut v) => {
                if v.len() % 2 == 1 {
                    v.push(0);
                }
                obj.put(DataElement::new(tags::PIXEL_DATA, VR::OB, PrimitiveValue::U8(C::from_vec(v))));
            }
            StoredPixels::U16(v) => {
                obj.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(C::from_vec(v))));
            }
        }
    }
}

/// Whether a source attribute is copied into the derived instance before
/// the derived attributes are set. Dropped: private groups (ours replaces
/// them; a vendor's may describe pixels we changed and we cannot vet them
/// for patient data), group lengths, everything about the old pixel data
/// (pixel data, extended offset table, icon, pixel statistics, provider
/// URL, trailing padding), the source's instance identity and derivation
/// history (replaced).
fn copied(tag: Tag) -> bool {
    let Tag(group, element) = tag;
    if group % 2 == 1 || element == 0 || group == 0x0002 || group == 0xfffc || group == 0x7fe0 {
        return false;
    }
    !matches!(
        tag,
        tags::SOP_INSTANCE_UID
            | tags::INSTANCE_CREATOR_UID
            | tags::SERIES_INSTANCE_UID
            | tags::DERIVATION_DESCRIPTION
            | tags::DERIVATION_CODE_SEQUENCE
            | tags::SOURCE_IMAGE_SEQUENCE
            | tags::ICON_IMAGE_SEQUENCE
            | tags::SMALLEST_IMAGE_PIXEL_VALUE
            | tags::LARGEST_IMAGE_PIXEL_VALUE
            | tags::SMALLEST_PIXEL_VALUE_IN_SERIES
            | tags::LARGEST_PIXEL_VALUE_IN_SERIES
            | tags::PIXEL_DATA_PROVIDER_URL
            | tags::FLOAT_PIXEL_DATA
            | tags::DOUBLE_FLOAT_PIXEL_DATA
    )
}

/// The attributes a doubt map shares with its source: Patient, Clinical Trial
/// Subject, General Study, Patient Study and General Equipment modules, and
/// the series-level Modality, Body Part Examined and Laterality (the doubt
/// map lives in the derived series, whose attributes are those of the
/// derived instance).
fn is_patient_study_or_equipment(tag: Tag) -> bool {
    let Tag(group, element) = tag;
    if element == 0 {
        return false;
    }
    if group == 0x0010 || group == 0x0012 {
        return true;
    }
    matches!(
        tag,
        tags::SPECIFIC_CHARACTER_SET
            | tags::TIMEZONE_OFFSET_FROM_UTC
            | tags::STUDY_INSTANCE_UID
            | tags::STUDY_DATE
            | tags::STUDY_TIME
            | tags::REFERRING_PHYSICIAN_NAME
            | tags::REFERRING_PHYSICIAN_IDENTIFICATION_SEQUENCE
            | tags::STUDY_ID
            | tags::ACCESSION_NUMBER
            | tags::ISSUER_OF_ACCESSION_NUMBER_SEQUENCE
            | tags::STUDY_DESCRIPTION
            | tags::PROCEDURE_CODE_SEQUENCE
            | tags::PHYSICIANS_OF_RECORD
            | tags::NAME_OF_PHYSICIANS_READING_STUDY
            | tags::REFERENCED_STUDY_SEQUENCE
            | tags::ADMITTING_DIAGNOSES_DESCRIPTION
            | tags::MANUFACTURER
            | tags::INSTITUTION_NAME
            | tags::INSTITUTION_ADDRESS
            | tags::STATION_NAME
            | tags::INSTITUTIONAL_DEPARTMENT_NAME
            | tags::MANUFACTURER_MODEL_NAME
            | tags::DEVICE_SERIAL_NUMBER
            | tags::SOFTWARE_VERSIONS
            | tags::MODALITY
            | tags::BODY_PART_EXAMINED
            | tags::LATERALITY
    )
}

/// Repairs defects that real sources carry and that would make the derived
/// instance fail its IOD (each one seen in the test fixtures):
/// - Pixel Spacing / Imager Pixel Spacing with a zero, negative or
///   unreadable value: removed (a spacing of 0 mm is no spacing).
/// - Pixel Aspect Ratio empty, or present beside a pixel spacing (PS3.3
///   forbids it there): removed.
/// - Laterality present but empty on a series: removed (Type 2C, only for
///   paired body parts; a chest is unpaired).
/// - Anatomic Region Sequence empty while Body Part Examined says CHEST or
///   THORAX: filled with SCT 43799004 "Chest" (PS3.16 Annex L).
/// - Request Attributes Sequence items with an empty Requested Procedure ID or
///   Scheduled Procedure Step ID (Type 1C, empty is not allowed): the empty
///   element is removed from the item.
fn repair(obj: &mut InMemDicomObject) {
    for tag in [tags::PIXEL_SPACING, tags::IMAGER_PIXEL_SPACING, tags::NOMINAL_SCANNED_PIXEL_SPACING] {
        if let Some(e) = obj.get(tag) {
            let valid = e.to_multi_float64().map(|v| v.len() == 2 && v.iter().all(|x| *x > 0.0)).unwrap_or(false);
            if !valid {
                obj.remove_element(tag);
            }
        }
    }
    if obj.get(tags::PIXEL_ASPECT_RATIO).is_some_and(|e| {
        is_empty(e) || obj.get(tags::PIXEL_SPACING).is_some() || obj.get(tags::IMAGER_PIXEL_SPACING).is_some()
    }) {
        obj.remove_element(tags::PIXEL_ASPECT_RATIO);
    }
    if obj.get(tags::LATERALITY).is_some_and(is_empty) {
        obj.remove_element(tags::LATERALITY);
    }
    let body_part = get_str(obj, tags::BODY_PART_EXAMINED).unwrap_or_default();
    if obj.get(tags::ANATOMIC_REGION_SEQUENCE).is_some_and(is_empty) && matches!(body_part.as_str(), "CHEST" | "THORAX")
    {
        obj.put(sequence(tags::ANATOMIC_REGION_SEQUENCE, vec![code("43799004", "SCT", "Chest")]));
    }
    if let Some(mut e) = obj.take(tags::REQUEST_ATTRIBUTES_SEQUENCE) {
        if let Some(items) = e.items_mut() {
            for item in items.iter_mut() {
                for tag in [tags::REQUESTED_PROCEDURE_ID, tags::SCHEDULED_PROCEDURE_STEP_ID] {
                    if item.get(tag).is_some_and(is_empty) {
                        item.remove_element(tag);
                    }
                }
            }
        }
        obj.put(e);
    }
}

/// Sets the series-level attributes of the derived series.
fn set_series(obj: &mut InMemDicomObject, source: &InMemDicomObject, provenance: &Provenance) {
    put_uid(obj, tags::SERIES_INSTANCE_UID, &provenance.derived_series_instance_uid);
    let number = get_str(source, tags::SERIES_NUMBER).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
    let number = if number.abs() < 1_000_000_000 { number + SERIES_NUMBER_OFFSET } else { SERIES_NUMBER_OFFSET };
    put_str(obj, tags::SERIES_NUMBER, VR::IS, &number.to_string());
    put_str(obj, tags::SERIES_DESCRIPTION, VR::LO, SERIES_DESCRIPTION);
    let when = local_time(source, provenance.created);
    put_str(obj, tags::SERIES_DATE, VR::DA, &when.format("%Y%m%d").to_string());
    put_str(obj, tags::SERIES_TIME, VR::TM, &when.format("%H%M%S%.6f").to_string());
}

/// For Presentation needs a VOI (Window Center/Width or a VOI LUT) and a
/// Presentation LUT Shape; a source that was For Processing may have neither.
/// The window then spans the derived image's own values (after rescale).
fn ensure_presentation(obj: &mut InMemDicomObject, image: &ImageDescription, min: i64, max: i64) {
    let has_voi = obj.get(tags::WINDOW_CENTER).is_some() || obj.get(tags::VOILUT_SEQUENCE).is_some();
    if !has_voi {
        let slope = obj.get(tags::RESCALE_SLOPE).and_then(|e| e.to_float64().ok()).unwrap_or(1.0);
        let intercept = obj.get(tags::RESCALE_INTERCEPT).and_then(|e| e.to_float64().ok()).unwrap_or(0.0);
        let (a, b) = (min as f64 * slope + intercept, max as f64 * slope + intercept);
        let (lo, hi) = (a.min(b), a.max(b));
        put_str(obj, tags::WINDOW_CENTER, VR::DS, &ds((lo + hi) / 2.0));
        put_str(obj, tags::WINDOW_WIDTH, VR::DS, &ds((hi - lo + 1.0).max(1.0)));
    }
    if obj.get(tags::PRESENTATION_LUT_SHAPE).is_none() {
        let shape = if image.photometric == "MONOCHROME1" { "INVERSE" } else { "IDENTITY" };
        put_str(obj, tags::PRESENTATION_LUT_SHAPE, VR::CS, shape);
    }
}

/// Lossy Image Compression: "01" stays "01" (it may never be reset); a
/// source that arrived in a lossy transfer syntax without saying so becomes
/// "01", with the method and, from the fragment sizes, the ratio.
fn set_lossy(obj: &mut InMemDicomObject, source: &DefaultDicomObject, image: &ImageDescription) {
    let already = get_str(obj, tags::LOSSY_IMAGE_COMPRESSION).as_deref() == Some("01");
    let ts = source.meta().transfer_syntax().trim_end_matches(['\0', ' ']);
    // A source that does not say, and did not arrive lossy, leaves it unsaid:
    // "00" would claim a history we do not know.
    let Some(&(_, method)) = crate::uids::LOSSY_TRANSFER_SYNTAXES.iter().find(|(uid, _)| *uid == ts) else {
        return;
    };
    put_str(obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "01");
    if already {
        return;
    }
    let compressed: usize =
        source.get(tags::PIXEL_DATA).and_then(|e| e.fragments()).map(|f| f.iter().map(|x| x.len()).sum()).unwrap_or(0);
    let bits_allocated = get_u16(source, tags::BITS_ALLOCATED).unwrap_or(16).max(8) as usize;
    let uncompressed = image.rows as usize * image.columns as usize * bits_allocated / 8;
    let mut methods = get_multi_str(obj, tags::LOSSY_IMAGE_COMPRESSION_METHOD);
    let mut ratios = get_multi_str(obj, tags::LOSSY_IMAGE_COMPRESSION_RATIO);
    if compressed > 0 && methods.len() == ratios.len() {
        methods.push(method.to_string());
        ratios.push(ds(uncompressed as f64 / compressed as f64));
        obj.put(DataElement::new(tags::LOSSY_IMAGE_COMPRESSION_METHOD, VR::CS, PrimitiveValue::Strs(methods.into())));
        obj.put(DataElement::new(tags::LOSSY_IMAGE_COMPRESSION_RATIO, VR::DS, PrimitiveValue::Strs(ratios.into())));
    }
}

/// The Derivation Description text (ST, at most 1024 characters).
fn derivation_description(p: &Provenance) -> String {
    let components: Vec<String> =
        p.score_components.iter().map(|(name, value)| format!("{}={value:.6}", ascii(name))).collect();
    let text = format!(
        "AI-enhanced by cxr-led {} (LED: CycleGAN first stage + conditional diffusion refinement); NOT FOR PRIMARY \
         DIAGNOSIS. Model {} version {}, bundle sha256 {}, t0 {}, steps {}, precision {}, device {}. \
         Hallucination-check score {:.6} (hold threshold {:.6}); components: {}.",
        ascii(&p.software_version),
        ascii(&p.model_name),
        ascii(&p.model_version),
        ascii(&p.bundle_sha256),
        p.t0,
        p.steps,
        ascii(&p.precision),
        ascii(&p.device),
        p.score,
        p.hold_threshold,
        if components.is_empty() { "none".to_string() } else { components.join(", ") },
    );
    truncate(&text, 1024)
}

/// Appends our item to the source's Contributing Equipment Sequence (its
/// items, if any, stay: they are the history of the pixels).
fn add_contributing_equipment(obj: &mut InMemDicomObject, source: &InMemDicomObject, p: &Provenance) {
    let mut items: Vec<InMemDicomObject> = source
        .get(tags::CONTRIBUTING_EQUIPMENT_SEQUENCE)
        .and_then(|e| e.items())
        .map(|i| i.to_vec())
        .unwrap_or_default();
    let when = local_time(source, p.created);
    let mut item = InMemDicomObject::new_empty();
    item.put(sequence(tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE, vec![code("109102", "DCM", "Processing Equipment")]));
    put_str(&mut item, tags::MANUFACTURER, VR::LO, MANUFACTURER);
    put_str(&mut item, tags::MANUFACTURER_MODEL_NAME, VR::LO, "cxr-ledd");
    put_str(&mut item, tags::SOFTWARE_VERSIONS, VR::LO, &truncate(&ascii(&p.software_version), 64));
    put_str(&mut item, tags::CONTRIBUTION_DATE_TIME, VR::DT, &when.format("%Y%m%d%H%M%S%.6f%z").to_string());
    let description = format!(
        "LED enhancement, model {} {} (bundle sha256 {})",
        ascii(&p.model_name),
        ascii(&p.model_version),
        ascii(&p.bundle_sha256)
    );
    put_str(&mut item, tags::CONTRIBUTION_DESCRIPTION, VR::ST, &truncate(&description, 1024));
    items.push(item);
    obj.put(sequence(tags::CONTRIBUTING_EQUIPMENT_SEQUENCE, items));
}

/// Our private block: the creator at (0071,0010), elements at (0071,10xx).
/// Written by hand: dicom-object's `put_private_element` puts the creator at
/// (gggg,0001), which PS3.5 7.8.1 does not allow.
fn put_private_block(obj: &mut InMemDicomObject, p: &Provenance) {
    put_str(obj, Tag(PRIVATE_GROUP, 0x0010), VR::LO, PRIVATE_CREATOR);
    obj.put(DataElement::new(PRIVATE_SCORE, VR::FD, PrimitiveValue::from(p.score)));
    obj.put(DataElement::new(PRIVATE_HOLD_THRESHOLD, VR::FD, PrimitiveValue::from(p.hold_threshold)));
    put_str(obj, PRIVATE_BUNDLE_SHA256, VR::LO, &truncate(&ascii(&p.bundle_sha256), 64));
    put_str(obj, PRIVATE_MODEL_NAME, VR::LO, &truncate(&ascii(&p.model_name), 64));
    put_str(obj, PRIVATE_MODEL_VERSION, VR::LO, &truncate(&ascii(&p.model_version), 64));
    obj.put(DataElement::new(PRIVATE_T0, VR::UL, PrimitiveValue::from(p.t0.min(u32::MAX as usize) as u32)));
    obj.put(DataElement::new(PRIVATE_STEPS, VR::UL, PrimitiveValue::from(p.steps.min(u32::MAX as usize) as u32)));
    put_str(obj, PRIVATE_PRECISION, VR::LO, &truncate(&ascii(&p.precision), 64));
    put_str(obj, PRIVATE_DEVICE, VR::LO, &truncate(&ascii(&p.device), 64));
    if !p.score_components.is_empty() {
        let names: Vec<String> =
            p.score_components.iter().map(|(n, _)| truncate(&ascii(n).replace('\\', "/"), 64)).collect();
        let values: Vec<f64> = p.score_components.iter().map(|(_, v)| *v).collect();
        obj.put(DataElement::new(PRIVATE_COMPONENT_NAMES, VR::LO, PrimitiveValue::Strs(names.into())));
        obj.put(DataElement::new(PRIVATE_COMPONENT_VALUES, VR::FD, PrimitiveValue::F64(values.into())));
    }
}

/// A Source Image Sequence item with Purpose of Reference 121322.
fn image_reference(sop_class: &str, sop_instance: &str, spatial_locations_preserved: Option<bool>) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_uid(&mut item, tags::REFERENCED_SOP_CLASS_UID, sop_class);
    put_uid(&mut item, tags::REFERENCED_SOP_INSTANCE_UID, sop_instance);
    if let Some(preserved) = spatial_locations_preserved {
        put_str(&mut item, tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, if preserved { "YES" } else { "NO" });
    }
    item.put(sequence(
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![code("121322", "DCM", "Source image for image processing operation")],
    ));
    item
}

/// A code sequence item (Code Value, Coding Scheme Designator, Code Meaning).
fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_str(&mut item, tags::CODE_VALUE, VR::SH, value);
    put_str(&mut item, tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme);
    put_str(&mut item, tags::CODE_MEANING, VR::LO, meaning);
    item
}

fn sequence(tag: Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

fn put_uid(obj: &mut InMemDicomObject, tag: Tag, uid: &str) {
    obj.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(uid)));
}

fn trim(s: &str) -> &str {
    s.trim_matches(['\0', ' '])
}

fn get_str(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.get(tag).and_then(|e| e.to_str().ok()).map(|s| trim(&s).to_string()).filter(|s| !s.is_empty())
}

fn get_multi_str(obj: &InMemDicomObject, tag: Tag) -> Vec<String> {
    obj.get(tag)
        .and_then(|e| e.to_multi_str().ok())
        .map(|v| v.iter().map(|s| trim(s).to_string()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

fn get_u16(obj: &InMemDicomObject, tag: Tag) -> Option<u16> {
    obj.get(tag).and_then(|e| e.to_int::<u16>().ok())
}

fn image_rows(obj: &InMemDicomObject) -> u32 {
    get_u16(obj, tags::ROWS).map(u32::from).unwrap_or(0)
}

fn image_columns(obj: &InMemDicomObject) -> u32 {
    get_u16(obj, tags::COLUMNS).map(u32::from).unwrap_or(0)
}

fn required_str(obj: &InMemDicomObject, tag: Tag, name: &'static str) -> Result<String, DeriveError> {
    get_str(obj, tag).ok_or(DeriveError::Missing { name, tag })
}

fn required_u16(obj: &InMemDicomObject, tag: Tag, name: &'static str) -> Result<u16, DeriveError> {
    let e = obj.get(tag).ok_or(DeriveError::Missing { name, tag })?;
    e.to_int::<u16>().map_err(|err| DeriveError::Invalid { name, tag, reason: err.to_string() })
}

/// Whether an element has no value (or only padding, or a sequence with no items).
fn is_empty(e: &DataElement<InMemDicomObject>) -> bool {
    if let Some(items) = e.items() {
        return items.is_empty();
    }
    match e.value().to_str() {
        Ok(s) => trim(&s).is_empty(),
        Err(_) => false,
    }
}

/// Printable ASCII only: our text goes into LO/ST elements of any character set.
fn ascii(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii() && !c.is_ascii_control() { c } else { '?' }).collect()
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// A decimal string of at most 16 characters.
fn ds(value: f64) -> String {
    for precision in (0..=6).rev() {
        let s = format!("{value:.precision$}");
        let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{value:.3e}")
}

/// `created` in the source's Timezone Offset From UTC when it has one (its
/// dates and times are in that zone), else in UTC.
fn local_time(source: &InMemDicomObject, created: DateTime<Utc>) -> DateTime<FixedOffset> {
    let offset = get_str(source, tags::TIMEZONE_OFFSET_FROM_UTC).and_then(|s| {
        let (sign, digits) = match s.as_bytes().first()? {
            b'+' => (1, &s[1..]),
            b'-' => (-1, &s[1..]),
            _ => return None,
        };
        if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let hours: i32 = digits[..2].parse().ok()?;
        let minutes: i32 = digits[2..].parse().ok()?;
        FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60))
    });
    created.with_timezone(&offset.unwrap_or(FixedOffset::east_opt(0).expect("zero offset")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_deterministic_version_8_and_short() {
        let a = uid_from_parts(&[b"1.2.3", b"abc"]);
        assert_eq!(a, uid_from_parts(&[b"1.2.3", b"abc"]));
        assert_ne!(a, uid_from_parts(&[b"1.2.3a", b"bc"]));
        assert!(a.starts_with("2.25.") && a.len() <= 64, "{a}");
        let value: u128 = a[5..].parse().unwrap();
        let bytes = value.to_be_bytes();
        assert_eq!(bytes[6] >> 4, 8, "version nibble");
        assert_eq!(bytes[8] >> 6, 0b10, "variant bits");
        assert!(!a[5..].starts_with('0'));
    }

    #[test]
    fn decimal_strings_fit_16_characters() {
        assert_eq!(ds(10.0), "10");
        assert_eq!(ds(2.5), "2.5");
        assert!(ds(123_456_789.123_457).len() <= 16);
        assert!(ds(-0.000123456789).len() <= 16);
    }

    #[test]
    fn description_is_at_most_1024_characters() {
        let p = Provenance {
            derived_sop_instance_uid: "2.25.1".into(),
            derived_series_instance_uid: "2.25.2".into(),
            model_name: "x".repeat(2000),
            model_version: "1".into(),
            bundle_sha256: "0".repeat(64),
            t0: 200,
            steps: 10,
            precision: "f32".into(),
            device: "cpu".into(),
            score: 0.5,
            score_components: vec![("a".into(), 0.1)],
            hold_threshold: 0.7,
            software_version: "0.1.0".into(),
            created: Utc::now(),
        };
        assert_eq!(derivation_description(&p).chars().count(), 1024);
    }
}
