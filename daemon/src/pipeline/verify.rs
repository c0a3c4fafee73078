//! The hallucination check, and the one place that decides whether a result
//! is held for review: the enhanced image is scored as it will be delivered
//! (after the round trip through the derived instance's stored values)
//! against its low-dose source, and a score above the hold threshold holds it.
//!
//! The threshold is the site's (`pipeline.hold-threshold`) when set, else the
//! bundle's calibrated one; the score's recipe is the bundle's
//! (`cxr_led_models::hallucination`).

use cxr_led_models::hallucination::{self, HallucinationConfig};
use cxr_led_models::tiling::TileConfig;
use cxr_led_models::{Bundle, LedModel};
use tch::{Device, Kind, Tensor};

use crate::config::PipelineConfig;

/// The check as one loaded bundle and the configuration set it up.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// How the score is computed (from the bundle's calibration).
    pub config: HallucinationConfig,
    /// Results scoring above this are held.
    pub hold_threshold: f64,
}

/// What the check found for one enhanced image.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// In [0, 1]; higher means more doubt that the output is faithful.
    pub score: f64,
    /// The score's components, each in [0, 1].
    pub components: Vec<(String, f64)>,
    /// Per-pixel doubt in [0, 1], row-major (the doubt-map instance).
    pub doubt_map: Vec<f32>,
    /// The threshold the score was compared against.
    pub hold_threshold: f64,
    /// Whether the result is held for review instead of delivered.
    pub held: bool,
}

impl Verifier {
    /// The check of `bundle`, with the configured hold threshold when there
    /// is one (a negative `hold-threshold` means "the bundle's").
    pub fn for_bundle(bundle: &Bundle, config: &PipelineConfig) -> Verifier {
        let hold_threshold = if config.hold_threshold >= 0.0 {
            config.hold_threshold
        } else {
            hallucination::hold_threshold(&bundle.manifest)
        };
        Verifier { config: hallucination::bundle_config(&bundle.manifest), hold_threshold }
    }

    /// Scores `delivered` (the enhanced image as the derived instance will
    /// display it) against `low_quality`, both `[1, 1, H, W]` in [-1, 1] on
    /// the model's device, and decides the hold.
    pub fn check(
        &self,
        model: &LedModel,
        low_quality: &Tensor,
        delivered: &Tensor,
        tiles: &TileConfig,
    ) -> Result<Verdict, cxr_led_models::Error> {
        let report = hallucination::score(model, low_quality, delivered, tiles, &self.config)?;
        let doubt_map = report.doubt_map.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1);
        Ok(Verdict {
            score: report.score,
            components: report.components,
            doubt_map: Vec::<f32>::try_from(doubt_map).map_err(cxr_led_models::Error::from)?,
            hold_threshold: self.hold_threshold,
            held: self.holds(report.score),
        })
    }

    /// Whether a result with this score is held.
    pub fn holds(&self, score: f64) -> bool {
        hallucination::held(score, self.hold_threshold)
    }
}
