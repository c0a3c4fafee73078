//! The training subcommands: each reads what the previous stage wrote, so a
//! run can be done in resumable chunks (`--steps` is a total, not an increment):
//!
//! ```text
//! cxr-led-train cyclegan  --high-quality DIR... --out runs/cyclegan --steps 20000
//! cxr-led-train pairs     --high-quality DIR... --cyclegan runs/cyclegan --out runs/pairs.safetensors
//! cxr-led-train diffusion --pairs runs/pairs.safetensors --out runs/diffusion --steps 50000
//! cxr-led-train export    --cyclegan runs/cyclegan --diffusion runs/diffusion --out bundles/default
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use cxr_led_models::generator::ResnetGenerator;
use cxr_led_models::schedule::NoiseSchedule;
use cxr_led_models::{device, presets, Bundle, BundleManifest};
use tch::nn::{self, Module};
use tch::Tensor;

use crate::checkpoint;
use crate::cyclegan::{self, CycleGanConfig};
use crate::data::{self, Split};
use crate::degrade::DegradationRanges;
use crate::diffusion::{self, DiffusionConfig};

/// Options every stage shares.
#[derive(Debug, Args)]
pub struct Common {
    /// Architecture preset: tiny or default.
    #[arg(long, default_value = "default")]
    preset: String,
    /// Side the images are resized to (default: the preset's UNet sample size).
    #[arg(long)]
    size: Option<u32>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Seed of sampling and noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl Common {
    fn manifest(&self) -> anyhow::Result<BundleManifest> {
        Ok(presets::by_name(&self.preset)?)
    }

    fn size(&self) -> anyhow::Result<u32> {
        Ok(self.size.unwrap_or(self.manifest()?.unet.sample_size as u32))
    }
}

/// `cyclegan` options.
#[derive(Debug, Args)]
pub struct CycleGanArgs {
    #[command(flatten)]
    common: Common,
    /// Folders of high-quality PNGs (searched recursively).
    #[arg(long, required = true, num_args = 1..)]
    high_quality: Vec<PathBuf>,
    /// Checkpoint folder (resumed when it holds a checkpoint).
    #[arg(long)]
    out: PathBuf,
    /// Total optimiser steps.
    #[arg(long, default_value_t = 10_000)]
    steps: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 4)]
    batch: i64,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 500)]
    checkpoint_every: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-4)]
    learning_rate: f64,
}

/// Training images of the high-quality folders, with the test split held out.
fn split_images(folders: &[PathBuf], split: Split) -> anyhow::Result<Vec<PathBuf>> {
    Ok(data::list_images(folders)?.into_iter().filter(|p| data::split_of(p, 0.1, 0.1) == split).collect())
}

/// Runs the `cyclegan` stage.
pub fn cyclegan(args: &CycleGanArgs) -> anyhow::Result<()> {
    let device = device::parse_device(&args.common.device)?;
    let size = args.common.size()?;
    let train = split_images(&args.high_quality, Split::Train)?;
    // Disjoint halves: A is degraded into the low-quality pool, B stays high quality.
    let (source_a, source_b): (Vec<_>, Vec<_>) = train.into_iter().partition(|p| data::name_fraction(p, "pool") < 0.5);
    anyhow::ensure!(!source_a.is_empty() && !source_b.is_empty(), "too few training images for two pools");
    let (pool_a, _) =
        data::degrade_stack(&data::load_stack(&source_a, size)?, &source_a, &DegradationRanges::default())?;
    let pool_b = data::load_stack(&source_b, size)?;
    eprintln!("cyclegan: {} low-quality and {} high-quality images at {size}px", source_a.len(), source_b.len());
    let config = CycleGanConfig {
        steps: args.steps,
        batch: args.batch,
        learning_rate: args.learning_rate,
        checkpoint_every: args.checkpoint_every,
        seed: args.common.seed,
        ..Default::default()
    };
    let state = cyclegan::train(&args.common.manifest()?.generator, &pool_a, &pool_b, &config, &args.out, device)?;
    println!("{}", serde_json::to_string(&state)?);
    Ok(())
}

/// Where the low-quality half of each pair comes from.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LowQualitySource {
    /// The trained degradation generator G_BA (LED's recipe).
    GBa,
    /// The physical low-dose simulator.
    Simulator,
}

/// `pairs` options.
#[derive(Debug, Args)]
pub struct PairsArgs {
    #[command(flatten)]
    common: Common,
    /// Folders of high-quality PNGs (the same as for `cyclegan`).
    #[arg(long, required = true, num_args = 1..)]
    high_quality: Vec<PathBuf>,
    /// CycleGAN checkpoint folder (for G_BA).
    #[arg(long)]
    cyclegan: Option<PathBuf>,
    /// Where the low-quality images come from.
    #[arg(long, value_enum, default_value = "g-ba")]
    source: LowQualitySource,
    /// Output file (safetensors with train_hq, train_lq, val_hq, val_lq).
    #[arg(long)]
    out: PathBuf,
}

fn degrade_with(args: &PairsArgs, hq: &Tensor, paths: &[PathBuf], device: tch::Device) -> anyhow::Result<Tensor> {
    match args.source {
        LowQualitySource::Simulator => Ok(data::degrade_stack(hq, paths, &DegradationRanges::default())?.0),
        LowQualitySource::GBa => {
            let dir = args.cyclegan.as_deref().context("--source g-ba needs --cyclegan DIR")?;
            let mut store = nn::VarStore::new(device);
            let g_ba = ResnetGenerator::new(&store.root(), &args.common.manifest()?.generator);
            checkpoint::load_store(dir, "g_ba", &mut store)?;
            let _no_grad = tch::no_grad_guard();
            let outputs: Vec<Tensor> = (0..hq.size()[0])
                .step_by(16)
                .map(|start| {
                    let n = 16.min(hq.size()[0] - start);
                    g_ba.forward(&hq.narrow(0, start, n).to_device(device)).to_device(tch::Device::Cpu)
                })
                .collect();
            Ok(Tensor::cat(&outputs, 0))
        }
    }
}

/// Runs the `pairs` stage.
pub fn pairs(args: &PairsArgs) -> anyhow::Result<()> {
    let device = device::parse_device(&args.common.device)?;
    let size = args.common.size()?;
    let mut tensors = Vec::new();
    for (name, split) in [("train", Split::Train), ("val", Split::Validation)] {
        let paths = split_images(&args.high_quality, split)?;
        anyhow::ensure!(!paths.is_empty(), "no {name} images");
        let hq = data::load_stack(&paths, size)?;
        let lq = degrade_with(args, &hq, &paths, device)?;
        tensors.push((format!("{name}_hq"), hq));
        tensors.push((format!("{name}_lq"), lq));
    }
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    Tensor::write_safetensors(&tensors, &args.out)?;
    println!("wrote {} ({} training pairs)", args.out.display(), tensors[0].1.size()[0]);
    Ok(())
}

/// `diffusion` options.
#[derive(Debug, Args)]
pub struct DiffusionArgs {
    #[command(flatten)]
    common: Common,
    /// The file `pairs` wrote.
    #[arg(long)]
    pairs: PathBuf,
    /// Checkpoint folder (resumed when it holds a checkpoint).
    #[arg(long)]
    out: PathBuf,
    /// Total optimiser steps.
    #[arg(long, default_value_t = 50_000)]
    steps: usize,
    /// Pairs per batch.
    #[arg(long, default_value_t = 32)]
    batch: i64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-5)]
    learning_rate: f64,
    /// Steps between validations and checkpoints.
    #[arg(long, default_value_t = 500)]
    validate_every: usize,
    /// Validations without improvement before stopping.
    #[arg(long, default_value_t = 10)]
    patience: usize,
    /// Train on timesteps below this only (default: all 1000). LED refines
    /// from t0 <= 200: a short CPU run can spend every step there; the
    /// exported bundle then refuses a larger t0.
    #[arg(long)]
    max_timestep: Option<usize>,
}

/// Runs the `diffusion` stage.
pub fn diffusion(args: &DiffusionArgs) -> anyhow::Result<()> {
    let device = device::parse_device(&args.common.device)?;
    let manifest = args.common.manifest()?;
    let named: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&args.pairs)
        .with_context(|| format!("reading pairs {}", args.pairs.display()))?
        .into_iter()
        .collect();
    let get = |name: &str| named.get(name).with_context(|| format!("{} has no {name}", args.pairs.display()));
    let config = DiffusionConfig {
        steps: args.steps,
        batch: args.batch,
        learning_rate: args.learning_rate,
        validate_every: args.validate_every,
        patience: args.patience,
        seed: args.common.seed,
        max_timestep: args.max_timestep,
        ..Default::default()
    };
    let schedule = NoiseSchedule::new(&manifest.schedule)?;
    let state = diffusion::train(
        &manifest.unet,
        &schedule,
        (get("train_hq")?, get("train_lq")?),
        (get("val_hq")?, get("val_lq")?),
        &config,
        &args.out,
        device,
    )?;
    println!("{}", serde_json::to_string(&state)?);
    Ok(())
}

/// `export` options.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Architecture preset the checkpoints were trained with.
    #[arg(long, default_value = "default")]
    preset: String,
    /// CycleGAN checkpoint folder.
    #[arg(long)]
    cyclegan: PathBuf,
    /// Diffusion checkpoint folder (its best EMA weights are exported).
    #[arg(long)]
    diffusion: PathBuf,
    /// Bundle folder to write.
    #[arg(long)]
    out: PathBuf,
    /// Bundle version.
    #[arg(long, default_value = "0.1.0")]
    version: String,
    /// report.json of `cxr-led-train evaluate` on these weights: its figures go into `[metrics]`.
    #[arg(long)]
    report: Option<PathBuf>,
}

fn load_into(dir: &Path, name: &str, build: impl FnOnce(&nn::Path)) -> anyhow::Result<nn::VarStore> {
    let mut store = nn::VarStore::new(tch::Device::Cpu);
    build(&store.root());
    checkpoint::load_store(dir, name, &mut store)?;
    Ok(store)
}

/// Runs the `export` stage.
pub fn export(args: &ExportArgs) -> anyhow::Result<()> {
    let mut manifest = presets::by_name(&args.preset)?;
    manifest.version = args.version.clone();
    let generator = manifest.generator.clone();
    let g_ab = load_into(&args.cyclegan, "g_ab", |p| drop(ResnetGenerator::new(p, &generator)))?;
    let g_ba = load_into(&args.cyclegan, "g_ba", |p| drop(ResnetGenerator::new(p, &generator)))?;
    let mut unet_error = None;
    let unet = load_into(&args.diffusion, "unet-best", |p| {
        unet_error = cxr_led_models::unet::ConditionalUNet::new(p, &manifest.unet).err();
    })?;
    if let Some(error) = unet_error {
        return Err(error.into());
    }
    let diffusion_state = std::fs::read_to_string(args.diffusion.join("state.json")).unwrap_or_default();
    let cyclegan_state = std::fs::read_to_string(args.cyclegan.join("state.json")).unwrap_or_default();
    manifest.training.insert("method".into(), "cxr-led-train cyclegan, pairs, diffusion, export".into());
    manifest.training.insert("cyclegan-state".into(), cyclegan_state.into());
    if let Ok(state) = serde_json::from_str::<crate::diffusion::DiffusionState>(&diffusion_state) {
        if let Some(limit) = state.max_timestep {
            anyhow::ensure!(
                manifest.inference.t0 < limit,
                "the diffusion model was trained below timestep {limit}, but the {} preset refines from t0 = {}: \
                 train with --max-timestep above it",
                args.preset,
                manifest.inference.t0
            );
            // Same key as cxr_led_daemon::enhance::DIFFUSION_MAX_TIMESTEP (the daemon refuses a larger t0).
            manifest.training.insert("diffusion-max-timestep".into(), (limit as i64).into());
        }
    }
    manifest.training.insert("diffusion-state".into(), diffusion_state.into());
    manifest.training.insert("degradation-ranges".into(), toml::Value::try_from(DegradationRanges::default())?);
    if let Some(path) = &args.report {
        manifest.metrics = crate::report::metrics_table(&crate::evaluate::read_report(path)?)?;
    }
    let bundle = Bundle::save_stores(&args.out, &manifest, [("g_ab", &g_ab), ("g_ba", &g_ba), ("unet", &unet)])?;
    println!(
        "wrote bundle {} {} to {} (sha256 {})",
        manifest.name,
        manifest.version,
        args.out.display(),
        bundle.sha256
    );
    Ok(())
}
