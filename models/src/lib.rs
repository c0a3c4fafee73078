//! The LED models for cxr-led: everything that touches tensors, nothing that touches DICOM.
//!
//! One stage per module, in the order an image meets them:
//! - [`generator`]: CycleGAN ResNet generator (G_AB enhances, G_BA degrades).
//! - [`enhancer`]: the paired first stage (global tone statistics plus a
//!   pixel-unshuffled UNet), trained with simulator pairs on a CPU.
//! - [`discriminator`]: PatchGAN 70x70 discriminator (training only).
//! - [`unet`]: conditional UNet that predicts the noise, conditioned on the
//!   low-quality image by channel concatenation (LED, Cheng et al. 2023).
//! - [`schedule`]: the noise schedule, the forward process q(x_t | x_0) and the
//!   epsilon-prediction loss.
//! - [`sampler`]: DDPM ancestral and DDIM sampling.
//! - [`tiling`]: any matrix size through overlapping, blended, batched tiles.
//! - [`led`]: LED inference, the first stage's estimate refined by
//!   conditional diffusion from t0 (or not, at t0 = 0).
//! - [`hallucination`]: the hallucination-check score and doubt map of an
//!   enhanced image against its low-quality input.
//! - [`noise`]: deterministic Gaussian noise from a seed (the daemon seeds it
//!   from the SOP Instance UID and the bundle hash).
//! - [`bundle`]: the model bundle on disk (safetensors + `bundle.toml`, sha256 checked).
//! - [`device`]: choosing CPU or GPU from a string.
//! - [`presets`]: named architectures (`tiny` for tests, `default` for training).
//!
//! Images are `[N, 1, H, W]` float tensors scaled to [-1, 1], with -1 black.

pub mod bundle;
pub mod device;
pub mod discriminator;
pub mod enhancer;
pub mod error;
pub mod generator;
pub mod hallucination;
pub mod led;
pub mod noise;
pub mod presets;
pub mod sampler;
pub mod schedule;
pub mod tiling;
pub mod unet;

pub use bundle::{Bundle, BundleManifest};
pub use error::{Error, Result};
pub use led::{EnhanceParams, LedModel, Precision};
