//! Resumable training state: weights as safetensors beside a `state.json`,
//! written atomically (temporary name, then rename) so that a run killed at
//! any moment resumes from the last complete checkpoint.
//!
//! Optimizer moments are not saved (tch cannot serialise them): a resumed run
//! restarts Adam's moment estimates, which costs a few hundred steps of
//! warm-up, not correctness.

use std::path::Path;

use anyhow::Context;
use cxr_led_models::Bundle;
use serde::{de::DeserializeOwned, Serialize};
use tch::nn::VarStore;

/// Saves `store` as `dir/name.safetensors` atomically.
pub fn save_store(dir: &Path, name: &str, store: &VarStore) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.safetensors"));
    let partial = dir.join(format!("{name}.partial.safetensors"));
    store.save(&partial).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &path).with_context(|| format!("renaming to {}", path.display()))
}

/// Loads `dir/name.safetensors` into `store` (every variable must be present).
pub fn load_store(dir: &Path, name: &str, store: &mut VarStore) -> anyhow::Result<()> {
    let path = dir.join(format!("{name}.safetensors"));
    store.load(&path).with_context(|| format!("loading checkpoint {}", path.display()))
}

/// Saves the JSON state last, so it only ever names complete weight files.
pub fn save_state<T: Serialize>(dir: &Path, state: &T) -> anyhow::Result<()> {
    let path = dir.join("state.json");
    let partial = dir.join("state.json.partial");
    std::fs::write(&partial, serde_json::to_vec_pretty(state)?)?;
    std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))
}

/// The saved state, if a checkpoint exists.
pub fn load_state<T: DeserializeOwned>(dir: &Path) -> anyhow::Result<Option<T>> {
    let path = dir.join("state.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?))
}

/// The bundle a fine-tuning run starts from (`--init`), or None when `init`
/// is not a bundle folder (then it is a checkpoint folder).
pub fn init_bundle(init: &Path) -> anyhow::Result<Option<Bundle>> {
    if !init.join("bundle.toml").is_file() {
        return Ok(None);
    }
    let bundle = Bundle::load(init).with_context(|| format!("loading the --init bundle {}", init.display()))?;
    Ok(Some(bundle))
}

/// How a run's record names the part of a bundle it started from
/// (`what`: "the UNet", "the enhancer"): name, version, sha256 and folder,
/// so the provenance chain in `bundle.toml` can be followed back.
pub fn describe_init(what: &str, bundle: &Bundle, init: &Path) -> String {
    format!(
        "{what} of bundle {} {} (sha256 {}) at {}",
        bundle.manifest.name,
        bundle.manifest.version,
        bundle.sha256,
        init.display()
    )
}
