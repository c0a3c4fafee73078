//! `cxr-led-e2e-bench`: seconds from the upload to Orthanc until the derived
//! series is stored there, per study (one at a time), and throughput with a
//! queue of studies uploaded at once. A benchmark, not a test: it prints a
//! table and writes the figures as JSON.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use cxr_led_e2e::studies::{self, Sample};
use cxr_led_e2e::{LoopOptions, PacsLoop};
use serde_json::json;

#[derive(Parser)]
#[command(name = "cxr-led-e2e-bench", about = "Upload-to-derived-series latency and throughput through a real Orthanc")]
struct Args {
    /// The model bundle.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Inference device: auto, cpu, cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Studies uploaded at once for the throughput run (small DX thorax images).
    #[arg(long, default_value_t = 20)]
    queued: usize,
    /// Rounds of the one-study-at-a-time latency run (each sends the standard set's under-exposed studies).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Working folder (emptied first).
    #[arg(long, default_value = "out/e2e-bench")]
    dir: PathBuf,
    /// Where the figures go (JSON).
    #[arg(long, default_value = "out/e2e-bench/e2e.json")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)?;
    }
    let mut options = LoopOptions::for_tests(&args.dir, &format!("cxrled_e2e_bench_{}", std::process::id()));
    options.device = args.device.clone();
    if let Some(bundle) = &args.bundle {
        options.bundle = bundle.clone();
    }
    let pacs = PacsLoop::start(&options)?;
    let samples_dir = args.dir.join("samples");

    // Latency: one study at a time, so nothing queues in front of it.
    let mut latency = Vec::new();
    for round in 0..args.rounds {
        for sample in studies::standard_set(&samples_dir, &format!("latency-{round}"))? {
            if sample.deviation_index > -3.0 {
                continue;
            }
            let start = Instant::now();
            pacs.orthanc.upload(&sample.path)?;
            let seconds = pacs.wait_for_derived(&[&sample], start, Duration::from_secs(1800))?[0];
            println!("latency  {:<24} {}x{}: {seconds:.2} s", sample.label, sample.columns, sample.rows);
            latency.push(
                json!({ "study": sample.label, "columns": sample.columns, "rows": sample.rows, "seconds": seconds }),
            );
        }
    }

    // Throughput: a queue of studies uploaded back to back.
    let queued: Vec<Sample> = (0..args.queued)
        .map(|i| studies::sample(&samples_dir, "dx_image.dcm", &format!("queued-{i:03}"), "throughput", -6.0))
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    for sample in &queued {
        pacs.orthanc.upload(&sample.path)?;
    }
    let upload_seconds = start.elapsed().as_secs_f64();
    let refs: Vec<&Sample> = queued.iter().collect();
    let done = pacs.wait_for_derived(&refs, start, Duration::from_secs(3600))?;
    let total = done.iter().cloned().fold(0.0, f64::max);
    let per_minute = args.queued as f64 / total * 60.0;
    println!(
        "throughput {} studies ({}x{}): uploaded in {upload_seconds:.2} s, all derived series back after {total:.2} s = {per_minute:.1} studies/min",
        args.queued, queued[0].columns, queued[0].rows
    );
    let report = json!({
        "device": args.device,
        "bundle": options.bundle,
        "orthanc_stable_age_secs": options.stable_age_secs,
        "cxrled_quiet_period_secs": options.quiet_period_secs,
        "workers": options.workers,
        "t0": options.t0,
        "steps": options.steps,
        "latency": latency,
        "throughput": { "studies": args.queued, "upload_seconds": upload_seconds, "seconds": total, "studies_per_minute": per_minute, "each_seconds": done },
    });
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_vec_pretty(&report)?)?;
    println!("figures written to {}", args.out.display());
    Ok(())
}
