//! 95% bootstrap intervals for the evaluation's figures: the mean of
//! per-image values (PSNR, SSIM, correct or not), the mean of paired
//! differences between two methods on the same images, and any statistic of
//! whole images' records (an AUROC, a detection rate) with the images
//! resampled (percentile method, a fixed number of resamples from a fixed
//! seed, so a report is repeatable).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Resamples per interval.
pub const RESAMPLES: usize = 2000;

/// A mean (or another statistic) with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// The mean over all images (for [`image_interval`]: the statistic on all of them).
    pub mean: f64,
    /// 2.5th percentile of the bootstrap means.
    pub low: f64,
    /// 97.5th percentile of the bootstrap means.
    pub high: f64,
}

impl Interval {
    /// Whether the whole interval lies above zero (for a paired difference:
    /// the first method is better, at 95%).
    pub fn above_zero(&self) -> bool {
        self.low > 0.0
    }
}

/// The mean of `values` and its 95% percentile-bootstrap interval.
pub fn mean_interval(values: &[f64], seed: u64) -> Interval {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n.max(1) as f64;
    if n < 2 {
        return Interval { mean, low: mean, high: mean };
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let means: Vec<f64> =
        (0..RESAMPLES).map(|_| (0..n).map(|_| values[rng.gen_range(0..n)]).sum::<f64>() / n as f64).collect();
    percentiles(mean, means)
}

/// `mean` with the 2.5th and 97.5th percentiles of the bootstrap `draws` (not empty).
fn percentiles(mean: f64, mut draws: Vec<f64>) -> Interval {
    draws.sort_by(f64::total_cmp);
    let at = |q: f64| draws[((draws.len() - 1) as f64 * q).round() as usize];
    Interval { mean, low: at(0.025), high: at(0.975) }
}

/// The mean of `a[i] - b[i]` over images and its 95% interval.
pub fn paired_difference(a: &[f64], b: &[f64], seed: u64) -> Interval {
    assert_eq!(a.len(), b.len(), "paired values");
    let differences: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    mean_interval(&differences, seed)
}

/// `statistic` of all `images` and its 95% interval, the images drawn with
/// replacement: `statistic` gets the indices of one draw (repeats included)
/// and may return NaN where a draw leaves it undefined (such draws are left
/// out). For figures that pool several records per image, such as the
/// AUROC of a benchmark whose every image gives faithful and planted
/// candidates, resampling images (not records) keeps each image's records together.
pub fn image_interval(images: usize, statistic: impl Fn(&[usize]) -> f64, seed: u64) -> Interval {
    let all: Vec<usize> = (0..images).collect();
    let mean = statistic(&all);
    if images < 2 {
        return Interval { mean, low: mean, high: mean };
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let draws: Vec<f64> = (0..RESAMPLES)
        .map(|_| statistic(&(0..images).map(|_| rng.gen_range(0..images)).collect::<Vec<_>>()))
        .filter(|v| v.is_finite())
        .collect();
    if draws.is_empty() {
        return Interval { mean, low: f64::NAN, high: f64::NAN };
    }
    percentiles(mean, draws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_holds_the_mean_narrows_with_more_images_and_repeats() {
        let values: Vec<f64> = (0..400).map(|i| f64::from(i % 7)).collect();
        let wide = mean_interval(&values[..40], 1);
        let narrow = mean_interval(&values, 1);
        assert!(narrow.low <= narrow.mean && narrow.mean <= narrow.high);
        assert!(narrow.high - narrow.low < wide.high - wide.low);
        assert_eq!(mean_interval(&values, 1), mean_interval(&values, 1));
    }

    #[test]
    fn a_consistent_improvement_is_above_zero_and_noise_is_not() {
        let base: Vec<f64> = (0..100).map(|i| f64::from(i % 10)).collect();
        let better: Vec<f64> = base.iter().map(|v| v + 0.5).collect();
        assert!(paired_difference(&better, &base, 3).above_zero());
        let shuffled: Vec<f64> = base.iter().rev().copied().collect();
        assert!(!paired_difference(&shuffled, &base, 3).above_zero());
    }

    #[test]
    fn resampling_images_agrees_with_the_mean_interval_for_a_mean() {
        let values: Vec<f64> = (0..60).map(|i| f64::from(i % 5)).collect();
        let mean = |draw: &[usize]| draw.iter().map(|&i| values[i]).sum::<f64>() / draw.len() as f64;
        let by_image = image_interval(values.len(), mean, 7);
        assert_eq!(by_image, mean_interval(&values, 7));
        // A statistic undefined on some draws keeps the defined ones.
        let picky = image_interval(values.len(), |d| if d.contains(&0) { mean(d) } else { f64::NAN }, 7);
        assert!(picky.low <= picky.high && picky.mean == by_image.mean);
    }
}
