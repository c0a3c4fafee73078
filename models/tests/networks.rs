//! Shapes and closed forms of the three networks, at odd sizes too.

use cxr_led_models::nets::discriminator::{DiscriminatorConfig, PatchDiscriminator};
use cxr_led_models::nets::generator::{GeneratorConfig, ResnetGenerator};
use cxr_led_models::nets::unet::{timestep_embedding, ConditionalUNet, UNetConfig};
use cxr_led_models::presets;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

fn tiny_generator() -> (nn::VarStore, ResnetGenerator) {
    let vs = nn::VarStore::new(Device::Cpu);
    let generator =
        ResnetGenerator::new(&vs.root(), &GeneratorConfig { image_channels: 1, base_channels: 4, residual_blocks: 2 });
    (vs, generator)
}

#[test]
fn generator_keeps_any_matrix_size_and_stays_in_range() {
    let _guard = tch::no_grad_guard();
    let (_vs, generator) = tiny_generator();
    for (h, w) in [(1, 1), (5, 7), (31, 64), (64, 64), (97, 83)] {
        let input = Tensor::randn([2, 1, h, w], (Kind::Float, Device::Cpu)).clamp(-1.0, 1.0);
        let output = generator.forward(&input);
        assert_eq!(output.size(), vec![2, 1, h, w], "generator output for {h}x{w}");
        let (min, max) = (output.min().double_value(&[]), output.max().double_value(&[]));
        assert!((-1.0..=1.0).contains(&min) && (-1.0..=1.0).contains(&max), "tanh range: {min}..{max}");
    }
}

#[test]
fn generator_variable_names_and_count_follow_the_config() {
    let (vs, _generator) = tiny_generator();
    let names: std::collections::BTreeSet<String> = vs.variables().into_keys().collect();
    // stem, 2 down, 2 blocks x 2 convs, 2 up, head: 10 convs with weight and bias.
    assert_eq!(names.len(), 20, "{names:?}");
    assert!(names.contains("blocks.1.conv2.weight") && names.contains("up.1.bias") && names.contains("head.weight"));
}

#[test]
fn patch_discriminator_has_the_pix2pix_70_pixel_geometry() {
    let _guard = tch::no_grad_guard();
    let vs = nn::VarStore::new(Device::Cpu);
    let config = DiscriminatorConfig { image_channels: 1, base_channels: 8, layers: 3 };
    let discriminator = PatchDiscriminator::new(&vs.root(), &config);
    // 256 -> 128 -> 64 -> 32 -> 31 -> 30, as in the CycleGAN code.
    assert_eq!(
        discriminator.forward(&Tensor::zeros([3, 1, 256, 256], (Kind::Float, Device::Cpu))).size(),
        vec![3, 1, 30, 30]
    );
    assert_eq!(
        discriminator.forward(&Tensor::zeros([1, 1, 70, 70], (Kind::Float, Device::Cpu))).size(),
        vec![1, 1, 6, 6]
    );
}

#[test]
fn unet_predicts_noise_of_the_input_shape_for_odd_sizes_and_batched_timesteps() {
    let _guard = tch::no_grad_guard();
    let vs = nn::VarStore::new(Device::Cpu);
    let unet = ConditionalUNet::new(&vs.root(), &presets::tiny().unet).unwrap();
    for (h, w) in [(64, 64), (33, 47), (3, 5)] {
        let x = Tensor::randn([3, 1, h, w], (Kind::Float, Device::Cpu));
        let condition = Tensor::randn([3, 1, h, w], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[0i64, 500, 999]);
        assert_eq!(unet.forward(&x, &condition, &t).size(), vec![3, 1, h, w]);
    }
}

#[test]
fn unet_uses_the_condition_and_the_timestep() {
    let _guard = tch::no_grad_guard();
    let vs = nn::VarStore::new(Device::Cpu);
    let unet = ConditionalUNet::new(&vs.root(), &presets::tiny().unet).unwrap();
    let x = Tensor::randn([1, 1, 64, 64], (Kind::Float, Device::Cpu));
    let condition = Tensor::randn([1, 1, 64, 64], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[100i64]);
    let reference = unet.forward(&x, &condition, &t);
    assert!((&reference - unet.forward(&x, &condition.zeros_like(), &t)).abs().max().double_value(&[]) > 1e-6);
    assert!(
        (&reference - unet.forward(&x, &condition, &Tensor::from_slice(&[900i64]))).abs().max().double_value(&[])
            > 1e-6
    );
}

#[test]
fn unet_names_match_diffusers_unet2dmodel() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _unet = ConditionalUNet::new(&vs.root(), &presets::tiny().unet).unwrap();
    let names: std::collections::BTreeSet<String> = vs.variables().into_keys().collect();
    for expected in [
        "conv_in.weight",
        "time_embedding.linear_1.weight",
        "time_embedding.linear_2.bias",
        "down_blocks.0.resnets.0.norm1.weight",
        "down_blocks.0.downsamplers.0.conv.weight",
        "down_blocks.1.attentions.0.to_q.weight",
        "down_blocks.1.attentions.0.to_out.0.weight",
        "mid_block.attentions.0.group_norm.weight",
        "mid_block.resnets.1.conv2.weight",
        "up_blocks.0.resnets.1.conv_shortcut.weight",
        "up_blocks.0.attentions.1.to_v.bias",
        "up_blocks.0.upsamplers.0.conv.weight",
        "up_blocks.1.resnets.1.time_emb_proj.weight",
        "conv_norm_out.weight",
        "conv_out.weight",
    ] {
        assert!(names.contains(expected), "missing {expected}; have {names:?}");
    }
    // Level 0 (64 px) has no attention in the tiny preset, level 1 (32 px) has.
    assert!(!names.iter().any(|n| n.starts_with("down_blocks.0.attentions")));
    assert!(!names.iter().any(|n| n.starts_with("up_blocks.1.attentions")));
}

#[test]
fn unet_config_refuses_widths_that_do_not_fit_the_group_norm() {
    let config = UNetConfig { base_channels: 6, norm_groups: 4, attention_head_dim: 2, ..presets::tiny().unet };
    let vs = nn::VarStore::new(Device::Cpu);
    let error = ConditionalUNet::new(&vs.root(), &config).unwrap_err().to_string();
    assert!(error.contains("norm-groups"), "{error}");
}

#[test]
fn timestep_embedding_is_cos_then_sin_of_geometric_frequencies() {
    let embedding = timestep_embedding(&Tensor::from_slice(&[0i64, 10]), 8);
    assert_eq!(embedding.size(), vec![2, 8]);
    let row = Vec::<f32>::try_from(embedding.get(1)).unwrap();
    for k in 0..4 {
        let frequency = (-(10000f64.ln()) * k as f64 / 4.0).exp();
        assert!((row[k] as f64 - (10.0 * frequency).cos()).abs() < 1e-5, "cos {k}");
        assert!((row[k + 4] as f64 - (10.0 * frequency).sin()).abs() < 1e-5, "sin {k}");
    }
    let zero = Vec::<f32>::try_from(embedding.get(0)).unwrap();
    assert_eq!(zero, vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
}
