//! cxr-led's service, `cxr-ledd`, as a library: one folder per layer, one
//! module per stage of the flow.
//!
//! ```text
//! PACS ─C-STORE─▶ ingest ─▶ spool (file + row) ─▶ pipeline::tracker (quiet period per study)
//!                                                        ▼
//!                 pipeline::queue (jobs in Postgres: leases, retries, dead letter)
//!                                                        ▼
//! pipeline::worker: triage (exposure gate) ─flagged─▶ enhance (LED) ─▶ verify (score, hold?)
//!                                                        ▼ not held
//!          derive (cxr_led_dicom::derive) ─▶ delivery::outbox ─▶ delivery::scu ─C-STORE─▶ PACS
//! ```
//! Every state change writes an [`audit`] event in the same transaction;
//! [`alerts`] mails what needs a person (held results, dead jobs, an
//! unreachable PACS).
//!
//! Layers, each importing only the ones above it in this list:
//! - leaves: [`config`] (plain data, value checks), [`live`] (the cell a
//!   reload swaps), [`backoff`], [`supervise`] (stages that die stop the
//!   service), [`db`], [`audit`], [`spool`], [`tls`], [`ops::metrics`];
//! - stages: [`ingest`], [`pipeline`], [`delivery`], [`alerts`];
//! - operators' endpoints: [`ops`] (`/healthz`, `/readyz`, `/metrics`, systemd notify);
//! - [`app`]: start-up (preflight, recovery), the supervised run, reload,
//!   reproduce, shutdown.
//!
//! DICOM vocabulary (UIDs, DIMSE, pixels, the derived instance) lives in the
//! `cxr-led-dicom` crate; tensors only in `cxr-led-models`.

pub mod alerts;
pub mod app;
pub mod audit;
pub mod backoff;
pub mod config;
pub mod db;
pub mod delivery;
pub mod ingest;
pub mod live;
pub mod ops;
pub mod pipeline;
pub mod spool;
pub mod supervise;
pub mod tls;
