//! CycleGAN ResNet generator (Zhu et al. 2017, the authors' `ResnetGenerator`):
//! 7x7 stem, two stride-2 downsamplings, residual blocks, two transposed-conv
//! upsamplings, 7x7 head with tanh. Reflection padding and instance norm
//! without affine parameters, as in the CycleGAN code. G_AB maps low-quality to
//! high-quality, G_BA the other way (it learns the degradation).
//!
//! Any input size works: the input is padded (replicate) to a multiple of 4,
//! and to at least 8, and the output cropped back.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::Tensor;

/// Architecture of a [`ResnetGenerator`], as written in `bundle.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Channels of the image in and out (1 for grayscale).
    pub image_channels: i64,
    /// Width of the first layer (`ngf`; CycleGAN uses 64).
    pub base_channels: i64,
    /// Residual blocks at the lowest resolution (CycleGAN: 9 for 256 px).
    pub residual_blocks: usize,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self { image_channels: 1, base_channels: 64, residual_blocks: 9 }
    }
}

/// Number of stride-2 stages; the input is padded to a multiple of `2^DOWNSAMPLINGS`.
const DOWNSAMPLINGS: usize = 2;

fn conv(vs: nn::Path, in_channels: i64, out_channels: i64, kernel: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let config = nn::ConvConfig { stride, padding, ..Default::default() };
    nn::conv2d(vs, in_channels, out_channels, kernel, config)
}

/// Instance norm without learnt affine parameters (CycleGAN's `norm='instance'`).
fn instance_norm(xs: &Tensor) -> Tensor {
    xs.instance_norm::<Tensor>(None, None, None, None, true, 0.1, 1e-5, false)
}

/// Two 3x3 convolutions with reflection padding and a skip connection.
#[derive(Debug)]
struct ResidualBlock {
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
}

impl ResidualBlock {
    fn new(vs: nn::Path, channels: i64) -> Self {
        Self {
            conv1: conv(&vs / "conv1", channels, channels, 3, 1, 0),
            conv2: conv(&vs / "conv2", channels, channels, 3, 1, 0),
        }
    }
}

impl Module for ResidualBlock {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let ys = instance_norm(&xs.reflection_pad2d([1, 1, 1, 1]).apply(&self.conv1)).relu();
        let ys = instance_norm(&ys.reflection_pad2d([1, 1, 1, 1]).apply(&self.conv2));
        xs + ys
    }
}

/// The CycleGAN ResNet generator; maps `[N, C, H, W]` in [-1, 1] to the same shape.
#[derive(Debug)]
pub struct ResnetGenerator {
    stem: nn::Conv2D,
    down: Vec<nn::Conv2D>,
    blocks: Vec<ResidualBlock>,
    up: Vec<nn::ConvTranspose2D>,
    head: nn::Conv2D,
}

impl ResnetGenerator {
    /// Creates the generator's variables under `vs`.
    pub fn new(vs: &nn::Path, config: &GeneratorConfig) -> Self {
        let width = config.base_channels;
        let stem = conv(vs / "stem", config.image_channels, width, 7, 1, 0);
        let down = (0..DOWNSAMPLINGS)
            .map(|i| {
                let channels = width << i;
                conv(vs / "down" / i, channels, channels * 2, 3, 2, 1)
            })
            .collect();
        let bottleneck = width << DOWNSAMPLINGS;
        let blocks = (0..config.residual_blocks).map(|i| ResidualBlock::new(vs / "blocks" / i, bottleneck)).collect();
        let up = (0..DOWNSAMPLINGS)
            .map(|i| {
                let channels = bottleneck >> i;
                let config = nn::ConvTransposeConfig { stride: 2, padding: 1, output_padding: 1, ..Default::default() };
                nn::conv_transpose2d(vs / "up" / i, channels, channels / 2, 3, config)
            })
            .collect();
        let head = conv(vs / "head", width, config.image_channels, 7, 1, 0);
        Self { stem, down, blocks, up, head }
    }

    /// The multiple of which height and width are padded to internally.
    pub const fn size_multiple() -> i64 {
        1 << DOWNSAMPLINGS
    }
}

/// Pads `[N, C, H, W]` at the bottom and right (replicating the edge) up to
/// multiples of `multiple` and at least `minimum`; returns the padded tensor.
pub(crate) fn pad_to_multiple(xs: &Tensor, multiple: i64, minimum: i64) -> Tensor {
    let (h, w) = (xs.size()[2], xs.size()[3]);
    let target = |n: i64| ((n.max(minimum) + multiple - 1) / multiple) * multiple;
    let pad_h = target(h) - h;
    let pad_w = target(w) - w;
    if pad_h == 0 && pad_w == 0 {
        xs.shallow_clone()
    } else {
        xs.replication_pad2d([0, pad_w, 0, pad_h])
    }
}

impl Module for ResnetGenerator {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let (h, w) = (xs.size()[2], xs.size()[3]);
        // Reflection padding needs at least 2 pixels at the bottleneck.
        let padded = pad_to_multiple(xs, Self::size_multiple(), 2 * Self::size_multiple());
        let mut ys = instance_norm(&padded.reflection_pad2d([3, 3, 3, 3]).apply(&self.stem)).relu();
        for conv in &self.down {
            ys = instance_norm(&ys.apply(conv)).relu();
        }
        for block in &self.blocks {
            ys = ys.apply(block);
        }
        for conv in &self.up {
            ys = instance_norm(&ys.apply(conv)).relu();
        }
        let ys = ys.reflection_pad2d([3, 3, 3, 3]).apply(&self.head).tanh();
        ys.narrow(2, 0, h).narrow(3, 0, w)
    }
}
