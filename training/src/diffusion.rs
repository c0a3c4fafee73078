//! Conditional diffusion training on (high-quality, low-quality) pairs with
//! the epsilon-prediction loss, as LED trains it: AdamW, linear warm-up then
//! cosine decay, gradient clipping at 1, an exponential moving average of the
//! weights (the EMA network is the one exported and validated), validation
//! loss on held-out pairs with fixed timesteps and noise, early stopping.
//!
//! The pairs are either fixed ones (`pairs`: G_BA's or the simulator's, at
//! the preset's size) or, as the paired first stage trains, random patches
//! of the training images at their own pixel scale, degraded afresh by the
//! simulator at every step ([`TrainingBatches::Patches`]): the refinement
//! then sees the noise and blur at the scale the daemon's tiles see them.

use std::path::Path;

use cxr_led_models::nets::unet::{ConditionalUNet, UNetConfig};
use cxr_led_models::sampling::noise::NoiseSource;
use cxr_led_models::sampling::schedule::NoiseSchedule;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Tensor};

use crate::checkpoint;
use crate::data;
use crate::paired::{self, TrainingPairs};
use crate::progress::{append_csv, Progress, StopFlag};

/// Hyper-parameters of a diffusion run.
#[derive(Debug, Clone)]
pub struct DiffusionConfig {
    /// Optimiser steps to reach (a resumed run continues to this count).
    pub steps: usize,
    /// Pairs per batch (the seed study used 32).
    pub batch: i64,
    /// Peak AdamW learning rate (the seed study used 1e-5).
    pub learning_rate: f64,
    /// Linear warm-up steps before the cosine decay.
    pub warmup: usize,
    /// EMA decay per step.
    pub ema_decay: f64,
    /// Steps between validations (and checkpoints).
    pub validate_every: usize,
    /// Validations without improvement before stopping.
    pub patience: usize,
    /// Seed of batches, timesteps and noise.
    pub seed: u64,
    /// Train on timesteps below this only (None: the whole schedule). LED
    /// refines from t0 <= 200, so a short (CPU) run spends every step on the
    /// timesteps inference uses; the bundle may then not use a larger t0.
    pub max_timestep: Option<usize>,
    /// Weights a fresh run starts from (fine-tuning): a bundle folder (its
    /// `unet`) or a diffusion checkpoint folder (its `unet-best`). Ignored
    /// when the run resumes.
    pub init: Option<std::path::PathBuf>,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self {
            steps: 50_000,
            batch: 32,
            learning_rate: 1e-5,
            warmup: 100,
            ema_decay: 0.999,
            validate_every: 500,
            patience: 10,
            seed: 0,
            max_timestep: None,
            init: None,
        }
    }
}

/// What a checkpoint records besides the weights.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DiffusionState {
    /// Steps done.
    pub step: usize,
    /// Best validation loss of the EMA network so far.
    pub best_validation: Option<f64>,
    /// Validations since the best one.
    pub since_best: usize,
    /// (step, mean training loss, validation loss) at each validation.
    pub history: Vec<(usize, f64, f64)>,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// The timesteps trained on were below this (None: all of them).
    #[serde(default)]
    pub max_timestep: Option<usize>,
    /// Where a fine-tuning run's first weights came from (`--init`).
    #[serde(default)]
    pub init: Option<String>,
}

/// Fills `store` from a bundle folder's `unet` or a diffusion checkpoint
/// folder's `unet-best` (the same architecture); returns what they are.
fn load_initial_weights(init: &Path, store: &mut nn::VarStore) -> anyhow::Result<String> {
    use anyhow::Context;
    if let Some(bundle) = checkpoint::init_bundle(init)? {
        bundle.load_weights("unet", store).with_context(|| {
            format!("taking the UNet of {} (it must have the preset's UNet architecture)", init.display())
        })?;
        Ok(checkpoint::describe_init("the UNet", &bundle, init))
    } else {
        checkpoint::load_store(init, "unet-best", store).with_context(|| {
            format!(
                "--init {}: give a bundle folder or a diffusion checkpoint folder of the same preset",
                init.display()
            )
        })?;
        Ok(format!("unet-best of the diffusion checkpoint {}", init.display()))
    }
}

/// Where each step's (high quality, low quality) batch comes from.
pub enum TrainingBatches<'a> {
    /// Random batches of fixed pairs `[N, 1, S, S]` in [-1, 1] (high quality, low quality).
    Fixed(&'a Tensor, &'a Tensor),
    /// Random patches of source images degraded afresh every step.
    Patches {
        /// The source images (and the simulator's ranges) or fixed pairs.
        pairs: &'a TrainingPairs,
        /// Scale factors a source is upsampled by, one drawn per source.
        scales: &'a [f64],
        /// Source images per step (the batch is cut evenly from them).
        sources: i64,
        /// Side of a square patch in pixels.
        patch: i64,
    },
}

impl TrainingBatches<'_> {
    /// One batch of `batch` pairs on `device`: (high quality, low quality).
    fn draw(&self, batch: i64, rng: &mut ChaCha8Rng, device: Device) -> anyhow::Result<(Tensor, Tensor)> {
        match self {
            TrainingBatches::Fixed(hq, lq) => {
                let [hq, lq] = <[Tensor; 2]>::try_from(data::batch(&[hq, lq], batch, rng)).expect("two stacks");
                Ok((hq.to_device(device), lq.to_device(device)))
            }
            TrainingBatches::Patches { pairs, scales, sources, patch } => {
                let sources = (*sources).clamp(1, batch);
                let per_source = (batch / sources).max(1);
                let (hq, lq) = paired::draw_raw_patches(pairs, scales, sources, per_source, *patch, rng)?;
                Ok((hq.to_device(device), lq.to_device(device)))
            }
        }
    }
}

fn learning_rate(config: &DiffusionConfig, step: usize) -> f64 {
    if step < config.warmup {
        return config.learning_rate * (step + 1) as f64 / config.warmup as f64;
    }
    let progress = (step - config.warmup) as f64 / (config.steps.saturating_sub(config.warmup)).max(1) as f64;
    config.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

/// Mean epsilon loss of `unet` over fixed validation pairs, timesteps and noise.
fn validation_loss(
    unet: &ConditionalUNet,
    schedule: &NoiseSchedule,
    hq: &Tensor,
    lq: &Tensor,
    timesteps: &Tensor,
    noise: &Tensor,
) -> f64 {
    let _no_grad = tch::no_grad_guard();
    let mut total = 0.0;
    let count = hq.size()[0];
    for start in (0..count).step_by(16) {
        let n = 16.min(count - start);
        let loss = schedule.epsilon_loss(
            &hq.narrow(0, start, n),
            &timesteps.narrow(0, start, n),
            &noise.narrow(0, start, n),
            |x_t, t| unet.forward(x_t, &lq.narrow(0, start, n), t),
        );
        total += loss.double_value(&[]) * n as f64;
    }
    total / count as f64
}

/// One row of the diffusion model's `metrics.csv`.
#[derive(Serialize)]
struct MetricsRow {
    step: usize,
    learning_rate: f64,
    train_loss: f64,
    validation_loss_ema: f64,
}

/// Trains the conditional UNet on `training` batches and validates on
/// held-out pairs (`[N, 1, S, S]` each in [-1, 1], HQ the target x_0 and LQ
/// the condition),
/// checkpointing into `dir` (`unet`, `unet-ema`, `unet-best` and `state.json`)
/// and resuming from it.
#[allow(clippy::too_many_arguments)]
pub fn train(
    unet_config: &UNetConfig,
    schedule: &NoiseSchedule,
    training: &TrainingBatches,
    validation_pairs: (&Tensor, &Tensor),
    config: &DiffusionConfig,
    dir: &Path,
    device: Device,
) -> anyhow::Result<DiffusionState> {
    let mut store = nn::VarStore::new(device);
    let unet = ConditionalUNet::new(&store.root(), unet_config)?;
    let mut ema_store = nn::VarStore::new(device);
    let ema = ConditionalUNet::new(&ema_store.root(), unet_config)?;
    let mut state: DiffusionState = checkpoint::load_state(dir)?.unwrap_or_default();
    if state.step > 0 {
        checkpoint::load_store(dir, "unet", &mut store)?;
        checkpoint::load_store(dir, "unet-ema", &mut ema_store)?;
        eprintln!("diffusion: resuming at step {}", state.step);
    } else {
        if let Some(init) = &config.init {
            state.init = Some(load_initial_weights(init, &mut store)?);
            eprintln!("diffusion: starting from the weights in {}", init.display());
        }
        ema_store.copy(&store)?;
    }
    let mut optimizer = nn::AdamW { wd: 0.0, ..Default::default() }.build(&store, config.learning_rate)?;

    let (val_hq, val_lq) = (validation_pairs.0.to_device(device), validation_pairs.1.to_device(device));
    let val_count = val_hq.size()[0];
    let training_count = match training {
        TrainingBatches::Fixed(hq, _) => hq.size()[0] as usize,
        TrainingBatches::Patches { pairs, .. } => pairs.len(),
    };
    anyhow::ensure!(val_count > 0 && training_count > 0, "diffusion needs training and validation pairs");
    if let TrainingBatches::Patches { pairs, patch, .. } = training {
        pairs.ensure_patch_fits(*patch)?;
    }
    let mut val_noise_source = NoiseSource::new(config.seed.wrapping_add(1));
    let val_noise = val_noise_source.normal(&val_hq.size(), device);
    let mut val_rng = ChaCha8Rng::seed_from_u64(config.seed.wrapping_add(2));
    let t_end = config.max_timestep.unwrap_or(schedule.len()).clamp(1, schedule.len()) as i64;
    anyhow::ensure!(
        state.step == 0 || state.max_timestep == config.max_timestep,
        "the checkpoint was trained with --max-timestep {:?}, not {:?}: resume with the same value",
        state.max_timestep,
        config.max_timestep
    );
    state.max_timestep = config.max_timestep;
    let timesteps: Vec<i64> = (0..val_count).map(|_| val_rng.gen_range(0..t_end)).collect();
    let val_timesteps = Tensor::from_slice(&timesteps).to_device(device);

    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ (state.step as u64).rotate_left(17));
    let mut noise = NoiseSource::new(config.seed ^ state.step as u64);
    let (mut loss_sum, mut count) = (0.0, 0usize);
    let pairs: Vec<(Tensor, Tensor)> = {
        let train_vars = store.variables();
        let ema_vars = ema_store.variables();
        train_vars.into_iter().map(|(name, t)| (t, ema_vars[&name].shallow_clone())).collect()
    };
    let stop = StopFlag::install()?;
    let mut progress = Progress::new("diffusion", state.step, config.steps, "steps");
    while state.step < config.steps && !state.stopped_early {
        if stop.raised() {
            progress.finish();
            checkpoint::save_store(dir, "unet", &store)?;
            checkpoint::save_store(dir, "unet-ema", &ema_store)?;
            checkpoint::save_state(dir, &state)?;
            eprintln!("diffusion: stopped at step {}; run the same command again to resume", state.step);
            return Ok(state);
        }
        let (hq, lq) = training.draw(config.batch, &mut rng, device)?;
        let t: Vec<i64> = (0..hq.size()[0]).map(|_| rng.gen_range(0..t_end)).collect();
        let t = Tensor::from_slice(&t).to_device(device);
        let eps = noise.normal(&hq.size(), device);
        let loss = schedule.epsilon_loss(&hq, &t, &eps, |x_t, t| unet.forward(x_t, &lq, t));
        optimizer.set_lr(learning_rate(config, state.step));
        optimizer.zero_grad();
        loss.backward();
        optimizer.clip_grad_norm(1.0);
        optimizer.step();
        tch::no_grad(|| {
            for (weights, average) in &pairs {
                let mut average = average.shallow_clone();
                let _ = average.g_mul_scalar_(config.ema_decay).g_add_(&(weights * (1.0 - config.ema_decay)));
            }
        });
        let value = loss.double_value(&[]);
        anyhow::ensure!(value.is_finite(), "diffusion diverged at step {}: loss {value}", state.step);
        (loss_sum, count) = (loss_sum + value, count + 1);
        state.step += 1;

        if state.step % config.validate_every == 0 || state.step == config.steps {
            let validation = validation_loss(&ema, schedule, &val_hq, &val_lq, &val_timesteps, &val_noise);
            let train_loss = loss_sum / count as f64;
            (loss_sum, count) = (0.0, 0);
            state.history.push((state.step, train_loss, validation));
            let row = MetricsRow {
                step: state.step,
                learning_rate: learning_rate(config, state.step),
                train_loss,
                validation_loss_ema: validation,
            };
            append_csv(&dir.join("metrics.csv"), &row)?;
            progress.finish();
            eprintln!("diffusion: step {} train {train_loss:.5} validation (EMA) {validation:.5}", state.step);
            if state.best_validation.is_none_or(|best| validation < best) {
                state.best_validation = Some(validation);
                state.since_best = 0;
                checkpoint::save_store(dir, "unet-best", &ema_store)?;
            } else {
                state.since_best += 1;
                state.stopped_early = state.since_best >= config.patience;
            }
            checkpoint::save_store(dir, "unet", &store)?;
            checkpoint::save_store(dir, "unet-ema", &ema_store)?;
            checkpoint::save_state(dir, &state)?;
        }
        progress.update(state.step, &format!("loss {value:.4}"));
    }
    if state.step < config.steps {
        progress.finish();
    }
    Ok(state)
}
