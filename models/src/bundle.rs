//! The model bundle: a folder with one safetensors file per inference network
//! and a `bundle.toml` manifest that records the architecture, the inference
//! defaults, how the weights were trained and evaluated, and the sha256 of
//! every weight file. Loading checks every hash and refuses a mismatch, and
//! checks that each file holds exactly the tensors the architecture needs.
//!
//! The bundle's own identity, [`Bundle::sha256`], is the sha256 of
//! `bundle.toml`; since the manifest holds the weight hashes, it pins the weights too.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tch::nn::VarStore;
use tch::Tensor;

pub use crate::manifest::{BundleManifest, Normalisation, WeightFile, ENHANCER_NETWORKS, FORMAT_VERSION, NETWORKS};
use crate::{Error, Result};

/// The manifest's file name inside a bundle folder.
pub const MANIFEST_FILE: &str = "bundle.toml";
/// Lower-case hex sha256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| Error::BundleIo { path: path.to_owned(), source })
}

/// Writes a file via a temporary name and a rename, so a crash never leaves half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let temporary = path.with_extension("partial");
    let io = |source| Error::BundleIo { path: path.to_owned(), source };
    fs::write(&temporary, bytes).map_err(io)?;
    fs::rename(&temporary, path).map_err(io)
}

/// A bundle read from disk with every hash verified; the weight bytes are kept
/// so that what was hashed is exactly what gets loaded.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle folder.
    pub dir: PathBuf,
    /// The parsed manifest.
    pub manifest: BundleManifest,
    /// sha256 of `bundle.toml`: the bundle's identity in provenance and seeds.
    pub sha256: String,
    weights: BTreeMap<String, Vec<u8>>,
}

impl Bundle {
    /// Reads `dir/bundle.toml` and every weight file, checking each sha256.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest_bytes = read(&manifest_path)?;
        let invalid = |message: String| Error::BundleManifest { path: manifest_path.clone(), message };
        let text = std::str::from_utf8(&manifest_bytes).map_err(|e| invalid(format!("not UTF-8: {e}")))?;
        let manifest: BundleManifest = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if manifest.format != FORMAT_VERSION {
            return Err(invalid(format!(
                "format {} is not supported; this build reads format {FORMAT_VERSION}",
                manifest.format
            )));
        }
        let mut weights = BTreeMap::new();
        let networks = manifest.networks();
        for network in networks {
            let entry = manifest
                .files
                .get(network)
                .ok_or_else(|| invalid(format!("[files.{network}] is missing; this bundle needs {networks:?}")))?;
            if entry.path.is_empty() || entry.path.contains(['/', '\\']) || entry.path.starts_with('.') {
                return Err(invalid(format!(
                    "[files.{network}] path {:?} must be a plain file name inside the bundle folder",
                    entry.path
                )));
            }
            let path = dir.join(&entry.path);
            let bytes = read(&path)?;
            let actual = sha256_hex(&bytes);
            if actual != entry.sha256.to_ascii_lowercase() {
                return Err(Error::HashMismatch { path, expected: entry.sha256.clone(), actual });
            }
            weights.insert(network.to_owned(), bytes);
        }
        Ok(Self { dir, manifest, sha256: sha256_hex(&manifest_bytes), weights })
    }

    /// Copies a network's verified weights into `store`, which must hold exactly
    /// the same tensor names and shapes.
    pub fn load_weights(&self, network: &str, store: &VarStore) -> Result<()> {
        let path = self.dir.join(self.manifest.files.get(network).map(|f| f.path.as_str()).unwrap_or(network));
        let mismatch = |message: String| Error::WeightsMismatch { path: path.clone(), message };
        let bytes = self.weights.get(network).ok_or_else(|| mismatch(format!("no network named {network}")))?;
        let file =
            safetensors::SafeTensors::deserialize(bytes).map_err(|e| mismatch(format!("not safetensors: {e}")))?;
        let mut variables = store.variables();
        let in_file: BTreeSet<String> = file.names().into_iter().cloned().collect();
        let expected: BTreeSet<String> = variables.keys().cloned().collect();
        let missing: Vec<_> = expected.difference(&in_file).collect();
        let unexpected: Vec<_> = in_file.difference(&expected).collect();
        if !missing.is_empty() || !unexpected.is_empty() {
            return Err(mismatch(format!(
                "does not match the architecture in bundle.toml: missing {missing:?}, unexpected {unexpected:?}"
            )));
        }
        tch::no_grad(|| {
            for (name, variable) in variables.iter_mut() {
                let view = file.tensor(name).map_err(|e| mismatch(format!("{name}: {e}")))?;
                let value = Tensor::try_from(view)?;
                if value.size() != variable.size() {
                    return Err(mismatch(format!(
                        "{name} has shape {:?} but the architecture needs {:?}",
                        value.size(),
                        variable.size()
                    )));
                }
                variable.f_copy_(&value)?;
            }
            Ok(())
        })
    }

    /// Rewrites only `bundle.toml` of the verified bundle in `dir` with
    /// `manifest` (e.g. a new `[hallucination]` calibration), keeping the
    /// weight files and their recorded hashes, then loads the result back,
    /// verified. The bundle's sha256 changes with the manifest.
    pub fn save_manifest(dir: impl AsRef<Path>, manifest: &BundleManifest) -> Result<Self> {
        let dir = dir.as_ref();
        let current = Self::load(dir)?;
        let path = dir.join(MANIFEST_FILE);
        if manifest.files != current.manifest.files {
            return Err(Error::BundleManifest {
                path,
                message: "the new manifest records other weight files than the bundle holds; \
                          use LedModel::save_bundle to write new weights"
                    .into(),
            });
        }
        let text = toml::to_string_pretty(manifest)
            .map_err(|e| Error::BundleManifest { path: path.clone(), message: format!("cannot serialise: {e}") })?;
        write_atomically(&path, text.as_bytes())?;
        Self::load(dir)
    }

    /// Writes the weights of the manifest's networks from their variable stores
    /// and `manifest` (with the weight hashes filled in) to `dir`, then loads the
    /// result back, verified (`LedModel::save_bundle` for a whole model). Weights are always saved in f32. The stores are of the manifest's networks
    /// ([`BundleManifest::networks`], as training holds them), each built at its store's root.
    pub fn save_stores<'n, 's>(
        dir: impl AsRef<Path>,
        manifest: &BundleManifest,
        stores: impl IntoIterator<Item = (&'n str, &'s VarStore)>,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(|source| Error::BundleIo { path: dir.to_owned(), source })?;
        let mut manifest = manifest.clone();
        manifest.format = FORMAT_VERSION;
        manifest.files.clear();
        for (network, store) in stores {
            let file_name = format!("{network}.safetensors");
            let path = dir.join(&file_name);
            let mut tensors: Vec<(String, Tensor)> = store
                .variables()
                .into_iter()
                .map(|(name, t)| (name, t.to_kind(tch::Kind::Float).to_device(tch::Device::Cpu)))
                .collect();
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            let temporary = path.with_extension("partial");
            Tensor::write_safetensors(&tensors, &temporary)?;
            fs::rename(&temporary, &path).map_err(|source| Error::BundleIo { path: path.clone(), source })?;
            let sha256 = sha256_hex(&read(&path)?);
            manifest.files.insert(network.to_owned(), WeightFile { path: file_name, sha256 });
        }
        let text = toml::to_string_pretty(&manifest).map_err(|e| Error::BundleManifest {
            path: dir.join(MANIFEST_FILE),
            message: format!("cannot serialise: {e}"),
        })?;
        write_atomically(&dir.join(MANIFEST_FILE), text.as_bytes())?;
        Self::load(dir)
    }
}
