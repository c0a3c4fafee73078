//! `cxr-led-train evaluate`: the LED study's evaluation, extended. On the
//! held-out test split of a labelled set, every high-quality image gets a
//! simulated low-quality partner (the degradation simulator with parameters
//! drawn per image, seeded by the file name, so the set is the same on every
//! run), and each method's output is compared with the ground truth (PSNR,
//! SSIM) and classified by the evaluation classifier (accuracy, and the
//! fraction of the high/low-quality accuracy gap it closes), with its speed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use cxr_led_models::noise::NoiseSource;
use cxr_led_models::{device, Bundle, LedModel, Precision};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::baselines::{self, ClaheParams, NlmParams};
use crate::classifier::{self, Classifier, LabelledSet};
use crate::data::{self, Split};
use crate::degrade::DegradationRanges;
use crate::metrics::{self, Plane};
use crate::progress::Progress;
use crate::report;

/// `evaluate` options.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// A class and a folder of its images as NAME=DIR (repeat), in the classifier's class order.
    #[arg(long = "class", value_name = "NAME=DIR")]
    pub classes: Vec<String>,
    /// Or: a folder whose subfolders are the classes.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Folder with classifier.toml and classifier.safetensors (from `cxr-led-train classifier`).
    #[arg(long)]
    pub classifier: PathBuf,
    /// The LED bundle to evaluate.
    #[arg(long)]
    pub bundle: PathBuf,
    /// Report folder: report.md, report.json, PNG figures.
    #[arg(long)]
    pub out: PathBuf,
    /// Side the test images are evaluated at (a multiple of the bundle's size multiple).
    #[arg(long, default_value_t = 224)]
    pub size: u32,
    /// Use at most this many test images (a name-hashed subset); 0: the whole test split.
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
    /// Images per LED batch.
    #[arg(long, default_value_t = 8)]
    pub batch: i64,
    /// Seed of the diffusion noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// TOML file with the simulator's parameter ranges (keys of DegradationRanges); default: the built-in ranges.
    #[arg(long)]
    pub ranges: Option<PathBuf>,
    /// Training metrics CSVs to draw as loss curves (first column: step).
    #[arg(long, num_args = 1..)]
    pub curves: Vec<PathBuf>,
    /// Example rows in the image grid.
    #[arg(long, default_value_t = 3)]
    pub examples: usize,
}

/// The methods every report compares, in table order.
pub const METHODS: [(&str, &str); 7] = [
    ("high-quality", "High quality (ground truth)"),
    ("low-quality", "Low quality (simulated, no enhancement)"),
    ("clahe", "CLAHE (8x8 tiles, clip 2.0)"),
    ("histeq", "Histogram equalisation"),
    ("nlm-stretch", "NLM denoise + 1-99% stretch"),
    ("g-ab", "G_AB alone (CycleGAN)"),
    ("led", "LED (G_AB + diffusion)"),
];

/// One row of the table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodResult {
    /// Key (see [`METHODS`]).
    pub method: String,
    /// Human-readable name.
    pub label: String,
    /// Mean PSNR against ground truth in dB (null for ground truth itself).
    pub psnr_mean: Option<f64>,
    /// Standard deviation of the per-image PSNR.
    pub psnr_std: Option<f64>,
    /// Mean SSIM against ground truth.
    pub ssim_mean: Option<f64>,
    /// Standard deviation of the per-image SSIM.
    pub ssim_std: Option<f64>,
    /// Classifier accuracy on this version of the test images.
    pub accuracy: f64,
    /// (accuracy - low-quality accuracy) / (high-quality - low-quality accuracy); null when there is no gap.
    pub gap_closed: Option<f64>,
    /// Images per second of the method alone (null for the inputs).
    pub images_per_second: Option<f64>,
}

/// Everything `report.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvaluationReport {
    /// The command that produced this report.
    pub command: String,
    /// Device the enhancement and classification ran on.
    pub device: String,
    /// CPU threads libtorch used.
    pub threads: i64,
    /// Side the images were evaluated at.
    pub size: u32,
    /// Seed of the diffusion noise.
    pub seed: u64,
    /// Test images per class.
    pub test_images: Vec<(String, usize)>,
    /// Images per class and split of the whole labelled set.
    pub data: Vec<ClassSummary>,
    /// The evaluated bundle.
    pub bundle: BundleSummary,
    /// The classifier and how it was trained.
    pub classifier: classifier::ClassifierConfig,
    /// The simulator's ranges.
    pub simulator_ranges: DegradationRanges,
    /// Deviation Index of the simulated test images: min, mean, max.
    pub deviation_index: [f64; 3],
    /// CLAHE parameters.
    pub clahe: ClaheParams,
    /// NLM parameters.
    pub nlm: NlmParams,
    /// The table.
    pub methods: Vec<MethodResult>,
    /// Figures written beside report.json.
    pub figures: Vec<String>,
}

/// Images of one class per split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassSummary {
    /// Class name.
    pub class: String,
    /// Folders.
    pub folders: Vec<String>,
    /// Train, validation, test images.
    pub train: usize,
    /// Validation images.
    pub validation: usize,
    /// Test images.
    pub test: usize,
}

/// What the evaluated bundle is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleSummary {
    /// Manifest name.
    pub name: String,
    /// Manifest version.
    pub version: String,
    /// sha256 of bundle.toml.
    pub sha256: String,
    /// Manifest description.
    pub description: String,
    /// How it was trained (`[training] method`).
    pub training_method: String,
    /// The command that made it (`[training] command`), when recorded.
    pub training_command: Option<String>,
    /// True when the weights are an untrained initialisation (LED rows are then no result).
    pub random_weights: bool,
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    (mean, (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt())
}

/// Runs `evaluate` and writes the report; returns it.
pub fn evaluate(args: &EvaluateArgs, command_line: &str) -> anyhow::Result<EvaluationReport> {
    let device = device::parse_device(&args.device)?;
    let classes = data::classes(&args.classes, args.data.as_deref())?;
    let classifier = Classifier::load(&args.classifier, device)?;
    let class_names: Vec<String> = classes.iter().map(|c| c.name.clone()).collect();
    anyhow::ensure!(
        class_names == classifier.config.classes,
        "the classes {class_names:?} differ from the classifier's {:?}: give them in the same order with the same names",
        classifier.config.classes
    );
    let bundle = Bundle::load(&args.bundle).with_context(|| format!("loading bundle {}", args.bundle.display()))?;
    let model = LedModel::from_bundle(&bundle, device, Precision::F32)?;
    let multiple = model.size_multiple();
    anyhow::ensure!(
        args.size as i64 % multiple == 0,
        "--size {} must be a multiple of {multiple} for this bundle's networks",
        args.size
    );
    let ranges: DegradationRanges = match &args.ranges {
        Some(path) => toml::from_str(&std::fs::read_to_string(path)?)
            .with_context(|| format!("reading degradation ranges {}", path.display()))?,
        None => Default::default(),
    };
    ranges.validate()?;

    let mut summary = Vec::new();
    for class in &classes {
        let images = data::list_images(&class.folders)?;
        let count = |split| images.iter().filter(|p| data::split_of(p, 0.1, 0.1) == split).count();
        summary.push(ClassSummary {
            class: class.name.clone(),
            folders: class.folders.iter().map(|f| f.display().to_string()).collect(),
            train: count(Split::Train),
            validation: count(Split::Validation),
            test: count(Split::Test),
        });
    }
    let test = LabelledSet::load(data::labelled_split(&classes, Split::Test)?, args.size, args.limit)?;
    let truth = test.label_vec();
    let n = test.paths.len();
    let test_images: Vec<(String, usize)> = class_names
        .iter()
        .enumerate()
        .map(|(i, c)| (c.clone(), truth.iter().filter(|&&l| l == i as i64).count()))
        .collect();
    eprintln!("evaluate: {n} test images at {}px, bundle {} ({})", args.size, bundle.manifest.name, bundle.sha256);
    let (low_quality, params) = data::degrade_stack(&test.images, &test.paths, &ranges)?;
    let dis: Vec<f64> = params.iter().map(|p| p.deviation_index()).collect();
    let deviation_index = [
        dis.iter().copied().fold(f64::INFINITY, f64::min),
        mean_std(&dis).0,
        dis.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    ];

    let planes = |stack: &Tensor| -> anyhow::Result<Vec<Plane>> {
        (0..n as i64).map(|i| Plane::from_model_tensor(&stack.get(i))).collect()
    };
    let hq_planes = planes(&test.images)?;
    let lq_planes = planes(&low_quality)?;

    // Each method's outputs as planes, with its seconds.
    let mut outputs: Vec<(Vec<Plane>, Option<f64>)> = vec![(hq_planes.clone(), None), (lq_planes.clone(), None)];
    let clahe_params = ClaheParams::default();
    let nlm_params = NlmParams::default();
    type Classical<'a> = (&'a str, Box<dyn Fn(&Plane) -> Plane + 'a>);
    let classical: [Classical; 3] = [
        ("clahe", Box::new(|p: &Plane| baselines::clahe(p, &clahe_params))),
        ("histeq", Box::new(baselines::histogram_equalise)),
        ("nlm-stretch", Box::new(|p: &Plane| baselines::nlm_stretch(p, &nlm_params))),
    ];
    for (name, method) in &classical {
        let mut progress = Progress::new(&format!("evaluate {name}"), 0, n, "images");
        let started = Instant::now();
        let mut out = Vec::with_capacity(n);
        for (i, plane) in lq_planes.iter().enumerate() {
            out.push(method(plane));
            progress.update(i + 1, "");
        }
        outputs.push((out, Some(started.elapsed().as_secs_f64())));
    }
    let (mut estimates, mut refined) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut estimate_seconds, mut led_seconds) = (0.0, 0.0);
    let mut noise = NoiseSource::new(args.seed);
    let params = bundle.manifest.inference.clone();
    let mut progress = Progress::new("evaluate led", 0, n, "images");
    for start in (0..n as i64).step_by(args.batch.max(1) as usize) {
        let count = args.batch.max(1).min(n as i64 - start);
        // Images no larger than the training tile go through in batches; larger ones
        // through the daemon's tiled path (full-image attention would not fit).
        let results = if i64::from(args.size) <= params.tiles.tile {
            vec![model.enhance_batch(&low_quality.narrow(0, start, count), &params, &mut noise)?]
        } else {
            (start..start + count)
                .map(|i| model.enhance(&low_quality.narrow(0, i, 1), &params, &mut noise))
                .collect::<Result<Vec<_>, _>>()?
        };
        for result in results {
            estimate_seconds += result.timings.estimate.as_secs_f64();
            led_seconds += (result.timings.estimate + result.timings.refinement).as_secs_f64();
            for i in 0..result.output.size()[0] {
                estimates.push(Plane::from_model_tensor(&result.estimate.get(i).clamp(-1.0, 1.0))?);
                refined.push(Plane::from_model_tensor(&result.output.get(i))?);
            }
        }
        progress.update((start + count) as usize, "");
    }
    outputs.push((estimates, Some(estimate_seconds)));
    outputs.push((refined, Some(led_seconds)));

    let stack = |planes: &[Plane]| Tensor::cat(&planes.iter().map(Plane::to_model_tensor).collect::<Vec<_>>(), 0);
    let mut methods = Vec::new();
    for ((key, label), (planes, seconds)) in METHODS.iter().zip(&outputs) {
        let accuracy = classifier::accuracy(&classifier.predict(&stack(planes), 64)?, &truth);
        let (psnr, ssim) = if *key == "high-quality" {
            (None, None)
        } else {
            let psnr: Vec<f64> = planes.iter().zip(&hq_planes).map(|(p, t)| metrics::psnr(p, t)).collect();
            let ssim: Vec<f64> = planes.iter().zip(&hq_planes).map(|(p, t)| metrics::ssim(p, t)).collect();
            (Some(mean_std(&psnr)), Some(mean_std(&ssim)))
        };
        methods.push(MethodResult {
            method: key.to_string(),
            label: label.to_string(),
            psnr_mean: psnr.map(|p| p.0),
            psnr_std: psnr.map(|p| p.1),
            ssim_mean: ssim.map(|s| s.0),
            ssim_std: ssim.map(|s| s.1),
            accuracy,
            gap_closed: None,
            images_per_second: seconds.map(|s| n as f64 / s.max(1e-9)),
        });
    }
    let (high, low) = (methods[0].accuracy, methods[1].accuracy);
    for method in &mut methods {
        method.gap_closed = ((high - low).abs() > 1e-9).then(|| (method.accuracy - low) / (high - low));
    }

    let method = bundle.manifest.training.get("method").and_then(|v| v.as_str()).unwrap_or("not recorded").to_string();
    let mut report = EvaluationReport {
        command: command_line.into(),
        device: device::describe(device),
        threads: tch::get_num_threads().into(),
        size: args.size,
        seed: args.seed,
        test_images,
        data: summary,
        bundle: BundleSummary {
            name: bundle.manifest.name.clone(),
            version: bundle.manifest.version.clone(),
            sha256: bundle.sha256.clone(),
            description: bundle.manifest.description.clone(),
            random_weights: method.starts_with("none"),
            training_method: method,
            training_command: bundle.manifest.training.get("command").and_then(|v| v.as_str()).map(String::from),
        },
        classifier: classifier.config.clone(),
        simulator_ranges: ranges,
        deviation_index,
        clahe: clahe_params,
        nlm: nlm_params,
        methods,
        figures: Vec::new(),
    };
    let examples: Vec<Vec<&Plane>> =
        (0..args.examples.min(n)).map(|i| outputs.iter().map(|(planes, _)| &planes[i]).collect()).collect();
    report::write(&args.out, &mut report, &examples, &args.curves)?;
    Ok(report)
}

/// Reads a `report.json` written by `evaluate`.
pub fn read_report(path: &Path) -> anyhow::Result<EvaluationReport> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a report.json from `cxr-led-train evaluate`", path.display()))
}
