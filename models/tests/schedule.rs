//! The noise schedule against its closed forms, and q(x_t | x_0) on many draws.

use cxr_led_models::sampling::noise::NoiseSource;
use cxr_led_models::sampling::schedule::{BetaSchedule, NoiseSchedule, ScheduleConfig};
use tch::{Device, Kind, Tensor};

#[test]
fn linear_schedule_matches_ddpm() {
    let schedule = NoiseSchedule::new(&ScheduleConfig::default()).unwrap();
    assert_eq!(schedule.len(), 1000);
    assert!((schedule.beta(0) - 1e-4).abs() < 1e-12);
    assert!((schedule.beta(999) - 0.02).abs() < 1e-12);
    assert!((schedule.beta(500) - (1e-4 + (0.02 - 1e-4) * 500.0 / 999.0)).abs() < 1e-12);
    let product: f64 = (0..=199).map(|t| 1.0 - schedule.beta(t)).product();
    assert!((schedule.alpha_bar(199) - product).abs() < 1e-12);
    // The figures ARCHITECTURE.md quotes: sqrt(abar) ~ 0.81 at t = 200, ~ 0.04 at 800.
    assert!((schedule.alpha_bar(200).sqrt() - 0.80).abs() < 0.02, "{}", schedule.alpha_bar(200).sqrt());
    assert!((schedule.alpha_bar(800).sqrt() - 0.04).abs() < 0.01, "{}", schedule.alpha_bar(800).sqrt());
}

#[test]
fn alpha_bar_falls_strictly_from_one_towards_zero_for_both_schedules() {
    for kind in [BetaSchedule::Linear, BetaSchedule::Cosine] {
        let schedule = NoiseSchedule::new(&ScheduleConfig { kind, ..Default::default() }).unwrap();
        let alphas = schedule.alphas_cumprod();
        assert!(alphas[0] < 1.0 && alphas[0] > 0.99, "{kind:?} starts at {}", alphas[0]);
        assert!(alphas.windows(2).all(|w| w[1] < w[0]), "{kind:?} is not strictly decreasing");
        assert!(alphas[999] > 0.0 && alphas[999] < 1e-3, "{kind:?} ends at {}", alphas[999]);
    }
}

#[test]
fn cosine_schedule_follows_its_closed_form() {
    let schedule = NoiseSchedule::new(&ScheduleConfig { kind: BetaSchedule::Cosine, ..Default::default() }).unwrap();
    let f = |t: f64| ((t / 1000.0 + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2).cos().powi(2);
    for t in [0usize, 100, 500, 900] {
        let expected = f(t as f64 + 1.0) / f(0.0);
        assert!((schedule.alpha_bar(t) - expected).abs() < 1e-9, "t = {t}");
    }
}

#[test]
fn impossible_schedules_are_refused_with_the_reason() {
    let bad = ScheduleConfig { beta_start: 0.1, beta_end: 0.01, ..Default::default() };
    assert!(NoiseSchedule::new(&bad).unwrap_err().to_string().contains("beta-start <= beta-end"));
    let short = ScheduleConfig { timesteps: 1, ..Default::default() };
    assert!(NoiseSchedule::new(&short).unwrap_err().to_string().contains("at least 2"));
}

#[test]
fn q_sample_has_the_mean_and_variance_of_the_forward_process() {
    let schedule = NoiseSchedule::new(&ScheduleConfig::default()).unwrap();
    let draws = 200_000;
    let x0 = Tensor::full([draws], 0.5, (Kind::Float, Device::Cpu));
    let mut noise = NoiseSource::new(7);
    for t in [0usize, 199, 599, 999] {
        let samples = schedule.q_sample(&x0, t, &noise.normal(&[draws], Device::Cpu));
        let alpha_bar = schedule.alpha_bar(t);
        let (mean, variance) = (samples.mean(Kind::Double).double_value(&[]), samples.var(true).double_value(&[]));
        let expected_var = 1.0 - alpha_bar;
        // 6 standard errors: a correct sampler fails this about once in 10^8 runs.
        let mean_tolerance = 6.0 * (expected_var / draws as f64).sqrt();
        let var_tolerance = 6.0 * expected_var * (2.0 / draws as f64).sqrt();
        assert!((mean - 0.5 * alpha_bar.sqrt()).abs() < mean_tolerance, "t = {t}: mean {mean}");
        assert!((variance - expected_var).abs() < var_tolerance, "t = {t}: variance {variance}");
    }
}

#[test]
fn batched_q_sample_uses_each_items_own_timestep() {
    let schedule = NoiseSchedule::new(&ScheduleConfig::default()).unwrap();
    let x0 = Tensor::ones([3, 1, 2, 2], (Kind::Float, Device::Cpu));
    let noise = Tensor::zeros([3, 1, 2, 2], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[0i64, 400, 999]);
    let x_t = schedule.q_sample_batch(&x0, &t, &noise);
    for (i, step) in [0usize, 400, 999].into_iter().enumerate() {
        let value = x_t.double_value(&[i as i64, 0, 1, 1]);
        assert!((value - schedule.alpha_bar(step).sqrt()).abs() < 1e-6, "item {i}");
    }
}

#[test]
fn epsilon_loss_is_zero_for_the_true_noise_and_positive_otherwise() {
    let schedule = NoiseSchedule::new(&ScheduleConfig::default()).unwrap();
    let mut source = NoiseSource::new(3);
    let x0 = source.normal(&[4, 1, 8, 8], Device::Cpu).clamp(-1.0, 1.0);
    let noise = source.normal(&[4, 1, 8, 8], Device::Cpu);
    let t = Tensor::from_slice(&[10i64, 200, 500, 990]);
    let oracle = schedule.epsilon_loss(&x0, &t, &noise, |x_t, t| {
        let alpha_bar =
            Tensor::from_slice(schedule.alphas_cumprod()).to_kind(Kind::Float).index_select(0, t).view([-1, 1, 1, 1]);
        (x_t - &x0 * alpha_bar.sqrt()) / (alpha_bar.neg() + 1.0).sqrt()
    });
    assert!(oracle.double_value(&[]) < 1e-8, "oracle loss {}", oracle.double_value(&[]));
    let zero = schedule.epsilon_loss(&x0, &t, &noise, |x_t, _| x_t.zeros_like());
    // E[eps^2] = 1 for the predictor that always says 0.
    assert!((zero.double_value(&[]) - 1.0).abs() < 0.3, "zero-predictor loss {}", zero.double_value(&[]));
}
