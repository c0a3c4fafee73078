//! Links libtorch with an rpath and keeps libtorch_cuda; see models/build/libtorch_link.rs.

include!("./build/libtorch_link.rs");
