//! The paired first stage: a small UNet trained with (high-quality,
//! simulated low-quality) pairs, the CPU-trainable alternative to CycleGAN's
//! G_AB (issue 16).
//!
//! An under-exposed image differs from a well-exposed one in two ways that
//! live at different scales, so the network splits them:
//!
//! - **Tone is global.** Contrast, lift and the tone curve of the whole image
//!   moved; a 64-px patch cannot see that. [`ToneStats`] measures it once per
//!   image (the 1st and 99th percentiles, seven inner quantiles, the noise
//!   level): the input is stretched linearly from its 1st..99th percentile to
//!   [0, 1], and the inner quantiles and the noise level reach every pixel of
//!   the network as constant input planes, so it can learn the rest of the
//!   tone correction per image.
//! - **Noise and blur are local.** A UNet on the pixel-unshuffled input (2x2
//!   pixels to 4 channels, as FFDNet does: a quarter of the positions for the
//!   same receptive field) predicts a residual on the stretched input.
//! - **The way back is global too** (`global-tone`, since 0.5.0-cpu). The
//!   stretch discards where the image's black and white points were, and
//!   without them a good image cannot come back as it was. A small global
//!   tone head maps the statistics, these two points included, to a gain and
//!   an offset per image that take the UNet's result from the stretched scale
//!   back to display intensity: for a good image, the stretch undone.
//! - **The tone curve is global and not linear** (`tone-curve`). An
//!   under-exposed image's tone curve moved by more than a gain: lift, gamma
//!   and clipping bend it, and which intensities the lungs and the
//!   mediastinum should have depends on the anatomy, which the quantiles do
//!   not show. A small encoder reads a 32x32 thumbnail of the whole stretched
//!   image and, with the statistics, sets a monotone piecewise-linear curve
//!   per image (17 knots over the stretched range, increasing by
//!   construction) that the UNet's result passes through before the gain and
//!   offset. It starts as the identity.
//!
//! The statistics are always those of the whole image, also when the network
//! runs in tiles, so a tile is enhanced exactly as it would be in the whole
//! image. Weights stay in f32; [`Enhancer::forward`] casts them to the
//! activation kind, which gives mixed precision in training (bf16 activations
//! with f32 master weights) and plain bf16 when the store itself is converted.

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::{Kind, Tensor};

use crate::{Error, Result};

/// Quantiles of the input passed to the network as constant planes (besides
/// the 1st and 99th percentiles, which fix the stretch).
pub const TONE_QUANTILES: [f64; 7] = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95];
/// The stretch maps this quantile to 0 ...
pub const STRETCH_LOW: f64 = 0.01;
/// ... and this one to 1.
pub const STRETCH_HIGH: f64 = 0.99;
/// Constant planes the UNet sees: the inner quantiles and the noise level.
pub const STAT_PLANES: i64 = TONE_QUANTILES.len() as i64 + 1;
/// The statistics the global tone head reads: the UNet's planes, then the 1st
/// and 99th percentiles before the stretch.
pub const TONE_SCALARS: i64 = STAT_PLANES + 2;
/// Side of the whole-image thumbnail (after the stretch) the tone curve reads.
pub const THUMBNAIL_SIDE: i64 = 32;
/// Values of [`ToneStats::planes`]: the [`TONE_SCALARS`], then the thumbnail's pixels.
pub const TONE_VALUES: i64 = TONE_SCALARS + THUMBNAIL_SIDE * THUMBNAIL_SIDE;
/// Hidden units of the global tone head.
const TONE_HIDDEN: i64 = 32;
/// Knots of the tone curve, evenly spaced over the stretched range [0, 1].
const CURVE_KNOTS: i64 = 17;
/// Channels of the thumbnail encoder's strided convolutions (32 → 4 px).
const CURVE_ENCODER: [i64; 4] = [1, 16, 32, 32];
/// Hidden units of the tone curve's head.
const CURVE_HIDDEN: i64 = 64;
/// Bound of the tone curve's log-slopes.
const CURVE_LOG_SLOPE: f64 = 3.0;
/// At most this many pixels are sorted for the quantiles (a regular subsample beyond).
const QUANTILE_SAMPLES: i64 = 1 << 20;
/// The noise plane is the estimated noise sigma times this, to bring it near the quantiles' range.
const NOISE_PLANE_GAIN: f64 = 10.0;

/// Architecture of an [`Enhancer`], as written in `bundle.toml` (`[enhancer]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EnhancerConfig {
    /// Channels at each level after the 2x pixel unshuffle, finest first
    /// (each further level halves the resolution).
    pub widths: Vec<i64>,
    /// 3x3 convolutions per level on each side of the UNet.
    pub convs_per_level: usize,
    /// Whether a global tone head maps the result back from the stretched
    /// scale (a gain and an offset per image from its statistics); without
    /// it the UNet's result on the stretched scale is the output.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub global_tone: bool,
    /// Whether a monotone tone curve per image, set from the statistics and
    /// a thumbnail of the whole image, bends the UNet's result before the
    /// global tone head's gain and offset (needs `global-tone`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tone_curve: bool,
}

impl Default for EnhancerConfig {
    fn default() -> Self {
        Self { widths: vec![32, 64, 128], convs_per_level: 2, global_tone: false, tone_curve: false }
    }
}

impl std::fmt::Display for EnhancerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "of widths {:?} ({} convolutions per level", self.widths, self.convs_per_level)?;
        f.write_str(match (self.global_tone, self.tone_curve) {
            (true, true) => ", global tone head with a tone curve)",
            (true, false) => ", global tone head)",
            _ => ")",
        })
    }
}

impl EnhancerConfig {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<()> {
        if self.widths.is_empty() || self.widths.len() > 5 || self.widths.iter().any(|&w| w < 1) {
            return Err(Error::InvalidParams(format!(
                "enhancer widths {:?}: give 1 to 5 positive channel counts, finest level first",
                self.widths
            )));
        }
        if self.convs_per_level == 0 || self.convs_per_level > 8 {
            return Err(Error::InvalidParams(format!(
                "enhancer convs-per-level {} must lie in 1..=8",
                self.convs_per_level
            )));
        }
        if self.tone_curve && !self.global_tone {
            return Err(Error::InvalidParams(
                "enhancer tone-curve needs global-tone = true (the curve works on the tone head's stretched scale)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The multiple height and width are padded to internally.
    pub fn size_multiple(&self) -> i64 {
        2 << (self.widths.len() - 1)
    }
}

/// The global tone and noise of one image, measured once on the whole image.
#[derive(Debug, Clone, PartialEq)]
pub struct ToneStats {
    /// The 1st percentile: maps to 0.
    pub low: f64,
    /// The 99th percentile: maps to 1.
    pub high: f64,
    /// The network's per-image values ([`TONE_VALUES`]): [`TONE_QUANTILES`]
    /// after the stretch, the noise level, `low` and `high`, then the
    /// stretched image's [`THUMBNAIL_SIDE`]² thumbnail, row by row.
    pub planes: Vec<f32>,
}

impl ToneStats {
    /// Measures an image `[1, 1, H, W]` of display intensity in [0, 1].
    pub fn measure(image: &Tensor) -> Result<Self> {
        let size = image.size();
        let &[1, 1, h, w] = size.as_slice() else {
            return Err(Error::InvalidParams(format!("tone statistics need one image [1, 1, H, W], got {size:?}")));
        };
        let _no_grad = tch::no_grad_guard();
        let image = image.to_kind(Kind::Float);
        let stride = ((h * w) as f64 / QUANTILE_SAMPLES as f64).sqrt().ceil().max(1.0) as i64;
        let samples = image.slice(2, 0, h, stride).slice(3, 0, w, stride).flatten(0, -1);
        let (sorted, _) = samples.sort(0, false);
        let count = sorted.size()[0];
        let quantile = |q: f64| sorted.double_value(&[((count - 1) as f64 * q).round() as i64]);
        let (low, high) = (quantile(STRETCH_LOW), quantile(STRETCH_HIGH));
        let span = (high - low).max(1e-3);
        let mut planes: Vec<f32> = TONE_QUANTILES.iter().map(|&q| ((quantile(q) - low) / span) as f32).collect();
        // Noise from the median absolute diagonal difference (robust to edges).
        let noise = if h > 1 && w > 1 {
            let diagonal =
                image.slice(2, 1, h, 1).slice(3, 1, w, 1) - image.slice(2, 0, h - 1, 1).slice(3, 0, w - 1, 1);
            diagonal.abs().median().double_value(&[]) / (0.6745 * std::f64::consts::SQRT_2)
        } else {
            0.0
        };
        planes.push((noise / span * NOISE_PLANE_GAIN) as f32);
        planes.extend([low as f32, high as f32]);
        // Area-averaged, so the thumbnail is as quiet as the image allows; clamped so one outlier cannot dominate.
        let thumbnail = ((image - low) / span)
            .adaptive_avg_pool2d([THUMBNAIL_SIDE, THUMBNAIL_SIDE])
            .clamp(-1.0, 2.0)
            .flatten(0, -1);
        planes.extend(Vec::<f32>::try_from(thumbnail).map_err(|e| Error::InvalidParams(format!("thumbnail: {e}")))?);
        Ok(Self { low, high, planes })
    }

    /// The linear stretch of `image` (any shape) that maps `low` to 0 and `high` to 1.
    pub fn stretch(&self, image: &Tensor) -> Tensor {
        (image - self.low) / (self.high - self.low).max(1e-3)
    }

    /// The plane values as a `[1, TONE_VALUES]` tensor (stack several for a
    /// batch of patches from different images).
    pub fn planes(&self) -> Tensor {
        Tensor::from_slice(&self.planes).view([1, TONE_VALUES])
    }
}

/// A 3x3 convolution whose f32 weights are cast to the activation kind.
#[derive(Debug)]
struct Conv {
    weight: Tensor,
    bias: Tensor,
}

impl Conv {
    fn new(vs: nn::Path, c_in: i64, c_out: i64) -> Self {
        let conv = nn::conv2d(vs, c_in, c_out, 3, nn::ConvConfig { padding: 1, ..Default::default() });
        Self { weight: conv.ws, bias: conv.bs.expect("conv2d has a bias by default") }
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        let kind = xs.kind();
        xs.conv2d(&self.weight.to_kind(kind), Some(&self.bias.to_kind(kind)), [1, 1], [1, 1], [1, 1], 1)
    }
}

/// The convolutions of one level on one side, each followed by a ReLU.
#[derive(Debug)]
struct Level(Vec<Conv>);

impl Level {
    fn new(vs: nn::Path, c_in: i64, c_out: i64, convs: usize) -> Self {
        Self((0..convs).map(|i| Conv::new(&vs / i, if i == 0 { c_in } else { c_out }, c_out)).collect())
    }

    fn forward(&self, xs: &Tensor) -> Tensor {
        self.0.iter().fold(xs.shallow_clone(), |ys, conv| conv.forward(&ys).relu())
    }
}

/// The global tone head: a gain and an offset per image from its statistics.
#[derive(Debug)]
struct ToneHead {
    hidden: Affine,
    out: Affine,
}

impl ToneHead {
    fn new(vs: nn::Path) -> Self {
        let hidden = nn::linear(&vs / 0, TONE_SCALARS, TONE_HIDDEN, Default::default());
        // Zero: gain 1 and offset 0 until trained, the output of a network without the head.
        let zero = nn::LinearConfig { ws_init: nn::Init::Const(0.0), bs_init: Some(nn::Init::Const(0.0)), bias: true };
        let out = nn::linear(&vs / 1, TONE_HIDDEN, 2, zero);
        let bias = |b: Option<Tensor>| b.expect("linear layers here have a bias");
        Self { hidden: (hidden.ws, bias(hidden.bs)), out: (out.ws, bias(out.bs)) }
    }

    /// Gain and offset, each `[N, 1, 1, 1]`, for statistics `[N, TONE_SCALARS]` (in f32 whatever the store's kind).
    fn forward(&self, values: &Tensor) -> (Tensor, Tensor) {
        let scalars = values.to_kind(Kind::Float).narrow(1, 0, TONE_SCALARS);
        let ys = linear_f32(&linear_f32(&scalars, &self.hidden).relu(), &self.out);
        let n = ys.size()[0];
        (ys.narrow(1, 0, 1).view([n, 1, 1, 1]) + 1.0, ys.narrow(1, 1, 1).view([n, 1, 1, 1]))
    }
}

/// A linear layer's or a convolution's (weight, bias).
type Affine = (Tensor, Tensor);

/// `xs` through a linear layer, in f32 whatever the store's kind.
fn linear_f32(xs: &Tensor, (w, b): &Affine) -> Tensor {
    xs.linear(&w.to_kind(Kind::Float), Some(b.to_kind(Kind::Float)))
}

/// The tone curve: a monotone piecewise-linear map per image, from its
/// statistics and its thumbnail (see the module documentation).
#[derive(Debug)]
struct ToneCurve {
    encoder: Vec<Affine>,
    hidden: Affine,
    out: Affine,
}

impl ToneCurve {
    fn new(vs: nn::Path) -> Self {
        let strided = nn::ConvConfig { stride: 2, padding: 1, ..Default::default() };
        let encoder = CURVE_ENCODER
            .windows(2)
            .enumerate()
            .map(|(i, c)| {
                let conv = nn::conv2d(&vs / "encoder" / i, c[0], c[1], 3, strided);
                (conv.ws, conv.bs.expect("conv2d has a bias by default"))
            })
            .collect();
        let features = CURVE_ENCODER[CURVE_ENCODER.len() - 1];
        let hidden = nn::linear(&vs / "hidden", TONE_SCALARS + features, CURVE_HIDDEN, Default::default());
        // Zero: a base of 0 and every segment's slope exp(0) = 1, the identity, until trained.
        let zero = nn::LinearConfig { ws_init: nn::Init::Const(0.0), bs_init: Some(nn::Init::Const(0.0)), bias: true };
        let out = nn::linear(&vs / "out", CURVE_HIDDEN, CURVE_KNOTS, zero);
        let bias = |b: Option<Tensor>| b.expect("linear layers here have a bias");
        Self { encoder, hidden: (hidden.ws, bias(hidden.bs)), out: (out.ws, bias(out.bs)) }
    }

    /// The knots' values `[N, CURVE_KNOTS]` (increasing) for the values `[N, TONE_VALUES]`.
    fn knots(&self, values: &Tensor) -> Tensor {
        let values = values.to_kind(Kind::Float);
        let n = values.size()[0];
        let mut ys = values.narrow(1, TONE_SCALARS, THUMBNAIL_SIDE * THUMBNAIL_SIDE).view([
            n,
            1,
            THUMBNAIL_SIDE,
            THUMBNAIL_SIDE,
        ]);
        for (w, b) in &self.encoder {
            let (w, b) = (w.to_kind(Kind::Float), b.to_kind(Kind::Float));
            ys = ys.conv2d(&w, Some(&b), [2, 2], [1, 1], [1, 1], 1).relu();
        }
        let features = ys.mean_dim(&[2i64, 3][..], false, Kind::Float);
        let scalars = values.narrow(1, 0, TONE_SCALARS);
        let raw = linear_f32(&linear_f32(&Tensor::cat(&[scalars, features], 1), &self.hidden).relu(), &self.out);
        let base = raw.narrow(1, 0, 1);
        let segments = (CURVE_KNOTS - 1) as f64;
        // Slopes between e^-3 and e^3 (soft bounds keep a gradient): no segment flattens to nothing or explodes.
        let rises = ((raw.narrow(1, 1, CURVE_KNOTS - 1) / CURVE_LOG_SLOPE).tanh() * CURVE_LOG_SLOPE).exp() / segments;
        Tensor::cat(&[base.zeros_like(), rises], 1).cumsum(1, Kind::Float) + base
    }

    /// `xs` `[N, 1, H, W]` (f32) through each image's curve (`knots`
    /// `[N or 1, CURVE_KNOTS]`); beyond [0, 1] the end segments extend.
    fn apply(knots: &Tensor, xs: &Tensor) -> Tensor {
        let shape = xs.size();
        let n = shape[0];
        let knots = if knots.size()[0] == n { knots.shallow_clone() } else { knots.expand([n, CURVE_KNOTS], false) };
        let segments = (CURVE_KNOTS - 1) as f64;
        let position = xs.reshape([n, -1]) * segments;
        let index = position.detach().floor().clamp(0.0, segments - 1.0).to_kind(Kind::Int64);
        let along = &position - index.to_kind(Kind::Float);
        let left = knots.gather(1, &index, false);
        let right = knots.gather(1, &(&index + 1), false);
        (&left + along * (right - &left)).view(shape.as_slice())
    }
}

/// The paired first-stage network (see the module documentation).
#[derive(Debug)]
pub struct Enhancer {
    config: EnhancerConfig,
    down: Vec<Level>,
    up: Vec<Level>,
    head: Conv,
    tone: Option<ToneHead>,
    curve: Option<ToneCurve>,
}

impl Enhancer {
    /// Creates the network's variables under `vs`.
    pub fn new(vs: &nn::Path, config: &EnhancerConfig) -> Result<Self> {
        config.validate()?;
        let widths = &config.widths;
        let convs = config.convs_per_level;
        let down = widths
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let c_in = if i == 0 { 4 + STAT_PLANES } else { widths[i - 1] };
                Level::new(vs / "down" / i, c_in, w, convs)
            })
            .collect();
        // up[i] joins level i + 1 (upsampled) with level i's skip.
        let up = (0..widths.len() - 1)
            .map(|i| Level::new(vs / "up" / i, widths[i + 1] + widths[i], widths[i], convs))
            .collect();
        let head = Conv::new(vs / "head", widths[0], 4);
        let tone = config.global_tone.then(|| ToneHead::new(vs / "tone"));
        let curve = config.tone_curve.then(|| ToneCurve::new(vs / "curve"));
        Ok(Self { config: config.clone(), down, up, head, tone, curve })
    }

    /// The architecture.
    pub fn config(&self) -> &EnhancerConfig {
        &self.config
    }

    /// Enhances stretched images `[N, 1, H, W]` (see [`ToneStats::stretch`])
    /// whose statistics are `planes` (`[N, TONE_VALUES]`, or
    /// `[1, TONE_VALUES]` for tiles of one image), computing in the kind of
    /// `stretched`; returns the enhanced display intensity (about [0, 1], not
    /// clamped) in f32.
    pub fn forward(&self, stretched: &Tensor, planes: &Tensor) -> Tensor {
        let (n, h, w) = (stretched.size()[0], stretched.size()[2], stretched.size()[3]);
        let kind = stretched.kind();
        let multiple = self.config.size_multiple();
        let padded = crate::nets::generator::pad_to_multiple(stretched, multiple, multiple);
        let (ph, pw) = (padded.size()[2], padded.size()[3]);
        let unshuffled = padded.pixel_unshuffle(2);
        let values = planes.to_device(stretched.device()).view([-1, TONE_VALUES]);
        let planes = values
            .narrow(1, 0, STAT_PLANES)
            .to_kind(kind)
            .view([-1, STAT_PLANES, 1, 1])
            .expand([n, STAT_PLANES, ph / 2, pw / 2], false);
        let mut ys = Tensor::cat(&[unshuffled, planes], 1);
        let mut skips = Vec::with_capacity(self.down.len());
        for (i, level) in self.down.iter().enumerate() {
            if i > 0 {
                ys = ys.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>);
            }
            ys = level.forward(&ys);
            skips.push(ys.shallow_clone());
        }
        for (i, level) in self.up.iter().enumerate().rev() {
            let skip = &skips[i];
            let upsampled = ys.upsample_nearest2d([skip.size()[2], skip.size()[3]], None, None);
            ys = level.forward(&Tensor::cat(&[upsampled, skip.shallow_clone()], 1));
        }
        let residual = self.head.forward(&ys).pixel_shuffle(2).to_kind(Kind::Float);
        let mut result = (padded.to_kind(Kind::Float) + residual).narrow(2, 0, h).narrow(3, 0, w);
        if let Some(curve) = &self.curve {
            result = ToneCurve::apply(&curve.knots(&values), &result);
        }
        match &self.tone {
            Some(tone) => {
                let (gain, offset) = tone.forward(&values);
                result * gain + offset
            }
            None => result,
        }
    }
}

/// Fills `target` (architecture `to`) from a trained enhancer's `source`
/// (architecture `from`) so that the larger network computes exactly what the
/// trained one did: growth, the start of a fine-tuning run with more capacity.
/// With `to` equal to `from` it is a plain copy.
///
/// `to` must keep `from`'s levels (its widths start with `from`'s) and may add
/// coarser levels, more convolutions per level and the global tone head
/// (which starts at gain 1 and offset 0) and the tone curve (which starts as
/// the identity). Every convolution that
/// follows a ReLU and keeps its channel count starts as the identity (a ReLU
/// output passes unchanged); a new level's up side starts by passing its skip
/// through and ignoring the level below it, whose own convolutions keep their
/// random start, so the gradient opens the new paths from there. (Exactly the
/// same output where both pad an image alike: training patches and tiles whose
/// sides are multiples of [`EnhancerConfig::size_multiple`]; near the padded
/// edge of other sizes the deeper net sees a wider padding.)
pub fn grow(source: &nn::VarStore, from: &EnhancerConfig, target: &nn::VarStore, to: &EnhancerConfig) -> Result<()> {
    from.validate()?;
    to.validate()?;
    if !to.widths.starts_with(&from.widths)
        || to.convs_per_level < from.convs_per_level
        || (from.global_tone && !to.global_tone)
        || (from.tone_curve && !to.tone_curve)
    {
        return Err(Error::InvalidParams(format!(
            "cannot grow an enhancer {from} into {to}: the new one must keep the old widths as its finest levels, \
             at least as many convolutions and the global tone head and tone curve if the old one had them"
        )));
    }
    let trained = source.variables();
    let _no_grad = tch::no_grad_guard();
    for (name, mut var) in target.variables() {
        if let Some(value) = trained.get(&name) {
            if value.size() != var.size() {
                return Err(Error::InvalidParams(format!(
                    "enhancer weight {name}: trained shape {:?}, grown shape {:?}",
                    value.size(),
                    var.size()
                )));
            }
            var.copy_(value);
            continue;
        }
        // New: the tone head starts at gain 1 and offset 0 (its output layer zero).
        if name.starts_with("tone.") {
            if name.starts_with("tone.1.") {
                let _ = var.zero_();
            }
            continue;
        }
        // New: the tone curve starts as the identity (its output layer zero).
        if name.starts_with("curve.") {
            if name.starts_with("curve.out.") {
                let _ = var.zero_();
            }
            continue;
        }
        // New: "down|up.LEVEL.CONV.weight|bias".
        let unknown = || Error::InvalidParams(format!("enhancer weight {name} is not one growth knows"));
        let parts: Vec<&str> = name.split('.').collect();
        let &[side, level, _conv, param] = parts.as_slice() else {
            return Err(unknown());
        };
        let level: usize = level.parse().map_err(|_| unknown())?;
        if side == "down" && level >= from.widths.len() {
            continue;
        }
        let _ = var.zero_();
        if param == "weight" {
            // Identity from the last `out` input channels: all of them for a
            // same-width convolution, the skip for a new level's first up one.
            let (out, inputs) = (var.size()[0], var.size()[1]);
            let eye = Tensor::eye(out, (var.kind(), var.device())).view([out, out, 1, 1]);
            var.narrow(1, inputs - out, out).narrow(2, 1, 1).narrow(3, 1, 1).copy_(&eye);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stretch_maps_the_percentiles_and_planes_hold_the_inner_quantiles() {
        let ramp = Tensor::arange(10_000, (Kind::Float, tch::Device::Cpu)).view([1, 1, 100, 100]) / 9_999.0 * 0.5;
        let stats = ToneStats::measure(&ramp).unwrap();
        assert!((stats.low - 0.005).abs() < 1e-3 && (stats.high - 0.495).abs() < 1e-3, "{stats:?}");
        assert_eq!(stats.planes.len() as i64, TONE_VALUES);
        assert_eq!(&stats.planes[STAT_PLANES as usize..TONE_SCALARS as usize], &[stats.low as f32, stats.high as f32]);
        // A uniform ramp: each inner quantile lands at its own rank after the stretch.
        for (value, q) in stats.planes.iter().zip(TONE_QUANTILES) {
            assert!((f64::from(*value) - (q - 0.01) / 0.98).abs() < 0.01, "{value} for {q}");
        }
        let stretched = stats.stretch(&ramp);
        assert!(stretched.min().double_value(&[]) < 0.0 && stretched.max().double_value(&[]) > 1.0);
    }

    #[test]
    fn any_size_goes_through_and_comes_back_at_its_size() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let config = EnhancerConfig { widths: vec![4, 8, 8], convs_per_level: 1, global_tone: true, tone_curve: true };
        let net = Enhancer::new(&vs.root(), &config).unwrap();
        for (h, w) in [(7, 5), (64, 64), (37, 90)] {
            let image = Tensor::rand([2, 1, h, w], (Kind::Float, tch::Device::Cpu));
            let stats = ToneStats::measure(&image.get(0).unsqueeze(0)).unwrap();
            assert_eq!(net.forward(&stats.stretch(&image), &stats.planes()).size(), vec![2, 1, h, w]);
            let bf16 = net.forward(&stats.stretch(&image).to_kind(Kind::BFloat16), &stats.planes());
            assert_eq!(bf16.kind(), Kind::Float);
        }
    }

    #[test]
    fn bad_architectures_are_refused() {
        assert!(EnhancerConfig { widths: vec![], convs_per_level: 2, global_tone: false, tone_curve: false }
            .validate()
            .is_err());
        assert!(EnhancerConfig { widths: vec![8], convs_per_level: 0, global_tone: false, tone_curve: false }
            .validate()
            .is_err());
        let curve_alone = EnhancerConfig { widths: vec![8], convs_per_level: 1, global_tone: false, tone_curve: true };
        assert!(curve_alone.validate().unwrap_err().to_string().contains("needs global-tone"));
        assert_eq!(EnhancerConfig::default().size_multiple(), 8);
    }

    #[test]
    fn a_grown_enhancer_computes_what_the_trained_one_did() {
        // More levels, more convolutions, the tone head and the tone curve (which start neutral).
        let from = EnhancerConfig { widths: vec![4, 8], convs_per_level: 1, global_tone: false, tone_curve: false };
        let to = EnhancerConfig { widths: vec![4, 8, 16, 16], convs_per_level: 2, global_tone: true, tone_curve: true };
        let source = nn::VarStore::new(tch::Device::Cpu);
        let small = Enhancer::new(&source.root(), &from).unwrap();
        let target = nn::VarStore::new(tch::Device::Cpu);
        let large = Enhancer::new(&target.root(), &to).unwrap();
        grow(&source, &from, &target, &to).unwrap();
        // A size both pad alike (a multiple of 32): the padded border, which
        // grows with the levels, is the one place the two may differ.
        let image = Tensor::rand([1, 1, 64, 96], (Kind::Float, tch::Device::Cpu));
        let stats = ToneStats::measure(&image).unwrap();
        let (a, b) = (
            small.forward(&stats.stretch(&image), &stats.planes()),
            large.forward(&stats.stretch(&image), &stats.planes()),
        );
        let difference = (a - b).abs().max().double_value(&[]);
        assert!(difference < 1e-5, "grown output differs by {difference}");
        // The new coarse level is live: its weights are not all zero.
        assert!(target.variables()["down.3.1.weight"].abs().sum(Kind::Float).double_value(&[]) > 0.0);
        // Shrinking, other widths, or dropping the tone head, are refused.
        assert!(grow(&target, &to, &source, &from).is_err());
        let uncurved = EnhancerConfig { tone_curve: false, ..to.clone() };
        let error = grow(&target, &to, &nn::VarStore::new(tch::Device::Cpu), &uncurved).unwrap_err().to_string();
        assert!(error.contains("tone curve"), "{error}");
        let other =
            EnhancerConfig { widths: vec![8, 8, 16], convs_per_level: 1, global_tone: false, tone_curve: false };
        assert!(grow(&source, &from, &nn::VarStore::new(tch::Device::Cpu), &other).is_err());
    }
}

#[cfg(test)]
mod tone_tests {
    use super::*;

    /// Sets the tone head's output bias to `gain - 1` and `offset` (its weights are zero, as grown).
    fn set_tone(vs: &nn::VarStore, gain: f64, offset: f64) {
        let _no_grad = tch::no_grad_guard();
        let mut bias = vs.variables().remove("tone.1.bias").expect("the tone head's output bias");
        bias.copy_(&Tensor::from_slice(&[gain as f32 - 1.0, offset as f32]));
    }

    #[test]
    fn the_tone_head_maps_the_stretched_result_back_per_image() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let config = EnhancerConfig { widths: vec![4, 8], convs_per_level: 1, global_tone: true, tone_curve: false };
        let net = Enhancer::new(&vs.root(), &config).unwrap();
        let image = Tensor::rand([1, 1, 32, 32], (Kind::Float, tch::Device::Cpu)) * 0.6 + 0.2;
        let stats = ToneStats::measure(&image).unwrap();
        let stretched = stats.stretch(&image);
        let base = net.forward(&stretched, &stats.planes());
        set_tone(&vs, stats.high - stats.low, stats.low);
        let mapped = net.forward(&stretched, &stats.planes());
        let expected = &base * (stats.high - stats.low) + stats.low;
        assert!((mapped - expected).abs().max().double_value(&[]) < 1e-5);
        // bf16 activations: the head itself computes in f32.
        assert_eq!(net.forward(&stretched.to_kind(Kind::BFloat16), &stats.planes()).kind(), Kind::Float);
    }

    #[test]
    fn the_tone_curve_is_monotone_per_image_and_starts_as_the_identity() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let config = EnhancerConfig { widths: vec![4, 8], convs_per_level: 1, global_tone: true, tone_curve: true };
        let net = Enhancer::new(&vs.root(), &config).unwrap();
        let curve = net.curve.as_ref().expect("the config asks for a curve");
        let image = Tensor::rand([1, 1, 48, 40], (Kind::Float, tch::Device::Cpu)) * 0.5 + 0.1;
        let stats = ToneStats::measure(&image).unwrap();
        let ramp = Tensor::linspace(-0.5, 1.5, 201, (Kind::Float, tch::Device::Cpu)).view([1, 1, 1, 201]);
        // Untrained: the identity, also beyond [0, 1].
        let knots = curve.knots(&stats.planes());
        assert!((ToneCurve::apply(&knots, &ramp) - &ramp).abs().max().double_value(&[]) < 1e-5);
        // Any output layer (even one far from trained): increasing knots, and a curve through them that
        // keeps the order of intensities, for each image of a batch.
        {
            let _no_grad = tch::no_grad_guard();
            for (name, mut var) in vs.variables() {
                if name.starts_with("curve.out.") {
                    var.copy_(&(Tensor::randn(var.size(), (Kind::Float, tch::Device::Cpu)) * 20.0));
                }
            }
        }
        let other = ToneStats::measure(&(image.flip([2]) * 0.3)).unwrap();
        let knots = curve.knots(&Tensor::cat(&[stats.planes(), other.planes()], 0));
        assert_eq!(knots.size(), vec![2, CURVE_KNOTS]);
        let rises = knots.narrow(1, 1, CURVE_KNOTS - 1) - knots.narrow(1, 0, CURVE_KNOTS - 1);
        assert!(rises.min().double_value(&[]) > 0.0);
        let mapped = ToneCurve::apply(&knots, &ramp.expand([2, 1, 1, 201], false));
        let steps = mapped.narrow(3, 1, 200) - mapped.narrow(3, 0, 200);
        assert!(steps.min().double_value(&[]) > 0.0, "the curve must keep the order");
        // At the knots the curve takes the knots' values.
        let at_knots = Tensor::linspace(0.0, 1.0, CURVE_KNOTS, (Kind::Float, tch::Device::Cpu)).view([1, 1, 1, -1]);
        let through = ToneCurve::apply(&knots, &at_knots.expand([2, 1, 1, CURVE_KNOTS], false)).view([2, -1]);
        assert!((through - &knots).abs().max().double_value(&[]) < 1e-4);
        // One image's knots serve all its tiles.
        let tiles = ToneCurve::apply(&knots.get(0).unsqueeze(0), &ramp.expand([3, 1, 1, 201], false));
        assert_eq!(tiles.size(), vec![3, 1, 1, 201]);
    }
}
