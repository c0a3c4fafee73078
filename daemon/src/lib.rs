//! cxr-led's service, `cxr-ledd`, as a library: one module per stage.
//!
//! - [`config`]: the TOML configuration.
//! - [`ingest`]: the DICOM SCP (C-ECHO, C-STORE) with its durable [`spool`].
//! - [`tracker`]: study assembly (quiet period) into the job [`queue`].
//! - [`worker`]: one job at a time: [`triage`] (exposure gate), [`pixels`]
//!   (decode to display intensity and back), [`enhance`] (LED and the
//!   hallucination check), then derive and queue for delivery.
//! - [`derive`]: the derived DICOM instance (and the doubt map) of an enhancement.
//! - [`deliver`]: the outbox and the C-STORE SCU that sends derived instances to the PACS.
//! - [`audit`]: the append-only, hash-chained audit trail and its verification.
//! - [`alerts`]: alert mails for held results, dead jobs, unreachable PACS ([`mail`] sends them).
//! - [`db`]: PostgreSQL pool and migrations.
//! - [`reproduce`]: re-run a recorded enhancement and compare the pixels.
//! - [`service`]: start-up (recovery), run, shutdown; [`notify`] tells systemd;
//!   [`reload`] swaps a changed configuration or model bundle in.
//! - [`tls`]: DICOM TLS configurations for the TLS listener and for destinations.
//! - [`http`]: `/healthz`, `/readyz` ([`health`]) and `/metrics` ([`metrics`]) for operators.

pub mod alerts;
pub mod audit;
pub mod config;
pub mod db;
pub mod deliver;
pub mod derive;
pub mod enhance;
pub mod health;
pub mod http;
pub mod ingest;
pub mod mail;
pub mod metrics;
pub mod notify;
pub mod pixels;
pub mod queue;
pub mod reload;
pub mod reproduce;
pub mod service;
pub mod spool;
pub mod tls;
pub mod tracker;
pub mod triage;
pub mod worker;
