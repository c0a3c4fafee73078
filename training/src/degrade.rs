//! The low-dose degradation simulator: turns a well-exposed chest X-ray into a
//! plausible under-exposed acquisition of the same patient, for the
//! low-quality training pool and for evaluation against ground truth.
//!
//! No public set pairs real under-exposed chest X-rays with ground truth, so
//! the degradation is simulated in the detector's linear domain:
//!
//! 1. **Attenuation.** The display intensity d in [0, 1] (1 white, bone) is
//!    read as a line integral mu = mu_max * d, so the detector saw the
//!    transmission T = exp(-mu).
//! 2. **Reduced dose.** The expected quanta per pixel are lambda = f * N * T:
//!    N quanta at full dose, f the dose fraction. The Deviation Index of the
//!    simulated exposure is DI = 10 log10 f (f = 0.2 is DI -7, a fifth of the dose).
//! 3. **Detector blur.** lambda is blurred with a Gaussian point-spread function
//!    of width sigma_blur pixels (focal spot, scatter).
//! 4. **Quantum noise.** The counts are Poisson(lambda): SNR falls with sqrt(dose).
//! 5. **Correlated noise.** The scintillator spreads each quantum's light over
//!    neighbouring pixels: the counts (signal and noise) are blurred again with
//!    sigma_corr, so the noise is no longer white.
//! 6. **Electronic noise.** Gaussian read-out noise of sigma_e quanta is added;
//!    it does not shrink with dose, so it dominates in the darkest regions.
//! 7. **Processing.** The detector's log transform recovers mu' = -ln(counts / (f N)),
//!    mapped back to display intensity by mu_max.
//! 8. **Resampling.** The modality or the archive resizes the image: down by
//!    a factor r (antialiased) and back up (bilinear), which softens detail and
//!    correlates the noise further.
//! 9. **Tone.** Under-exposed images look different after automatic windowing,
//!    in more ways than flat: contrast compressed about the mean
//!    (d = mean + c (d - mean), c < 1), a tone-curve change (d^gamma), a
//!    black-level lift (d + offset), and a window that clips a fraction of
//!    the range at either end before it is stretched back to [0, 1].
//! 10. **Quantisation** to the stored bit depth (8, 10, 12 or 16 bits).
//!
//! Every image draws its own parameters from [`DegradationRanges`] (dose and
//! quanta log-uniform, the bit depth from a list, the others uniform), so the
//! models learn a family of degradations rather than one setting. Two sets of
//! ranges are built in: [`DegradationRanges::default`], the training ranges,
//! and [`DegradationRanges::held_out`], a setting training never sees (lower
//! dose and quanta, more blur and correlation, a darker tone curve, more
//! lift), for the evaluation of generalisation. The drawn
//! [`DegradationParams`] are returned so that they can be recorded with the
//! data and in the bundle.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Poisson};
use serde::{Deserialize, Serialize};

/// Ranges the simulator draws each image's parameters from (`[low, high]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DegradationRanges {
    /// Dose fraction f, drawn log-uniformly: 0.05..0.4 is DI -13 to -4.
    pub dose_fraction: [f64; 2],
    /// Quanta per pixel at full dose (N), drawn log-uniformly.
    pub full_dose_quanta: [f64; 2],
    /// mu_max: the line integral that display white stands for.
    pub attenuation_max: [f64; 2],
    /// Gaussian PSF sigma in pixels.
    pub blur_sigma: [f64; 2],
    /// Read-out noise in quanta (standard deviation).
    pub electronic_noise: [f64; 2],
    /// Contrast factor c.
    pub contrast: [f64; 2],
    /// Gaussian sigma in pixels of the light spread after the quanta are
    /// counted (correlates the noise); absent: none.
    #[serde(default)]
    pub noise_correlation: [f64; 2],
    /// Resampling factor r (down by r, back up); absent: 1, none.
    #[serde(default = "identity")]
    pub resample: [f64; 2],
    /// Tone-curve exponent gamma on the display intensity; absent: 1.
    #[serde(default = "identity")]
    pub gamma: [f64; 2],
    /// Black-level lift added to the display intensity; absent: none.
    #[serde(default)]
    pub offset: [f64; 2],
    /// Fraction of the display range the window clips at the dark end; absent: none.
    #[serde(default)]
    pub clip_low: [f64; 2],
    /// Fraction of the display range the window clips at the bright end; absent: none.
    #[serde(default)]
    pub clip_high: [f64; 2],
    /// Bit depths the output is quantised to, one drawn per image; absent or empty: none.
    #[serde(default)]
    pub bits: Vec<u32>,
}

fn identity() -> [f64; 2] {
    [1.0, 1.0]
}

impl Default for DegradationRanges {
    /// The training ranges.
    fn default() -> Self {
        Self {
            dose_fraction: [0.03, 0.5],
            full_dose_quanta: [2000.0, 40000.0],
            attenuation_max: [2.0, 4.5],
            blur_sigma: [0.0, 1.5],
            electronic_noise: [1.0, 10.0],
            contrast: [0.5, 1.0],
            noise_correlation: [0.0, 1.0],
            resample: [1.0, 1.5],
            gamma: [0.7, 1.4],
            offset: [-0.05, 0.12],
            clip_low: [0.0, 0.05],
            clip_high: [0.0, 0.05],
            bits: vec![8, 10, 12, 16],
        }
    }
}

/// The names [`DegradationRanges::from_arg`] knows besides file paths.
pub const RANGE_NAMES: [&str; 2] = ["training", "held-out"];

impl DegradationRanges {
    /// A setting the training ranges do not cover, for the evaluation of
    /// generalisation: lower dose and fewer quanta, more blur, correlation and
    /// resampling, a darker tone curve (gamma above training's 1.4), more lift,
    /// 8 or 12 bits. Overlaps the training ranges in part.
    pub fn held_out() -> Self {
        Self {
            dose_fraction: [0.02, 0.1],
            full_dose_quanta: [1500.0, 6000.0],
            attenuation_max: [3.0, 5.0],
            blur_sigma: [0.8, 2.0],
            electronic_noise: [4.0, 14.0],
            contrast: [0.45, 0.8],
            noise_correlation: [0.5, 1.4],
            resample: [1.2, 1.8],
            gamma: [1.2, 1.6],
            offset: [0.05, 0.18],
            clip_low: [0.0, 0.06],
            clip_high: [0.0, 0.06],
            bits: vec![8, 12],
        }
    }

    /// `training`, `held-out`, or a TOML file with the keys of this struct.
    pub fn from_arg(arg: &str) -> anyhow::Result<Self> {
        use anyhow::Context;
        let ranges = match arg {
            "training" => Self::default(),
            "held-out" => Self::held_out(),
            path => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("reading degradation ranges {path} (give a TOML file, or one of {RANGE_NAMES:?})")
                })?;
                toml::from_str(&text).with_context(|| format!("parsing degradation ranges {path}"))?
            }
        };
        ranges.validate()?;
        Ok(ranges)
    }
}

/// The parameters one degraded image was made with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DegradationParams {
    /// Dose fraction f.
    pub dose_fraction: f64,
    /// Quanta per pixel at full dose.
    pub full_dose_quanta: f64,
    /// mu_max.
    pub attenuation_max: f64,
    /// Gaussian PSF sigma in pixels (0: no blur).
    pub blur_sigma: f64,
    /// Read-out noise in quanta.
    pub electronic_noise: f64,
    /// Contrast factor c (1: unchanged).
    pub contrast: f64,
    /// Light-spread sigma after counting, in pixels (0: white noise).
    pub noise_correlation: f64,
    /// Resampling factor (1: none).
    pub resample: f64,
    /// Tone-curve exponent (1: unchanged).
    pub gamma: f64,
    /// Black-level lift.
    pub offset: f64,
    /// Window clip at the dark end (fraction of the range).
    pub clip_low: f64,
    /// Window clip at the bright end (fraction of the range).
    pub clip_high: f64,
    /// Bit depth of the output (0: not quantised).
    pub bits: u32,
}

impl DegradationParams {
    /// The Deviation Index (IEC 62494-1) of the simulated exposure: 10 log10 f.
    pub fn deviation_index(&self) -> f64 {
        10.0 * self.dose_fraction.log10()
    }
}

impl DegradationRanges {
    /// Checks that every range is ordered and physically possible.
    pub fn validate(&self) -> anyhow::Result<()> {
        let ranges = [
            ("dose-fraction", self.dose_fraction, 1e-6, 1.0),
            ("full-dose-quanta", self.full_dose_quanta, 1.0, 1e9),
            ("attenuation-max", self.attenuation_max, 0.1, 20.0),
            ("blur-sigma", self.blur_sigma, 0.0, 20.0),
            ("electronic-noise", self.electronic_noise, 0.0, 1e6),
            ("contrast", self.contrast, 0.01, 1.0),
            ("noise-correlation", self.noise_correlation, 0.0, 10.0),
            ("resample", self.resample, 1.0, 4.0),
            ("gamma", self.gamma, 0.2, 5.0),
            ("offset", self.offset, -0.5, 0.5),
            ("clip-low", self.clip_low, 0.0, 0.3),
            ("clip-high", self.clip_high, 0.0, 0.3),
        ];
        for (name, [low, high], min, max) in ranges {
            anyhow::ensure!(
                min <= low && low <= high && high <= max,
                "degradation {name} = [{low}, {high}] must be an ordered range within [{min}, {max}]"
            );
        }
        if let Some(bits) = self.bits.iter().find(|&&b| !(2..=16).contains(&b)) {
            anyhow::bail!("degradation bits: {bits} is not a bit depth in 2..=16 (e.g. bits = [8, 12, 16])");
        }
        Ok(())
    }

    /// Draws one image's parameters.
    pub fn sample(&self, rng: &mut impl Rng) -> DegradationParams {
        let uniform = |rng: &mut dyn rand::RngCore, [low, high]: [f64; 2]| {
            if high > low {
                rng.gen_range(low..=high)
            } else {
                low
            }
        };
        let log_uniform =
            |rng: &mut dyn rand::RngCore, [low, high]: [f64; 2]| uniform(rng, [low.ln(), high.ln()]).exp();
        DegradationParams {
            dose_fraction: log_uniform(rng, self.dose_fraction),
            full_dose_quanta: log_uniform(rng, self.full_dose_quanta),
            attenuation_max: uniform(rng, self.attenuation_max),
            blur_sigma: uniform(rng, self.blur_sigma),
            electronic_noise: uniform(rng, self.electronic_noise),
            contrast: uniform(rng, self.contrast),
            noise_correlation: uniform(rng, self.noise_correlation),
            resample: uniform(rng, self.resample),
            gamma: uniform(rng, self.gamma),
            offset: uniform(rng, self.offset),
            clip_low: uniform(rng, self.clip_low),
            clip_high: uniform(rng, self.clip_high),
            bits: if self.bits.is_empty() { 0 } else { self.bits[rng.gen_range(0..self.bits.len())] },
        }
    }
}

/// A one-dimensional normalised Gaussian kernel of radius ceil(3 sigma).
fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    let radius = (3.0 * sigma).ceil() as i64;
    let weights: Vec<f64> = (-radius..=radius).map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp()).collect();
    let sum: f64 = weights.iter().sum();
    weights.into_iter().map(|w| w / sum).collect()
}

/// A plane blurred by a Gaussian of `sigma` pixels (edges mirrored).
pub fn blur_plane(plane: &crate::metrics::Plane, sigma: f64) -> crate::metrics::Plane {
    let values: Vec<f64> = plane.data.iter().map(|&v| f64::from(v)).collect();
    let blurred = blur(&values, plane.width, plane.height, sigma);
    crate::metrics::Plane {
        width: plane.width,
        height: plane.height,
        data: blurred.into_iter().map(|v| v as f32).collect(),
    }
}

/// Separable Gaussian blur of a row-major `width` x `height` plane, edges mirrored.
fn blur(plane: &[f64], width: usize, height: usize, sigma: f64) -> Vec<f64> {
    if sigma < 0.05 {
        return plane.to_vec();
    }
    let kernel = gaussian_kernel(sigma);
    let radius = (kernel.len() / 2) as i64;
    let mirror = |i: i64, n: usize| -> usize {
        let n = n as i64;
        let mut i = i;
        while i < 0 || i >= n {
            i = if i < 0 { -i - 1 } else { 2 * n - i - 1 };
        }
        i as usize
    };
    let mut rows = vec![0.0; plane.len()];
    for y in 0..height {
        for x in 0..width {
            rows[y * width + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, w)| w * plane[y * width + mirror(x as i64 + k as i64 - radius, width)])
                .sum();
        }
    }
    let mut out = vec![0.0; plane.len()];
    for y in 0..height {
        for x in 0..width {
            out[y * width + x] = kernel
                .iter()
                .enumerate()
                .map(|(k, w)| w * rows[mirror(y as i64 + k as i64 - radius, height) * width + x])
                .sum();
        }
    }
    out
}

/// Degrades a row-major plane of display intensities in [0, 1] with the given
/// parameters; all randomness comes from `seed`. Returns intensities in [0, 1].
pub fn degrade(intensity: &[f32], width: usize, height: usize, params: &DegradationParams, seed: u64) -> Vec<f32> {
    assert_eq!(intensity.len(), width * height, "plane size");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let quanta = params.dose_fraction * params.full_dose_quanta;
    let expected: Vec<f64> =
        intensity.iter().map(|&d| quanta * (-(params.attenuation_max) * f64::from(d.clamp(0.0, 1.0))).exp()).collect();
    let expected = blur(&expected, width, height, params.blur_sigma);
    let counts: Vec<f64> = expected.iter().map(|&lambda| quantum_count(lambda, &mut rng)).collect();
    let counts = blur(&counts, width, height, params.noise_correlation);
    let electronic = Normal::new(0.0, params.electronic_noise.max(1e-12)).expect("finite sigma");
    let processed: Vec<f64> = counts
        .iter()
        .map(|&count| {
            let signal = count + electronic.sample(&mut rng);
            // Half a quantum floor: the log of an empty pixel stays finite.
            (-(signal.max(0.5) / quanta).ln() / params.attenuation_max).clamp(0.0, 1.0)
        })
        .collect();
    let processed = resample(&processed, width, height, params.resample);
    let mean = processed.iter().sum::<f64>() / processed.len().max(1) as f64;
    let window = (1.0 - params.clip_low - params.clip_high).max(0.05);
    let levels = if params.bits > 0 { f64::from((1u32 << params.bits.min(16)) - 1) } else { 0.0 };
    processed
        .iter()
        .map(|&d| {
            let d = (mean + params.contrast * (d - mean)).clamp(0.0, 1.0);
            let d = d.powf(params.gamma) + params.offset;
            let d = ((d - params.clip_low) / window).clamp(0.0, 1.0);
            (if levels > 0.0 { (d * levels).round() / levels } else { d }) as f32
        })
        .collect()
}

/// Above this mean the count is drawn from the normal approximation of the
/// Poisson distribution (mean and variance lambda; its skewness 1/sqrt(lambda)
/// is below 0.18 there), which is an order of magnitude faster to draw.
const NORMAL_APPROXIMATION_ABOVE: f64 = 30.0;

/// One pixel's quantum count: Poisson(lambda).
fn quantum_count(lambda: f64, rng: &mut impl Rng) -> f64 {
    if lambda > NORMAL_APPROXIMATION_ABOVE {
        let standard: f64 = rng.sample(rand_distr::StandardNormal);
        (lambda + lambda.sqrt() * standard).max(0.0)
    } else if lambda > 0.0 {
        Poisson::new(lambda).map(|p| p.sample(rng)).unwrap_or(lambda)
    } else {
        0.0
    }
}

/// Down by `factor` (antialiased bilinear) and back up to `width` x `height`
/// (bilinear); the plane unchanged when the factor is about 1.
fn resample(plane: &[f64], width: usize, height: usize, factor: f64) -> Vec<f64> {
    let small = |n: usize| ((n as f64 / factor).round() as i64).max(2);
    if factor < 1.01 || width < 4 || height < 4 {
        return plane.to_vec();
    }
    let tensor = tch::Tensor::from_slice(plane).view([1, 1, height as i64, width as i64]);
    let down = tensor.internal_upsample_bilinear2d_aa([small(height), small(width)], false, None, None);
    let up = down.upsample_bilinear2d([height as i64, width as i64], false, None, None);
    Vec::<f64>::try_from(up.flatten(0, -1)).expect("a float64 plane")
}

/// [`degrade`] on an image tensor `[..., H, W]` in the model range [-1, 1];
/// returns a float tensor of the same shape and range.
pub fn degrade_tensor(image: &tch::Tensor, params: &DegradationParams, seed: u64) -> anyhow::Result<tch::Tensor> {
    let size = image.size();
    anyhow::ensure!(size.len() >= 2, "expected an image [..., H, W], got {size:?}");
    let (height, width) = (size[size.len() - 2] as usize, size[size.len() - 1] as usize);
    let intensity = Vec::<f32>::try_from(((image.to_kind(tch::Kind::Float) + 1.0) / 2.0).flatten(0, -1))?;
    let degraded = degrade(&intensity, width, height, params, seed);
    Ok(tch::Tensor::from_slice(&degraded).view(size.as_slice()) * 2.0 - 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phantom(width: usize, height: usize) -> Vec<f32> {
        (0..width * height)
            .map(|i| {
                let (x, y) = ((i % width) as f32 / width as f32, (i / width) as f32 / height as f32);
                0.2 + 0.6 * (0.5 + 0.5 * (6.0 * x).sin() * (4.0 * y).cos())
            })
            .collect()
    }

    fn rms_difference(a: &[f32], b: &[f32]) -> f64 {
        (a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum::<f64>() / a.len() as f64).sqrt()
    }

    fn clean() -> DegradationParams {
        DegradationParams {
            dose_fraction: 1.0,
            full_dose_quanta: 1e7,
            attenuation_max: 3.0,
            blur_sigma: 0.0,
            electronic_noise: 0.0,
            contrast: 1.0,
            noise_correlation: 0.0,
            resample: 1.0,
            gamma: 1.0,
            offset: 0.0,
            clip_low: 0.0,
            clip_high: 0.0,
            bits: 0,
        }
    }

    #[test]
    fn at_full_dose_with_plenty_of_quanta_the_image_is_unchanged() {
        let image = phantom(64, 48);
        let out = degrade(&image, 64, 48, &clean(), 1);
        assert!(rms_difference(&image, &out) < 2e-3, "{}", rms_difference(&image, &out));
    }

    #[test]
    fn noise_grows_as_the_dose_falls_as_one_over_its_square_root() {
        let image = vec![0.5f32; 128 * 128];
        let noise_at = |dose: f64| {
            let params = DegradationParams { dose_fraction: dose, full_dose_quanta: 2000.0, ..clean() };
            rms_difference(&image, &degrade(&image, 128, 128, &params, 3))
        };
        let (full, fifth, twentieth) = (noise_at(1.0), noise_at(0.2), noise_at(0.05));
        assert!(full < fifth && fifth < twentieth, "{full} {fifth} {twentieth}");
        // Quantum-limited: sigma_mu = 1 / sqrt(lambda), so a fifth of the dose has sqrt(5) times the noise.
        let ratio = fifth / full;
        assert!((ratio - 5f64.sqrt()).abs() < 0.15, "noise ratio {ratio}");
    }

    #[test]
    fn blur_removes_fine_detail_and_contrast_compression_flattens() {
        let (w, h) = (64, 64);
        let stripes: Vec<f32> = (0..w * h).map(|i| if (i % w) % 2 == 0 { 0.3 } else { 0.7 }).collect();
        let blurred = degrade(&stripes, w, h, &DegradationParams { blur_sigma: 1.5, ..clean() }, 4);
        let contrast = |p: &[f32]| (p[w * 10 + 20] - p[w * 10 + 21]).abs();
        assert!(contrast(&blurred) < 0.05 * contrast(&stripes), "blur kept {}", contrast(&blurred));
        let flat = degrade(&stripes, w, h, &DegradationParams { contrast: 0.5, ..clean() }, 4);
        assert!((contrast(&flat) - 0.5 * contrast(&stripes)).abs() < 0.01);
    }

    #[test]
    fn the_same_seed_reproduces_and_parameters_stay_in_their_ranges() {
        let image = phantom(32, 32);
        let ranges = DegradationRanges::default();
        ranges.validate().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for _ in 0..200 {
            let p = ranges.sample(&mut rng);
            assert!((0.03..=0.5).contains(&p.dose_fraction) && (-15.3..=-2.9).contains(&p.deviation_index()));
            assert!((0.5..=1.0).contains(&p.contrast) && (0.0..=1.5).contains(&p.blur_sigma));
            assert!((0.7..=1.4).contains(&p.gamma) && [8, 10, 12, 16].contains(&p.bits));
        }
        let p = ranges.sample(&mut rng);
        assert_eq!(degrade(&image, 32, 32, &p, 5), degrade(&image, 32, 32, &p, 5));
        assert_ne!(degrade(&image, 32, 32, &p, 5), degrade(&image, 32, 32, &p, 6));
    }

    #[test]
    fn impossible_ranges_are_refused_with_the_key() {
        let ranges = DegradationRanges { dose_fraction: [0.5, 0.1], ..Default::default() };
        assert!(ranges.validate().unwrap_err().to_string().contains("dose-fraction"));
        let ranges = DegradationRanges { bits: vec![8, 40], ..Default::default() };
        assert!(ranges.validate().unwrap_err().to_string().contains("bits"));
        let error = DegradationRanges::from_arg("/nonexistent/ranges.toml").unwrap_err();
        assert!(format!("{error:#}").contains("held-out"), "{error:#}");
    }

    #[test]
    fn an_old_ranges_file_reads_with_the_new_steps_off_and_both_built_in_settings_validate() {
        let old = "dose-fraction = [0.1, 0.1]\nfull-dose-quanta = [1e7, 1e7]\nattenuation-max = [3.0, 3.0]\n\
                   blur-sigma = [0.0, 0.0]\nelectronic-noise = [0.0, 0.0]\ncontrast = [1.0, 1.0]\n";
        let ranges: DegradationRanges = toml::from_str(old).unwrap();
        let p = ranges.sample(&mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!((p.gamma, p.resample, p.offset, p.bits, p.noise_correlation), (1.0, 1.0, 0.0, 0, 0.0));
        DegradationRanges::default().validate().unwrap();
        DegradationRanges::held_out().validate().unwrap();
        assert!(DegradationRanges::held_out().gamma[1] > DegradationRanges::default().gamma[1]);
    }

    #[test]
    fn tone_curve_lift_clipping_and_quantisation_act_as_drawn() {
        let ramp: Vec<f32> = (0..64 * 64).map(|i| (i % 64) as f32 / 63.0).collect();
        let at = |p: &DegradationParams| degrade(&ramp, 64, 64, p, 2);
        let mid = |plane: &[f32]| plane[64 * 32 + 32];
        // gamma > 1 darkens the middle of the range, a lift brightens it.
        assert!(mid(&at(&DegradationParams { gamma: 1.5, ..clean() })) < mid(&ramp) - 0.05);
        assert!((mid(&at(&DegradationParams { offset: 0.1, ..clean() })) - mid(&ramp) - 0.1).abs() < 0.01);
        // A window clipping 10 % at each end saturates both ends of the ramp.
        let clipped = at(&DegradationParams { clip_low: 0.1, clip_high: 0.1, ..clean() });
        assert_eq!((clipped[64 * 10], clipped[64 * 10 + 63]), (0.0, 1.0));
        // 8 bits: every value on the 1/255 grid.
        let quantised = at(&DegradationParams { bits: 8, ..clean() });
        assert!(quantised.iter().all(|&v| ((v * 255.0) - (v * 255.0).round()).abs() < 1e-3));
    }

    #[test]
    fn light_spread_correlates_the_noise_and_resampling_softens_it() {
        let flat = vec![0.5f32; 96 * 96];
        let noisy = DegradationParams { dose_fraction: 0.05, full_dose_quanta: 4000.0, ..clean() };
        // Correlation of neighbouring pixels' noise.
        let neighbour_correlation = |plane: &[f32]| {
            let mean = plane.iter().sum::<f32>() / plane.len() as f32;
            let (mut product, mut square) = (0.0f64, 0.0f64);
            for y in 0..96 {
                for x in 0..95 {
                    let (a, b) = (plane[y * 96 + x] - mean, plane[y * 96 + x + 1] - mean);
                    product += f64::from(a * b);
                    square += f64::from(a * a);
                }
            }
            product / square
        };
        let white = neighbour_correlation(&degrade(&flat, 96, 96, &noisy, 7));
        let spread =
            neighbour_correlation(&degrade(&flat, 96, 96, &DegradationParams { noise_correlation: 1.0, ..noisy }, 7));
        let resampled =
            neighbour_correlation(&degrade(&flat, 96, 96, &DegradationParams { resample: 1.8, ..noisy }, 7));
        assert!(white.abs() < 0.1 && spread > 0.5 && resampled > 0.3, "{white} {spread} {resampled}");
    }
}
