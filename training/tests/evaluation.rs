//! The evaluation end to end on CPU: a tiny classifier trained on two classes
//! of synthetic images (checkpoint, resume), `evaluate` with the tiny bundle
//! writing report.md, report.json and the figures, and `export --report`
//! putting the figures into a bundle's `[metrics]`.

mod common;

use std::path::Path;

use image::{ImageBuffer, Luma};

use common::train;

/// Two classes a classifier can tell apart: one or two dark "lung fields".
fn write_class(dir: &Path, prefix: &str, lungs: &[f32], count: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..count {
        let shift = (i % 5) as f32 * 0.02;
        let image = ImageBuffer::from_fn(48, 48, |x, y| {
            let (u, v) = (x as f32 / 48.0, y as f32 / 48.0);
            let dark: f32 = lungs.iter().map(|cx| (-((u - cx - shift).powi(2) + (v - 0.5).powi(2)) * 25.0).exp()).sum();
            let value = 0.8 - 0.5 * dark + 0.05 * (v * 20.0 + i as f32).sin();
            Luma([(value.clamp(0.0, 1.0) * 255.0) as u8])
        });
        image.save(dir.join(format!("{prefix}-{i:03}.png"))).unwrap();
    }
}

fn number(value: &serde_json::Value) -> f64 {
    value.as_f64().unwrap_or_else(|| panic!("expected a number, got {value}"))
}

#[test]
fn classifier_evaluate_and_export_write_a_complete_report() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    write_class(&data.join("one"), "one", &[0.5], 30);
    write_class(&data.join("two"), "two", &[0.3, 0.7], 30);
    // Bad files among the good (truncated, not an image, tiny): named, skipped and counted, by
    // the classifier's training and by the evaluation. Enough of them that the test split has some.
    let whole = std::fs::read(data.join("one/one-000.png")).unwrap();
    for i in 0..30 {
        std::fs::write(data.join(format!("one/broken-{i:02}.png")), &whole[..whole.len() / 2]).unwrap();
        std::fs::write(data.join(format!("two/text-{i:02}.png")), b"not a PNG").unwrap();
        ImageBuffer::from_fn(8, 8, |_, _| Luma([128u8])).save(data.join(format!("two/tiny-{i:02}.png"))).unwrap();
    }
    let native_folder = work.path().join("native");
    std::fs::create_dir_all(&native_folder).unwrap();
    for name in ["two-000.png", "two-001.png"] {
        std::fs::copy(data.join("two").join(name), native_folder.join(name)).unwrap();
    }
    std::fs::write(native_folder.join("truncated.png"), &whole[..whole.len() / 2]).unwrap();
    let path = |name: &str| work.path().join(name).to_string_lossy().into_owned();
    let (data, classifier) = (data.to_string_lossy().into_owned(), path("classifier"));
    let tiny =
        ["--width", "2", "--size", "32", "--load-size", "48", "--batch", "8", "--device", "cpu", "--log-every", "2"];
    let args = [&["classifier", "--data", &data, "--out", &classifier][..], &tiny[..]].concat();
    train(&[&args[..], &["--epochs", "1"]].concat());
    let (stdout, stderr) = train(&[&args[..], &["--epochs", "2"]].concat());
    assert!(stderr.contains("resuming at step"), "{stderr}");
    assert!(stderr.contains("ETA"), "no progress line: {stderr}");
    let state: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!((0.0..=1.0).contains(&number(&state["test_accuracy"])), "{state}");
    let csv = std::fs::read_to_string(Path::new(&classifier).join("metrics.csv")).unwrap();
    assert!(csv.starts_with("step,epoch,") && csv.lines().count() >= 3, "{csv}");
    let config = std::fs::read_to_string(Path::new(&classifier).join("classifier.toml")).unwrap();
    assert!(config.contains("width = 2") && config.contains("cxr-led-train classifier"), "{config}");

    let bundle = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/bundles/tiny");
    let report = path("report");
    let native = native_folder.to_string_lossy().into_owned();
    let csv_path = Path::new(&classifier).join("metrics.csv").to_string_lossy().into_owned();
    let evaluate = [
        "evaluate",
        "--data",
        &data,
        "--classifier",
        &classifier,
        "--bundle",
        bundle,
        "--out",
        &report,
        "--size",
        "48",
        "--limit",
        "0",
        "--device",
        "cpu",
        "--curves",
        &csv_path,
        "--native",
        &native,
        "--native-limit",
        "0",
        "--ranges",
        "held-out",
        "--ceiling",
    ];
    let (stdout, _) = train(&evaluate);
    assert!(stdout.contains("| NLM denoise + 1-99% stretch |"), "{stdout}");
    let markdown = std::fs::read_to_string(Path::new(&report).join("report.md")).unwrap();
    assert!(markdown.contains("## What the classifier needs"), "{markdown}");

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&report).join("report.json")).unwrap()).unwrap();
    // The report names the classifier build by its weights' hash.
    let weights = std::fs::read(Path::new(&classifier).join("classifier.safetensors")).unwrap();
    assert_eq!(
        json["classifier_sha256"],
        cxr_led_models::bundle::sha256_hex(&weights),
        "{}",
        json["classifier_sha256"]
    );
    assert!(markdown.contains(json["classifier_sha256"].as_str().unwrap()), "{markdown}");
    let methods = json["methods"].as_array().unwrap();
    let keys: Vec<&str> = methods.iter().map(|m| m["method"].as_str().unwrap()).collect();
    assert_eq!(keys, ["high-quality", "low-quality", "clahe", "histeq", "nlm", "nlm-stretch", "first-stage", "led"]);
    for method in methods {
        assert!((0.0..=1.0).contains(&number(&method["accuracy"])), "{method}");
        if method["method"] != "high-quality" {
            let (psnr, ssim) = (number(&method["psnr_mean"]), number(&method["ssim_mean"]));
            assert!(psnr.is_finite() && psnr > 0.0 && ssim.is_finite() && ssim <= 1.0, "{method}");
        }
        if !["high-quality", "low-quality"].contains(&method["method"].as_str().unwrap()) {
            assert!(number(&method["images_per_second"]) > 0.0, "{method}");
        }
        // Every figure has its 95% interval around its mean; every method but the bar its paired difference.
        let accuracy = &method["accuracy_interval"];
        assert!(number(&accuracy["low"]) <= number(&method["accuracy"]), "{method}");
        assert!(number(&method["accuracy"]) <= number(&accuracy["high"]), "{method}");
        if method["method"] == "nlm-stretch" {
            assert!(method["versus_bar"].is_null(), "{method}");
        } else {
            let difference = &method["versus_bar"]["accuracy"];
            assert!(number(&difference["low"]) <= number(&difference["high"]), "{method}");
        }
    }
    // --ceiling: the high-quality images through the first stage, blurred and with the average
    // black and white points, and the two oracle tone rows, each paired with the originals.
    let ceiling = json["ceiling"].as_array().unwrap();
    let labels: Vec<&str> = ceiling.iter().map(|r| r["label"].as_str().unwrap()).collect();
    assert_eq!(
        labels,
        [
            "First stage on the high-quality image",
            "High quality, Gaussian blur sigma 0.5 px",
            "High quality, Gaussian blur sigma 1 px",
            "High quality, its 1st and 99th percentiles moved to the average image's",
            "Oracle: low quality with the high-quality image's tone curve",
            "Oracle: first stage on low quality with the high-quality image's tone curve"
        ]
    );
    let high_quality = number(&methods[0]["accuracy"]);
    for row in ceiling {
        let accuracy = number(&row["accuracy"]["mean"]);
        assert!((0.0..=1.0).contains(&accuracy), "{row}");
        let difference = number(&row["versus_high_quality"]["mean"]);
        assert!((accuracy - high_quality - difference).abs() < 1e-9, "{row}");
        let (psnr, ssim) = (number(&row["psnr"]["mean"]), number(&row["ssim"]["mean"]));
        assert!(psnr > 0.0 && (0.0..=1.0).contains(&ssim), "{row}");
    }
    let native = &json["native"];
    assert_eq!(native["images"], 2, "{native}");
    let native_skipped = native["skipped"].as_array().unwrap();
    assert_eq!(native_skipped.len(), 1, "{native}");
    assert!(native_skipped[0]["path"].as_str().unwrap().ends_with("truncated.png"), "{native}");
    let skipped = json["skipped"].as_array().unwrap();
    assert!(!skipped.is_empty(), "some of the 90 bad files are in the test split");
    for file in skipped {
        let name = Path::new(file["path"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned();
        assert!(["broken-", "text-", "tiny-"].iter().any(|p| name.starts_with(p)), "{file}");
        assert!(!file["reason"].as_str().unwrap().is_empty(), "{file}");
    }
    let rows: Vec<&str> = native["methods"].as_array().unwrap().iter().map(|m| m["method"].as_str().unwrap()).collect();
    assert_eq!(rows, ["low-quality", "clahe", "histeq", "nlm", "nlm-stretch", "first-stage", "led"]);
    assert!(number(&native["methods"][0]["psnr"]["mean"]) > 0.0, "{native}");
    assert_eq!(json["bundle"]["random_weights"], true);
    assert_eq!(json["bundle"]["uncalibrated_check"], false, "the tiny bundle carries a [hallucination] table");
    assert_eq!(json["bundle"]["sha256"].as_str().unwrap().len(), 64);
    let markdown = std::fs::read_to_string(Path::new(&report).join("report.md")).unwrap();
    assert!(
        markdown.contains("untrained, random weights") && markdown.contains("cxr-led-train evaluate"),
        "{markdown}"
    );
    assert!(markdown.contains("At the images' own size") && markdown.contains("`held-out`"), "{markdown}");
    assert!(markdown.contains("could not be read and are not in the table"), "{markdown}");
    assert!(markdown.contains("cxr-led-train classifier"), "the classifier's command is missing:\n{markdown}");
    for figure in ["examples.png", "accuracy.png", "curves.png"] {
        let image = image::open(Path::new(&report).join(figure)).unwrap();
        assert!(image.width() > 100 && image.height() > 50, "{figure}");
    }
    // per_image.csv: every test image under every method and --ceiling row, for `compare`.
    let per_image = std::fs::read_to_string(Path::new(&report).join("per_image.csv")).unwrap();
    let images = json["test_images"].as_array().unwrap().iter().map(|c| c[1].as_u64().unwrap()).sum::<u64>();
    assert_eq!(per_image.lines().count() as u64, 1 + images * (8 + 6), "{per_image}");
    for key in [",high-quality,", ",first-stage,", ",led,", ",ceiling-first-stage,", ",oracle-first-stage-tone,"] {
        assert!(per_image.lines().filter(|l| l.contains(key)).count() as u64 == images, "{key}");
    }
    // compare: an evaluation against itself is comparable and shows no difference.
    let (stdout, _) = train(&["compare", "--baseline", &report, "--candidate", &report, "--out", &path("comparison")]);
    assert!(stdout.contains("identical image by image"), "{stdout}");
    assert!(Path::new(&path("comparison")).join("comparison.json").is_file());

    // export --report: train minimal checkpoints, export, and find the figures in [metrics].
    let common = ["--preset", "tiny", "--size", "32", "--device", "cpu"];
    let cyclegan = path("cyclegan");
    train(
        &[&["cyclegan", "--high-quality", &data, "--out", &cyclegan, "--batch", "2", "--steps", "1"][..], &common[..]]
            .concat(),
    );
    let pairs = path("pairs.safetensors");
    train(&[&["pairs", "--high-quality", &data, "--source", "simulator", "--out", &pairs][..], &common[..]].concat());
    let diffusion = path("diffusion");
    train(
        &[
            &[
                "diffusion",
                "--pairs",
                &pairs,
                "--out",
                &diffusion,
                "--steps",
                "1",
                "--batch",
                "2",
                "--validate-every",
                "1",
            ][..],
            &common[..],
        ]
        .concat(),
    );
    let exported = path("bundle");
    let report_json = Path::new(&report).join("report.json").to_string_lossy().into_owned();
    train(&[
        "export",
        "--preset",
        "tiny",
        "--cyclegan",
        &cyclegan,
        "--diffusion",
        &diffusion,
        "--out",
        &exported,
        "--report",
        &report_json,
    ]);
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(Path::new(&exported).join("bundle.toml")).unwrap()).unwrap();
    let metrics = manifest["metrics"].as_table().unwrap();
    assert!(metrics["evaluation-command"].as_str().unwrap().contains("cxr-led-train evaluate"));
    for key in ["low-quality", "clahe", "histeq", "nlm", "nlm-stretch", "first-stage", "led"] {
        let row = metrics[key].as_table().unwrap_or_else(|| panic!("no [metrics.{key}]"));
        assert!(row["accuracy"].as_float().is_some() && row["ssim"].as_float().is_some(), "{key}: {row:?}");
    }
}
