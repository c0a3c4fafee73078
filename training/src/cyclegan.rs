//! CycleGAN training (Zhu et al. 2017) as the seed study ran it: LSGAN
//! adversarial losses, cycle consistency weighted by lambda = 10, optional
//! identity loss, PatchGAN 70x70 discriminators fed from a 50-image pool of
//! past fakes, Adam (lr 1e-4, beta1 0.5). A is the low-quality pool, B the
//! high-quality one: G_AB enhances, G_BA learns the degradation.

use std::path::Path;

use cxr_led_models::nets::discriminator::{DiscriminatorConfig, PatchDiscriminator};
use cxr_led_models::nets::generator::{GeneratorConfig, ResnetGenerator};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Reduction, Tensor};

use crate::checkpoint;
use crate::data;
use crate::progress::{append_csv, Progress, StopFlag};

/// Hyper-parameters of a CycleGAN run.
#[derive(Debug, Clone)]
pub struct CycleGanConfig {
    /// Optimiser steps to reach (a resumed run continues to this count).
    pub steps: usize,
    /// Images per batch.
    pub batch: i64,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Weight of the cycle-consistency loss.
    pub lambda_cycle: f64,
    /// Weight of the identity loss, as a fraction of `lambda_cycle` (0 disables it).
    pub identity: f64,
    /// Past fakes kept for the discriminators.
    pub pool_size: usize,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// Seed of batch sampling and the image pools.
    pub seed: u64,
}

impl Default for CycleGanConfig {
    fn default() -> Self {
        Self {
            steps: 10_000,
            batch: 4,
            learning_rate: 1e-4,
            lambda_cycle: 10.0,
            identity: 0.5,
            pool_size: 50,
            checkpoint_every: 500,
            seed: 0,
        }
    }
}

/// What a checkpoint records besides the weights.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CycleGanState {
    /// Steps done.
    pub step: usize,
    /// (step, generator loss, discriminator loss) at each checkpoint.
    pub losses: Vec<(usize, f64, f64)>,
}

/// CycleGAN's history of generated images (Shrivastava et al. 2017): the
/// discriminator sees a mix of new fakes and older ones.
struct ImagePool {
    images: Vec<Tensor>,
    capacity: usize,
}

impl ImagePool {
    fn query(&mut self, fakes: &Tensor, rng: &mut impl Rng) -> Tensor {
        if self.capacity == 0 {
            return fakes.shallow_clone();
        }
        let mut out = Vec::new();
        for i in 0..fakes.size()[0] {
            let image = fakes.get(i).detach().copy();
            if self.images.len() < self.capacity {
                self.images.push(image.shallow_clone());
                out.push(image);
            } else if rng.gen_bool(0.5) {
                let k = rng.gen_range(0..self.images.len());
                out.push(std::mem::replace(&mut self.images[k], image));
            } else {
                out.push(image);
            }
        }
        Tensor::stack(&out, 0)
    }
}

fn mse_to(prediction: &Tensor, target: f64) -> Tensor {
    prediction.mse_loss(&prediction.full_like(target), Reduction::Mean)
}

/// One row of CycleGAN's `metrics.csv`: mean losses since the last checkpoint.
#[derive(Serialize)]
struct MetricsRow {
    step: usize,
    loss_g: f64,
    loss_d: f64,
}

/// Trains on unpaired pools `[N, 1, S, S]` (A: low quality, B: high quality),
/// checkpointing into `dir` (G_AB, G_BA, D_A, D_B and `state.json`), resuming
/// from it when a checkpoint exists.
pub fn train(
    generator: &GeneratorConfig,
    pool_a: &Tensor,
    pool_b: &Tensor,
    config: &CycleGanConfig,
    dir: &Path,
    device: Device,
) -> anyhow::Result<CycleGanState> {
    let discriminator = DiscriminatorConfig { image_channels: generator.image_channels, ..Default::default() };
    let mut stores: Vec<nn::VarStore> = (0..4).map(|_| nn::VarStore::new(device)).collect();
    let g_ab = ResnetGenerator::new(&stores[0].root(), generator);
    let g_ba = ResnetGenerator::new(&stores[1].root(), generator);
    let d_a = PatchDiscriminator::new(&stores[2].root(), &discriminator);
    let d_b = PatchDiscriminator::new(&stores[3].root(), &discriminator);
    const NAMES: [&str; 4] = ["g_ab", "g_ba", "d_a", "d_b"];

    let mut state: CycleGanState = checkpoint::load_state(dir)?.unwrap_or_default();
    if state.step > 0 {
        for (name, store) in NAMES.iter().zip(stores.iter_mut()) {
            checkpoint::load_store(dir, name, store)?;
        }
        eprintln!("cyclegan: resuming at step {}", state.step);
    }
    let adam = nn::Adam { beta1: 0.5, beta2: 0.999, ..Default::default() };
    let mut optimizers = stores.iter().map(|s| adam.build(s, config.learning_rate)).collect::<Result<Vec<_>, _>>()?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ state.step as u64);
    let (mut pool_fake_a, mut pool_fake_b) = (
        ImagePool { images: Vec::new(), capacity: config.pool_size },
        ImagePool { images: Vec::new(), capacity: config.pool_size },
    );
    let (pool_a, pool_b) = (pool_a.to_device(device), pool_b.to_device(device));
    let lambda = config.lambda_cycle;
    let (mut g_sum, mut d_sum, mut count) = (0.0, 0.0, 0usize);
    let save = |stores: &[nn::VarStore], state: &CycleGanState| -> anyhow::Result<()> {
        for (name, store) in NAMES.iter().zip(stores) {
            checkpoint::save_store(dir, name, store)?;
        }
        checkpoint::save_state(dir, state)
    };
    let stop = StopFlag::install()?;
    let mut progress = Progress::new("cyclegan", state.step, config.steps, "steps");

    while state.step < config.steps {
        if stop.raised() {
            progress.finish();
            save(&stores, &state)?;
            eprintln!("cyclegan: stopped at step {}; run the same command again to resume", state.step);
            return Ok(state);
        }
        let real_a = data::batch(&[&pool_a], config.batch, &mut rng).remove(0);
        let real_b = data::batch(&[&pool_b], config.batch, &mut rng).remove(0);

        // Generators: fool both discriminators, and come back round the cycle.
        let fake_b = g_ab.forward(&real_a);
        let fake_a = g_ba.forward(&real_b);
        let mut loss_g = mse_to(&d_b.forward(&fake_b), 1.0)
            + mse_to(&d_a.forward(&fake_a), 1.0)
            + (g_ba.forward(&fake_b) - &real_a).abs().mean(tch::Kind::Float) * lambda
            + (g_ab.forward(&fake_a) - &real_b).abs().mean(tch::Kind::Float) * lambda;
        if config.identity > 0.0 {
            loss_g = loss_g
                + (g_ab.forward(&real_b) - &real_b).abs().mean(tch::Kind::Float) * (lambda * config.identity)
                + (g_ba.forward(&real_a) - &real_a).abs().mean(tch::Kind::Float) * (lambda * config.identity);
        }
        for optimizer in optimizers.iter_mut() {
            optimizer.zero_grad();
        }
        loss_g.backward();
        optimizers[0].step();
        optimizers[1].step();

        // Discriminators: real is 1, a pooled fake is 0.
        let fake_a = pool_fake_a.query(&fake_a, &mut rng);
        let fake_b = pool_fake_b.query(&fake_b, &mut rng);
        let loss_d_a = (mse_to(&d_a.forward(&real_a), 1.0) + mse_to(&d_a.forward(&fake_a), 0.0)) * 0.5;
        let loss_d_b = (mse_to(&d_b.forward(&real_b), 1.0) + mse_to(&d_b.forward(&fake_b), 0.0)) * 0.5;
        optimizers[2].zero_grad();
        optimizers[3].zero_grad();
        (&loss_d_a + &loss_d_b).backward();
        optimizers[2].step();
        optimizers[3].step();

        let (g, d) = (loss_g.double_value(&[]), (loss_d_a + loss_d_b).double_value(&[]));
        anyhow::ensure!(g.is_finite() && d.is_finite(), "cyclegan diverged at step {}: losses {g}, {d}", state.step);
        (g_sum, d_sum, count) = (g_sum + g, d_sum + d, count + 1);
        state.step += 1;
        if state.step % config.checkpoint_every == 0 || state.step == config.steps {
            let (mean_g, mean_d) = (g_sum / count as f64, d_sum / count as f64);
            state.losses.push((state.step, mean_g, mean_d));
            append_csv(&dir.join("metrics.csv"), &MetricsRow { step: state.step, loss_g: mean_g, loss_d: mean_d })?;
            (g_sum, d_sum, count) = (0.0, 0.0, 0);
            save(&stores, &state)?;
            progress.finish();
            eprintln!("cyclegan: step {} loss G {mean_g:.4} D {mean_d:.4}", state.step);
        }
        progress.update(state.step, &format!("loss G {g:.3} D {d:.3}"));
    }
    Ok(state)
}
