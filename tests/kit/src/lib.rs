//! The test kit: what `daemon/tests` and the end-to-end tests (`tests/`)
//! share, written once. A dev-dependency only; nothing here ships.
//!
//! - [`database`]: a PostgreSQL database made for one test on the
//!   `DATABASE_URL` server and dropped afterwards.
//! - [`wait`]: polling with a limit that says what it waited for, async and blocking.
//! - [`ports`]: the address the daemon reported binding, or a free port for
//!   programs that cannot bind port 0.
//! - [`tiny_bundle`]: the tiny model bundle checked into the repository.

pub mod database;
pub mod ports;
pub mod wait;

use std::path::PathBuf;

/// The workspace root (this crate lives in `tests/kit`).
pub fn workspace() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The tiny bundle checked into the repository (random fixed weights, a few KB).
pub fn tiny_bundle() -> PathBuf {
    workspace().join("models/bundles/tiny")
}
