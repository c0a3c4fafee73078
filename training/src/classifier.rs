//! The evaluation classifier: a ResNet-18 (He et al. 2016, torchvision
//! layout: conv 7x7/2, max-pool, four stages of two BasicBlocks, batch norm,
//! average pool, fc) with a one-channel input, trained on a labelled set to
//! measure whether enhancement restores diagnostic information (the LED
//! study's Table 1: accuracy on high-quality, low-quality and enhanced images).
//!
//! `width` scales every stage (64 is torchvision's ResNet-18; 16 trains on a
//! 2-core CPU in minutes) and `size` is the side the network sees: inputs of
//! any size are area-resampled to it inside [`ResNet18::forward_t`], so the
//! training images and every evaluated version go through the same resampling.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use cxr_led_models::device;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::checkpoint;
use crate::data::{self, Split};
use crate::progress::{append_csv, Progress, StopFlag};

/// File name of the exported classifier weights (its config is beside it as `classifier.toml`).
pub const WEIGHTS_FILE: &str = "classifier.safetensors";
/// File name of the exported classifier description.
pub const CONFIG_FILE: &str = "classifier.toml";

/// What a classifier is: architecture width, input side and class names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClassifierConfig {
    /// Always "resnet18".
    pub architecture: String,
    /// Channels of the first stage (64 in torchvision; stages use 1x, 2x, 4x, 8x).
    pub width: i64,
    /// Side the network sees; inputs are area-resampled to it.
    pub size: i64,
    /// Class names; a label is an index into this list.
    pub classes: Vec<String>,
    /// How it was trained and how well it did (free-form, for the report).
    #[serde(default)]
    pub training: toml::Table,
}

fn conv(p: nn::Path, c_in: i64, c_out: i64, kernel: i64, padding: i64, stride: i64) -> nn::Conv2D {
    nn::conv2d(p, c_in, c_out, kernel, nn::ConvConfig { stride, padding, bias: false, ..Default::default() })
}

/// A BasicBlock: two 3x3 convolutions with batch norm and a shortcut
/// (1x1 convolution + batch norm where the shape changes).
#[derive(Debug)]
struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl BasicBlock {
    fn new(p: nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            (
                conv(&p / "downsample" / "0", c_in, c_out, 1, 0, stride),
                nn::batch_norm2d(&p / "downsample" / "1", c_out, Default::default()),
            )
        });
        Self {
            conv1: conv(&p / "conv1", c_in, c_out, 3, 1, stride),
            bn1: nn::batch_norm2d(&p / "bn1", c_out, Default::default()),
            conv2: conv(&p / "conv2", c_out, c_out, 3, 1, 1),
            bn2: nn::batch_norm2d(&p / "bn2", c_out, Default::default()),
            downsample,
        }
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs.apply(&self.conv1).apply_t(&self.bn1, train).relu().apply(&self.conv2).apply_t(&self.bn2, train);
        let shortcut = match &self.downsample {
            Some((conv, bn)) => xs.apply(conv).apply_t(bn, train),
            None => xs.shallow_clone(),
        };
        (shortcut + ys).relu()
    }
}

/// ResNet-18 with a one-channel input (parameter names as torchvision's).
#[derive(Debug)]
pub struct ResNet18 {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    stages: Vec<BasicBlock>,
    fc: nn::Linear,
    size: i64,
}

impl ResNet18 {
    /// Builds the network under `p` for `config`.
    pub fn new(p: &nn::Path, config: &ClassifierConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(config.architecture == "resnet18", "unknown classifier architecture {:?}", config.architecture);
        anyhow::ensure!(config.width >= 1 && config.size >= 32, "classifier width must be >= 1 and size >= 32");
        let w = config.width;
        let mut stages = Vec::new();
        for (i, (c_in, c_out, stride)) in
            [(w, w, 1), (w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 8 * w, 2)].into_iter().enumerate()
        {
            let layer = p / format!("layer{}", i + 1);
            stages.push(BasicBlock::new(&layer / "0", c_in, c_out, stride));
            stages.push(BasicBlock::new(&layer / "1", c_out, c_out, 1));
        }
        Ok(Self {
            conv1: conv(p / "conv1", 1, w, 7, 3, 2),
            bn1: nn::batch_norm2d(p / "bn1", w, Default::default()),
            stages,
            fc: nn::linear(p / "fc", 8 * w, config.classes.len() as i64, Default::default()),
            size: config.size,
        })
    }
}

impl ModuleT for ResNet18 {
    /// Logits `[N, classes]` of images `[N, 1, H, W]` in [-1, 1].
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let size = xs.size();
        let xs = if size[2] != self.size || size[3] != self.size {
            xs.adaptive_avg_pool2d([self.size, self.size])
        } else {
            xs.shallow_clone()
        };
        let mut ys =
            xs.apply(&self.conv1).apply_t(&self.bn1, train).relu().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for block in &self.stages {
            ys = ys.apply_t(block, train);
        }
        ys.adaptive_avg_pool2d([1, 1]).flat_view().apply(&self.fc)
    }
}

/// A trained classifier on a device.
#[derive(Debug)]
pub struct Classifier {
    /// What it is.
    pub config: ClassifierConfig,
    /// sha256 of the weights file it was loaded from (empty for a fresh
    /// network): `classifier.toml` says how a build was trained, this says
    /// which build it is (rebuilds on other hosts differ in the last bits).
    pub weights_sha256: String,
    store: nn::VarStore,
    net: ResNet18,
}

impl Classifier {
    /// A fresh network (libtorch's initialisation).
    pub fn build(config: ClassifierConfig, device: Device) -> anyhow::Result<Self> {
        let store = nn::VarStore::new(device);
        let net = ResNet18::new(&store.root(), &config)?;
        Ok(Self { config, weights_sha256: String::new(), store, net })
    }

    /// Loads `dir/classifier.toml` and `dir/classifier.safetensors`.
    pub fn load(dir: &Path, device: Device) -> anyhow::Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("reading {}; train one with `cxr-led-train classifier --out DIR`", path.display())
        })?;
        let config: ClassifierConfig = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let mut classifier = Self::build(config, device)?;
        let weights = dir.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&weights).with_context(|| format!("reading {}", weights.display()))?;
        classifier.weights_sha256 = cxr_led_models::bundle::sha256_hex(&bytes);
        classifier.store.load(&weights).with_context(|| format!("loading {}", weights.display()))?;
        Ok(classifier)
    }

    /// Writes the weights and the config into `dir`.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        checkpoint::save_store(dir, WEIGHTS_FILE.trim_end_matches(".safetensors"), &self.store)?;
        std::fs::write(dir.join(CONFIG_FILE), toml::to_string_pretty(&self.config)?)
            .with_context(|| format!("writing {}", dir.join(CONFIG_FILE).display()))
    }

    /// Predicted labels of images `[N, 1, H, W]` in [-1, 1], in batches.
    pub fn predict(&self, images: &Tensor, batch: i64) -> anyhow::Result<Vec<i64>> {
        let _no_grad = tch::no_grad_guard();
        let device = self.store.device();
        let count = images.size()[0];
        let mut labels = Vec::with_capacity(count as usize);
        for start in (0..count).step_by(batch.max(1) as usize) {
            let n = batch.min(count - start);
            let logits = self.net.forward_t(&images.narrow(0, start, n).to_device(device).to_kind(Kind::Float), false);
            labels.extend(Vec::<i64>::try_from(&logits.argmax(1, false).to_device(Device::Cpu))?);
        }
        Ok(labels)
    }
}

/// Fraction of `predicted` equal to `truth`.
pub fn accuracy(predicted: &[i64], truth: &[i64]) -> f64 {
    let correct = predicted.iter().zip(truth).filter(|(p, t)| p == t).count();
    correct as f64 / truth.len().max(1) as f64
}

/// `classifier` options.
#[derive(Debug, Args)]
pub struct ClassifierArgs {
    /// A class and a folder of its images as NAME=DIR (repeat; at least two classes).
    #[arg(long = "class", value_name = "NAME=DIR")]
    pub classes: Vec<String>,
    /// Or: a folder whose subfolders are the classes.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output folder: checkpoints, metrics.csv, classifier.safetensors + classifier.toml (resumed when it holds a checkpoint).
    #[arg(long)]
    pub out: PathBuf,
    /// Side the network sees (224 as in the LED study; 128 trains ~3x faster).
    #[arg(long, default_value_t = 224)]
    pub size: i64,
    /// Side images are loaded at (augmentation crops from it, then resamples to --size).
    #[arg(long, default_value_t = 224)]
    pub load_size: u32,
    /// First-stage channels (64 is torchvision's ResNet-18; 16 for a CPU).
    #[arg(long, default_value_t = 64)]
    pub width: i64,
    /// Total epochs (a resumed run continues up to this total).
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    pub batch: i64,
    /// AdamW peak learning rate (cosine decay to 5% over the run).
    #[arg(long, default_value_t = 1e-3)]
    pub learning_rate: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 1e-4)]
    pub weight_decay: f64,
    /// Use at most this many training images (balanced by taking a name-hashed subset); 0: all.
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Steps between metrics rows and checkpoints (validation runs at every epoch end).
    #[arg(long, default_value_t = 50)]
    pub log_every: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Seed of initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Progress saved with each checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClassifierState {
    /// Optimiser steps done.
    pub step: usize,
    /// Best validation accuracy so far (the exported weights).
    pub best_validation_accuracy: f64,
    /// Step of the best validation accuracy.
    pub best_step: usize,
    /// Test accuracy on high-quality images, once training finished.
    pub test_accuracy: Option<f64>,
}

/// Images and labels of one split, loaded on the CPU.
pub struct LabelledSet {
    /// `[N, 1, S, S]` in [-1, 1].
    pub images: Tensor,
    /// `[N]` int64.
    pub labels: Tensor,
    /// The files, in row order.
    pub paths: Vec<PathBuf>,
    /// Files of the split that could not be read (named on stderr), not in the set.
    pub skipped: Vec<data::Skipped>,
}

impl LabelledSet {
    /// Smallest side of a usable image (a smaller one would be mostly interpolation).
    pub const MIN_SIDE: u32 = 32;

    /// Loads `items` at `side`, keeping at most `limit` (0: all) chosen by name
    /// hash; unreadable or tiny files are named, skipped and listed in `skipped`.
    pub fn load(mut items: Vec<(PathBuf, i64)>, side: u32, limit: usize) -> anyhow::Result<Self> {
        if limit > 0 && items.len() > limit {
            items.sort_by(|a, b| data::name_fraction(&a.0, "subset").total_cmp(&data::name_fraction(&b.0, "subset")));
            items.truncate(limit);
            items.sort();
        }
        let paths: Vec<PathBuf> = items.iter().map(|(p, _)| p.clone()).collect();
        let (read, skipped) = data::read_images(&paths, Some(side), Self::MIN_SIDE, "images");
        anyhow::ensure!(
            !read.is_empty(),
            "no usable images in this split ({} listed, {} skipped)",
            items.len(),
            skipped.len()
        );
        let label_of: std::collections::HashMap<&PathBuf, i64> = items.iter().map(|(p, l)| (p, *l)).collect();
        let labels: Vec<i64> = read.iter().map(|(p, _)| label_of[p]).collect();
        let images: Vec<Tensor> = read.iter().map(|(_, image)| image.shallow_clone()).collect();
        Ok(Self {
            images: Tensor::cat(&images, 0),
            labels: Tensor::from_slice(&labels),
            paths: read.into_iter().map(|(p, _)| p).collect(),
            skipped,
        })
    }

    /// Labels as a vector.
    pub fn label_vec(&self) -> Vec<i64> {
        Vec::<i64>::try_from(&self.labels).expect("labels are built from an i64 slice")
    }
}

/// Random horizontal flips and random crops of 80-100% of the side at a
/// random position, resampled back to the batch side.
fn augment(images: &Tensor, rng: &mut impl Rng) -> Tensor {
    let side = images.size()[3];
    let rows: Vec<Tensor> = (0..images.size()[0])
        .map(|i| {
            let mut image = images.narrow(0, i, 1);
            if rng.gen_bool(0.5) {
                image = image.flip([3]);
            }
            let crop = (side as f64 * rng.gen_range(0.8..=1.0)).round() as i64;
            let (top, left) = (rng.gen_range(0..=side - crop), rng.gen_range(0..=side - crop));
            image.narrow(2, top, crop).narrow(3, left, crop).upsample_bilinear2d([side, side], false, None, None)
        })
        .collect();
    Tensor::cat(&rows, 0)
}

/// Mean cross-entropy and accuracy of the classifier on a set (eval mode).
fn validate(net: &ResNet18, set: &LabelledSet, batch: i64, device: Device) -> (f64, f64) {
    let _no_grad = tch::no_grad_guard();
    let count = set.images.size()[0];
    let (mut loss, mut correct) = (0.0, 0.0);
    for start in (0..count).step_by(batch as usize) {
        let n = batch.min(count - start);
        let logits = net.forward_t(&set.images.narrow(0, start, n).to_device(device), false);
        let labels = set.labels.narrow(0, start, n).to_device(device);
        loss += logits.cross_entropy_for_logits(&labels).double_value(&[]) * n as f64;
        correct += logits.argmax(1, false).eq_tensor(&labels).to_kind(Kind::Float).sum(Kind::Float).double_value(&[]);
    }
    (loss / count as f64, correct / count as f64)
}

/// The training images of epoch `epoch` in a fixed shuffled order (seed, epoch).
fn epoch_order(count: usize, seed: u64, epoch: usize) -> Vec<i64> {
    let mut order: Vec<i64> = (0..count as i64).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
        seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    ));
    order
}

/// One row of the classifier's `metrics.csv`; the validation columns are
/// filled at the end of each epoch.
#[derive(Serialize)]
struct MetricsRow {
    step: usize,
    epoch: f64,
    learning_rate: f64,
    train_loss: f64,
    train_accuracy: f64,
    validation_loss: Option<f64>,
    validation_accuracy: Option<f64>,
}

/// Runs `cxr-led-train classifier`: returns the final state.
pub fn train(args: &ClassifierArgs, command_line: &str) -> anyhow::Result<ClassifierState> {
    let device = device::parse_device(&args.device)?;
    let classes = data::classes(&args.classes, args.data.as_deref())?;
    anyhow::ensure!(args.batch >= 2, "--batch must be at least 2 (batch norm)");
    anyhow::ensure!(args.log_every >= 1 && args.epochs >= 1, "--log-every and --epochs must be at least 1");
    anyhow::ensure!(
        args.size <= args.load_size as i64 * 2,
        "--size {} is much larger than --load-size {}",
        args.size,
        args.load_size
    );
    let train_set = LabelledSet::load(data::labelled_split(&classes, Split::Train)?, args.load_size, args.limit)?;
    let val_set = LabelledSet::load(data::labelled_split(&classes, Split::Validation)?, args.load_size, 0)
        .context("the validation split is empty: the labelled set needs more images (10% go to validation)")?;
    let count = train_set.paths.len();
    let steps_per_epoch = count.div_ceil(args.batch as usize);
    let total = steps_per_epoch * args.epochs;
    let config = ClassifierConfig {
        architecture: "resnet18".into(),
        width: args.width,
        size: args.size,
        classes: classes.iter().map(|c| c.name.clone()).collect(),
        training: toml::Table::new(),
    };
    tch::manual_seed(args.seed as i64);
    let mut classifier = Classifier::build(config, device)?;
    let mut state: ClassifierState = match checkpoint::load_state::<ClassifierState>(&args.out)? {
        Some(state) => {
            checkpoint::load_store(&args.out, "last", &mut classifier.store)?;
            eprintln!("classifier: resuming at step {}", state.step);
            state
        }
        None => ClassifierState::default(),
    };
    eprintln!(
        "classifier: {count} training and {} validation images, {} classes {:?}, ResNet-18 width {} at {}px, {total} steps ({} epochs)",
        val_set.paths.len(),
        classes.len(),
        classifier.config.classes,
        args.width,
        args.size,
        args.epochs
    );
    let mut optimizer =
        nn::AdamW { wd: args.weight_decay, ..Default::default() }.build(&classifier.store, args.learning_rate)?;
    let stop = StopFlag::install()?;
    let csv = args.out.join("metrics.csv");
    std::fs::create_dir_all(&args.out)?;
    let mut progress = Progress::new("classifier", state.step, total, "steps");
    let (mut loss_sum, mut correct, mut seen) = (0.0, 0.0, 0usize);
    let save_checkpoint = |classifier: &Classifier, state: &ClassifierState| -> anyhow::Result<()> {
        checkpoint::save_store(&args.out, "last", &classifier.store)?;
        checkpoint::save_state(&args.out, state)
    };
    while state.step < total {
        if stop.raised() {
            progress.finish();
            save_checkpoint(&classifier, &state)?;
            eprintln!("classifier: stopped at step {}; run the same command again to resume", state.step);
            return Ok(state);
        }
        let (epoch, within) = (state.step / steps_per_epoch, state.step % steps_per_epoch);
        let order = epoch_order(count, args.seed, epoch);
        let end = ((within + 1) * args.batch as usize).min(count);
        let index = Tensor::from_slice(&order[within * args.batch as usize..end]);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed.wrapping_add(state.step as u64 + 1));
        let images = augment(&train_set.images.index_select(0, &index), &mut rng).to_device(device);
        let labels = train_set.labels.index_select(0, &index).to_device(device);
        let progress_fraction = state.step as f64 / total.max(1) as f64;
        let learning_rate =
            args.learning_rate * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * progress_fraction).cos()));
        optimizer.set_lr(learning_rate);
        let logits = classifier.net.forward_t(&images, true);
        let loss = logits.cross_entropy_for_logits(&labels);
        optimizer.backward_step(&loss);
        let n = index.size()[0] as usize;
        loss_sum += loss.double_value(&[]) * n as f64;
        correct += logits.argmax(1, false).eq_tensor(&labels).to_kind(Kind::Float).sum(Kind::Float).double_value(&[]);
        seen += n;
        state.step += 1;
        let epoch_end = state.step % steps_per_epoch == 0;
        if epoch_end || state.step % args.log_every == 0 {
            let (train_loss, train_accuracy) = (loss_sum / seen as f64, correct / seen as f64);
            (loss_sum, correct, seen) = (0.0, 0.0, 0);
            let mut row = MetricsRow {
                step: state.step,
                epoch: state.step as f64 / steps_per_epoch as f64,
                learning_rate,
                train_loss,
                train_accuracy,
                validation_loss: None,
                validation_accuracy: None,
            };
            if epoch_end {
                let (val_loss, val_accuracy) = validate(&classifier.net, &val_set, args.batch.max(64), device);
                (row.validation_loss, row.validation_accuracy) = (Some(val_loss), Some(val_accuracy));
                progress.finish();
                eprintln!(
                    "classifier: epoch {} train loss {train_loss:.4} acc {train_accuracy:.3}, validation loss {val_loss:.4} acc {val_accuracy:.3}",
                    state.step / steps_per_epoch
                );
                if val_accuracy > state.best_validation_accuracy || state.best_step == 0 {
                    state.best_validation_accuracy = val_accuracy;
                    state.best_step = state.step;
                    classifier.save(&args.out)?;
                }
            }
            append_csv(&csv, &row)?;
            save_checkpoint(&classifier, &state)?;
        }
        progress.update(state.step, &format!("loss {:.4}", loss.double_value(&[])));
    }
    // Final figures with the best weights, on the held-out high-quality test split.
    let mut best = Classifier::load(&args.out, device)?;
    let test_set = LabelledSet::load(data::labelled_split(&classes, Split::Test)?, args.load_size, 0)?;
    let test_accuracy = accuracy(&best.predict(&test_set.images, 64)?, &test_set.label_vec());
    state.test_accuracy = Some(test_accuracy);
    let training = &mut best.config.training;
    training.insert("command".into(), command_line.into());
    training.insert("steps".into(), (state.step as i64).into());
    training.insert("epochs".into(), (args.epochs as i64).into());
    training.insert("best-step".into(), (state.best_step as i64).into());
    training.insert("validation-accuracy".into(), state.best_validation_accuracy.into());
    training.insert("test-accuracy-high-quality".into(), test_accuracy.into());
    training.insert("images-train".into(), (count as i64).into());
    training.insert("images-validation".into(), (val_set.paths.len() as i64).into());
    training.insert("images-test".into(), (test_set.paths.len() as i64).into());
    training.insert("load-size".into(), i64::from(args.load_size).into());
    training.insert("device".into(), device::describe(device).into());
    best.save(&args.out)?;
    checkpoint::save_state(&args.out, &state)?;
    eprintln!(
        "classifier: best validation accuracy {:.3} at step {}, test accuracy (high quality) {test_accuracy:.3}; wrote {}",
        state.best_validation_accuracy,
        state.best_step,
        args.out.join(WEIGHTS_FILE).display()
    );
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet18_has_torchvision_shape_and_any_input_size() {
        let config = ClassifierConfig {
            architecture: "resnet18".into(),
            width: 4,
            size: 64,
            classes: vec!["a".into(), "b".into(), "c".into()],
            training: toml::Table::new(),
        };
        let classifier = Classifier::build(config, Device::Cpu).unwrap();
        let variables = classifier.store.variables();
        assert_eq!(variables["conv1.weight"].size(), vec![4, 1, 7, 7]);
        assert_eq!(variables["layer4.0.downsample.0.weight"].size(), vec![32, 16, 1, 1]);
        assert_eq!(variables["fc.weight"].size(), vec![3, 32]);
        let convs = variables.keys().filter(|k| k.ends_with("weight") && variables[*k].dim() == 4).count();
        assert_eq!(convs, 1 + 16 + 3, "stem, 8 blocks x 2 convs, 3 downsample convs");
        let logits = classifier.net.forward_t(&Tensor::zeros([2, 1, 100, 90], (Kind::Float, Device::Cpu)), false);
        assert_eq!(logits.size(), vec![2, 3]);
    }

    #[test]
    fn epoch_order_is_a_fixed_permutation() {
        let a = epoch_order(50, 3, 1);
        assert_eq!(a, epoch_order(50, 3, 1));
        assert_ne!(a, epoch_order(50, 3, 2));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<i64>>());
    }

    #[test]
    fn accuracy_counts_matches() {
        assert_eq!(accuracy(&[0, 1, 1, 0], &[0, 1, 0, 0]), 0.75);
    }
}
