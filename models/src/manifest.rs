//! `bundle.toml` as data: the manifest and every table it embeds (the
//! inference defaults, the hallucination check's calibration), with no file
//! I/O (the bundle module reads and writes it) and no model code (LED
//! inference and the hallucination check use it). Everything that needs a
//! manifest imports this module, and it imports only the networks'
//! architecture configurations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::nets::enhancer::EnhancerConfig;
use crate::nets::generator::GeneratorConfig;
use crate::nets::unet::UNetConfig;
use crate::sampling::sampler::DdimSampler;
use crate::sampling::schedule::{NoiseSchedule, ScheduleConfig};
use crate::tiling::TileConfig;
use crate::{Error, Result};

/// The manifest format this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// The inference networks of a bundle whose first stage is CycleGAN's G_AB,
/// each in `<name>.safetensors`.
pub const NETWORKS: [&str; 3] = ["g_ab", "g_ba", "unet"];
/// The inference networks of a bundle whose first stage is the paired
/// [`Enhancer`](crate::nets::enhancer::Enhancer) (`[enhancer]` in the manifest).
pub const ENHANCER_NETWORKS: [&str; 3] = ["enhancer", "g_ba", "unet"];

/// How pixel values map to the model's input range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Normalisation {
    /// What the caller must supply, in words.
    pub input: String,
    /// Range the networks see: input intensity 0 maps to the first, 1 to the second.
    pub model_range: [f64; 2],
}

impl Default for Normalisation {
    fn default() -> Self {
        Self {
            input: "display intensity in [0, 1], 0 black (air), 1 white (bone): MONOCHROME2 after \
                    modality rescale and VOI window"
                .into(),
            model_range: [-1.0, 1.0],
        }
    }
}

/// One weight file: where it is and what its bytes hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct WeightFile {
    /// File name inside the bundle folder (no folders).
    pub path: String,
    /// Lower-case hex sha256 of the file.
    pub sha256: String,
}

/// `bundle.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct BundleManifest {
    /// Manifest format version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// Bundle name, e.g. `cxr-led-default`.
    pub name: String,
    /// Bundle version, e.g. `1.0.0`.
    pub version: String,
    /// One paragraph for humans: what it is for, what it was trained on.
    #[serde(default)]
    pub description: String,
    /// Pixel normalisation.
    pub normalisation: Normalisation,
    /// G_AB and G_BA architecture.
    pub generator: GeneratorConfig,
    /// The paired first stage's architecture; when present it replaces G_AB
    /// (file `enhancer`), and G_BA stays for the hallucination check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhancer: Option<EnhancerConfig>,
    /// Conditional UNet architecture.
    pub unet: UNetConfig,
    /// Noise schedule.
    pub schedule: ScheduleConfig,
    /// Inference defaults.
    pub inference: EnhanceParams,
    /// Training provenance: data summary, degradation parameters, command, commit.
    #[serde(default)]
    pub training: toml::Table,
    /// Evaluation figures.
    #[serde(default)]
    pub metrics: toml::Table,
    /// The hallucination check's calibration: hold threshold, configuration
    /// and the benchmark figures they were chosen on (absent: uncalibrated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hallucination: Option<HallucinationCalibration>,
    /// Weight files by network name ([`NETWORKS`]).
    #[serde(default)]
    pub files: BTreeMap<String, WeightFile>,
}

impl BundleManifest {
    /// The weight files this manifest's architecture needs, first stage first.
    pub fn networks(&self) -> [&'static str; 3] {
        if self.enhancer.is_some() {
            ENHANCER_NETWORKS
        } else {
            NETWORKS
        }
    }
}

/// Floating-point precision of inference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// 32-bit float everywhere (the reference).
    #[default]
    F32,
    /// IEEE half precision weights and activations (CUDA only).
    F16,
    /// bfloat16 weights and activations (CUDA, or a CPU with bf16 support:
    /// AVX-512 BF16 or AMX).
    Bf16,
}

impl Precision {
    /// The tensor kind of weights and activations.
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::F16 => Kind::Half,
            Precision::Bf16 => Kind::BFloat16,
        }
    }
}

/// What an enhancement does: the refinement start, the DDIM steps, the tiling
/// and the precision. Defaults live in each bundle's `[inference]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EnhanceParams {
    /// Timestep the first-stage estimate is noised to (a multiple of
    /// `steps`, below T); 0: no refinement, the estimate is the output.
    pub t0: usize,
    /// DDIM calls of the UNet from t0 to the clean image.
    pub steps: usize,
    /// Tiling of native-size images.
    pub tiles: TileConfig,
    /// Precision of inference.
    #[serde(default)]
    pub precision: Precision,
}

impl EnhanceParams {
    /// Whether the diffusion model refines the estimate (t0 > 0).
    pub fn refines(&self) -> bool {
        self.t0 > 0
    }

    /// The DDIM refinement these parameters ask for (None for t0 = 0);
    /// refuses a t0 that is not a multiple of the steps.
    pub fn sampler(&self, schedule: &NoiseSchedule) -> Result<Option<DdimSampler>> {
        if self.refines() {
            Ok(Some(DdimSampler::refinement(schedule, self.t0, self.steps)?))
        } else {
            Ok(None)
        }
    }
}

/// The component names, in report order.
pub const COMPONENTS: [&str; 7] = [
    "fine-structure",
    "medium-structure",
    "coarse-structure",
    "texture-energy",
    "line-structure",
    "cycle-consistency",
    "diffusion-spread",
];

/// How one component's raw statistic (a z-like number, 0 = no evidence)
/// becomes a value in [0, 1], and how much it counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ComponentConfig {
    /// Gaussian width in working pixels the component looks at (for
    /// `texture-energy` the window of the local mean; for `diffusion-spread`
    /// the width the samples are compared at).
    pub scale: f64,
    /// Weight in [0, 1] in the noisy-or; 0 turns the component off.
    pub weight: f64,
    /// Raw value below which there is no doubt (what faithful outputs reach).
    pub offset: f64,
    /// Raw value above the offset at which the component reaches 1 - 1/e.
    pub spread: f64,
}

impl ComponentConfig {
    pub(crate) fn new(scale: f64, weight: f64, offset: f64, spread: f64) -> Self {
        Self { scale, weight, offset, spread }
    }

    /// The line component of bundles calibrated before it existed: weight 0.
    pub(crate) fn line_off() -> Self {
        Self::new(4.0, 0.0, 5.0, 4.0)
    }

    /// Maps a raw statistic (a tensor of them) to [0, 1].
    pub(crate) fn squash(&self, raw: &Tensor) -> Tensor {
        let excess = (raw - self.offset).clamp_min(0.0) / self.spread.max(1e-6);
        (-(excess.neg().exp()) + 1.0).clamp(0.0, 1.0)
    }
}

/// Everything the score depends on besides the images and the model. The
/// defaults are the calibration measured on the planted-hallucination
/// benchmark (see the README section "Hallucination-check score").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct HallucinationConfig {
    /// Longest side of the working images; larger inputs are area-averaged down.
    pub working_size: i64,
    /// Floor of the input's noise level, in model units ([-1, 1] range): an
    /// almost noiseless input still allows quantisation-sized differences.
    pub min_noise: f64,
    /// Side in working pixels of the blocks the noise level is estimated in.
    pub noise_block: i64,
    /// Extra Gaussian blurs (pixels) one side may get before comparison, so
    /// that a sharper or softer faithful output is not doubted; one blur (or
    /// none) is chosen for the whole image.
    pub blur_tolerance: Vec<f64>,
    /// Fraction of the shorter side along every edge that is not scored.
    /// Absent in a bundle: 3 %, what bundles calibrated before the key were scored with.
    #[serde(default = "HallucinationConfig::earlier_margin")]
    pub margin: f64,
    /// The structure components look at detail between their width and
    /// `highpass` times it (a difference of Gaussians); 0 compares everything
    /// coarser than the width too. Absent in a bundle: 0, as calibrated before it existed.
    #[serde(default)]
    pub highpass: f64,
    /// The local factor `[low, high]` by which the output's detail at a
    /// structure component's width may differ from the input's without
    /// doubt, fitted over a window of twice that width: sharpening or
    /// softening a rib edge is faithful, drawing a nodule on flat lung
    /// (nothing there to scale) or erasing an edge (a factor of 0) is not.
    /// Absent in a bundle: `[1, 1]` (no fit), as calibrated before it existed.
    #[serde(default = "HallucinationConfig::no_detail_gain")]
    pub detail_gain: [f64; 2],
    /// Input pixels within this many `min-noise` of the input's own minimum
    /// or maximum count as clipped (not scored): a window's clip, or a floor
    /// the tone curve pressed a region into (the air beside the patient),
    /// where the input says only "at or beyond the end of the range".
    /// Absent in a bundle: 0 (exactly at the end only), as calibrated before it existed.
    #[serde(default)]
    pub extreme_tolerance: f64,
    /// Leave burnt-in annotations unscored (side markers, text, arrows:
    /// drawn after acquisition as white on black, so not anatomy; a low-dose
    /// acquisition or simulator can blur them faint, and an output that shows
    /// them crisp then looked invented). Found in the enhanced image at full
    /// size as pixels at one end of its range with a pixel at the other end
    /// close by. Absent in a bundle: off, as calibrated before it existed.
    #[serde(default)]
    pub skip_annotations: bool,
    /// Small structures: nodules, lines.
    pub fine_structure: ComponentConfig,
    /// Medium structures: larger nodules, erased or shifted segments.
    pub medium_structure: ComponentConfig,
    /// Large structures: outline warps, large masses.
    pub coarse_structure: ComponentConfig,
    /// Area changes: replaced texture.
    pub texture_energy: ComponentConfig,
    /// G_BA(enhanced) against the input.
    pub cycle_consistency: ComponentConfig,
    /// Spread of `samples` LED samples.
    pub diffusion_spread: ComponentConfig,
    /// Thin lines (tubes, wires): the fine difference averaged along
    /// `LINE_ORIENTATIONS` directions over `scale` pixels. Absent in a bundle:
    /// off, as calibrated before it existed.
    #[serde(default = "ComponentConfig::line_off")]
    pub line_structure: ComponentConfig,
    /// LED samples for `diffusion-spread`; 0 turns it off (it costs K enhancements).
    pub samples: usize,
    /// Refinement start of those samples.
    pub sample_t0: usize,
    /// DDIM steps of those samples.
    pub sample_steps: usize,
    /// Seed of the samples' noise.
    pub sample_seed: u64,
    /// Also compute (and report) model-based components of weight 0, for
    /// benchmarks; off in service, where they would only cost time.
    pub evaluate_unweighted: bool,
}

impl Default for HallucinationConfig {
    fn default() -> Self {
        Self {
            working_size: 512,
            min_noise: 0.004,
            noise_block: 8,
            blur_tolerance: vec![0.5, 1.0, 1.5, 2.0, 2.5],
            margin: 0.06,
            highpass: 2.0,
            detail_gain: [0.5, 2.0],
            extreme_tolerance: 2.0,
            skip_annotations: true,
            fine_structure: ComponentConfig::new(1.0, 1.0, 5.0, 4.0),
            medium_structure: ComponentConfig::new(2.5, 1.0, 5.0, 4.0),
            coarse_structure: ComponentConfig::new(6.0, 1.0, 5.0, 4.0),
            texture_energy: ComponentConfig::new(4.0, 1.0, 2.0, 2.0),
            cycle_consistency: ComponentConfig::new(2.5, 0.0, 5.0, 4.0),
            diffusion_spread: ComponentConfig::new(2.5, 0.0, 5.0, 4.0),
            line_structure: ComponentConfig::new(4.0, 1.0, 5.0, 4.0),
            samples: 0,
            sample_t0: 200,
            sample_steps: 10,
            sample_seed: 0,
            evaluate_unweighted: false,
        }
    }
}

impl HallucinationConfig {
    fn earlier_margin() -> f64 {
        0.03
    }

    pub(crate) fn no_detail_gain() -> [f64; 2] {
        [1.0, 1.0]
    }

    /// Checks that the numbers can work.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(Error::InvalidParams(format!("hallucination config: {message}")));
        if self.working_size < 16 {
            return bad(format!("working-size {} must be at least 16", self.working_size));
        }
        if self.min_noise.is_nan() || self.min_noise <= 0.0 {
            return bad(format!("min-noise {} must be positive", self.min_noise));
        }
        if self.noise_block < 4 {
            return bad(format!("noise-block {} must be at least 4", self.noise_block));
        }
        if self.blur_tolerance.iter().any(|b| !(*b >= 0.0 && *b <= 16.0)) {
            return bad(format!("blur-tolerance {:?} must lie in [0, 16]", self.blur_tolerance));
        }
        if !(0.0..=16.0).contains(&self.highpass) {
            return bad(format!("highpass {} must be 0 (off) or at most 16", self.highpass));
        }
        let [low, high] = self.detail_gain;
        if !(low > 0.0 && low <= 1.0 && (1.0..=16.0).contains(&high)) {
            return bad(format!(
                "detail-gain {:?} must be [low, high] with 0 < low <= 1 <= high <= 16 ([1, 1]: off)",
                self.detail_gain
            ));
        }
        if !(0.0..=16.0).contains(&self.extreme_tolerance) {
            return bad(format!(
                "extreme-tolerance {} must lie in [0, 16] (multiples of min-noise; 0: exactly at the end)",
                self.extreme_tolerance
            ));
        }
        if !(0.0..=0.25).contains(&self.margin) {
            return bad(format!("margin {} must lie in [0, 0.25]", self.margin));
        }
        for (name, c) in COMPONENTS.iter().zip(self.components()) {
            if !(c.scale > 0.0 && c.scale <= 64.0) {
                return bad(format!("{name}.scale {} must lie in (0, 64]", c.scale));
            }
            if !(0.0..=1.0).contains(&c.weight) {
                return bad(format!("{name}.weight {} must lie in [0, 1]", c.weight));
            }
            if c.spread.is_nan() || c.spread <= 0.0 || !c.offset.is_finite() {
                return bad(format!("{name}: offset must be finite and spread positive"));
            }
        }
        Ok(())
    }

    /// The component calibrations in [`COMPONENTS`] order.
    pub fn components(&self) -> [&ComponentConfig; 7] {
        [
            &self.fine_structure,
            &self.medium_structure,
            &self.coarse_structure,
            &self.texture_energy,
            &self.line_structure,
            &self.cycle_consistency,
            &self.diffusion_spread,
        ]
    }

    /// Mutable access by name, for calibration.
    pub fn component_mut(&mut self, name: &str) -> Option<&mut ComponentConfig> {
        match name {
            "fine-structure" => Some(&mut self.fine_structure),
            "medium-structure" => Some(&mut self.medium_structure),
            "coarse-structure" => Some(&mut self.coarse_structure),
            "texture-energy" => Some(&mut self.texture_energy),
            "cycle-consistency" => Some(&mut self.cycle_consistency),
            "diffusion-spread" => Some(&mut self.diffusion_spread),
            "line-structure" => Some(&mut self.line_structure),
            _ => None,
        }
    }
}

/// A bundle's `[hallucination]` table: the calibrated check and what it was calibrated on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HallucinationCalibration {
    /// Scores above this hold the image for a human.
    pub hold_threshold: f64,
    /// The check's configuration the threshold belongs to.
    #[serde(default)]
    pub config: HallucinationConfig,
    /// The benchmark figures (AUROC, detection and false-hold rates, command).
    #[serde(default)]
    pub benchmark: toml::Table,
}
