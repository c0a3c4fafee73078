//! cxr-led's DICOM vocabulary, shared by the daemon, the training binary and
//! the end-to-end tests. Pure data in, data out: no database, no network, no
//! tensors (the models crate owns those), and the only disk write is
//! [`derive::write_durably`].
//!
//! - [`uids`]: SOP classes and transfer syntaxes, from the standard dictionary.
//! - [`dimse`]: DIMSE command sets (C-ECHO, C-STORE requests and responses).
//! - [`pixels`]: stored values to the model's display image and back.
//! - [`derive`]: the derived instance (and the doubt map) of an enhancement.

pub mod derive;
pub mod dimse;
pub mod pixels;
pub mod uids;
