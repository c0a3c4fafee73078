//! The planted-hallucination benchmark: proves the hallucination check with
//! numbers. From held-out high-quality images and their simulated low-dose
//! partners it builds faithful candidates (the ground truth, a plain denoise
//! of the input, the bundle's LED output) and corrupted ones (a faithful
//! candidate with one planted change of a known kind and size), scores them
//! all with the library call the daemon uses, and reports AUROC, detection
//! and false-hold rates, and the hold threshold they imply.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use cxr_led_models::hallucination::{self, gaussian_blur, HallucinationCalibration, HallucinationConfig};
use cxr_led_models::sampling::noise::{seed_from_parts, NoiseSource};
use cxr_led_models::{device, Bundle, LedModel};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::bootstrap::{image_interval, Interval};
use crate::data::{self, Split};
use crate::degrade::{degrade_tensor, DegradationRanges};
use crate::image_io;

/// The kinds of planted change, in report order.
pub const KINDS: [&str; 5] = ["nodule", "erased-structure", "outline-warp", "line", "texture"];
/// The sizes each kind is planted at.
pub const SIZES: [&str; 3] = ["small", "medium", "large"];
/// Faithful candidate kinds.
pub const FAITHFUL: [&str; 3] = ["ground-truth", "denoised", "led"];
/// False holds allowed on faithful candidates when choosing the threshold.
pub const FALSE_HOLD_TARGET: f64 = 0.02;

/// `hallucination-bench` options.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Folders of high-quality PNGs (searched recursively).
    #[arg(long, required = true, num_args = 1..)]
    data: Vec<PathBuf>,
    /// Which images: the held-out test split (as training uses it) or all.
    #[arg(long, default_value = "test", value_parser = ["test", "all"])]
    split: String,
    /// Images to use (fewer if the split holds fewer).
    #[arg(long, default_value_t = 150)]
    count: usize,
    /// The simulator's ranges for the low-quality inputs: training, held-out, or a TOML file.
    #[arg(long, default_value = "training")]
    ranges: String,
    /// Side the images are resized to.
    #[arg(long, default_value_t = 256)]
    size: u32,
    /// The bundle whose LED output is a candidate and whose G_BA the check uses.
    #[arg(long, default_value = "models/bundles/tiny")]
    bundle: PathBuf,
    /// Faithful candidates the threshold is calibrated on (comma-separated:
    /// ground-truth, denoised, led). Leave `led` out for an untrained bundle,
    /// whose output is not faithful; it is then reported on its own.
    #[arg(long, default_value = "ground-truth,denoised,led", value_delimiter = ',')]
    faithful: Vec<String>,
    /// Seed of image choice, degradation, planting and LED noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Report folder (report.md, figures.json, example PNGs).
    #[arg(long)]
    out: PathBuf,
    /// Write the chosen threshold, the configuration and the figures into
    /// this bundle's `[hallucination]` table (its sha256 changes).
    #[arg(long)]
    write_bundle: bool,
    /// Calibrate the library's default check (its current definition)
    /// instead of the configuration already in the bundle's `[hallucination]`.
    #[arg(long)]
    from_defaults: bool,
    /// Keep the bundle's own `[hallucination]` calibration and threshold and
    /// measure them on every image instead of calibrating on half: how a
    /// stored calibration carries to other images, sizes or degradations.
    #[arg(long, conflicts_with_all = ["from_defaults", "write_bundle"])]
    as_calibrated: bool,
    /// Example images (candidate | doubt map) to write.
    #[arg(long, default_value_t = 6)]
    examples: usize,
    /// Leave out the model-based components of weight 0 (G_BA cycle,
    /// diffusion spread) instead of measuring them: faster, for untrained bundles.
    #[arg(long)]
    skip_unweighted: bool,
    /// Also write every image's input and candidates as `.npy` files into
    /// this folder (for studying the check offline, e.g. with numpy).
    #[arg(long)]
    save_candidates: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N (the check itself always runs on the CPU).
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// One scored candidate.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Image file name.
    pub image: String,
    /// `faithful` or `planted`.
    pub class: &'static str,
    /// Faithful kind, or planted kind.
    pub kind: String,
    /// Planted size (empty for faithful ones).
    pub size: String,
    /// The faithful candidate a planted change was made in.
    pub base: String,
    /// The score.
    pub score: f64,
    /// Raw component statistics.
    pub raw: BTreeMap<String, f64>,
    /// Whether the image calibrates the check or evaluates it (alternate images).
    pub half: &'static str,
}

impl Record {
    fn raw_list(&self) -> Vec<(String, f64)> {
        self.raw.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Area under the ROC curve: the probability that a random positive scores
/// above a random negative (ties count half).
pub fn auroc(negatives: &[f64], positives: &[f64]) -> f64 {
    if negatives.is_empty() || positives.is_empty() {
        return f64::NAN;
    }
    let mut wins = 0.0;
    for p in positives {
        for n in negatives {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (negatives.len() * positives.len()) as f64
}

/// The lowest threshold t with at most `target` of `faithful` scoring above t
/// (an image is held when its score exceeds the threshold).
pub fn lowest_threshold(faithful: &[f64], target: f64) -> f64 {
    let mut sorted = faithful.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let allowed = (target * sorted.len() as f64).floor() as usize;
    sorted.get(allowed).copied().unwrap_or(0.0)
}

fn rate_above(scores: &[f64], threshold: f64) -> f64 {
    if scores.is_empty() {
        return f64::NAN;
    }
    scores.iter().filter(|s| hallucination::held(**s, threshold)).count() as f64 / scores.len() as f64
}

/// Pixel coordinate grids `[1, 1, H, W]` (y, x) as f32.
fn grid(h: i64, w: i64) -> (Tensor, Tensor) {
    let ys = Tensor::arange(h, (Kind::Float, Device::Cpu)).view([1, 1, h, 1]).expand([1, 1, h, w], false);
    let xs = Tensor::arange(w, (Kind::Float, Device::Cpu)).view([1, 1, 1, w]).expand([1, 1, h, w], false);
    (ys, xs)
}

/// A smooth disc mask: 1 inside radius r, falling to 0 over `r / 2`.
fn soft_disc(h: i64, w: i64, cy: f64, cx: f64, r: f64) -> Tensor {
    let (ys, xs) = grid(h, w);
    let d = ((ys - cy).square() + (xs - cx).square()).sqrt();
    ((-(d - r) / (0.5 * r).max(1.0)).clamp(-1.0, 0.0) * std::f64::consts::PI).cos() * 0.5 + 0.5
}

/// A random pixel of `mask` (a `[1, 1, H, W]` bool tensor); the centre if empty.
fn pick(mask: &Tensor, rng: &mut ChaCha8Rng) -> (f64, f64) {
    let w = mask.size()[3];
    let indices = mask.flatten(0, -1).nonzero().flatten(0, -1);
    let count = indices.size()[0];
    if count == 0 {
        let h = mask.size()[2];
        return ((h / 2) as f64, (w / 2) as f64);
    }
    let flat = indices.int64_value(&[rng.gen_range(0..count)]);
    ((flat / w) as f64, (flat % w) as f64)
}

/// Pixels at least `margin` from every border.
fn interior(h: i64, w: i64, margin: f64) -> Tensor {
    let (ys, xs) = grid(h, w);
    ys.ge(margin)
        .logical_and(&ys.le(h as f64 - 1.0 - margin))
        .logical_and(&xs.ge(margin))
        .logical_and(&xs.le(w as f64 - 1.0 - margin))
}

/// Gradient magnitude of the image smoothed at `sigma`, and its (dy, dx).
fn gradient(image: &Tensor, sigma: f64) -> (Tensor, Tensor, Tensor) {
    let smooth = gaussian_blur(image, sigma).replication_pad2d([1, 1, 1, 1]);
    let (h, w) = (image.size()[2], image.size()[3]);
    let dx = (smooth.narrow(2, 1, h).narrow(3, 2, w) - smooth.narrow(2, 1, h).narrow(3, 0, w)) / 2.0;
    let dy = (smooth.narrow(2, 2, h).narrow(3, 1, w) - smooth.narrow(2, 0, h).narrow(3, 1, w)) / 2.0;
    ((dx.square() + dy.square()).sqrt(), dy, dx)
}

/// Pixels of `candidates` whose value of `map` is in the top `fraction` among them.
fn top_fraction(map: &Tensor, candidates: &Tensor, fraction: f64) -> Tensor {
    let values = map.masked_select(candidates);
    if values.size()[0] == 0 {
        return candidates.shallow_clone();
    }
    let cut = values.quantile_scalar(1.0 - fraction, None, false, "linear").double_value(&[]);
    map.ge(cut).logical_and(candidates)
}

/// Plants one change of `kind` at `size` (0, 1, 2) into `base` `[1, 1, S, S]`.
/// Sizes are in pixels at 256 and scale with the image.
pub fn plant(base: &Tensor, kind: &str, size: usize, rng: &mut ChaCha8Rng) -> anyhow::Result<Tensor> {
    let (h, w) = (base.size()[2], base.size()[3]);
    let unit = h.min(w) as f64 / 256.0;
    let level = [1.0, 2.0, 4.0][size];
    let amplitude = rng.gen_range(0.12..0.24);
    let image = base.to_kind(Kind::Float);
    let planted = match kind {
        // A bright, smooth, round opacity of radius 3, 6 or 12 px.
        "nodule" => {
            let r = 3.0 * level * unit;
            let (cy, cx) = pick(&interior(h, w, 0.15 * h as f64 + r), rng);
            let (ys, xs) = grid(h, w);
            let d2 = ((ys - cy).square() + (xs - cx).square()) / (r * r);
            let profile = (-d2 + 1.0).clamp_min(0.0).pow_tensor_scalar(1.5);
            image + profile * amplitude
        }
        // A piece of existing structure (a strong edge: rib, heart or
        // diaphragm border) smoothed away over a disc of radius 4, 8 or 16 px.
        "erased-structure" => {
            let r = 4.0 * level * unit;
            let (magnitude, _, _) = gradient(&image, 1.0);
            let (cy, cx) = pick(&top_fraction(&magnitude, &interior(h, w, 0.1 * h as f64 + r), 0.05), rng);
            let mask = soft_disc(h, w, cy, cx, r);
            let filled = gaussian_blur(&image, r);
            &image * (-&mask + 1.0) + filled * mask
        }
        // The seed's failure: a smooth displacement of 2, 4 or 8 px across a
        // strong edge in the outer thirds (body outline, lung border),
        // fading out over 8, 16 or 32 px.
        "outline-warp" => {
            let (m, r) = (2.0 * level * unit, 8.0 * level * unit);
            let (magnitude, dy, dx) = gradient(&image, 2.0);
            let (_, xs) = grid(h, w);
            let outer = xs.le(w as f64 / 3.0).logical_or(&xs.ge(2.0 * w as f64 / 3.0));
            let region = interior(h, w, 0.05 * h as f64 + r / 2.0).logical_and(&outer);
            let (cy, cx) = pick(&top_fraction(&magnitude, &region, 0.03), rng);
            let norm = magnitude.double_value(&[0, 0, cy as i64, cx as i64]).max(1e-6);
            let (ny, nx) = (
                dy.double_value(&[0, 0, cy as i64, cx as i64]) / norm,
                dx.double_value(&[0, 0, cy as i64, cx as i64]) / norm,
            );
            let (ys, xs) = grid(h, w);
            let bump =
                (((ys.shallow_clone() - cy).square() + (xs.shallow_clone() - cx).square()) / (-2.0 * r * r)).exp() * m;
            // Sample from p - displacement: the edge moves by up to m pixels along its normal.
            let sy = ys - &bump * ny;
            let sx = xs - &bump * nx;
            let gy = (sy * 2.0 + 1.0) / h as f64 - 1.0;
            let gx = (sx * 2.0 + 1.0) / w as f64 - 1.0;
            let field = Tensor::stack(&[gx.view([1, h, w]), gy.view([1, h, w])], 3);
            image.grid_sampler(&field, 0, 1, false)
        }
        // A thin bright tube or wire, 24, 48 or 96 px long, gently curved.
        "line" => {
            let length = 24.0 * level * unit;
            let width = 0.8 * unit.max(1.0);
            let (cy, cx) = pick(&interior(h, w, 0.1 * h as f64 + length / 2.0), rng);
            let angle: f64 = rng.gen_range(0.0..std::f64::consts::PI);
            let bend: f64 = rng.gen_range(-0.2..0.2) * length;
            let (uy, ux) = (angle.sin(), angle.cos());
            let steps = (length * 2.0).ceil() as i64 + 1;
            let mut points = Vec::with_capacity(2 * steps as usize);
            for i in 0..steps {
                let t = i as f64 / (steps - 1) as f64 - 0.5;
                let offset = bend * (1.0 - 4.0 * t * t);
                points.push((cy + t * length * uy + offset * ux) as f32);
                points.push((cx + t * length * ux - offset * uy) as f32);
            }
            // Distances only inside the line's bounding box (with the profile's
            // reach): over a whole 1024-px image the pixel-by-point table would
            // take gigabytes.
            let reach = (5.0 * width).ceil();
            let (ys_of, xs_of): (Vec<f32>, Vec<f32>) = points.chunks(2).map(|p| (p[0], p[1])).unzip();
            let bound = |values: &[f32], n: i64| {
                let low = values.iter().copied().fold(f32::INFINITY, f32::min) as f64 - reach;
                let high = values.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64 + reach;
                let low = (low.floor() as i64).clamp(0, n - 1);
                (low, (high.ceil() as i64).clamp(low, n - 1) - low + 1)
            };
            let ((y0, bh), (x0, bw)) = (bound(&ys_of, h), bound(&xs_of, w));
            let points = Tensor::from_slice(&points).view([1, steps, 2]);
            let (ys, xs) = grid(bh, bw);
            let (ys, xs) = ((ys + y0 as f64).flatten(0, -1), (xs + x0 as f64).flatten(0, -1));
            let pixels = Tensor::stack(&[ys, xs], 1).view([bh * bw, 1, 2]);
            let distance = (pixels - points).square().sum_dim_intlist(2, false, Kind::Float).min_dim(1, false).0.sqrt();
            let local = (distance.square() / (-2.0 * width * width)).exp().view([1, 1, bh, bw]);
            let profile = local.constant_pad_nd([x0, w - x0 - bw, y0, h - y0 - bh]);
            image + profile * amplitude
        }
        // The fine texture (detail below 2 px) of a disc of radius 8, 16 or 32 px
        // in a lung field replaced by the texture of another place.
        "texture" => {
            let r = 8.0 * level * unit;
            let dark = gaussian_blur(&image, 4.0);
            let region = interior(h, w, 0.1 * h as f64 + r);
            let inside = dark.masked_select(&region);
            let cut = inside.quantile_scalar(0.4, None, false, "linear").double_value(&[]);
            let (cy, cx) = pick(&dark.le(cut).logical_and(&region), rng);
            let shift_y = (if rng.gen_bool(0.5) { 1.0 } else { -1.0 } * rng.gen_range(2.5..4.0) * r) as i64;
            let shift_x = (if rng.gen_bool(0.5) { 1.0 } else { -1.0 } * rng.gen_range(2.5..4.0) * r) as i64;
            let detail = &image - gaussian_blur(&image, 2.0);
            let other = detail.roll([shift_y, shift_x], [2, 3]);
            let mask = soft_disc(h, w, cy, cx, r);
            &image + (other - detail) * mask
        }
        other => anyhow::bail!("unknown planted kind {other:?}; known: {KINDS:?}"),
    };
    Ok(planted.clamp(-1.0, 1.0))
}

/// A plain denoise of the low-quality input: Gaussian blur (1.5 px), then a
/// stretch of its full range to [-1, 1] (a percentile stretch that clips
/// would erase the detail beyond the percentiles, which is not faithful).
pub fn plain_denoise(low_quality: &Tensor) -> Tensor {
    let smooth = gaussian_blur(low_quality, 1.5);
    let (low, high) = (smooth.min().double_value(&[]), smooth.max().double_value(&[]));
    ((smooth - low) / (high - low).max(1e-6) * 2.0 - 1.0).clamp(-1.0, 1.0)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Writes `[candidate | doubt map]` side by side as an 8-bit PNG.
fn write_example(path: &Path, candidate: &Tensor, doubt: &Tensor) -> anyhow::Result<()> {
    let (h, w) = (candidate.size()[2], candidate.size()[3]);
    let left = (candidate.clamp(-1.0, 1.0) + 1.0) / 2.0;
    let gap = Tensor::ones([1, 1, h, 4], (Kind::Float, Device::Cpu));
    let joined = Tensor::cat(&[left, gap, doubt.to_kind(Kind::Float)], 3);
    let values: Vec<u8> = Vec::<f32>::try_from((joined * 255.0).round().flatten(0, -1))?
        .into_iter()
        .map(|v| v.clamp(0.0, 255.0) as u8)
        .collect();
    let buffer = image::GrayImage::from_raw((2 * w + 4) as u32, h as u32, values).context("example size")?;
    buffer.save(path).with_context(|| format!("writing {}", path.display()))
}

/// Runs the benchmark.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    for name in &args.faithful {
        anyhow::ensure!(FAITHFUL.contains(&name.as_str()), "--faithful {name:?} is not one of {FAITHFUL:?}");
    }
    anyhow::ensure!(!args.faithful.is_empty(), "--faithful needs at least one kind");
    let device = device::parse_device(&args.device)?;
    let bundle = Bundle::load(&args.bundle).with_context(|| format!("loading bundle {}", args.bundle.display()))?;
    let model = LedModel::from_bundle(&bundle, device, bundle.manifest.inference.precision)?;
    let config = if args.from_defaults {
        HallucinationConfig::default()
    } else {
        hallucination::bundle_config(&bundle.manifest)
    };
    // Measure every component, weighted or not, so that the report shows which ones work.
    let measured = HallucinationConfig { evaluate_unweighted: !args.skip_unweighted, ..config.clone() };
    let tiles = bundle.manifest.inference.tiles.clone();

    let mut images: Vec<PathBuf> = data::list_images(&args.data)?;
    if args.split == "test" {
        images.retain(|p| data::split_of(p, 0.1, 0.1) == Split::Test);
    }
    let salt = format!("hallucination-bench/{}", args.seed);
    images.sort_by(|a, b| data::name_fraction(a, &salt).total_cmp(&data::name_fraction(b, &salt)));
    images.truncate(args.count);
    anyhow::ensure!(!images.is_empty(), "no images in the {} split of {:?}", args.split, args.data);
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    if let Some(folder) = &args.save_candidates {
        std::fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
    }

    let ranges = DegradationRanges::from_arg(&args.ranges)?;
    let mut records: Vec<Record> = Vec::new();
    let mut examples: Vec<(String, String, String, Tensor, Tensor)> = Vec::new();
    let started = std::time::Instant::now();
    for (index, path) in images.iter().enumerate() {
        let name = file_name(path);
        let half = if index % 2 == 0 || images.len() == 1 { "calibration" } else { "evaluation" };
        let image_seed = seed_from_parts(&[&args.seed.to_le_bytes(), name.as_bytes()]);
        let mut rng = ChaCha8Rng::seed_from_u64(image_seed);
        let high_quality = image_io::read_png_resized(path, Some(args.size))?;
        let params = ranges.sample(&mut rng);
        let low_quality = degrade_tensor(&high_quality, &params, rng.gen())?.to_kind(Kind::Float);
        let mut faithful: Vec<(&str, Tensor)> =
            vec![("ground-truth", high_quality.shallow_clone()), ("denoised", plain_denoise(&low_quality))];
        let mut noise = NoiseSource::new(image_seed);
        let led = model.enhance(&low_quality, &bundle.manifest.inference, &mut noise)?.output.to_device(Device::Cpu);
        faithful.push(("led", led));

        let score = |candidate: &Tensor| hallucination::score(&model, &low_quality, candidate, &tiles, &measured);
        let save = |label: &str, image: &Tensor| -> anyhow::Result<()> {
            if let Some(folder) = &args.save_candidates {
                let stem = name.trim_end_matches(".png");
                image.write_npy(folder.join(format!("{stem}__{label}.npy")))?;
            }
            Ok(())
        };
        save("input", &low_quality)?;
        for (kind, candidate) in &faithful {
            save(kind, candidate)?;
            let report = score(candidate)?;
            records.push(Record {
                image: name.clone(),
                class: "faithful",
                kind: (*kind).to_owned(),
                size: String::new(),
                base: String::new(),
                score: report.score,
                raw: report.raw.into_iter().collect(),
                half,
            });
        }
        let bases: Vec<&(&str, Tensor)> =
            faithful.iter().filter(|(k, _)| args.faithful.iter().any(|f| f == k)).collect();
        for kind in KINDS {
            for (size_index, size) in SIZES.iter().enumerate() {
                let (base_name, base) = bases[rng.gen_range(0..bases.len())];
                let t0 = std::time::Instant::now();
                let candidate = plant(base, kind, size_index, &mut rng)?;
                let t1 = t0.elapsed();
                save(&format!("{kind}-{size}-on-{base_name}"), &candidate)?;
                let report = score(&candidate)?;
                if std::env::var_os("BENCH_TIMING").is_some() {
                    eprintln!("{kind} {size}: plant {t1:?} score {:?}", t0.elapsed() - t1);
                }
                if size_index == 1 && index == 0 && examples.len() < args.examples {
                    let file = format!("example-{}-{kind}-medium.png", examples.len());
                    examples.push((
                        file,
                        name.clone(),
                        kind.to_owned(),
                        candidate.shallow_clone(),
                        low_quality.shallow_clone(),
                    ));
                }
                records.push(Record {
                    image: name.clone(),
                    class: "planted",
                    kind: kind.to_owned(),
                    size: (*size).to_owned(),
                    base: (*base_name).to_owned(),
                    score: report.score,
                    raw: report.raw.into_iter().collect(),
                    half,
                });
            }
        }
        if index == 0 && examples.len() < args.examples {
            let file = format!("example-{}-ground-truth.png", examples.len());
            examples.push((
                file,
                name.clone(),
                "ground-truth (faithful)".to_owned(),
                faithful[0].1.shallow_clone(),
                low_quality.shallow_clone(),
            ));
        }
        if (index + 1) % 5 == 0 || index + 1 == images.len() {
            eprintln!(
                "hallucination-bench: {}/{} images, {:.0} s",
                index + 1,
                images.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }

    // Calibrate on one half of the images, evaluate on the other; or, with
    // --as-calibrated, evaluate the bundle's calibration on all of them.
    let (calibrated, threshold, evaluation) = if args.as_calibrated {
        (config.clone(), hallucination::hold_threshold(&bundle.manifest), records.clone())
    } else {
        let calibrated = calibrate(&records, &args.faithful, &config);
        for record in &mut records {
            record.score = hallucination::combine(&record.raw_list(), &calibrated).0;
        }
        let calibration_faithful: Vec<f64> = records
            .iter()
            .filter(|r| r.half == "calibration" && r.class == "faithful" && args.faithful.contains(&r.kind))
            .map(|r| r.score)
            .collect();
        let threshold = lowest_threshold(&calibration_faithful, FALSE_HOLD_TARGET);
        let mut evaluation: Vec<Record> = records.iter().filter(|r| r.half == "evaluation").cloned().collect();
        if evaluation.is_empty() {
            evaluation = records.clone();
        }
        (calibrated, threshold, evaluation)
    };
    let figures = summarise(&evaluation, threshold, args, &bundle, &calibrated, started.elapsed().as_secs_f64());
    let mut examples_written = Vec::new();
    for (file, image, kind, candidate, low_quality) in &examples {
        let report = hallucination::score(&model, low_quality, candidate, &tiles, &calibrated)?;
        write_example(&args.out.join(file), candidate, &report.doubt_map)?;
        examples_written.push((file.clone(), image.clone(), kind.clone(), report.score));
    }
    std::fs::write(args.out.join("figures.json"), serde_json::to_string_pretty(&figures)?)?;
    std::fs::write(args.out.join("scores.json"), serde_json::to_string(&records)?)?;
    std::fs::write(args.out.join("report.md"), markdown(&figures, &examples_written))?;
    println!("{}", serde_json::to_string_pretty(&figures["summary"])?);

    if args.write_bundle {
        let mut manifest = bundle.manifest.clone();
        let benchmark: toml::Table =
            toml::Value::try_from(&figures["summary"])?.try_into().context("benchmark figures as a TOML table")?;
        manifest.hallucination =
            Some(HallucinationCalibration { hold_threshold: threshold, config: calibrated, benchmark });
        let saved = Bundle::save_manifest(&args.bundle, &manifest)?;
        eprintln!(
            "hallucination-bench: wrote [hallucination] into {} (sha256 now {})",
            args.bundle.display(),
            saved.sha256
        );
    }
    Ok(())
}

fn round4(value: f64) -> serde_json::Value {
    if value.is_finite() {
        serde_json::json!((value * 1e4).round() / 1e4)
    } else {
        serde_json::Value::Null
    }
}

fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(((sorted.len() as f64 - 1.0).max(0.0) * q).round() as usize).copied().unwrap_or(f64::NAN)
}

/// The check's calibration from the calibration half: each component's
/// offset is the median of its raw statistic on faithful candidates and its
/// spread the distance from there to their 98th percentile. Weights are
/// chosen by forward selection: the component with the best raw AUROC
/// (faithful vs planted) gets weight 1, and each next one (in order of raw
/// AUROC) joins only if the combined score's AUROC rises by at least 0.002;
/// components that only add faithful-image tails stay at 0.
fn calibrate(records: &[Record], faithful: &[String], base: &HallucinationConfig) -> HallucinationConfig {
    let mut config = HallucinationConfig { evaluate_unweighted: false, ..base.clone() };
    let calibration: Vec<&Record> = records.iter().filter(|r| r.half == "calibration").collect();
    let is_negative = |r: &Record| r.class == "faithful" && faithful.contains(&r.kind);
    let mut ranked = Vec::new();
    for name in hallucination::COMPONENTS {
        let raw = |r: &&Record| r.raw.get(name).copied();
        let negatives: Vec<f64> = calibration.iter().filter(|r| is_negative(r)).filter_map(raw).collect();
        let positives: Vec<f64> = calibration.iter().filter(|r| r.class == "planted").filter_map(raw).collect();
        let Some(component) = config.component_mut(name) else { continue };
        component.weight = 0.0;
        if negatives.is_empty() || positives.is_empty() {
            continue;
        }
        let median = quantile(&negatives, 0.5);
        component.offset = median;
        component.spread = (quantile(&negatives, 0.98) - median).max(0.5);
        ranked.push((auroc(&negatives, &positives), name));
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    let combined_auroc = |config: &HallucinationConfig| {
        let score = |r: &Record| hallucination::combine(&r.raw_list(), config).0;
        let negatives: Vec<f64> = calibration.iter().filter(|r| is_negative(r)).map(|r| score(r)).collect();
        let positives: Vec<f64> = calibration.iter().filter(|r| r.class == "planted").map(|r| score(r)).collect();
        auroc(&negatives, &positives)
    };
    let mut best = f64::NEG_INFINITY;
    for (_, name) in ranked {
        let mut trial = config.clone();
        if let Some(component) = trial.component_mut(name) {
            component.weight = 1.0;
        }
        let value = combined_auroc(&trial);
        // The first (best-ranked) component always joins: anything beats -inf.
        if value >= best + 0.002 {
            best = value;
            config = trial;
        }
    }
    config
}

/// Seed of the bootstrap intervals (fixed, so a report repeats).
const BOOTSTRAP_SEED: u64 = 18;

/// A figure and its 95% image-bootstrap interval as JSON: the value (4
/// decimals) under `name` and `[low, high]` under `name_95`.
fn with_interval(entry: &mut serde_json::Map<String, serde_json::Value>, name: &str, interval: Interval) {
    entry.insert(name.to_owned(), round4(interval.mean));
    entry.insert(format!("{name}_95"), serde_json::json!([round4(interval.low), round4(interval.high)]));
}

/// All figures: the summary that goes into the bundle, and the tables.
/// Every AUROC and rate comes with a 95% interval from resampling the
/// images (each image's faithful and planted candidates stay together).
fn summarise(
    records: &[Record],
    threshold: f64,
    args: &BenchArgs,
    bundle: &Bundle,
    config: &HallucinationConfig,
    seconds: f64,
) -> serde_json::Value {
    let is_faithful = |r: &Record| r.class == "faithful" && args.faithful.contains(&r.kind);
    let calibration: Vec<f64> = records.iter().filter(|r| is_faithful(r)).map(|r| r.score).collect();
    let planted: Vec<&Record> = records.iter().filter(|r| r.class == "planted").collect();
    let planted_scores: Vec<f64> = planted.iter().map(|r| r.score).collect();
    let select = |kind: &str, size: Option<&str>| -> Vec<f64> {
        planted.iter().filter(|r| r.kind == kind && size.is_none_or(|s| r.size == s)).map(|r| r.score).collect()
    };
    let mut names: Vec<&str> = records.iter().map(|r| r.image.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let by_image: Vec<Vec<&Record>> =
        names.iter().map(|name| records.iter().filter(|r| r.image == *name).collect()).collect();
    // The planted scores of `kind` (None: all) at `size` (None: all), and the
    // faithful ones, of the images in one bootstrap draw.
    let scores_of = |draw: &[usize], kind: Option<&str>, size: Option<&str>| -> (Vec<f64>, Vec<f64>) {
        let drawn = draw.iter().flat_map(|&i| by_image[i].iter().copied());
        let (mut negatives, mut positives) = (Vec::new(), Vec::new());
        for r in drawn {
            if is_faithful(r) {
                negatives.push(r.score);
            } else if r.class == "planted" && kind.is_none_or(|k| r.kind == k) && size.is_none_or(|s| r.size == s) {
                positives.push(r.score);
            }
        }
        (negatives, positives)
    };
    let auroc_interval = |kind: Option<&str>, size: Option<&str>| {
        image_interval(
            by_image.len(),
            |draw| {
                let (negatives, positives) = scores_of(draw, kind, size);
                auroc(&negatives, &positives)
            },
            BOOTSTRAP_SEED,
        )
    };
    let detection_interval = |kind: Option<&str>, size: Option<&str>| {
        image_interval(by_image.len(), |draw| rate_above(&scores_of(draw, kind, size).1, threshold), BOOTSTRAP_SEED)
    };
    let mut per_kind = serde_json::Map::new();
    for kind in KINDS {
        let mut sizes = serde_json::Map::new();
        for size in SIZES.iter().map(|s| Some(*s)).chain([None]) {
            let mut entry = serde_json::Map::new();
            with_interval(&mut entry, "auroc", auroc_interval(Some(kind), size));
            with_interval(&mut entry, "detection", detection_interval(Some(kind), size));
            entry.insert("count".to_owned(), serde_json::json!(select(kind, size).len()));
            sizes.insert(size.unwrap_or("all").to_owned(), serde_json::Value::Object(entry));
        }
        per_kind.insert(kind.to_owned(), serde_json::Value::Object(sizes));
    }
    let mut faithful = serde_json::Map::new();
    for kind in FAITHFUL {
        let scores: Vec<f64> =
            records.iter().filter(|r| r.class == "faithful" && r.kind == kind).map(|r| r.score).collect();
        let mut sorted = scores.clone();
        sorted.sort_by(f64::total_cmp);
        faithful.insert(
            kind.to_owned(),
            serde_json::json!({
                "in_calibration": args.faithful.iter().any(|f| f == kind),
                "count": scores.len(),
                "hold_rate": round4(rate_above(&scores, threshold)),
                "median_score": round4(sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)),
                "auroc_vs_planted": round4(auroc(&scores, &planted_scores)),
            }),
        );
    }
    let mut components = serde_json::Map::new();
    let names: Vec<String> = records.first().map(|r| r.raw.keys().cloned().collect()).unwrap_or_default();
    for name in names {
        let raw_of = |r: &Record| r.raw.get(&name).copied().unwrap_or(f64::NAN);
        let negatives: Vec<f64> =
            records.iter().filter(|r| r.class == "faithful" && args.faithful.contains(&r.kind)).map(raw_of).collect();
        let mut by_kind = serde_json::Map::new();
        for kind in KINDS {
            let positives: Vec<f64> = planted.iter().filter(|r| r.kind == kind).map(|r| raw_of(r)).collect();
            by_kind.insert(kind.to_owned(), round4(auroc(&negatives, &positives)));
        }
        let positives: Vec<f64> = planted.iter().map(|r| raw_of(r)).collect();
        let mut sorted = negatives.clone();
        sorted.sort_by(f64::total_cmp);
        let quantile =
            |q: f64| sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
        components.insert(
            name.clone(),
            serde_json::json!({
                "auroc": round4(auroc(&negatives, &positives)),
                "auroc_by_kind": by_kind,
                "faithful_raw_median": round4(quantile(0.5)),
                "faithful_raw_p98": round4(quantile(0.98)),
            }),
        );
    }
    let command = format!(
        "cxr-led-train hallucination-bench --data {} --split {} --count {} --ranges {} --size {} --bundle {} --faithful {} --seed {}{}{} --out {}",
        args.data.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" "),
        args.split,
        args.count,
        args.ranges,
        args.size,
        args.bundle.display(),
        args.faithful.join(","),
        args.seed,
        if args.skip_unweighted { " --skip-unweighted" } else { "" },
        if args.from_defaults { " --from-defaults" } else if args.as_calibrated { " --as-calibrated" } else { "" },
        args.out.display()
    );
    // The weakest kind at medium size, with its interval.
    let weakest_medium = KINDS
        .iter()
        .map(|k| auroc_interval(Some(k), Some("medium")))
        .min_by(|a, b| a.mean.total_cmp(&b.mean))
        .unwrap_or(Interval { mean: f64::NAN, low: f64::NAN, high: f64::NAN });
    let mut summary = serde_json::Map::new();
    for (key, value) in [
        ("command", serde_json::json!(command)),
        ("bundle", serde_json::json!(bundle.manifest.name)),
        ("bundle_version", serde_json::json!(bundle.manifest.version)),
        (
            "images",
            serde_json::json!(records.iter().filter(|r| r.class == "faithful" && r.kind == "ground-truth").count()),
        ),
        (
            "calibration",
            serde_json::json!(if args.as_calibrated {
                "the bundle's stored calibration and threshold, measured on every image".to_owned()
            } else {
                format!(
                    "threshold (the lowest with at most {:.0} % false holds on the calibrating images' faithful \
                     candidates), offsets, spreads and weights from the other (alternate) images",
                    FALSE_HOLD_TARGET * 100.0
                )
            }),
        ),
        ("intervals", serde_json::json!("95 %, the evaluating images resampled with replacement")),
        ("size", serde_json::json!(args.size)),
        ("seed", serde_json::json!(args.seed)),
        ("faithful_kinds", serde_json::json!(args.faithful.join(","))),
        ("faithful_count", serde_json::json!(calibration.len())),
        ("planted_count", serde_json::json!(planted_scores.len())),
        ("hold_threshold", serde_json::json!(threshold)),
        ("false_hold_target", serde_json::json!(FALSE_HOLD_TARGET)),
    ] {
        summary.insert(key.to_owned(), value);
    }
    let false_holds =
        image_interval(by_image.len(), |draw| rate_above(&scores_of(draw, None, None).0, threshold), BOOTSTRAP_SEED);
    with_interval(&mut summary, "false_hold_rate", false_holds);
    with_interval(&mut summary, "detection_rate", detection_interval(None, None));
    with_interval(&mut summary, "medium_detection_rate", detection_interval(None, Some("medium")));
    with_interval(&mut summary, "auroc", auroc_interval(None, None));
    with_interval(&mut summary, "min_medium_auroc", weakest_medium);
    summary.insert("seconds".to_owned(), serde_json::json!((seconds * 10.0).round() / 10.0));
    serde_json::json!({
        "summary": summary,
        "per_kind": per_kind,
        "faithful": faithful,
        "components": components,
        "config": serde_json::to_value(config).unwrap_or_default(),
    })
}

fn cell(value: &serde_json::Value) -> String {
    value.as_f64().map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}"))
}

/// `entry[name]` with its interval `entry[name_95]`, as "0.918 [0.901-0.934]".
fn cell95(entry: &serde_json::Value, name: &str) -> String {
    let interval = &entry[format!("{name}_95")];
    format!("{} [{}-{}]", cell(&entry[name]), cell(&interval[0]), cell(&interval[1]))
}

/// The Markdown report.
fn markdown(figures: &serde_json::Value, examples: &[(String, String, String, f64)]) -> String {
    let s = &figures["summary"];
    let mut out = String::new();
    let _ = writeln!(out, "# Planted-hallucination benchmark\n");
    let _ = writeln!(out, "Reproduce: `{}`\n", s["command"].as_str().unwrap_or_default());
    let _ = writeln!(
        out,
        "Bundle `{}` {}; {} images at {} px; {} faithful candidates ({}) and {} planted ones.\n",
        s["bundle"].as_str().unwrap_or_default(),
        s["bundle_version"].as_str().unwrap_or_default(),
        s["images"],
        s["size"],
        s["faithful_count"],
        s["faithful_kinds"].as_str().unwrap_or_default(),
        s["planted_count"]
    );
    let _ = writeln!(
        out,
        "**AUROC {} overall**; hold threshold **{}** ({}): false holds {}, detection {} of planted changes, {} of \
         medium-size ones. Lowest AUROC of a kind at medium size: {}. In brackets: {}.\n",
        cell95(s, "auroc"),
        cell(&s["hold_threshold"]),
        s["calibration"].as_str().unwrap_or_default(),
        cell95(s, "false_hold_rate"),
        cell95(s, "detection_rate"),
        cell95(s, "medium_detection_rate"),
        cell95(s, "min_medium_auroc"),
        s["intervals"].as_str().unwrap_or_default()
    );
    let _ = writeln!(out, "## AUROC [95 % interval] (detection at the threshold) by kind and size\n");
    let _ = writeln!(out, "| kind | small | medium | large | all |\n| --- | --- | --- | --- | --- |");
    for kind in KINDS {
        let k = &figures["per_kind"][kind];
        let entry = |size: &str| format!("{} ({})", cell95(&k[size], "auroc"), cell(&k[size]["detection"]));
        let _ = writeln!(
            out,
            "| {kind} | {} | {} | {} | {} |",
            entry("small"),
            entry("medium"),
            entry("large"),
            entry("all")
        );
    }
    let _ = writeln!(out, "\n## Faithful candidates\n");
    let _ = writeln!(out, "| candidate | in calibration | count | held at threshold | median score | AUROC vs planted |\n| --- | --- | --- | --- | --- | --- |");
    for kind in FAITHFUL {
        let f = &figures["faithful"][kind];
        let _ = writeln!(
            out,
            "| {kind} | {} | {} | {} | {} | {} |",
            f["in_calibration"],
            f["count"],
            cell(&f["hold_rate"]),
            cell(&f["median_score"]),
            cell(&f["auroc_vs_planted"])
        );
    }
    let _ = writeln!(out, "\n## Components (AUROC of the raw statistic, faithful vs planted)\n");
    let _ = writeln!(out, "| component | all | {} | faithful median | faithful p98 |", KINDS.join(" | "));
    let _ = writeln!(out, "| --- | --- | {} --- | --- |", "--- | ".repeat(KINDS.len()));
    if let Some(components) = figures["components"].as_object() {
        for (name, c) in components {
            let kinds: Vec<String> = KINDS.iter().map(|k| cell(&c["auroc_by_kind"][k])).collect();
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} |",
                cell(&c["auroc"]),
                kinds.join(" | "),
                cell(&c["faithful_raw_median"]),
                cell(&c["faithful_raw_p98"])
            );
        }
    }
    if !examples.is_empty() {
        let _ = writeln!(out, "\n## Examples (candidate | doubt map)\n");
        for (file, image, kind, score) in examples {
            let _ = writeln!(out, "{kind} in {image}, score {score:.3}:\n\n![{kind}]({file})\n");
        }
    }
    out
}
