//! cxr-led's service, `cxr-ledd`, as a library: one module per stage.
//!
//! - [`config`]: the TOML configuration.
//! - [`ingest`]: the DICOM SCP (C-ECHO, C-STORE) with its durable [`spool`].
//! - [`tracker`]: study assembly (quiet period) into the job queue.
//! - [`audit`]: audit events.
//! - [`db`]: PostgreSQL pool and migrations.
//! - [`service`]: start-up (recovery), run, shutdown.

pub mod audit;
pub mod config;
pub mod db;
pub mod ingest;
pub mod pixels;
pub mod queue;
pub mod service;
pub mod spool;
pub mod tracker;
pub mod triage;
