//! Named architectures with their inference defaults, as bundle manifests
//! without weights. `tiny` is small enough for tests and the checked-in test
//! bundle; `default` is what a GPU host should train; the default bundle's
//! first stage is [`cpu_deep_curve`]'s (since 0.5.0-cpu).

use crate::manifest::{BundleManifest, EnhanceParams, Normalisation, Precision, FORMAT_VERSION};
use crate::nets::enhancer::EnhancerConfig;
use crate::nets::generator::GeneratorConfig;
use crate::nets::unet::UNetConfig;
use crate::sampling::schedule::ScheduleConfig;
use crate::tiling::TileConfig;
use crate::{Error, Result};

/// The names [`by_name`] knows.
pub const NAMES: [&str; 9] = [
    "tiny",
    "tiny-paired",
    "tiny-paired-deep",
    "small",
    "cpu",
    "cpu-deep",
    "cpu-deep-tone",
    "cpu-deep-curve",
    "default",
];

/// A manifest for the named preset.
pub fn by_name(name: &str) -> Result<BundleManifest> {
    match name {
        "tiny" => Ok(tiny()),
        "tiny-paired" => Ok(tiny_paired()),
        "tiny-paired-deep" => Ok(tiny_paired_deep()),
        "small" => Ok(small()),
        "cpu" => Ok(cpu()),
        "cpu-deep" => Ok(cpu_deep()),
        "cpu-deep-tone" => Ok(cpu_deep_tone()),
        "cpu-deep-curve" => Ok(cpu_deep_curve()),
        "default" => Ok(default()),
        other => Err(Error::InvalidParams(format!("unknown preset {other:?}; known presets: {NAMES:?}"))),
    }
}

/// A few-kilobyte model: every stage of the real one, no capacity. For tests
/// and the checked-in test bundle; its output is not an enhancement.
pub fn tiny() -> BundleManifest {
    BundleManifest {
        format: FORMAT_VERSION,
        name: "cxr-led-tiny".into(),
        version: "0.1.0".into(),
        description: "Random, fixed weights (seed 0) with the full LED structure at minimal width. \
                      For tests and the demo until trained weights exist; not an enhancement."
            .into(),
        normalisation: Normalisation::default(),
        generator: GeneratorConfig { image_channels: 1, base_channels: 4, residual_blocks: 1 },
        enhancer: None,
        unet: UNetConfig {
            image_channels: 1,
            condition_channels: 1,
            base_channels: 8,
            channel_mult: vec![1, 2],
            res_blocks: 1,
            sample_size: 64,
            attention_resolutions: vec![32],
            attention_head_dim: 8,
            norm_groups: 4,
        },
        schedule: ScheduleConfig::default(),
        inference: EnhanceParams {
            t0: 200,
            steps: 4,
            tiles: TileConfig { tile: 64, overlap: 16, batch: 16 },
            precision: Precision::F32,
        },
        training: Default::default(),
        metrics: Default::default(),
        hallucination: None,
        files: Default::default(),
    }
}

/// [`tiny`] with a minimal paired enhancer as its first stage, for tests of
/// the paired stage.
pub fn tiny_paired() -> BundleManifest {
    BundleManifest {
        name: "cxr-led-tiny-paired".into(),
        enhancer: Some(EnhancerConfig {
            widths: vec![4, 8],
            convs_per_level: 1,
            global_tone: false,
            tone_curve: false,
        }),
        ..tiny()
    }
}

/// [`tiny_paired`] with one more enhancer level, the global tone head and
/// the tone curve, for tests of growth (as [`cpu_deep_curve`] is grown from
/// [`cpu`]).
pub fn tiny_paired_deep() -> BundleManifest {
    let enhancer = EnhancerConfig { widths: vec![4, 8, 16], convs_per_level: 1, global_tone: true, tone_curve: true };
    BundleManifest { enhancer: Some(enhancer), ..tiny_paired() }
}

/// What a 2-core CPU trains well (the default bundle's 0.2.0-0.3.0): the paired
/// enhancer (32-64-128 channels after a 2x pixel unshuffle, 0.47 M
/// parameters) as the first stage, [`small`]'s G_BA and UNet beside it, and
/// 512-px tiles with a 64-px overlap (the enhancer's receptive radius is
/// about 40 px; its global tone statistics are the whole image's).
pub fn cpu() -> BundleManifest {
    BundleManifest {
        name: "cxr-led-cpu".into(),
        description: "LED for under-exposed chest X-rays, trainable on a 2-core CPU: a paired first-stage \
                      enhancer (global tone statistics plus a pixel-unshuffled UNet, trained on simulator pairs) \
                      whose estimate the conditional diffusion model may refine."
            .into(),
        enhancer: Some(EnhancerConfig::default()),
        inference: EnhanceParams {
            t0: 0,
            steps: 1,
            tiles: TileConfig { tile: 512, overlap: 64, batch: 2 },
            precision: Precision::F32,
        },
        ..small()
    }
}

/// [`cpu`] with a fourth, coarser enhancer level (256 channels at 1/16 of
/// the pixels): a receptive field of about 170 px instead of 80, for the
/// low-frequency blotches that heavy, correlated noise leaves, at about 20 %
/// more compute per pixel (1.9 M parameters, most of them at the coarse
/// level). Grown from a trained [`cpu`] enhancer (`paired --init BUNDLE`);
/// the default bundle's 0.4.0-cpu.
pub fn cpu_deep() -> BundleManifest {
    let enhancer =
        EnhancerConfig { widths: vec![32, 64, 128, 256], convs_per_level: 2, global_tone: false, tone_curve: false };
    BundleManifest { enhancer: Some(enhancer), ..cpu() }
}

/// [`cpu_deep`] with the global tone head: a gain and an offset per image
/// from its statistics, its 1st and 99th percentiles included, map the
/// result back from the stretched scale, so that a good image can come back
/// as it was (the stretch alone forgets its black and white points). Grown
/// from a trained [`cpu_deep`] enhancer, the head starting neutral.
pub fn cpu_deep_tone() -> BundleManifest {
    let enhancer = EnhancerConfig { global_tone: true, ..cpu_deep().enhancer.expect("cpu-deep has an enhancer") };
    BundleManifest { enhancer: Some(enhancer), ..cpu() }
}

/// [`cpu_deep_tone`] with the tone curve: a monotone curve per image, set
/// from its statistics and a 32x32 thumbnail of the whole image (a 4-layer
/// strided encoder, 15 k parameters in all), bends the result before the
/// gain and offset, for the non-linear part of the tone and the intensities
/// the anatomy should have. Grown from a trained [`cpu_deep_tone`] enhancer,
/// the curve starting as the identity; the default bundle's since 0.5.0-cpu.
pub fn cpu_deep_curve() -> BundleManifest {
    let enhancer =
        EnhancerConfig { tone_curve: true, ..cpu_deep_tone().enhancer.expect("cpu-deep-tone has an enhancer") };
    BundleManifest { enhancer: Some(enhancer), ..cpu() }
}

/// A CPU-trainable model: the full structure at a quarter of the default
/// width on 128-pixel tiles. Stands in until the default model is trained on
/// a GPU.
pub fn small() -> BundleManifest {
    BundleManifest {
        name: "cxr-led-small".into(),
        description: "LED for under-exposed chest X-rays at small width, trainable on a CPU: CycleGAN G_AB \
                      estimate refined by a conditional diffusion model."
            .into(),
        generator: GeneratorConfig { image_channels: 1, base_channels: 16, residual_blocks: 4 },
        unet: UNetConfig {
            image_channels: 1,
            condition_channels: 1,
            base_channels: 32,
            channel_mult: vec![1, 2, 2],
            res_blocks: 1,
            sample_size: 128,
            attention_resolutions: vec![32],
            attention_head_dim: 32,
            norm_groups: 8,
        },
        inference: EnhanceParams {
            t0: 200,
            steps: 10,
            tiles: TileConfig { tile: 128, overlap: 32, batch: 8 },
            precision: Precision::F32,
        },
        ..tiny()
    }
}

/// The production architecture: CycleGAN's 64-wide, 9-block generator and a
/// 4-level UNet (64-128-128-256) with attention at 32x32 and in the middle,
/// refining from t0 = 200 in 10 DDIM steps over 256-pixel tiles.
pub fn default() -> BundleManifest {
    BundleManifest {
        name: "cxr-led-default".into(),
        description: "LED for under-exposed chest X-rays: CycleGAN G_AB estimate refined by a \
                      conditional diffusion model."
            .into(),
        generator: GeneratorConfig::default(),
        unet: UNetConfig::default(),
        inference: EnhanceParams { t0: 200, steps: 10, tiles: TileConfig::default(), precision: Precision::F32 },
        ..tiny()
    }
}
