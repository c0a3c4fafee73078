//! Numerical parity with the reference implementations in
//! `tests/reference` (diffusers' UNet2DModel and DDIMScheduler, the CycleGAN
//! authors' ResnetGenerator and NLayerDiscriminator in PyTorch): same
//! weights, same inputs, same noise, every output within 1e-4 in f32.
//!
//! The Rust side writes a case file (inputs, noise, outputs, PatchGAN
//! weights); `python -m cxr_led_reference.parity` recomputes everything and
//! reports the largest difference and where it is. Needs the venv that
//! `.ci/env.sh` installs (torch 2.11.0, diffusers).

use std::path::{Path, PathBuf};
use std::process::Command;

use cxr_led_models::nets::discriminator::{DiscriminatorConfig, PatchDiscriminator};
use cxr_led_models::sampling::noise::NoiseSource;
use cxr_led_models::sampling::sampler::DdimSampler;
use cxr_led_models::{Bundle, LedModel, Precision};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

mod common;

fn python() -> PathBuf {
    match std::env::var_os("VIRTUAL_ENV") {
        Some(venv) => Path::new(&venv).join("bin/python"),
        None => PathBuf::from("python3"),
    }
}

#[test]
fn every_network_and_full_led_inference_match_the_pytorch_reference() {
    let _guard = tch::no_grad_guard();
    let bundle = Bundle::load(common::tiny_bundle_dir()).unwrap();
    let model = LedModel::from_bundle(&bundle, Device::Cpu, Precision::F32).unwrap();
    let params = &bundle.manifest.inference;
    let (t0, steps) = (params.t0, params.steps);
    let side = params.tiles.tile; // one tile: the reference does not tile
    let mut noise = NoiseSource::new(2024);
    let input =
        (common::test_image(side, side) + noise.normal(&[1, 1, side, side], Device::Cpu) * 0.1).clamp(-1.0, 1.0);

    let mut case: Vec<(String, Tensor)> = vec![
        ("input".into(), input.shallow_clone()),
        ("g_ab".into(), model.estimate(&input, &params.tiles).unwrap()),
        ("g_ba".into(), model.degrade(&input, &params.tiles).unwrap()),
        ("t0".into(), Tensor::from_slice(&[t0 as i64])),
        ("steps".into(), Tensor::from_slice(&[steps as i64])),
    ];

    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let discriminator =
        PatchDiscriminator::new(&vs.root(), &DiscriminatorConfig { image_channels: 1, base_channels: 8, layers: 3 });
    case.push(("patchgan".into(), discriminator.forward(&input)));
    for (name, tensor) in vs.variables() {
        case.push((format!("disc.{name}"), tensor));
    }

    let unet_x = noise.normal(&[2, 1, side, side], Device::Cpu);
    let unet_condition = input.repeat([2, 1, 1, 1]);
    let unet_t = Tensor::from_slice(&[17i64, 650]);
    case.push(("unet".into(), model.unet().forward(&unet_x, &unet_condition, &unet_t)));
    case.extend([("unet_x".into(), unet_x), ("unet_condition".into(), unet_condition), ("unet_t".into(), unet_t)]);

    let sampler = DdimSampler::refinement(model.schedule(), t0, steps).unwrap();
    let stride = t0 / steps;
    for (name, t) in [("ddim_step", t0), ("ddim_last", stride)] {
        let x = noise.normal(&[1, 1, side, side], Device::Cpu);
        let eps = noise.normal(&[1, 1, side, side], Device::Cpu);
        case.push((name.into(), sampler.step(&eps, t, &x, None)));
        case.extend([(format!("{name}_x"), x), (format!("{name}_eps"), eps)]);
    }

    // enhance() draws its start noise first from the source: replay it.
    let led_noise = NoiseSource::new(99).normal(&[1, 1, side, side], Device::Cpu);
    let led = model.enhance(&input, params, &mut NoiseSource::new(99)).unwrap();
    case.extend([
        ("led_noise".into(), led_noise),
        ("led_estimate".into(), led.estimate),
        ("led_output".into(), led.output),
    ]);

    let dir = tempfile::tempdir().unwrap();
    let case_path = dir.path().join("case.safetensors");
    let case: Vec<(String, Tensor)> = case.into_iter().map(|(n, t)| (n, t.to_kind(Kind::Float).contiguous())).collect();
    Tensor::write_safetensors(&case, &case_path).unwrap();

    let reference_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference");
    let output = Command::new(python())
        .args(["-m", "cxr_led_reference.parity", "--bundle"])
        .arg(common::tiny_bundle_dir())
        .arg("--case")
        .arg(&case_path)
        .env("PYTHONPATH", &reference_dir)
        .output()
        .expect("cannot run python: run the tests through .ci/test, which sets up the venv");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{report}");
    assert!(output.status.success(), "Rust and the PyTorch reference disagree (or the reference failed):\n{report}");
    assert!(report.contains("8 passed, 0 failed"), "not every check ran:\n{report}");
}
