//! The composition root: [`preflight`] checks what the configuration points
//! at (TLS files), [`service`] starts, supervises and stops every stage,
//! [`reload`] swaps a changed configuration or bundle in, and [`reproduce`]
//! re-runs a recorded enhancement. Nothing below `app` imports it.

pub mod preflight;
pub mod reload;
pub mod reproduce;
pub mod service;
