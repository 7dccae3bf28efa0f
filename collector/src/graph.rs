//! Graph files (SVG or PNG by extension) of a report: stacked bit/s per key over time,
//! drawn with `plotters`.

use std::collections::HashMap;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::{rfc3339, Report};

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("output must end in .svg or .png: {0}")]
    Format(String),
    #[error("drawing: {0}")]
    Draw(String),
}

/// Stacked series: for each key (report order), bit/s per output bucket.
pub fn stacked_series(r: &Report) -> (Vec<i64>, Vec<(String, Vec<f64>)>) {
    let buckets: Vec<i64> = (0..((r.to - r.from) / r.bucket).max(0))
        .map(|i| r.from + i * r.bucket)
        .collect();
    let pos: HashMap<i64, usize> = buckets.iter().enumerate().map(|(i, b)| (*b, i)).collect();
    let mut series: Vec<(String, Vec<f64>)> = r
        .keys
        .iter()
        .map(|k| (k.clone(), vec![0.0; buckets.len()]))
        .collect();
    let kpos: HashMap<&str, usize> = r
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), i))
        .collect();
    for row in &r.rows {
        if let (Some(b), Some(k)) = (pos.get(&row.bucket), kpos.get(row.key.as_str())) {
            series[*k].1[*b] = row.counters.bytes as f64 * 8.0 / r.bucket as f64;
        }
    }
    (buckets, series)
}

/// Write the graph to `out`.
pub fn render(r: &Report, title: &str, out: &Path, size: (u32, u32)) -> Result<(), GraphError> {
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "svg" => draw(SVGBackend::new(out, size).into_drawing_area(), r, title),
        "png" => draw(BitMapBackend::new(out, size).into_drawing_area(), r, title),
        _ => Err(GraphError::Format(out.display().to_string())),
    }
}

fn draw<DB: DrawingBackend>(
    area: DrawingArea<DB, Shift>,
    r: &Report,
    title: &str,
) -> Result<(), GraphError>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| GraphError::Draw(e.to_string());
    area.fill(&WHITE).map_err(err)?;
    let (buckets, series) = stacked_series(r);
    let n = buckets.len().max(1);
    let mut stacked = vec![0.0f64; n];
    let mut layers: Vec<(String, Vec<f64>, Vec<f64>)> = Vec::new();
    for (k, vals) in &series {
        let lower = stacked.clone();
        for (i, v) in vals.iter().enumerate() {
            stacked[i] += v;
        }
        layers.push((k.clone(), lower, stacked.clone()));
    }
    let peak = stacked.iter().cloned().fold(0.0, f64::max).max(1.0) * 1.1;
    let (scale, unit) = match peak {
        p if p >= 1e9 => (1e9, "Gbit/s"),
        p if p >= 1e6 => (1e6, "Mbit/s"),
        p if p >= 1e3 => (1e3, "kbit/s"),
        _ => (1.0, "bit/s"),
    };
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0..n as i64, 0.0..peak / scale)
        .map_err(err)?;
    let from = r.from;
    let bucket = r.bucket;
    chart
        .configure_mesh()
        .y_desc(unit)
        .x_labels(6)
        .x_label_formatter(&|i| rfc3339(from + i * bucket)[11..16].to_string())
        .draw()
        .map_err(err)?;
    for (i, (key, lower, upper)) in layers.iter().enumerate() {
        let color = Palette99::pick(i).mix(0.75);
        let mut poly: Vec<(i64, f64)> = (0..n).map(|x| (x as i64, upper[x] / scale)).collect();
        poly.extend((0..n).rev().map(|x| (x as i64, lower[x] / scale)));
        chart
            .draw_series(std::iter::once(Polygon::new(poly, color.filled())))
            .map_err(err)?
            .label(key.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    area.present().map_err(err)?;
    Ok(())
}
