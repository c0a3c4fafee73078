//! `per_image.csv`: every figure of an evaluation image by image (PSNR, SSIM,
//! whether the classifier was right), so that two bundles evaluated on the
//! same images with the same classifier can be compared pairwise
//! (`cxr-led-train compare`) instead of by overlapping intervals.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

/// The file name beside `report.json`.
pub const FILE: &str = "per_image.csv";

const HEADER: &str = "image,method,psnr_db,ssim,correct";

/// One image under one method.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The test image's path as the evaluation listed it.
    pub image: String,
    /// Method key (`results::METHODS`, or a `--ceiling` key).
    pub method: String,
    /// PSNR against the high-quality image in dB (none for the high-quality image itself).
    pub psnr_db: Option<f64>,
    /// SSIM against the high-quality image.
    pub ssim: Option<f64>,
    /// 1 where the classifier named the right class, else 0.
    pub correct: f64,
}

/// Writes `rows` to `dir/per_image.csv`.
pub fn write(dir: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let mut text = String::from(HEADER);
    text.push('\n');
    let figure = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    for row in rows {
        anyhow::ensure!(
            !row.image.contains([',', '\n', '"']) && !row.method.contains([',', '\n', '"']),
            "{}: an image path or method with a comma, quote or line break cannot go into {FILE}; rename it",
            row.image
        );
        writeln!(text, "{},{},{},{},{}", row.image, row.method, figure(row.psnr_db), figure(row.ssim), row.correct)?;
    }
    let path = dir.join(FILE);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// The rows of `dir/per_image.csv`, by method, each in the file's image order.
pub fn read(dir: &Path) -> anyhow::Result<BTreeMap<String, Vec<Row>>> {
    let path = dir.join(FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("reading {} (evaluations before per-image figures have none: run `evaluate` again)", path.display())
    })?;
    let mut lines = text.lines();
    anyhow::ensure!(
        lines.next() == Some(HEADER),
        "{}: not an evaluation's per-image file (the first line must be {HEADER:?})",
        path.display()
    );
    let mut by_method: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for (number, line) in lines.enumerate() {
        let at = || format!("{} line {}", path.display(), number + 2);
        let fields: Vec<&str> = line.split(',').collect();
        anyhow::ensure!(fields.len() == 5, "{}: expected 5 fields, found {}", at(), fields.len());
        let figure = |s: &str| -> anyhow::Result<Option<f64>> {
            if s.is_empty() {
                Ok(None)
            } else {
                Ok(Some(s.parse::<f64>().with_context(|| format!("{}: {s:?} is not a number", at()))?))
            }
        };
        let row = Row {
            image: fields[0].to_string(),
            method: fields[1].to_string(),
            psnr_db: figure(fields[2])?,
            ssim: figure(fields[3])?,
            correct: figure(fields[4])?.with_context(|| format!("{}: the correct column is empty", at()))?,
        };
        by_method.entry(row.method.clone()).or_default().push(row);
    }
    Ok(by_method)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_back_as_written_grouped_by_method() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![
            Row { image: "a.png".into(), method: "high-quality".into(), psnr_db: None, ssim: None, correct: 1.0 },
            Row { image: "a.png".into(), method: "led".into(), psnr_db: Some(26.5), ssim: Some(0.9), correct: 0.0 },
            Row { image: "b.png".into(), method: "led".into(), psnr_db: Some(24.25), ssim: Some(0.8), correct: 1.0 },
        ];
        write(dir.path(), &rows).unwrap();
        let read = read(dir.path()).unwrap();
        assert_eq!(read["high-quality"], rows[..1]);
        assert_eq!(read["led"], rows[1..]);
    }

    #[test]
    fn a_foreign_or_damaged_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "x,y\n").unwrap();
        assert!(read(dir.path()).unwrap_err().to_string().contains("not an evaluation's per-image file"));
        std::fs::write(dir.path().join(FILE), format!("{HEADER}\na.png,led,abc,0.9,1\n")).unwrap();
        assert!(format!("{:#}", read(dir.path()).unwrap_err()).contains("line 2"));
        let comma = Row { image: "a,b.png".into(), method: "led".into(), psnr_db: None, ssim: None, correct: 1.0 };
        assert!(write(dir.path(), &[comma]).is_err());
    }
}
