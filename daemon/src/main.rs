//! `cxr-ledd`: the cxr-led service. For now it verifies a model bundle and
//! reports the inference device; the DICOM service grows here.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use cxr_led_models::{device, Bundle, LedModel, Precision};

#[derive(Parser)]
#[command(name = "cxr-ledd", version, about = "cxr-led: LED enhancement of under-exposed chest X-rays")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify a model bundle (every sha256, every tensor) and load it on a device.
    CheckBundle {
        /// The bundle folder (holds bundle.toml).
        bundle: PathBuf,
        /// auto, cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Report what libtorch sees: CUDA availability and device count.
    Device,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::CheckBundle { bundle, device } => {
            let device = device::parse_device(&device)?;
            let loaded = Bundle::load(&bundle).with_context(|| format!("loading bundle {}", bundle.display()))?;
            LedModel::from_bundle(&loaded, device, Precision::F32)?;
            println!(
                "bundle {} {} ok: sha256 {} on {}",
                loaded.manifest.name,
                loaded.manifest.version,
                loaded.sha256,
                device::describe(device)
            );
        }
        Command::Device => {
            println!("cuda available: {}", tch::Cuda::is_available());
            println!("cuda devices: {}", tch::Cuda::device_count());
            println!("cudnn available: {}", tch::Cuda::cudnn_is_available());
            println!("default device: {}", device::describe(tch::Device::cuda_if_available()));
        }
    }
    Ok(())
}
