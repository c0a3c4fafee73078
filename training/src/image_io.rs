//! PNG files to and from model tensors. Grayscale 8- or 16-bit (colour images
//! are converted to luma); intensity 0..1 maps to the model range [-1, 1].

use std::path::Path;

use anyhow::Context;
use image::{ImageBuffer, Luma};
use tch::{Kind, Tensor};

/// File extensions [`read_image`] reads.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "dcm"];

/// Reads an image file to score or enhance as a `[1, 1, H, W]` float tensor
/// in [-1, 1], at its own size.
pub fn read_image(path: &Path) -> anyhow::Result<Tensor> {
    read_image_resized(path, None)
}

/// Reads an image file as a `[1, 1, H, W]` float tensor in [-1, 1], resized
/// to `side` x `side` when given. The one place input formats are told apart:
/// PNG, and DICOM (any transfer syntax the daemon accepts) decoded by the
/// daemon's own code, so a DICOM file means here what it means to cxr-ledd
/// (modality rescale, VOI window, MONOCHROME1 inverted).
pub fn read_image_resized(path: &Path, side: Option<u32>) -> anyhow::Result<Tensor> {
    Ok(read_image_sized(path, side)?.0)
}

/// [`read_image_resized`], with the file's own (width, height) before any
/// resizing: one decode serves both the size check and the pixels.
pub fn read_image_sized(path: &Path, side: Option<u32>) -> anyhow::Result<(Tensor, (u32, u32))> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("png") => read_png_sized(path, side),
        Some("dcm") => {
            let object = dicom_object::open_file(path).with_context(|| format!("reading DICOM {}", path.display()))?;
            let image = cxr_led_dicom::pixels::decode_display(&object)
                .with_context(|| format!("decoding the pixels of {}", path.display()))?;
            let (h, w) = (i64::from(image.rows), i64::from(image.columns));
            let tensor = Tensor::from_slice(&image.pixels).view([1, 1, h, w]) * 2.0 - 1.0;
            let tensor = match side {
                Some(side) => tensor.upsample_bilinear2d([i64::from(side), i64::from(side)], false, None, None),
                None => tensor,
            };
            Ok((tensor, (image.columns, image.rows)))
        }
        _ => anyhow::bail!(
            "{}: unsupported image type; use PNG or DICOM (.dcm) (supported: {IMAGE_EXTENSIONS:?})",
            path.display()
        ),
    }
}

/// Reads a PNG as a `[1, 1, H, W]` float tensor in [-1, 1], resized to
/// `side` x `side` when given (aspect ratio not kept: chest X-ray sets are near square).
pub fn read_png_resized(path: &Path, side: Option<u32>) -> anyhow::Result<Tensor> {
    Ok(read_png_sized(path, side)?.0)
}

/// [`read_png_resized`], with the file's own (width, height).
fn read_png_sized(path: &Path, side: Option<u32>) -> anyhow::Result<(Tensor, (u32, u32))> {
    let decoded = image::open(path).with_context(|| format!("reading image {}", path.display()))?;
    let own = (decoded.width(), decoded.height());
    let mut gray = decoded.into_luma16();
    if let Some(side) = side {
        gray = image::imageops::resize(&gray, side, side, image::imageops::FilterType::Triangle);
    }
    let (width, height) = gray.dimensions();
    let values: Vec<f32> = gray.into_raw().into_iter().map(|v| v as f32 / 65535.0 * 2.0 - 1.0).collect();
    Ok((Tensor::from_slice(&values).view([1, 1, height as i64, width as i64]), own))
}

/// Writes a `[1, 1, H, W]` tensor in [-1, 1] as an 8-bit grayscale PNG (maps, previews).
pub fn write_png_8bit(path: &Path, image: &Tensor) -> anyhow::Result<()> {
    let size = image.size();
    anyhow::ensure!(size.len() == 4 && size[0] == 1 && size[1] == 1, "expected [1, 1, H, W], got {size:?}");
    let scaled = ((image.to_kind(Kind::Float).to_device(tch::Device::Cpu).clamp(-1.0, 1.0) + 1.0) * 127.5)
        .round()
        .flatten(0, -1);
    let values: Vec<u8> = Vec::<f32>::try_from(&scaled)?.into_iter().map(|v| v as u8).collect();
    let buffer = image::GrayImage::from_raw(size[3] as u32, size[2] as u32, values)
        .context("pixel count does not match the image size")?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    buffer.save(path).with_context(|| format!("writing {}", path.display()))
}

/// Writes a `[1, 1, H, W]` tensor in [-1, 1] as a 16-bit grayscale PNG.
pub fn write_png(path: &Path, image: &Tensor) -> anyhow::Result<()> {
    let size = image.size();
    anyhow::ensure!(size.len() == 4 && size[0] == 1 && size[1] == 1, "expected [1, 1, H, W], got {size:?}");
    let (height, width) = (size[2] as u32, size[3] as u32);
    let scaled = ((image.to_kind(Kind::Float).to_device(tch::Device::Cpu).clamp(-1.0, 1.0) + 1.0) * 32767.5)
        .round()
        .flatten(0, -1);
    let values: Vec<u16> = Vec::<f32>::try_from(&scaled)?.into_iter().map(|v| v as u16).collect();
    let buffer: ImageBuffer<Luma<u16>, Vec<u16>> =
        ImageBuffer::from_raw(width, height, values).context("pixel count does not match the image size")?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    buffer.save(path).with_context(|| format!("writing {}", path.display()))
}
