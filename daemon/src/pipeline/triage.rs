//! The exposure gate: is this radiograph under-exposed enough to enhance?
//!
//! Rules, in order (the first that applies decides, and the decision records
//! which one and its numbers):
//! 1. `deviation-index`: Deviation Index (0018,1413) as written by the
//!    modality (IEC 62494-1; DI = 10 log10(EI / EI_T), so -3 is half the
//!    target dose, -7 a fifth, -10 a tenth).
//! 2. `exposure-index`: DI computed from Exposure Index (0018,1411) and
//!    Target Exposure Index (0018,1412) when DI itself is missing.
//! 3. `image-statistics`: no exposure tags; the noise level of the display
//!    image (Immerkaer's estimator, robust to edges) measured against a
//!    threshold. Quantum noise grows as dose falls (SNR ~ sqrt(dose)), so a
//!    noisy display image is the signature of too few photons.
//!
//! Before any rule, `not-applicable` refuses what the model was not built
//! for (not a CR/DX image, not a chest, colour, multi-frame), so nothing is
//! enhanced by accident.

use cxr_led_dicom::pixels::{optional_str, DisplayImage};
use cxr_led_dicom::uids::PROJECTION_RADIOGRAPHY;
use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use serde::Serialize;

use crate::config::ExposureConfig;

/// Which rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// The instance is not a radiograph the model handles.
    NotApplicable,
    /// The modality's Deviation Index.
    DeviationIndex,
    /// DI computed from EI and the target EI.
    ExposureIndex,
    /// The noise level of the image itself.
    ImageStatistics,
}

impl Rule {
    /// The name stored in `exposure_decision.rule`.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::NotApplicable => "not-applicable",
            Rule::DeviationIndex => "deviation-index",
            Rule::ExposureIndex => "exposure-index",
            Rule::ImageStatistics => "image-statistics",
        }
    }
}

/// The gate's decision and the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Whether the image goes on to enhancement.
    pub flagged: bool,
    /// Which rule decided.
    pub rule: Rule,
    /// Deviation Index used (read or computed).
    pub deviation_index: Option<f64>,
    /// Exposure Index read.
    pub exposure_index: Option<f64>,
    /// Target Exposure Index read.
    pub target_exposure_index: Option<f64>,
    /// The threshold the rule compared against.
    pub threshold: Option<f64>,
    /// Noise level of the display image (image-statistics rule), in display units.
    pub noise_sigma: Option<f64>,
    /// Why, in words (stored with the decision and shown to auditors).
    pub reason: String,
}

impl Decision {
    /// The decision for an image the model was not built for (or cannot examine).
    pub fn not_applicable(reason: String) -> Decision {
        Decision {
            flagged: false,
            rule: Rule::NotApplicable,
            deviation_index: None,
            exposure_index: None,
            target_exposure_index: None,
            threshold: None,
            noise_sigma: None,
            reason,
        }
    }
}

/// A DS value: the first of possibly several, `None` when absent, empty or not a finite number.
fn decimal(object: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<f64> {
    optional_str(object, tag)?.split('\\').next()?.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Whether the instance is one the model was built for; `Err` says why not.
pub fn applicability(object: &DefaultDicomObject, config: &ExposureConfig) -> Result<(), String> {
    // Our own output must never come back in: a PACS that forwards every
    // new instance would otherwise send the derived image (which keeps the
    // source's exposure tags) round the loop for ever.
    let creator = dicom_core::Tag(cxr_led_dicom::derive::PRIVATE_GROUP, 0x0010);
    if optional_str(object, creator).as_deref() == Some(cxr_led_dicom::derive::PRIVATE_CREATOR) {
        return Err("a cxr-led derived instance (private block CXR-LED): never enhanced again".into());
    }
    let sop_class = object.meta().media_storage_sop_class_uid().trim_end_matches('\0').to_string();
    if !PROJECTION_RADIOGRAPHY.contains(&sop_class.as_str()) {
        return Err(format!("SOP class {sop_class} is not CR or DX"));
    }
    if let Some(body_part) = optional_str(object, tags::BODY_PART_EXAMINED) {
        let body_part = body_part.to_ascii_uppercase();
        if !config.body_parts.iter().any(|b| b.eq_ignore_ascii_case(&body_part)) {
            return Err(format!("Body Part Examined {body_part} is not one of {:?}", config.body_parts));
        }
    }
    Ok(())
}

/// Decides from the exposure tags alone; `None` when the image carries none
/// (then [`decide_from_image`] decides).
pub fn decide_from_tags(object: &DefaultDicomObject, config: &ExposureConfig) -> Option<Decision> {
    if let Err(reason) = applicability(object, config) {
        return Some(Decision::not_applicable(reason));
    }
    let deviation_index = decimal(object, tags::DEVIATION_INDEX);
    let exposure_index = decimal(object, tags::EXPOSURE_INDEX);
    let target_exposure_index = decimal(object, tags::TARGET_EXPOSURE_INDEX);
    let threshold = config.flag_below_deviation_index;
    let (rule, di) = match (deviation_index, exposure_index, target_exposure_index) {
        (Some(di), _, _) => (Rule::DeviationIndex, di),
        (None, Some(ei), Some(target)) if ei > 0.0 && target > 0.0 => {
            (Rule::ExposureIndex, 10.0 * (ei / target).log10())
        }
        _ => return None,
    };
    let flagged = di < threshold;
    let reason = format!(
        "DI {di:.2} {} {threshold:.2} ({})",
        if flagged { "below" } else { "not below" },
        match rule {
            Rule::DeviationIndex => "Deviation Index tag",
            _ => "10 log10(EI / target EI)",
        }
    );
    Some(Decision {
        flagged,
        rule,
        deviation_index: Some(di),
        exposure_index,
        target_exposure_index,
        threshold: Some(threshold),
        noise_sigma: None,
        reason,
    })
}

/// Decides from the display image's noise level (no exposure tags).
pub fn decide_from_image(image: &DisplayImage, config: &ExposureConfig) -> Decision {
    let sigma = noise_sigma(&image.pixels, image.rows as usize, image.columns as usize);
    let threshold = config.flag_above_noise_sigma;
    let flagged = sigma > threshold;
    Decision {
        flagged,
        rule: Rule::ImageStatistics,
        deviation_index: None,
        exposure_index: None,
        target_exposure_index: None,
        threshold: Some(threshold),
        noise_sigma: Some(sigma),
        reason: format!(
            "no exposure tags; display noise sigma {sigma:.4} {} {threshold:.4}",
            if flagged { "above" } else { "not above" }
        ),
    }
}

/// E[|X| ; |X| below its 90th percentile] / E|X| for a normal X:
/// 2 (phi(0) - phi(1.6449)) / 0.9 / sqrt(2 / pi).
const TRIMMED_HALF_NORMAL_MEAN: f64 = 0.823_87;

/// The noise standard deviation of an image (Immerkaer 1996, "Fast noise
/// variance estimation"): the mean absolute response to a Laplacian-difference
/// mask that cancels smooth structure, excluding the strongest 10% of
/// responses so that edges (ribs, borders) do not count as noise.
pub fn noise_sigma(pixels: &[f32], rows: usize, columns: usize) -> f64 {
    if rows < 3 || columns < 3 {
        return 0.0;
    }
    let at = |y: usize, x: usize| f64::from(pixels[y * columns + x]);
    let mut responses = Vec::with_capacity((rows - 2) * (columns - 2));
    for y in 1..rows - 1 {
        for x in 1..columns - 1 {
            let r = at(y - 1, x - 1) - 2.0 * at(y - 1, x) + at(y - 1, x + 1) - 2.0 * at(y, x - 1) + 4.0 * at(y, x)
                - 2.0 * at(y, x + 1)
                + at(y + 1, x - 1)
                - 2.0 * at(y + 1, x)
                + at(y + 1, x + 1);
            responses.push(r.abs());
        }
    }
    let keep = (responses.len() * 9 / 10).max(1);
    responses.select_nth_unstable_by(keep - 1, f64::total_cmp);
    let mean = responses[..keep].iter().sum::<f64>() / keep as f64;
    // The mask's weights square-sum to 36, so for Gaussian noise r ~ N(0, 36
    // sigma^2) and E|r| = 6 sigma sqrt(2/pi) (Immerkaer's sqrt(pi/2) / 6).
    // Dropping the top 10% of |r| lowers the mean of a half-normal by the
    // factor TRIMMED_HALF_NORMAL_MEAN; undo it.
    mean * (std::f64::consts::PI / 2.0).sqrt() / 6.0 / TRIMMED_HALF_NORMAL_MEAN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_sigma_of_flat_gaussian_noise() {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let normal = Normal::new(0.5f32, 0.05).unwrap();
        let pixels: Vec<f32> = (0..256 * 256).map(|_| normal.sample(&mut rng)).collect();
        let sigma = noise_sigma(&pixels, 256, 256);
        assert!((0.047..0.053).contains(&sigma), "sigma {sigma}");
    }

    #[test]
    fn noise_sigma_ignores_a_smooth_ramp() {
        let pixels: Vec<f32> = (0..128 * 128).map(|i| (i % 128) as f32 / 128.0).collect();
        assert!(noise_sigma(&pixels, 128, 128) < 1e-6);
    }
}
