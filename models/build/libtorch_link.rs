// Link-time fixes for libtorch, shared by every crate that builds a binary or
// test against it (`daemon/build.rs`, `training/build.rs` and `tests/build.rs`
// include this file).
//
// torch-sys tells us where libtorch lives (`DEP_TCH_LIBTORCH_LIB`, from its
// `links = "tch"` metadata); a crate sees it only when it depends on torch-sys
// directly, which is why each of them does. Two things are added:
// - an rpath to that folder, so binaries and tests find libtorch at run time
//   without `LD_LIBRARY_PATH`;
// - `libtorch_cuda` linked with `--no-as-needed`: nothing references it by
//   symbol, so the default `--as-needed` drops it and CUDA silently stays off.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Some(lib_dir) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        // torch-sys built with `doc-only`: nothing is linked.
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib_dir.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
