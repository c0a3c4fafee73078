//! LED inference end to end on the tiny bundle: native sizes, determinism.

use cxr_led_models::sampling::noise::{seed_from_parts, NoiseSource};
use cxr_led_models::{Bundle, LedModel, Precision};
use tch::Device;

mod common;

fn tiny_model() -> (Bundle, LedModel) {
    let bundle = Bundle::load(common::tiny_bundle_dir()).unwrap();
    let model = LedModel::from_bundle(&bundle, Device::Cpu, Precision::F32).unwrap();
    (bundle, model)
}

#[test]
fn enhancement_keeps_the_native_matrix_and_the_model_range() {
    let (bundle, model) = tiny_model();
    for (h, w) in [(211, 169), (64, 64), (7, 3)] {
        let input = common::test_image(h, w);
        let result = model.enhance(&input, &bundle.manifest.inference, &mut NoiseSource::new(1)).unwrap();
        assert_eq!(result.output.size(), vec![1, 1, h, w]);
        assert_eq!(result.estimate.size(), vec![1, 1, h, w]);
        assert!(result.output.abs().max().double_value(&[]) <= 1.0);
        assert!(result.output.isfinite().all().int64_value(&[]) == 1);
    }
}

#[test]
fn the_same_seed_gives_identical_pixels_and_another_seed_other_pixels() {
    let (bundle, model) = tiny_model();
    let input = common::test_image(150, 130);
    let params = &bundle.manifest.inference;
    let seed = seed_from_parts(&[b"1.2.826.0.1.3680043.2.1125.1", bundle.sha256.as_bytes()]);
    let first = model.enhance(&input, params, &mut NoiseSource::new(seed)).unwrap().output;
    let again = model.enhance(&input, params, &mut NoiseSource::new(seed)).unwrap().output;
    assert!(first.equal(&again), "same seed must reproduce every pixel");
    let other_seed = seed_from_parts(&[b"1.2.826.0.1.3680043.2.1125.2", bundle.sha256.as_bytes()]);
    let other = model.enhance(&input, params, &mut NoiseSource::new(other_seed)).unwrap().output;
    assert!(common::max_abs_diff(&first, &other) > 1e-4, "another seed must give other noise");
}

#[test]
fn seeds_from_parts_are_length_prefixed_and_noise_is_reproducible() {
    assert_ne!(seed_from_parts(&[b"ab", b"c"]), seed_from_parts(&[b"a", b"bc"]));
    assert_eq!(seed_from_parts(&[b"x"]), seed_from_parts(&[b"x"]));
    let a = NoiseSource::new(9).normal(&[1000], Device::Cpu);
    let b = NoiseSource::new(9).normal(&[1000], Device::Cpu);
    assert!(a.equal(&b));
    assert!((a.mean(tch::Kind::Float).double_value(&[])).abs() < 0.2);
}

#[test]
fn bad_inference_parameters_are_refused() {
    let (bundle, model) = tiny_model();
    let input = common::test_image(64, 64);
    let mut params = bundle.manifest.inference.clone();
    params.steps = 3;
    let error = model.enhance(&input, &params, &mut NoiseSource::new(0)).unwrap_err().to_string();
    assert!(error.contains("multiple"), "{error}");
    let colour = tch::Tensor::zeros([1, 3, 8, 8], (tch::Kind::Float, Device::Cpu));
    let error = model.enhance(&colour, &bundle.manifest.inference, &mut NoiseSource::new(0)).unwrap_err().to_string();
    assert!(error.contains("grayscale"), "{error}");
}

#[test]
fn a_batch_without_tiles_gives_what_each_image_gives_alone() {
    let (bundle, model) = tiny_model();
    let params = &bundle.manifest.inference;
    // One tile per image: the tiled and the batched path compute the same thing.
    let a = common::test_image(64, 64);
    let b = a.flip([3]) * 0.5;
    let batch = tch::Tensor::cat(&[&a, &b], 0);
    let batched = model.enhance_batch(&batch, params, &mut NoiseSource::new(5)).unwrap().output;
    let mut noise = NoiseSource::new(5);
    let start = noise.normal(&[2, 1, 64, 64], Device::Cpu);
    assert_eq!(batched.size(), vec![2, 1, 64, 64]);
    // Replay each image's share of the batch noise through the tiled path.
    for (i, image) in [a, b].iter().enumerate() {
        let estimate = model.estimate(image, &params.tiles).unwrap();
        let sampler =
            cxr_led_models::sampling::sampler::DdimSampler::refinement(model.schedule(), params.t0, params.steps)
                .unwrap();
        let x = model.schedule().q_sample(&estimate, sampler.start(), &start.narrow(0, i as i64, 1));
        let mut predict =
            |x_t: &tch::Tensor, t: usize| Ok(model.unet().forward(x_t, image, &tch::Tensor::from_slice(&[t as i64])));
        let alone = sampler.sample(&x, &mut predict, &mut noise).unwrap().clamp(-1.0, 1.0);
        let error = common::max_abs_diff(&alone, &batched.narrow(0, i as i64, 1));
        assert!(error < 1e-5, "image {i} differs by {error} between batch and alone");
    }
}
