//! `cxr-led-train evaluate`: the LED study's evaluation, extended. On the
//! held-out test split of a labelled set, every high-quality image gets a
//! simulated low-quality partner (the degradation simulator with parameters
//! drawn per image, seeded by the file name, so the set is the same on every
//! run), and each method's output is compared with the ground truth (PSNR,
//! SSIM) and classified by the evaluation classifier (accuracy, and the
//! fraction of the high/low-quality accuracy gap it closes), with its speed.
//! Every figure carries a 95% bootstrap interval, and every method its paired
//! difference to NLM + stretch (the bar) with its interval. `--native DIR`
//! adds PSNR and SSIM at the images' own matrix size (e.g. 1024 px), through
//! the daemon's tiled path. `per_image.csv` beside the report keeps every
//! image's figures for `compare`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use cxr_led_models::nets::enhancer::{STRETCH_HIGH, STRETCH_LOW};
use cxr_led_models::sampling::noise::NoiseSource;
use cxr_led_models::{device, hallucination, Bundle, LedModel, Precision};
use tch::Tensor;

use crate::baselines::{self, ClaheParams, NlmParams};
use crate::bootstrap;
use crate::classifier::{Classifier, LabelledSet};
use crate::data::{self, Split};
use crate::degrade::DegradationRanges;
use crate::metrics::{self, Plane};
use crate::per_image;
use crate::progress::Progress;
use crate::report;
use crate::results::{
    BundleSummary, CeilingRow, ClassSummary, Differences, EvaluationReport, MethodResult, NativeReport, NativeRow, BAR,
    METHODS,
};

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
    /// The simulator's parameter ranges: training, held-out (a setting training never sees), or a TOML file.
    #[arg(long, default_value = "training")]
    pub ranges: String,
    /// Refinement start instead of the bundle's (0: the first stage alone).
    #[arg(long)]
    pub t0: Option<usize>,
    /// DDIM steps instead of the bundle's.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Also measure PSNR and SSIM on every image of this folder at its own size (e.g. nih1024).
    #[arg(long)]
    pub native: Option<PathBuf>,
    /// Use at most this many images of --native (name-hashed); 0: all.
    #[arg(long, default_value_t = 0)]
    pub native_limit: usize,
    /// Training metrics CSVs to draw as loss curves (first column: step).
    #[arg(long, num_args = 1..)]
    pub curves: Vec<PathBuf>,
    /// Example rows in the image grid.
    #[arg(long, default_value_t = 3)]
    pub examples: usize,
    /// Also classify the high-quality images after what a method may do to
    /// them without any degradation (the first stage on them; Gaussian blur):
    /// how much of the accuracy gap a faithful denoiser can close at all.
    #[arg(long)]
    pub ceiling: bool,
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
    let ranges = DegradationRanges::from_arg(&args.ranges)?;
    let mut enhance_params = bundle.manifest.inference.clone();
    enhance_params.t0 = args.t0.unwrap_or(enhance_params.t0);
    enhance_params.steps = args.steps.unwrap_or(enhance_params.steps);
    enhance_params.sampler(model.schedule())?;

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
    let classical = classical_methods(&clahe_params, &nlm_params);
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
    let params = &enhance_params;
    let mut progress = Progress::new("evaluate led", 0, n, "images");
    let results = enhance_all(&model, &low_quality, args.batch, params, &mut noise, |done| progress.update(done, ""))?;
    for result in results {
        estimate_seconds += result.timings.estimate.as_secs_f64();
        led_seconds += (result.timings.estimate + result.timings.refinement).as_secs_f64();
        for i in 0..result.output.size()[0] {
            estimates.push(Plane::from_model_tensor(&result.estimate.get(i).clamp(-1.0, 1.0))?);
            refined.push(Plane::from_model_tensor(&result.output.get(i))?);
        }
    }
    // The hallucination check on the model's outputs, as the daemon scores them.
    if bundle.manifest.hallucination.is_none() {
        eprintln!(
            "evaluate: bundle {} has no [hallucination] calibration: the check rows use the uncalibrated defaults \
             (calibrate with `hallucination-bench --write-bundle`, or export with --keep-calibration)",
            args.bundle.display()
        );
    }
    let check = hallucination::bundle_config(&bundle.manifest);
    let threshold = hallucination::hold_threshold(&bundle.manifest);
    let mut scores: Vec<Vec<f64>> = Vec::new();
    // Without refinement the LED output is the estimate: scored once.
    let scored: &[&Vec<Plane>] = if params.refines() { &[&estimates, &refined] } else { &[&estimates] };
    for planes in scored {
        let mut progress = Progress::new("evaluate check", 0, n, "images");
        let mut row = Vec::with_capacity(n);
        for (i, plane) in planes.iter().enumerate() {
            let output = plane.to_model_tensor();
            let report =
                hallucination::score(&model, &low_quality.narrow(0, i as i64, 1), &output, &params.tiles, &check)?;
            row.push(report.score);
            progress.update(i + 1, "");
        }
        scores.push(row);
    }
    if !params.refines() {
        scores.push(scores[0].clone());
    }
    outputs.push((estimates, Some(estimate_seconds)));
    outputs.push((refined, Some(led_seconds)));

    let stack = |planes: &[Plane]| Tensor::cat(&planes.iter().map(Plane::to_model_tensor).collect::<Vec<_>>(), 0);
    // Per image: 1.0 where the classifier is right.
    let correct_of = |planes: &[Plane]| -> anyhow::Result<Vec<f64>> {
        let predicted = classifier.predict(&stack(planes), 64)?;
        Ok(predicted.iter().zip(&truth).map(|(p, t)| f64::from(u8::from(p == t))).collect())
    };
    // Per image: PSNR, SSIM (none for the ground truth) and whether the classifier is right.
    let mut per_image: Vec<(Option<Quality>, Vec<f64>)> = Vec::new();
    for ((key, _), (planes, _)) in METHODS.iter().zip(&outputs) {
        let correct = correct_of(planes)?;
        let quality = (*key != "high-quality").then(|| quality_of(planes, &hq_planes));
        per_image.push((quality, correct));
    }
    let image_names: Vec<String> = test.paths.iter().map(|p| p.display().to_string()).collect();
    let mut rows = Vec::new();
    let mut record = |method: &str, quality: Option<&Quality>, correct: &[f64]| {
        for (i, image) in image_names.iter().enumerate() {
            rows.push(per_image::Row {
                image: image.clone(),
                method: method.to_string(),
                psnr_db: quality.map(|q| q.0[i]),
                ssim: quality.map(|q| q.1[i]),
                correct: correct[i],
            });
        }
    };
    for ((key, _), (quality, correct)) in METHODS.iter().zip(&per_image) {
        record(key, quality.as_ref(), correct);
    }
    let bar = METHODS.iter().position(|(key, _)| *key == BAR).expect("the bar is a method");
    let mut methods = Vec::new();
    for (((key, label), (_, seconds)), (quality, correct)) in METHODS.iter().zip(&outputs).zip(&per_image) {
        let psnr = quality.as_ref().map(|q| mean_std(&q.0));
        let ssim = quality.as_ref().map(|q| mean_std(&q.1));
        let (bar_quality, bar_correct) = &per_image[bar];
        let versus_bar = (*key != BAR).then(|| Differences {
            psnr_db: quality
                .as_ref()
                .zip(bar_quality.as_ref())
                .map(|(q, b)| bootstrap::paired_difference(&q.0, &b.0, 1)),
            ssim: quality.as_ref().zip(bar_quality.as_ref()).map(|(q, b)| bootstrap::paired_difference(&q.1, &b.1, 2)),
            accuracy: Some(bootstrap::paired_difference(correct, bar_correct, 3)),
        });
        methods.push(MethodResult {
            method: key.to_string(),
            label: label.to_string(),
            psnr_mean: psnr.map(|p| p.0),
            psnr_std: psnr.map(|p| p.1),
            ssim_mean: ssim.map(|s| s.0),
            ssim_std: ssim.map(|s| s.1),
            accuracy: correct.iter().sum::<f64>() / correct.len().max(1) as f64,
            gap_closed: None,
            images_per_second: seconds.map(|s| n as f64 / s.max(1e-9)),
            psnr_interval: quality.as_ref().map(|q| bootstrap::mean_interval(&q.0, 4)),
            ssim_interval: quality.as_ref().map(|q| bootstrap::mean_interval(&q.1, 5)),
            accuracy_interval: Some(bootstrap::mean_interval(correct, 6)),
            versus_bar,
            hallucination_score: None,
            held: None,
        });
    }
    for (method, row) in methods.iter_mut().rev().take(2).rev().zip(&scores) {
        method.hallucination_score = Some(bootstrap::mean_interval(row, 11));
        method.held = Some(row.iter().filter(|&&s| hallucination::held(s, threshold)).count() as f64 / n.max(1) as f64);
    }
    let (high, low) = (methods[0].accuracy, methods[1].accuracy);
    for method in &mut methods {
        method.gap_closed = ((high - low).abs() > 1e-9).then(|| (method.accuracy - low) / (high - low));
    }
    let ceiling = if args.ceiling {
        let hq_correct = &per_image[0].1;
        // (key in per_image.csv, label, the changed images)
        let mut changed: Vec<(&str, String, Vec<Plane>)> = Vec::new();
        let mut on_high_quality = Vec::with_capacity(n);
        let first_stage_only = cxr_led_models::EnhanceParams { t0: 0, ..params.clone() };
        for result in enhance_all(&model, &test.images, args.batch, &first_stage_only, &mut noise, |_| {})? {
            for i in 0..result.estimate.size()[0] {
                on_high_quality.push(Plane::from_model_tensor(&result.estimate.get(i).clamp(-1.0, 1.0))?);
            }
        }
        changed.push(("ceiling-first-stage", "First stage on the high-quality image".into(), on_high_quality));
        for (key, sigma) in [("ceiling-blur-0.5", 0.5), ("ceiling-blur-1", 1.0)] {
            let blurred = hq_planes.iter().map(|p| crate::degrade::blur_plane(p, sigma)).collect();
            changed.push((key, format!("High quality, Gaussian blur sigma {sigma} px"), blurred));
        }
        // Not a degradation of structure at all: each image's own black and
        // white points (1st and 99th percentiles) forgotten and replaced by
        // the average image's, what a method that cannot see them at best
        // puts back with one linear map. Its cost is the part of the tone no
        // enhancement can know.
        let points: Vec<(f32, f32)> = hq_planes
            .iter()
            .map(|p| (baselines::percentile(p, STRETCH_LOW), baselines::percentile(p, STRETCH_HIGH)))
            .collect();
        let count = points.len().max(1) as f32;
        let average =
            (points.iter().map(|p| p.0).sum::<f32>() / count, points.iter().map(|p| p.1).sum::<f32>() / count);
        let forgotten = hq_planes.iter().zip(&points).map(|(p, &own)| move_points(p, own, average)).collect();
        changed.push((
            "ceiling-average-points",
            "High quality, its 1st and 99th percentiles moved to the average image's".into(),
            forgotten,
        ));
        // Oracles, not methods: each image given the high-quality image's own
        // tone curve. What they recover is what the tone costs, the rest the noise.
        let matched = |planes: &[Plane]| planes.iter().zip(&hq_planes).map(|(p, t)| match_histogram(p, t)).collect();
        let lq_matched = matched(&lq_planes);
        let first_stage = METHODS.iter().position(|(key, _)| *key == "first-stage").expect("a method");
        let first_stage_matched = matched(&outputs[first_stage].0);
        changed.push((
            "oracle-low-quality-tone",
            "Oracle: low quality with the high-quality image's tone curve".into(),
            lq_matched,
        ));
        changed.push((
            "oracle-first-stage-tone",
            "Oracle: first stage on low quality with the high-quality image's tone curve".into(),
            first_stage_matched,
        ));
        let mut ceiling_rows = Vec::new();
        for (key, label, planes) in changed {
            let correct = correct_of(&planes)?;
            let quality = quality_of(&planes, &hq_planes);
            record(key, Some(&quality), &correct);
            let (psnr, ssim) = quality;
            ceiling_rows.push(CeilingRow {
                label,
                accuracy: bootstrap::mean_interval(&correct, 21),
                versus_high_quality: bootstrap::paired_difference(&correct, hq_correct, 22),
                psnr: Some(bootstrap::mean_interval(&psnr, 23)),
                ssim: Some(bootstrap::mean_interval(&ssim, 24)),
            });
        }
        ceiling_rows
    } else {
        Vec::new()
    };
    let native = match &args.native {
        Some(folder) => Some(native_report(folder, args.native_limit, &ranges, &model, params, &classical, args.seed)?),
        None => None,
    };

    let method = bundle.manifest.training.get("method").and_then(|v| v.as_str()).unwrap_or("not recorded").to_string();
    let mut report = EvaluationReport {
        command: command_line.into(),
        device: device::describe(device),
        threads: tch::get_num_threads().into(),
        size: args.size,
        seed: args.seed,
        t0: enhance_params.t0,
        steps: enhance_params.steps,
        first_stage: model.first_stage_name().into(),
        ranges_name: args.ranges.clone(),
        test_images,
        data: summary,
        bundle: BundleSummary {
            name: bundle.manifest.name.clone(),
            version: bundle.manifest.version.clone(),
            sha256: bundle.sha256.clone(),
            description: bundle.manifest.description.clone(),
            random_weights: method.starts_with("none"),
            uncalibrated_check: bundle.manifest.hallucination.is_none(),
            training_method: method,
            training_command: bundle.manifest.training.get("command").and_then(|v| v.as_str()).map(String::from),
        },
        classifier: classifier.config.clone(),
        classifier_sha256: classifier.weights_sha256.clone(),
        simulator_ranges: ranges,
        deviation_index,
        clahe: clahe_params,
        nlm: nlm_params,
        methods,
        native,
        skipped: test.skipped.clone(),
        ceiling,
        figures: Vec::new(),
    };
    let examples: Vec<Vec<&Plane>> =
        (0..args.examples.min(n)).map(|i| outputs.iter().map(|(planes, _)| &planes[i]).collect()).collect();
    report::write(&args.out, &mut report, &examples, &args.curves)?;
    per_image::write(&args.out, &rows)?;
    Ok(report)
}

/// Enhances every image of `stack` (`[N, 1, H, W]`): images no larger than the
/// training tile in batches of `batch`, larger ones one at a time through the
/// daemon's tiled path (full-image attention would not fit). `done(k)` after
/// each batch, with the images done so far.
fn enhance_all(
    model: &LedModel,
    stack: &Tensor,
    batch: i64,
    params: &cxr_led_models::EnhanceParams,
    noise: &mut NoiseSource,
    mut done: impl FnMut(usize),
) -> anyhow::Result<Vec<cxr_led_models::led::Enhancement>> {
    let (n, batch) = (stack.size()[0], batch.max(1));
    let mut results = Vec::new();
    for start in (0..n).step_by(batch as usize) {
        let count = batch.min(n - start);
        if stack.size()[2].max(stack.size()[3]) <= params.tiles.tile {
            results.push(model.enhance_batch(&stack.narrow(0, start, count), params, noise)?);
        } else {
            for i in start..start + count {
                results.push(model.enhance(&stack.narrow(0, i, 1), params, noise)?);
            }
        }
        done((start + count) as usize);
    }
    Ok(results)
}

/// A classical baseline: its key and what it does to a plane.
type Classical<'a> = (&'a str, Box<dyn Fn(&Plane) -> Plane + 'a>);

/// The classical rows of [`METHODS`], in table order.
fn classical_methods<'a>(clahe: &'a ClaheParams, nlm: &'a NlmParams) -> [Classical<'a>; 4] {
    [
        ("clahe", Box::new(|p: &Plane| baselines::clahe(p, clahe))),
        ("histeq", Box::new(baselines::histogram_equalise)),
        ("nlm", Box::new(|p: &Plane| baselines::non_local_means(p, nlm))),
        ("nlm-stretch", Box::new(|p: &Plane| baselines::nlm_stretch(p, nlm))),
    ]
}

/// `image` mapped linearly so that the values `from` go to `to`, clipped to [0, 1].
fn move_points(image: &Plane, from: (f32, f32), to: (f32, f32)) -> Plane {
    let gain = (to.1 - to.0) / (from.1 - from.0).max(1e-6);
    let data = image.data.iter().map(|&v| ((v - from.0) * gain + to.0).clamp(0.0, 1.0)).collect();
    Plane::new(image.width, image.height, data)
}

/// `source` with `reference`'s histogram (same size): the pixel of rank k
/// takes the reference's value of rank k, so the order of the pixels, and
/// with it all structure, stays the source's and the tone curve becomes the
/// reference's.
fn match_histogram(source: &Plane, reference: &Plane) -> Plane {
    let mut order: Vec<usize> = (0..source.data.len()).collect();
    order.sort_by(|&a, &b| source.data[a].total_cmp(&source.data[b]));
    let mut values = reference.data.clone();
    values.sort_by(f32::total_cmp);
    let mut data = vec![0.0; source.data.len()];
    for (rank, &pixel) in order.iter().enumerate() {
        data[pixel] = values[rank * values.len() / order.len()];
    }
    Plane::new(source.width, source.height, data)
}

/// Per-image PSNR and SSIM.
type Quality = (Vec<f64>, Vec<f64>);

/// Per-image PSNR and SSIM of `planes` against `truth`.
fn quality_of(planes: &[Plane], truth: &[Plane]) -> Quality {
    planes.iter().zip(truth).map(|(p, t)| (metrics::psnr(p, t), metrics::ssim(p, t))).unzip()
}

/// PSNR and SSIM of every method on the images of `folder` at their own size,
/// each degraded with parameters seeded by its file name; LED through the
/// daemon's tiled path.
fn native_report(
    folder: &Path,
    limit: usize,
    ranges: &DegradationRanges,
    model: &LedModel,
    params: &cxr_led_models::EnhanceParams,
    classical: &[Classical],
    seed: u64,
) -> anyhow::Result<NativeReport> {
    let mut paths = data::list_images(&[folder.to_owned()])?;
    paths.sort_by(|a, b| data::name_fraction(a, "subset").total_cmp(&data::name_fraction(b, "subset")));
    if limit > 0 {
        paths.truncate(limit);
    }
    // Rows: low quality, the classical methods, first stage, LED; each (planes' quality, seconds).
    let keys: Vec<&str> =
        std::iter::once("low-quality").chain(classical.iter().map(|(k, _)| *k)).chain(["first-stage", "led"]).collect();
    let mut psnr: Vec<Vec<f64>> = vec![Vec::new(); keys.len()];
    let mut ssim: Vec<Vec<f64>> = vec![Vec::new(); keys.len()];
    let mut seconds = vec![0.0f64; keys.len()];
    let (mut sizes, mut dis) = (Vec::new(), Vec::new());
    let mut noise = NoiseSource::new(seed);
    let mut progress = Progress::new("evaluate native", 0, paths.len(), "images");
    let (mut skipped, mut measured) = (Vec::new(), 0usize);
    for (i, path) in paths.iter().enumerate() {
        // One at a time: a folder of 1024-px images need not fit in memory at once.
        let (mut read, unusable) =
            data::read_images(std::slice::from_ref(path), None, LabelledSet::MIN_SIDE, "evaluate native");
        skipped.extend(unusable);
        let Some((_, image)) = read.pop() else { continue };
        measured += 1;
        let size = format!("{}x{}", image.size()[3], image.size()[2]);
        if !sizes.contains(&size) {
            sizes.push(size);
        }
        let (low_quality, drawn) = data::degrade_stack(&image, std::slice::from_ref(path), ranges)?;
        dis.push(drawn[0].deviation_index());
        let truth = Plane::from_model_tensor(&image.get(0))?;
        let lq_plane = Plane::from_model_tensor(&low_quality.get(0))?;
        let mut outputs = vec![lq_plane.clone()];
        for (row, (_, method)) in classical.iter().enumerate() {
            let started = Instant::now();
            outputs.push(method(&lq_plane));
            seconds[row + 1] += started.elapsed().as_secs_f64();
        }
        let result = model.enhance(&low_quality, params, &mut noise)?;
        seconds[keys.len() - 2] += result.timings.estimate.as_secs_f64();
        seconds[keys.len() - 1] += (result.timings.estimate + result.timings.refinement).as_secs_f64();
        outputs.push(Plane::from_model_tensor(&result.estimate.get(0).clamp(-1.0, 1.0))?);
        outputs.push(Plane::from_model_tensor(&result.output.get(0))?);
        for (row, plane) in outputs.iter().enumerate() {
            psnr[row].push(metrics::psnr(plane, &truth));
            ssim[row].push(metrics::ssim(plane, &truth));
        }
        progress.update(i + 1, "");
    }
    anyhow::ensure!(measured > 0, "no usable images under {} ({} skipped)", folder.display(), skipped.len());
    let bar = keys.iter().position(|k| *k == BAR).expect("the bar is a classical method");
    let n = measured as f64;
    let methods = keys
        .iter()
        .enumerate()
        .map(|(row, key)| NativeRow {
            method: key.to_string(),
            label: METHODS.iter().find(|(k, _)| k == key).map_or(key.to_string(), |(_, l)| l.to_string()),
            psnr: bootstrap::mean_interval(&psnr[row], 7),
            ssim: bootstrap::mean_interval(&ssim[row], 8),
            versus_bar: Differences {
                psnr_db: Some(bootstrap::paired_difference(&psnr[row], &psnr[bar], 9)),
                ssim: Some(bootstrap::paired_difference(&ssim[row], &ssim[bar], 10)),
                accuracy: None,
            },
            seconds_per_image: (row > 0).then(|| seconds[row] / n),
        })
        .collect();
    Ok(NativeReport {
        folder: folder.display().to_string(),
        images: measured,
        sizes,
        deviation_index: [
            dis.iter().copied().fold(f64::INFINITY, f64::min),
            mean_std(&dis).0,
            dis.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ],
        methods,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_points_land_where_asked_and_the_rest_follows_linearly() {
        let image = Plane::new(4, 1, vec![0.2, 0.4, 0.6, 0.95]);
        let moved = move_points(&image, (0.2, 0.6), (0.1, 0.9));
        let expected = [0.1, 0.5, 0.9, 1.0]; // 0.95 → 1.6, clipped
        assert!(moved.data.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6), "{:?}", moved.data);
    }

    #[test]
    fn histogram_matching_gives_the_reference_tone_and_keeps_the_order() {
        let reference = Plane::new(4, 2, vec![0.1, 0.5, 0.2, 0.9, -0.3, 0.0, 0.7, 0.4]);
        // A monotone change of the reference (gamma-like, offset): the reference comes back exactly.
        let toned = Plane::new(4, 2, reference.data.iter().map(|v| ((v + 1.0) / 2.0).powf(1.7) + 0.05).collect());
        assert_eq!(match_histogram(&toned, &reference).data, reference.data);
        // Another image keeps its own order and takes the reference's values.
        let other = Plane::new(4, 2, vec![8.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        let matched = match_histogram(&other, &reference);
        assert_eq!(matched.data, vec![0.9, -0.3, 0.0, 0.1, 0.2, 0.4, 0.5, 0.7]);
    }
}
