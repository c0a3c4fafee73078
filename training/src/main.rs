//! `cxr-led-train`: the offline side of cxr-led. Builds model bundles and
//! enhances image files with the daemon's own model code.

mod checkpoint;
mod cyclegan;
mod data;
mod degrade;
mod diffusion;
mod hallucination_bench;
mod image_io;
mod paired;
mod pipeline;

// Evaluation (issue 6): classifier, baselines, metrics, report.
mod baselines;
mod bootstrap;
mod classifier;
mod compare;
mod evaluate;
mod metrics;
mod per_image;
mod progress;
mod report;
mod results;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cxr_led_models::hallucination;
use cxr_led_models::sampling::noise::NoiseSource;
use cxr_led_models::{device, presets, Bundle, LedModel};

#[derive(Parser)]
#[command(name = "cxr-led-train", version, about = "Train, export and try out LED model bundles")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a bundle with freshly initialised, seeded weights for a preset architecture.
    InitBundle {
        /// Architecture preset: tiny or default.
        #[arg(long, default_value = "tiny")]
        preset: String,
        /// Seed of libtorch's generator for the initial weights.
        #[arg(long, default_value_t = 0)]
        seed: i64,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Train the CycleGAN (G_AB, G_BA, D_A, D_B) on unpaired pools made from
    /// high-quality images: a disjoint half is degraded by the simulator into the low-quality pool.
    Cyclegan(pipeline::CycleGanArgs),
    /// Train the paired first-stage enhancer on simulator pairs: random patches,
    /// the degradation drawn afresh every step (what a 2-core CPU trains well).
    Paired(pipeline::PairedArgs),
    /// Build the paired set (high quality, G_BA or simulator low quality) for diffusion training.
    Pairs(pipeline::PairsArgs),
    /// Train the conditional diffusion UNet on the pairs.
    Diffusion(pipeline::DiffusionArgs),
    /// Assemble a bundle from the CycleGAN and diffusion checkpoints.
    Export(pipeline::ExportArgs),
    /// Simulate a low-dose acquisition of a PNG (see the degrade module) and print its parameters.
    Degrade {
        /// Well-exposed input image (PNG or DICOM).
        #[arg(long)]
        input: PathBuf,
        /// Degraded output (16-bit PNG).
        #[arg(long)]
        output: PathBuf,
        /// Seed of the parameter draw and of the noise.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Fix the dose fraction instead of drawing it (0.2 = a fifth of the dose, DI -7).
        #[arg(long)]
        dose: Option<f64>,
        /// Parameter ranges: training, held-out, or a TOML file with the keys of DegradationRanges.
        #[arg(long, default_value = "training")]
        ranges: String,
    },
    /// Score an enhanced image against its low-quality input with the
    /// hallucination check (the daemon's code path) and print JSON.
    Score {
        /// The low-quality input (PNG, any size).
        #[arg(long)]
        input: PathBuf,
        /// The enhanced output (PNG, same size).
        #[arg(long)]
        output: PathBuf,
        /// The bundle (its G_BA and its calibrated threshold and configuration).
        #[arg(long, default_value = "models/bundles/tiny")]
        bundle: PathBuf,
        /// Also write the doubt map here (8-bit PNG, white = doubt).
        #[arg(long)]
        doubt_map: Option<PathBuf>,
        /// auto, cpu, cuda or cuda:N (for the bundle's networks).
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Planted-hallucination benchmark: AUROC, detection and false-hold
    /// rates of the hallucination check; calibrates a bundle's hold threshold.
    HallucinationBench(hallucination_bench::BenchArgs),
    /// Train the evaluation classifier (ResNet-18, one channel) on a labelled set.
    Classifier(classifier::ClassifierArgs),
    /// Evaluate a bundle against the classical baselines on the held-out test split and write a report.
    Evaluate(evaluate::EvaluateArgs),
    /// Compare two evaluations of bundles (a candidate against the default) image by image:
    /// paired differences with 95% intervals.
    Compare(compare::CompareArgs),
    /// Enhance a PNG with a bundle, write the result as a 16-bit PNG and print timings.
    Enhance {
        /// The bundle folder.
        #[arg(long)]
        bundle: PathBuf,
        /// Input image (PNG, grayscale or colour, 8 or 16 bit, or DICOM).
        #[arg(long)]
        input: PathBuf,
        /// Output PNG.
        #[arg(long)]
        output: PathBuf,
        /// Also write the first stage's estimate (before diffusion refinement) here.
        #[arg(long)]
        estimate: Option<PathBuf>,
        /// Seed of the diffusion noise (the daemon derives it from the SOP Instance UID).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Precision instead of the bundle's: f32, bf16 (CPU or CUDA) or f16 (CUDA).
        #[arg(long)]
        precision: Option<String>,
        /// Refinement start instead of the bundle's (0: the first stage alone).
        #[arg(long)]
        t0: Option<usize>,
        /// DDIM steps instead of the bundle's.
        #[arg(long)]
        steps: Option<usize>,
        /// Tile side instead of the bundle's.
        #[arg(long)]
        tile: Option<i64>,
        /// Tiles per batch instead of the bundle's.
        #[arg(long)]
        tile_batch: Option<i64>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::InitBundle { preset, seed, out } => {
            let mut manifest = presets::by_name(&preset)?;
            manifest.training.insert("method".into(), "none: libtorch's default initialisation".into());
            manifest
                .training
                .insert("command".into(), format!("cxr-led-train init-bundle --preset {preset} --seed {seed}").into());
            tch::manual_seed(seed);
            let model = LedModel::build(&manifest, tch::Device::Cpu)?;
            let bundle = model.save_bundle(&out, &manifest)?;
            println!("wrote bundle {} to {} (sha256 {})", manifest.name, out.display(), bundle.sha256);
        }
        Command::Cyclegan(args) => pipeline::cyclegan(&args)?,
        Command::Paired(args) => pipeline::paired(&args)?,
        Command::Pairs(args) => pipeline::pairs(&args)?,
        Command::Diffusion(args) => pipeline::diffusion(&args)?,
        Command::Export(args) => pipeline::export(&args)?,
        Command::Classifier(args) => {
            let state = classifier::train(&args, &command_line())?;
            println!("{}", serde_json::to_string(&state)?);
        }
        Command::Evaluate(args) => {
            let report = evaluate::evaluate(&args, &command_line())?;
            println!("{}", report::markdown_table(&report));
        }
        Command::Compare(args) => {
            compare::run(&args)?;
        }
        Command::Degrade { input, output, seed, dose, ranges } => {
            use rand::SeedableRng;
            let image = image_io::read_image(&input)?;
            let ranges = degrade::DegradationRanges::from_arg(&ranges)?;
            let mut params = ranges.sample(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
            if let Some(dose) = dose {
                anyhow::ensure!(dose > 0.0 && dose <= 1.0, "--dose must lie in (0, 1], got {dose}");
                params.dose_fraction = dose;
            }
            let tensor = degrade::degrade_tensor(&image, &params, seed)?;
            image_io::write_png(&output, &tensor)?;
            let report = serde_json::json!({
                "input": input.display().to_string(),
                "output": output.display().to_string(),
                "deviation_index": params.deviation_index(),
                "parameters": params,
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Score { input, output, bundle, doubt_map, device } => {
            let device = device::parse_device(&device)?;
            let bundle = Bundle::load(&bundle).with_context(|| format!("loading bundle {}", bundle.display()))?;
            let model = LedModel::from_bundle(&bundle, device, bundle.manifest.inference.precision)?;
            let low_quality = image_io::read_image(&input)?;
            let enhanced = image_io::read_image(&output)?;
            let config = hallucination::bundle_config(&bundle.manifest);
            let report =
                hallucination::score(&model, &low_quality, &enhanced, &bundle.manifest.inference.tiles, &config)?;
            let threshold = hallucination::hold_threshold(&bundle.manifest);
            if let Some(path) = doubt_map {
                image_io::write_png_8bit(&path, &(&report.doubt_map * 2.0 - 1.0))?;
            }
            let components: serde_json::Map<String, serde_json::Value> =
                report.components.iter().map(|(name, value)| (name.clone(), (*value).into())).collect();
            let json = serde_json::json!({
                "score": report.score,
                "components": components,
                "hold_threshold": threshold,
                "held": hallucination::held(report.score, threshold),
                "bundle_sha256": bundle.sha256,
            });
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
        Command::HallucinationBench(args) => hallucination_bench::run(&args)?,
        Command::Enhance { bundle, input, output, estimate, seed, device, precision, t0, steps, tile, tile_batch } => {
            let device = device::parse_device(&device)?;
            let started = Instant::now();
            let bundle = Bundle::load(&bundle).with_context(|| format!("loading bundle {}", bundle.display()))?;
            let mut params = bundle.manifest.inference.clone();
            if let Some(precision) = precision {
                params.precision = toml::Value::String(precision.clone())
                    .try_into()
                    .with_context(|| format!("--precision {precision:?}: use f32, bf16 or f16"))?;
            }
            params.t0 = t0.unwrap_or(params.t0);
            params.steps = steps.unwrap_or(params.steps);
            params.tiles.tile = tile.unwrap_or(params.tiles.tile);
            params.tiles.batch = tile_batch.unwrap_or(params.tiles.batch);
            let model = LedModel::from_bundle(&bundle, device, params.precision)?;
            let loaded = started.elapsed();
            let low_quality = image_io::read_image(&input)?;
            let (height, width) = (low_quality.size()[2], low_quality.size()[3]);
            let enhanced = model.enhance(&low_quality, &params, &mut NoiseSource::new(seed))?;
            image_io::write_png(&output, &enhanced.output)?;
            if let Some(path) = estimate {
                image_io::write_png(&path, &enhanced.estimate)?;
            }
            let report = serde_json::json!({
                "bundle": bundle.manifest.name,
                "bundle_sha256": bundle.sha256,
                "device": device::describe(device),
                "precision": format!("{:?}", params.precision).to_lowercase(),
                "input": input.display().to_string(),
                "output": output.display().to_string(),
                "matrix": [height, width],
                "t0": params.t0,
                "ddim_steps": params.steps,
                "seconds_load_bundle": loaded.as_secs_f64(),
                "first_stage": model.first_stage_name(),
                "seconds_first_stage_estimate": enhanced.timings.estimate.as_secs_f64(),
                "seconds_diffusion_refinement": enhanced.timings.refinement.as_secs_f64(),
                "seconds_total": started.elapsed().as_secs_f64(),
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(())
}

/// The command line as typed (arguments shell-quoted where needed), for reports and manifests.
fn command_line() -> String {
    std::iter::once("cxr-led-train".to_string())
        .chain(std::env::args().skip(1))
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "\"'$`\\".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
