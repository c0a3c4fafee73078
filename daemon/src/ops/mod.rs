//! What operators and systemd see: [`http`] serves `/healthz`, `/readyz`
//! ([`health`]) and `/metrics` ([`metrics`]); [`notify`] speaks sd_notify.

pub mod health;
pub mod http;
pub mod metrics;
pub mod notify;
