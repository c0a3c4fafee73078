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
//!    of width sigma_blur pixels (scintillator spread, focal spot).
//! 4. **Quantum noise.** The counts are Poisson(lambda): SNR falls with sqrt(dose).
//! 5. **Electronic noise.** Gaussian read-out noise of sigma_e quanta is added;
//!    it does not shrink with dose, so it dominates in the darkest regions.
//! 6. **Processing.** The detector's log transform recovers mu' = -ln(counts / (f N)),
//!    mapped back to display intensity by mu_max.
//! 7. **Contrast compression.** Under-exposed images look flat after automatic
//!    windowing: d'' = mean + c (d' - mean), c < 1.
//!
//! Every image draws its own parameters from [`DegradationRanges`] (dose
//! log-uniform, the others uniform), so the models learn a family of
//! degradations rather than one setting. The drawn [`DegradationParams`] are
//! returned so that they can be recorded with the data and in the bundle.

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
}

impl Default for DegradationRanges {
    fn default() -> Self {
        Self {
            dose_fraction: [0.05, 0.4],
            full_dose_quanta: [3000.0, 30000.0],
            attenuation_max: [2.5, 4.0],
            blur_sigma: [0.3, 1.5],
            electronic_noise: [2.0, 8.0],
            contrast: [0.6, 1.0],
        }
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
        ];
        for (name, [low, high], min, max) in ranges {
            anyhow::ensure!(
                min <= low && low <= high && high <= max,
                "degradation {name} = [{low}, {high}] must be an ordered range within [{min}, {max}]"
            );
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
    let electronic = Normal::new(0.0, params.electronic_noise.max(1e-12)).expect("finite sigma");
    let processed: Vec<f64> = expected
        .iter()
        .map(|&lambda| {
            let counts =
                if lambda > 0.0 { Poisson::new(lambda).map(|p| p.sample(&mut rng)).unwrap_or(lambda) } else { 0.0 };
            let signal = counts + electronic.sample(&mut rng);
            // Half a quantum floor: the log of an empty pixel stays finite.
            (-(signal.max(0.5) / quanta).ln() / params.attenuation_max).clamp(0.0, 1.0)
        })
        .collect();
    let mean = processed.iter().sum::<f64>() / processed.len().max(1) as f64;
    processed.iter().map(|&d| (mean + params.contrast * (d - mean)).clamp(0.0, 1.0) as f32).collect()
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
            assert!((0.05..=0.4).contains(&p.dose_fraction) && (-13.1..=-3.9).contains(&p.deviation_index()));
            assert!((0.6..=1.0).contains(&p.contrast) && (0.3..=1.5).contains(&p.blur_sigma));
        }
        let p = ranges.sample(&mut rng);
        assert_eq!(degrade(&image, 32, 32, &p, 5), degrade(&image, 32, 32, &p, 5));
        assert_ne!(degrade(&image, 32, 32, &p, 5), degrade(&image, 32, 32, &p, 6));
    }

    #[test]
    fn impossible_ranges_are_refused_with_the_key() {
        let ranges = DegradationRanges { dose_fraction: [0.5, 0.1], ..Default::default() };
        assert!(ranges.validate().unwrap_err().to_string().contains("dose-fraction"));
    }
}
