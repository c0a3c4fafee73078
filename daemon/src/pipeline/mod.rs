//! From a spooled study to a result: the [`tracker`] turns quiet studies into
//! jobs on the [`queue`]; a [`worker`] claims one and, per instance, runs the
//! exposure gate ([`triage`]), then for a flagged image LED ([`enhance`]) and
//! the hallucination check ([`verify`]), derives the new instance and queues
//! it for delivery.

pub mod enhance;
pub mod queue;
pub mod tracker;
pub mod triage;
pub mod verify;
pub mod worker;
