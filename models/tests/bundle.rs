//! The bundle format: bit-exact round trips, refused tampering, and the
//! checked-in tiny bundle.

use std::fs;

use cxr_led_models::bundle::{Bundle, MANIFEST_FILE, NETWORKS};
use cxr_led_models::{presets, Error, LedModel, Precision};
use tch::Device;

mod common;

fn saved_tiny(dir: &std::path::Path) -> Bundle {
    let _rng = common::global_rng();
    tch::manual_seed(42);
    let model = LedModel::build(&presets::tiny(), Device::Cpu).unwrap();
    model.save_bundle(dir, &presets::tiny()).unwrap()
}

/// `LedModel::from_bundle` behind the global RNG lock: it initialises every
/// network from libtorch's global generator before loading the weights, which
/// would change what a seeded build in a parallel test draws.
fn model_from(bundle: &Bundle, precision: Precision) -> cxr_led_models::Result<LedModel> {
    let _rng = common::global_rng();
    LedModel::from_bundle(bundle, Device::Cpu, precision)
}

#[test]
fn save_then_load_then_save_is_bit_exact() {
    let first = tempfile::tempdir().unwrap();
    let bundle = saved_tiny(first.path());
    let model = model_from(&bundle, Precision::F32).unwrap();
    let second = tempfile::tempdir().unwrap();
    let again = model.save_bundle(second.path(), &bundle.manifest).unwrap();
    assert_eq!(bundle.sha256, again.sha256);
    for name in NETWORKS.iter().map(|n| format!("{n}.safetensors")).chain([MANIFEST_FILE.to_owned()]) {
        assert_eq!(fs::read(first.path().join(&name)).unwrap(), fs::read(second.path().join(&name)).unwrap(), "{name}");
    }
    // And the tensors themselves, not just the files.
    let reloaded = model_from(&again, Precision::F32).unwrap();
    for ((_, a), (_, b)) in model.var_stores().zip(reloaded.var_stores()) {
        for (name, tensor) in a.variables() {
            assert!(tensor.equal(&b.variables()[&name]), "{name}");
        }
    }
}

#[test]
fn a_flipped_byte_in_a_weight_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    saved_tiny(dir.path());
    let path = dir.path().join("unet.safetensors");
    let mut bytes = fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&path, bytes).unwrap();
    match Bundle::load(dir.path()) {
        Err(Error::HashMismatch { path: reported, .. }) => assert_eq!(reported, path),
        other => panic!("expected a hash mismatch, got {other:?}"),
    }
}

#[test]
fn a_manifest_whose_architecture_does_not_match_the_weights_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    saved_tiny(dir.path());
    let manifest_path = dir.path().join(MANIFEST_FILE);
    let text = fs::read_to_string(&manifest_path).unwrap().replace("residual-blocks = 1", "residual-blocks = 2");
    fs::write(&manifest_path, text).unwrap();
    let bundle = Bundle::load(dir.path()).unwrap();
    let error = model_from(&bundle, Precision::F32).unwrap_err().to_string();
    assert!(error.contains("missing") && error.contains("blocks.1.conv1.weight"), "{error}");
}

#[test]
fn broken_manifests_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    saved_tiny(dir.path());
    let manifest_path = dir.path().join(MANIFEST_FILE);
    let original = fs::read_to_string(&manifest_path).unwrap();

    fs::write(&manifest_path, original.replace("[files.g_ba]", "[files.other]")).unwrap();
    assert!(Bundle::load(dir.path()).unwrap_err().to_string().contains("[files.g_ba] is missing"));

    fs::write(&manifest_path, original.replace("path = \"unet.safetensors\"", "path = \"../unet.safetensors\""))
        .unwrap();
    assert!(Bundle::load(dir.path()).unwrap_err().to_string().contains("plain file name"));

    fs::write(&manifest_path, original.replace("t0 = 200", "t0 = 200\nsurprise = 1")).unwrap();
    assert!(Bundle::load(dir.path()).unwrap_err().to_string().contains("unknown field"));

    fs::write(&manifest_path, original.replace("format = 1", "format = 9")).unwrap();
    assert!(Bundle::load(dir.path()).unwrap_err().to_string().contains("format 9 is not supported"));

    fs::remove_file(&manifest_path).unwrap();
    assert!(matches!(Bundle::load(dir.path()), Err(Error::BundleIo { .. })));
}

#[test]
fn the_checked_in_tiny_bundle_verifies_and_is_what_init_bundle_writes() {
    let checked_in = Bundle::load(common::tiny_bundle_dir()).unwrap();
    assert_eq!(checked_in.manifest.name, "cxr-led-tiny");
    // Same preset, same seed, same bytes: the bundle can be rebuilt from source.
    let _rng = common::global_rng();
    tch::manual_seed(0);
    let model = LedModel::build(&presets::tiny(), Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rebuilt = model.save_bundle(dir.path(), &checked_in.manifest).unwrap();
    for network in NETWORKS {
        assert_eq!(checked_in.manifest.files[network].sha256, rebuilt.manifest.files[network].sha256, "{network}");
    }
}

#[test]
fn f16_is_refused_on_cpu_and_bf16_runs_close_to_f32() {
    let bundle = Bundle::load(common::tiny_bundle_dir()).unwrap();
    let error = model_from(&bundle, Precision::F16).unwrap_err().to_string();
    assert!(error.contains("needs a CUDA device") && error.contains("bf16"), "{error}");
    let image = common::test_image(40, 44);
    let tiles = &bundle.manifest.inference.tiles;
    let f32_estimate = model_from(&bundle, Precision::F32).unwrap().estimate(&image, tiles).unwrap();
    let bf16_estimate = model_from(&bundle, Precision::Bf16).unwrap().estimate(&image, tiles).unwrap();
    let mean_difference = (f32_estimate - bf16_estimate.to_kind(tch::Kind::Float)).abs().mean(tch::Kind::Float);
    let mean_difference = mean_difference.double_value(&[]);
    // bf16 keeps 8 bits of mantissa: well under a percent of the range on average.
    assert!(mean_difference < 0.01, "bf16 differs from f32 by {mean_difference} on average");
}

#[test]
fn a_paired_bundle_keeps_its_enhancer_across_save_and_load_and_needs_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = presets::tiny_paired();
    let model = {
        let _rng = common::global_rng();
        tch::manual_seed(7);
        LedModel::build(&manifest, Device::Cpu).unwrap()
    };
    let bundle = model.save_bundle(dir.path(), &manifest).unwrap();
    assert_eq!(bundle.manifest.networks(), ["enhancer", "g_ba", "unet"]);
    assert!(dir.path().join("enhancer.safetensors").exists() && !dir.path().join("g_ab.safetensors").exists());
    let reloaded = model_from(&bundle, Precision::F32).unwrap();
    assert_eq!(reloaded.first_stage_name(), "paired enhancer");
    let image = common::test_image(37, 50);
    let tiles = &bundle.manifest.inference.tiles;
    let (before, after) = (model.estimate(&image, tiles).unwrap(), reloaded.estimate(&image, tiles).unwrap());
    assert_eq!(common::max_abs_diff(&before, &after), 0.0);
    assert_eq!(after.size(), vec![1, 1, 37, 50]);
    // The manifest names the file it needs.
    fs::remove_file(dir.path().join("enhancer.safetensors")).unwrap();
    let error = Bundle::load(dir.path()).unwrap_err().to_string();
    assert!(error.contains("enhancer.safetensors"), "{error}");
}
