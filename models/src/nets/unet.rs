//! Conditional UNet noise predictor, laid out like diffusers' `UNet2DModel`
//! (the network LED trains) so that parameter names match its state dict:
//! `conv_in`, `time_embedding.linear_1`, `down_blocks.{i}.resnets.{j}.conv1`,
//! `down_blocks.{i}.attentions.{j}.to_q`, `mid_block.*`, `up_blocks.*`,
//! `conv_norm_out`, `conv_out`.
//!
//! The condition (the low-quality image) is concatenated to x_t on the channel
//! axis, so a grayscale model has 2 channels in and 1 out (LED, section 2.3).
//! Blocks: sinusoidal timestep embedding, residual blocks with GroupNorm and
//! SiLU that add the embedding, single-stage self-attention at the configured
//! resolutions and in the middle block, stride-2 convolutions down, nearest
//! neighbour + conv up, skip connections by concatenation.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::nets::generator::pad_to_multiple;
use crate::{Error, Result};

/// Architecture of a [`ConditionalUNet`], as written in `bundle.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct UNetConfig {
    /// Channels of the noisy image x_t (1 for grayscale).
    pub image_channels: i64,
    /// Channels of the condition concatenated to x_t (1: the low-quality image).
    pub condition_channels: i64,
    /// Width of the first level; level i has `base_channels * channel_mult[i]`.
    pub base_channels: i64,
    /// Width multiplier per resolution level; its length is the number of levels.
    pub channel_mult: Vec<i64>,
    /// Residual blocks per level on the way down (one more on the way up).
    pub res_blocks: usize,
    /// Side, in pixels, of the tiles the network was trained on.
    pub sample_size: i64,
    /// Feature-map sides (at `sample_size` input) whose levels get self-attention.
    pub attention_resolutions: Vec<i64>,
    /// Channels per attention head.
    pub attention_head_dim: i64,
    /// Groups of every GroupNorm; every level width must be a multiple of it.
    pub norm_groups: i64,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self {
            image_channels: 1,
            condition_channels: 1,
            base_channels: 64,
            channel_mult: vec![1, 2, 2, 4],
            res_blocks: 2,
            sample_size: 256,
            attention_resolutions: vec![32],
            attention_head_dim: 32,
            norm_groups: 32,
        }
    }
}

impl UNetConfig {
    /// Checks that the widths fit the group norms and attention heads.
    pub fn validate(&self) -> Result<()> {
        if self.channel_mult.is_empty() {
            return Err(Error::InvalidParams("unet channel-mult must name at least one level".into()));
        }
        for (level, mult) in self.channel_mult.iter().enumerate() {
            let width = self.base_channels * mult;
            if width <= 0 || width % self.norm_groups != 0 || width % self.attention_head_dim != 0 {
                return Err(Error::InvalidParams(format!(
                    "unet level {level} is {width} channels wide, which is not a positive multiple of \
                     norm-groups ({}) and attention-head-dim ({})",
                    self.norm_groups, self.attention_head_dim
                )));
            }
        }
        Ok(())
    }

    /// Width of level `i`.
    fn width(&self, level: usize) -> i64 {
        self.base_channels * self.channel_mult[level]
    }

    /// Whether level `i` (working at `sample_size / 2^i`) has attention.
    fn has_attention(&self, level: usize) -> bool {
        self.attention_resolutions.contains(&(self.sample_size >> level))
    }

    /// Height and width are padded internally to a multiple of this.
    pub fn size_multiple(&self) -> i64 {
        1 << (self.channel_mult.len() - 1)
    }
}

/// Sinusoidal embedding of integer timesteps, diffusers' `get_timestep_embedding`
/// with `flip_sin_to_cos = true` and `downscale_freq_shift = 0`: `[cos | sin]`.
pub fn timestep_embedding(timesteps: &Tensor, dim: i64) -> Tensor {
    let half = dim / 2;
    let exponent = Tensor::arange(half, (Kind::Float, timesteps.device())) * (-(10000f64.ln()) / half as f64);
    let angles = timesteps.to_kind(Kind::Float).unsqueeze(1) * exponent.exp().unsqueeze(0);
    let embedding = Tensor::cat(&[angles.cos(), angles.sin()], 1);
    if dim % 2 == 1 {
        embedding.constant_pad_nd([0, 1])
    } else {
        embedding
    }
}

fn group_norm(vs: nn::Path, groups: i64, channels: i64) -> nn::GroupNorm {
    nn::group_norm(vs, groups, channels, nn::GroupNormConfig { eps: 1e-5, ..Default::default() })
}

fn conv3(vs: nn::Path, in_channels: i64, out_channels: i64, stride: i64) -> nn::Conv2D {
    nn::conv2d(vs, in_channels, out_channels, 3, nn::ConvConfig { stride, padding: 1, ..Default::default() })
}

/// diffusers' `ResnetBlock2D`: GroupNorm, SiLU, conv, + projected timestep
/// embedding, GroupNorm, SiLU, conv, + (1x1-projected) input.
#[derive(Debug)]
struct ResnetBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    time_emb_proj: nn::Linear,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    conv_shortcut: Option<nn::Conv2D>,
}

impl ResnetBlock {
    fn new(vs: nn::Path, in_channels: i64, out_channels: i64, temb_channels: i64, groups: i64) -> Self {
        let conv_shortcut = (in_channels != out_channels)
            .then(|| nn::conv2d(&vs / "conv_shortcut", in_channels, out_channels, 1, Default::default()));
        Self {
            norm1: group_norm(&vs / "norm1", groups, in_channels),
            conv1: conv3(&vs / "conv1", in_channels, out_channels, 1),
            time_emb_proj: nn::linear(&vs / "time_emb_proj", temb_channels, out_channels, Default::default()),
            norm2: group_norm(&vs / "norm2", groups, out_channels),
            conv2: conv3(&vs / "conv2", out_channels, out_channels, 1),
            conv_shortcut,
        }
    }

    fn forward(&self, xs: &Tensor, temb: &Tensor) -> Tensor {
        let hidden = xs.apply(&self.norm1).silu().apply(&self.conv1);
        let time = temb.silu().apply(&self.time_emb_proj).unsqueeze(-1).unsqueeze(-1);
        let hidden = (hidden + time).apply(&self.norm2).silu().apply(&self.conv2);
        let shortcut = match &self.conv_shortcut {
            Some(conv) => xs.apply(conv),
            None => xs.shallow_clone(),
        };
        shortcut + hidden
    }
}

/// diffusers' spatial `Attention` as `UNet2DModel` uses it: GroupNorm, multi-head
/// self-attention over all positions, output projection, residual.
#[derive(Debug)]
struct AttentionBlock {
    group_norm: nn::GroupNorm,
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    heads: i64,
}

impl AttentionBlock {
    fn new(vs: nn::Path, channels: i64, head_dim: i64, groups: i64) -> Self {
        let linear = |name: &str| nn::linear(&vs / name, channels, channels, Default::default());
        Self {
            group_norm: group_norm(&vs / "group_norm", groups, channels),
            to_q: linear("to_q"),
            to_k: linear("to_k"),
            to_v: linear("to_v"),
            to_out: nn::linear(&vs / "to_out" / 0, channels, channels, Default::default()),
            heads: channels / head_dim,
        }
    }
}

impl Module for AttentionBlock {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let (batch, channels, height, width) = xs.size4().expect("attention input is [N, C, H, W]");
        let tokens = xs.apply(&self.group_norm).view([batch, channels, height * width]).transpose(1, 2);
        let heads = |t: Tensor| t.view([batch, -1, self.heads, channels / self.heads]).transpose(1, 2);
        let (q, k, v) =
            (heads(tokens.apply(&self.to_q)), heads(tokens.apply(&self.to_k)), heads(tokens.apply(&self.to_v)));
        let attended = Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, false, None, false);
        let attended = attended.transpose(1, 2).reshape([batch, height * width, channels]).apply(&self.to_out);
        xs + attended.transpose(1, 2).view([batch, channels, height, width])
    }
}

/// One resolution level: residual blocks, optional attention after each, and
/// an optional resampling convolution at the end.
#[derive(Debug)]
struct Level {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<AttentionBlock>,
    resample: Option<nn::Conv2D>,
}

/// The conditional UNet: `(x_t [N,1,H,W], condition [N,1,H,W], t [N]) -> eps [N,1,H,W]`.
#[derive(Debug)]
pub struct ConditionalUNet {
    config: UNetConfig,
    conv_in: nn::Conv2D,
    time_linear_1: nn::Linear,
    time_linear_2: nn::Linear,
    down: Vec<Level>,
    mid_resnets: [ResnetBlock; 2],
    mid_attention: AttentionBlock,
    up: Vec<Level>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl ConditionalUNet {
    /// Creates the network's variables under `vs`.
    pub fn new(vs: &nn::Path, config: &UNetConfig) -> Result<Self> {
        config.validate()?;
        let levels = config.channel_mult.len();
        let groups = config.norm_groups;
        let head_dim = config.attention_head_dim;
        let base = config.width(0);
        let temb = base * 4;
        let conv_in = conv3(vs / "conv_in", config.image_channels + config.condition_channels, base, 1);
        let time_linear_1 = nn::linear(vs / "time_embedding" / "linear_1", base, temb, Default::default());
        let time_linear_2 = nn::linear(vs / "time_embedding" / "linear_2", temb, temb, Default::default());

        let mut down = Vec::with_capacity(levels);
        let mut in_channels = base;
        for level in 0..levels {
            let out_channels = config.width(level);
            let path = vs / "down_blocks" / level;
            let resnets = (0..config.res_blocks)
                .map(|j| {
                    let block_in = if j == 0 { in_channels } else { out_channels };
                    ResnetBlock::new(&path / "resnets" / j, block_in, out_channels, temb, groups)
                })
                .collect();
            let attentions = if config.has_attention(level) {
                (0..config.res_blocks)
                    .map(|j| AttentionBlock::new(&path / "attentions" / j, out_channels, head_dim, groups))
                    .collect()
            } else {
                Vec::new()
            };
            let resample =
                (level + 1 < levels).then(|| conv3(&path / "downsamplers" / 0 / "conv", out_channels, out_channels, 2));
            down.push(Level { resnets, attentions, resample });
            in_channels = out_channels;
        }

        let deepest = config.width(levels - 1);
        let mid = vs / "mid_block";
        let mid_resnets = [
            ResnetBlock::new(&mid / "resnets" / 0, deepest, deepest, temb, groups),
            ResnetBlock::new(&mid / "resnets" / 1, deepest, deepest, temb, groups),
        ];
        let mid_attention = AttentionBlock::new(&mid / "attentions" / 0, deepest, head_dim, groups);

        // Up path, deepest level first; each block eats one skip per resnet.
        let mut up = Vec::with_capacity(levels);
        let mut previous_out = deepest;
        for i in 0..levels {
            let level = levels - 1 - i;
            let out_channels = config.width(level);
            let skip_level_in = config.width(level.saturating_sub(1));
            let path = vs / "up_blocks" / i;
            let resnets = (0..=config.res_blocks)
                .map(|j| {
                    let skip = if j == config.res_blocks { skip_level_in } else { out_channels };
                    let block_in = if j == 0 { previous_out } else { out_channels };
                    ResnetBlock::new(&path / "resnets" / j, block_in + skip, out_channels, temb, groups)
                })
                .collect();
            let attentions = if config.has_attention(level) {
                (0..=config.res_blocks)
                    .map(|j| AttentionBlock::new(&path / "attentions" / j, out_channels, head_dim, groups))
                    .collect()
            } else {
                Vec::new()
            };
            let resample = (level > 0).then(|| conv3(&path / "upsamplers" / 0 / "conv", out_channels, out_channels, 1));
            up.push(Level { resnets, attentions, resample });
            previous_out = out_channels;
        }

        Ok(Self {
            config: config.clone(),
            conv_in,
            time_linear_1,
            time_linear_2,
            down,
            mid_resnets,
            mid_attention,
            up,
            conv_norm_out: group_norm(vs / "conv_norm_out", groups, base),
            conv_out: conv3(vs / "conv_out", base, config.image_channels, 1),
        })
    }

    /// The architecture this network was built with.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Predicts the noise in `x_t` at timesteps `t` (int64 `[N]`), given the condition.
    /// Any height and width: the input is padded to [`UNetConfig::size_multiple`]
    /// and the output cropped back.
    pub fn forward(&self, x_t: &Tensor, condition: &Tensor, t: &Tensor) -> Tensor {
        let (height, width) = (x_t.size()[2], x_t.size()[3]);
        let input = pad_to_multiple(&Tensor::cat(&[x_t, condition], 1), self.config.size_multiple(), 1);
        let temb = timestep_embedding(t, self.config.width(0))
            .to_kind(input.kind())
            .apply(&self.time_linear_1)
            .silu()
            .apply(&self.time_linear_2);

        let mut hidden = input.apply(&self.conv_in);
        let mut skips = vec![hidden.shallow_clone()];
        for level in &self.down {
            for (j, resnet) in level.resnets.iter().enumerate() {
                hidden = resnet.forward(&hidden, &temb);
                if let Some(attention) = level.attentions.get(j) {
                    hidden = hidden.apply(attention);
                }
                skips.push(hidden.shallow_clone());
            }
            if let Some(downsample) = &level.resample {
                hidden = hidden.apply(downsample);
                skips.push(hidden.shallow_clone());
            }
        }

        hidden = self.mid_resnets[0].forward(&hidden, &temb);
        hidden = hidden.apply(&self.mid_attention);
        hidden = self.mid_resnets[1].forward(&hidden, &temb);

        for level in &self.up {
            for (j, resnet) in level.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up-path resnet");
                hidden = resnet.forward(&Tensor::cat(&[&hidden, &skip], 1), &temb);
                if let Some(attention) = level.attentions.get(j) {
                    hidden = hidden.apply(attention);
                }
            }
            if let Some(upsample) = &level.resample {
                let (h, w) = (hidden.size()[2], hidden.size()[3]);
                hidden = hidden.upsample_nearest2d([h * 2, w * 2], None, None).apply(upsample);
            }
        }

        let eps = hidden.apply(&self.conv_norm_out).silu().apply(&self.conv_out);
        eps.narrow(2, 0, height).narrow(3, 0, width)
    }
}
