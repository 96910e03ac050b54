//! Tuning reports: the results as JSON and an SVG plot (time per candidate per shape, the winner
//! marked, rejected candidates listed with their reasons). Files are written only by [`write()`].

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::cache::winner::WinnerRecord;

/// Renders the records as one SVG document.
pub fn svg(records: &[WinnerRecord]) -> String {
    const W: u32 = 1100;
    const ROW: u32 = 18;
    let rows: u32 = records
        .iter()
        .map(|r| 3 + r.candidates.len() as u32)
        .sum::<u32>()
        + 2;
    let h = (rows * ROW).max(100);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (W, h)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let font = ("sans-serif", 13).into_font();
        let bold = ("sans-serif", 14).into_font().style(FontStyle::Bold);
        let mut y: i32 = ROW as i32;
        let _ = root.draw(&Text::new(
            "flasheva tune: median time per candidate (shorter is faster; winner in green)",
            (10, y),
            bold.clone(),
        ));
        y += ROW as i32 * 2;
        for r in records {
            let title = format!(
                "{} on {}  shape B={} N={} H={} Hkv={}  winner {} ({:.4} ms, {:.2}x the default)",
                r.spec.name(),
                r.device.name,
                r.shape.0,
                r.shape.1,
                r.shape.2,
                r.shape.3,
                r.tile.name(r.spec.op()),
                r.median_ms,
                r.speedup()
            );
            let _ = root.draw(&Text::new(title, (10, y), bold.clone()));
            y += ROW as i32;
            let slowest = r
                .candidates
                .iter()
                .filter_map(|c| c.median_ms)
                .fold(0.0f64, f64::max)
                .max(1e-9);
            for c in &r.candidates {
                let label = c.tile.name(r.spec.op());
                match c.median_ms {
                    Some(ms) if c.ok() => {
                        let len = ((ms / slowest) * 600.0) as i32;
                        let color = if c.tile == r.tile {
                            RGBColor(46, 160, 67)
                        } else if c.tile == r.default_tile {
                            RGBColor(90, 120, 200)
                        } else {
                            RGBColor(170, 170, 170)
                        };
                        let _ = root.draw(&Rectangle::new(
                            [(180, y), (180 + len.max(1), y + 13)],
                            color.filled(),
                        ));
                        let _ = root.draw(&Text::new(label, (10, y), font.clone()));
                        let rate = c
                            .rate
                            .map(|v| format!("  {v:.1} {}", c.rate_unit))
                            .unwrap_or_default();
                        let tag = if c.tile == r.default_tile {
                            "  (default)"
                        } else {
                            ""
                        };
                        let _ = root.draw(&Text::new(
                            format!("{ms:.4} ms{rate}{tag}"),
                            (190 + len.max(1), y),
                            font.clone(),
                        ));
                    }
                    _ => {
                        let _ = root.draw(&Text::new(
                            format!("{label}: {}", c.status),
                            (10, y),
                            font.clone().color(&RGBColor(180, 60, 60)),
                        ));
                    }
                }
                y += ROW as i32;
            }
            y += ROW as i32;
        }
        let _ = root.present();
    }
    out
}

/// Writes `results.json` and `tune.svg` into `dir`; returns their paths.
pub fn write(dir: &Path, records: &[WinnerRecord]) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let json = dir.join("results.json");
    std::fs::write(
        &json,
        serde_json::to_vec_pretty(records).map_err(std::io::Error::other)?,
    )?;
    let plot = dir.join("tune.svg");
    std::fs::write(&plot, svg(records))?;
    Ok(vec![json, plot])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::winner::{Bucket, CandidateResult, CandidateStatus, DeviceId, WINNER_FORMAT};
    use crate::spec::{KernelSpec, Op, SpecParams};
    use crate::tile::Tile;

    #[test]
    fn svg_names_every_candidate() {
        let spec = KernelSpec::new(
            Op::ChunkMean,
            &SpecParams {
                head_dim: Some(64),
                chunk: Some(8),
                ..Default::default()
            },
        )
        .unwrap();
        let t = |w| {
            Tile::new(
                &spec,
                crate::tile::TileParams {
                    warps: w,
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let c = |w, ms: Option<f64>, status: CandidateStatus| CandidateResult {
            tile: t(w),
            key: None,
            status,
            median_ms: ms,
            min_ms: ms,
            max_ms: ms,
            rate: ms.map(|m| 1.0 / m),
            rate_unit: "GB/s".into(),
            rel_diff: Some(0.0),
        };
        let rec = WinnerRecord {
            format: WINNER_FORMAT,
            crate_version: "0".into(),
            device: DeviceId {
                name: "Test GPU".into(),
                capability: (9, 0),
                driver_version: 13000,
                nvrtc_version: None,
            },
            spec,
            bucket: Bucket::of(Op::ChunkMean, 1, 1024, 8, 8),
            shape: (1, 1024, 8, 8),
            tile: t(2),
            artifact_key: None,
            median_ms: 0.5,
            default_tile: t(4),
            default_median_ms: 1.0,
            candidates: vec![
                c(2, Some(0.5), CandidateStatus::Ok),
                c(4, Some(1.0), CandidateStatus::Ok),
                c(
                    8,
                    None,
                    CandidateStatus::Wrong {
                        rel_diff: Some(0.1),
                        tolerance: 8e-3,
                    },
                ),
            ],
            created_unix: 0,
        };
        let s = svg(&[rec]);
        assert!(s.starts_with("<svg"));
        for needle in [
            "w2",
            "w4",
            "w8: WRONG",
            "Test GPU",
            "2.00x the default",
            "(default)",
        ] {
            assert!(s.contains(needle), "missing {needle}");
        }
    }
}
