//! Enhancement speed: images/s for 256x256 LED enhancement (G_AB estimate +
//! diffusion refinement with the preset's t0 and steps) and seconds for one
//! native 1955x1841 chest X-ray (the NEMA RG1 matrix), on CPU and on CUDA when
//! present, in every precision the device supports. Weights are random: speed
//! does not depend on their values.
//!
//! ```text
//! cargo bench -p cxr-led-models --bench enhance -- [--preset tiny|default]... [--runs N] [--no-large] [--out FILE]
//! ```
//! Prints a table and writes the figures as JSON (default `out/bench/enhance.json`).

use std::time::Instant;

use cxr_led_models::noise::NoiseSource;
use cxr_led_models::{device, presets, LedModel, Precision};
use tch::{Device, Tensor};

struct Options {
    presets: Vec<String>,
    runs: usize,
    large: bool,
    out: std::path::PathBuf,
}

fn options() -> Options {
    let mut options = Options { presets: Vec::new(), runs: 5, large: true, out: "out/bench/enhance.json".into() };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--preset" => options.presets.push(args.next().expect("--preset NAME")),
            "--runs" => options.runs = args.next().and_then(|n| n.parse().ok()).expect("--runs N"),
            "--no-large" => options.large = false,
            "--out" => options.out = args.next().expect("--out FILE").into(),
            "--bench" => {} // added by cargo bench
            other => panic!("unknown argument {other}; see the file's doc comment"),
        }
    }
    if options.presets.is_empty() {
        options.presets = vec!["tiny".into(), "default".into()];
    }
    options
}

fn image(h: i64, w: i64, device: Device) -> Tensor {
    (NoiseSource::new(1).normal(&[1, 1, h, w], device) * 0.3).clamp(-1.0, 1.0)
}

fn main() -> anyhow::Result<()> {
    let options = options();
    let device = Device::cuda_if_available();
    let precisions: &[Precision] =
        if device.is_cuda() { &[Precision::F32, Precision::Bf16, Precision::F16] } else { &[Precision::F32] };
    let mut rows = Vec::new();
    println!("device: {}", device::describe(device));
    println!(
        "{:<8} {:<5} {:>6} {:>5} {:>10} {:>12} {:>14}",
        "preset", "prec", "t0", "steps", "tile", "256px img/s", "1955x1841 s"
    );
    for preset in &options.presets {
        let manifest = presets::by_name(preset)?;
        for &precision in precisions {
            tch::manual_seed(0);
            let mut model = LedModel::build(&manifest, device)?;
            model.set_precision(precision)?;
            let mut params = manifest.inference.clone();
            params.precision = precision;

            let small = image(256, 256, device);
            model.enhance(&small, &params, &mut NoiseSource::new(0))?; // warm-up
            let started = Instant::now();
            for run in 0..options.runs {
                model.enhance(&small, &params, &mut NoiseSource::new(run as u64))?;
            }
            let images_per_second = options.runs as f64 / started.elapsed().as_secs_f64();

            let large_seconds = if options.large {
                let large = image(1955, 1841, device);
                let started = Instant::now();
                let result = model.enhance(&large, &params, &mut NoiseSource::new(0))?;
                Some((started.elapsed().as_secs_f64(), result.timings))
            } else {
                None
            };
            let precision_name = format!("{precision:?}").to_lowercase();
            println!(
                "{:<8} {:<5} {:>6} {:>5} {:>10} {:>12.3} {:>14}",
                preset,
                precision_name,
                params.t0,
                params.steps,
                format!("{}/{}x{}", params.tiles.tile, params.tiles.overlap, params.tiles.batch),
                images_per_second,
                large_seconds.map(|(s, _)| format!("{s:.2}")).unwrap_or_else(|| "-".into())
            );
            rows.push(serde_json::json!({
                "preset": preset,
                "precision": precision_name,
                "t0": params.t0,
                "ddim_steps": params.steps,
                "tile": params.tiles.tile,
                "overlap": params.tiles.overlap,
                "tile_batch": params.tiles.batch,
                "images_per_second_256": images_per_second,
                "runs_256": options.runs,
                "seconds_1955x1841": large_seconds.map(|(s, _)| s),
                "seconds_1955x1841_g_ab": large_seconds.map(|(_, t)| t.estimate.as_secs_f64()),
                "seconds_1955x1841_refinement": large_seconds.map(|(_, t)| t.refinement.as_secs_f64()),
            }));
        }
    }
    let report = serde_json::json!({
        "device": device::describe(device),
        "cuda_available": tch::Cuda::is_available(),
        "threads": tch::get_num_threads(),
        "results": rows,
    });
    if let Some(parent) = options.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&options.out, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", options.out.display());
    Ok(())
}
