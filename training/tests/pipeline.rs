//! The training pipeline end to end on CPU with the tiny preset: CycleGAN
//! (checkpoint, resume), pairs from G_BA and from the simulator, diffusion
//! (validation, checkpoint), the paired first stage on G_BA's pairs (resume,
//! refusals), export, and the exported bundles enhancing an image.

mod common;

use std::path::Path;

use cxr_led_models::sampling::noise::NoiseSource;
use cxr_led_models::{Bundle, LedModel, Precision};
use image::{ImageBuffer, Luma};

use common::{paired_args, train, train_fails};

/// Smooth synthetic "chest" images: two dark lung fields in a bright body, varied per image.
fn write_phantoms(dir: &Path, count: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..count {
        let shift = (i % 7) as f32 * 0.02;
        let image = ImageBuffer::from_fn(48, 48, |x, y| {
            let (u, v) = (x as f32 / 48.0, y as f32 / 48.0);
            let lung = |cx: f32| (-((u - cx - shift).powi(2) + (v - 0.5).powi(2)) * 20.0).exp();
            let value = 0.8 - 0.5 * (lung(0.3) + lung(0.7)) + 0.05 * ((u * 30.0 + i as f32).sin());
            Luma([(value.clamp(0.0, 1.0) * 255.0) as u8])
        });
        image.save(dir.join(format!("phantom-{i:03}.png"))).unwrap();
    }
}

#[test]
fn cyclegan_pairs_diffusion_and_export_make_a_working_bundle() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    write_phantoms(&images, 40);
    let path = |name: &str| work.path().join(name).to_string_lossy().into_owned();
    let images = images.to_string_lossy().into_owned();
    let common = ["--preset", "tiny", "--size", "32", "--device", "cpu"];

    let cyclegan = path("cyclegan");
    let mut args = vec!["cyclegan", "--high-quality", &images, "--out", &cyclegan, "--batch", "2"];
    args.extend(common);
    train(&[args.as_slice(), &["--steps", "4", "--checkpoint-every", "2"]].concat());
    let (stdout, stderr) = train(&[args.as_slice(), &["--steps", "6", "--checkpoint-every", "2"]].concat());
    assert!(stderr.contains("resuming at step 4"), "{stderr}");
    assert!(stdout.contains("\"step\":6"), "{stdout}");
    assert!(stderr.contains("cyclegan [") && stderr.contains("steps/s ETA"), "a progress line: {stderr}");
    // One metrics row per checkpoint, across the resume: steps 2, 4 and 6.
    let csv = std::fs::read_to_string(work.path().join("cyclegan/metrics.csv")).unwrap();
    let steps: Vec<&str> = csv.lines().map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(steps, ["step", "2", "4", "6"], "{csv}");

    let pairs = path("pairs.safetensors");
    train(
        &[&["pairs", "--high-quality", &images, "--cyclegan", &cyclegan, "--out", &pairs], common.as_slice()].concat(),
    );
    let simulated = path("simulated.safetensors");
    train(
        &[&["pairs", "--high-quality", &images, "--source", "simulator", "--out", &simulated], common.as_slice()]
            .concat(),
    );
    let tensors: std::collections::HashMap<_, _> = tch::Tensor::read_safetensors(&pairs).unwrap().into_iter().collect();
    assert_eq!(tensors["train_hq"].size(), tensors["train_lq"].size());
    assert!(tensors["val_hq"].size()[0] > 0, "the name-hashed split left no validation images");

    let diffusion = path("diffusion");
    let (stdout, _) = train(
        &[
            &[
                "diffusion",
                "--pairs",
                &pairs,
                "--out",
                &diffusion,
                "--steps",
                "4",
                "--batch",
                "4",
                "--validate-every",
                "2",
            ],
            common.as_slice(),
        ]
        .concat(),
    );
    assert!(stdout.contains("\"step\":4") && stdout.contains("best_validation"), "{stdout}");
    let csv = std::fs::read_to_string(work.path().join("diffusion/metrics.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "a header and rows for steps 2 and 4: {csv}");
    assert!(csv.starts_with("step,learning_rate,train_loss,validation_loss_ema"), "{csv}");

    // The paired first stage on G_BA's pairs (a site's way when no simulator fits its detector).
    let first = path("paired-on-gba");
    let paired = paired_args(["--pairs", &pairs], &first, "2");
    let (_, stderr) = train(&[&paired[..], &["--steps", "2"]].concat());
    assert!(stderr.contains("training and 2 validation pairs from"), "{stderr}");
    let (stdout, stderr) = train(&[&paired[..], &["--steps", "4"]].concat());
    assert!(stderr.contains("resuming at step 2") && stdout.contains("\"step\":4"), "{stderr}{stdout}");
    let mut other = paired.to_vec();
    other[4] = simulated.as_str();
    let error = train_fails(&[&other[..], &["--steps", "6"]].concat());
    assert!(error.contains("other pairs") && error.contains("--pairs"), "{error}");
    let error = train_fails(&["paired", "--preset", "tiny-paired", "--high-quality", &images, "--out", &first]);
    assert!(error.contains("trained on fixed pairs (--pairs)"), "{error}");
    let error = train_fails(&[&paired[..], &["--ranges", "held-out"]].concat());
    assert!(error.contains("--ranges") && error.contains("cannot be used with"), "{error}");
    let error = train_fails(&[&paired[..3], &["--pairs", &images, "--out", &path("not-pairs")]].concat());
    assert!(error.contains("a file written by `cxr-led-train pairs`"), "{error}");
    // A file that is not pairs leaves nothing behind: the retry with the right one trains.
    let not_pairs = path("not-pairs.safetensors");
    tch::Tensor::write_safetensors(&[("x", tch::Tensor::zeros([2], tch::kind::FLOAT_CPU))], &not_pairs).unwrap();
    let retry = path("retry");
    let error = train_fails(&paired_args(["--pairs", &not_pairs], &retry, "2"));
    assert!(error.contains("has no train_lq"), "{error}");
    train(&[&paired_args(["--pairs", &pairs], &retry, "2")[..], &["--steps", "2"]].concat());
    let first_bundle = path("first-bundle");
    let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/bundles/tiny");
    train(&["export", "--preset", "tiny-paired", "--enhancer", &first, "--base-bundle", tiny, "--out", &first_bundle]);
    let bundle = Bundle::load(&first_bundle).unwrap();
    let source = bundle.manifest.training["first-stage-pairs"].as_table().unwrap();
    assert_eq!(source["sha256"].as_str().unwrap().len(), 64, "{source:?}");
    assert!(!bundle.manifest.training.contains_key("degradation-ranges"), "no simulator was used");
    let model = LedModel::from_bundle(&bundle, tch::Device::Cpu, Precision::F32).unwrap();
    let input = tch::Tensor::rand([1, 1, 40, 36], (tch::Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0;
    let first_stage = cxr_led_models::EnhanceParams { t0: 0, ..bundle.manifest.inference.clone() };
    let result = model.enhance(&input, &first_stage, &mut NoiseSource::new(0)).unwrap();
    assert_eq!(result.output.size(), vec![1, 1, 40, 36]);

    let bundle_dir = path("bundle");
    train(&["export", "--preset", "tiny", "--cyclegan", &cyclegan, "--diffusion", &diffusion, "--out", &bundle_dir]);
    let bundle = Bundle::load(&bundle_dir).unwrap();
    assert!(bundle.manifest.training.contains_key("diffusion-state"));
    let model = LedModel::from_bundle(&bundle, tch::Device::Cpu, Precision::F32).unwrap();
    let input = tch::Tensor::zeros([1, 1, 40, 36], (tch::Kind::Float, tch::Device::Cpu));
    let result = model.enhance(&input, &bundle.manifest.inference, &mut NoiseSource::new(0)).unwrap();
    assert_eq!(result.output.size(), vec![1, 1, 40, 36]);
}
