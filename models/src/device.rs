//! Choosing the device inference runs on, from a config or command-line string.

use tch::Device;

use crate::{Error, Result};

/// Parses `auto` (first GPU if libtorch sees one, else CPU), `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    let cuda = |index: usize| {
        if tch::Cuda::is_available() && index < tch::Cuda::device_count() as usize {
            Ok(Device::Cuda(index))
        } else {
            Err(Error::InvalidParams(format!(
                "device {spec:?} was asked for but libtorch sees {} CUDA device(s); \
                 check the NVIDIA driver, or use \"cpu\" or \"auto\"",
                tch::Cuda::device_count()
            )))
        }
    };
    match spec.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => cuda(index),
            _ => Err(Error::InvalidParams(format!(
                "unknown device {spec:?}; use \"auto\", \"cpu\", \"cuda\" or \"cuda:N\""
            ))),
        },
    }
}

/// A one-line description: `cpu (2 threads)` or `cuda:0 (1 of 1 GPUs)`.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cuda(index) => format!("cuda:{index} ({} CUDA device(s) visible)", tch::Cuda::device_count()),
        _ => format!("cpu ({} threads)", tch::get_num_threads()),
    }
}
