//! LED inference (Cheng et al. 2023, "Learned Enhancement via Diffusion"):
//! the first stage gives an estimate of the high-quality image (CycleGAN's
//! G_AB, or the paired [`Enhancer`] where the bundle has one), the estimate is
//! noised to timestep t0, and the conditional UNet denoises it with DDIM,
//! conditioned on the low-quality input at every step. With t0 around 200 the
//! diffusion refines the estimate instead of inventing a new image; t0 = 0
//! skips the refinement (the estimate is the output), for a bundle whose
//! refinement measured worse than its first stage.
//!
//! Everything runs at the input's native matrix size through [`TilePlan`], under
//! `no_grad`, in f32, in bf16 (CPU or CUDA) or in f16 (CUDA).

use std::time::{Duration, Instant};

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use crate::bundle::{Bundle, BundleManifest};
pub use crate::manifest::{EnhanceParams, Precision};
use crate::nets::enhancer::{Enhancer, ToneStats};
use crate::nets::generator::ResnetGenerator;
use crate::nets::unet::ConditionalUNet;
use crate::sampling::noise::NoiseSource;
use crate::sampling::sampler::DdimSampler;
use crate::sampling::schedule::NoiseSchedule;
use crate::tiling::{TileConfig, TilePlan};
use crate::{Error, Result};

/// The network that gives the first estimate.
#[derive(Debug)]
enum FirstStage {
    /// CycleGAN's G_AB (boxed: it is four times the enhancer's size on the stack).
    Generator(Box<ResnetGenerator>),
    /// The paired enhancer with its global tone statistics.
    Enhancer(Enhancer),
}

/// Wall-clock time of each stage of one enhancement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// The first stage over all tiles.
    pub estimate: Duration,
    /// All DDIM steps over all tiles.
    pub refinement: Duration,
}

/// The result of [`LedModel::enhance`]: tensors `[1, 1, H, W]` in [-1, 1].
#[derive(Debug)]
pub struct Enhancement {
    /// The final, refined image.
    pub output: Tensor,
    /// The first stage's estimate the refinement started from.
    pub estimate: Tensor,
    /// Time per stage.
    pub timings: Timings,
}

/// The three inference networks of a bundle, on one device.
#[derive(Debug)]
pub struct LedModel {
    stores: Vec<nn::VarStore>,
    networks: [&'static str; 3],
    first_stage: FirstStage,
    g_ba: ResnetGenerator,
    unet: ConditionalUNet,
    schedule: NoiseSchedule,
    device: Device,
    precision: Precision,
}

impl LedModel {
    /// Builds the networks a manifest describes, with freshly initialised weights
    /// (libtorch's generator: call `tch::manual_seed` first for fixed weights).
    pub fn build(manifest: &BundleManifest, device: Device) -> Result<Self> {
        let networks = manifest.networks();
        let stores: Vec<nn::VarStore> = networks.iter().map(|_| nn::VarStore::new(device)).collect();
        let first_stage = match &manifest.enhancer {
            Some(config) => FirstStage::Enhancer(Enhancer::new(&stores[0].root(), config)?),
            None => FirstStage::Generator(Box::new(ResnetGenerator::new(&stores[0].root(), &manifest.generator))),
        };
        let g_ba = ResnetGenerator::new(&stores[1].root(), &manifest.generator);
        let unet = ConditionalUNet::new(&stores[2].root(), &manifest.unet)?;
        let schedule = NoiseSchedule::new(&manifest.schedule)?;
        Ok(Self { stores, networks, first_stage, g_ba, unet, schedule, device, precision: Precision::F32 })
    }

    /// Loads a verified bundle onto `device` in the given precision.
    pub fn from_bundle(bundle: &Bundle, device: Device, precision: Precision) -> Result<Self> {
        let mut model = Self::build(&bundle.manifest, device)?;
        for (name, store) in model.networks.iter().zip(&model.stores) {
            bundle.load_weights(name, store)?;
        }
        model.set_precision(precision)?;
        Ok(model)
    }

    /// Converts the weights to `precision` (f16 on CUDA only).
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        if precision == Precision::F16 && !self.device.is_cuda() {
            return Err(Error::InvalidParams(format!(
                "f16 inference needs a CUDA device; use f32 or bf16 on {:?}",
                self.device
            )));
        }
        for store in &mut self.stores {
            store.set_kind(precision.kind());
        }
        self.precision = precision;
        if self.device.is_cuda() {
            // Fixed tile shapes: let cuDNN pick the fastest kernels once.
            tch::Cuda::cudnn_set_benchmark(true);
        }
        Ok(())
    }

    /// The variable stores in [`BundleManifest::networks`] order (first
    /// stage, g_ba, unet), for saving.
    pub fn var_stores(&self) -> impl Iterator<Item = (&'static str, &nn::VarStore)> {
        self.networks.iter().copied().zip(&self.stores)
    }

    /// Writes this model's weights and `manifest` (with the weight hashes
    /// filled in) to `dir`, then loads the result back, verified. Weights are
    /// always saved in f32.
    pub fn save_bundle(&self, dir: impl AsRef<std::path::Path>, manifest: &BundleManifest) -> Result<Bundle> {
        Bundle::save_stores(dir, manifest, self.var_stores())
    }

    /// What the first stage is, in words (for reports).
    pub fn first_stage_name(&self) -> &'static str {
        match self.first_stage {
            FirstStage::Generator(_) => "G_AB (CycleGAN)",
            FirstStage::Enhancer(_) => "paired enhancer",
        }
    }

    /// The device the networks live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The noise schedule.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// The conditional UNet.
    pub fn unet(&self) -> &ConditionalUNet {
        &self.unet
    }

    /// The multiple every tile side must have for every network.
    pub fn size_multiple(&self) -> i64 {
        let first = match &self.first_stage {
            FirstStage::Generator(_) => ResnetGenerator::size_multiple(),
            FirstStage::Enhancer(enhancer) => enhancer.config().size_multiple(),
        };
        first.max(ResnetGenerator::size_multiple()).max(self.unet.config().size_multiple())
    }

    fn check_image(&self, image: &Tensor) -> Result<(i64, i64)> {
        match image.size().as_slice() {
            &[1, 1, h, w] if h > 0 && w > 0 => Ok((h, w)),
            other => Err(Error::InvalidParams(format!("expected one grayscale image [1, 1, H, W], got {other:?}"))),
        }
    }

    fn run_generator(&self, generator: &ResnetGenerator, image: &Tensor, plan: &TilePlan) -> Result<Tensor> {
        let kind = self.precision.kind();
        plan.run(&[image], |batch| Ok(generator.forward(&batch[0].to_kind(kind))))
    }

    /// A generator over one whole image `[1, 1, H, W]`, tiled.
    fn run_generator_tiled(&self, generator: &ResnetGenerator, image: &Tensor, tiles: &TileConfig) -> Result<Tensor> {
        let _no_grad = tch::no_grad_guard();
        let (h, w) = self.check_image(image)?;
        let image = image.to_device(self.device).to_kind(Kind::Float);
        let plan = TilePlan::new(h, w, tiles, self.size_multiple(), self.device)?;
        self.run_generator(generator, &image, &plan)
    }

    /// The first stage over images `[N, 1, H, W]` in [-1, 1], through `plan`
    /// when given (one image) or whole (a batch, each with its own tone statistics).
    fn run_first_stage(&self, images: &Tensor, plan: Option<&TilePlan>) -> Result<Tensor> {
        let kind = self.precision.kind();
        match (&self.first_stage, plan) {
            (FirstStage::Generator(g_ab), Some(plan)) => self.run_generator(g_ab, images, plan),
            (FirstStage::Generator(g_ab), None) => Ok(g_ab.forward(&images.to_kind(kind)).to_kind(Kind::Float)),
            (FirstStage::Enhancer(enhancer), plan) => {
                let mut outputs = Vec::with_capacity(images.size()[0] as usize);
                for i in 0..images.size()[0] {
                    let intensity = (images.narrow(0, i, 1) + 1.0) / 2.0;
                    let stats = ToneStats::measure(&intensity)?;
                    let stretched = stats.stretch(&intensity);
                    let planes = stats.planes();
                    let enhanced = match plan {
                        Some(plan) => {
                            plan.run(&[&stretched], |batch| Ok(enhancer.forward(&batch[0].to_kind(kind), &planes)))?
                        }
                        None => enhancer.forward(&stretched.to_kind(kind), &planes),
                    };
                    outputs.push(enhanced.clamp(0.0, 1.0) * 2.0 - 1.0);
                }
                Ok(Tensor::cat(&outputs, 0))
            }
        }
    }

    /// The first stage (enhancement) over the whole image, tiled.
    pub fn estimate(&self, image: &Tensor, tiles: &TileConfig) -> Result<Tensor> {
        let _no_grad = tch::no_grad_guard();
        let (h, w) = self.check_image(image)?;
        let image = image.to_device(self.device).to_kind(Kind::Float);
        let plan = TilePlan::new(h, w, tiles, self.size_multiple(), self.device)?;
        self.run_first_stage(&image, Some(&plan))
    }

    /// G_BA (learnt degradation) over the whole image, tiled.
    pub fn degrade(&self, image: &Tensor, tiles: &TileConfig) -> Result<Tensor> {
        self.run_generator_tiled(&self.g_ba, image, tiles)
    }

    /// Enhances one low-quality image `[1, 1, H, W]` in [-1, 1], any H and W,
    /// through tiles. All randomness comes from `noise`, so a given seed
    /// reproduces the pixels.
    pub fn enhance(
        &self,
        low_quality: &Tensor,
        params: &EnhanceParams,
        noise: &mut NoiseSource,
    ) -> Result<Enhancement> {
        let _no_grad = tch::no_grad_guard();
        let (h, w) = self.check_image(low_quality)?;
        let sampler = params.sampler(&self.schedule)?;
        let condition = low_quality.to_device(self.device).to_kind(Kind::Float);
        let plan = TilePlan::new(h, w, &params.tiles, self.size_multiple(), self.device)?;
        let kind = self.precision.kind();
        self.run_led(
            sampler.as_ref(),
            noise,
            || self.run_first_stage(&condition, Some(&plan)),
            |x_t, t| {
                plan.run(&[x_t, &condition], |batch| {
                    let timesteps = Tensor::full([batch[0].size()[0]], t as i64, (Kind::Int64, self.device));
                    Ok(self.unet.forward(&batch[0].to_kind(kind), &batch[1].to_kind(kind), &timesteps))
                })
            },
        )
    }

    /// Enhances a batch of same-size images `[B, 1, H, W]` in one pass each
    /// network call, without tiling: for images no larger than the training
    /// tile (evaluation sets, benchmarks). Noise is drawn for the whole batch.
    pub fn enhance_batch(
        &self,
        images: &Tensor,
        params: &EnhanceParams,
        noise: &mut NoiseSource,
    ) -> Result<Enhancement> {
        let _no_grad = tch::no_grad_guard();
        let size = images.size();
        if size.len() != 4 || size[1] != 1 || size[0] == 0 {
            return Err(Error::InvalidParams(format!("expected grayscale images [B, 1, H, W], got {size:?}")));
        }
        let sampler = params.sampler(&self.schedule)?;
        let kind = self.precision.kind();
        let condition = images.to_device(self.device).to_kind(Kind::Float);
        let condition_in_kind = condition.to_kind(kind);
        self.run_led(
            sampler.as_ref(),
            noise,
            || self.run_first_stage(&condition, None),
            |x_t, t| {
                let timesteps = Tensor::full([size[0]], t as i64, (Kind::Int64, self.device));
                Ok(self.unet.forward(&x_t.to_kind(kind), &condition_in_kind, &timesteps).to_kind(Kind::Float))
            },
        )
    }

    /// The LED stages around a way to run the networks: estimate, noise to
    /// t0 (the first draw from `noise`), DDIM refinement, clamp; timed.
    /// Without a sampler (t0 = 0) the clamped estimate is the output and no
    /// noise is drawn.
    fn run_led(
        &self,
        sampler: Option<&DdimSampler>,
        noise: &mut NoiseSource,
        estimate: impl FnOnce() -> Result<Tensor>,
        mut predict_noise: impl FnMut(&Tensor, usize) -> Result<Tensor>,
    ) -> Result<Enhancement> {
        let started = Instant::now();
        let estimate = estimate()?;
        self.synchronize();
        let estimated = Instant::now();
        let Some(sampler) = sampler else {
            let output = estimate.clamp(-1.0, 1.0);
            return Ok(Enhancement {
                output,
                estimate,
                timings: Timings { estimate: estimated - started, ..Default::default() },
            });
        };
        let start_noise = noise.normal(&estimate.size(), self.device);
        let x_start = self.schedule.q_sample(&estimate, sampler.start(), &start_noise);
        let output = sampler.sample(&x_start, &mut predict_noise, noise)?.clamp(-1.0, 1.0);
        self.synchronize();
        let timings = Timings { estimate: estimated - started, refinement: estimated.elapsed() };
        Ok(Enhancement { output, estimate, timings })
    }

    fn synchronize(&self) {
        if let Device::Cuda(index) = self.device {
            tch::Cuda::synchronize(index as i64);
        }
    }
}
