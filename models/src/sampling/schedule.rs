//! The noise schedule of a DDPM (Ho et al. 2020) as LED uses it: T steps of
//! variance beta_t, the forward process q(x_t | x_0) and the epsilon-prediction
//! loss of the LED paper's section 2.3,
//! `L = E || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t, y) ||^2`.
//!
//! Timesteps are 0-based: `alphas_cumprod[t]` is the signal fraction after
//! `t + 1` forward steps, as in the diffusers library.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::{Error, Result};

/// How beta_t grows over the T steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BetaSchedule {
    /// beta_t linear from `beta_start` to `beta_end` (DDPM, LED).
    Linear,
    /// abar_t = cos^2(((t/T) + s) / (1 + s) * pi/2) (Nichol & Dhariwal 2021), betas capped at 0.999.
    Cosine,
}

/// The schedule's hyper-parameters, as written in `bundle.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Shape of the beta curve.
    pub kind: BetaSchedule,
    /// Number of diffusion steps T.
    pub timesteps: usize,
    /// First beta (linear schedule).
    pub beta_start: f64,
    /// Last beta (linear schedule).
    pub beta_end: f64,
    /// Offset s of the cosine schedule.
    pub cosine_offset: f64,
}

impl Default for ScheduleConfig {
    /// LED's schedule: T = 1000, linear betas from 1e-4 to 0.02.
    fn default() -> Self {
        Self { kind: BetaSchedule::Linear, timesteps: 1000, beta_start: 1e-4, beta_end: 0.02, cosine_offset: 0.008 }
    }
}

/// A concrete schedule: the betas and their cumulative products.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
}

impl NoiseSchedule {
    /// Builds the schedule, refusing parameters that give no valid process.
    pub fn new(config: &ScheduleConfig) -> Result<Self> {
        let steps = config.timesteps;
        if steps < 2 {
            return Err(Error::InvalidParams(format!(
                "schedule timesteps is {steps}; it must be at least 2 (LED uses 1000)"
            )));
        }
        let betas: Vec<f64> = match config.kind {
            BetaSchedule::Linear => {
                let (start, end) = (config.beta_start, config.beta_end);
                if !(0.0 < start && start <= end && end < 1.0) {
                    return Err(Error::InvalidParams(format!(
                        "linear schedule needs 0 < beta-start <= beta-end < 1, got {start} and {end}"
                    )));
                }
                (0..steps).map(|i| start + (end - start) * i as f64 / (steps - 1) as f64).collect()
            }
            BetaSchedule::Cosine => {
                let s = config.cosine_offset;
                if s.is_nan() || s <= 0.0 {
                    return Err(Error::InvalidParams(format!("cosine schedule needs cosine-offset > 0, got {s}")));
                }
                let f = |t: f64| ((t / steps as f64 + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2).cos().powi(2);
                (0..steps).map(|i| (1.0 - f(i as f64 + 1.0) / f(i as f64)).min(0.999)).collect()
            }
        };
        let mut alphas_cumprod = Vec::with_capacity(steps);
        let mut product = 1.0;
        for beta in &betas {
            product *= 1.0 - beta;
            alphas_cumprod.push(product);
        }
        Ok(Self { betas, alphas_cumprod })
    }

    /// Number of diffusion steps T.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// Always false: a schedule has at least two steps.
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// beta_t.
    pub fn beta(&self, t: usize) -> f64 {
        self.betas[t]
    }

    /// abar_t, the fraction of signal variance left after step t.
    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.alphas_cumprod[t]
    }

    /// All abar_t, for samplers and tests.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// Checks that `t` is a valid timestep.
    pub fn check_timestep(&self, t: usize) -> Result<()> {
        if t >= self.len() {
            return Err(Error::InvalidParams(format!("timestep {t} is outside the schedule's 0..{}", self.len())));
        }
        Ok(())
    }

    /// Samples q(x_t | x_0) for one timestep shared by the whole batch:
    /// `sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise`.
    pub fn q_sample(&self, x0: &Tensor, t: usize, noise: &Tensor) -> Tensor {
        let alpha_bar = self.alpha_bar(t);
        x0 * alpha_bar.sqrt() + noise * (1.0 - alpha_bar).sqrt()
    }

    /// Samples q(x_t | x_0) with one timestep per batch item (`t`: int64 `[N]`).
    pub fn q_sample_batch(&self, x0: &Tensor, t: &Tensor, noise: &Tensor) -> Tensor {
        let table = Tensor::from_slice(&self.alphas_cumprod).to_kind(Kind::Float).to_device(x0.device());
        let alpha_bar = table.index_select(0, &t.to_device(x0.device())).view([-1, 1, 1, 1]);
        x0 * alpha_bar.sqrt() + noise * (alpha_bar.neg() + 1.0).sqrt()
    }

    /// The epsilon-prediction loss for a batch: noise `x0` to the timesteps `t`
    /// with `noise`, ask `predict_noise(x_t, t)` for the noise, and return the
    /// mean squared error (a scalar tensor with gradients).
    pub fn epsilon_loss(
        &self,
        x0: &Tensor,
        t: &Tensor,
        noise: &Tensor,
        predict_noise: impl FnOnce(&Tensor, &Tensor) -> Tensor,
    ) -> Tensor {
        let x_t = self.q_sample_batch(x0, t, noise);
        let predicted = predict_noise(&x_t, t);
        predicted.mse_loss(noise, tch::Reduction::Mean)
    }
}
