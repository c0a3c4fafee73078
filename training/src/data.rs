//! Training data: folders of chest X-ray images, deterministic splits, the
//! unpaired pools and paired sets the LED stages train on, and labelled
//! class folders for the evaluation classifier.
//!
//! Every image file goes through [`read_images`], which dispatches on the file
//! extension: PNG today; DICOM joins there (through the daemon's pixel
//! decoding to display intensity) without touching any caller.
//!
//! Splits depend only on file names (sha256 of the name with a salt), never on
//! listing order or on which other files exist, so adding images never moves
//! an existing image between train, validation and test.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::degrade::{degrade_tensor, DegradationParams, DegradationRanges};
use crate::image_io;

/// File extensions [`read_images`] can decode (lower case).
pub use crate::image_io::IMAGE_EXTENSIONS;

/// Whether `path` names a file [`read_images`] can decode.
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Every image under the given folders (recursively), sorted.
pub fn list_images(folders: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut images = Vec::new();
    let mut pending: Vec<PathBuf> = folders.to_vec();
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).with_context(|| format!("listing {}", folder.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if is_image(&path) {
                images.push(path);
            }
        }
    }
    images.sort();
    anyhow::ensure!(!images.is_empty(), "no images ({IMAGE_EXTENSIONS:?}) under {folders:?}");
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

/// A file of a training or evaluation folder that could not be used, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// What was wrong with it.
    pub reason: String,
}

/// Reads each file (PNG or DICOM, through [`image_io`], the one place that
/// knows file formats) as a `[1, 1, H, W]` tensor in [-1, 1], resized to
/// `side` x `side` when given, keeping the readable ones with their paths. A file that cannot be
/// read, or whose own size is below `min_side` pixels, is named on stderr
/// with the reason (prefixed by `stage`) and returned among the skipped;
/// colour and 16-bit files are converted on reading.
pub fn read_images(
    paths: &[PathBuf],
    side: Option<u32>,
    min_side: u32,
    stage: &str,
) -> (Vec<(PathBuf, Tensor)>, Vec<Skipped>) {
    let (mut images, mut skipped) = (Vec::new(), Vec::new());
    for path in paths {
        let reason = match image_io::read_image_sized(path, side) {
            Ok((image, (w, h))) if w >= min_side && h >= min_side => {
                images.push((path.clone(), image));
                continue;
            }
            Ok((_, (w, h))) => format!("{w}x{h} is smaller than {min_side} px"),
            Err(error) => format!("{error:#}"),
        };
        eprintln!("{stage}: skipping {}: {reason}", path.display());
        skipped.push(Skipped { path: path.clone(), reason });
    }
    (images, skipped)
}

/// Loads images, resized to `size` x `size`, into one `[N, 1, size, size]`
/// tensor, with the paths of its rows: unreadable or tiny files are named on
/// stderr (by `stage`) and skipped, as [`read_images`] does.
pub fn load_stack(paths: &[PathBuf], size: u32, stage: &str) -> anyhow::Result<(Tensor, Vec<PathBuf>)> {
    let (read, skipped) = read_images(paths, Some(size), 16, stage);
    anyhow::ensure!(
        !read.is_empty(),
        "{stage}: none of the {} images could be used ({} skipped)",
        paths.len(),
        skipped.len()
    );
    let (kept, images): (Vec<PathBuf>, Vec<Tensor>) = read.into_iter().unzip();
    Ok((Tensor::cat(&images, 0), kept))
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

/// A labelled class: its name and the folders of its images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    /// Class name (the label index is the position in the class list).
    pub name: String,
    /// Folders searched recursively for its images.
    pub folders: Vec<PathBuf>,
}

/// The classes of a labelled set: `NAME=DIR` pairs (a name may repeat to add
/// folders), or else the subfolders of `root`, sorted by name.
pub fn classes(pairs: &[String], root: Option<&Path>) -> anyhow::Result<Vec<Class>> {
    let mut classes: Vec<Class> = Vec::new();
    for pair in pairs {
        let (name, dir) = pair
            .split_once('=')
            .filter(|(n, d)| !n.is_empty() && !d.is_empty())
            .with_context(|| format!("--class {pair:?}: expected NAME=DIR, e.g. --class covid=data/covid"))?;
        match classes.iter_mut().find(|c| c.name == name) {
            Some(class) => class.folders.push(dir.into()),
            None => classes.push(Class { name: name.into(), folders: vec![dir.into()] }),
        }
    }
    if let Some(root) = root {
        anyhow::ensure!(classes.is_empty(), "give either --class NAME=DIR pairs or --data ROOT, not both");
        let mut dirs = Vec::new();
        for entry in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            }
        }
        dirs.sort();
        for dir in dirs {
            let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            classes.push(Class { name, folders: vec![dir] });
        }
    }
    anyhow::ensure!(
        classes.len() >= 2,
        "a labelled set needs at least two classes, found {}: give --class NAME=DIR twice or more, or --data ROOT with one subfolder per class",
        classes.len()
    );
    Ok(classes)
}

/// The images of `split` of every class with their label (class index), sorted by path.
pub fn labelled_split(classes: &[Class], split: Split) -> anyhow::Result<Vec<(PathBuf, i64)>> {
    let mut items = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let images = list_images(&class.folders).with_context(|| format!("class {}", class.name))?;
        items.extend(images.into_iter().filter(|p| split_of(p, 0.1, 0.1) == split).map(|p| (p, label as i64)));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_pairs_group_folders_and_reject_bad_syntax() {
        let classes = classes(&["a=x".into(), "b=y".into(), "a=z".into()], None).unwrap();
        assert_eq!(classes.len(), 2);
        assert_eq!(classes[0].folders, vec![PathBuf::from("x"), PathBuf::from("z")]);
        let error = super::classes(&["nodir".into(), "b=y".into()], None).unwrap_err().to_string();
        assert!(error.contains("NAME=DIR"), "{error}");
        assert!(super::classes(&["a=x".into()], None).unwrap_err().to_string().contains("two classes"));
    }

    #[test]
    fn unknown_extensions_are_refused_with_a_hint() {
        let (read, skipped) = read_images(&[PathBuf::from("scan.jpg")], None, 1, "test");
        assert!(read.is_empty());
        let error = &skipped[0].reason;
        assert!(error.contains("unsupported image type") && error.contains("png"), "{error}");
        assert!(is_image(Path::new("a/B.PNG")) && !is_image(Path::new("a/b.txt")));
    }
}
