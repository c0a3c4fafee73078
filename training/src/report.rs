//! The evaluation report: `report.md` (tables, data, simulator, commands),
//! `report.json` (every figure), and PNG figures drawn with the `image` crate
//! and a 3x5 pixel font (a grid of examples, a bar chart of accuracies, loss
//! curves of training CSVs). Also the `[metrics]` table `export` puts into a bundle.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use image::{GrayImage, Luma, Rgb, RgbImage};

use crate::bootstrap::Interval;
use crate::metrics::Plane;
use crate::results::{EvaluationReport, NativeReport, METHODS};

/// The LED study's Table 1 (PadChest, ResNet-18): high quality, low quality, enhanced.
pub const SEED_STUDY_ACCURACY: [f64; 3] = [0.739, 0.566, 0.663];

/// Bar and line colours, one per method or series.
const PALETTE: [[u8; 3]; 8] = [
    [40, 40, 40],
    [150, 150, 150],
    [230, 159, 0],
    [86, 180, 233],
    [0, 158, 115],
    [204, 121, 167],
    [213, 94, 0],
    [0, 114, 178],
];

/// Short labels for the figures (the font has upper case only).
const SHORT: [&str; 8] = ["HQ", "LQ", "CLAHE", "HISTEQ", "NLM", "NLMS", "FIRST", "LED"];

fn glyph(c: char) -> [&'static str; 5] {
    match c.to_ascii_uppercase() {
        'A' => [".#.", "#.#", "###", "#.#", "#.#"],
        'B' => ["##.", "#.#", "##.", "#.#", "##."],
        'C' => [".##", "#..", "#..", "#..", ".##"],
        'D' => ["##.", "#.#", "#.#", "#.#", "##."],
        'E' => ["###", "#..", "##.", "#..", "###"],
        'F' => ["###", "#..", "##.", "#..", "#.."],
        'G' => [".##", "#..", "#.#", "#.#", ".##"],
        'H' => ["#.#", "#.#", "###", "#.#", "#.#"],
        'I' => ["###", ".#.", ".#.", ".#.", "###"],
        'J' => ["..#", "..#", "..#", "#.#", ".#."],
        'K' => ["#.#", "#.#", "##.", "#.#", "#.#"],
        'L' => ["#..", "#..", "#..", "#..", "###"],
        'M' => ["#.#", "###", "###", "#.#", "#.#"],
        'N' => ["##.", "#.#", "#.#", "#.#", "#.#"],
        'O' => [".#.", "#.#", "#.#", "#.#", ".#."],
        'P' => ["##.", "#.#", "##.", "#..", "#.."],
        'Q' => [".#.", "#.#", "#.#", "##.", ".##"],
        'R' => ["##.", "#.#", "##.", "#.#", "#.#"],
        'S' => [".##", "#..", ".#.", "..#", "##."],
        'T' => ["###", ".#.", ".#.", ".#.", ".#."],
        'U' => ["#.#", "#.#", "#.#", "#.#", "###"],
        'V' => ["#.#", "#.#", "#.#", "#.#", ".#."],
        'W' => ["#.#", "#.#", "###", "###", "#.#"],
        'X' => ["#.#", "#.#", ".#.", "#.#", "#.#"],
        'Y' => ["#.#", "#.#", ".#.", ".#.", ".#."],
        'Z' => ["###", "..#", ".#.", "#..", "###"],
        '0' => ["###", "#.#", "#.#", "#.#", "###"],
        '1' => [".#.", "##.", ".#.", ".#.", "###"],
        '2' => ["##.", "..#", ".#.", "#..", "###"],
        '3' => ["##.", "..#", ".#.", "..#", "##."],
        '4' => ["#.#", "#.#", "###", "..#", "..#"],
        '5' => ["###", "#..", "##.", "..#", "##."],
        '6' => [".##", "#..", "###", "#.#", "###"],
        '7' => ["###", "..#", ".#.", ".#.", ".#."],
        '8' => ["###", "#.#", "###", "#.#", "###"],
        '9' => ["###", "#.#", "###", "..#", "##."],
        '.' => ["...", "...", "...", "...", ".#."],
        '%' => ["#.#", "..#", ".#.", "#..", "#.#"],
        '-' => ["...", "...", "###", "...", "..."],
        '_' => ["...", "...", "...", "...", "###"],
        '+' => ["...", ".#.", "###", ".#.", "..."],
        '/' => ["..#", "..#", ".#.", "#..", "#.."],
        '=' => ["...", "###", "...", "###", "..."],
        ':' => ["...", ".#.", "...", ".#.", "..."],
        '(' => [".#.", "#..", "#..", "#..", ".#."],
        ')' => [".#.", "..#", "..#", "..#", ".#."],
        _ => ["...", "...", "...", "...", "..."],
    }
}

/// Pixel width of `text` at `scale`.
fn text_width(text: &str, scale: u32) -> u32 {
    text.chars().count() as u32 * 4 * scale
}

/// Draws `text` with its top-left corner at (x, y), clipped to the image.
fn draw_text(image: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, colour: [u8; 3]) {
    for (i, c) in text.chars().enumerate() {
        for (row, bits) in glyph(c).iter().enumerate() {
            for (col, bit) in bits.chars().enumerate() {
                if bit != '#' {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let px = x + (i as u32 * 4 + col as u32) * scale + dx;
                        let py = y + row as u32 * scale + dy;
                        if px < image.width() && py < image.height() {
                            image.put_pixel(px, py, Rgb(colour));
                        }
                    }
                }
            }
        }
    }
}

fn fill(image: &mut RgbImage, x0: u32, y0: u32, x1: u32, y1: u32, colour: [u8; 3]) {
    for y in y0..y1.min(image.height()) {
        for x in x0..x1.min(image.width()) {
            image.put_pixel(x, y, Rgb(colour));
        }
    }
}

/// Bar chart of classifier accuracy per method, with the value above each bar.
pub fn accuracy_chart(report: &EvaluationReport) -> RgbImage {
    let (width, height, left, bottom, top) = (760u32, 380u32, 50u32, 40u32, 40u32);
    let mut image = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let plot_h = height - bottom - top;
    let y_of = |v: f64| top + plot_h - (v.clamp(0.0, 1.0) * plot_h as f64) as u32;
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let y = y_of(tick);
        fill(&mut image, left, y, width - 10, y + 1, [220, 220, 220]);
        draw_text(&mut image, 4, y.saturating_sub(5), &format!("{:.0}%", tick * 100.0), 2, [80, 80, 80]);
    }
    draw_text(&mut image, left, 8, "CLASSIFIER ACCURACY ON THE TEST SPLIT", 2, [0, 0, 0]);
    let slot = (width - left - 10) / report.methods.len().max(1) as u32;
    for (i, method) in report.methods.iter().enumerate() {
        let x0 = left + i as u32 * slot + slot / 6;
        let x1 = left + (i as u32 + 1) * slot - slot / 6;
        let y = y_of(method.accuracy);
        fill(&mut image, x0, y, x1, top + plot_h, PALETTE[i % PALETTE.len()]);
        let value = format!("{:.1}%", method.accuracy * 100.0);
        let cx = (x0 + x1) / 2;
        draw_text(&mut image, cx.saturating_sub(text_width(&value, 2) / 2), y.saturating_sub(14), &value, 2, [0, 0, 0]);
        let label = SHORT.get(i).copied().unwrap_or("?");
        draw_text(&mut image, cx.saturating_sub(text_width(label, 2) / 2), top + plot_h + 10, label, 2, [0, 0, 0]);
    }
    fill(&mut image, left, top + plot_h, width - 10, top + plot_h + 1, [0, 0, 0]);
    image
}

/// Grid of examples: one row per image, one column per method, with a header.
pub fn example_grid(examples: &[Vec<&Plane>], tile: u32) -> GrayImage {
    let columns = examples.first().map_or(0, Vec::len) as u32;
    let header = 24;
    let mut grid = GrayImage::from_pixel(columns * tile, header + examples.len() as u32 * tile, Luma([255]));
    let mut text = RgbImage::from_pixel(grid.width(), header, Rgb([255, 255, 255]));
    for (c, label) in SHORT.iter().enumerate().take(columns as usize) {
        let x = c as u32 * tile + (tile.saturating_sub(text_width(label, 3))) / 2;
        draw_text(&mut text, x, 4, label, 3, [0, 0, 0]);
    }
    for (x, y, pixel) in text.enumerate_pixels() {
        grid.put_pixel(x, y, Luma([pixel[0]]));
    }
    for (r, row) in examples.iter().enumerate() {
        for (c, plane) in row.iter().enumerate() {
            let source = GrayImage::from_fn(plane.width as u32, plane.height as u32, |x, y| {
                Luma([(plane.at(x as usize, y as usize).clamp(0.0, 1.0) * 255.0).round() as u8])
            });
            let thumb = image::imageops::resize(&source, tile, tile, image::imageops::FilterType::Triangle);
            image::imageops::replace(&mut grid, &thumb, (c as u32 * tile) as i64, (header + r as u32 * tile) as i64);
        }
    }
    grid
}

/// A named series of (x, y) points.
type Series = (String, Vec<(f64, f64)>);

/// Numeric series of a metrics CSV: the first column against each column whose name contains "loss".
fn read_curves(path: &Path) -> anyhow::Result<Vec<Series>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().context("empty CSV")?.split(',').collect();
    let columns: Vec<usize> = (1..header.len()).filter(|&i| header[i].contains("loss")).collect();
    anyhow::ensure!(!columns.is_empty(), "{}: no column named *loss* to draw", path.display());
    let mut series: Vec<Series> = columns.iter().map(|&i| (header[i].to_string(), Vec::new())).collect();
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        let Some(Ok(x)) = cells.first().map(|c| c.trim().parse::<f64>()) else { continue };
        for (s, &i) in series.iter_mut().zip(&columns) {
            if let Some(Ok(y)) = cells.get(i).map(|c| c.trim().parse::<f64>()) {
                if y.is_finite() {
                    s.1.push((x, y));
                }
            }
        }
    }
    Ok(series)
}

/// One panel per CSV: its loss columns against step, each in its own colour, with a legend.
pub fn loss_curves(paths: &[PathBuf]) -> anyhow::Result<RgbImage> {
    let (width, panel) = (760u32, 260u32);
    let mut image = RgbImage::from_pixel(width, panel * paths.len() as u32, Rgb([255, 255, 255]));
    for (p, path) in paths.iter().enumerate() {
        let series = read_curves(path)?;
        let y0 = p as u32 * panel;
        let (left, top, plot_w, plot_h) = (60u32, y0 + 30, width - 80, panel - 60);
        let points = series.iter().flat_map(|s| s.1.iter());
        let (mut x_min, mut x_max, mut y_min, mut y_max) =
            (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y) in points {
            (x_min, x_max, y_min, y_max) = (x_min.min(x), x_max.max(x), y_min.min(y), y_max.max(y));
        }
        if !x_min.is_finite() {
            continue;
        }
        let (x_span, y_span) = ((x_max - x_min).max(1e-9), (y_max - y_min).max(1e-9));
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let parent =
            path.parent().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        draw_text(&mut image, left, y0 + 8, &format!("{parent}/{name}"), 2, [0, 0, 0]);
        fill(&mut image, left, top + plot_h, left + plot_w, top + plot_h + 1, [0, 0, 0]);
        fill(&mut image, left, top, left + 1, top + plot_h, [0, 0, 0]);
        draw_text(&mut image, 2, top, &format!("{y_max:.3}"), 2, [80, 80, 80]);
        draw_text(&mut image, 2, top + plot_h - 10, &format!("{y_min:.3}"), 2, [80, 80, 80]);
        draw_text(&mut image, left, top + plot_h + 6, &format!("STEP {x_min:.0}"), 2, [80, 80, 80]);
        let end = format!("{x_max:.0}");
        draw_text(&mut image, left + plot_w - text_width(&end, 2), top + plot_h + 6, &end, 2, [80, 80, 80]);
        for (s, (label, values)) in series.iter().enumerate() {
            let colour = PALETTE[(s + 2) % PALETTE.len()];
            let to_pixel = |(x, y): (f64, f64)| {
                (
                    left as f64 + (x - x_min) / x_span * plot_w as f64,
                    top as f64 + (1.0 - (y - y_min) / y_span) * plot_h as f64,
                )
            };
            for pair in values.windows(2) {
                let (a, b) = (to_pixel(pair[0]), to_pixel(pair[1]));
                let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as u32).max(1);
                for k in 0..=steps {
                    let t = k as f64 / steps as f64;
                    let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
                    fill(&mut image, x as u32, y as u32, x as u32 + 2, y as u32 + 2, colour);
                }
            }
            if values.len() == 1 {
                let (x, y) = to_pixel(values[0]);
                fill(&mut image, x as u32, y as u32, x as u32 + 4, y as u32 + 4, colour);
            }
            let legend_x = left + plot_w - 260;
            fill(&mut image, legend_x, top + 4 + s as u32 * 14, legend_x + 12, top + 14 + s as u32 * 14, colour);
            draw_text(&mut image, legend_x + 18, top + 4 + s as u32 * 14, label, 2, [0, 0, 0]);
        }
    }
    Ok(image)
}

fn optional(value: Option<f64>, digits: usize) -> String {
    value.map_or("–".into(), |v| format!("{v:.digits$}"))
}

/// A mean with its interval, `digits` decimals, scaled by `scale` (100 for percent).
fn interval(value: Option<Interval>, digits: usize, scale: f64) -> String {
    value.map_or("–".into(), |i| {
        format!("{:.digits$} [{:.digits$}, {:.digits$}]", i.mean * scale, i.low * scale, i.high * scale)
    })
}

/// A paired difference, bold where its whole interval lies above zero.
pub(crate) fn difference(value: Option<Interval>, digits: usize, scale: f64) -> String {
    match value {
        Some(i) if i.above_zero() => {
            format!("**{:+.digits$}** [{:.digits$}, {:.digits$}]", i.mean * scale, i.low * scale, i.high * scale)
        }
        Some(i) => format!("{:+.digits$} [{:.digits$}, {:.digits$}]", i.mean * scale, i.low * scale, i.high * scale),
        None => "–".into(),
    }
}

/// The table as Markdown (used in report.md and the README).
pub fn markdown_table(report: &EvaluationReport) -> String {
    let mut table = String::from(
        "| Method | PSNR (dB) | SSIM | Accuracy (%) | Gap closed | ΔPSNR vs NLM + stretch | ΔSSIM | Δaccuracy (points) | Images/s |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for m in &report.methods {
        let psnr = match (m.psnr_interval, m.psnr_mean) {
            (Some(i), _) => interval(Some(i), 2, 1.0),
            (None, Some(mean)) => format!("{mean:.2}"),
            _ => "–".into(),
        };
        let ssim = match (m.ssim_interval, m.ssim_mean) {
            (Some(i), _) => interval(Some(i), 3, 1.0),
            (None, Some(mean)) => format!("{mean:.3}"),
            _ => "–".into(),
        };
        let accuracy = match m.accuracy_interval {
            Some(i) => interval(Some(i), 1, 100.0),
            None => format!("{:.1}", m.accuracy * 100.0),
        };
        let gap = m.gap_closed.map_or("–".into(), |g| format!("{:.0}%", g * 100.0));
        let (dp, ds, da) = match &m.versus_bar {
            Some(d) => (difference(d.psnr_db, 2, 1.0), difference(d.ssim, 3, 1.0), difference(d.accuracy, 1, 100.0)),
            None => ("(the bar)".into(), "–".into(), "–".into()),
        };
        let _ = writeln!(
            table,
            "| {} | {psnr} | {ssim} | {accuracy} | {gap} | {dp} | {ds} | {da} | {} |",
            m.label,
            optional(m.images_per_second, if m.images_per_second.is_some_and(|r| r < 1.0) { 3 } else { 1 })
        );
    }
    let [hq, lq, enhanced] = SEED_STUDY_ACCURACY;
    let _ = writeln!(
        table,
        "| *LED study, Table 1 (PadChest): HQ / LQ / enhanced* | – | – | *{:.1} / {:.1} / {:.1}* | *{:.0}%* | – | – | – | – |",
        hq * 100.0,
        lq * 100.0,
        enhanced * 100.0,
        (enhanced - lq) / (hq - lq) * 100.0
    );
    table
}

/// The `--native` table as Markdown.
pub fn native_table(native: &NativeReport) -> String {
    let mut table = String::from(
        "| Method | PSNR (dB) | SSIM | ΔPSNR vs NLM + stretch | ΔSSIM | s/image |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for m in &native.methods {
        let (dp, ds) = if m.method == crate::results::BAR {
            ("(the bar)".into(), "–".into())
        } else {
            (difference(m.versus_bar.psnr_db, 2, 1.0), difference(m.versus_bar.ssim, 3, 1.0))
        };
        let _ = writeln!(
            table,
            "| {} | {} | {} | {dp} | {ds} | {} |",
            m.label,
            interval(Some(m.psnr), 2, 1.0),
            interval(Some(m.ssim), 3, 1.0),
            optional(m.seconds_per_image, 2)
        );
    }
    table
}

/// A line naming the files that were skipped (none: empty).
fn skipped_note(skipped: &[crate::data::Skipped]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let named: Vec<String> =
        skipped.iter().map(|s| format!("`{}` ({})", s.path.display(), s.reason.replace('\n', " "))).collect();
    format!("\n{} file(s) could not be read and are not in the table: {}.\n", skipped.len(), named.join("; "))
}

fn markdown(report: &EvaluationReport) -> String {
    let mut md = String::new();
    let b = &report.bundle;
    let _ = writeln!(md, "# Evaluation of bundle `{}` {}\n", b.name, b.version);
    if b.random_weights {
        let _ = writeln!(
            md,
            "> **The bundle has untrained, random weights** ({}). Its first-stage and LED rows measure the pipeline, not an \
             enhancement: they are no result. The NLM + stretch row is the bar a trained bundle must beat.\n",
            b.training_method
        );
    }
    let total: usize = report.test_images.iter().map(|(_, c)| c).sum();
    let counts: Vec<String> = report.test_images.iter().map(|(c, n)| format!("{n} {c}")).collect();
    let _ = writeln!(
        md,
        "{total} held-out test images ({}) at {}x{} px, each with a simulated low-quality partner (Deviation Index {:.1} to {:.1} dB, mean {:.1}). \
         PSNR and SSIM against the high-quality image (data range 1; SSIM with an 11x11 Gaussian window, sigma 1.5); accuracy of the \
         evaluation classifier; gap closed = (accuracy − LQ accuracy) / (HQ accuracy − LQ accuracy); images/s of the method alone \
         on {}.\n",
        counts.join(", "),
        report.size,
        report.size,
        report.deviation_index[0],
        report.deviation_index[2],
        report.deviation_index[1],
        report.device
    );
    let refinement = if report.t0 == 0 {
        "LED row: t0 = 0, no diffusion refinement (the first stage's estimate is the output)".to_string()
    } else {
        format!("LED row: refinement from t0 = {} in {} DDIM steps", report.t0, report.steps)
    };
    let _ = writeln!(
        md,
        "First stage: {}. {refinement}. Simulator ranges: `{}`. Intervals: 95% bootstrap ({} resamples) of the mean over \
         images; Δ columns: paired difference to NLM + stretch on the same images, **bold** where the whole interval is \
         above zero.\n",
        report.first_stage,
        report.ranges_name,
        crate::bootstrap::RESAMPLES
    );
    md += &markdown_table(report);
    md += &skipped_note(&report.skipped);
    let calibration = if report.bundle.uncalibrated_check {
        "**uncalibrated**: this bundle has no `[hallucination]` table, so these are the check's defaults, not what \
         the daemon would decide with a calibrated bundle (`hallucination-bench --write-bundle`)"
    } else {
        "the bundle's calibration"
    };
    let _ = writeln!(
        md,
        "\nThe hallucination check on the model's outputs (the daemon's score against the low-quality input, \
         {calibration}):\n\n| Method | Mean score | Held at the bundle's threshold |\n| --- | --- | --- |"
    );
    for m in report.methods.iter().filter(|m| m.hallucination_score.is_some()) {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            m.label,
            interval(m.hallucination_score, 3, 1.0),
            m.held.map_or("–".into(), |h| format!("{:.1}%", h * 100.0))
        );
    }
    if !report.ceiling.is_empty() {
        let _ = writeln!(
            md,
            "\n## What the classifier needs\n\nThe classifier on the {} high-quality test images changed without any \
             degradation: if a faithful change already costs accuracy, no denoiser of the low-quality images gets it \
             back. The oracle rows are not methods (they use the answer): each image takes the high-quality image's \
             own tone curve (histogram matching keeps its pixels' order, so its structure and noise stay its own); \
             the accuracy they recover is what the tone cost, what they miss is the noise's and the detail's. The \
             row with the average image's 1st and 99th percentiles is no oracle either: each image keeps its \
             structure and its own tone curve's shape, and only its black and white points are forgotten, as a \
             low dose that lifts and compresses the tone forgets them; what it costs, no enhancement can know.\n\n\
             | Images | Accuracy (%) | Δ to the unchanged images (points) | PSNR to them (dB) | SSIM |\n\
             | --- | --- | --- | --- | --- |",
            report.test_images.iter().map(|(_, n)| n).sum::<usize>()
        );
        for row in &report.ceiling {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                row.label,
                interval(Some(row.accuracy), 1, 100.0),
                difference(Some(row.versus_high_quality), 1, 100.0),
                interval(row.psnr, 2, 1.0),
                interval(row.ssim, 3, 1.0)
            );
        }
    }
    if let Some(native) = &report.native {
        let _ = writeln!(
            md,
            "\n## At the images' own size\n\n{} images of `{}` ({}), each degraded with the same ranges (Deviation Index \
             {:.1} to {:.1} dB, mean {:.1}); LED through the daemon's tiled path.\n",
            native.images,
            native.folder,
            native.sizes.join(", "),
            native.deviation_index[0],
            native.deviation_index[2],
            native.deviation_index[1]
        );
        md += &native_table(native);
        md += &skipped_note(&native.skipped);
    }
    let _ =
        writeln!(md, "\n![Examples: HQ, LQ, then each method](examples.png)\n\n![Accuracy per method](accuracy.png)\n");
    if report.figures.iter().any(|f| f == "curves.png") {
        let _ = writeln!(md, "![Training loss curves](curves.png)\n");
    }
    let _ = writeln!(md, "## Reproduce\n\n```sh");
    if let Some(command) = report.classifier.training.get("command").and_then(|v| v.as_str()) {
        let _ = writeln!(md, "{command}");
    }
    if let Some(command) = &b.training_command {
        let _ = writeln!(md, "{command}");
    }
    let _ = writeln!(md, "{}\n```\n", report.command);
    let _ = writeln!(
        md,
        "## Bundle\n\n- name `{}`, version {}\n- sha256 of bundle.toml `{}`\n- {}\n- training: {}\n",
        b.name, b.version, b.sha256, b.description, b.training_method
    );
    let _ = writeln!(md, "## Data\n\n| Class | Folders | Train | Validation | Test |\n| --- | --- | --- | --- | --- |");
    for c in &report.data {
        let _ =
            writeln!(md, "| {} | {} | {} | {} | {} |", c.class, c.folders.join(", "), c.train, c.validation, c.test);
    }
    let _ = writeln!(
        md,
        "\nSplits are fixed by a hash of each file name (10% validation, 10% test); the test subset is the first images by another name hash.\n"
    );
    let c = &report.classifier;
    let _ = writeln!(
        md,
        "## Classifier\n\nResNet-18 (one-channel input), width {}, input {} px, classes {:?}; sha256 of its weights `{}`.\n",
        c.width,
        c.size,
        c.classes,
        if report.classifier_sha256.is_empty() { "not recorded" } else { &report.classifier_sha256 }
    );
    for (key, value) in &c.training {
        let _ = writeln!(md, "- {key}: {value}");
    }
    let r = &report.simulator_ranges;
    let _ = writeln!(
        md,
        "\n## Degradation simulator\n\nPer image, drawn from these ranges (dose and quanta log-uniform, bits from the list, the rest uniform), seeded by the file name:\n\n\
         | Parameter | Range |\n| --- | --- |\n| dose fraction | {:?} |\n| full-dose quanta per pixel | {:?} |\n| attenuation max (mu) | {:?} |\n\
         | blur sigma (px) | {:?} |\n| electronic noise (quanta) | {:?} |\n| contrast | {:?} |\n| noise correlation sigma (px) | {:?} |\n\
         | resampling factor | {:?} |\n| gamma | {:?} |\n| offset (lift) | {:?} |\n| window clip low | {:?} |\n| window clip high | {:?} |\n\
         | bits | {:?} |\n",
        r.dose_fraction, r.full_dose_quanta, r.attenuation_max, r.blur_sigma, r.electronic_noise, r.contrast,
        r.noise_correlation, r.resample, r.gamma, r.offset, r.clip_low, r.clip_high, r.bits
    );
    let _ = writeln!(
        md,
        "## Baselines\n\n- CLAHE: {} x {} tiles, clip limit {} x the mean bin count, 256 bins, bilinear between tiles.\n\
         - Histogram equalisation: global, 256 bins.\n\
         - NLM + stretch: non-local means, {}x{} patches, {}x{} search window, h = {} sigma (sigma from the median absolute diagonal difference), \
         then the 1st..99th percentile stretched to [0, 1].",
        report.clahe.tiles,
        report.clahe.tiles,
        report.clahe.clip_limit,
        2 * report.nlm.patch_radius + 1,
        2 * report.nlm.patch_radius + 1,
        2 * report.nlm.search_radius + 1,
        2 * report.nlm.search_radius + 1,
        report.nlm.strength
    );
    md
}

/// Writes report.md, report.json and the figures into `dir`.
pub fn write(
    dir: &Path,
    report: &mut EvaluationReport,
    examples: &[Vec<&Plane>],
    curves: &[PathBuf],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tile = examples.first().and_then(|row| row.first()).map_or(160, |p| p.width.min(160) as u32);
    example_grid(examples, tile).save(dir.join("examples.png")).context("writing examples.png")?;
    accuracy_chart(report).save(dir.join("accuracy.png")).context("writing accuracy.png")?;
    report.figures = vec!["examples.png".into(), "accuracy.png".into()];
    if !curves.is_empty() {
        loss_curves(curves)?.save(dir.join("curves.png")).context("writing curves.png")?;
        report.figures.push("curves.png".into());
    }
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(report)?)?;
    std::fs::write(dir.join("report.md"), markdown(report))?;
    eprintln!("evaluate: wrote {}", dir.join("report.md").display());
    Ok(())
}

/// The bundle's `[metrics]` table from a report: one sub-table per method
/// plus what was measured on what.
pub fn metrics_table(report: &EvaluationReport) -> anyhow::Result<toml::Table> {
    let mut table = toml::Table::new();
    table.insert("evaluation-command".into(), report.command.clone().into());
    table.insert("evaluated-bundle-sha256".into(), report.bundle.sha256.clone().into());
    table.insert("test-images".into(), (report.test_images.iter().map(|(_, n)| n).sum::<usize>() as i64).into());
    table.insert("image-size".into(), i64::from(report.size).into());
    table.insert("device".into(), report.device.clone().into());
    table.insert(
        "classifier".into(),
        format!(
            "resnet18 width {} at {} px, classes {:?}",
            report.classifier.width, report.classifier.size, report.classifier.classes
        )
        .into(),
    );
    for method in &report.methods {
        anyhow::ensure!(
            METHODS.iter().any(|(key, _)| *key == method.method),
            "unknown method {:?} in the report",
            method.method
        );
        let mut row = toml::Table::new();
        row.insert("accuracy".into(), method.accuracy.into());
        for (key, value) in [
            ("psnr-db", method.psnr_mean),
            ("ssim", method.ssim_mean),
            ("gap-closed", method.gap_closed),
            ("images-per-second", method.images_per_second),
        ] {
            if let Some(value) = value.filter(|v| v.is_finite()) {
                row.insert(key.into(), value.into());
            }
        }
        table.insert(method.method.clone(), row.into());
    }
    Ok(table)
}
