//! What a person sees of one enhancement: the source image, cxr-led's
//! derived image and the hallucination check's doubt map, side by side in one
//! PNG (in that order, left to right), each scaled to the same height.
//!
//! The images are read back from the DICOM files cxr-led wrote, through the
//! daemon's own decoder, so the picture shows what the PACS got.

use std::path::Path;

use anyhow::Context;
use image::{imageops, GrayImage, Luma};

/// Gap between panels, pixels.
const GAP: u32 = 8;
/// Grey level of the gap and the margins.
const GAP_LEVEL: u8 = 128;

/// One grayscale picture, row-major intensities in [0, 1].
#[derive(Debug, Clone)]
pub struct Panel {
    /// Height.
    pub rows: u32,
    /// Width.
    pub columns: u32,
    /// Row-major intensities in [0, 1] (values outside are clamped).
    pub pixels: Vec<f32>,
}

impl Panel {
    /// The display image of a DICOM file (modality rescale and VOI window, as
    /// the model saw it).
    pub fn display_of(path: &Path) -> anyhow::Result<Panel> {
        let object = dicom_object::open_file(path).with_context(|| format!("opening {}", path.display()))?;
        let image = cxr_led_dicom::pixels::decode_display(&object)
            .with_context(|| format!("decoding the pixels of {}", path.display()))?;
        Ok(Panel { rows: image.rows, columns: image.columns, pixels: image.pixels })
    }

    /// The doubt map of a doubt-map instance: stored value 0 = no doubt,
    /// 255 = doubt 1.0, shown as stored (no window), so black means no doubt.
    pub fn doubt_map_of(path: &Path) -> anyhow::Result<Panel> {
        let object = dicom_object::open_file(path).with_context(|| format!("opening {}", path.display()))?;
        let image = cxr_led_dicom::pixels::decode_display(&object)
            .with_context(|| format!("decoding the doubt map {}", path.display()))?;
        let pixels = image.stored.iter().map(|&v| v as f32 / 255.0).collect();
        Ok(Panel { rows: image.rows, columns: image.columns, pixels })
    }

    fn to_gray(&self) -> anyhow::Result<GrayImage> {
        let values = self.pixels.iter().map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
        GrayImage::from_raw(self.columns, self.rows, values)
            .with_context(|| format!("{} pixel values for a {}x{} panel", self.pixels.len(), self.columns, self.rows))
    }
}

/// Writes `panels` side by side into one PNG at `out`, each scaled to
/// `height` pixels high (aspect kept), separated by a grey gap.
pub fn write_side_by_side(panels: &[Panel], height: u32, out: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(!panels.is_empty() && height > 0, "nothing to draw");
    let scaled = panels
        .iter()
        .map(|panel| {
            let gray = panel.to_gray()?;
            let width = ((panel.columns as f64 * height as f64 / panel.rows.max(1) as f64).round() as u32).max(1);
            Ok(imageops::resize(&gray, width, height, imageops::FilterType::Triangle))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let width = scaled.iter().map(GrayImage::width).sum::<u32>() + GAP * (scaled.len() as u32 + 1);
    let mut canvas = GrayImage::from_pixel(width, height + 2 * GAP, Luma([GAP_LEVEL]));
    let mut x = GAP;
    for panel in &scaled {
        imageops::replace(&mut canvas, panel, x as i64, GAP as i64);
        x += panel.width() + GAP;
    }
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    canvas.save(out).with_context(|| format!("writing {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_keep_their_order_aspect_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("study.png");
        // A black square, a white 2:1 landscape, a mid-grey square.
        let panels = [
            Panel { rows: 40, columns: 40, pixels: vec![0.0; 1600] },
            Panel { rows: 20, columns: 40, pixels: vec![1.0; 800] },
            Panel { rows: 10, columns: 10, pixels: vec![0.25; 100] },
        ];
        write_side_by_side(&panels, 60, &out).unwrap();
        let written = image::open(&out).unwrap().to_luma8();
        assert_eq!(written.height(), 60 + 2 * GAP);
        assert_eq!(written.width(), 60 + 120 + 60 + 4 * GAP);
        let centre_of = |x0: u32, w: u32| written.get_pixel(x0 + w / 2, GAP + 30).0[0];
        assert_eq!(centre_of(GAP, 60), 0);
        assert_eq!(centre_of(2 * GAP + 60, 120), 255);
        assert_eq!(centre_of(3 * GAP + 180, 60), 64);
        assert_eq!(written.get_pixel(GAP / 2, 5).0[0], GAP_LEVEL);
    }

    #[test]
    fn a_fixture_and_its_pixel_count_are_checked() {
        let panel = Panel::display_of(&crate::studies::fixture("dx_image.dcm"));
        let panel = match panel {
            Ok(panel) => panel,
            Err(e) => panic!("fixture: {e:#}"),
        };
        assert_eq!(panel.pixels.len(), (panel.rows * panel.columns) as usize);
        assert!(panel.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
        let wrong = Panel { rows: 3, columns: 3, pixels: vec![0.5; 8] };
        let error = write_side_by_side(&[wrong], 10, &tempfile::tempdir().unwrap().path().join("x.png")).unwrap_err();
        assert!(error.to_string().contains("8 pixel values for a 3x3 panel"), "{error}");
    }
}
