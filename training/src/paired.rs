//! The paired first stage: supervised training of the [`Enhancer`] on random
//! patches of high-quality images at their own pixel scale, each source image
//! degraded afresh by the simulator at every step (new parameters, new
//! noise), so the network never sees the same low-quality patch twice.
//!
//! Per step: `sources` training images are drawn, each optionally upsampled
//! (a coarser pixel pitch relative to the noise, as at a native detector
//! matrix) and flipped, degraded whole, measured whole ([`ToneStats`], as
//! inference measures a whole image) and cut into `batch / sources` random
//! patches. A share of sources (`clean_share`) is left undegraded, its target
//! itself, so that a good image comes through unchanged. Loss: L1 plus
//! `ssim_weight` (1 - SSIM) against the high-quality patch, plus
//! `spectrum_weight` times the L1 distance of the two patches' amplitude
//! spectra (see [`spectrum_distance`]: it keeps texture). Adam with a
//! linear warm-up and a cosine decay. Every `validate_every` steps the network
//! enhances fixed validation pairs (whole images, fixed degradations) and the
//! best PSNR's weights are kept as `enhancer-best`; the undegraded validation
//! images are scored too (how far the network moves a good image).
//! Checkpoints as every stage: resumable, stoppable.
//!
//! Where no simulator fits a site's detector, the pairs can be fixed ones
//! instead ([`TrainingPairs::Fixed`]): G_BA's low-quality versions of the
//! high-quality images (`pairs`, after `cyclegan` on the site's own unpaired
//! under-exposed pool). Patches, flips, tone statistics and validation work
//! the same; there is no upsampling (the pairs are at G_BA's size).

use std::path::{Path, PathBuf};
use std::time::Instant;

use cxr_led_models::nets::enhancer::{self, Enhancer, EnhancerConfig, ToneStats};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::checkpoint;
use crate::data;
use crate::degrade::{degrade, DegradationRanges};
use crate::metrics::{self, Plane};
use crate::progress::{append_csv, Progress, StopFlag};

/// Hyper-parameters of a paired run.
#[derive(Debug, Clone)]
pub struct PairedConfig {
    /// Optimiser steps to reach (a resumed run continues to this count).
    pub steps: usize,
    /// Patches per step.
    pub batch: i64,
    /// Source images per step (each gives `batch / sources` patches).
    pub sources: i64,
    /// Side of a square patch in pixels.
    pub patch: i64,
    /// Peak Adam learning rate.
    pub learning_rate: f64,
    /// Linear warm-up steps before the cosine decay.
    pub warmup: usize,
    /// Weight of the structure term (1 - SSIM) beside L1.
    pub ssim_weight: f64,
    /// Scale factors a source image is upsampled by, one drawn per source.
    pub scales: Vec<f64>,
    /// Steps between validations (and checkpoints).
    pub validate_every: usize,
    /// Kind of the activations (bf16: mixed precision with f32 weights).
    pub activations: Kind,
    /// Seed of image choice, crops, flips and degradations.
    pub seed: u64,
    /// Weights a fresh run starts from (fine-tuning): a paired checkpoint
    /// folder (its `enhancer-best`) or a bundle folder (its `enhancer`).
    /// Ignored when the run resumes.
    pub init: Option<PathBuf>,
    /// Share of simulated sources left undegraded (input = target), so the
    /// network learns to leave a good image alone: the daemon's gate lets
    /// through images that are not under-exposed at all, and a classifier
    /// loses accuracy on a good image the first stage restyles.
    pub clean_share: f64,
    /// Weight of the texture term ([`spectrum_distance`]) beside L1 and SSIM
    /// (0: off, the loss of every bundle up to 0.5.1-cpu).
    pub spectrum_weight: f64,
}

impl Default for PairedConfig {
    fn default() -> Self {
        Self {
            steps: 20_000,
            batch: 16,
            sources: 4,
            patch: 96,
            learning_rate: 1e-3,
            warmup: 200,
            ssim_weight: 0.2,
            scales: vec![1.0, 1.0, 1.5, 2.0],
            validate_every: 500,
            activations: Kind::Float,
            seed: 0,
            init: None,
            clean_share: 0.0,
            spectrum_weight: 0.0,
        }
    }
}

/// What a checkpoint records besides the weights.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PairedState {
    /// Steps done.
    pub step: usize,
    /// Best validation PSNR (dB) so far, and its step.
    pub best_validation_psnr: Option<(f64, usize)>,
    /// (step, mean training loss, validation PSNR dB, validation SSIM) at each validation.
    pub history: Vec<(usize, f64, f64, f64)>,
    /// Training patches per second of the last chunk.
    pub patches_per_second: f64,
    /// Seconds spent training, summed over chunks.
    pub seconds: f64,
    /// Where a fine-tuning run's first weights came from (`--init`): the
    /// folder and, for a bundle, its name, version and sha256.
    #[serde(default)]
    pub init: Option<String>,
    /// (step, PSNR dB) of the network on the undegraded validation images
    /// against themselves: how well it leaves a good image alone.
    #[serde(default)]
    pub clean_history: Vec<(usize, f64)>,
    /// The share of undegraded sources of the last chunk (`--clean-share`).
    #[serde(default)]
    pub clean_share: f64,
    /// The texture term's weight of the last chunk (`--spectrum-weight`).
    #[serde(default)]
    pub spectrum_weight: f64,
}

fn learning_rate(config: &PairedConfig, step: usize) -> f64 {
    if step < config.warmup {
        return config.learning_rate * (step + 1) as f64 / config.warmup as f64;
    }
    let progress = (step - config.warmup) as f64 / (config.steps.saturating_sub(config.warmup)).max(1) as f64;
    config.learning_rate * (0.02 + 0.98 * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()))
}

pub use crate::data::Skipped;

/// Where each step's (low-quality, high-quality) pairs come from.
pub enum TrainingPairs {
    /// High-quality `[1, 1, H, W]` images in [0, 1], each degraded afresh by
    /// the simulator with parameters drawn from `ranges` at every draw.
    Simulated {
        /// The high-quality images.
        images: Vec<Tensor>,
        /// The simulator's parameter ranges (boxed: far larger than the other variant).
        ranges: Box<DegradationRanges>,
    },
    /// Fixed (low quality, high quality) pairs, each `[1, 1, H, W]` in [0, 1]
    /// (G_BA's, from `pairs`).
    Fixed(Vec<(Tensor, Tensor)>),
}

impl TrainingPairs {
    /// Whether there is nothing to train on.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many source images (or fixed pairs) there are.
    pub fn len(&self) -> usize {
        match self {
            TrainingPairs::Simulated { images, .. } => images.len(),
            TrainingPairs::Fixed(pairs) => pairs.len(),
        }
    }

    /// The smallest side of any training image.
    fn smallest_side(&self) -> i64 {
        let side = |t: &Tensor| t.size()[2].min(t.size()[3]);
        match self {
            TrainingPairs::Simulated { images, .. } => images.iter().map(side).min(),
            TrainingPairs::Fixed(pairs) => pairs.iter().map(|(lq, hq)| side(lq).min(side(hq))).min(),
        }
        .unwrap_or(0)
    }

    /// Refuses a `patch` larger than the smallest training image.
    pub fn ensure_patch_fits(&self, patch: i64) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.smallest_side() >= patch,
            "--patch {patch} is larger than the smallest training image ({} px): pass a smaller --patch",
            self.smallest_side()
        );
        Ok(())
    }
}

/// Reads images at their own size as `[1, 1, H, W]` display intensity in
/// [0, 1]. A file that cannot be read or is smaller than `min_side` is named
/// on stderr and skipped; colour and 16-bit files are converted on reading.
pub fn load_images(paths: &[PathBuf], min_side: u32) -> (Vec<Tensor>, Vec<Skipped>) {
    let (images, skipped) = data::read_images(paths, None, min_side, "paired");
    (images.into_iter().map(|(_, image)| (image + 1.0) / 2.0).collect(), skipped)
}

/// Degrades one `[1, 1, H, W]` image in [0, 1] with parameters drawn from `ranges`.
fn degrade_image(image: &Tensor, ranges: &DegradationRanges, rng: &mut impl Rng) -> anyhow::Result<Tensor> {
    let (h, w) = (image.size()[2], image.size()[3]);
    let params = ranges.sample(rng);
    let plane = Vec::<f32>::try_from(image.flatten(0, -1))?;
    let degraded = degrade(&plane, w as usize, h as usize, &params, rng.gen());
    Ok(Tensor::from_slice(&degraded).view([1, 1, h, w]))
}

/// One validation input as the network takes it: (stretched image, its planes, target), each `[1, 1, H, W]`.
type ValidationInput = (Tensor, Tensor, Tensor);

/// The network's input for `input` (measured whole, stretched) with `target` as the truth.
fn validation_input(input: &Tensor, target: &Tensor) -> anyhow::Result<ValidationInput> {
    let stats = ToneStats::measure(input)?;
    Ok((stats.stretch(input), stats.planes(), target.shallow_clone()))
}

/// Fixed validation pairs (low quality → high quality), and the high-quality
/// images undegraded (→ themselves).
pub struct ValidationSet {
    pairs: Vec<ValidationInput>,
    clean: Vec<ValidationInput>,
}

/// Validation figures of one network.
#[derive(Debug, Clone, Copy)]
pub struct ValidationScore {
    /// Mean PSNR (dB) of the enhanced low-quality images against the high-quality ones.
    pub psnr: f64,
    /// Their mean SSIM.
    pub ssim: f64,
    /// Mean PSNR (dB) of the network's output on the undegraded images against themselves.
    pub clean_psnr: f64,
}

impl ValidationSet {
    /// Degrades each image once with parameters seeded by `seed` and its index.
    pub fn new(images: &[Tensor], ranges: &DegradationRanges, seed: u64) -> anyhow::Result<Self> {
        let degraded = degrade_fixed(images, ranges, seed)?;
        let pairs =
            degraded.iter().zip(images).map(|(lq, hq)| validation_input(lq, hq)).collect::<anyhow::Result<_>>()?;
        let clean = images.iter().map(|hq| validation_input(hq, hq)).collect::<anyhow::Result<_>>()?;
        Ok(Self { pairs, clean })
    }

    /// Fixed (low quality, high quality) pairs, each `[1, 1, H, W]` in [0, 1].
    pub fn from_pairs(pairs: &[(Tensor, Tensor)]) -> anyhow::Result<Self> {
        let clean = pairs.iter().map(|(_, hq)| validation_input(hq, hq)).collect::<anyhow::Result<_>>()?;
        let pairs = pairs.iter().map(|(lq, hq)| validation_input(lq, hq)).collect::<anyhow::Result<_>>()?;
        Ok(Self { pairs, clean })
    }

    /// The network's figures on the pairs and on the undegraded images.
    pub fn score(&self, net: &Enhancer, kind: Kind, device: Device) -> anyhow::Result<ValidationScore> {
        let (psnr, ssim) = mean_scores(&self.pairs, net, kind, device)?;
        let (clean_psnr, _) = mean_scores(&self.clean, net, kind, device)?;
        Ok(ValidationScore { psnr, ssim, clean_psnr })
    }
}

/// Mean PSNR (dB) and SSIM of the network's outputs on `inputs` against their targets.
fn mean_scores(inputs: &[ValidationInput], net: &Enhancer, kind: Kind, device: Device) -> anyhow::Result<(f64, f64)> {
    let _no_grad = tch::no_grad_guard();
    let (mut psnr, mut ssim) = (0.0, 0.0);
    for (stretched, planes, target) in inputs {
        let output = net.forward(&stretched.to_device(device).to_kind(kind), planes).clamp(0.0, 1.0);
        let output = Plane::from_model_tensor(&(output.to_device(Device::Cpu) * 2.0 - 1.0).squeeze_dim(0))?;
        let truth = Plane::from_model_tensor(&(target * 2.0 - 1.0).squeeze_dim(0))?;
        psnr += metrics::psnr(&output, &truth);
        ssim += metrics::ssim(&output, &truth);
    }
    let n = inputs.len().max(1) as f64;
    Ok((psnr / n, ssim / n))
}

/// A normalised 11x11 Gaussian window (sigma 1.5), `[1, 1, 11, 11]`.
fn ssim_window(device: Device) -> Tensor {
    let g = Tensor::arange(11, (Kind::Float, device)) - 5.0;
    let g = (-(&g * &g) / (2.0 * 1.5 * 1.5)).exp();
    let g = &g / g.sum(Kind::Float);
    g.unsqueeze(1).matmul(&g.unsqueeze(0)).view([1, 1, 11, 11])
}

/// Mean SSIM of two batches `[N, 1, H, W]` in [0, 1] (valid windows only).
fn ssim(a: &Tensor, b: &Tensor, window: &Tensor) -> Tensor {
    let filter = |x: &Tensor| x.conv2d(window, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let (mu_a, mu_b) = (filter(a), filter(b));
    let var_a = filter(&(a * a)) - &mu_a * &mu_a;
    let var_b = filter(&(b * b)) - &mu_b * &mu_b;
    let cov = filter(&(a * b)) - &mu_a * &mu_b;
    let numerator = (&mu_a * &mu_b * 2.0 + c1) * (cov * 2.0 + c2);
    let denominator = (&mu_a * &mu_a + &mu_b * &mu_b + c1) * (var_a + var_b + c2);
    (numerator / denominator).mean(Kind::Float)
}

/// One source image of a step, as (low quality, high quality) `[1, 1, H, W]`
/// in [0, 1]: drawn at random, flipped, and (simulated pairs) upsampled by
/// one of `scales` and degraded afresh, or left undegraded (`clean_share`).
pub fn draw_source(
    train: &TrainingPairs,
    scales: &[f64],
    clean_share: f64,
    rng: &mut impl Rng,
) -> anyhow::Result<(Tensor, Tensor)> {
    let (flip_x, flip_y) = (rng.gen_bool(0.5), rng.gen_bool(0.5));
    let flip = |mut image: Tensor| {
        if flip_x {
            image = image.flip([3]);
        }
        if flip_y {
            image = image.flip([2]);
        }
        image
    };
    // Without clean sources nothing is drawn, so such a run draws what it always drew.
    let draws_clean = |rng: &mut dyn rand::RngCore| clean_share > 0.0 && rng.gen_bool(clean_share);
    Ok(match train {
        TrainingPairs::Simulated { images, ranges } => {
            let mut image = images[rng.gen_range(0..images.len())].shallow_clone();
            let scale = scales[rng.gen_range(0..scales.len())];
            if scale > 1.0 {
                let (h, w) = (image.size()[2], image.size()[3]);
                let size = [(h as f64 * scale).round() as i64, (w as f64 * scale).round() as i64];
                image = image.upsample_bilinear2d(size, false, None, None);
            }
            let image = flip(image);
            if draws_clean(rng) {
                (image.shallow_clone(), image)
            } else {
                (degrade_image(&image, ranges, rng)?, image)
            }
        }
        TrainingPairs::Fixed(pairs) => {
            let (low, high) = &pairs[rng.gen_range(0..pairs.len())];
            let high = flip(high.shallow_clone());
            if draws_clean(rng) {
                (high.shallow_clone(), high)
            } else {
                (flip(low.shallow_clone()), high)
            }
        }
    })
}

/// A random `patch`-px square at the same place of each of `images` (`[1, 1, H, W]`).
fn crop_together(images: [&Tensor; 2], patch: i64, rng: &mut impl Rng) -> [Tensor; 2] {
    let (h, w) = (images[1].size()[2], images[1].size()[3]);
    let (y, x) = (rng.gen_range(0..=h - patch), rng.gen_range(0..=w - patch));
    images.map(|t| t.narrow(2, y, patch).narrow(3, x, patch))
}

/// One step's batch: stretched low-quality patches, their planes, high-quality patches.
fn draw_batch(
    train: &TrainingPairs,
    config: &PairedConfig,
    rng: &mut impl Rng,
) -> anyhow::Result<(Tensor, Tensor, Tensor)> {
    let per_source = (config.batch / config.sources).max(1);
    let (mut lq, mut planes, mut hq) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..config.sources {
        let (degraded, image) = draw_source(train, &config.scales, config.clean_share, rng)?;
        let stats = ToneStats::measure(&degraded)?;
        let stretched = stats.stretch(&degraded);
        for _ in 0..per_source {
            let [low, high] = crop_together([&stretched, &image], config.patch, rng);
            lq.push(low);
            hq.push(high);
            planes.push(stats.planes());
        }
    }
    Ok((Tensor::cat(&lq, 0), Tensor::cat(&planes, 0), Tensor::cat(&hq, 0)))
}

/// Random raw (unstretched) patch pairs for the diffusion refinement, which is
/// conditioned on the low-quality image as the daemon receives it: `sources`
/// source images ([`draw_source`], nothing left undegraded), `per_source`
/// patches of `patch` px from each. Returns (high quality, low quality), each
/// `[sources * per_source, 1, patch, patch]` in [-1, 1].
pub fn draw_raw_patches(
    train: &TrainingPairs,
    scales: &[f64],
    sources: i64,
    per_source: i64,
    patch: i64,
    rng: &mut impl Rng,
) -> anyhow::Result<(Tensor, Tensor)> {
    let (mut hq, mut lq) = (Vec::new(), Vec::new());
    for _ in 0..sources {
        let (degraded, image) = draw_source(train, scales, 0.0, rng)?;
        for _ in 0..per_source {
            let [high, low] = crop_together([&image, &degraded], patch, rng);
            hq.push(high);
            lq.push(low);
        }
    }
    Ok((Tensor::cat(&hq, 0) * 2.0 - 1.0, Tensor::cat(&lq, 0) * 2.0 - 1.0))
}

/// Each image degraded once, with parameters from `ranges` seeded by `seed`
/// and its index: fixed validation inputs (`[1, 1, H, W]` in [0, 1]).
pub fn degrade_fixed(images: &[Tensor], ranges: &DegradationRanges, seed: u64) -> anyhow::Result<Vec<Tensor>> {
    images
        .iter()
        .enumerate()
        .map(|(i, hq)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            degrade_image(hq, ranges, &mut rng)
        })
        .collect()
}

/// Fills `store` (architecture `config`) from a bundle folder's `enhancer`
/// or a paired checkpoint folder's `enhancer-best`. A bundle's smaller
/// enhancer is grown into `config` ([`enhancer::grow`]: the same output, more
/// capacity to fine-tune); a checkpoint must match. Returns what the weights
/// are, for the checkpoint's record.
fn load_initial_weights(init: &Path, config: &EnhancerConfig, store: &mut nn::VarStore) -> anyhow::Result<String> {
    use anyhow::Context;
    if let Some(bundle) = checkpoint::init_bundle(init)? {
        let Some(trained) = &bundle.manifest.enhancer else {
            anyhow::bail!("the --init bundle {} has no [enhancer] to start from", init.display());
        };
        // Loaded at its own architecture; growing into the same one is a plain copy.
        let source = nn::VarStore::new(store.device());
        Enhancer::new(&source.root(), trained)?;
        bundle
            .load_weights("enhancer", &source)
            .with_context(|| format!("taking the enhancer of {}", init.display()))?;
        enhancer::grow(&source, trained, store, config)
            .with_context(|| format!("growing the enhancer of {} into the preset's", init.display()))?;
        let grown = if trained == config { String::new() } else { format!(", grown from an enhancer {trained}") };
        Ok(format!("{}{grown}", checkpoint::describe_init("the enhancer", &bundle, init)))
    } else {
        checkpoint::load_store(init, "enhancer-best", store).with_context(|| {
            format!("--init {}: give a bundle folder or a paired checkpoint folder of the same preset", init.display())
        })?;
        Ok(format!("enhancer-best of the paired checkpoint {}", init.display()))
    }
}

/// One row of the paired enhancer's `metrics.csv`.
#[derive(Serialize)]
struct MetricsRow {
    step: usize,
    learning_rate: f64,
    train_loss: f64,
    validation_psnr_db: f64,
    validation_ssim: f64,
    validation_clean_psnr_db: f64,
}

/// Trains the enhancer on `train` pairs, validating on `validation`,
/// checkpointing into `dir` (`enhancer`, `enhancer-best`, `state.json`,
/// `metrics.csv`) and resuming from it.
pub fn train(
    net_config: &EnhancerConfig,
    train: &TrainingPairs,
    validation: &ValidationSet,
    config: &PairedConfig,
    dir: &Path,
    device: Device,
) -> anyhow::Result<PairedState> {
    anyhow::ensure!(!train.is_empty(), "paired training needs at least one usable training image");
    train.ensure_patch_fits(config.patch)?;
    anyhow::ensure!(
        config.patch >= 16 && config.patch % net_config.size_multiple() == 0,
        "--patch {} must be at least 16 and a multiple of {}",
        config.patch,
        net_config.size_multiple()
    );
    anyhow::ensure!(
        config.sources >= 1 && config.batch >= config.sources,
        "--batch ({}) must be at least --sources ({}) and both positive",
        config.batch,
        config.sources
    );
    anyhow::ensure!(
        (0.0..1.0).contains(&config.clean_share),
        "--clean-share {} must be at least 0 and below 1 (the share of training sources left undegraded)",
        config.clean_share
    );
    anyhow::ensure!(
        config.spectrum_weight >= 0.0 && config.spectrum_weight.is_finite(),
        "--spectrum-weight {} must be a finite number, 0 or more (0 turns the texture term off)",
        config.spectrum_weight
    );
    let mut store = nn::VarStore::new(device);
    let net = Enhancer::new(&store.root(), net_config)?;
    let mut state: PairedState = checkpoint::load_state(dir)?.unwrap_or_default();
    (state.clean_share, state.spectrum_weight) = (config.clean_share, config.spectrum_weight);
    if state.step > 0 {
        checkpoint::load_store(dir, "enhancer", &mut store)?;
        eprintln!("paired: resuming at step {}", state.step);
    } else if let Some(init) = &config.init {
        state.init = Some(load_initial_weights(init, net_config, &mut store)?);
        eprintln!("paired: starting from the weights in {}", init.display());
    }
    let mut optimizer = nn::Adam::default().build(&store, config.learning_rate)?;
    let window = ssim_window(device);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ (state.step as u64).rotate_left(17));
    let (mut loss_sum, mut count) = (0.0, 0usize);
    let stop = StopFlag::install()?;
    let mut progress = Progress::new("paired", state.step, config.steps, "steps");
    let (chunk_start, chunk_step) = (Instant::now(), state.step);
    let save = |state: &mut PairedState, store: &nn::VarStore| -> anyhow::Result<()> {
        let done = (state.step - chunk_step) as f64 * config.batch as f64;
        state.patches_per_second = done / chunk_start.elapsed().as_secs_f64().max(1e-9);
        checkpoint::save_store(dir, "enhancer", store)?;
        checkpoint::save_state(dir, state)
    };
    let mut last_save = Instant::now();
    // Time spent simulating and cutting patches, against the whole step.
    let mut data_seconds = 0.0;
    while state.step < config.steps {
        if stop.raised() {
            progress.finish();
            state.seconds += last_save.elapsed().as_secs_f64();
            save(&mut state, &store)?;
            eprintln!("paired: stopped at step {}; run the same command again to resume", state.step);
            return Ok(state);
        }
        let drawing = Instant::now();
        let (lq, planes, hq) = draw_batch(train, config, &mut rng)?;
        data_seconds += drawing.elapsed().as_secs_f64();
        let (lq, hq) = (lq.to_device(device), hq.to_device(device));
        let output = net.forward(&lq.to_kind(config.activations), &planes);
        let structure: Tensor = ssim(&output.clamp(0.0, 1.0), &hq, &window);
        let mut loss = (&output - &hq).abs().mean(Kind::Float) + (structure.neg() + 1.0) * config.ssim_weight;
        if config.spectrum_weight > 0.0 {
            loss += spectrum_distance(&output, &hq) * config.spectrum_weight;
        }
        optimizer.set_lr(learning_rate(config, state.step));
        optimizer.zero_grad();
        loss.backward();
        optimizer.clip_grad_norm(1.0);
        optimizer.step();
        let value = loss.double_value(&[]);
        anyhow::ensure!(value.is_finite(), "paired training diverged at step {}: loss {value}", state.step);
        (loss_sum, count) = (loss_sum + value, count + 1);
        state.step += 1;

        if state.step % config.validate_every == 0 || state.step == config.steps {
            let score = validation.score(&net, config.activations, device)?;
            let (psnr, ssim_value, clean_psnr) = (score.psnr, score.ssim, score.clean_psnr);
            let train_loss = loss_sum / count.max(1) as f64;
            (loss_sum, count) = (0.0, 0);
            state.history.push((state.step, train_loss, psnr, ssim_value));
            state.clean_history.push((state.step, clean_psnr));
            let row = MetricsRow {
                step: state.step,
                learning_rate: learning_rate(config, state.step),
                train_loss,
                validation_psnr_db: psnr,
                validation_ssim: ssim_value,
                validation_clean_psnr_db: clean_psnr,
            };
            append_csv(&dir.join("metrics.csv"), &row)?;
            progress.finish();
            eprintln!(
                "paired: step {} train {train_loss:.5} validation {psnr:.3} dB SSIM {ssim_value:.4}, \
                 undegraded {clean_psnr:.2} dB",
                state.step
            );
            if state.best_validation_psnr.is_none_or(|(best, _)| psnr > best) {
                state.best_validation_psnr = Some((psnr, state.step));
                checkpoint::save_store(dir, "enhancer-best", &store)?;
            }
            state.seconds += last_save.elapsed().as_secs_f64();
            last_save = Instant::now();
            save(&mut state, &store)?;
        }
        let rate = (state.step - chunk_step) as f64 * config.batch as f64 / chunk_start.elapsed().as_secs_f64();
        let data_share = data_seconds / chunk_start.elapsed().as_secs_f64();
        progress.update(
            state.step,
            &format!("loss {value:.4} {rate:.1} patches/s ({:.0}% simulating)", data_share * 100.0),
        );
    }
    progress.finish();
    Ok(state)
}

/// Mean L1 distance between the amplitude spectra of `output` and `target`
/// (N, 1, H, W), each patch's mean removed, orthonormal FFT.
///
/// Pixel losses cannot keep texture: the noise and fine grain of a
/// high-quality image are unpredictable from a noisy input, so L1 and SSIM
/// pay for any texture drawn with the wrong phase and the network learns to
/// smooth. A classifier trained on real images reads that smoothness, and the
/// over-sharpening and the period-2 pattern of the pixel shuffle that the
/// pixel losses also let through. Amplitudes carry no phase: this term asks
/// for the target's energy at every frequency, whatever its phase, and L1
/// pushes every frequency with the same force, the faint high ones included.
pub fn spectrum_distance(output: &Tensor, target: &Tensor) -> Tensor {
    let amplitude = |xs: &Tensor| {
        let xs = xs.to_kind(Kind::Float);
        let centred = &xs - xs.mean_dim(&[-2i64, -1][..], true, Kind::Float);
        centred.fft_rfft2(None::<&[i64]>, [-2i64, -1], "ortho").abs()
    };
    (amplitude(output) - amplitude(target)).abs().mean(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest residual of the least-squares fit `a * x + b` to `y`.
    fn affine_residual(x: &Tensor, y: &Tensor) -> f64 {
        let (x, y) = (x.flatten(0, -1), y.flatten(0, -1));
        let (dx, dy) = (&x - x.mean(Kind::Float), &y - y.mean(Kind::Float));
        let slope = (&dx * &dy).sum(Kind::Float) / (&dx * &dx).sum(Kind::Float).clamp_min(1e-12);
        (dy - dx * slope).abs().max().double_value(&[])
    }

    #[test]
    fn the_spectrum_distance_ignores_phase_and_sees_lost_texture() {
        tch::manual_seed(5);
        let texture = Tensor::randn([2, 1, 32, 32], (Kind::Float, Device::Cpu)) * 0.05 + 0.5;
        // The same texture moved by a few pixels: every amplitude kept.
        let moved = texture.roll([3i64, 5], [2i64, 3]);
        let smooth = texture.avg_pool2d([3, 3], [1, 1], [1, 1], false, true, None::<i64>);
        let zero = spectrum_distance(&texture, &texture).double_value(&[]);
        let shifted = spectrum_distance(&moved, &texture).double_value(&[]);
        let smoothed = spectrum_distance(&smooth, &texture).double_value(&[]);
        assert!(zero < 1e-7 && shifted < 1e-5, "identical {zero}, shifted {shifted}");
        assert!(smoothed > 0.01, "smoothing the texture away must cost: {smoothed}");
        // Pixel L1 would rather have the smoothed patch than the moved one; this term the other way round.
        let l1 = |a: &Tensor| (a - &texture).abs().mean(Kind::Float).double_value(&[]);
        assert!(l1(&smooth) < l1(&moved));
    }

    #[test]
    fn clean_sources_are_the_target_stretched_and_the_rest_degraded() {
        let image = Tensor::linspace(0.1, 0.9, 64 * 64, (Kind::Float, Device::Cpu)).view([1, 1, 64, 64]);
        let image = &image + (image.sin() * 40.0).sin() * 0.05;
        let train = TrainingPairs::Simulated { images: vec![image], ranges: Box::new(DegradationRanges::default()) };
        let config = |clean_share| PairedConfig { batch: 8, sources: 8, patch: 16, clean_share, ..Default::default() };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for (clean_share, undegraded) in [(0.999_999, true), (0.0, false)] {
            let (lq, _, hq) = draw_batch(&train, &config(clean_share), &mut rng).unwrap();
            for i in 0..8 {
                let residual = affine_residual(&hq.get(i), &lq.get(i));
                assert_eq!(residual < 1e-4, undegraded, "patch {i} at clean share {clean_share}: residual {residual}");
            }
        }
    }
}
