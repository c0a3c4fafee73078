//! The one error type of the models crate: each variant names the step that
//! failed and says what to do about it.

use std::path::PathBuf;

/// What went wrong while building, loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// libtorch refused an operation (shape mismatch, out of memory, ...).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),

    /// A bundle file could not be read or written.
    #[error("bundle file {path}: {source}")]
    BundleIo {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// `bundle.toml` is missing, not TOML, or describes an impossible model.
    #[error("bundle manifest {path}: {message}")]
    BundleManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// A weight file's sha256 differs from the one the manifest records.
    #[error(
        "bundle file {path} has sha256 {actual} but bundle.toml records {expected}: \
         the file was changed or corrupted after export; restore it or re-export the bundle"
    )]
    HashMismatch {
        /// The weight file.
        path: PathBuf,
        /// sha256 recorded in the manifest.
        expected: String,
        /// sha256 of the file on disk.
        actual: String,
    },

    /// A weight file does not hold exactly the tensors the architecture needs.
    #[error("bundle weights {path}: {message}")]
    WeightsMismatch {
        /// The weight file.
        path: PathBuf,
        /// Which tensors are missing, unexpected or of the wrong shape.
        message: String,
    },

    /// Inference or sampling parameters that cannot work.
    #[error("invalid parameters: {0}")]
    InvalidParams(String),
}

/// Result with the models crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
