//! PatchGAN 70x70 discriminator (Isola et al. 2017; the CycleGAN authors'
//! `NLayerDiscriminator` with 3 layers): 4x4 convolutions, each output logit
//! sees a 70x70 patch of the input. Instance norm, LeakyReLU 0.2, no sigmoid
//! (the loss decides: LSGAN in CycleGAN).

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::Tensor;

/// Architecture of a [`PatchDiscriminator`], as written in `bundle.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DiscriminatorConfig {
    /// Channels of the image (1 for grayscale).
    pub image_channels: i64,
    /// Width of the first layer (`ndf`; CycleGAN uses 64).
    pub base_channels: i64,
    /// Stride-2 layers after the first; 3 gives the 70x70 receptive field.
    pub layers: usize,
}

impl Default for DiscriminatorConfig {
    fn default() -> Self {
        Self { image_channels: 1, base_channels: 64, layers: 3 }
    }
}

/// The PatchGAN: `[N, C, H, W]` to a map of real/fake logits `[N, 1, h, w]`.
#[derive(Debug)]
pub struct PatchDiscriminator {
    convs: Vec<nn::Conv2D>,
    head: nn::Conv2D,
}

fn conv4(vs: nn::Path, in_channels: i64, out_channels: i64, stride: i64) -> nn::Conv2D {
    nn::conv2d(vs, in_channels, out_channels, 4, nn::ConvConfig { stride, padding: 1, ..Default::default() })
}

/// LeakyReLU with slope 0.2 (tch's `leaky_relu` has libtorch's fixed 0.01).
fn leaky_relu(xs: &Tensor) -> Tensor {
    xs.maximum(&(xs * 0.2))
}

impl PatchDiscriminator {
    /// Creates the discriminator's variables under `vs`.
    pub fn new(vs: &nn::Path, config: &DiscriminatorConfig) -> Self {
        let width = config.base_channels;
        let mut convs = vec![conv4(vs / "convs" / 0, config.image_channels, width, 2)];
        let mut channels = width;
        for i in 1..=config.layers {
            // The last of these keeps the resolution (stride 1), as in pix2pix.
            let stride = if i == config.layers { 1 } else { 2 };
            let next = width * (1 << i.min(3));
            convs.push(conv4(vs / "convs" / i, channels, next, stride));
            channels = next;
        }
        let head = conv4(vs / "head", channels, 1, 1);
        Self { convs, head }
    }
}

impl Module for PatchDiscriminator {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let mut ys = leaky_relu(&xs.apply(&self.convs[0]));
        for conv in &self.convs[1..] {
            let normed = ys.apply(conv).instance_norm::<Tensor>(None, None, None, None, true, 0.1, 1e-5, false);
            ys = leaky_relu(&normed);
        }
        ys.apply(&self.head)
    }
}
