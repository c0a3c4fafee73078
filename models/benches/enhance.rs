//! Enhancement speed, Rust/tch side by side with PyTorch.
//!
//! For each preset (random weights, saved as a bundle that both sides load):
//! 256x256 LED enhancement (G_AB estimate + DDIM refinement with the preset's
//! t0 and steps) in images/s at each batch size, untiled, and seconds for one
//! native 1955x1841 chest X-ray (the NEMA RG1 matrix) through tiles; on CPU,
//! and on CUDA when present in f32, bf16 and f16. With `--python` the same runs
//! go through the PyTorch reference (`tests/reference`, eager, `--compile` for
//! torch.compile) and a table of ratios is printed.
//!
//! ```text
//! cargo bench -p cxr-led-models --bench enhance -- [--preset tiny|default]... [--batches 1,4]
//!     [--runs N] [--no-large] [--python] [--compile] [--out DIR]
//! ```
//! Writes `enhance.json` (and `pytorch-<preset>.json`) into DIR (default `out/bench` at the workspace root).
//! `cargo test --benches` runs it once, small, as a smoke test (see [`Options`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use cxr_led_models::sampling::noise::NoiseSource;
use cxr_led_models::{device, presets, Bundle, LedModel, Precision};
use serde_json::{json, Value};
use tch::{Device, Tensor};

/// Enhancement speed, Rust/tch beside PyTorch (see the file's doc comment).
/// Without `--bench` (that is, under `cargo test --benches`) it makes one
/// quick round of the tiny preset into a temporary folder, so that a change
/// that breaks the benchmark fails the test command.
#[derive(Parser)]
struct Options {
    /// A preset to time (repeat for several; default: tiny and default).
    #[arg(long = "preset", value_name = "NAME")]
    presets: Vec<String>,
    /// Batch sizes of the 256x256 runs.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    batches: Vec<i64>,
    /// Timed runs per figure (after one warm-up).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Skip the native 1955x1841 image.
    #[arg(long)]
    no_large: bool,
    /// Also run the PyTorch reference (`tests/reference`).
    #[arg(long)]
    python: bool,
    /// With --python: torch.compile the reference.
    #[arg(long)]
    compile: bool,
    /// Where enhance.json goes.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../out/bench"))]
    out: PathBuf,
    /// Added by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn options() -> Options {
    let mut options = Options::parse();
    if !options.bench {
        // Smoke run: every code path of a real run but the large image, in seconds.
        options.presets = vec!["tiny".into()];
        options.batches = vec![1];
        options.runs = 1;
        options.no_large = true;
        options.out = std::env::temp_dir().join(format!("cxr-led-enhance-bench-smoke-{}", std::process::id()));
    }
    if options.presets.is_empty() {
        options.presets = vec!["tiny".into(), "default".into()];
    }
    options
}

fn random_images(batch: i64, h: i64, w: i64, device: Device) -> Tensor {
    (NoiseSource::new(1).normal(&[batch, 1, h, w], device) * 0.3).clamp(-1.0, 1.0)
}

fn bench_rust(bundle: &Bundle, precision: Precision, device: Device, options: &Options) -> anyhow::Result<Value> {
    let model = LedModel::from_bundle(bundle, device, precision)?;
    let mut params = bundle.manifest.inference.clone();
    params.precision = precision;
    let mut per_batch = serde_json::Map::new();
    for &batch in &options.batches {
        let images = random_images(batch, 256, 256, device);
        model.enhance_batch(&images, &params, &mut NoiseSource::new(0))?; // warm-up
        let started = Instant::now();
        for run in 0..options.runs {
            model.enhance_batch(&images, &params, &mut NoiseSource::new(run as u64))?;
        }
        let rate = (batch as usize * options.runs) as f64 / started.elapsed().as_secs_f64();
        per_batch.insert(batch.to_string(), json!(rate));
    }
    let mut row = json!({
        "precision": format!("{precision:?}").to_lowercase(),
        "images_per_second_256": per_batch,
    });
    if !options.no_large {
        let image = random_images(1, 1955, 1841, device);
        let started = Instant::now();
        let result = model.enhance(&image, &params, &mut NoiseSource::new(0))?;
        row["seconds_1955x1841"] = json!(started.elapsed().as_secs_f64());
        row["seconds_1955x1841_g_ab"] = json!(result.timings.estimate.as_secs_f64());
        row["seconds_1955x1841_refinement"] = json!(result.timings.refinement.as_secs_f64());
    }
    Ok(row)
}

fn bench_python(bundle_dir: &Path, out: &Path, options: &Options) -> anyhow::Result<Value> {
    let python = std::env::var_os("VIRTUAL_ENV").map(|v| Path::new(&v).join("bin/python")).unwrap_or("python3".into());
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference");
    let batches: Vec<String> = options.batches.iter().map(|b| b.to_string()).collect();
    let mut command = std::process::Command::new(python);
    command
        .args(["-m", "cxr_led_reference.bench", "--bundle"])
        .arg(bundle_dir)
        .args(["--batches", &batches.join(","), "--runs", &options.runs.to_string(), "--out"])
        .arg(out)
        .env("PYTHONPATH", reference);
    if options.no_large {
        command.arg("--no-large");
    }
    if options.compile {
        command.arg("--compile");
    }
    let status = command.status()?;
    anyhow::ensure!(status.success(), "the PyTorch benchmark failed");
    Ok(serde_json::from_str(&std::fs::read_to_string(out)?)?)
}

fn figure(row: &Value, key: &str, batch: Option<i64>) -> Option<f64> {
    match batch {
        Some(b) => row[key][b.to_string()].as_f64(),
        None => row[key].as_f64(),
    }
}

fn main() -> anyhow::Result<()> {
    let options = options();
    let device = Device::cuda_if_available();
    let precisions: &[Precision] =
        if device.is_cuda() { &[Precision::F32, Precision::Bf16, Precision::F16] } else { &[Precision::F32] };
    std::fs::create_dir_all(&options.out)?;
    println!("device: {}", device::describe(device));
    let mut report = Vec::new();
    for preset in &options.presets {
        let manifest = presets::by_name(preset)?;
        tch::manual_seed(0);
        let bundle_dir = options.out.join(format!("bundle-{preset}"));
        let bundle = LedModel::build(&manifest, Device::Cpu)?.save_bundle(&bundle_dir, &manifest)?;
        let rust: Vec<Value> =
            precisions.iter().map(|&p| bench_rust(&bundle, p, device, &options)).collect::<anyhow::Result<_>>()?;
        let python = if options.python {
            Some(bench_python(&bundle_dir, &options.out.join(format!("pytorch-{preset}.json")), &options)?)
        } else {
            None
        };

        let inference = &manifest.inference;
        println!(
            "\npreset {preset}: t0 {} in {} DDIM steps, tiles {}/{} x{}",
            inference.t0, inference.steps, inference.tiles.tile, inference.tiles.overlap, inference.tiles.batch
        );
        println!("{:<6} {:<26} {:>12} {:>12} {:>8}", "prec", "figure", "rust/tch", "pytorch", "ratio");
        for (i, row) in rust.iter().enumerate() {
            let py_row = python.as_ref().map(|p| &p["results"][i]);
            let mut figures: Vec<(String, &str, Option<i64>, bool)> = options
                .batches
                .iter()
                .map(|&b| (format!("256px img/s, batch {b}"), "images_per_second_256", Some(b), true))
                .collect();
            if !options.no_large {
                figures.push(("1955x1841 seconds".into(), "seconds_1955x1841", None, false));
            }
            for (label, key, batch, higher_is_better) in figures {
                let ours = figure(row, key, batch);
                let theirs = py_row.and_then(|p| figure(p, key, batch));
                let ratio = match (ours, theirs) {
                    (Some(a), Some(b)) if higher_is_better => format!("{:.2}x", a / b),
                    (Some(a), Some(b)) => format!("{:.2}x", b / a),
                    _ => "-".into(),
                };
                let show = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".into());
                println!(
                    "{:<6} {:<26} {:>12} {:>12} {:>8}",
                    row["precision"].as_str().unwrap_or("?"),
                    label,
                    show(ours),
                    show(theirs),
                    ratio
                );
            }
        }
        report.push(json!({"preset": preset, "rust": rust, "pytorch": python}));
    }
    println!("\nratio: how many times faster Rust/tch is than PyTorch");
    let out = options.out.join("enhance.json");
    let document = json!({
        "device": device::describe(device),
        "cuda_available": tch::Cuda::is_available(),
        "threads": tch::get_num_threads(),
        "runs": options.runs,
        "results": report,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&document)?)?;
    println!("wrote {}", out.display());
    Ok(())
}
