//! Full-reference image quality against ground truth, on display intensity
//! in [0, 1] (data range 1): PSNR, and SSIM with an 11x11 Gaussian window of
//! sigma 1.5, K1 = 0.01, K2 = 0.03 (Wang, Bovik, Sheikh and Simoncelli 2004),
//! averaged over the positions where the whole window fits (their "valid" map).

use tch::{Kind, Tensor};

/// PSNR of identical images: capped so that reports and JSON stay finite.
pub const PSNR_CAP_DB: f64 = 100.0;

/// A grayscale image, row-major, display intensity in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct Plane {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `width * height` values.
    pub data: Vec<f32>,
}

impl Plane {
    /// A plane from its values (panics when the count does not match: a programming error).
    pub fn new(width: usize, height: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), width * height, "plane of {width}x{height} needs {} values", width * height);
        Self { width, height, data }
    }

    /// The value at column `x`, row `y`.
    pub fn at(&self, x: usize, y: usize) -> f32 {
        self.data[y * self.width + x]
    }

    /// From a model tensor `[1, 1, H, W]` or `[1, H, W]` in [-1, 1].
    pub fn from_model_tensor(tensor: &Tensor) -> anyhow::Result<Self> {
        let size = tensor.size();
        anyhow::ensure!(
            size.len() >= 2 && size[..size.len() - 2].iter().all(|&s| s == 1),
            "expected one image, got {size:?}"
        );
        let (height, width) = (size[size.len() - 2] as usize, size[size.len() - 1] as usize);
        let values =
            ((tensor.to_device(tch::Device::Cpu).to_kind(Kind::Float) + 1.0) * 0.5).clamp(0.0, 1.0).flatten(0, -1);
        Ok(Self::new(width, height, Vec::<f32>::try_from(&values)?))
    }

    /// To a model tensor `[1, 1, H, W]` in [-1, 1].
    pub fn to_model_tensor(&self) -> Tensor {
        Tensor::from_slice(&self.data).view([1, 1, self.height as i64, self.width as i64]) * 2.0 - 1.0
    }
}

fn mean_squared_error(a: &Plane, b: &Plane) -> f64 {
    assert_eq!((a.width, a.height), (b.width, b.height), "PSNR/SSIM need images of one size");
    a.data.iter().zip(&b.data).map(|(&x, &y)| f64::from(x - y).powi(2)).sum::<f64>() / a.data.len() as f64
}

/// Peak signal-to-noise ratio in dB for data range 1, capped at [`PSNR_CAP_DB`].
pub fn psnr(test: &Plane, reference: &Plane) -> f64 {
    let mse = mean_squared_error(test, reference);
    if mse <= 0.0 {
        PSNR_CAP_DB
    } else {
        (-10.0 * mse.log10()).min(PSNR_CAP_DB)
    }
}

/// The normalised 11-tap Gaussian of sigma 1.5.
fn ssim_window() -> [f64; 11] {
    let mut w = [0.0; 11];
    for (i, v) in w.iter_mut().enumerate() {
        let d = i as f64 - 5.0;
        *v = (-d * d / (2.0 * 1.5 * 1.5)).exp();
    }
    let sum: f64 = w.iter().sum();
    w.map(|v| v / sum)
}

/// Separable "valid" filtering: output is (W - 10) x (H - 10).
fn filter_valid(data: &[f64], width: usize, height: usize, window: &[f64; 11]) -> Vec<f64> {
    let (out_w, out_h) = (width - 10, height - 10);
    let mut rows = vec![0.0; out_w * height];
    for y in 0..height {
        let line = &data[y * width..(y + 1) * width];
        for x in 0..out_w {
            rows[y * out_w + x] = window.iter().zip(&line[x..x + 11]).map(|(w, v)| w * v).sum();
        }
    }
    let mut out = vec![0.0; out_w * out_h];
    for y in 0..out_h {
        for x in 0..out_w {
            out[y * out_w + x] = window.iter().enumerate().map(|(k, w)| w * rows[(y + k) * out_w + x]).sum();
        }
    }
    out
}

/// Mean SSIM for data range 1 (images at least 11x11).
pub fn ssim(test: &Plane, reference: &Plane) -> f64 {
    assert_eq!((test.width, test.height), (reference.width, reference.height), "PSNR/SSIM need images of one size");
    assert!(test.width >= 11 && test.height >= 11, "SSIM needs images of at least 11x11");
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let window = ssim_window();
    let (w, h) = (test.width, test.height);
    let x: Vec<f64> = test.data.iter().map(|&v| f64::from(v)).collect();
    let y: Vec<f64> = reference.data.iter().map(|&v| f64::from(v)).collect();
    let product = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| p * q).collect::<Vec<f64>>();
    let mu_x = filter_valid(&x, w, h, &window);
    let mu_y = filter_valid(&y, w, h, &window);
    let xx = filter_valid(&product(&x, &x), w, h, &window);
    let yy = filter_valid(&product(&y, &y), w, h, &window);
    let xy = filter_valid(&product(&x, &y), w, h, &window);
    let mut total = 0.0;
    for i in 0..mu_x.len() {
        let (mx, my) = (mu_x[i], mu_y[i]);
        let (vx, vy, cxy) = (xx[i] - mx * mx, yy[i] - my * my, xy[i] - mx * my);
        total += ((2.0 * mx * my + c1) * (2.0 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2));
    }
    total / mu_x.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    fn gradient(size: usize) -> Plane {
        Plane::new(size, size, (0..size * size).map(|i| ((i % size) + (i / size)) as f32 / (2 * size) as f32).collect())
    }

    #[test]
    fn psnr_is_capped_for_identical_images_and_exact_for_an_offset() {
        let image = gradient(32);
        assert_eq!(psnr(&image, &image), PSNR_CAP_DB);
        let shifted = Plane::new(32, 32, image.data.iter().map(|v| v + 0.1).collect());
        // MSE 0.01 at data range 1: 20 dB.
        assert!((psnr(&shifted, &image) - 20.0).abs() < 1e-4, "{}", psnr(&shifted, &image));
    }

    #[test]
    fn ssim_is_one_for_identical_images_and_falls_with_noise() {
        let image = gradient(48);
        assert!((ssim(&image, &image) - 1.0).abs() < 1e-9);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let noisy = |sigma: f32, rng: &mut rand_chacha::ChaCha8Rng| {
            let normal = Normal::new(0.0f32, sigma).unwrap();
            Plane::new(48, 48, image.data.iter().map(|v| v + normal.sample(rng)).collect())
        };
        let (light, heavy) = (ssim(&noisy(0.02, &mut rng), &image), ssim(&noisy(0.1, &mut rng), &image));
        assert!(light < 0.99 && heavy < light && heavy > 0.0, "light {light}, heavy {heavy}");
        // Symmetric, as the definition is.
        let other = noisy(0.05, &mut rng);
        assert!((ssim(&other, &image) - ssim(&image, &other)).abs() < 1e-12);
    }

    #[test]
    fn planes_round_trip_through_model_tensors() {
        let image = gradient(16);
        let back = Plane::from_model_tensor(&image.to_model_tensor()).unwrap();
        assert!(image.data.iter().zip(&back.data).all(|(a, b)| (a - b).abs() < 1e-6));
    }
}
