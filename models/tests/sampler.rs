//! DDIM and DDPM sampling with an oracle noise predictor recover x_0.

use cxr_led_models::sampling::noise::NoiseSource;
use cxr_led_models::sampling::sampler::{DdimSampler, DdpmSampler};
use cxr_led_models::sampling::schedule::{NoiseSchedule, ScheduleConfig};
use cxr_led_models::Result;
use tch::{Device, Tensor};

mod common;

fn schedule() -> NoiseSchedule {
    NoiseSchedule::new(&ScheduleConfig::default()).unwrap()
}

/// The noise predictor that knows x_0: eps = (x_t - sqrt(abar) x_0) / sqrt(1 - abar).
fn oracle<'a>(schedule: &'a NoiseSchedule, x0: &'a Tensor) -> impl FnMut(&Tensor, usize) -> Result<Tensor> + 'a {
    move |x_t, t| {
        let alpha_bar = schedule.alpha_bar(t);
        Ok((x_t - x0 * alpha_bar.sqrt()) / (1.0 - alpha_bar).sqrt())
    }
}

#[test]
fn ddim_timesteps_follow_led_and_diffusers() {
    let schedule = schedule();
    let full = DdimSampler::from_noise(&schedule, 50).unwrap();
    let expected: Vec<usize> = (0..50).rev().map(|i| i * 20).collect();
    assert_eq!(full.timesteps(), expected.as_slice(), "980, 960, ..., 0");
    let refinement = DdimSampler::refinement(&schedule, 200, 10).unwrap();
    assert_eq!(refinement.timesteps(), &[200, 180, 160, 140, 120, 100, 80, 60, 40, 20]);
    assert_eq!(refinement.start(), 200);
}

#[test]
fn ddim_refuses_impossible_step_plans() {
    let schedule = schedule();
    assert!(DdimSampler::refinement(&schedule, 200, 7).unwrap_err().to_string().contains("multiple"));
    assert!(DdimSampler::refinement(&schedule, 1000, 10).is_err(), "t0 must be below T");
    assert!(DdimSampler::from_noise(&schedule, 0).is_err());
    assert!(DdimSampler::new(&schedule, 100, 30, 5, 0.0).is_err(), "would go below 0");
    assert!(DdimSampler::new(&schedule, 100, 10, 5, 1.5).is_err(), "eta above 1");
}

#[test]
fn ddim_with_an_oracle_recovers_x0_from_noise_and_from_a_refinement_start() {
    let schedule = schedule();
    let x0 = common::test_image(16, 24);
    let mut noise = NoiseSource::new(11);
    for sampler in
        [DdimSampler::from_noise(&schedule, 50).unwrap(), DdimSampler::refinement(&schedule, 200, 10).unwrap()]
    {
        let x_start = schedule.q_sample(&x0, sampler.start(), &noise.normal(&x0.size(), Device::Cpu));
        let recovered = sampler.sample(&x_start, &mut oracle(&schedule, &x0), &mut noise).unwrap();
        let error = common::max_abs_diff(&recovered, &x0);
        assert!(error < 1e-4, "DDIM from t = {} missed x0 by {error}", sampler.start());
    }
}

#[test]
fn stochastic_ddim_with_an_oracle_recovers_x0() {
    let schedule = schedule();
    let x0 = common::test_image(8, 8);
    let mut noise = NoiseSource::new(12);
    let sampler = DdimSampler::new(&schedule, 980, 20, 50, 1.0).unwrap();
    let x_start = schedule.q_sample(&x0, 980, &noise.normal(&x0.size(), Device::Cpu));
    let recovered = sampler.sample(&x_start, &mut oracle(&schedule, &x0), &mut noise).unwrap();
    assert!(common::max_abs_diff(&recovered, &x0) < 1e-4);
}

#[test]
fn ddpm_with_an_oracle_recovers_x0() {
    let schedule = schedule();
    let x0 = common::test_image(8, 12);
    let mut noise = NoiseSource::new(13);
    let sampler = DdpmSampler::new(&schedule, 999).unwrap();
    let x_start = schedule.q_sample(&x0, 999, &noise.normal(&x0.size(), Device::Cpu));
    let recovered = sampler.sample(&x_start, &mut oracle(&schedule, &x0), &mut noise).unwrap();
    let error = common::max_abs_diff(&recovered, &x0);
    assert!(error < 1e-4, "DDPM missed x0 by {error}");
}

#[test]
fn a_wrong_noise_predictor_does_not_recover_x0() {
    // Guards the tests above against a sampler that ignores its predictor.
    let schedule = schedule();
    let x0 = common::test_image(8, 8);
    let mut noise = NoiseSource::new(14);
    let sampler = DdimSampler::refinement(&schedule, 200, 10).unwrap();
    let x_start = schedule.q_sample(&x0, 200, &noise.normal(&x0.size(), Device::Cpu));
    let recovered = sampler.sample(&x_start, &mut |x_t: &Tensor, _| Ok(x_t.zeros_like()), &mut noise).unwrap();
    assert!(common::max_abs_diff(&recovered, &x0) > 0.05);
}
