//! Deterministic Gaussian noise.
//!
//! Noise is drawn on the host from a ChaCha stream and copied to the device, so
//! the same seed gives the same noise on CPU and on any GPU (libtorch's own
//! generators differ between devices), and concurrent workers never share a
//! global generator.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

/// A seeded source of standard normal noise tensors.
pub struct NoiseSource {
    rng: ChaCha8Rng,
}

impl NoiseSource {
    /// A source seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self { rng: ChaCha8Rng::seed_from_u64(seed) }
    }

    /// A source seeded from several byte strings, e.g. (SOP Instance UID, bundle sha256).
    /// Each part is length-prefixed so ("ab", "c") and ("a", "bc") differ.
    pub fn from_parts(parts: &[&[u8]]) -> Self {
        Self::new(seed_from_parts(parts))
    }

    /// A float tensor of the given shape with i.i.d. N(0, 1) entries, on `device`.
    pub fn normal(&mut self, shape: &[i64], device: Device) -> Tensor {
        let count: i64 = shape.iter().product();
        let values: Vec<f32> = (0..count).map(|_| StandardNormal.sample(&mut self.rng)).collect();
        Tensor::from_slice(&values).reshape(shape).to_kind(Kind::Float).to_device(device)
    }
}

/// The 64-bit seed for a list of byte strings: the first 8 bytes of a sha256 over them.
pub fn seed_from_parts(parts: &[&[u8]]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("sha256 has 32 bytes"))
}
