//! `cxr-led-train score` and `hallucination-bench` end to end on CPU with the
//! tiny bundle and a few small synthetic chest phantoms: the CLI prints the
//! library's number, the benchmark writes its report and figures, and
//! `--write-bundle` calibrates a bundle that still loads with verified hashes.

mod common;

use std::path::Path;

use cxr_led_models::hallucination::{self, hold_threshold};
use cxr_led_models::{Bundle, LedModel, Precision};
use image::{ImageBuffer, Luma};

/// `cxr-led-train` with `args`; its standard output.
fn train(args: &[&str]) -> String {
    common::train(args).0
}

/// A chest-like phantom: bright body, two dark lung fields, rib-like stripes.
fn phantom(i: u32, side: u32) -> ImageBuffer<Luma<u16>, Vec<u16>> {
    ImageBuffer::from_fn(side, side, |x, y| {
        let (u, v) = (x as f32 / side as f32, y as f32 / side as f32);
        let shift = (i % 5) as f32 * 0.01;
        let body = if (u - 0.5).abs() < 0.42 { 0.75 } else { 0.1 };
        let lung = |cx: f32| (-((u - cx - shift).powi(2) * 14.0 + (v - 0.5).powi(2) * 6.0)).exp();
        let ribs = 0.06 * ((v * 40.0 + u * 6.0).sin()).max(0.0);
        let value = body - 0.45 * (lung(0.3) + lung(0.7)) + ribs;
        Luma([(value.clamp(0.0, 1.0) * 65535.0) as u16])
    })
}

fn copy_tiny_bundle(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/bundles/tiny");
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

fn read(path: &Path) -> tch::Tensor {
    let gray = image::open(path).unwrap().into_luma16();
    let (w, h) = gray.dimensions();
    let values: Vec<f32> = gray.into_raw().into_iter().map(|v| v as f32 / 65535.0 * 2.0 - 1.0).collect();
    tch::Tensor::from_slice(&values).view([1, 1, h as i64, w as i64])
}

#[test]
fn score_prints_the_library_number_and_the_bench_calibrates_a_bundle() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..3 {
        phantom(i, 64).save(images.join(format!("phantom-{i}.png"))).unwrap();
    }
    let bundle_dir = work.path().join("bundle");
    copy_tiny_bundle(&bundle_dir);
    let s = |p: &Path| p.to_string_lossy().into_owned();

    // score: an odd-sized pair, with the doubt map written.
    let input = work.path().join("input.png");
    let output = work.path().join("output.png");
    phantom(7, 61).save(&input).unwrap();
    phantom(8, 61).save(&output).unwrap();
    let map = work.path().join("doubt.png");
    let printed: serde_json::Value = serde_json::from_str(&train(&[
        "score",
        "--input",
        &s(&input),
        "--output",
        &s(&output),
        "--bundle",
        &s(&bundle_dir),
        "--doubt-map",
        &s(&map),
    ]))
    .unwrap();
    let bundle = Bundle::load(&bundle_dir).unwrap();
    let model = LedModel::from_bundle(&bundle, tch::Device::Cpu, Precision::F32).unwrap();
    let report = hallucination::score(
        &model,
        &read(&input),
        &read(&output),
        &bundle.manifest.inference.tiles,
        &hallucination::bundle_config(&bundle.manifest),
    )
    .unwrap();
    // serde_json parses floats to within an ulp (no float_roundtrip feature).
    let same = |a: f64, b: f64| (a - b).abs() <= 1e-12;
    assert!(same(printed["score"].as_f64().unwrap(), report.score), "{printed} vs {}", report.score);
    assert_eq!(printed["hold_threshold"].as_f64().unwrap(), hold_threshold(&bundle.manifest));
    assert_eq!(printed["held"].as_bool().unwrap(), hallucination::held(report.score, hold_threshold(&bundle.manifest)));
    for (name, value) in &report.components {
        assert!(same(printed["components"][name].as_f64().unwrap(), *value), "{name}");
    }
    assert_eq!(image::open(&map).unwrap().into_luma8().dimensions(), (61, 61));

    // The benchmark on the phantoms, calibrating the copied bundle. The tiny
    // bundle's stored check configuration (blur tolerance up to 2 px) was
    // calibrated on the simulator before its resampling, light-spread and
    // tone steps, so the phantoms are degraded with those earlier ranges.
    let out = work.path().join("bench");
    let ranges = work.path().join("ranges.toml");
    std::fs::write(
        &ranges,
        "dose-fraction = [0.05, 0.4]\nfull-dose-quanta = [3000.0, 30000.0]\nattenuation-max = [2.5, 4.0]\n\
         blur-sigma = [0.3, 1.5]\nelectronic-noise = [2.0, 8.0]\ncontrast = [0.6, 1.0]\n",
    )
    .unwrap();
    // The bench on the three phantoms at 64 px, into `out`, with `extra` options.
    let bench = |out: &Path, extra: &[&str]| {
        let (ranges, images, bundle, out) = (s(&ranges), s(&images), s(&bundle_dir), s(out));
        let common = [
            "hallucination-bench",
            "--ranges",
            &ranges,
            "--data",
            &images,
            "--split",
            "all",
            "--count",
            "3",
            "--size",
            "64",
            "--bundle",
            &bundle,
            "--faithful",
            "ground-truth,denoised",
            "--out",
            &out,
        ];
        train(&[&common[..], extra].concat())
    };
    let stdout = bench(&out, &["--examples", "2", "--write-bundle"]);
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let figures: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("figures.json")).unwrap()).unwrap();
    assert_eq!(figures["summary"], summary);
    // Images alternate between calibration (0, 2) and evaluation (1).
    assert_eq!(summary["images"], 1);
    assert_eq!(summary["faithful_count"], 2);
    assert_eq!(summary["planted_count"], 5 * 3);
    let scores: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("scores.json")).unwrap()).unwrap();
    assert_eq!(scores.len(), 3 * (3 + 5 * 3), "three faithful and fifteen planted candidates per image");
    let auroc = summary["auroc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&auroc), "{summary}");
    // Every figure carries its 95 % image-bootstrap interval (one evaluating image: a point).
    let interval: Vec<f64> = summary["auroc_95"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(interval[0] <= auroc && auroc <= interval[1], "{summary}");
    assert!(figures["per_kind"]["line"]["medium"]["detection_95"].is_array(), "{figures}");
    assert!(summary["medium_detection_rate"].is_f64(), "{summary}");
    // Large planted changes on smooth phantoms are found.
    for kind in ["nodule", "outline-warp"] {
        assert!(figures["per_kind"][kind]["large"]["auroc"].as_f64().unwrap() > 0.9, "{kind}: {figures}");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| nodule |") && report.contains("example-0-"), "{report}");
    assert!(out.join("example-0-nodule-medium.png").exists());

    let calibrated = Bundle::load(&bundle_dir).unwrap();
    assert_ne!(calibrated.sha256, bundle.sha256);
    let threshold = summary["hold_threshold"].as_f64().unwrap();
    assert!(same(hold_threshold(&calibrated.manifest), threshold));
    let stored = calibrated.manifest.hallucination.as_ref().unwrap();
    assert!(same(stored.benchmark["auroc"].as_float().unwrap(), auroc));
    assert_eq!(stored.benchmark["auroc_95"].as_array().map(Vec::len), Some(2));
    // Forward selection always keeps the best component.
    assert!(stored.config.components().iter().any(|c| c.weight == 1.0), "{figures}");
    for (name, component) in hallucination::COMPONENTS.iter().zip(stored.config.components()) {
        let reported = &figures["config"][name];
        assert_eq!(reported["weight"].as_f64().unwrap(), component.weight, "{name}");
        assert!(same(reported["offset"].as_f64().unwrap(), component.offset), "{name}");
    }
    // --as-calibrated measures the stored calibration on every image instead of recalibrating.
    let kept: serde_json::Value =
        serde_json::from_str(&bench(&work.path().join("kept"), &["--examples", "0", "--as-calibrated"])).unwrap();
    assert!(same(kept["hold_threshold"].as_f64().unwrap(), threshold), "{kept}");
    assert_eq!((kept["images"].as_u64(), kept["planted_count"].as_u64()), (Some(3), Some(5 * 3 * 3)), "{kept}");
    assert_eq!(Bundle::load(&bundle_dir).unwrap().sha256, calibrated.sha256, "--as-calibrated leaves the bundle alone");
    // The CLI now reads the calibration from the bundle.
    let printed: serde_json::Value = serde_json::from_str(&train(&[
        "score",
        "--input",
        &s(&input),
        "--output",
        &s(&output),
        "--bundle",
        &s(&bundle_dir),
    ]))
    .unwrap();
    assert!(same(printed["hold_threshold"].as_f64().unwrap(), threshold));
}
