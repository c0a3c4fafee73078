//! Training data: folders of PNG chest X-rays, deterministic splits, and the
//! unpaired pools and paired sets the LED stages train on.
//!
//! Splits depend only on file names (sha256 of the name with a salt), never on
//! listing order or on which other files exist, so adding images never moves
//! an existing image between train, validation and test.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::Rng;
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::degrade::{degrade_tensor, DegradationParams, DegradationRanges};
use crate::image_io;

/// Every PNG under the given folders (recursively), sorted.
pub fn list_images(folders: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut images = Vec::new();
    let mut pending: Vec<PathBuf> = folders.to_vec();
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).with_context(|| format!("listing {}", folder.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
                images.push(path);
            }
        }
    }
    images.sort();
    anyhow::ensure!(!images.is_empty(), "no PNG images under {folders:?}");
    Ok(images)
}

/// A number in [0, 1) fixed by the file name and `salt`.
pub fn name_fraction(path: &Path, salt: &str) -> f64 {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let digest = Sha256::digest(format!("{salt}/{name}").as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) as f64 / (u64::MAX as f64 + 1.0)
}

/// The split an image belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Used for fitting.
    Train,
    /// Used for validation loss and early stopping.
    Validation,
    /// Held out for evaluation.
    Test,
}

/// Assigns `path` to a split: `validation` and `test` are the fractions held out.
pub fn split_of(path: &Path, validation: f64, test: f64) -> Split {
    let u = name_fraction(path, "split");
    if u < test {
        Split::Test
    } else if u < test + validation {
        Split::Validation
    } else {
        Split::Train
    }
}

/// Loads images, resized to `size` x `size`, into one `[N, 1, size, size]` tensor.
pub fn load_stack(paths: &[PathBuf], size: u32) -> anyhow::Result<Tensor> {
    let images = paths.iter().map(|p| image_io::read_png_resized(p, Some(size))).collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&images, 0))
}

/// Degrades each image `[N, 1, H, W]` with its own parameters drawn from
/// `ranges`, seeded by the file name; returns the stack and the parameters.
pub fn degrade_stack(
    images: &Tensor,
    paths: &[PathBuf],
    ranges: &DegradationRanges,
) -> anyhow::Result<(Tensor, Vec<DegradationParams>)> {
    use rand::SeedableRng;
    let mut degraded = Vec::with_capacity(paths.len());
    let mut params = Vec::with_capacity(paths.len());
    for (i, path) in paths.iter().enumerate() {
        let seed = (name_fraction(path, "degrade") * u64::MAX as f64) as u64;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let drawn = ranges.sample(&mut rng);
        degraded.push(degrade_tensor(&images.get(i as i64), &drawn, rng.gen())?);
        params.push(drawn);
    }
    Ok((Tensor::stack(&degraded, 0).to_kind(Kind::Float), params))
}

/// A random batch of rows of `pool` (all the same indices for each tensor).
pub fn batch(pools: &[&Tensor], size: i64, rng: &mut impl Rng) -> Vec<Tensor> {
    let count = pools[0].size()[0];
    let indices: Vec<i64> = (0..size).map(|_| rng.gen_range(0..count)).collect();
    let index = Tensor::from_slice(&indices);
    pools.iter().map(|pool| pool.index_select(0, &index)).collect()
}
