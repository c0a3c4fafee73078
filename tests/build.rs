//! Links libtorch with an rpath and keeps libtorch_cuda; see models/build/libtorch_link.rs.

include!("../models/build/libtorch_link.rs");
