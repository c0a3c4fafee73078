//! Pixel data in and out: a source instance's stored values become the
//! model's display image (intensity in [0, 1], 0 black, MONOCHROME2, after
//! modality rescale and VOI window, as every bundle's `[normalisation]`
//! says), and an enhanced display image goes back to stored values in the
//! source's own bit range, so the derived instance displays with the source's
//! window.
//!
//! No tensors here (the models crate owns those) and no I/O: the caller opens
//! the file. Every transfer syntax the ingest accepts decodes here (native,
//! RLE, JPEG, JPEG 2000 through OpenJPEG, JPEG-LS through CharLS, deflate).

use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::{PixelDecoder, PixelRepresentation};
use serde::Serialize;

use crate::derive::StoredPixels;

/// Why an image cannot go through the model. The text says what is wrong
/// with the instance; none of these is retried.
#[derive(Debug, thiserror::Error)]
pub enum PixelError {
    /// A required attribute is missing or malformed.
    #[error("{0}")]
    Attribute(String),
    /// The image is of a kind the model does not handle.
    #[error("unsupported image: {0}")]
    Unsupported(String),
    /// The pixel data could not be decoded.
    #[error("cannot decode pixel data: {0}")]
    Decode(String),
}

/// How stored values map to display intensity; kept to map the enhanced
/// image back the same way.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DisplayMapping {
    /// Modality rescale slope (1 when absent).
    pub rescale_slope: f64,
    /// Modality rescale intercept (0 when absent).
    pub rescale_intercept: f64,
    /// Lower edge of the window, in rescaled units.
    pub window_low: f64,
    /// Upper edge of the window, in rescaled units.
    pub window_high: f64,
    /// Where the window came from: `window-tags` or `percentiles`.
    pub window_source: &'static str,
    /// MONOCHROME1 (white = low values): the display image is inverted.
    pub inverted: bool,
    /// Bits Allocated of the source (8 or 16).
    pub bits_allocated: u16,
    /// Bits Stored of the source.
    pub bits_stored: u16,
    /// Pixel Representation 1 (two's complement) of the source.
    pub signed: bool,
}

impl DisplayMapping {
    /// The smallest and largest stored value the source's bit depth allows.
    pub fn stored_range(&self) -> (i64, i64) {
        let bits = u32::from(self.bits_stored);
        if self.signed {
            (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1)
        } else {
            (0, (1i64 << bits) - 1)
        }
    }

    /// Display intensity in [0, 1] of one stored value.
    pub fn to_display(&self, stored: i64) -> f32 {
        let value = stored as f64 * self.rescale_slope + self.rescale_intercept;
        let unit = ((value - self.window_low) / (self.window_high - self.window_low)).clamp(0.0, 1.0);
        (if self.inverted { 1.0 - unit } else { unit }) as f32
    }

    /// The stored value whose display intensity is `display` (clamped to
    /// [0, 1] and to the stored range, rounded to the nearest integer).
    pub fn to_stored(&self, display: f32) -> i64 {
        let unit = f64::from(display.clamp(0.0, 1.0));
        let unit = if self.inverted { 1.0 - unit } else { unit };
        let value = self.window_low + unit * (self.window_high - self.window_low);
        let stored = ((value - self.rescale_intercept) / self.rescale_slope).round();
        let (low, high) = self.stored_range();
        (stored as i64).clamp(low, high)
    }
}

/// One decoded grayscale frame, as the model sees it.
#[derive(Debug, Clone)]
pub struct DisplayImage {
    /// Rows (height).
    pub rows: u32,
    /// Columns (width).
    pub columns: u32,
    /// Row-major display intensities in [0, 1], 0 black.
    pub pixels: Vec<f32>,
    /// The stored values the display image came from, row-major.
    pub stored: Vec<i64>,
    /// How to map back.
    pub mapping: DisplayMapping,
}

/// Reads a numeric attribute that may be absent; `Err` when present but not a number.
fn optional_f64(object: &DefaultDicomObject, tag: dicom_core::Tag, name: &str) -> Result<Option<f64>, PixelError> {
    match object.element_opt(tag) {
        Ok(Some(element)) => {
            let text = element.to_str().map_err(|e| PixelError::Attribute(format!("{name}: {e}")))?;
            let first = text.split('\\').next().unwrap_or("").trim().trim_end_matches('\0').trim();
            if first.is_empty() {
                return Ok(None);
            }
            first
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(Some)
                .ok_or_else(|| PixelError::Attribute(format!("{name} {first:?} is not a number")))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(PixelError::Attribute(format!("{name}: {e}"))),
    }
}

/// Reads a text attribute, trimmed; `None` when absent or empty.
pub fn optional_str(object: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let element = object.element_opt(tag).ok().flatten()?;
    let text = element.to_str().ok()?;
    let text = text.trim().trim_end_matches('\0').trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Decodes the first frame of a single-sample grayscale image into its
/// display image. Refuses colour, multi-frame and malformed images with the
/// reason.
pub fn decode_display(object: &DefaultDicomObject) -> Result<DisplayImage, PixelError> {
    let photometric = optional_str(object, tags::PHOTOMETRIC_INTERPRETATION)
        .ok_or_else(|| PixelError::Attribute("Photometric Interpretation (0028,0004) is missing".into()))?;
    let inverted = match photometric.as_str() {
        "MONOCHROME1" => true,
        "MONOCHROME2" => false,
        other => {
            return Err(PixelError::Unsupported(format!(
                "Photometric Interpretation {other}: only MONOCHROME1 and MONOCHROME2 radiographs are enhanced"
            )))
        }
    };
    let frames = optional_f64(object, tags::NUMBER_OF_FRAMES, "Number of Frames")?.unwrap_or(1.0);
    if frames > 1.0 {
        return Err(PixelError::Unsupported(format!("{frames} frames: only single-frame radiographs are enhanced")));
    }
    let decoded = object.decode_pixel_data_frame(0).map_err(|e| PixelError::Decode(e.to_string()))?;
    if decoded.samples_per_pixel() != 1 {
        return Err(PixelError::Unsupported(format!("{} samples per pixel", decoded.samples_per_pixel())));
    }
    let (rows, columns) = (decoded.rows(), decoded.columns());
    let count = rows as usize * columns as usize;
    if count == 0 {
        return Err(PixelError::Attribute("Rows or Columns is zero".into()));
    }
    let bits_allocated = decoded.bits_allocated();
    let bits_stored = decoded.bits_stored();
    if bits_stored == 0 || bits_stored > bits_allocated || !(bits_allocated == 8 || bits_allocated == 16) {
        return Err(PixelError::Unsupported(format!(
            "Bits Allocated {bits_allocated} / Bits Stored {bits_stored}: 8- or 16-bit grayscale expected"
        )));
    }
    let signed = decoded.pixel_representation() == PixelRepresentation::Signed;
    let high_bit = decoded.high_bit();
    // The stored value sits in bits [high_bit - bits_stored + 1, high_bit]
    // of each word; anything else (old overlay bits) is masked off.
    let shift = (i64::from(high_bit) + 1 - i64::from(bits_stored)).max(0) as u32;
    let mask: u32 = (1u32 << bits_stored) - 1;
    let extract = |word: u32| -> i64 {
        let value = (word >> shift) & mask;
        if signed && value & (1 << (bits_stored - 1)) != 0 {
            i64::from(value) - (1i64 << bits_stored)
        } else {
            i64::from(value)
        }
    };
    let data = decoded.frame_data(0).map_err(|e| PixelError::Decode(e.to_string()))?;
    let stored: Vec<i64> = if bits_allocated == 8 {
        data.iter().take(count).map(|&b| extract(u32::from(b))).collect()
    } else {
        data.chunks_exact(2).take(count).map(|c| extract(u32::from(u16::from_le_bytes([c[0], c[1]])))).collect()
    };
    if stored.len() != count {
        return Err(PixelError::Decode(format!("pixel data holds {} of {count} pixels", stored.len())));
    }

    let rescale_slope = optional_f64(object, tags::RESCALE_SLOPE, "Rescale Slope")?.unwrap_or(1.0);
    let rescale_intercept = optional_f64(object, tags::RESCALE_INTERCEPT, "Rescale Intercept")?.unwrap_or(0.0);
    if rescale_slope == 0.0 {
        return Err(PixelError::Attribute("Rescale Slope is 0".into()));
    }
    let center = optional_f64(object, tags::WINDOW_CENTER, "Window Center")?;
    let width = optional_f64(object, tags::WINDOW_WIDTH, "Window Width")?;
    let (window_low, window_high, window_source) = match (center, width) {
        // PS3.3 C.11.2.1.2.1, LINEAR: the window spans [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2].
        (Some(c), Some(w)) if w > 1.0 => (c - 0.5 - (w - 1.0) / 2.0, c - 0.5 + (w - 1.0) / 2.0, "window-tags"),
        _ => {
            // No usable window: 0.5th to 99.5th percentile of the image, a
            // robust stand-in for what a viewer's auto-window shows.
            let mut values: Vec<f64> = stored.iter().map(|&s| s as f64 * rescale_slope + rescale_intercept).collect();
            let (low, high) = percentiles(&mut values, 0.005, 0.995);
            if high > low {
                (low, high, "percentiles")
            } else {
                (low - 0.5, low + 0.5, "percentiles")
            }
        }
    };
    let mapping = DisplayMapping {
        rescale_slope,
        rescale_intercept,
        window_low,
        window_high,
        window_source,
        inverted,
        bits_allocated,
        bits_stored,
        signed,
    };
    let pixels = stored.iter().map(|&s| mapping.to_display(s)).collect();
    Ok(DisplayImage { rows, columns, pixels, stored, mapping })
}

/// The `low` and `high` quantiles (fractions) of `values`, reordering them.
pub fn percentiles(values: &mut [f64], low: f64, high: f64) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let last = values.len() - 1;
    let index = |q: f64| ((q * last as f64).round() as usize).min(last);
    let (lo_i, hi_i) = (index(low), index(high));
    let lo = *values.select_nth_unstable_by(lo_i, f64::total_cmp).1;
    let hi = *values.select_nth_unstable_by(hi_i, f64::total_cmp).1;
    (lo, hi)
}

/// The stored values as little-endian bytes, as a native Pixel Data element
/// holds them (without the padding byte of an odd length).
pub fn stored_bytes(pixels: &StoredPixels) -> Vec<u8> {
    match pixels {
        StoredPixels::U8(values) => values.clone(),
        StoredPixels::U16(values) => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// Maps an enhanced display image back to stored values of the source's bit
/// range. Where the source clipped (stored values beyond its window), the
/// derived image keeps the source's values: the model saw only the clipped
/// intensity there, so it has nothing to add.
pub fn to_stored(image: &DisplayImage, enhanced: &[f32]) -> StoredPixels {
    let mapping = &image.mapping;
    let values = enhanced.iter().zip(&image.stored).map(|(&display, &source)| {
        let rescaled = source as f64 * mapping.rescale_slope + mapping.rescale_intercept;
        if rescaled <= mapping.window_low || rescaled >= mapping.window_high {
            source
        } else {
            mapping.to_stored(display)
        }
    });
    let word = |v: i64| -> u16 {
        // Two's complement within the word for signed values.
        (v as i32 as u32 & 0xffff) as u16
    };
    if mapping.bits_allocated == 8 {
        StoredPixels::U8(values.map(|v| word(v) as u8).collect())
    } else {
        StoredPixels::U16(values.map(word).collect())
    }
}

/// The display intensities of stored values of this image's kind (what a
/// viewer shows for a derived instance that keeps the source's rescale and
/// window).
pub fn displayed(image: &DisplayImage, stored: &StoredPixels) -> Vec<f32> {
    let mapping = &image.mapping;
    let bits = u32::from(mapping.bits_stored);
    let value = |word: u32| -> i64 {
        let word = word & ((1u32 << bits) - 1);
        if mapping.signed && word & (1 << (bits - 1)) != 0 {
            i64::from(word) - (1i64 << bits)
        } else {
            i64::from(word)
        }
    };
    match stored {
        StoredPixels::U8(values) => values.iter().map(|&v| mapping.to_display(value(u32::from(v)))).collect(),
        StoredPixels::U16(values) => values.iter().map(|&v| mapping.to_display(value(u32::from(v)))).collect(),
    }
}

/// What `enhanced` displays as once stored in the source's bit range.
pub fn as_delivered(image: &DisplayImage, enhanced: &[f32]) -> Vec<f32> {
    displayed(image, &to_stored(image, enhanced))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(inverted: bool, signed: bool) -> DisplayMapping {
        DisplayMapping {
            rescale_slope: 2.0,
            rescale_intercept: -100.0,
            window_low: 0.0,
            window_high: 1000.0,
            window_source: "window-tags",
            inverted,
            bits_allocated: 16,
            bits_stored: 12,
            signed,
        }
    }

    #[test]
    fn display_and_back_round_trip_inside_the_window() {
        for inverted in [false, true] {
            let m = mapping(inverted, false);
            for stored in [50, 51, 100, 300, 549] {
                assert_eq!(m.to_stored(m.to_display(stored)), stored, "stored {stored} inverted {inverted}");
            }
        }
    }

    #[test]
    fn monochrome1_inverts() {
        let m = mapping(true, false);
        assert_eq!(m.to_display(50), 1.0);
        assert_eq!(m.to_display(550), 0.0);
    }

    #[test]
    fn to_stored_clamps_to_the_bit_range() {
        let mut m = mapping(false, true);
        m.window_low = -10_000.0;
        m.window_high = 10_000.0;
        assert_eq!(m.stored_range(), (-2048, 2047));
        assert_eq!(m.to_stored(1.0), 2047);
        assert_eq!(m.to_stored(0.0), -2048);
    }

    #[test]
    fn percentiles_of_a_ramp() {
        let mut values: Vec<f64> = (0..=1000).map(f64::from).collect();
        assert_eq!(percentiles(&mut values, 0.005, 0.995), (5.0, 995.0));
    }
}
