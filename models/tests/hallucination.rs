//! The hallucination check on small synthetic images with the tiny bundle:
//! faithful outputs score low, a planted blob, line or texture patch raises
//! the score and lights the doubt map where it was planted, crisper faithful
//! detail is forgiven but an erased edge is not, results are bit-for-bit repeatable, every
//! value stays in [0, 1], any matrix size works, and the calibration lives in
//! the bundle manifest.

mod common;

use common::{test_image, tiny_bundle_dir};
use cxr_led_models::hallucination::{
    self, gaussian_blur, hold_threshold, score, HallucinationCalibration, HallucinationConfig, HallucinationReport,
    UNCALIBRATED_HOLD_THRESHOLD,
};
use cxr_led_models::sampling::noise::NoiseSource;
use cxr_led_models::{Bundle, LedModel, Precision};
use tch::{Device, Kind, Tensor};

fn model() -> (Bundle, LedModel) {
    let bundle = Bundle::load(tiny_bundle_dir()).unwrap();
    let model = LedModel::from_bundle(&bundle, Device::Cpu, Precision::F32).unwrap();
    (bundle, model)
}

/// A clean "anatomy" image with edges and smooth shading, and its noisy,
/// contrast-compressed low-quality partner.
fn pair(h: i64, w: i64, seed: u64) -> (Tensor, Tensor) {
    let xs = Tensor::arange(w, (Kind::Float, Device::Cpu)).view([1, 1, 1, w]);
    let ys = Tensor::arange(h, (Kind::Float, Device::Cpu)).view([1, 1, h, 1]);
    let band = (xs.f_sub_scalar(w as f64 * 0.3).unwrap().abs().le(w as f64 * 0.08)).to_kind(Kind::Float) * 0.3;
    let stripe = (ys.f_sub_scalar(h as f64 * 0.6).unwrap().abs().le(1.5)).to_kind(Kind::Float) * 0.2;
    let clean = (test_image(h, w) * 0.5 + band + stripe).clamp(-1.0, 1.0);
    let noise = NoiseSource::new(seed).normal(&[1, 1, h, w], Device::Cpu) * 0.08;
    let low = (&clean * 0.7 + noise).clamp(-1.0, 1.0);
    (clean, low)
}

/// A Gaussian bump of amplitude `amplitude` and width `radius` at (cy, cx).
fn blob(h: i64, w: i64, cy: f64, cx: f64, radius: f64, amplitude: f64) -> Tensor {
    let xs = Tensor::arange(w, (Kind::Double, Device::Cpu)).view([1, 1, 1, w]) - cx;
    let ys = Tensor::arange(h, (Kind::Double, Device::Cpu)).view([1, 1, h, 1]) - cy;
    ((xs.square() + ys.square()) / (-2.0 * radius * radius)).exp().to_kind(Kind::Float) * amplitude
}

fn run(model: &LedModel, low: &Tensor, enhanced: &Tensor) -> HallucinationReport {
    score(model, low, enhanced, &model_tiles(), &HallucinationConfig::default()).unwrap()
}

fn model_tiles() -> cxr_led_models::tiling::TileConfig {
    Bundle::load(tiny_bundle_dir()).unwrap().manifest.inference.tiles
}

fn assert_in_unit_range(report: &HallucinationReport) {
    assert!((0.0..=1.0).contains(&report.score), "score {}", report.score);
    for (name, value) in &report.components {
        assert!((0.0..=1.0).contains(value), "{name} = {value}");
    }
    let (min, max) = (report.doubt_map.min().double_value(&[]), report.doubt_map.max().double_value(&[]));
    assert!(min >= 0.0 && max <= 1.0, "doubt map spans [{min}, {max}]");
    assert_eq!(report.doubt_map.kind(), Kind::Float);
    assert_eq!(report.doubt_map.device(), Device::Cpu);
}

/// A planted change scores above the uncalibrated threshold and well above
/// the faithful output of the same input.
#[track_caller]
fn assert_stands_out(what: &str, planted: &HallucinationReport, faithful: &HallucinationReport) {
    assert!(
        planted.score > UNCALIBRATED_HOLD_THRESHOLD && planted.score > faithful.score + 0.3,
        "{what} {} vs faithful {}: {:?}",
        planted.score,
        faithful.score,
        planted.raw
    );
}

#[test]
fn identical_input_and_output_score_low() {
    let (_, model) = model();
    let (_, low) = pair(96, 96, 1);
    let report = run(&model, &low, &low);
    assert_in_unit_range(&report);
    assert!(report.score < 0.05, "identical images scored {}: {:?}", report.score, report.components);
}

#[test]
fn a_faithful_denoise_and_the_ground_truth_score_below_the_threshold() {
    let (_, model) = model();
    for seed in [2, 3] {
        let (clean, low) = pair(112, 96, seed);
        let denoised = gaussian_blur(&low, 1.5);
        for (name, candidate) in [("ground truth", &clean), ("denoised input", &denoised)] {
            let report = run(&model, &low, candidate);
            assert_in_unit_range(&report);
            assert!(
                report.score < UNCALIBRATED_HOLD_THRESHOLD,
                "{name} (seed {seed}) scored {}: {:?}",
                report.score,
                report.raw
            );
        }
    }
}

#[test]
fn a_planted_blob_raises_the_score_and_lights_the_map_where_it_is() {
    let (_, model) = model();
    let (h, w) = (128, 112);
    let (clean, low) = pair(h, w, 4);
    let faithful = run(&model, &low, &clean);
    let (cy, cx) = (40.0, 75.0);
    let planted = &clean + blob(h, w, cy, cx, 4.0, 0.35);
    let report = run(&model, &low, &planted);
    assert_in_unit_range(&report);
    assert_stands_out("blob", &report, &faithful);
    let map = report.doubt_map.view([h, w]);
    let flat_index = map.argmax(None, false).int64_value(&[]);
    let (my, mx) = ((flat_index / w) as f64, (flat_index % w) as f64);
    assert!((my - cy).hypot(mx - cx) <= 4.0, "map peaks at ({my}, {mx}), blob at ({cy}, {cx})");
    // Far from the blob (more than 5 widths away) the map stays low.
    let far = blob(h, w, cy, cx, 20.0, 1.0).view([h, w]).lt(0.04);
    let far_max = map.masked_select(&far).max().double_value(&[]);
    assert!(far_max < 0.2, "doubt far from the blob reaches {far_max}");
    assert!(map.double_value(&[cy as i64, cx as i64]) > 0.5);
}

/// A thin, faint, slightly curved line (a tube or wire) through (cy, cx).
fn line(h: i64, w: i64, cy: f64, cx: f64, length: f64, amplitude: f64) -> Tensor {
    let xs = Tensor::arange(w, (Kind::Double, Device::Cpu)).view([1, 1, 1, w]) - cx;
    let ys = Tensor::arange(h, (Kind::Double, Device::Cpu)).view([1, 1, h, 1]) - cy;
    let across = &ys - xs.square() * 0.01;
    let along = (xs.abs() - length / 2.0).clamp_min(0.0);
    ((across.square() + along.square()) / (-2.0 * 0.7 * 0.7)).exp().to_kind(Kind::Float) * amplitude
}

#[test]
fn a_thin_line_cannot_hide_behind_the_sharpness_of_the_output() {
    // The ground truth is sharper than the blurred, noisy input; the check
    // forgives that sharpness once for the whole image, not pixel by pixel,
    // so a wire drawn into the sharp output still stands out.
    let (_, model) = model();
    let (h, w) = (128, 128);
    let (clean, _) = pair(h, w, 8);
    let noise = NoiseSource::new(8).normal(&[1, 1, h, w], Device::Cpu) * 0.05;
    let low = (gaussian_blur(&clean, 1.2) * 0.7 + noise).clamp(-1.0, 1.0);
    let faithful = run(&model, &low, &clean);
    assert!(faithful.score < UNCALIBRATED_HOLD_THRESHOLD, "faithful {}: {:?}", faithful.score, faithful.raw);
    let (cy, cx) = (90.0, 64.0);
    let planted = run(&model, &low, &(&clean + line(h, w, cy, cx, 40.0, 0.4)));
    assert_stands_out("line", &planted, &faithful);
    // The map lights up along the wire, well above anything in the faithful map.
    let near_line = line(h, w, cy, cx, 40.0, 1.0).max_pool2d([7, 7], [1, 1], [3, 3], [1, 1], false).gt(0.5);
    let on_line = planted.doubt_map.masked_select(&near_line).max().double_value(&[]);
    let faithful_max = faithful.doubt_map.max().double_value(&[]);
    assert!(
        on_line > 0.5 && on_line > faithful_max + 0.3,
        "doubt on the line {on_line}, faithful map max {faithful_max}"
    );
}

#[test]
fn replaced_texture_raises_the_score_and_lights_the_map_where_it_is() {
    // Fine "lung" texture above the input's noise; inside one disc of the
    // output it is swapped for the texture of another place, as an
    // enhancer that invents plausible detail would.
    let (_, model) = model();
    let (h, w) = (128, 128);
    let texture = gaussian_blur(&(NoiseSource::new(9).normal(&[1, 1, h, w], Device::Cpu) * 0.25), 0.8);
    let clean = (test_image(h, w) * 0.4 + &texture).clamp(-1.0, 1.0);
    let noise = NoiseSource::new(10).normal(&[1, 1, h, w], Device::Cpu) * 0.03;
    let low = (&clean * 0.7 + noise).clamp(-1.0, 1.0);
    let faithful = run(&model, &low, &clean);
    assert!(faithful.score < UNCALIBRATED_HOLD_THRESHOLD, "faithful {}: {:?}", faithful.score, faithful.raw);
    let (cy, cx, radius) = (60.0, 70.0, 12.0);
    let disc = blob(h, w, cy, cx, radius / 2.0, 1.0).gt(0.135).to_kind(Kind::Float);
    let elsewhere = texture.roll([40, -45], [2, 3]);
    let planted = run(&model, &low, &(&clean + (elsewhere - &texture) * &disc));
    assert_stands_out("texture", &planted, &faithful);
    let inside = planted.doubt_map.masked_select(&disc.gt(0.5)).max().double_value(&[]);
    let far = blob(h, w, cy, cx, 2.0 * radius, 1.0).lt(0.05);
    let outside = planted.doubt_map.masked_select(&far).max().double_value(&[]);
    assert!(inside > 0.5 && inside > outside + 0.3, "doubt inside the disc {inside}, far from it {outside}");
}

#[test]
fn crisper_detail_is_forgiven_but_an_erased_edge_is_not() {
    // An output whose own edges are 50 % crisper than the input's (an
    // unsharp mask) is faithful: the detail-gain fit takes much of that away
    // (a third of the medium z, measured). A stripe smoothed out over a disc
    // (an edge factor of 0) still stands out.
    let (_, model) = model();
    let (h, w) = (128, 112);
    let (clean, _) = pair(h, w, 11);
    let low = (&clean * 0.7 + NoiseSource::new(11).normal(&[1, 1, h, w], Device::Cpu) * 0.02).clamp(-1.0, 1.0);
    let crisper = (&clean + (&clean - gaussian_blur(&clean, 8.0)) * 0.5).clamp(-1.0, 1.0);
    let (cy, cx) = (0.6 * h as f64, 0.5 * w as f64);
    let disc = blob(h, w, cy, cx, 6.0, 1.0).gt(0.3).to_kind(Kind::Float);
    let erased = &clean * (-&disc + 1.0) + gaussian_blur(&clean, 6.0) * &disc;
    let no_fit = HallucinationConfig { detail_gain: [1.0, 1.0], ..HallucinationConfig::default() };
    let medium = |report: &HallucinationReport| report.raw.iter().find(|(n, _)| n == "medium-structure").unwrap().1;
    let with_fit = |candidate: &Tensor| run(&model, &low, candidate);
    let without_fit = |candidate: &Tensor| score(&model, &low, candidate, &model_tiles(), &no_fit).unwrap();

    let (crisp_fit, crisp_plain) = (with_fit(&crisper), without_fit(&crisper));
    assert!(
        medium(&crisp_fit) < 0.75 * medium(&crisp_plain),
        "crisper edges: medium z {} with the fit, {} without",
        medium(&crisp_fit),
        medium(&crisp_plain)
    );
    let faithful = with_fit(&clean);
    let planted = with_fit(&erased);
    assert_in_unit_range(&planted);
    assert_stands_out("erased stripe", &planted, &faithful);
}

#[test]
fn a_burnt_in_marker_shown_crisp_is_not_doubted_but_a_nodule_beside_it_is() {
    // A side marker (a white bar on a black disc, drawn after acquisition)
    // that the low-dose input shows blurred and faint, and the output crisp:
    // not anatomy, so not doubted with `skip-annotations`; doubted without.
    let (_, model) = model();
    let (h, w) = (128, 112);
    let (clean, low) = pair(h, w, 12);
    let (my, mx) = (32.0, 78.0);
    let disc = blob(h, w, my, mx, 7.0, 1.0).gt(0.3).to_kind(Kind::Float);
    let bar = (blob(h, w, my, mx, 3.0, 1.0).gt(0.3).to_kind(Kind::Float) * &disc).clamp(0.0, 1.0);
    let drawn = (-&disc + 1.0) * &clean - &disc + &bar * 2.0;
    let faint = &low + gaussian_blur(&(&drawn - &clean), 2.0) * 0.15;
    let plain = HallucinationConfig { skip_annotations: false, ..HallucinationConfig::default() };
    let faithful = run(&model, &low, &clean);
    let skipping = run(&model, &faint, &drawn);
    let not_skipping = score(&model, &faint, &drawn, &model_tiles(), &plain).unwrap();
    assert!(
        skipping.score < faithful.score + 0.15 && not_skipping.score > skipping.score + 0.5,
        "marker: {} skipped, {} not, {} without a marker: {:?}",
        skipping.score,
        not_skipping.score,
        faithful.score,
        not_skipping.raw
    );
    // A nodule away from the marker still stands out.
    let (cy, cx) = (85.0, 40.0);
    let planted = run(&model, &faint, &(&drawn + blob(h, w, cy, cx, 4.0, 0.35)));
    assert_stands_out("blob beside a marker", &planted, &skipping);
    let map = planted.doubt_map.view([h, w]);
    let flat_index = map.argmax(None, false).int64_value(&[]);
    let (py, px) = ((flat_index / w) as f64, (flat_index % w) as f64);
    assert!((py - cy).hypot(px - cx) <= 4.0, "map peaks at ({py}, {px}), blob at ({cy}, {cx})");
}

#[test]
fn a_region_pressed_into_the_floor_of_the_input_is_not_scored() {
    // The tone curve pressed the left of the input into its floor (within
    // the quantisation noise of its minimum, not exactly at it): there the
    // input says only "this dark or darker", so the output's structure there
    // is not doubted with `extreme-tolerance`; with exact clipping it is.
    let (_, model) = model();
    let (h, w) = (128, 112);
    let (clean, low) = pair(h, w, 13);
    let floor = low.min().double_value(&[]) - 0.05;
    let left = Tensor::arange(w, (Kind::Float, Device::Cpu)).view([1, 1, 1, w]).lt(40).to_kind(Kind::Float);
    let jitter = NoiseSource::new(14).normal(&[1, 1, h, w], Device::Cpu).abs().clamp(0.0, 3.0) * 0.002 + floor;
    let pressed = &low * (-&left + 1.0) + jitter * &left;
    // The output is dark there too, with a lobe the input cannot confirm or deny.
    let dark = blob(h, w, 60.0, 20.0, 6.0, 0.2) - 0.9;
    let candidate = &clean * (-&left + 1.0) + dark * &left;
    let exact = HallucinationConfig { extreme_tolerance: 0.0, ..HallucinationConfig::default() };
    let tolerant = run(&model, &pressed, &candidate);
    let strict = score(&model, &pressed, &candidate, &model_tiles(), &exact).unwrap();
    assert!(
        tolerant.score < UNCALIBRATED_HOLD_THRESHOLD && strict.score > tolerant.score + 0.3,
        "floored region: {} with the tolerance, {} without: {:?}",
        tolerant.score,
        strict.score,
        strict.raw
    );
}

#[test]
fn the_score_is_bit_for_bit_repeatable() {
    let (_, model) = model();
    let (clean, low) = pair(80, 72, 5);
    let planted = &clean + blob(80, 72, 30.0, 30.0, 3.0, 0.3);
    let config = HallucinationConfig {
        samples: 2,
        sample_steps: 2,
        evaluate_unweighted: true,
        ..HallucinationConfig::default()
    };
    let first = score(&model, &low, &planted, &model_tiles(), &config).unwrap();
    let second = score(&model, &low, &planted, &model_tiles(), &config).unwrap();
    assert_eq!(first.score.to_bits(), second.score.to_bits());
    assert_eq!(first.components, second.components);
    let names: Vec<&str> = first.components.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, hallucination::COMPONENTS);
    assert!(first.doubt_map.equal(&second.doubt_map), "doubt maps differ");
    assert_in_unit_range(&first);
}

#[test]
fn any_matrix_size_works_and_large_ones_run_at_the_working_size() {
    let (_, model) = model();
    for (h, w) in [(37, 53), (65, 17), (601, 523)] {
        let (clean, low) = pair(h, w, 6);
        let report = run(&model, &low, &clean);
        assert_eq!(report.doubt_map.size(), vec![1, 1, h, w]);
        assert_in_unit_range(&report);
        let names: Vec<&str> = report.components.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, &hallucination::COMPONENTS[..5]);
    }
}

#[test]
fn mismatched_shapes_are_refused_with_a_reason() {
    let (_, model) = model();
    let (_, low) = pair(32, 32, 7);
    let error = score(&model, &low, &low.narrow(3, 0, 31), &model_tiles(), &HallucinationConfig::default())
        .unwrap_err()
        .to_string();
    assert!(error.contains("32x31") && error.contains("32x32"), "{error}");
    let bad = HallucinationConfig { working_size: 4, ..HallucinationConfig::default() };
    assert!(score(&model, &low, &low, &model_tiles(), &bad).unwrap_err().to_string().contains("working-size"));
}

#[test]
fn the_calibration_lives_in_the_bundle_manifest() {
    let work = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(tiny_bundle_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, work.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut bundle = Bundle::load(work.path()).unwrap();
    bundle.manifest.hallucination = None;
    let uncalibrated = Bundle::save_manifest(work.path(), &bundle.manifest).unwrap();
    assert_eq!(hold_threshold(&uncalibrated.manifest), UNCALIBRATED_HOLD_THRESHOLD);

    let mut manifest = uncalibrated.manifest.clone();
    let mut benchmark = toml::Table::new();
    benchmark.insert("auroc".into(), 0.93.into());
    let config = HallucinationConfig { working_size: 384, ..HallucinationConfig::default() };
    manifest.hallucination = Some(HallucinationCalibration { hold_threshold: 0.42, config: config.clone(), benchmark });
    let saved = Bundle::save_manifest(work.path(), &manifest).unwrap();
    assert_ne!(saved.sha256, uncalibrated.sha256, "the bundle's identity must follow its manifest");
    let reloaded = Bundle::load(work.path()).unwrap();
    assert_eq!(hold_threshold(&reloaded.manifest), 0.42);
    assert_eq!(hallucination::bundle_config(&reloaded.manifest), config);
    let text = std::fs::read_to_string(work.path().join("bundle.toml")).unwrap();
    assert!(text.contains("[hallucination]") && text.contains("hold-threshold = 0.42"), "{text}");
    LedModel::from_bundle(&reloaded, Device::Cpu, Precision::F32).unwrap();

    // New weight records cannot sneak in through a manifest rewrite.
    manifest.files.get_mut("g_ab").unwrap().sha256 = "00".repeat(32);
    assert!(Bundle::save_manifest(work.path(), &manifest).is_err());
}

#[test]
fn the_config_is_kebab_case_and_refuses_unknown_keys() {
    let config: HallucinationConfig =
        toml::from_str("working-size = 256\n[fine-structure]\nscale = 1.5\nweight = 0.5\noffset = 4.0\nspread = 3.0\n")
            .unwrap();
    assert_eq!(config.working_size, 256);
    assert_eq!(config.fine_structure.weight, 0.5);
    assert_eq!(config.medium_structure, HallucinationConfig::default().medium_structure);
    // Keys newer than a bundle's calibration keep the meaning it was calibrated with.
    assert_eq!((config.margin, config.highpass, config.detail_gain), (0.03, 0.0, [1.0, 1.0]));
    assert_eq!((config.extreme_tolerance, config.skip_annotations), (0.0, false));
    let default = HallucinationConfig::default();
    assert_eq!((default.detail_gain, default.extreme_tolerance, default.skip_annotations), ([0.5, 2.0], 2.0, true));
    let error = toml::from_str::<HallucinationConfig>("workingsize = 3").unwrap_err().to_string();
    assert!(error.contains("unknown field"), "{error}");
}
