//! The paired first stage end to end on CPU with the tiny-paired preset: bad
//! files in the training folder named and skipped or converted, training
//! with validation and checkpoints, a resume, wrong options refused with
//! their reason, export with the base bundle's G_BA and UNet, and the
//! exported bundle enhancing with and without refinement; and the diffusion
//! refinement trained the same way, on fresh simulator patches.

mod common;

use std::path::Path;

use cxr_led_models::sampling::noise::NoiseSource;
use cxr_led_models::{Bundle, LedModel, Precision};
use image::{ImageBuffer, Luma, Rgb};

use common::{paired_args, train, train_fails};

/// Smooth synthetic chest-like images (two dark lungs in a bright body), plus
/// one colour, one 16-bit, one tiny, one truncated and one non-image `.png`.
fn write_images(dir: &Path, count: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let value = |x: u32, y: u32, i: usize| {
        let (u, v) = (x as f32 / 48.0, y as f32 / 48.0);
        let lung = |cx: f32| (-((u - cx - (i % 5) as f32 * 0.02).powi(2) + (v - 0.5).powi(2)) * 20.0).exp();
        (0.8 - 0.5 * (lung(0.3) + lung(0.7)) + 0.05 * (u * 30.0 + i as f32).sin()).clamp(0.0, 1.0)
    };
    for i in 0..count {
        let image = ImageBuffer::from_fn(48, 48, |x, y| Luma([(value(x, y, i) * 255.0) as u8]));
        image.save(dir.join(format!("phantom-{i:03}.png"))).unwrap();
    }
    let colour = ImageBuffer::from_fn(48, 48, |x, y| {
        let v = (value(x, y, 1) * 255.0) as u8;
        Rgb([v, v, v / 2])
    });
    colour.save(dir.join("colour.png")).unwrap();
    let deep = ImageBuffer::from_fn(48, 48, |x, y| Luma([(value(x, y, 2) * 65535.0) as u16]));
    deep.save(dir.join("sixteen-bit.png")).unwrap();
    ImageBuffer::from_fn(8, 8, |_, _| Luma([128u8])).save(dir.join("tiny.png")).unwrap();
    let whole = std::fs::read(dir.join("phantom-000.png")).unwrap();
    std::fs::write(dir.join("truncated.png"), &whole[..whole.len() / 2]).unwrap();
    std::fs::write(dir.join("not-an-image.png"), b"hello").unwrap();
}

#[test]
fn paired_training_resumes_skips_bad_files_and_exports_a_working_bundle() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    write_images(&images, 60);
    let path = |name: &str| work.path().join(name).to_string_lossy().into_owned();
    let images = images.to_string_lossy().into_owned();
    let out = path("paired");
    let args = paired_args(["--high-quality", &images], &out, "4");
    let (stdout, stderr) = train(&[&args[..], &["--steps", "4"]].concat());
    assert!(stdout.contains("\"step\":4"), "{stdout}");
    assert!(stderr.contains("paired [") && stderr.contains("patches/s"), "a progress line with the rate: {stderr}");
    let (stdout, stderr) = train(&[&args[..], &["--steps", "6"]].concat());
    assert!(stderr.contains("resuming at step 4"), "{stderr}");
    assert!(stdout.contains("\"step\":6"), "{stdout}");
    let csv = std::fs::read_to_string(work.path().join("paired/metrics.csv")).unwrap();
    let steps: Vec<&str> = csv.lines().map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(steps, ["step", "2", "4", "6"], "one row per validation across the resume: {csv}");
    let header = "step,learning_rate,train_loss,validation_psnr_db,validation_ssim,validation_clean_psnr_db";
    assert!(csv.starts_with(header), "{csv}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.path().join("paired/state.json")).unwrap()).unwrap();
    let clean = state["clean_history"].as_array().unwrap();
    assert_eq!(clean.len(), 3, "the undegraded images are scored at each validation: {state}");
    assert!(clean.iter().all(|c| c[1].as_f64().unwrap().is_finite()), "{state}");

    // Bad files are named by path with their reason and counted; colour and 16-bit ones are read.
    let skipped: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.path().join("paired/skipped.json")).unwrap()).unwrap();
    let mut named: Vec<String> = skipped
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Path::new(s["path"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    named.sort();
    named.dedup();
    assert!(
        named.iter().all(|n| ["not-an-image.png", "tiny.png", "truncated.png"].contains(&n.as_str())),
        "only the unreadable and tiny files are skipped: {named:?}"
    );
    for name in &named {
        assert!(stderr.contains(name.as_str()), "{name} is not named on stderr: {stderr}");
    }
    assert!(stdout.contains(&format!("\"skipped\":{}", skipped.as_array().unwrap().len())), "{stdout}");

    // Wrong options: said plainly.
    let error = train_fails(&[&args[..], &["--steps", "8", "--ranges", "held-out"]].concat());
    assert!(error.contains("other degradation ranges"), "{error}");
    let fresh = path("fresh");
    let error = train_fails(&["paired", "--preset", "tiny", "--high-quality", &images, "--out", &fresh]);
    assert!(error.contains("has no [enhancer]"), "{error}");
    let bad_patch = ["paired", "--preset", "tiny-paired", "--high-quality", &images, "--out", &fresh, "--patch", "18"];
    let error = train_fails(&bad_patch);
    assert!(error.contains("multiple of 4"), "{error}");
    let error = train_fails(&[&args[..], &["--steps", "8", "--clean-share", "1"]].concat());
    assert!(error.contains("--clean-share 1 must be at least 0 and below 1"), "{error}");

    let error = train_fails(&[&args[..], &["--steps", "8", "--spectrum-weight=-1"]].concat());
    assert!(error.contains("--spectrum-weight -1 must be a finite number, 0 or more"), "{error}");

    // A share of undegraded sources and the texture term: trained with, recorded in the checkpoint's state.
    let clean_run = path("clean-share");
    let mut clean_args = args.to_vec();
    clean_args[6] = clean_run.as_str();
    let extra = ["--steps", "2", "--clean-share", "0.5", "--spectrum-weight", "2"];
    let (stdout, _) = train(&[&clean_args[..], &extra].concat());
    assert!(stdout.contains("\"step\":2"), "{stdout}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&clean_run).join("state.json")).unwrap()).unwrap();
    assert_eq!(state["clean_share"].as_f64(), Some(0.5), "{state}");
    assert_eq!(state["spectrum_weight"].as_f64(), Some(2.0), "{state}");

    // Export: the enhancer from the checkpoint, G_BA and the UNet from the tiny bundle.
    let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/bundles/tiny");
    let bundle_dir = path("bundle");
    let export = ["export", "--preset", "tiny-paired", "--enhancer", &out, "--base-bundle", tiny, "--out", &bundle_dir];
    train(&export);
    let bundle = Bundle::load(&bundle_dir).unwrap();
    let method = bundle.manifest.training["method"].as_str().unwrap();
    assert!(
        method.contains("paired") && method.contains("g_ba, unet carried over from bundle cxr-led-tiny"),
        "{method}"
    );
    assert!(bundle.manifest.training.contains_key("paired-state"));
    let ranges = bundle.manifest.training["degradation-ranges"].as_table().unwrap();
    assert!(ranges.contains_key("gamma") && ranges.contains_key("bits"), "{ranges:?}");
    assert!(bundle.manifest.files.contains_key("enhancer") && !bundle.manifest.files.contains_key("g_ab"));
    let base = Bundle::load(tiny).unwrap();
    assert_eq!(bundle.manifest.files["unet"].sha256, base.manifest.files["unet"].sha256);

    let model = LedModel::from_bundle(&bundle, tch::Device::Cpu, Precision::F32).unwrap();
    let input = tch::Tensor::rand([1, 1, 40, 36], (tch::Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0;
    let refined = model.enhance(&input, &bundle.manifest.inference, &mut NoiseSource::new(0)).unwrap();
    assert_eq!(refined.output.size(), vec![1, 1, 40, 36]);
    // t0 = 0: the first stage alone, no noise drawn, the estimate is the output.
    let first_stage = cxr_led_models::EnhanceParams { t0: 0, ..bundle.manifest.inference.clone() };
    let alone = model.enhance(&input, &first_stage, &mut NoiseSource::new(0)).unwrap();
    assert!(alone.output.equal(&alone.estimate.clamp(-1.0, 1.0)));
    assert!(alone.estimate.equal(&refined.estimate), "the first stage does not depend on the refinement");

    // Fine-tuning: a fresh run starts from the bundle's enhancer (or a checkpoint's best weights).
    // With a vanishing learning rate its first validation is the source's best validation.
    let best = |dir: &str| -> f64 {
        let state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(Path::new(dir).join("state.json")).unwrap()).unwrap();
        state["best_validation_psnr"][0].as_f64().unwrap()
    };
    for (init, name) in [(&bundle_dir, "tuned-from-bundle"), (&out, "tuned-from-checkpoint")] {
        let tuned = path(name);
        let mut tune = args.to_vec();
        tune[6] = tuned.as_str();
        let (stdout, stderr) =
            train(&[&tune[..], &["--steps", "2", "--learning-rate", "1e-12", "--init", init]].concat());
        assert!(stderr.contains("starting from the weights in"), "{stderr}");
        assert!(stdout.contains("\"step\":2"), "{stdout}");
        assert!((best(&tuned) - best(&out)).abs() < 1e-3, "{} against {}", best(&tuned), best(&out));
        // The checkpoint and the exported bundle's method say where the weights started.
        let tuned_bundle = path(&format!("{name}-bundle"));
        train(&[
            "export",
            "--preset",
            "tiny-paired",
            "--enhancer",
            &tuned,
            "--base-bundle",
            tiny,
            "--out",
            &tuned_bundle,
        ]);
        let method = Bundle::load(&tuned_bundle).unwrap().manifest.training["method"].as_str().unwrap().to_owned();
        let expected = if init == &bundle_dir {
            "fine-tuned from the enhancer of bundle cxr-led-tiny"
        } else {
            "fine-tuned from enhancer-best of the paired checkpoint"
        };
        assert!(method.contains(expected), "{method}");
    }
    // Growth: a deeper preset starts from the bundle's smaller enhancer and,
    // before it learns anything, computes what that one did (the 48-px
    // validation images pad alike in both).
    let grown = path("grown-from-bundle");
    let mut grow = args.to_vec();
    (grow[2], grow[6]) = ("tiny-paired-deep", grown.as_str());
    let (_, stderr) =
        train(&[&grow[..], &["--steps", "2", "--learning-rate", "1e-12", "--init", &bundle_dir]].concat());
    assert!(stderr.contains("starting from the weights in"), "{stderr}");
    assert!((best(&grown) - best(&out)).abs() < 1e-3, "{} against {}", best(&grown), best(&out));
    let state = std::fs::read_to_string(Path::new(&grown).join("state.json")).unwrap();
    assert!(state.contains("grown from an enhancer of widths [4, 8]"), "{state}");
    // A checkpoint is not grown: its architecture must be the preset's.
    let mut grow = args.to_vec();
    let refused = path("grown-from-checkpoint");
    (grow[2], grow[6]) = ("tiny-paired-deep", refused.as_str());
    let error = train_fails(&[&grow[..], &["--steps", "2", "--init", &out]].concat());
    assert!(error.contains("of the same preset"), "{error}");
    let refused = path("tuned-from-tiny");
    let mut tune = args.to_vec();
    tune[6] = refused.as_str();
    let error = train_fails(&[&tune[..], &["--steps", "2", "--init", tiny]].concat());
    assert!(error.contains("has no [enhancer] to start from"), "{error}");

    // Without a base bundle the missing networks are named.
    let error = train_fails(&["export", "--preset", "tiny-paired", "--enhancer", &out, "--out", &path("nothing")]);
    assert!(error.contains("no source for the bundle's g_ba"), "{error}");
}

#[test]
fn the_refinement_trains_on_fresh_simulator_patches_resumes_and_exports() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    write_images(&images, 40);
    let path = |name: &str| work.path().join(name).to_string_lossy().into_owned();
    let images = images.to_string_lossy().into_owned();
    let out = path("refinement");
    let args = [
        "diffusion",
        "--preset",
        "tiny-paired",
        "--device",
        "cpu",
        "--high-quality",
        &images,
        "--out",
        &out,
        "--patch",
        "32",
        "--batch",
        "4",
        "--sources",
        "2",
        "--validate-every",
        "2",
        "--validation-images",
        "4",
        "--max-timestep",
        "250",
        "--learning-rate",
        "1e-3",
    ];
    let (stdout, stderr) = train(&[&args[..], &["--steps", "2"]].concat());
    assert!(stdout.contains("\"step\":2"), "{stdout}");
    assert!(stderr.contains("at their own size"), "{stderr}");
    let (stdout, stderr) = train(&[&args[..], &["--steps", "4"]].concat());
    assert!(stderr.contains("resuming at step 2"), "{stderr}");
    assert!(stdout.contains("\"step\":4"), "{stdout}");
    let csv = std::fs::read_to_string(Path::new(&out).join("metrics.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.iter().map(|r| r[0]).collect::<Vec<_>>(), ["2", "4"], "{csv}");
    assert!(rows.iter().all(|r| r[3].parse::<f64>().unwrap().is_finite()), "a finite validation loss: {csv}");

    // The unreadable and tiny files are named and counted; other ranges or patch sizes are refused.
    // (Which bad files are read depends on the name-hashed split they fall in.)
    let skipped: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&out).join("skipped.json")).unwrap()).unwrap();
    let skipped = skipped.as_array().unwrap();
    assert!(!skipped.is_empty(), "the tiny file at least is skipped");
    for entry in skipped {
        let name = Path::new(entry["path"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned();
        assert!(["not-an-image.png", "tiny.png", "truncated.png"].contains(&name.as_str()), "{name}");
        assert!(stderr.contains(&name), "{name} is not named on stderr: {stderr}");
    }
    let error = train_fails(&[&args[..], &["--steps", "6", "--ranges", "held-out"]].concat());
    assert!(error.contains("other degradation ranges"), "{error}");
    let mut wrong = args.to_vec();
    let fresh = path("fresh");
    (wrong[8], wrong[10]) = (fresh.as_str(), "31");
    assert!(train_fails(&wrong).contains("--patch 31 must be a positive multiple of 2"));
    wrong[10] = "64";
    let error = train_fails(&wrong);
    assert!(error.contains("of at least 64 px") && error.contains("pass a smaller --patch"), "{error}");
    let error = train_fails(&["diffusion", "--preset", "tiny", "--out", &fresh]);
    assert!(error.contains("--pairs"), "neither pairs nor images: {error}");

    // Export: the refinement from the checkpoint, its ranges recorded; the bundle refines.
    let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/bundles/tiny");
    let bundle_dir = path("bundle");
    train(&["export", "--preset", "tiny", "--diffusion", &out, "--base-bundle", tiny, "--out", &bundle_dir]);
    let bundle = Bundle::load(&bundle_dir).unwrap();
    let method = bundle.manifest.training["method"].as_str().unwrap();
    assert!(method.contains("diffusion (simulator patches at the images' own scale)"), "{method}");
    let ranges = bundle.manifest.training["diffusion-degradation-ranges"].as_table().unwrap();
    assert!(ranges.contains_key("gamma") && ranges.contains_key("bits"), "{ranges:?}");
    assert_eq!(bundle.manifest.training["diffusion-max-timestep"].as_integer(), Some(250));
    let base = Bundle::load(tiny).unwrap();
    assert_ne!(bundle.manifest.files["unet"].sha256, base.manifest.files["unet"].sha256);
    let model = LedModel::from_bundle(&bundle, tch::Device::Cpu, Precision::F32).unwrap();
    let input = tch::Tensor::rand([1, 1, 40, 36], (tch::Kind::Float, tch::Device::Cpu)) * 2.0 - 1.0;
    let refined = model.enhance(&input, &bundle.manifest.inference, &mut NoiseSource::new(0)).unwrap();
    assert_eq!(refined.output.size(), vec![1, 1, 40, 36]);
    assert!(bundle.manifest.inference.t0 > 0 && !refined.output.equal(&refined.estimate.clamp(-1.0, 1.0)));

    // A new refinement beside a carried first stage: the first stage keeps its training record.
    let first = path("first-stage");
    train(&[&paired_args(["--high-quality", &images], &first, "4")[..], &["--steps", "2"]].concat());
    let with_first = path("with-first-stage");
    train(&["export", "--preset", "tiny-paired", "--enhancer", &first, "--base-bundle", tiny, "--out", &with_first]);
    let refined_dir = path("refined-first-stage");
    let export = ["export", "--preset", "tiny-paired", "--diffusion", &out, "--base-bundle", &with_first];
    train(&[&export[..], &["--out", &refined_dir]].concat());
    let (base, refined) = (Bundle::load(&with_first).unwrap(), Bundle::load(&refined_dir).unwrap());
    for key in ["paired-state", "degradation-ranges"] {
        assert_eq!(refined.manifest.training.get(key), base.manifest.training.get(key), "{key}");
    }
    assert!(refined.manifest.training.contains_key("diffusion-degradation-ranges"));
    let method = refined.manifest.training["method"].as_str().unwrap();
    assert!(method.contains("[the base's method: cxr-led-train paired, export"), "{method}");
    assert_eq!(refined.manifest.files["enhancer"], base.manifest.files["enhancer"]);
}
