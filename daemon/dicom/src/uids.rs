//! The UIDs cxr-led speaks, named by the standard dictionary
//! (`dicom_dictionary_std::uids`) rather than typed as literals: the image
//! storage classes it accepts and derives, the transfer syntaxes it accepts,
//! and which of those are lossy.

use dicom_dictionary_std::uids;

/// Verification SOP class (C-ECHO).
pub const VERIFICATION: &str = uids::VERIFICATION;
/// Computed Radiography Image Storage.
pub const CR_IMAGE_STORAGE: &str = uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE;
/// Digital X-Ray Image Storage - For Presentation.
pub const DX_FOR_PRESENTATION: &str = uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION;
/// Digital X-Ray Image Storage - For Processing.
pub const DX_FOR_PROCESSING: &str = uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PROCESSING;
/// Secondary Capture Image Storage.
pub const SECONDARY_CAPTURE: &str = uids::SECONDARY_CAPTURE_IMAGE_STORAGE;
/// Implicit VR Little Endian: every DIMSE command set, and the fallback for delivery.
pub const IMPLICIT_VR_LITTLE_ENDIAN: &str = uids::IMPLICIT_VR_LITTLE_ENDIAN;
/// Explicit VR Little Endian: the transfer syntax of every file we write.
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = uids::EXPLICIT_VR_LITTLE_ENDIAN;

/// The storage SOP classes the ingest accepts: CR, DX (for presentation and
/// for processing) and Secondary Capture.
pub const STORAGE_SOP_CLASSES: &[&str] = &[CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING, SECONDARY_CAPTURE];

/// The projection radiography classes whose acquisition attributes (Deviation
/// Index, Exposure Index) the exposure gate may read.
pub const PROJECTION_RADIOGRAPHY: &[&str] = &[CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING];

/// The transfer syntaxes the ingest accepts, in no particular order (the
/// requestor's order wins); every one of them decodes in [`crate::pixels`].
pub const TRANSFER_SYNTAXES: &[&str] = &[
    IMPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    uids::JPEG_BASELINE8_BIT,
    uids::JPEG_EXTENDED12_BIT,
    uids::JPEG_LOSSLESS,
    uids::JPEG_LOSSLESS_SV1,
    uids::JPEGLS_LOSSLESS,
    uids::JPEGLS_NEAR_LOSSLESS,
    uids::JPEG2000_LOSSLESS,
    uids::JPEG2000,
    uids::RLE_LOSSLESS,
];

/// Lossy transfer syntaxes with the Lossy Image Compression Method (0028,2114)
/// each one stands for: a source that arrived in one of these makes the
/// derived instance lossy too (Lossy Image Compression "01", never reset).
/// JPEG-LS near-lossless and JPEG 2000 (not "lossless only") count as lossy
/// because their files do not say whether a given image lost anything.
pub const LOSSY_TRANSFER_SYNTAXES: &[(&str, &str)] = &[
    (uids::JPEG_BASELINE8_BIT, "ISO_10918_1"),
    (uids::JPEG_EXTENDED12_BIT, "ISO_10918_1"),
    (uids::JPEGLS_NEAR_LOSSLESS, "ISO_14495_1"),
    (uids::JPEG2000, "ISO_15444_1"),
    (uids::JPEG2000MC, "ISO_15444_2"),
    (uids::HTJ2K, "ISO_15444_15"),
    (uids::JPEGXLJPEG_RECOMPRESSION, "ISO_18181_1"),
    (uids::JPEGXL, "ISO_18181_1"),
];

#[cfg(test)]
mod tests {
    use super::*;

    // The dictionary's names are long and easy to confuse: pin the values the
    // literals used to say.
    #[test]
    fn dictionary_names_are_the_uids_we_mean() {
        assert_eq!(CR_IMAGE_STORAGE, "1.2.840.10008.5.1.4.1.1.1");
        assert_eq!(DX_FOR_PRESENTATION, "1.2.840.10008.5.1.4.1.1.1.1");
        assert_eq!(DX_FOR_PROCESSING, "1.2.840.10008.5.1.4.1.1.1.1.1");
        assert_eq!(SECONDARY_CAPTURE, "1.2.840.10008.5.1.4.1.1.7");
        let lossy: Vec<&str> = LOSSY_TRANSFER_SYNTAXES.iter().map(|(uid, _)| *uid).collect();
        assert_eq!(
            lossy,
            [
                "1.2.840.10008.1.2.4.50",
                "1.2.840.10008.1.2.4.51",
                "1.2.840.10008.1.2.4.81",
                "1.2.840.10008.1.2.4.91",
                "1.2.840.10008.1.2.4.93",
                "1.2.840.10008.1.2.4.203",
                "1.2.840.10008.1.2.4.111",
                "1.2.840.10008.1.2.4.112",
            ]
        );
        assert_eq!(
            TRANSFER_SYNTAXES,
            [
                "1.2.840.10008.1.2",
                "1.2.840.10008.1.2.1",
                "1.2.840.10008.1.2.1.99",
                "1.2.840.10008.1.2.4.50",
                "1.2.840.10008.1.2.4.51",
                "1.2.840.10008.1.2.4.57",
                "1.2.840.10008.1.2.4.70",
                "1.2.840.10008.1.2.4.80",
                "1.2.840.10008.1.2.4.81",
                "1.2.840.10008.1.2.4.90",
                "1.2.840.10008.1.2.4.91",
                "1.2.840.10008.1.2.5",
            ]
        );
    }
}
