//! The LED models for cxr-led: everything that touches tensors, nothing that touches DICOM.
//!
//! One folder or module per layer, each importing only those below it:
//! - [`nets`]: the networks: CycleGAN's ResNet generator (G_AB enhances,
//!   G_BA degrades), the paired first-stage enhancer (global tone statistics
//!   plus a pixel-unshuffled UNet, trained with simulator pairs on a CPU), the
//!   PatchGAN 70x70 discriminator (training only) and the conditional UNet
//!   that predicts the noise, conditioned on the low-quality image by channel
//!   concatenation (LED, Cheng et al. 2023).
//! - [`sampling`]: deterministic noise from a seed (the daemon seeds it from
//!   the SOP Instance UID and the bundle hash), the noise schedule (forward
//!   process, epsilon-prediction loss) and DDPM/DDIM sampling.
//! - [`tiling`]: any matrix size through overlapping, blended, batched tiles.
//! - [`manifest`]: `bundle.toml` as data (architecture, inference defaults,
//!   the hallucination check's calibration); [`presets`] names architectures
//!   (`tiny` for tests, `default` for training).
//! - [`bundle`]: the model bundle on disk (safetensors + `bundle.toml`, sha256 checked).
//! - [`led`]: LED inference, the first stage's estimate refined by
//!   conditional diffusion from t0 (or not, at t0 = 0).
//! - [`hallucination`]: the hallucination-check score and doubt map of an
//!   enhanced image against its low-quality input.
//! - [`device`]: choosing CPU or GPU from a string; [`error`]: the one error type.
//!
//! Images are `[N, 1, H, W]` float tensors scaled to [-1, 1], with -1 black.

pub mod bundle;
pub mod device;
pub mod error;
pub mod hallucination;
pub mod led;
pub mod manifest;
pub mod nets;
pub mod presets;
pub mod sampling;
pub mod tiling;

pub use bundle::Bundle;
pub use error::{Error, Result};
pub use led::LedModel;
pub use manifest::{BundleManifest, EnhanceParams, Precision};
