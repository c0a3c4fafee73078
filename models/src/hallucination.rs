//! The hallucination check: how much of the enhanced image the low-quality
//! input does not support.
//!
//! An enhancement may remove noise, undo blur and stretch contrast; it may not
//! add a nodule, erase a rib, move the body outline or draw a tube. All of
//! those leave *structure* in the output that the input, at its own noise
//! level, does not contain. The check therefore compares the two images after
//! mapping the output's grey levels onto the input's (a global look-up table,
//! so contrast changes cost nothing), band-limits both with Gaussians of a few
//! widths, and divides their difference by what the images' noise would
//! explain at that width:
//!
//! ```text
//! z_s(p) = | G_s+b(tone(enhanced)) - G_s+b'(input) |(p) / (sigma(p) * ||G_s+b'||_2)
//! ```
//!
//! `sigma(p)` is the noise of the two images (the input's local level, a
//! robust block median of a Laplacian residual, and the output's image-wide
//! level, added in quadrature), `||G||_2` how much a
//! Gaussian shrinks white noise, and the extra blur b of one side makes a
//! sharper or a softer (but faithful) output free. That blur is chosen once
//! for the whole image (the one that explains the image best), never per
//! pixel: sharpness is a property of the enhancement, and a per-pixel choice
//! let a thin line or a small nodule hide behind a local blur. A faithful
//! output gives z of order 1 everywhere; a planted structure of amplitude A
//! and width w gives z that grows with A·w / sigma. With `highpass` > 0 the
//! difference's own blur at `highpass * s` is taken away first (a difference
//! of Gaussians): an enhancer's smooth, local change of tone (darker lungs,
//! brighter mediastinum), which no global table removes, then costs nothing,
//! while a structure of width s keeps most of its z. With `detail-gain`
//! `[low, high]`, the difference is first fitted, over a window of two widths,
//! as the input's own detail at that width times a local factor `a` in
//! `[low - 1, high - 1]`, and only the residual counts: an enhancer that makes
//! a rib edge 30 % crisper (or softer) is faithful, while a nodule drawn on
//! flat lung (no detail there to scale) or an erased edge (a factor of -1)
//! keeps its z.
//!
//! Where the input says nothing, nothing is checked: within a component's
//! reach of clipped input pixels (a saturated border, a region pressed into
//! the floor of the range), of burnt-in annotations (side markers, text:
//! not anatomy, and often blurred faint in a low-dose input) and
//! in a thin margin along the image's edges (`margin`), where the comparison
//! windows run off the image; there the maps are 0.
//!
//! Components, each a map and its maximum, each turned into [0, 1] by its
//! calibration `c = 1 - exp(-max(0, raw - offset) / spread)`:
//! - `fine-structure`, `medium-structure`, `coarse-structure`: z_s at three widths.
//! - `texture-energy`: the local mean of z² at the fine width (a windowed
//!   chi-square), for changes spread over an area (replaced texture, lines).
//! - `line-structure`: the fine difference averaged along thin segments in 8
//!   directions (tubes, wires: coherent along their length).
//! - `cycle-consistency`: the same z with G_BA(enhanced) in place of the
//!   enhanced image: the bundle's learnt degradation should give the input back.
//! - `diffusion-spread` (only with `samples > 0`): the spread of K seeded LED
//!   samples relative to the input's noise: where the model itself is unsure.
//!
//! The score is the noisy-or of the weighted components, `1 - prod(1 - w_k c_k)`,
//! and the doubt map the pixel-wise maximum of the weighted component maps.
//! Weights and calibrations are chosen by the planted-hallucination benchmark
//! (`cxr-led-train hallucination-bench`) and stored in the bundle's
//! `[hallucination]` table with the figures they were chosen on.
//!
//! Everything runs on the CPU at a bounded working size (the longest side is
//! area-averaged down to `working-size`), so memory is bounded for any matrix
//! and the same inputs give the same bits.

use tch::{Device, Kind, Tensor};

use crate::led::{EnhanceParams, LedModel, Precision};
use crate::manifest::BundleManifest;
pub use crate::manifest::{ComponentConfig, HallucinationCalibration, HallucinationConfig, COMPONENTS};
use crate::sampling::noise::NoiseSource;
use crate::tiling::TileConfig;
use crate::{Error, Result};

/// The hold threshold used when a bundle carries no calibration: low, so an
/// uncalibrated bundle holds rather than passes doubtful images.
pub const UNCALIBRATED_HOLD_THRESHOLD: f64 = 0.25;

/// Whether a score holds the image: strictly above the threshold.
pub fn held(score: f64, threshold: f64) -> bool {
    score > threshold
}

/// The bundle's calibrated hold threshold, or [`UNCALIBRATED_HOLD_THRESHOLD`].
pub fn hold_threshold(manifest: &BundleManifest) -> f64 {
    manifest.hallucination.as_ref().map_or(UNCALIBRATED_HOLD_THRESHOLD, |h| h.hold_threshold)
}

/// The bundle's calibrated check configuration, or the defaults.
pub fn bundle_config(manifest: &BundleManifest) -> HallucinationConfig {
    manifest.hallucination.as_ref().map(|h| h.config.clone()).unwrap_or_default()
}

/// The result of [`score`].
#[derive(Debug)]
pub struct HallucinationReport {
    /// In [0, 1]; higher means more doubt that the output is faithful.
    pub score: f64,
    /// Each component's value in [0, 1], named as in [`COMPONENTS`], in that
    /// order. The four image components are always there; `cycle-consistency`
    /// and `diffusion-spread` only when their weight is above 0 (or
    /// `evaluate-unweighted` is set), the latter only with `samples > 0`.
    pub components: Vec<(String, f64)>,
    /// Raw statistic of each component before calibration (for benchmarks).
    pub raw: Vec<(String, f64)>,
    /// `[1, 1, H, W]` f32 on the CPU in [0, 1]: where the doubt comes from.
    pub doubt_map: Tensor,
}

/// A 1-D Gaussian of width `sigma` (radius ceil(3 sigma)), normalised.
fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil().max(1.0) as i64;
    let weights: Vec<f64> = (-radius..=radius).map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp()).collect();
    let sum: f64 = weights.iter().sum();
    weights.into_iter().map(|w| (w / sum) as f32).collect()
}

/// The `n` x `n` matrix of a 1-D Gaussian blur of width `sigma` with the
/// edge replicated: row i holds the weight of every source pixel in output i.
fn blur_matrix(n: i64, sigma: f64) -> Vec<f32> {
    let kernel = gaussian_kernel(sigma);
    let radius = (kernel.len() / 2) as i64;
    let mut matrix = vec![0.0f32; (n * n) as usize];
    for i in 0..n {
        for (k, g) in kernel.iter().enumerate() {
            let j = (i + k as i64 - radius).clamp(0, n - 1);
            matrix[(i * n + j) as usize] += *g;
        }
    }
    matrix
}

/// Separable Gaussian blur of `[1, C, H, W]` (CPU, f32) with replicated
/// edges, as two matrix products (fast and exact at any width); sigma 0 is the identity.
pub fn gaussian_blur(image: &Tensor, sigma: f64) -> Tensor {
    if sigma < 0.05 {
        return image.shallow_clone();
    }
    let size = image.size();
    let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
    let rows = Tensor::from_slice(&blur_matrix(h, sigma)).view([h, h]).to_device(image.device());
    let columns = Tensor::from_slice(&blur_matrix(w, sigma)).view([w, w]).to_device(image.device());
    rows.matmul(&image.to_kind(Kind::Float)).matmul(&columns.transpose(0, 1))
}

/// How much [`gaussian_blur`] of width `sigma` shrinks the standard
/// deviation of white noise at each pixel of an `h` x `w` image, `[1, 1, h, w]`:
/// the L2 norm of each output pixel's weights, edge replication included
/// (at a border the replicated pixel carries more weight, so less averaging).
fn noise_gain(h: i64, w: i64, sigma: f64) -> Tensor {
    if sigma < 0.05 {
        return Tensor::ones([1, 1, h, w], (Kind::Float, Device::Cpu));
    }
    // Per axis: the sum of squared weights of each output position; the 2-D
    // weights are products, so their squared norm is the product of the two.
    let profile = |n: i64| -> Tensor {
        let matrix = blur_matrix(n, sigma);
        let values: Vec<f32> = matrix.chunks(n as usize).map(|row| row.iter().map(|v| v * v).sum()).collect();
        Tensor::from_slice(&values)
    };
    (profile(h).view([1, 1, h, 1]) * profile(w).view([1, 1, 1, w])).sqrt()
}

fn check_image(name: &str, image: &Tensor) -> Result<(i64, i64)> {
    match image.size().as_slice() {
        &[1, 1, h, w] if h > 0 && w > 0 => Ok((h, w)),
        other => Err(Error::InvalidParams(format!(
            "hallucination check: {name} must be one grayscale image [1, 1, H, W], got {other:?}"
        ))),
    }
}

/// Area-averages `image` so that its longest side is at most `working_size`.
fn to_working(image: &Tensor, working_size: i64) -> Tensor {
    let image = image.to_device(Device::Cpu).to_kind(Kind::Float);
    let (h, w) = (image.size()[2], image.size()[3]);
    let longest = h.max(w);
    if longest <= working_size {
        return image;
    }
    let scale = working_size as f64 / longest as f64;
    let size = [((h as f64 * scale).round() as i64).max(1), ((w as f64 * scale).round() as i64).max(1)];
    image.adaptive_avg_pool2d(size)
}

/// The input's local noise level `[1, 1, H, W]`: the median absolute value of
/// a Laplacian residual in blocks (robust to the edges in a block), scaled to
/// a Gaussian standard deviation, smoothly interpolated between blocks.
fn noise_map(input: &Tensor, config: &HallucinationConfig) -> Tensor {
    let (h, w) = (input.size()[2], input.size()[3]);
    let laplacian = Tensor::from_slice(&[0.0f32, -0.25, 0.0, -0.25, 1.0, -0.25, 0.0, -0.25, 0.0]).view([1, 1, 3, 3]);
    let residual =
        input.replication_pad2d([1, 1, 1, 1]).conv2d(&laplacian, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1).abs()
            / 1.25f64.sqrt();
    let block = config.noise_block.min(h).min(w).max(1);
    let (by, bx) = ((h + block - 1) / block, (w + block - 1) / block);
    let padded = residual.replication_pad2d([0, bx * block - w, 0, by * block - h]);
    let blocks = padded.view([by, block, bx, block]).permute([0, 2, 1, 3]).reshape([by * bx, block * block]);
    let (median, _) = blocks.median_dim(1, false);
    // Median |N(0, sigma)| = 0.6745 sigma.
    let sigma_blocks = (median / 0.674_489_75).view([1, 1, by, bx]);
    let global = sigma_blocks.median().double_value(&[]);
    let floor = config.min_noise.max(0.25 * global);
    let smooth = if by * bx > 1 { gaussian_blur(&sigma_blocks, 0.7) } else { sigma_blocks };
    smooth.upsample_bilinear2d([h, w], false, None, None).clamp_min(floor)
}

/// Maps the output's grey levels onto the input's with a global look-up
/// table: the mean input level (both smoothed at 1 px) in each of `TONE_BINS`
/// quantile bins of the output, linearly interpolated. Any global contrast
/// change, clipping included, is free; no local structure can be made by it.
/// A second pass leaves out pixels the first pass could not explain (z > 4),
/// so that a planted structure does not bend the table towards itself.
fn tone_map(output: &Tensor, input: &Tensor, sigma: &Tensor) -> Tensor {
    let (h, w) = (input.size()[2], input.size()[3]);
    let x = gaussian_blur(output, 1.0);
    let y = gaussian_blur(input, 1.0);
    let gain = noise_gain(h, w, 1.0);
    let mut weights = Tensor::ones_like(&x);
    let mut mapped = output.shallow_clone();
    for _ in 0..2 {
        let (centres, levels) = tone_table(&x, &y, &weights);
        mapped = interpolate(output, &centres, &levels);
        let z = (interpolate(&x, &centres, &levels) - &y).abs() / (sigma * &gain);
        weights = z.le(4.0).to_kind(Kind::Float);
        if weights.sum(Kind::Float).double_value(&[]) < 0.5 * (h * w) as f64 {
            break;
        }
    }
    mapped
}

// Few enough that a small bright structure drawn into the output cannot get
// bins of its own and bend the table towards itself (32 did, in a test).
const TONE_BINS: i64 = 16;

/// The look-up table (strictly increasing output levels, input levels) from
/// the weighted mean of `y` in quantile bins of `x`.
fn tone_table(x: &Tensor, y: &Tensor, weights: &Tensor) -> (Vec<f32>, Vec<f32>) {
    let flat_x = x.flatten(0, -1);
    let quantiles = Tensor::linspace(0.0, 1.0, TONE_BINS + 1, (Kind::Float, Device::Cpu)).narrow(0, 1, TONE_BINS - 1);
    let edges = flat_x.quantile(&quantiles, None, false, "linear");
    let bins = flat_x.bucketize(&edges, false, false);
    let w = weights.flatten(0, -1);
    let count = Tensor::zeros([TONE_BINS], (Kind::Float, Device::Cpu)).scatter_add(0, &bins, &w);
    let sum_x = Tensor::zeros([TONE_BINS], (Kind::Float, Device::Cpu)).scatter_add(0, &bins, &(&flat_x * &w));
    let sum_y = Tensor::zeros([TONE_BINS], (Kind::Float, Device::Cpu)).scatter_add(0, &bins, &(y.flatten(0, -1) * &w));
    let to_vec = |t: &Tensor| Vec::<f32>::try_from(t).unwrap_or_default();
    let (count, sum_x, sum_y) = (to_vec(&count), to_vec(&sum_x), to_vec(&sum_y));
    let (mut centres, mut levels) = (Vec::new(), Vec::new());
    for ((n, sx), sy) in count.iter().zip(&sum_x).zip(&sum_y) {
        if *n >= 1.0 {
            let centre = sx / n;
            if centres.last().is_none_or(|last: &f32| centre > *last + 1e-6) {
                centres.push(centre);
                levels.push(sy / n);
            }
        }
    }
    if centres.len() < 2 {
        // A flat output: map it to the input's mean level.
        let mean = y.mean(Kind::Float).double_value(&[]) as f32;
        return (vec![-1.0, 1.0], vec![mean, mean]);
    }
    (centres, levels)
}

/// Piecewise-linear interpolation of `values` through the table.
fn interpolate(values: &Tensor, centres: &[f32], levels: &[f32]) -> Tensor {
    let k = centres.len() as i64;
    let c = Tensor::from_slice(centres);
    let l = Tensor::from_slice(levels);
    let upper = values.contiguous().bucketize(&c, false, false).clamp(1, k - 1);
    let lower = &upper - 1;
    let (c0, c1) = (c.take(&lower), c.take(&upper));
    let (l0, l1) = (l.take(&lower), l.take(&upper));
    // Inside the table t is in [0, 1]; beyond its ends the end segments
    // extrapolate (a bounded way), since the end bins' centres are not the extremes.
    let t = ((values - &c0) / (c1 - &c0)).clamp(-2.0, 3.0);
    &l0 + t * (l1 - &l0)
}

/// Where the input says nothing, as a `[1, 1, h, w]` 0/1 map at the working
/// size `(h, w)` of `input`; `None` when nowhere. Two kinds:
/// - clipped input: over a visible area (0.1 %), pixels within
///   `extreme-tolerance` times `min-noise` of the input's own minimum or maximum;
/// - with `skip-annotations`, burnt-in annotations, found in `enhanced` (full
///   size, where their thin black outlines survive) by [`annotation_pixels`].
fn unsupported_pixels(input: &Tensor, enhanced: &Tensor, config: &HallucinationConfig) -> Option<Tensor> {
    let (low, high) = (input.min().double_value(&[]), input.max().double_value(&[]));
    let tolerance = config.extreme_tolerance * config.min_noise;
    let clipped = input.le(low + tolerance).logical_or(&input.ge(high - tolerance)).to_kind(Kind::Float);
    let clipped = (clipped.mean(Kind::Float).double_value(&[]) >= 1e-3).then_some(clipped);
    let working = [input.size()[2], input.size()[3]];
    let annotations = if config.skip_annotations { annotation_pixels(enhanced, working) } else { None };
    match (clipped, annotations) {
        (Some(c), Some(a)) => Some(c.maximum(&a)),
        (c, a) => c.or(a),
    }
}

/// How close, in working pixels, the two ends of the range must lie for
/// [`annotation_pixels`]: a letter and its outline, a marker and its disc.
const ANNOTATION_REACH: f64 = 2.0;
/// How far, in working pixels, an annotation is followed from where its two
/// ends meet, through pixels at either end (the rest of a marker's disc).
const ANNOTATION_GROWTH: i64 = 8;
/// How close to an end of the enhanced image's range a pixel must be (a
/// fraction of the range) to count as drawn white or black.
const ANNOTATION_LEVEL: f64 = 0.02;

/// Burnt-in annotations in `enhanced` (any size), as a 0/1 map at the
/// working size `[h, w]`: pixels at one end of its range (within
/// `ANNOTATION_LEVEL`) with one at the other end within `ANNOTATION_REACH`
/// working pixels, and from there up to `ANNOTATION_GROWTH` pixels further
/// through pixels at either end. Anatomy never puts the darkest and the
/// brightest grey next to each other; white letters outlined in black, a
/// side marker on a black disc and a collimator's blank edge against open
/// air do. `None` when there is none.
fn annotation_pixels(enhanced: &Tensor, working: [i64; 2]) -> Option<Tensor> {
    let image = enhanced.to_device(Device::Cpu).to_kind(Kind::Float);
    let (low, high) = (image.min().double_value(&[]), image.max().double_value(&[]));
    let level = ANNOTATION_LEVEL * (high - low);
    if level <= 0.0 {
        return None;
    }
    let per_working = image.size()[2].max(image.size()[3]) as f64 / working[0].max(working[1]) as f64;
    let reach = (ANNOTATION_REACH * per_working.max(1.0)).ceil() as i64;
    // A square maximum, as two 1-D passes (a native image is millions of pixels).
    let near = |at: &Tensor| {
        at.max_pool2d([1, 2 * reach + 1], [1, 1], [0, reach], [1, 1], false).max_pool2d(
            [2 * reach + 1, 1],
            [1, 1],
            [reach, 0],
            [1, 1],
            false,
        )
    };
    let (black, white) = (image.le(low + level).to_kind(Kind::Float), image.ge(high - level).to_kind(Kind::Float));
    let meeting = (&black * near(&white)).maximum(&(&white * near(&black)));
    if meeting.max().double_value(&[]) < 0.5 {
        return None;
    }
    // At the working size (any drawn pixel marks the working pixel it falls
    // in), grow from where the ends meet through drawn pixels.
    let drawn = black.maximum(&white).adaptive_max_pool2d(working).0;
    let mut annotation = meeting.adaptive_max_pool2d(working).0;
    for _ in 0..ANNOTATION_GROWTH {
        annotation = annotation.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false) * &drawn;
    }
    Some(annotation)
}

/// The pixels a component of width `scale` can score: not in the edge
/// margin, and with no clipped input pixel within its reach (2 widths).
fn scored_pixels(shape: (i64, i64), clipped: Option<&Tensor>, scale: f64, config: &HallucinationConfig) -> Tensor {
    let (h, w) = shape;
    let margin = (config.margin * h.min(w) as f64).round() as i64;
    let mut scored = Tensor::zeros([1, 1, h, w], (Kind::Float, Device::Cpu));
    if 2 * margin < h && 2 * margin < w {
        let _ = scored.narrow(2, margin, h - 2 * margin).narrow(3, margin, w - 2 * margin).fill_(1.0);
    }
    if let Some(clipped) = clipped {
        let reach = (2.0 * scale.max(1.0)).ceil() as i64 + 2;
        let near = clipped.max_pool2d([2 * reach + 1, 2 * reach + 1], [1, 1], [reach, reach], [1, 1], false);
        scored *= -near + 1.0;
    }
    scored
}

/// The extra blurs (of the candidate, of the input) that explain the whole
/// image best: the pair with the lowest median z at the fine width over
/// `scored`. At most one side is blurred.
fn choose_blur(
    candidate: &Tensor,
    input: &Tensor,
    sigma: &Tensor,
    scored: &Tensor,
    config: &HallucinationConfig,
) -> (f64, f64) {
    let mask = scored.gt(0.5);
    let mut pairs = vec![(0.0, 0.0)];
    for &b in config.blur_tolerance.iter().filter(|b| **b > 0.0) {
        pairs.push((b, 0.0));
        pairs.push((0.0, b));
    }
    let mut best = (f64::INFINITY, 0.0, 0.0);
    for (candidate_blur, input_blur) in pairs {
        let z = structure_z(
            candidate,
            input,
            sigma,
            config.fine_structure.scale,
            (candidate_blur, input_blur),
            config.highpass,
            HallucinationConfig::no_detail_gain(),
        );
        let values = z.masked_select(&mask);
        if values.size()[0] == 0 {
            return (0.0, 0.0);
        }
        let median = values.median().double_value(&[]);
        if median < best.0 {
            best = (median, candidate_blur, input_blur);
        }
    }
    (best.1, best.2)
}

/// z_s: the noise-normalised difference between `candidate` and `input` at
/// width `scale`, with the extra blurs `(of the candidate, of the input)`.
/// With `highpass` > 0 the difference's own blur at `highpass * scale` is
/// taken away first (a difference of Gaussians, i.e. a blob detector of
/// width `scale`), so a smooth local difference of tone, which no global
/// look-up table removes, is not read as structure. With a `detail_gain`
/// range other than `[1, 1]`, the part of the difference that is the input's
/// own detail scaled by a local factor in that range is taken away too.
fn structure_z(
    candidate: &Tensor,
    input: &Tensor,
    sigma: &Tensor,
    scale: f64,
    blurs: (f64, f64),
    highpass: f64,
    detail_gain: [f64; 2],
) -> Tensor {
    let (h, w) = (input.size()[2], input.size()[3]);
    let (difference, blurred_input, input_width) = band_difference(candidate, input, scale, blurs, highpass);
    let mut gain = noise_gain(h, w, input_width);
    if highpass > 0.0 {
        gain *= band_pass_factor(input_width, highpass * scale);
    }
    if detail_gain == HallucinationConfig::no_detail_gain() {
        return difference.abs() / (sigma * gain);
    }
    // Least squares of the difference on the input's detail over a window of
    // twice the width gives the local excess factor a (output detail = (1 +
    // a) input detail), clamped to the allowed range. The residual's noise
    // is the input's scaled by 1 + a (the input's noise is in both terms).
    let detail =
        if highpass > 0.0 { &blurred_input - gaussian_blur(&blurred_input, highpass * scale) } else { blurred_input };
    let window = DETAIL_GAIN_WINDOW * scale;
    let excess = (gaussian_blur(&(&difference * &detail), window) / (gaussian_blur(&detail.square(), window) + 1e-12))
        .clamp(detail_gain[0] - 1.0, detail_gain[1] - 1.0);
    (difference - &excess * detail).abs() / (sigma * gain * (excess + 1.0))
}

/// The window of the detail-gain fit, in widths of the component.
const DETAIL_GAIN_WINDOW: f64 = 2.0;

/// The signed difference [`structure_z`] divides by the noise: both images
/// blurred to width `scale` (widened by their extra blurs), and with
/// `highpass` > 0 the difference's own blur at `highpass * scale` taken
/// away. Also returns the input blurred to its total width (the detail-gain
/// fit's reference, so it is not blurred twice) and that width, which sets the noise gain.
fn band_difference(
    candidate: &Tensor,
    input: &Tensor,
    scale: f64,
    blurs: (f64, f64),
    highpass: f64,
) -> (Tensor, Tensor, f64) {
    let widen = |b: f64| (scale * scale + b * b).sqrt();
    let input_width = widen(blurs.1);
    let blurred_input = gaussian_blur(input, input_width);
    let difference = gaussian_blur(candidate, widen(blurs.0)) - &blurred_input;
    if highpass > 0.0 {
        (&difference - gaussian_blur(&difference, highpass * scale), blurred_input, input_width)
    } else {
        (difference, blurred_input, input_width)
    }
}

/// Directions the line component averages along (0 to 180 degrees).
const LINE_ORIENTATIONS: i64 = 8;

/// The line component's z: the fine difference ([`band_difference`] at
/// `width`) averaged along a line of Gaussian length
/// `length` in each of [`LINE_ORIENTATIONS`] directions, each divided by the
/// noise that averaging leaves, the largest over directions. A thin line is
/// coherent along itself and so gains sqrt(length) over noise, where the fine
/// component sees it only at its own width.
fn line_z(
    candidate: &Tensor,
    input: &Tensor,
    sigma: &Tensor,
    width: f64,
    length: f64,
    blurs: (f64, f64),
    highpass: f64,
) -> Tensor {
    let (difference, _, input_width) = band_difference(candidate, input, width, blurs, highpass);
    let kernels = line_kernels(length);
    let radius = kernels.size()[2] / 2;
    let along = difference.replication_pad2d([radius, radius, radius, radius]).conv2d(
        &kernels,
        None::<Tensor>,
        [1, 1],
        [0, 0],
        [1, 1],
        1,
    );
    // The same filters on a unit impulse in the input (the noise's side)
    // give each direction's noise gain (the interior value; the edge margin
    // is not scored).
    let size = 2 * (radius + (4.0 * input_width.max(highpass * width)).ceil() as i64) + 1;
    let impulse = Tensor::zeros([1, 1, size, size], (Kind::Float, Device::Cpu));
    let _ = impulse.get(0).get(0).get(size / 2).get(size / 2).fill_(1.0);
    let (filtered, _, _) = band_difference(&impulse.zeros_like(), &impulse, width, blurs, highpass);
    let response = filtered.conv2d(&kernels, None::<Tensor>, [1, 1], [radius, radius], [1, 1], 1);
    let gains = response.square().sum_dim_intlist([2, 3].as_slice(), true, Kind::Float).sqrt().view([1, -1, 1, 1]);
    (along.abs() / gains).amax([1].as_slice(), true) / sigma
}

/// `[LINE_ORIENTATIONS, 1, k, k]`: thin (0.7 px) Gaussian segments of
/// length scale `length`, one per direction, each summing to 1.
fn line_kernels(length: f64) -> Tensor {
    let radius = (2.5 * length).ceil().max(1.0) as i64;
    let side = 2 * radius + 1;
    let mut values = Vec::with_capacity((LINE_ORIENTATIONS * side * side) as usize);
    for k in 0..LINE_ORIENTATIONS {
        let angle = std::f64::consts::PI * k as f64 / LINE_ORIENTATIONS as f64;
        let (sin, cos) = angle.sin_cos();
        let mut kernel = Vec::with_capacity((side * side) as usize);
        for y in -radius..=radius {
            for x in -radius..=radius {
                let (u, v) = (x as f64 * cos + y as f64 * sin, -(x as f64) * sin + y as f64 * cos);
                kernel.push((-(u * u) / (2.0 * length * length) - (v * v) / (2.0 * 0.7 * 0.7)).exp());
            }
        }
        let sum: f64 = kernel.iter().sum();
        values.extend(kernel.into_iter().map(|value| (value / sum) as f32));
    }
    Tensor::from_slice(&values).view([LINE_ORIENTATIONS, 1, side, side])
}

/// How much taking away the blur at `width` changes the noise gain of a
/// Gaussian of width `a` (continuous 2-D Gaussians; `<G_a, G_b> = 1 / (2 pi (a^2 + b^2))`):
/// `||G_a - G_b|| / ||G_a||` with `b^2 = a^2 + width^2`.
fn band_pass_factor(a: f64, width: f64) -> f64 {
    let (a2, b2) = (a * a, a * a + width * width);
    let norm2 = |x2: f64, y2: f64| 1.0 / (2.0 * std::f64::consts::PI * (x2 + y2));
    ((norm2(a2, a2) + norm2(b2, b2) - 2.0 * norm2(a2, b2)).max(0.0) / norm2(a2, a2)).sqrt()
}

/// Scores how far `enhanced` departs from what `low_quality` supports (both
/// `[1, 1, H, W]` in [-1, 1], same size, any device). `model` supplies G_BA
/// for `cycle-consistency` and the samples for `diffusion-spread`; `tiles`
/// is how those networks are tiled.
pub fn score(
    model: &LedModel,
    low_quality: &Tensor,
    enhanced: &Tensor,
    tiles: &TileConfig,
    config: &HallucinationConfig,
) -> Result<HallucinationReport> {
    config.validate()?;
    let _no_grad = tch::no_grad_guard();
    let (h, w) = check_image("the low-quality input", low_quality)?;
    let size = check_image("the enhanced output", enhanced)?;
    if size != (h, w) {
        return Err(Error::InvalidParams(format!(
            "hallucination check: the enhanced output is {}x{} but the input is {h}x{w}; score the output at the input's matrix",
            size.0, size.1
        )));
    }
    let input = to_working(low_quality, config.working_size);
    let output = to_working(enhanced, config.working_size);
    let shape = (input.size()[2], input.size()[3]);
    let unsupported = unsupported_pixels(&input, enhanced, config);
    let input_noise = noise_map(&input, config);
    // The tone table leaves clipped neighbourhoods out of its fit.
    let tone_noise = match &unsupported {
        Some(c) => input_noise.maximum(&(c.max_pool2d([5, 5], [1, 1], [2, 2], [1, 1], false) * 2.0)),
        None => input_noise.shallow_clone(),
    };
    let mapped = tone_map(&output, &input, &tone_noise);
    // A noisy output's own noise explains differences too: its image-wide
    // level (a median over blocks), so that a structure drawn into the
    // output cannot raise the noise allowed where it lies.
    let output_noise = noise_map(&mapped, config).median().double_value(&[]);
    let sigma = (input_noise.square() + output_noise * output_noise).sqrt();
    let scored = |scale: f64| scored_pixels(shape, unsupported.as_ref(), scale, config);
    let blurs = choose_blur(&mapped, &input, &sigma, &scored(config.fine_structure.scale), config);

    let mut maps: Vec<(usize, Tensor)> = Vec::new();
    let structure = [&config.fine_structure, &config.medium_structure, &config.coarse_structure];
    for (index, component) in structure.iter().enumerate() {
        let z = structure_z(&mapped, &input, &sigma, component.scale, blurs, config.highpass, config.detail_gain);
        maps.push((index, z * scored(component.scale)));
    }
    let fine_z = &maps[0].1;
    let energy = gaussian_blur(&(fine_z * fine_z), config.texture_energy.scale).sqrt();
    maps.push((3, energy * scored(config.texture_energy.scale)));
    if config.line_structure.weight > 0.0 || config.evaluate_unweighted {
        let scale = config.line_structure.scale;
        let z = line_z(&mapped, &input, &sigma, config.fine_structure.scale, scale, blurs, config.highpass);
        maps.push((4, z * scored(scale)));
    }

    if config.cycle_consistency.weight > 0.0 || config.evaluate_unweighted {
        let cycle_degraded = model.degrade(&output.to_device(model.device()), tiles)?.to_device(Device::Cpu);
        let cycle_mapped = tone_map(&cycle_degraded, &input, &tone_noise);
        let scale = config.cycle_consistency.scale;
        let z =
            structure_z(&cycle_mapped, &input, &input_noise, scale, (0.0, 0.0), config.highpass, config.detail_gain);
        maps.push((5, z * scored(scale)));
    }
    if config.samples > 0 && (config.diffusion_spread.weight > 0.0 || config.evaluate_unweighted) {
        let spread = diffusion_spread(model, &input, &input_noise, tiles, config)?;
        maps.push((6, spread * scored(config.diffusion_spread.scale)));
    }

    let calibrations = config.components();
    let mut raw = Vec::with_capacity(maps.len());
    let mut doubt = input.zeros_like();
    for (index, map) in &maps {
        let calibration = calibrations[*index];
        doubt = doubt.maximum(&(calibration.squash(map) * calibration.weight));
        raw.push((COMPONENTS[*index].to_owned(), map.max().double_value(&[])));
    }
    let (score, components) = combine(&raw, config);
    let doubt_map =
        if doubt.size()[2..] == [h, w] { doubt } else { doubt.upsample_bilinear2d([h, w], false, None, None) }
            .clamp(0.0, 1.0)
            .to_kind(Kind::Float);
    Ok(HallucinationReport { score, components, raw, doubt_map })
}

/// The score and component values from the components' raw statistics (as
/// [`HallucinationReport::raw`] holds them): each squashed by its calibration,
/// then combined as a weighted noisy-or. Benchmarks recalibrate with it.
pub fn combine(raw: &[(String, f64)], config: &HallucinationConfig) -> (f64, Vec<(String, f64)>) {
    let mut keep = 1.0f64;
    let mut components = Vec::with_capacity(raw.len());
    for (name, statistic) in raw {
        let Some(index) = COMPONENTS.iter().position(|c| c == name) else { continue };
        let calibration = config.components()[index];
        let excess = (statistic - calibration.offset).max(0.0) / calibration.spread.max(1e-6);
        let value = (1.0 - (-excess).exp()).clamp(0.0, 1.0);
        keep *= 1.0 - calibration.weight * value;
        components.push((name.clone(), value));
    }
    ((1.0 - keep).clamp(0.0, 1.0), components)
}

/// The standard deviation across `samples` seeded LED samples of the input,
/// band-limited at the component's width, relative to the input's noise there.
fn diffusion_spread(
    model: &LedModel,
    input: &Tensor,
    sigma: &Tensor,
    tiles: &TileConfig,
    config: &HallucinationConfig,
) -> Result<Tensor> {
    let params = EnhanceParams {
        t0: config.sample_t0,
        steps: config.sample_steps,
        tiles: tiles.clone(),
        precision: Precision::F32,
    };
    let mut noise = NoiseSource::new(config.sample_seed);
    let scale = config.diffusion_spread.scale;
    let mut samples = Vec::with_capacity(config.samples);
    for _ in 0..config.samples {
        let sample =
            model.enhance(&input.to_device(model.device()), &params, &mut noise)?.output.to_device(Device::Cpu);
        samples.push(gaussian_blur(&sample, scale));
    }
    let stacked = Tensor::cat(&samples, 0);
    let spread = stacked.std_dim(0, false, true);
    Ok(spread / (sigma * noise_gain(input.size()[2], input.size()[3], scale)))
}
