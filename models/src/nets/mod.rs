//! The networks, each a plain `tch` module with its architecture
//! configuration: CycleGAN's ResNet [`generator`] (G_AB, G_BA), the paired
//! first-stage [`enhancer`], the PatchGAN [`discriminator`] (training only) and
//! the conditional [`unet`] of the diffusion model.

pub mod discriminator;
pub mod enhancer;
pub mod generator;
pub mod unet;
