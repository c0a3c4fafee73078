//! Conditional diffusion training on (high-quality, low-quality) pairs with
//! the epsilon-prediction loss, as LED trains it: AdamW, linear warm-up then
//! cosine decay, gradient clipping at 1, an exponential moving average of the
//! weights (the EMA network is the one exported and validated), validation
//! loss on held-out pairs with fixed timesteps and noise, early stopping.

use std::path::Path;

use cxr_led_models::noise::NoiseSource;
use cxr_led_models::schedule::NoiseSchedule;
use cxr_led_models::unet::{ConditionalUNet, UNetConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Tensor};

use crate::checkpoint;
use crate::data;
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

/// Trains the conditional UNet on training pairs and validates on held-out
/// ones (`[N, 1, S, S]` each, HQ the target x_0 and LQ the condition),
/// checkpointing into `dir` (`unet`, `unet-ema`, `unet-best` and `state.json`)
/// and resuming from it.
#[allow(clippy::too_many_arguments)]
pub fn train(
    unet_config: &UNetConfig,
    schedule: &NoiseSchedule,
    train_pairs: (&Tensor, &Tensor),
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
        ema_store.copy(&store)?;
    }
    let mut optimizer = nn::AdamW { wd: 0.0, ..Default::default() }.build(&store, config.learning_rate)?;

    let (train_hq, train_lq) = (train_pairs.0.to_device(device), train_pairs.1.to_device(device));
    let (val_hq, val_lq) = (validation_pairs.0.to_device(device), validation_pairs.1.to_device(device));
    let val_count = val_hq.size()[0];
    anyhow::ensure!(val_count > 0 && train_hq.size()[0] > 0, "diffusion needs training and validation pairs");
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
        let batch = data::batch(&[&train_hq, &train_lq], config.batch, &mut rng);
        let t: Vec<i64> = (0..config.batch).map(|_| rng.gen_range(0..t_end)).collect();
        let t = Tensor::from_slice(&t).to_device(device);
        let eps = noise.normal(&batch[0].size(), device);
        let loss = schedule.epsilon_loss(&batch[0], &t, &eps, |x_t, t| unet.forward(x_t, &batch[1], t));
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
            append_csv(
                &dir.join("metrics.csv"),
                "step,learning_rate,train_loss,validation_loss_ema",
                &format!("{},{:.7},{train_loss:.6},{validation:.6}", state.step, learning_rate(config, state.step)),
            )?;
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
