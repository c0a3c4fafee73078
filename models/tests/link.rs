//! The build's link fixes hold: libtorch is found through the rpath, and
//! libtorch_cuda is loaded whenever the libtorch in use ships it (otherwise
//! `tch::Cuda::is_available()` would stay false on a GPU host).

use std::path::Path;

#[test]
fn libtorch_cuda_is_loaded_when_libtorch_ships_it() {
    // Touch libtorch so that it is certainly mapped.
    let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
    let _ = tch::Cuda::is_available();
    let maps = std::fs::read_to_string("/proc/self/maps").expect("Linux /proc/self/maps");
    let mapped: Vec<&str> = maps.lines().filter_map(|line| line.split_whitespace().nth(5)).collect();
    let torch_cpu = mapped
        .iter()
        .find(|path| path.ends_with("/libtorch_cpu.so"))
        .expect("libtorch_cpu.so should be mapped into the test process");
    let lib_dir = Path::new(torch_cpu).parent().unwrap();
    // cargo test puts libtorch on LD_LIBRARY_PATH itself, so check the rpath
    // in the executable's dynamic string table instead.
    let executable = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let needle = lib_dir.to_string_lossy().into_owned().into_bytes();
    assert!(
        executable.windows(needle.len()).any(|window| window == needle.as_slice()),
        "the test binary carries no rpath to {}",
        lib_dir.display()
    );
    if lib_dir.join("libtorch_cuda.so").exists() {
        assert!(
            mapped.iter().any(|path| path.ends_with("/libtorch_cuda.so")),
            "{} ships libtorch_cuda.so but it was not loaded: the --no-as-needed link fix is missing",
            lib_dir.display()
        );
    }
}
