//! Helpers shared by the models crate's tests.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use tch::Tensor;

/// The checked-in tiny bundle.
pub fn tiny_bundle_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bundles/tiny")
}

/// Largest absolute difference between two tensors, as f64.
#[track_caller]
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a - b).abs().max().double_value(&[])
}

/// A smooth, non-trivial test image `[1, 1, h, w]` in [-1, 1].
pub fn test_image(h: i64, w: i64) -> Tensor {
    let ys = Tensor::arange(h, (tch::Kind::Float, tch::Device::Cpu)).view([h, 1]) / h as f64;
    let xs = Tensor::arange(w, (tch::Kind::Float, tch::Device::Cpu)).view([1, w]) / w as f64;
    ((ys * 7.0).sin() * (xs * 5.0 + 0.3).cos() * 0.9).view([1, 1, h, w])
}

/// libtorch's generator is process-global and tests run in parallel threads:
/// a test that seeds it and draws weights holds this lock meanwhile.
pub fn global_rng() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
