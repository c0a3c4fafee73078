//! Tiled inference gives the untiled result: no seams, any matrix size.

use cxr_led_models::tiling::{tiled_map, TileConfig, TilePlan};
use tch::nn;
use tch::{Device, Kind, Tensor};

mod common;

#[test]
fn a_pointwise_network_tiles_exactly_at_any_size() {
    let config = TileConfig { tile: 64, overlap: 16, batch: 5 };
    let network = |x: &Tensor| (x * 2.0 + 0.25).tanh();
    for (h, w) in [(1, 1), (5, 7), (64, 64), (65, 130), (300, 257)] {
        let image = common::test_image(h, w);
        let tiled = tiled_map(&[&image], &config, 4, |batch| Ok(network(&batch[0]))).unwrap();
        let error = common::max_abs_diff(&tiled, &network(&image));
        assert!(error < 1e-6, "{h}x{w}: tiled differs by {error}");
    }
}

#[test]
fn a_native_chest_x_ray_matrix_tiles_without_seams() {
    // 1955x1841 is the NEMA RG1 chest CR; 256-pixel tiles as in the default bundle.
    let config = TileConfig { tile: 256, overlap: 32, batch: 16 };
    let image = common::test_image(1955, 1841);
    let tiled = tiled_map(&[&image], &config, 8, |batch| Ok(batch[0].sigmoid())).unwrap();
    assert_eq!(tiled.size(), vec![1, 1, 1955, 1841]);
    assert!(common::max_abs_diff(&tiled, &image.sigmoid()) < 1e-6);
}

#[test]
fn a_convolution_within_the_margin_tiles_exactly_and_several_inputs_stay_aligned() {
    // Two 3x3 convolutions: receptive radius 2, inside overlap / 4 = 4.
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let config = nn::ConvConfig { padding: 1, ..Default::default() };
    let conv1 = nn::conv2d(vs.root() / "a", 2, 4, 3, config);
    let conv2 = nn::conv2d(vs.root() / "b", 4, 1, 3, config);
    let network = |x: &Tensor, c: &Tensor| Tensor::cat(&[x, c], 1).apply(&conv1).relu().apply(&conv2);
    let _guard = tch::no_grad_guard();
    let image = common::test_image(300, 257);
    let condition = image.flip([2]) * 0.5;
    let untiled = network(&image, &condition);
    let tiling = TileConfig { tile: 64, overlap: 16, batch: 7 };
    let tiled = tiled_map(&[&image, &condition], &tiling, 4, |b| Ok(network(&b[0], &b[1]))).unwrap();
    let error = common::max_abs_diff(&tiled, &untiled);
    assert!(error < 1e-5, "tiled convolution differs by {error}");

    // Without the blending margin the seams show: a plain average of overlapping tiles is off.
    let naive = TileConfig { tile: 64, overlap: 0, batch: 7 };
    let seams = tiled_map(&[&image, &condition], &naive, 4, |b| Ok(network(&b[0], &b[1]))).unwrap();
    assert!(common::max_abs_diff(&seams, &untiled) > 1e-3, "tile edges should be visible without overlap");
}

#[test]
fn a_plan_is_reusable_and_counts_its_tiles() {
    let plan = TilePlan::new(300, 257, &TileConfig { tile: 64, overlap: 16, batch: 4 }, 4, Device::Cpu).unwrap();
    // Stride 48: ceil((300 - 64) / 48) + 1 = 6 rows, ceil((257 - 64) / 48) + 1 = 6 columns.
    assert_eq!(plan.len(), 36);
    let mut calls = 0;
    let image = common::test_image(300, 257);
    for _ in 0..2 {
        let out = plan
            .run(&[&image], |batch| {
                calls += 1;
                Ok(batch[0].shallow_clone())
            })
            .unwrap();
        assert!(common::max_abs_diff(&out, &image) < 1e-6);
    }
    assert_eq!(calls, 2 * 9, "36 tiles in batches of 4, twice");
}

#[test]
fn bad_tilings_and_mismatched_inputs_are_refused() {
    let image = common::test_image(40, 40);
    let identity = |b: &[Tensor]| Ok(b[0].shallow_clone());
    let bad = |config: TileConfig| tiled_map(&[&image], &config, 8, identity).unwrap_err().to_string();
    assert!(bad(TileConfig { tile: 60, overlap: 8, batch: 1 }).contains("multiple of 8"));
    assert!(bad(TileConfig { tile: 64, overlap: 40, batch: 1 }).contains("half the tile"));
    assert!(bad(TileConfig { tile: 64, overlap: 8, batch: 0 }).contains("at least 1"));
    let other = Tensor::zeros([1, 1, 40, 41], (Kind::Float, Device::Cpu));
    let error = tiled_map(&[&image, &other], &TileConfig::default(), 8, identity).unwrap_err().to_string();
    assert!(error.contains("must all be"), "{error}");
}
