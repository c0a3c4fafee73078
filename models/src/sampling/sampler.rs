//! Reverse-process samplers on whole tensors: DDIM (Song et al. 2021) and DDPM
//! ancestral sampling (Ho et al. 2020).
//!
//! A sampler only sees a `predict_noise(x_t, t)` closure, so the same code runs
//! a plain UNet call, a tiled one, or an oracle in tests. Both clip the
//! predicted x_0 to [-1, 1] at every step, as LED does, and the last step
//! always lands on the clean image (abar = 1, diffusers' "set alpha to one").
//! For trajectories that end at t = 0 this is exactly diffusers' DDIMScheduler;
//! a refinement that ends higher (t0 = 200 in 10 steps ends at t = 20) also
//! jumps to the clean image in its last step instead of stopping at t = 0's
//! residual noise.

use tch::Tensor;

use crate::sampling::noise::NoiseSource;
use crate::sampling::schedule::NoiseSchedule;
use crate::{Error, Result};

/// The x_0 that `eps` implies for `x_t` at signal fraction `alpha_bar`, clipped
/// to [-1, 1] as LED does.
fn predict_x0(x_t: &Tensor, eps: &Tensor, alpha_bar: f64) -> Tensor {
    ((x_t - eps * (1.0 - alpha_bar).sqrt()) / alpha_bar.sqrt()).clamp(-1.0, 1.0)
}

/// The noise predictor a sampler calls: `(x_t, t) -> eps`.
pub type PredictNoise<'a> = dyn FnMut(&Tensor, usize) -> Result<Tensor> + 'a;

/// DDIM sampling over an evenly strided subsequence of timesteps.
#[derive(Debug, Clone)]
pub struct DdimSampler {
    alphas_cumprod: Vec<f64>,
    timesteps: Vec<usize>,
    stride: usize,
    eta: f64,
}

impl DdimSampler {
    /// Steps `start, start - stride, ...` (`steps` of them); each moves to the
    /// timestep `stride` lower, the last to the clean image. `eta` = 0 is the
    /// deterministic DDIM of LED, 1 matches DDPM's variance.
    pub fn new(schedule: &NoiseSchedule, start: usize, stride: usize, steps: usize, eta: f64) -> Result<Self> {
        schedule.check_timestep(start)?;
        if steps == 0 || stride == 0 {
            return Err(Error::InvalidParams(format!(
                "DDIM needs at least one step and a positive stride, got {steps} steps of stride {stride}"
            )));
        }
        if (steps - 1) * stride > start {
            return Err(Error::InvalidParams(format!(
                "DDIM with {steps} steps of stride {stride} would go below timestep 0 from {start}"
            )));
        }
        if !(0.0..=1.0).contains(&eta) {
            return Err(Error::InvalidParams(format!("DDIM eta must lie in [0, 1], got {eta}")));
        }
        let timesteps = (0..steps).map(|i| start - i * stride).collect();
        Ok(Self { alphas_cumprod: schedule.alphas_cumprod().to_vec(), timesteps, stride, eta })
    }

    /// Sampling from pure noise in `steps` evenly spaced calls, as LED and
    /// diffusers' DDIMScheduler do (T = 1000, 50 steps: t = 980, 960, ..., 0).
    pub fn from_noise(schedule: &NoiseSchedule, steps: usize) -> Result<Self> {
        if steps == 0 || steps > schedule.len() {
            return Err(Error::InvalidParams(format!("DDIM steps must lie in 1..={}, got {steps}", schedule.len())));
        }
        let stride = schedule.len() / steps;
        Self::new(schedule, (steps - 1) * stride, stride, steps, 0.0)
    }

    /// LED refinement: start at `t0` and reach the clean image in `steps`
    /// equal strides (t0 = 200, 10 steps: t = 200, 180, ..., 20, then clean).
    pub fn refinement(schedule: &NoiseSchedule, t0: usize, steps: usize) -> Result<Self> {
        if steps == 0 || t0 == 0 || t0 % steps != 0 {
            return Err(Error::InvalidParams(format!(
                "t0 ({t0}) must be a positive multiple of the number of DDIM steps ({steps}), e.g. t0 = 200 with 10 steps"
            )));
        }
        Self::new(schedule, t0, t0 / steps, steps, 0.0)
    }

    /// The timesteps at which the noise predictor is called, highest first.
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// The timestep the sampler starts from: the input is noised to it.
    pub fn start(&self) -> usize {
        self.timesteps[0]
    }

    /// abar of the timestep the step from `t` lands on: `stride` lower, or
    /// the clean image (1) below 0 and after the last timestep.
    fn alpha_bar_before(&self, t: usize) -> f64 {
        match t.checked_sub(self.stride) {
            Some(previous) if t != self.timesteps[self.timesteps.len() - 1] => self.alphas_cumprod[previous],
            _ => 1.0,
        }
    }

    /// One DDIM update from `x_t` at timestep `t`, given the predicted noise.
    /// `noise` is needed only when eta > 0.
    pub fn step(&self, eps: &Tensor, t: usize, x_t: &Tensor, noise: Option<&Tensor>) -> Tensor {
        let alpha_bar = self.alphas_cumprod[t];
        let alpha_bar_prev = self.alpha_bar_before(t);
        let x0 = predict_x0(x_t, eps, alpha_bar);
        let sigma =
            self.eta * ((1.0 - alpha_bar_prev) / (1.0 - alpha_bar)).sqrt() * (1.0 - alpha_bar / alpha_bar_prev).sqrt();
        let direction = eps * (1.0 - alpha_bar_prev - sigma * sigma).max(0.0).sqrt();
        let mean = x0 * alpha_bar_prev.sqrt() + direction;
        match noise {
            Some(z) if sigma > 0.0 => mean + z * sigma,
            _ => mean,
        }
    }

    /// Runs every step from `x_start` (already noised to [`Self::start`]).
    pub fn sample(
        &self,
        x_start: &Tensor,
        predict_noise: &mut PredictNoise<'_>,
        noise: &mut NoiseSource,
    ) -> Result<Tensor> {
        let mut x = x_start.shallow_clone();
        for &t in &self.timesteps {
            let eps = predict_noise(&x, t)?;
            let z = (self.eta > 0.0).then(|| noise.normal(&x.size(), x.device()));
            x = self.step(&eps, t, &x, z.as_ref());
        }
        Ok(x)
    }
}

/// DDPM ancestral sampling: every timestep from `start` down to 0.
#[derive(Debug, Clone)]
pub struct DdpmSampler {
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    start: usize,
}

impl DdpmSampler {
    /// A sampler that starts at timestep `start` (T - 1 for sampling from noise).
    pub fn new(schedule: &NoiseSchedule, start: usize) -> Result<Self> {
        schedule.check_timestep(start)?;
        Ok(Self {
            betas: (0..schedule.len()).map(|t| schedule.beta(t)).collect(),
            alphas_cumprod: schedule.alphas_cumprod().to_vec(),
            start,
        })
    }

    /// One ancestral step x_t -> x_{t-1}: the posterior mean of q(x_{t-1} | x_t, x_0)
    /// with the clipped x_0 estimate, plus posterior-variance noise when t > 0.
    pub fn step(&self, eps: &Tensor, t: usize, x_t: &Tensor, noise: Option<&Tensor>) -> Tensor {
        let beta = self.betas[t];
        let alpha_bar = self.alphas_cumprod[t];
        let alpha_bar_prev = if t == 0 { 1.0 } else { self.alphas_cumprod[t - 1] };
        let x0 = predict_x0(x_t, eps, alpha_bar);
        let coef_x0 = beta * alpha_bar_prev.sqrt() / (1.0 - alpha_bar);
        let coef_xt = (1.0 - alpha_bar_prev) * (1.0 - beta).sqrt() / (1.0 - alpha_bar);
        let mean = x0 * coef_x0 + x_t * coef_xt;
        let variance = beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar);
        match noise {
            Some(z) if t > 0 => mean + z * variance.sqrt(),
            _ => mean,
        }
    }

    /// Runs every step from `x_start` (already noised to the start timestep).
    pub fn sample(
        &self,
        x_start: &Tensor,
        predict_noise: &mut PredictNoise<'_>,
        noise: &mut NoiseSource,
    ) -> Result<Tensor> {
        let mut x = x_start.shallow_clone();
        for t in (0..=self.start).rev() {
            let eps = predict_noise(&x, t)?;
            let z = (t > 0).then(|| noise.normal(&x.size(), x.device()));
            x = self.step(&eps, t, &x, z.as_ref());
        }
        Ok(x)
    }
}
