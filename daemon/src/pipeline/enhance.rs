//! The enhancement stage: a display image (intensities in [0, 1]) through
//! LED at its native size, then [`super::verify`] on the result while the
//! model is still at hand.
//! Tensors live only here and in the models crate; the caller hands in plain
//! pixels and gets plain pixels back.
//!
//! Noise is seeded from (SOP Instance UID, bundle sha256), so the same input,
//! bundle, parameters and precision reproduce the same pixels
//! (`cxr-ledd reproduce` checks that).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use cxr_led_models::sampling::noise::{seed_from_parts, NoiseSource};
use cxr_led_models::{Bundle, EnhanceParams, LedModel, Precision};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use super::verify::{Verdict, Verifier};
use crate::config::PipelineConfig;

/// A loaded bundle, ready to enhance: the networks on their device and what
/// the provenance of every result needs.
#[derive(Debug)]
pub struct Enhancer {
    /// libtorch tensors are not `Sync`: workers take turns on the model
    /// (each inference already uses every core or the whole GPU).
    model: Mutex<LedModel>,
    /// Bundle name from its manifest.
    pub bundle_name: String,
    /// Bundle version from its manifest.
    pub bundle_version: String,
    /// sha256 of the bundle's manifest (its identity).
    pub bundle_sha256: String,
    /// The inference parameters in force (bundle defaults, config overrides).
    pub params: EnhanceParams,
    /// The hallucination check and its hold threshold.
    pub verifier: Verifier,
    /// The device, in words.
    pub device: String,
}

/// One enhanced image and its check.
#[derive(Debug, Clone)]
pub struct EnhancedImage {
    /// Row-major display intensities in [0, 1].
    pub pixels: Vec<f32>,
    /// The hallucination check's score, doubt map and hold decision.
    pub verdict: Verdict,
    /// The noise seed used.
    pub seed: u64,
    /// Seconds per stage.
    pub timings: StageTimings,
}

/// Wall-clock seconds of each model stage.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StageTimings {
    /// The first-stage estimate (G_AB or the paired enhancer).
    pub estimate_s: f64,
    /// Diffusion refinement.
    pub refinement_s: f64,
    /// Hallucination check.
    pub score_s: f64,
}

/// Why an enhancement failed.
#[derive(Debug, thiserror::Error)]
pub enum EnhanceError {
    /// The bundle or a parameter is wrong (configuration: fix and restart).
    #[error("{0}")]
    Model(#[from] cxr_led_models::Error),
    /// libtorch failed (e.g. out of memory).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// `[training]` key of a bundle whose diffusion model saw timesteps below this only.
pub const DIFFUSION_MAX_TIMESTEP: &str = "diffusion-max-timestep";

impl Enhancer {
    /// Loads and verifies the configured bundle onto the configured device.
    pub fn load(config: &PipelineConfig) -> Result<Enhancer, EnhanceError> {
        let device = cxr_led_models::device::parse_device(&config.device)?;
        let bundle = Bundle::load(&config.bundle)?;
        Self::from_bundle(&bundle, device, config)
    }

    /// Builds an enhancer from a loaded bundle.
    pub fn from_bundle(bundle: &Bundle, device: Device, config: &PipelineConfig) -> Result<Enhancer, EnhanceError> {
        let model = LedModel::from_bundle(bundle, device, config.precision)?;
        let mut params = bundle.manifest.inference.clone();
        if config.t0 > 0 {
            params.t0 = config.t0;
        }
        if config.steps > 0 {
            params.steps = config.steps;
        }
        params.precision = config.precision;
        if params.precision == Precision::Bf16 && !cxr_led_models::device::has_native_bf16(device) {
            // Allowed (the output is the same to 0.007 of the display range), but slow.
            tracing::warn!(
                "pipeline.precision = \"bf16\" on a CPU without AVX-512 BF16 or AMX: libtorch emulates bf16, \
                 several times slower than f32; set precision = \"f32\" on this host"
            );
        }
        // A diffusion model trained on low timesteps only (a CPU bundle) has
        // never seen the noise of a larger t0.
        let trained_below = bundle.manifest.training.get(DIFFUSION_MAX_TIMESTEP).and_then(toml::Value::as_integer);
        if let Some(limit) = trained_below.filter(|&limit| params.refines() && params.t0 as i64 >= limit) {
            return Err(cxr_led_models::Error::InvalidParams(format!(
                "pipeline.t0 = {} but this bundle's diffusion model was trained on timesteps below {limit} only: \
                 write a smaller t0, or 0 for the bundle's own ({})",
                params.t0, bundle.manifest.inference.t0
            ))
            .into());
        }
        // Fail at start-up, not on the first image (t0 = 0 in the bundle: no refinement).
        params.sampler(model.schedule())?;
        Ok(Enhancer {
            model: Mutex::new(model),
            bundle_name: bundle.manifest.name.clone(),
            bundle_version: bundle.manifest.version.clone(),
            bundle_sha256: bundle.sha256.clone(),
            params,
            verifier: Verifier::for_bundle(bundle, config),
            device: cxr_led_models::device::describe(device),
        })
    }

    /// The precision in force.
    pub fn precision(&self) -> Precision {
        self.params.precision
    }

    /// The noise seed of one source instance with this bundle.
    pub fn seed(&self, sop_instance_uid: &str) -> u64 {
        seed_from_parts(&[sop_instance_uid.as_bytes(), self.bundle_sha256.as_bytes()])
    }

    /// Enhances one display image (`rows` x `columns`, intensities in [0, 1])
    /// and scores the result as it will be displayed: `as_delivered` maps the
    /// enhanced intensities through the derived instance's stored values and
    /// back, so the score is that of the pixels the radiologist gets (and
    /// `cxr-led-train score` on the source and the derived file gives the
    /// same number).
    pub fn enhance(
        &self,
        sop_instance_uid: &str,
        pixels: &[f32],
        rows: u32,
        columns: u32,
        as_delivered: impl Fn(&[f32]) -> Vec<f32>,
    ) -> Result<EnhancedImage, EnhanceError> {
        let (h, w) = (i64::from(rows), i64::from(columns));
        // Display [0, 1] to the model's [-1, 1].
        let low_quality = Tensor::from_slice(pixels).reshape([1, 1, h, w]).to_kind(Kind::Float) * 2.0 - 1.0;
        let seed = self.seed(sop_instance_uid);
        let mut noise = NoiseSource::new(seed);
        // A panic in another worker cannot leave the weights half-written
        // (inference never writes them), so a poisoned lock is still usable.
        let model = self.model.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let enhancement = model.enhance(&low_quality, &self.params, &mut noise)?;
        let output = enhancement.output.to_device(Device::Cpu).to_kind(Kind::Float);
        let enhanced: Vec<f32> = Vec::<f32>::try_from(((output + 1.0) / 2.0).clamp(0.0, 1.0).flatten(0, -1))?;
        let started = Instant::now();
        let delivered = Tensor::from_slice(&as_delivered(&enhanced)).reshape([1, 1, h, w]) * 2.0 - 1.0;
        let verdict = self.verifier.check(
            &model,
            &low_quality.to_device(model.device()),
            &delivered.to_device(model.device()),
            &self.params.tiles,
        )?;
        let score_time = started.elapsed();
        Ok(EnhancedImage {
            pixels: enhanced,
            verdict,
            seed,
            timings: StageTimings {
                estimate_s: secs(enhancement.timings.estimate),
                refinement_s: secs(enhancement.timings.refinement),
                score_s: secs(score_time),
            },
        })
    }
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}
