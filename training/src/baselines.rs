//! Classical enhancement baselines the LED models must beat, on planes of
//! display intensity in [0, 1]:
//!
//! - **Histogram equalisation**: the global 256-bin CDF as the mapping.
//! - **CLAHE** (Zuiderveld 1994): 8x8 tiles, 256 bins, clip limit 2.0 times
//!   the mean bin count (OpenCV's convention), clipped counts redistributed
//!   uniformly, tile mappings interpolated bilinearly between tile centres.
//! - **NLM + stretch**: non-local means (Buades, Coll and Morel 2005) with
//!   7x7 patches in an 11x11 search window, h = 0.8 sigma and the 2 sigma^2
//!   distance offset, sigma estimated per image from the median absolute
//!   diagonal difference; then a linear stretch of the 1st..99th percentile
//!   to [0, 1]. Denoising plus restored contrast is what an under-exposed
//!   image lacks, so this plain pipeline is the bar a learnt model must clear.

use serde::{Deserialize, Serialize};

use crate::metrics::Plane;

const BINS: usize = 256;

fn bin(value: f32) -> usize {
    ((value.clamp(0.0, 1.0) * BINS as f32) as usize).min(BINS - 1)
}

/// Global histogram equalisation.
pub fn histogram_equalise(image: &Plane) -> Plane {
    let mut histogram = [0usize; BINS];
    for &v in &image.data {
        histogram[bin(v)] += 1;
    }
    let mut cdf = [0usize; BINS];
    let mut running = 0;
    for (c, h) in cdf.iter_mut().zip(histogram) {
        running += h;
        *c = running;
    }
    let first = cdf.iter().copied().find(|&c| c > 0).unwrap_or(0);
    let span = (image.data.len() - first).max(1) as f32;
    let data = image.data.iter().map(|&v| (cdf[bin(v)] - first) as f32 / span).collect();
    Plane::new(image.width, image.height, data)
}

/// CLAHE parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClaheParams {
    /// Tiles per side.
    pub tiles: usize,
    /// Clip limit as a multiple of the mean bin count.
    pub clip_limit: f32,
}

impl Default for ClaheParams {
    fn default() -> Self {
        Self { tiles: 8, clip_limit: 2.0 }
    }
}

/// Contrast-limited adaptive histogram equalisation.
pub fn clahe(image: &Plane, params: &ClaheParams) -> Plane {
    let (w, h) = (image.width, image.height);
    let (tile_w, tile_h) = (w.div_ceil(params.tiles.clamp(1, w)), h.div_ceil(params.tiles.clamp(1, h)));
    // Rounding the tile size up can leave fewer tiles than asked (20 px in 8 tiles: 7 of 3 px).
    let (tiles_x, tiles_y) = (w.div_ceil(tile_w), h.div_ceil(tile_h));
    // One mapping (bin -> [0, 1]) per tile.
    let mut maps = vec![[0.0f32; BINS]; tiles_x * tiles_y];
    for ty in 0..tiles_y {
        for tx in 0..tiles_x {
            let (x0, y0) = (tx * tile_w, ty * tile_h);
            let (x1, y1) = ((x0 + tile_w).min(w), (y0 + tile_h).min(h));
            let mut histogram = [0.0f32; BINS];
            for y in y0..y1 {
                for x in x0..x1 {
                    histogram[bin(image.at(x, y))] += 1.0;
                }
            }
            let area = ((x1 - x0) * (y1 - y0)).max(1) as f32;
            let limit = (params.clip_limit * area / BINS as f32).max(1.0);
            let excess: f32 = histogram.iter().map(|&c| (c - limit).max(0.0)).sum();
            let mut running = 0.0;
            for (m, c) in maps[ty * tiles_x + tx].iter_mut().zip(histogram) {
                running += c.min(limit) + excess / BINS as f32;
                *m = (running / area).min(1.0);
            }
        }
    }
    // Bilinear interpolation between the mappings of the four nearest tile centres.
    let axis = |position: usize, tile: usize, count: usize| {
        let f = ((position as f32 + 0.5) / tile as f32 - 0.5).clamp(0.0, (count - 1) as f32);
        let lower = (f.floor() as usize).min(count - 1);
        (lower, (lower + 1).min(count - 1), f - lower as f32)
    };
    let mut data = Vec::with_capacity(w * h);
    for y in 0..h {
        let (ty0, ty1, fy) = axis(y, tile_h, tiles_y);
        for x in 0..w {
            let (tx0, tx1, fx) = axis(x, tile_w, tiles_x);
            let b = bin(image.at(x, y));
            let map = |tx: usize, ty: usize| maps[ty * tiles_x + tx][b];
            let top = map(tx0, ty0) * (1.0 - fx) + map(tx1, ty0) * fx;
            let bottom = map(tx0, ty1) * (1.0 - fx) + map(tx1, ty1) * fx;
            data.push((top * (1.0 - fy) + bottom * fy).clamp(0.0, 1.0));
        }
    }
    Plane::new(w, h, data)
}

/// Non-local means parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NlmParams {
    /// Patch radius (3: 7x7 patches).
    pub patch_radius: usize,
    /// Search radius (5: an 11x11 window).
    pub search_radius: usize,
    /// Filter strength h as a multiple of the estimated noise sigma.
    pub strength: f32,
}

impl Default for NlmParams {
    fn default() -> Self {
        Self { patch_radius: 3, search_radius: 5, strength: 0.8 }
    }
}

/// Gaussian noise sigma estimated from the median absolute diagonal
/// difference (x00 - x10 - x01 + x11) / 2, which cancels smooth structure
/// and has the noise's variance for white noise.
pub fn noise_sigma(image: &Plane) -> f32 {
    let (w, h) = (image.width, image.height);
    if w < 2 || h < 2 {
        return 0.0;
    }
    let mut details: Vec<f32> = Vec::with_capacity((w - 1) * (h - 1));
    for y in 0..h - 1 {
        for x in 0..w - 1 {
            details.push(
                ((image.at(x, y) - image.at(x + 1, y) - image.at(x, y + 1) + image.at(x + 1, y + 1)) / 2.0).abs(),
            );
        }
    }
    let middle = details.len() / 2;
    let (_, median, _) = details.select_nth_unstable_by(middle, f32::total_cmp);
    *median / 0.6745
}

fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let mut i = i;
    loop {
        if i < 0 {
            i = -i - 1;
        } else if i >= n {
            i = 2 * n - i - 1;
        } else {
            return i as usize;
        }
    }
}

/// Non-local means with the noise sigma estimated from the image.
pub fn non_local_means(image: &Plane, params: &NlmParams) -> Plane {
    let sigma = noise_sigma(image);
    if sigma <= 1e-6 {
        return image.clone();
    }
    let (w, h) = (image.width, image.height);
    let (p, s) = (params.patch_radius, params.search_radius);
    let margin = p + s;
    let (pw, ph) = (w + 2 * margin, h + 2 * margin);
    let padded: Vec<f32> = (0..ph)
        .flat_map(|y| (0..pw).map(move |x| (x, y)))
        .map(|(x, y)| image.at(reflect(x as isize - margin as isize, w), reflect(y as isize - margin as isize, h)))
        .collect();
    let h2 = (params.strength * sigma).powi(2);
    let offset = 2.0 * sigma * sigma;
    let patch_area = ((2 * p + 1) * (2 * p + 1)) as f32;
    // Distances are needed on the image grown by the patch radius.
    let (dw, dh) = (w + 2 * p, h + 2 * p);
    let mut weights = vec![0.0f32; w * h];
    let mut sums = vec![0.0f32; w * h];
    let mut diff = vec![0.0f32; dw * dh];
    let mut rows = vec![0.0f32; w * dh];
    for dy in -(s as isize)..=s as isize {
        for dx in -(s as isize)..=s as isize {
            for y in 0..dh {
                for x in 0..dw {
                    let (ax, ay) = (x + s, y + s);
                    let (bx, by) = ((ax as isize + dx) as usize, (ay as isize + dy) as usize);
                    let d = padded[ay * pw + ax] - padded[by * pw + bx];
                    diff[y * dw + x] = d * d;
                }
            }
            // Box filter: horizontal running sums, then vertical.
            for y in 0..dh {
                let line = &diff[y * dw..(y + 1) * dw];
                let mut acc: f32 = line[..2 * p + 1].iter().sum();
                rows[y * w] = acc;
                for x in 1..w {
                    acc += line[x + 2 * p] - line[x - 1];
                    rows[y * w + x] = acc;
                }
            }
            for x in 0..w {
                let mut acc: f32 = (0..2 * p + 1).map(|k| rows[k * w + x]).sum();
                for y in 0..h {
                    if y > 0 {
                        acc += rows[(y + 2 * p) * w + x] - rows[(y - 1) * w + x];
                    }
                    let distance = acc / patch_area;
                    let weight = (-(distance - offset).max(0.0) / h2).exp();
                    let neighbour = padded[(y as isize + margin as isize + dy) as usize * pw
                        + (x as isize + margin as isize + dx) as usize];
                    weights[y * w + x] += weight;
                    sums[y * w + x] += weight * neighbour;
                }
            }
        }
    }
    Plane::new(w, h, sums.iter().zip(&weights).map(|(s, w)| s / w).collect())
}

/// The value at quantile `q` in [0, 1] (nearest rank).
pub fn percentile(image: &Plane, q: f64) -> f32 {
    let mut values = image.data.clone();
    let rank = ((values.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    let (_, value, _) = values.select_nth_unstable_by(rank, f32::total_cmp);
    *value
}

/// Linear stretch of the `low`..`high` quantiles to [0, 1], clipped.
pub fn percentile_stretch(image: &Plane, low: f64, high: f64) -> Plane {
    let (lo, hi) = (percentile(image, low), percentile(image, high));
    if hi - lo < 1e-6 {
        return image.clone();
    }
    Plane::new(image.width, image.height, image.data.iter().map(|&v| ((v - lo) / (hi - lo)).clamp(0.0, 1.0)).collect())
}

/// The NLM baseline: denoise, then stretch the 1st..99th percentile.
pub fn nlm_stretch(image: &Plane, params: &NlmParams) -> Plane {
    percentile_stretch(&non_local_means(image, params), 0.01, 0.99)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal, Uniform};

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(7)
    }

    fn std_dev(values: &[f32]) -> f32 {
        let mean = values.iter().sum::<f32>() / values.len() as f32;
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / values.len() as f32).sqrt()
    }

    #[test]
    fn histogram_equalisation_makes_the_histogram_roughly_uniform() {
        // A triangular distribution: 12.5%, 37.5%, 37.5%, 12.5% in the quarters.
        let uniform = Uniform::new(0.0f32, 1.0);
        let mut rng = rng();
        let image = Plane::new(
            64,
            64,
            (0..64 * 64).map(|_| (uniform.sample(&mut rng) + uniform.sample(&mut rng)) / 2.0).collect(),
        );
        let quarters = |p: &Plane| {
            let mut q = [0usize; 4];
            for &v in &p.data {
                q[((v * 4.0) as usize).min(3)] += 1;
            }
            q
        };
        let quarter = (64 * 64 / 4) as f32;
        assert!(quarters(&image)[0] as f32 <= 0.6 * quarter, "the input is not uniform: {:?}", quarters(&image));
        for count in quarters(&histogram_equalise(&image)) {
            assert!((count as f32 - quarter).abs() < 0.1 * quarter, "{:?}", quarters(&histogram_equalise(&image)));
        }
    }

    #[test]
    fn clahe_keeps_the_range_and_its_clip_limit_bounds_the_contrast_gain() {
        let uniform = Uniform::new(0.0f32, 1.0);
        let mut rng = rng();
        let random = Plane::new(100, 70, (0..7000).map(|_| uniform.sample(&mut rng)).collect());
        assert!(clahe(&random, &ClaheParams::default()).data.iter().all(|v| (0.0..=1.0).contains(v)));
        // A faint structure in the middle grey: CLAHE lifts it, more with a higher clip limit.
        let faint = Plane::new(
            128,
            128,
            (0..128 * 128)
                .map(|i| 0.45 + 0.05 * (((i % 128) as f32 / 9.0).sin() + ((i / 128) as f32 / 13.0).cos()))
                .collect(),
        );
        let default = clahe(&faint, &ClaheParams::default());
        let strong = clahe(&faint, &ClaheParams { clip_limit: 40.0, ..Default::default() });
        assert!(default.data.iter().chain(&strong.data).all(|v| (0.0..=1.0).contains(v)));
        let (before, gentle, high) = (std_dev(&faint.data), std_dev(&default.data), std_dev(&strong.data));
        assert!(
            gentle > 1.2 * before && high > 3.0 * before && high > gentle,
            "{before} -> {gentle} (clip 2), {high} (clip 40)"
        );
        let flat = Plane::new(20, 30, vec![0.5; 600]);
        assert!(clahe(&flat, &ClaheParams::default()).data.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn non_local_means_removes_noise_and_keeps_a_step_edge() {
        let normal = Normal::new(0.0f32, 0.05).unwrap();
        let mut rng = rng();
        let (w, h) = (48, 48);
        let clean: Vec<f32> = (0..w * h).map(|i| if i % w < w / 2 { 0.3 } else { 0.7 }).collect();
        let noisy = Plane::new(w, h, clean.iter().map(|v| v + normal.sample(&mut rng)).collect());
        let sigma = noise_sigma(&noisy);
        assert!((sigma - 0.05).abs() < 0.01, "estimated sigma {sigma}");
        let out = non_local_means(&noisy, &NlmParams::default());
        // Noise inside the flat left half (away from the edge) shrinks.
        let left = |p: &Plane| {
            (0..h).flat_map(|y| (4..w / 2 - 6).map(move |x| (x, y))).map(|(x, y)| p.at(x, y)).collect::<Vec<_>>()
        };
        let (before, after) = (std_dev(&left(&noisy)), std_dev(&left(&out)));
        assert!(after < 0.5 * before, "noise sigma {before} -> {after}");
        // The edge stays sharp: the columns either side keep their levels.
        let column_mean = |x: usize| (0..h).map(|y| out.at(x, y)).sum::<f32>() / h as f32;
        assert!((column_mean(w / 2 - 1) - 0.3).abs() < 0.05 && (column_mean(w / 2) - 0.7).abs() < 0.05);
        assert!(noise_sigma(&Plane::new(8, 8, vec![0.5; 64])) == 0.0);
    }

    #[test]
    fn stretch_maps_the_percentiles_to_the_full_range() {
        let image = Plane::new(100, 1, (0..100).map(|i| 0.2 + 0.3 * i as f32 / 99.0).collect());
        let out = percentile_stretch(&image, 0.01, 0.99);
        assert_eq!(out.data[1], 0.0);
        assert_eq!(out.data[98], 1.0);
        assert!(out.data.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}
