//! The exposure gate and pixel decoding on the real fixtures: which rule
//! decides and with what numbers, every transfer syntax decodes to the same
//! image, and stored values survive the trip to display intensity and back.

mod common;

use cxr_led_daemon::config::ExposureConfig;
use cxr_led_daemon::pipeline::triage::{self, Rule};
use cxr_led_dicom::derive::StoredPixels;
use cxr_led_dicom::pixels;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{open_file, DefaultDicomObject};

fn fixture(name: &str) -> DefaultDicomObject {
    open_file(common::fixture(name)).expect("fixture opens")
}

fn set_ds(object: &mut DefaultDicomObject, tag: dicom_core::Tag, value: &str) {
    object.put(DataElement::new(tag, VR::DS, PrimitiveValue::from(value)));
}

#[test]
fn deviation_index_minus_7_is_flagged() {
    let decision = triage::decide_from_tags(&fixture("dx_image.dcm"), &ExposureConfig::default()).unwrap();
    assert!(decision.flagged);
    assert_eq!(decision.rule, Rule::DeviationIndex);
    assert_eq!(decision.deviation_index, Some(-7.0));
    assert_eq!(decision.threshold, Some(-3.0));
    assert_eq!((decision.exposure_index, decision.target_exposure_index), (Some(176.0), Some(876.0)));
}

#[test]
fn deviation_index_is_computed_from_exposure_indices_when_missing() {
    let mut object = fixture("dx_image.dcm");
    object.remove_element(tags::DEVIATION_INDEX);
    let decision = triage::decide_from_tags(&object, &ExposureConfig::default()).unwrap();
    assert_eq!(decision.rule, Rule::ExposureIndex);
    let di = decision.deviation_index.unwrap();
    assert!((di - 10.0 * (176.0f64 / 876.0).log10()).abs() < 1e-9 && decision.flagged, "DI {di}");
}

#[test]
fn a_well_exposed_image_and_the_threshold_boundary_pass() {
    let config = ExposureConfig::default();
    for di in ["0.5", "-1.5", "-3.0"] {
        let mut object = fixture("dx_image.dcm");
        set_ds(&mut object, tags::DEVIATION_INDEX, di);
        let decision = triage::decide_from_tags(&object, &config).unwrap();
        assert!(!decision.flagged, "DI {di} must pass: {}", decision.reason);
    }
    // A site that repeats at "consult" level tunes the threshold.
    let strict = ExposureConfig { flag_below_deviation_index: -1.0, ..ExposureConfig::default() };
    let mut object = fixture("dx_image.dcm");
    set_ds(&mut object, tags::DEVIATION_INDEX, "-1.5");
    assert!(triage::decide_from_tags(&object, &strict).unwrap().flagged);
}

#[test]
fn a_malformed_deviation_index_falls_through_to_the_exposure_indices() {
    let mut object = fixture("dx_image.dcm");
    set_ds(&mut object, tags::DEVIATION_INDEX, "n/a");
    let decision = triage::decide_from_tags(&object, &ExposureConfig::default()).unwrap();
    assert_eq!(decision.rule, Rule::ExposureIndex);
}

#[test]
fn other_body_parts_and_sop_classes_are_not_applicable() {
    let decision = triage::decide_from_tags(&fixture("CR1_6154.dcm"), &ExposureConfig::default()).unwrap();
    assert_eq!(decision.rule, Rule::NotApplicable);
    assert!(!decision.flagged);
    assert!(decision.reason.contains("CSPINE"), "{}", decision.reason);
}

#[test]
fn without_exposure_tags_the_image_noise_decides() {
    let config = ExposureConfig::default();
    let object = fixture("RG1_UNCR.dcm");
    assert!(triage::decide_from_tags(&object, &config).is_none(), "RG1 carries no exposure tags");
    let image = pixels::decode_display(&object).unwrap();
    assert_eq!((image.rows, image.columns), (1955, 1841));
    let clean = triage::decide_from_image(&image, &config);
    assert_eq!(clean.rule, Rule::ImageStatistics);
    assert!(!clean.flagged, "the clinical image is not under-exposed: {}", clean.reason);

    // The same image with the quantum noise of a much lower dose.
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let noise = Normal::new(0.0f32, 0.06).unwrap();
    let mut noisy = image.clone();
    for p in &mut noisy.pixels {
        *p = (*p + noise.sample(&mut rng)).clamp(0.0, 1.0);
    }
    let low_dose = triage::decide_from_image(&noisy, &config);
    assert!(low_dose.flagged, "{}", low_dose.reason);
    assert!(low_dose.noise_sigma.unwrap() > clean.noise_sigma.unwrap() * 2.0);
}

#[test]
fn every_transfer_syntax_decodes_to_the_same_image() {
    let reference = pixels::decode_display(&fixture("RG1_UNCR.dcm")).unwrap();
    let lossless = pixels::decode_display(&fixture("RG1_J2KR.dcm")).unwrap();
    assert_eq!(lossless.stored, reference.stored, "JPEG 2000 lossless is exact");
    for (name, tolerance) in [("RG1_JLSN.dcm", 16), ("RG1_J2KI.dcm", 2048)] {
        let lossy = pixels::decode_display(&fixture(name)).unwrap();
        assert_eq!((lossy.rows, lossy.columns), (reference.rows, reference.columns));
        let max = lossy.stored.iter().zip(&reference.stored).map(|(a, b)| (a - b).abs()).max().unwrap();
        let mean = lossy.stored.iter().zip(&reference.stored).map(|(a, b)| (a - b).abs()).sum::<i64>() as f64
            / reference.stored.len() as f64;
        assert!(max <= tolerance, "{name}: max difference {max}");
        assert!(mean < 100.0, "{name}: mean difference {mean}");
    }
}

#[test]
fn stored_values_survive_display_and_back() {
    for name in ["dx_image.dcm", "CR1_6154.dcm", "RG1_UNCR.dcm"] {
        let object = fixture(name);
        let image = pixels::decode_display(&object).unwrap();
        assert!(image.pixels.iter().all(|p| (0.0..=1.0).contains(p)));
        let back = pixels::to_stored(&image, &image.pixels);
        let words: Vec<i64> = match back {
            StoredPixels::U8(v) => v.into_iter().map(i64::from).collect(),
            StoredPixels::U16(v) => v.into_iter().map(i64::from).collect(),
        };
        assert_eq!(words, image.stored, "{name}");
    }
}

#[test]
fn monochrome1_displays_bone_white() {
    // RG1 is a MONOCHROME1 chest CR: high stored values are dark; the lungs
    // (air) must come out darker than the mediastinum on the display image.
    let image = pixels::decode_display(&fixture("RG1_UNCR.dcm")).unwrap();
    assert!(image.mapping.inverted);
    let (rows, cols) = (image.rows as usize, image.columns as usize);
    let mean = |cy: usize, cx: usize| {
        let mut sum = 0.0;
        for y in cy - 50..cy + 50 {
            for x in cx - 50..cx + 50 {
                sum += image.pixels[y * cols + x];
            }
        }
        sum / 10_000.0
    };
    let lung = (mean(rows / 2, cols / 4) + mean(rows / 2, 3 * cols / 4)) / 2.0;
    let mediastinum = mean(rows / 2, cols / 2);
    assert!(mediastinum > lung, "mediastinum {mediastinum} lung {lung}");
}

#[test]
fn colour_and_multiframe_are_refused_with_the_reason() {
    let mut object = fixture("dx_image.dcm");
    object.put(DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, PrimitiveValue::from("RGB")));
    let err = pixels::decode_display(&object).unwrap_err().to_string();
    assert!(err.contains("RGB"), "{err}");
    let mut object = fixture("dx_image.dcm");
    object.put(DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, PrimitiveValue::from("3")));
    let err = pixels::decode_display(&object).unwrap_err().to_string();
    assert!(err.contains("frames"), "{err}");
}

#[test]
fn our_own_derived_instances_are_never_enhanced_again() {
    // The derived instance keeps the source's DI -7; only the private block
    // tells it apart, and the gate must see it.
    let mut object = fixture("dx_image.dcm");
    object.put(DataElement::new(
        dicom_core::Tag(cxr_led_dicom::derive::PRIVATE_GROUP, 0x0010),
        VR::LO,
        PrimitiveValue::from(cxr_led_dicom::derive::PRIVATE_CREATOR),
    ));
    let decision = triage::decide_from_tags(&object, &ExposureConfig::default()).unwrap();
    assert_eq!(decision.rule, Rule::NotApplicable);
    assert!(!decision.flagged, "{}", decision.reason);
}
