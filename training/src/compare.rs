//! `cxr-led-train compare`: is a candidate bundle better than the baseline
//! (the default), at 95%? Two `evaluate` runs on the same test images, with
//! the same degradations and the same classifier weights, compared image by
//! image: the mean of candidate minus baseline for PSNR, SSIM and accuracy,
//! with its bootstrap interval. Overlapping intervals of two reports say
//! little; the paired difference is what decides a promotion.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::bootstrap::{self, Interval};
use crate::per_image::{self, Row};
use crate::report::difference;

/// `compare` options.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// `evaluate --out` folder of the bundle to compare against (e.g. the default).
    #[arg(long)]
    pub baseline: PathBuf,
    /// `evaluate --out` folder of the candidate, run with the same options and classifier.
    #[arg(long)]
    pub candidate: PathBuf,
    /// Also write comparison.md and comparison.json into this folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One bundle of the comparison.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Side {
    /// The evaluation folder.
    pub folder: String,
    /// Bundle name and version.
    pub bundle: String,
    /// sha256 of its bundle.toml.
    pub sha256: String,
}

/// One method's figures on both sides and their paired difference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComparedMethod {
    /// Method key (`per_image.csv`).
    pub method: String,
    /// Baseline mean PSNR, SSIM (none for the ground truth) and accuracy.
    pub baseline: [Option<f64>; 3],
    /// Candidate mean PSNR, SSIM and accuracy.
    pub candidate: [Option<f64>; 3],
    /// Candidate minus baseline, PSNR (dB).
    pub psnr_db: Option<Interval>,
    /// Candidate minus baseline, SSIM.
    pub ssim: Option<Interval>,
    /// Candidate minus baseline, accuracy (fraction of images).
    pub accuracy: Interval,
}

/// Everything comparison.json holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Comparison {
    /// What the candidate is compared with.
    pub baseline: Side,
    /// The candidate.
    pub candidate: Side,
    /// The simulator ranges both evaluations drew from.
    pub ranges_name: String,
    /// Test images, each in both evaluations.
    pub images: usize,
    /// The methods whose outputs differ between the two (the model's rows, `--ceiling`'s first stage).
    pub methods: Vec<ComparedMethod>,
}

/// What `compare` reads of a `report.json`.
#[derive(Deserialize)]
struct ReportHead {
    ranges_name: String,
    bundle: BundleHead,
}

#[derive(Deserialize)]
struct BundleHead {
    name: String,
    version: String,
    sha256: String,
}

/// Runs `compare`, prints the table and writes it on `--out`.
pub fn run(args: &CompareArgs) -> anyhow::Result<Comparison> {
    let comparison = compare(&args.baseline, &args.candidate)?;
    let md = markdown(&comparison);
    println!("{md}");
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("comparison.md"), &md)?;
        std::fs::write(out.join("comparison.json"), serde_json::to_string_pretty(&comparison)?)?;
        eprintln!("compare: wrote {}", out.join("comparison.md").display());
    }
    Ok(comparison)
}

/// Pairs the two evaluations image by image. Refuses evaluations that are not
/// comparable: other images, other degradations or another classifier.
pub fn compare(baseline: &Path, candidate: &Path) -> anyhow::Result<Comparison> {
    let side = |dir: &Path| -> anyhow::Result<(Side, String, BTreeMap<String, Vec<Row>>)> {
        let path = dir.join("report.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let report: ReportHead = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a report.json from `cxr-led-train evaluate`", path.display()))?;
        let rows = per_image::read(dir)?;
        let side = Side {
            folder: dir.display().to_string(),
            bundle: format!("{} {}", report.bundle.name, report.bundle.version),
            sha256: report.bundle.sha256,
        };
        Ok((side, report.ranges_name, rows))
    };
    let (base_side, base_ranges, base) = side(baseline)?;
    let (cand_side, cand_ranges, cand) = side(candidate)?;
    anyhow::ensure!(
        base_ranges == cand_ranges,
        "the baseline was evaluated on the {base_ranges:?} ranges and the candidate on {cand_ranges:?}: evaluate both with the same --ranges"
    );
    // The class folder and file name: the same images given as ../shared/data/x or /abs/x match.
    let images = |rows: &[Row]| {
        rows.iter()
            .map(|r| Path::new(&r.image).iter().rev().take(2).map(|c| c.to_string_lossy().into_owned()).collect())
            .collect::<Vec<Vec<String>>>()
    };
    let truth = |rows: &BTreeMap<String, Vec<Row>>, key: &str| -> anyhow::Result<Vec<Row>> {
        rows.get(key).cloned().ok_or_else(|| anyhow::anyhow!("an evaluation without the {key:?} rows"))
    };
    let (base_hq, cand_hq) = (truth(&base, "high-quality")?, truth(&cand, "high-quality")?);
    anyhow::ensure!(
        images(&base_hq) == images(&cand_hq),
        "the two evaluations measured different test images ({} and {}): run both with the same data, --size and --limit",
        base_hq.len(),
        cand_hq.len()
    );
    // The same weights classify the same high-quality images the same way.
    anyhow::ensure!(
        base_hq.iter().zip(&cand_hq).all(|(b, c)| b.correct == c.correct),
        "the high-quality images were classified differently: the two evaluations used different classifier \
         weights (a rebuild may differ in the last bits); evaluate both with one build"
    );
    let (base_lq, cand_lq) = (truth(&base, "low-quality")?, truth(&cand, "low-quality")?);
    anyhow::ensure!(
        base_lq.iter().zip(&cand_lq).all(|(b, c)| b.psnr_db == c.psnr_db && b.ssim == c.ssim),
        "the low-quality images differ between the two evaluations (other simulator ranges or another build of the simulator)"
    );
    let mut methods = Vec::new();
    for (key, base_rows) in &base {
        let Some(cand_rows) = cand.get(key) else { continue };
        if base_rows == cand_rows || images(base_rows) != images(cand_rows) {
            continue;
        }
        let column = |rows: &[Row], f: fn(&Row) -> Option<f64>| rows.iter().map(f).collect::<Option<Vec<f64>>>();
        let mean = |v: &Option<Vec<f64>>| v.as_ref().map(|v| v.iter().sum::<f64>() / v.len().max(1) as f64);
        let (bp, cp) = (column(base_rows, |r| r.psnr_db), column(cand_rows, |r| r.psnr_db));
        let (bs, cs) = (column(base_rows, |r| r.ssim), column(cand_rows, |r| r.ssim));
        let (ba, ca) = (column(base_rows, |r| Some(r.correct)), column(cand_rows, |r| Some(r.correct)));
        let paired = |c: &Option<Vec<f64>>, b: &Option<Vec<f64>>, seed| {
            c.as_ref().zip(b.as_ref()).map(|(c, b)| bootstrap::paired_difference(c, b, seed))
        };
        methods.push(ComparedMethod {
            method: key.clone(),
            baseline: [mean(&bp), mean(&bs), mean(&ba)],
            candidate: [mean(&cp), mean(&cs), mean(&ca)],
            psnr_db: paired(&cp, &bp, 31),
            ssim: paired(&cs, &bs, 32),
            accuracy: paired(&ca, &ba, 33).expect("accuracy is always there"),
        });
    }
    Ok(Comparison {
        baseline: base_side,
        candidate: cand_side,
        ranges_name: base_ranges,
        images: base_hq.len(),
        methods,
    })
}

/// The comparison as Markdown.
pub fn markdown(c: &Comparison) -> String {
    let two = |b: Option<f64>, c: Option<f64>, digits: usize, scale: f64| match (b, c) {
        (Some(b), Some(c)) => format!("{:.digits$} → {:.digits$}", b * scale, c * scale),
        _ => "–".into(),
    };
    let mut md = format!(
        "# {} against {}\n\n{} test images, `{}` ranges, one classifier; Δ: candidate minus baseline on the same \
         images, 95% bootstrap interval of the mean, **bold** where the whole interval is above zero.\n\n\
         - baseline: `{}` ({}, sha256 {})\n- candidate: `{}` ({}, sha256 {})\n\n\
         | Method | PSNR (dB) | ΔPSNR | SSIM | ΔSSIM | Accuracy (%) | Δaccuracy (points) |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
        c.candidate.bundle,
        c.baseline.bundle,
        c.images,
        c.ranges_name,
        c.baseline.folder,
        c.baseline.bundle,
        c.baseline.sha256,
        c.candidate.folder,
        c.candidate.bundle,
        c.candidate.sha256,
    );
    for m in &c.methods {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            m.method,
            two(m.baseline[0], m.candidate[0], 2, 1.0),
            difference(m.psnr_db, 2, 1.0),
            two(m.baseline[1], m.candidate[1], 3, 1.0),
            difference(m.ssim, 3, 1.0),
            two(m.baseline[2], m.candidate[2], 1, 100.0),
            difference(Some(m.accuracy), 1, 100.0),
        ));
    }
    if c.methods.is_empty() {
        md.push_str("\nThe two evaluations' outputs are identical image by image.\n");
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An evaluation folder: a report.json head and per-image rows for the
    /// ground truth, the low-quality input and the first stage.
    fn evaluation(dir: &Path, version: &str, hq: &[f64], first_stage: &[(f64, f64)]) {
        std::fs::create_dir_all(dir).unwrap();
        let head = serde_json::json!({
            "ranges_name": "training",
            "bundle": {"name": "cxr-led-cpu", "version": version, "sha256": version},
        });
        std::fs::write(dir.join("report.json"), head.to_string()).unwrap();
        let mut rows = Vec::new();
        for (i, (&correct, &(psnr, fs_correct))) in hq.iter().zip(first_stage).enumerate() {
            let image = format!("img{i}.png");
            let row = |method: &str, psnr_db: Option<f64>, correct: f64| Row {
                image: image.clone(),
                method: method.into(),
                psnr_db,
                ssim: psnr_db.map(|p| p / 40.0),
                correct,
            };
            rows.push(row("high-quality", None, correct));
            rows.push(row("low-quality", Some(20.0 + (i % 3) as f64), 0.0));
            rows.push(row("first-stage", Some(psnr), fs_correct));
        }
        per_image::write(dir, &rows).unwrap();
    }

    #[test]
    fn a_consistent_gain_is_above_zero_and_unchanged_rows_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let hq: Vec<f64> = (0..60).map(|i| f64::from(i % 5 != 0)).collect();
        let base: Vec<(f64, f64)> = (0..60).map(|i| (25.0 + f64::from(i % 4), f64::from(i % 3 != 0))).collect();
        // +0.5 dB on every image, and right on every image the baseline got wrong.
        let better: Vec<(f64, f64)> = base.iter().map(|&(p, _)| (p + 0.5, 1.0)).collect();
        evaluation(&dir.path().join("a"), "base", &hq, &base);
        evaluation(&dir.path().join("b"), "cand", &hq, &better);
        let c = compare(&dir.path().join("a"), &dir.path().join("b")).unwrap();
        assert_eq!(c.images, 60);
        assert_eq!(c.methods.len(), 1, "only the first stage differs");
        let m = &c.methods[0];
        assert!((m.psnr_db.unwrap().mean - 0.5).abs() < 1e-9 && m.psnr_db.unwrap().above_zero());
        assert!(m.accuracy.above_zero());
        assert!(markdown(&c).contains("**+0.50**"));
        // Against itself: nothing differs.
        assert!(compare(&dir.path().join("a"), &dir.path().join("a")).unwrap().methods.is_empty());
    }

    #[test]
    fn another_classifier_or_other_images_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let hq: Vec<f64> = (0..10).map(|i| f64::from(i % 2)).collect();
        let base: Vec<(f64, f64)> = (0..10).map(|i| (25.0, f64::from(i % 2))).collect();
        evaluation(&dir.path().join("a"), "base", &hq, &base);
        let other_classifier: Vec<f64> = hq.iter().map(|c| 1.0 - c).collect();
        evaluation(&dir.path().join("b"), "cand", &other_classifier, &base);
        let error = compare(&dir.path().join("a"), &dir.path().join("b")).unwrap_err().to_string();
        assert!(error.contains("different classifier"), "{error}");
        evaluation(&dir.path().join("c"), "cand", &hq[..8], &base[..8]);
        let error = compare(&dir.path().join("a"), &dir.path().join("c")).unwrap_err().to_string();
        assert!(error.contains("different test images"), "{error}");
        let error = compare(&dir.path().join("a"), &dir.path().join("missing")).unwrap_err();
        assert!(format!("{error:#}").contains("report.json"), "{error:#}");
    }
}
