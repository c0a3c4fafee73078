//! The training subcommands: each reads what the previous stage wrote, so a
//! run can be done in resumable chunks (`--steps` is a total, not an increment):
//!
//! ```text
//! cxr-led-train cyclegan  --high-quality DIR... --out runs/cyclegan --steps 20000
//! cxr-led-train pairs     --high-quality DIR... --cyclegan runs/cyclegan --out runs/pairs.safetensors
//! cxr-led-train diffusion --pairs runs/pairs.safetensors --out runs/diffusion --steps 50000
//! cxr-led-train export    --cyclegan runs/cyclegan --diffusion runs/diffusion --out bundles/default
//! ```
//!
//! The paired first stage (what a 2-core CPU trains well) replaces the
//! CycleGAN's G_AB where pairs exist; its G_BA and UNet can come from an
//! earlier bundle:
//!
//! ```text
//! cxr-led-train paired    --high-quality DIR... --out runs/paired --steps 16000
//! cxr-led-train paired    --pairs runs/pairs.safetensors --out runs/paired-gba   # G_BA's pairs instead
//! cxr-led-train export    --preset cpu --enhancer runs/paired --base-bundle OLD --out bundles/default
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use cxr_led_models::nets::generator::ResnetGenerator;
use cxr_led_models::sampling::schedule::NoiseSchedule;
use cxr_led_models::{device, presets, Bundle, BundleManifest};
use tch::nn::{self, Module};
use tch::Tensor;

use crate::checkpoint;
use crate::cyclegan::{self, CycleGanConfig};
use crate::data::{self, Split};
use crate::degrade::DegradationRanges;
use crate::diffusion::{self, DiffusionConfig};
use crate::paired::{self, PairedConfig, ValidationSet};

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
    let (hq_a, source_a) = data::load_stack(&source_a, size, "cyclegan")?;
    let (pool_a, _) = data::degrade_stack(&hq_a, &source_a, &DegradationRanges::default())?;
    let (pool_b, source_b) = data::load_stack(&source_b, size, "cyclegan")?;
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
        let (hq, paths) = data::load_stack(&paths, size, "pairs")?;
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
    /// The file `pairs` wrote (fixed pairs at the preset's size).
    #[arg(long, required_unless_present = "high_quality", conflicts_with_all = ["ranges", "high_quality"])]
    pairs: Option<PathBuf>,
    /// Instead of --pairs: folders of high-quality images, cut into random
    /// --patch patches at their own pixel scale and degraded afresh by the
    /// simulator every step, as `paired` trains the first stage (the train
    /// split trains, validation images validate).
    #[arg(long, num_args = 1..)]
    high_quality: Vec<PathBuf>,
    /// Degradation ranges with --high-quality: training, held-out, or a TOML file.
    #[arg(long)]
    ranges: Option<String>,
    /// Patch side in pixels with --high-quality (a multiple of the UNet's size multiple).
    #[arg(long, default_value_t = 128)]
    patch: i64,
    /// Source images per step with --high-quality (each cut into batch / sources patches).
    #[arg(long, default_value_t = 4)]
    sources: i64,
    /// Validation images with --high-quality (a centre patch of each, fixed degradations).
    #[arg(long, default_value_t = 32)]
    validation_images: usize,
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
    /// Start a fresh run from these weights (fine-tuning): a bundle folder or a diffusion checkpoint folder.
    #[arg(long)]
    init: Option<PathBuf>,
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
    let config = DiffusionConfig {
        steps: args.steps,
        batch: args.batch,
        learning_rate: args.learning_rate,
        validate_every: args.validate_every.max(1),
        patience: args.patience,
        seed: args.common.seed,
        max_timestep: args.max_timestep,
        init: args.init.clone(),
        ..Default::default()
    };
    let schedule = NoiseSchedule::new(&manifest.schedule)?;
    let state = match &args.pairs {
        Some(file) => {
            let named: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(file)
                .with_context(|| format!("reading pairs {}", file.display()))?
                .into_iter()
                .collect();
            let get = |name: &str| named.get(name).with_context(|| format!("{} has no {name}", file.display()));
            let training = diffusion::TrainingBatches::Fixed(get("train_hq")?, get("train_lq")?);
            let validation = (get("val_hq")?, get("val_lq")?);
            diffusion::train(&manifest.unet, &schedule, &training, validation, &config, &args.out, device)?
        }
        None => {
            let multiple = manifest.unet.size_multiple();
            anyhow::ensure!(
                args.patch >= multiple && args.patch % multiple == 0,
                "--patch {} must be a positive multiple of {multiple} (the UNet halves it {} times)",
                args.patch,
                multiple.trailing_zeros()
            );
            let ranges = DegradationRanges::from_arg(args.ranges.as_deref().unwrap_or("training"))?;
            let ranges_text = toml::to_string_pretty(&ranges)?;
            record_training_data(&args.out, RANGES_FILE, &ranges_text, |previous| previous == ranges_text)?;
            let (images, skipped_train) =
                paired::load_images(&split_images(&args.high_quality, Split::Train)?, args.patch as u32);
            let validation_paths = validation_subset(&args.high_quality, args.validation_images)?;
            let (validation, skipped_validation) = paired::load_images(&validation_paths, args.patch as u32);
            anyhow::ensure!(
                !images.is_empty() && !validation.is_empty(),
                "no usable {} images of at least {} px under {:?}: pass a smaller --patch or other folders",
                if images.is_empty() { "training" } else { "validation" },
                args.patch,
                args.high_quality
            );
            let skipped: Vec<_> = skipped_train.iter().chain(&skipped_validation).collect();
            eprintln!(
                "diffusion: {} training and {} validation images at their own size, {} skipped",
                images.len(),
                validation.len(),
                skipped.len()
            );
            std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
            std::fs::write(args.out.join("skipped.json"), serde_json::to_vec_pretty(&skipped)?)?;
            // Validation: the centre patch of each image, degraded once.
            let degraded = paired::degrade_fixed(&validation, &ranges, args.common.seed.wrapping_add(1))?;
            let centre = |image: &Tensor| {
                let (h, w) = (image.size()[2], image.size()[3]);
                image.narrow(2, (h - args.patch) / 2, args.patch).narrow(3, (w - args.patch) / 2, args.patch) * 2.0
                    - 1.0
            };
            let val_hq = Tensor::cat(&validation.iter().map(centre).collect::<Vec<_>>(), 0);
            let val_lq = Tensor::cat(&degraded.iter().map(centre).collect::<Vec<_>>(), 0);
            let pairs = paired::TrainingPairs::Simulated { images, ranges: Box::new(ranges) };
            let scales = PairedConfig::default().scales;
            let training = diffusion::TrainingBatches::Patches {
                pairs: &pairs,
                scales: &scales,
                sources: args.sources,
                patch: args.patch,
            };
            diffusion::train(&manifest.unet, &schedule, &training, (&val_hq, &val_lq), &config, &args.out, device)?
        }
    };
    println!("{}", serde_json::to_string(&state)?);
    Ok(())
}

/// Kind of the activations in paired training.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Activations {
    /// bf16 where the device computes it natively (CUDA, a CPU with AVX-512
    /// BF16 or AMX), else f32: emulated bf16 is about 9x slower than f32.
    Auto,
    /// 32-bit float.
    F32,
    /// bfloat16 activations with f32 master weights (about 2x faster on a CPU with AVX-512 BF16).
    Bf16,
}

/// The activations' kind for `choice` on `device`, said on stderr when `auto` chose.
fn activation_kind(choice: Activations, device: tch::Device) -> tch::Kind {
    match choice {
        Activations::F32 => tch::Kind::Float,
        Activations::Bf16 => tch::Kind::BFloat16,
        Activations::Auto if cxr_led_models::device::has_native_bf16(device) => {
            eprintln!("paired: bf16 activations (the device computes bf16 natively; --activations f32 to turn off)");
            tch::Kind::BFloat16
        }
        Activations::Auto => {
            eprintln!("paired: f32 activations (this CPU has no AVX-512 BF16 or AMX, so bf16 would be emulated)");
            tch::Kind::Float
        }
    }
}

/// `paired` options.
#[derive(Debug, Args)]
pub struct PairedArgs {
    /// Architecture preset with an `[enhancer]`: cpu-deep-curve (the default bundle's since
    /// 0.5.0-cpu: cpu-deep-tone and a tone curve), cpu-deep-tone (cpu-deep with the global tone
    /// head), cpu-deep (0.4.0-cpu), cpu, tiny-paired or tiny-paired-deep (tests).
    #[arg(long, default_value = "cpu")]
    preset: String,
    /// Folders of high-quality images (searched recursively; the train split is used, validation images validate).
    #[arg(long, required_unless_present = "pairs", num_args = 1..)]
    high_quality: Vec<PathBuf>,
    /// Train on the fixed pairs of this file (from `pairs`, e.g. G_BA's after
    /// `cyclegan` on a site's own under-exposed images) instead of the simulator.
    #[arg(long, conflicts_with_all = ["ranges", "high_quality"])]
    pairs: Option<PathBuf>,
    /// Checkpoint folder (resumed when it holds a checkpoint).
    #[arg(long)]
    out: PathBuf,
    /// Total optimiser steps.
    #[arg(long, default_value_t = 16_000)]
    steps: usize,
    /// Patches per step.
    #[arg(long, default_value_t = 16)]
    batch: i64,
    /// Source images per step (each degraded afresh, cut into batch / sources patches).
    #[arg(long, default_value_t = 4)]
    sources: i64,
    /// Patch side in pixels (a multiple of 8).
    #[arg(long, default_value_t = 96)]
    patch: i64,
    /// Peak Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    learning_rate: f64,
    /// Steps between validations and checkpoints.
    #[arg(long, default_value_t = 500)]
    validate_every: usize,
    /// Validation images (whole, with fixed degradations).
    #[arg(long, default_value_t = 48)]
    validation_images: usize,
    /// Kind of the activations.
    #[arg(long, value_enum, default_value = "auto")]
    activations: Activations,
    /// Degradation ranges: training, held-out, or a TOML file (the held-out setting is for evaluation).
    #[arg(long, default_value = "training")]
    ranges: String,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Seed of image choice, crops and degradations.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Start a fresh run from these weights (fine-tuning): a bundle folder or a paired checkpoint folder.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Share of simulated training sources left undegraded (the target is the
    /// input), in [0, 1): teaches the network to leave a good image alone.
    #[arg(long, default_value_t = 0.0)]
    clean_share: f64,
    /// Weight of the texture term: the L1 distance of the amplitude spectra
    /// of output and target patches (0: off; keeps fine texture and penalises
    /// over-sharpening).
    #[arg(long, default_value_t = 0.0)]
    spectrum_weight: f64,
}

/// The file in a paired checkpoint folder that records the degradation ranges it trains with.
const RANGES_FILE: &str = "ranges.toml";
/// The file in a paired checkpoint folder that records the fixed pairs it trains on (file and sha256).
const PAIRS_FILE: &str = "pairs.toml";

/// What a paired run trains on, as recorded in its checkpoint folder.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PairsRecord {
    /// The pairs file as given.
    file: PathBuf,
    /// Its sha256 (what a resume compares).
    sha256: String,
}

/// Records what a fresh run in `dir` trains on (`text` into `file`), or,
/// resuming, refuses other training data than the checkpoint's.
fn record_training_data(dir: &Path, file: &str, text: &str, same: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    let (what, other) = if file == RANGES_FILE { ("degradation ranges", PAIRS_FILE) } else { ("pairs", RANGES_FILE) };
    anyhow::ensure!(
        !dir.join(other).exists(),
        "{} was trained on {}: resume it the same way or use a new --out",
        dir.display(),
        if other == PAIRS_FILE { "fixed pairs (--pairs)" } else { "simulator pairs (--ranges)" }
    );
    let recorded = dir.join(file);
    match std::fs::read_to_string(&recorded) {
        Ok(previous) if !same(&previous) => anyhow::bail!(
            "{} was trained with other {what} ({}): resume with the same {} or use a new --out",
            dir.display(),
            recorded.display(),
            if file == RANGES_FILE { "--ranges" } else { "--pairs" }
        ),
        Ok(_) => Ok(()),
        Err(_) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(&recorded, text).with_context(|| format!("writing {}", recorded.display()))
        }
    }
}

/// Hex sha256 of a file's bytes.
fn file_sha256(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(cxr_led_models::bundle::sha256_hex(&bytes))
}

/// The (low quality, high quality) pairs of a `pairs` file, each
/// `[1, 1, S, S]` in [0, 1]: training, and the first `validation_images` of
/// the validation pairs.
type FixedPairs = Vec<(Tensor, Tensor)>;
fn read_fixed_pairs(file: &Path, validation_images: usize) -> anyhow::Result<(FixedPairs, FixedPairs)> {
    let mut named: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(file)
        .with_context(|| format!("reading --pairs {} (a file written by `cxr-led-train pairs`)", file.display()))?
        .into_iter()
        .collect();
    let mut take = |split: &str, limit: usize| -> anyhow::Result<FixedPairs> {
        let mut part = |which: &str| {
            let key = format!("{split}_{which}");
            let stack = named.remove(&key).with_context(|| {
                format!("--pairs {} has no {key}: give a file written by `cxr-led-train pairs`", file.display())
            })?;
            anyhow::ensure!(
                stack.dim() == 4 && stack.size()[1] == 1,
                "--pairs {}: {key} is {:?}, not [N, 1, H, W] grayscale",
                file.display(),
                stack.size()
            );
            Ok(((stack.to_kind(tch::Kind::Float) + 1.0) / 2.0).clamp(0.0, 1.0).split(1, 0))
        };
        let (low, high) = (part("lq")?, part("hq")?);
        anyhow::ensure!(
            low.len() == high.len() && low.first().map(Tensor::size) == high.first().map(Tensor::size),
            "--pairs {}: {split}_lq and {split}_hq differ in count or size",
            file.display()
        );
        Ok(low.into_iter().zip(high).take(limit).collect())
    };
    let train = take("train", usize::MAX)?;
    let validation = take("val", validation_images.max(1))?;
    anyhow::ensure!(!validation.is_empty(), "--pairs {} has no validation pairs", file.display());
    Ok((train, validation))
}

/// The first `count` (at least one) validation images under `folders`, in a
/// fixed name-hashed order, so that a run validates on the same images
/// whatever else the folders hold.
fn validation_subset(folders: &[PathBuf], count: usize) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths = split_images(folders, Split::Validation)?;
    paths.sort_by(|a, b| data::name_fraction(a, "validation").total_cmp(&data::name_fraction(b, "validation")));
    paths.truncate(count.max(1));
    Ok(paths)
}

/// The presets with an `[enhancer]` (what `paired` trains and `--enhancer` exports).
fn enhancer_presets() -> Vec<&'static str> {
    presets::NAMES.into_iter().filter(|name| presets::by_name(name).is_ok_and(|m| m.enhancer.is_some())).collect()
}

/// Runs the `paired` stage.
pub fn paired(args: &PairedArgs) -> anyhow::Result<()> {
    let device = device::parse_device(&args.device)?;
    let manifest = presets::by_name(&args.preset)?;
    let enhancer = manifest.enhancer.clone().with_context(|| {
        format!("preset {:?} has no [enhancer]; the paired stage trains one of {:?}", args.preset, enhancer_presets())
    })?;
    let (train, validation, skipped_train, skipped_validation) = match &args.pairs {
        Some(file) => {
            let sha256 = file_sha256(file)
                .with_context(|| format!("--pairs {}: give a file written by `cxr-led-train pairs`", file.display()))?;
            let record = PairsRecord { file: file.clone(), sha256 };
            let same = |text: &str| toml::from_str::<PairsRecord>(text).is_ok_and(|r| r.sha256 == record.sha256);
            // Read first: a file that is not pairs leaves no record to refuse a retry with.
            let (train, validation) = read_fixed_pairs(file, args.validation_images)?;
            record_training_data(&args.out, PAIRS_FILE, &toml::to_string_pretty(&record)?, same)?;
            eprintln!(
                "paired: {} training and {} validation pairs from {}",
                train.len(),
                validation.len(),
                file.display()
            );
            let validation = ValidationSet::from_pairs(&validation)?;
            (paired::TrainingPairs::Fixed(train), validation, Vec::new(), Vec::new())
        }
        None => {
            let ranges = DegradationRanges::from_arg(&args.ranges)?;
            let ranges_text = toml::to_string_pretty(&ranges)?;
            record_training_data(&args.out, RANGES_FILE, &ranges_text, |previous| previous == ranges_text)?;
            let (train, skipped_train) =
                paired::load_images(&split_images(&args.high_quality, Split::Train)?, args.patch.max(0) as u32);
            let validation_paths = validation_subset(&args.high_quality, args.validation_images)?;
            let (validation, skipped_validation) = paired::load_images(&validation_paths, 16);
            anyhow::ensure!(!validation.is_empty(), "no usable validation images under {:?}", args.high_quality);
            eprintln!(
                "paired: {} training and {} validation images at their own size, {} skipped",
                train.len(),
                validation.len(),
                skipped_train.len() + skipped_validation.len()
            );
            let validation = ValidationSet::new(&validation, &ranges, args.seed.wrapping_add(1))?;
            let ranges = Box::new(ranges);
            (paired::TrainingPairs::Simulated { images: train, ranges }, validation, skipped_train, skipped_validation)
        }
    };
    let skipped = skipped_train.len() + skipped_validation.len();
    let config = PairedConfig {
        steps: args.steps,
        batch: args.batch,
        sources: args.sources,
        patch: args.patch,
        learning_rate: args.learning_rate,
        validate_every: args.validate_every.max(1),
        activations: activation_kind(args.activations, device),
        seed: args.seed,
        init: args.init.clone(),
        clean_share: args.clean_share,
        spectrum_weight: args.spectrum_weight,
        ..Default::default()
    };
    let state = paired::train(&enhancer, &train, &validation, &config, &args.out, device)?;
    let skipped_json: Vec<_> = skipped_train.iter().chain(&skipped_validation).collect();
    std::fs::write(args.out.join("skipped.json"), serde_json::to_vec_pretty(&skipped_json)?)?;
    println!(
        "{}",
        serde_json::json!({ "step": state.step, "best_validation_psnr": state.best_validation_psnr,
        "patches_per_second": state.patches_per_second, "seconds": state.seconds, "skipped": skipped })
    );
    Ok(())
}

/// `export` options.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Architecture preset the checkpoints were trained with.
    #[arg(long, default_value = "default")]
    preset: String,
    /// CycleGAN checkpoint folder (G_AB, G_BA).
    #[arg(long)]
    cyclegan: Option<PathBuf>,
    /// Diffusion checkpoint folder (its best EMA weights are exported).
    #[arg(long)]
    diffusion: Option<PathBuf>,
    /// Paired checkpoint folder (its best weights become the first stage; the preset needs an `[enhancer]`).
    #[arg(long)]
    enhancer: Option<PathBuf>,
    /// A bundle whose networks (G_BA, UNet, G_AB) are taken where no checkpoint folder gives them.
    #[arg(long)]
    base_bundle: Option<PathBuf>,
    /// Bundle folder to write.
    #[arg(long)]
    out: PathBuf,
    /// Bundle version.
    #[arg(long, default_value = "0.1.0")]
    version: String,
    /// report.json of `cxr-led-train evaluate` on these weights: its figures go into `[metrics]`.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Keep the `[hallucination]` calibration of the bundle already at --out
    /// (refused unless its networks are the same weights, byte for byte, or
    /// only the UNet differs where nothing uses it: t0 = 0 and no LED samples).
    #[arg(long)]
    keep_calibration: bool,
}

/// Whether the `[hallucination]` calibration of `previous` holds for `new`:
/// the same weights, or only another UNet where that UNet shapes neither the
/// outputs nor the check (no refinement, t0 = 0, and no LED samples drawn).
fn calibration_holds(previous: &BundleManifest, new: &BundleManifest) -> bool {
    let unet_unused = new.inference.t0 == 0
        && previous.hallucination.as_ref().is_some_and(|calibration| calibration.config.samples == 0);
    let checked = |manifest: &BundleManifest| {
        let mut files = manifest.files.clone();
        if unet_unused {
            files.remove("unet");
        }
        files
    };
    checked(previous) == checked(new)
}

/// Where one network of the exported bundle comes from.
enum Source<'a> {
    Checkpoint(&'a Path, &'static str),
    Bundle(&'a Bundle),
}

/// Builds `network` (as `build` lays it out) and fills it from `source`.
fn network_from(
    source: Option<Source>,
    network: &str,
    build: impl FnOnce(&nn::Path) -> anyhow::Result<()>,
) -> anyhow::Result<nn::VarStore> {
    let mut store = nn::VarStore::new(tch::Device::Cpu);
    build(&store.root())?;
    match source {
        Some(Source::Checkpoint(dir, name)) => checkpoint::load_store(dir, name, &mut store)?,
        Some(Source::Bundle(bundle)) => bundle
            .load_weights(network, &store)
            .with_context(|| format!("taking {network} from the base bundle {}", bundle.dir.display()))?,
        None => anyhow::bail!(
            "no source for the bundle's {network}: give its checkpoint folder (--cyclegan, --diffusion or --enhancer) \
             or --base-bundle"
        ),
    }
    Ok(store)
}

/// Runs the `export` stage.
pub fn export(args: &ExportArgs) -> anyhow::Result<()> {
    let mut manifest = presets::by_name(&args.preset)?;
    manifest.version = args.version.clone();
    let base = match &args.base_bundle {
        Some(dir) => Some(Bundle::load(dir).with_context(|| format!("loading the base bundle {}", dir.display()))?),
        None => None,
    };
    if let Some(base) = &base {
        anyhow::ensure!(
            base.manifest.generator == manifest.generator && base.manifest.unet == manifest.unet,
            "the base bundle {}'s G_BA or UNet architecture differs from the {} preset's",
            base.manifest.name,
            args.preset
        );
    }
    let from_base =
        |network: &str| base.as_ref().filter(|b| b.manifest.networks().contains(&network)).map(Source::Bundle);
    let generator = manifest.generator.clone();
    let build_generator = |p: &nn::Path| {
        ResnetGenerator::new(p, &generator);
        Ok(())
    };
    let first_stage = match (&manifest.enhancer, &args.enhancer) {
        (Some(config), dir) => {
            let source =
                dir.as_deref().map(|d| Source::Checkpoint(d, "enhancer-best")).or_else(|| from_base("enhancer"));
            network_from(source, "enhancer", |p| {
                cxr_led_models::nets::enhancer::Enhancer::new(p, config)?;
                Ok(())
            })?
        }
        (None, Some(_)) => {
            anyhow::bail!("--enhancer needs a preset with an [enhancer]: one of {:?}", enhancer_presets())
        }
        (None, None) => {
            let source = args.cyclegan.as_deref().map(|d| Source::Checkpoint(d, "g_ab")).or_else(|| from_base("g_ab"));
            network_from(source, "g_ab", build_generator)?
        }
    };
    let source = args.cyclegan.as_deref().map(|d| Source::Checkpoint(d, "g_ba")).or_else(|| from_base("g_ba"));
    let g_ba = network_from(source, "g_ba", build_generator)?;
    let source = args.diffusion.as_deref().map(|d| Source::Checkpoint(d, "unet-best")).or_else(|| from_base("unet"));
    let unet = network_from(source, "unet", |p| {
        cxr_led_models::nets::unet::ConditionalUNet::new(p, &manifest.unet)?;
        Ok(())
    })?;

    let read_state = |dir: &Option<PathBuf>, key: &str| -> String {
        match dir {
            Some(dir) => std::fs::read_to_string(dir.join("state.json")).unwrap_or_default(),
            None => base
                .as_ref()
                .and_then(|b| b.manifest.training.get(key))
                .and_then(toml::Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        }
    };
    let diffusion_state = read_state(&args.diffusion, "diffusion-state");
    let diffusion_record = serde_json::from_str::<diffusion::DiffusionState>(&diffusion_state).ok();
    let cyclegan_state = read_state(&args.cyclegan, "cyclegan-state");
    let mut stages = Vec::new();
    if let Some(dir) = &args.enhancer {
        let state = std::fs::read_to_string(dir.join("state.json"))?;
        match serde_json::from_str::<paired::PairedState>(&state).ok().and_then(|s| s.init) {
            Some(init) => stages.push(format!("paired (fine-tuned from {init})")),
            None => stages.push("paired".into()),
        }
        manifest.training.insert("paired-state".into(), state.into());
        if let Ok(text) = std::fs::read_to_string(dir.join(PAIRS_FILE)) {
            let record: PairsRecord =
                toml::from_str(&text).with_context(|| format!("reading {}", dir.join(PAIRS_FILE).display()))?;
            manifest.training.insert("first-stage-pairs".into(), toml::Value::try_from(record)?);
        } else {
            let ranges = std::fs::read_to_string(dir.join(RANGES_FILE)).map_err(anyhow::Error::from).and_then(|text| {
                let ranges: DegradationRanges = toml::from_str(&text)?;
                Ok(ranges)
            });
            manifest.training.insert(
                "degradation-ranges".into(),
                toml::Value::try_from(ranges.with_context(|| format!("reading {}", dir.join(RANGES_FILE).display()))?)?,
            );
        }
    }
    stages.extend(args.cyclegan.as_ref().map(|_| "cyclegan".to_string()));
    if let Some(dir) = &args.diffusion {
        // A refinement trained on simulator patches records its ranges; one on fixed pairs does not.
        match std::fs::read_to_string(dir.join(RANGES_FILE)) {
            Ok(text) => {
                let ranges: DegradationRanges =
                    toml::from_str(&text).with_context(|| format!("reading {}", dir.join(RANGES_FILE).display()))?;
                manifest.training.insert("diffusion-degradation-ranges".into(), toml::Value::try_from(ranges)?);
                stages.push(match diffusion_record.as_ref().and_then(|state| state.init.as_ref()) {
                    Some(init) => {
                        format!("diffusion (simulator patches at the images' own scale, fine-tuned from {init})")
                    }
                    None => "diffusion (simulator patches at the images' own scale)".into(),
                });
            }
            Err(_) => stages.push("pairs, diffusion".into()),
        }
    }
    let mut method =
        format!("cxr-led-train {}, export", if stages.is_empty() { "export".into() } else { stages.join(", ") });
    if let Some(base) = &base {
        let carried: Vec<&str> = [
            (args.cyclegan.is_none() && manifest.enhancer.is_none(), "g_ab"),
            (args.cyclegan.is_none(), "g_ba"),
            (args.diffusion.is_none(), "unet"),
            (args.enhancer.is_none() && manifest.enhancer.is_some(), "enhancer"),
        ]
        .into_iter()
        .filter_map(|(carried, name)| carried.then_some(name))
        .collect();
        method.push_str(&format!(
            "; {} carried over from bundle {} {} (sha256 {})",
            carried.join(", "),
            base.manifest.name,
            base.manifest.version,
            base.sha256
        ));
        // Keep the chain: the base's whole method, since the networks carried
        // over may be ones the base trained itself (its part before "; ").
        if let Some(base_method) = base.manifest.training.get("method").and_then(toml::Value::as_str) {
            if !carried.is_empty() {
                method.push_str(&format!(" [the base's method: {base_method}]"));
            }
        }
        // A carried network keeps the record of how it was trained.
        let mut carried_records = Vec::new();
        if args.diffusion.is_none() {
            carried_records.extend(["diffusion-max-timestep", "diffusion-degradation-ranges"]);
        }
        if args.enhancer.is_none() {
            carried_records.extend(["degradation-ranges", "first-stage-pairs"]);
            if manifest.enhancer.is_some() {
                carried_records.push("paired-state");
            }
        }
        for key in carried_records {
            if let Some(record) = base.manifest.training.get(key) {
                manifest.training.entry(key).or_insert_with(|| record.clone());
            }
        }
    }
    manifest.training.insert("method".into(), method.into());
    manifest.training.insert("cyclegan-state".into(), cyclegan_state.into());
    if let Some(state) = &diffusion_record {
        if let Some(limit) = state.max_timestep {
            anyhow::ensure!(
                manifest.inference.t0 < limit,
                "the diffusion model was trained below timestep {limit}, but the {} preset refines from t0 = {}: \
                 train with --max-timestep above it",
                args.preset,
                manifest.inference.t0
            );
            // Same key as cxr_led_daemon::pipeline::enhance::DIFFUSION_MAX_TIMESTEP (the daemon refuses a larger t0).
            manifest.training.insert("diffusion-max-timestep".into(), (limit as i64).into());
        }
    }
    manifest.training.insert("diffusion-state".into(), diffusion_state.into());
    // A first stage trained on fixed pairs records those instead of ranges.
    if !manifest.training.contains_key("degradation-ranges") && !manifest.training.contains_key("first-stage-pairs") {
        manifest.training.insert("degradation-ranges".into(), toml::Value::try_from(DegradationRanges::default())?);
    }
    if let Some(path) = &args.report {
        manifest.metrics = crate::report::metrics_table(&crate::results::read_report(path)?)?;
    }
    let previous = if args.keep_calibration {
        let previous = Bundle::load(&args.out)
            .with_context(|| format!("--keep-calibration: no bundle to keep it from at {}", args.out.display()))?;
        anyhow::ensure!(
            previous.manifest.hallucination.is_some(),
            "--keep-calibration: {} is not calibrated",
            args.out.display()
        );
        Some(previous.manifest)
    } else {
        None
    };
    let [first_name, g_ba_name, unet_name] = manifest.networks();
    let mut bundle = Bundle::save_stores(
        &args.out,
        &manifest,
        [(first_name, &first_stage), (g_ba_name, &g_ba), (unet_name, &unet)],
    )?;
    if let Some(previous) = previous {
        anyhow::ensure!(
            calibration_holds(&previous, &bundle.manifest),
            "--keep-calibration: the networks differ from the calibrated bundle's, so its calibration does not hold; \
             {} is written uncalibrated: run hallucination-bench --write-bundle on it",
            args.out.display()
        );
        let mut calibrated = bundle.manifest.clone();
        calibrated.hallucination = previous.hallucination;
        bundle = Bundle::save_manifest(&args.out, &calibrated)?;
    }
    println!(
        "wrote bundle {} {} to {} (sha256 {})",
        manifest.name,
        manifest.version,
        args.out.display(),
        bundle.sha256
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use cxr_led_models::bundle::WeightFile;
    use cxr_led_models::hallucination::HallucinationCalibration;

    use super::*;

    fn with_files(mut manifest: BundleManifest, unet: &str, enhancer: &str) -> BundleManifest {
        for (name, sha256) in [("unet", unet), ("enhancer", enhancer), ("g_ba", "g")] {
            manifest
                .files
                .insert(name.into(), WeightFile { path: format!("{name}.safetensors"), sha256: sha256.into() });
        }
        manifest
    }

    #[test]
    fn a_new_refinement_keeps_the_calibration_only_where_nothing_uses_it() {
        let mut calibrated = with_files(presets::cpu_deep_curve(), "u1", "e1");
        calibrated.hallucination = Some(HallucinationCalibration {
            hold_threshold: 0.7,
            config: Default::default(),
            benchmark: Default::default(),
        });
        assert_eq!(calibrated.inference.t0, 0);
        assert!(calibration_holds(&calibrated, &with_files(presets::cpu_deep_curve(), "u1", "e1")));
        // t0 = 0 and no samples: another UNet changes no output and no score.
        assert!(calibration_holds(&calibrated, &with_files(presets::cpu_deep_curve(), "u2", "e1")));
        // Another first stage changes the outputs the check was calibrated on.
        assert!(!calibration_holds(&calibrated, &with_files(presets::cpu_deep_curve(), "u1", "e2")));
        // A bundle that refines uses its UNet for every output.
        let mut refining = with_files(presets::cpu_deep_curve(), "u2", "e1");
        refining.inference.t0 = 50;
        assert!(!calibration_holds(&calibrated, &refining));
        // The check's own LED samples use the UNet too.
        calibrated.hallucination.as_mut().unwrap().config.samples = 4;
        assert!(!calibration_holds(&calibrated, &with_files(presets::cpu_deep_curve(), "u2", "e1")));
    }
}
