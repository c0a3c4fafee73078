//! What an evaluation found: the schema of `report.json` (written by
//! [`crate::evaluate`], drawn by [`crate::report`], read back by `compare`
//! and the bundle manifest's metrics table), and the methods it compares.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::baselines::{ClaheParams, NlmParams};
use crate::bootstrap::Interval;
use crate::classifier;
use crate::data;
use crate::degrade::DegradationRanges;

/// The methods every report compares, in table order.
pub const METHODS: [(&str, &str); 8] = [
    ("high-quality", "High quality (ground truth)"),
    ("low-quality", "Low quality (simulated, no enhancement)"),
    ("clahe", "CLAHE (8x8 tiles, clip 2.0)"),
    ("histeq", "Histogram equalisation"),
    ("nlm", "NLM denoise"),
    ("nlm-stretch", "NLM denoise + 1-99% stretch"),
    ("first-stage", "First stage alone"),
    ("led", "LED (first stage + diffusion refinement)"),
];

/// The method every other is compared with, pairwise.
pub const BAR: &str = "nlm-stretch";

/// A method's paired differences to [`BAR`] on the same images (method minus bar).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Differences {
    /// PSNR difference in dB.
    pub psnr_db: Option<Interval>,
    /// SSIM difference.
    pub ssim: Option<Interval>,
    /// Accuracy difference (fraction of images).
    pub accuracy: Option<Interval>,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodResult {
    /// Key (see [`METHODS`]).
    pub method: String,
    /// Human-readable name.
    pub label: String,
    /// Mean PSNR against ground truth in dB (null for ground truth itself).
    pub psnr_mean: Option<f64>,
    /// Standard deviation of the per-image PSNR.
    pub psnr_std: Option<f64>,
    /// Mean SSIM against ground truth.
    pub ssim_mean: Option<f64>,
    /// Standard deviation of the per-image SSIM.
    pub ssim_std: Option<f64>,
    /// Classifier accuracy on this version of the test images.
    pub accuracy: f64,
    /// (accuracy - low-quality accuracy) / (high-quality - low-quality accuracy); null when there is no gap.
    pub gap_closed: Option<f64>,
    /// Images per second of the method alone (null for the inputs).
    pub images_per_second: Option<f64>,
    /// 95% bootstrap interval of the mean PSNR.
    #[serde(default)]
    pub psnr_interval: Option<Interval>,
    /// 95% bootstrap interval of the mean SSIM.
    #[serde(default)]
    pub ssim_interval: Option<Interval>,
    /// 95% bootstrap interval of the accuracy.
    #[serde(default)]
    pub accuracy_interval: Option<Interval>,
    /// Paired differences to NLM + stretch.
    #[serde(default)]
    pub versus_bar: Option<Differences>,
    /// Mean hallucination-check score of the output against its low-quality
    /// input (the daemon's check, the bundle's calibration), for the model's rows.
    #[serde(default)]
    pub hallucination_score: Option<Interval>,
    /// Share of the outputs the check would hold at the bundle's threshold.
    #[serde(default)]
    pub held: Option<f64>,
}

/// One method at the images' own matrix size (`--native`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NativeRow {
    /// Key (see [`METHODS`]).
    pub method: String,
    /// Human-readable name.
    pub label: String,
    /// Mean PSNR (dB) with its interval.
    pub psnr: Interval,
    /// Mean SSIM with its interval.
    pub ssim: Interval,
    /// Paired differences to NLM + stretch.
    pub versus_bar: Differences,
    /// Seconds per image of the method alone (null for the input).
    pub seconds_per_image: Option<f64>,
}

/// PSNR and SSIM at the images' own matrix size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NativeReport {
    /// The folder.
    pub folder: String,
    /// Images measured.
    pub images: usize,
    /// Their sizes (width x height), as found.
    pub sizes: Vec<String>,
    /// Deviation Index of the simulated images: min, mean, max.
    pub deviation_index: [f64; 3],
    /// The rows.
    pub methods: Vec<NativeRow>,
    /// Files of the folder that could not be used (not measured).
    #[serde(default)]
    pub skipped: Vec<data::Skipped>,
}

/// `--ceiling`: the classifier on high-quality images changed without any
/// degradation, paired with its accuracy on the originals.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CeilingRow {
    /// What was done to the high-quality images.
    pub label: String,
    /// Accuracy with its interval.
    pub accuracy: Interval,
    /// Paired difference to the accuracy on the unchanged images (points as a fraction).
    pub versus_high_quality: Interval,
    /// How far the changed images are from the originals: PSNR (dB) and SSIM.
    #[serde(default)]
    pub psnr: Option<Interval>,
    /// SSIM against the originals.
    #[serde(default)]
    pub ssim: Option<Interval>,
}

/// Everything `report.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvaluationReport {
    /// The command that produced this report.
    pub command: String,
    /// Device the enhancement and classification ran on.
    pub device: String,
    /// CPU threads libtorch used.
    pub threads: i64,
    /// Side the images were evaluated at.
    pub size: u32,
    /// Seed of the diffusion noise.
    pub seed: u64,
    /// The refinement start the LED row used (0: none).
    #[serde(default)]
    pub t0: usize,
    /// The DDIM steps the LED row used.
    #[serde(default)]
    pub steps: usize,
    /// What the first stage is.
    #[serde(default)]
    pub first_stage: String,
    /// Which built-in ranges, or the file, the simulator drew from.
    #[serde(default)]
    pub ranges_name: String,
    /// Test images per class.
    pub test_images: Vec<(String, usize)>,
    /// Images per class and split of the whole labelled set.
    pub data: Vec<ClassSummary>,
    /// The evaluated bundle.
    pub bundle: BundleSummary,
    /// The classifier and how it was trained.
    pub classifier: classifier::ClassifierConfig,
    /// sha256 of the classifier's weights (absent in reports written before it was recorded).
    #[serde(default)]
    pub classifier_sha256: String,
    /// The simulator's ranges.
    pub simulator_ranges: DegradationRanges,
    /// Deviation Index of the simulated test images: min, mean, max.
    pub deviation_index: [f64; 3],
    /// CLAHE parameters.
    pub clahe: ClaheParams,
    /// NLM parameters.
    pub nlm: NlmParams,
    /// The table.
    pub methods: Vec<MethodResult>,
    /// The same at the images' own size, on `--native` (PSNR, SSIM).
    #[serde(default)]
    pub native: Option<NativeReport>,
    /// Test-split files that could not be read (not in the table).
    #[serde(default)]
    pub skipped: Vec<data::Skipped>,
    /// `--ceiling` rows (empty without it).
    #[serde(default)]
    pub ceiling: Vec<CeilingRow>,
    /// Figures written beside report.json.
    pub figures: Vec<String>,
}

/// Images of one class per split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassSummary {
    /// Class name.
    pub class: String,
    /// Folders.
    pub folders: Vec<String>,
    /// Train, validation, test images.
    pub train: usize,
    /// Validation images.
    pub validation: usize,
    /// Test images.
    pub test: usize,
}

/// What the evaluated bundle is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleSummary {
    /// Manifest name.
    pub name: String,
    /// Manifest version.
    pub version: String,
    /// sha256 of bundle.toml.
    pub sha256: String,
    /// Manifest description.
    pub description: String,
    /// How it was trained (`[training] method`).
    pub training_method: String,
    /// The command that made it (`[training] command`), when recorded.
    pub training_command: Option<String>,
    /// True when the weights are an untrained initialisation (LED rows are then no result).
    pub random_weights: bool,
    /// True when the bundle has no `[hallucination]` calibration: the check
    /// rows then use the uncalibrated defaults, not what the daemon would decide.
    #[serde(default)]
    pub uncalibrated_check: bool,
}

/// Reads a `report.json` written by `evaluate`.
pub fn read_report(path: &Path) -> anyhow::Result<EvaluationReport> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a report.json from `cxr-led-train evaluate`", path.display()))
}
