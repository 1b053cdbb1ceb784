//! SVG charts for `compare` (plotters, SVG backend only).

use std::path::Path;

use plotters::prelude::*;

#[derive(Debug, thiserror::Error)]
#[error("drawing {path}: {msg}")]
pub struct ChartError {
    path: String,
    msg: String,
}

fn err(path: &Path) -> impl Fn(String) -> ChartError + '_ {
    move |msg| ChartError {
        path: path.display().to_string(),
        msg,
    }
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// A horizontal-label bar chart: one bar per (label, value).
pub fn bars(
    path: &Path,
    title: &str,
    unit: &str,
    data: &[(String, f64)],
) -> Result<(), ChartError> {
    let e = err(path);
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let max = data
        .iter()
        .map(|(_, v)| *v)
        .fold(0.0_f64, f64::max)
        .max(1e-9)
        * 1.15;
    let n = data.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0..n, 0.0..max)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|i| data.get(*i).map_or(String::new(), |(l, _)| l.clone()))
        .y_desc(unit)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    chart
        .draw_series(data.iter().enumerate().map(|(i, (_, v))| {
            let color = COLORS[i % COLORS.len()];
            let mut bar = Rectangle::new([(i, 0.0), (i + 1, *v)], color.filled());
            bar.set_margin(0, 0, 18, 18);
            bar
        }))
        .map_err(|x| e(x.to_string()))?;
    chart
        .draw_series(data.iter().enumerate().map(|(i, (_, v))| {
            Text::new(format_value(*v), (i, *v), ("sans-serif", 13).into_font())
        }))
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

/// Latency CDFs: per series, (quantile, us) points; x is logarithmic.
pub fn cdf(
    path: &Path,
    title: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), ChartError> {
    let e = err(path);
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let values = || {
        series
            .iter()
            .flat_map(|(_, pts)| pts.iter().map(|(_, us)| *us))
    };
    let lo = values().fold(f64::INFINITY, f64::min).max(1.0);
    let hi = values().fold(0.0_f64, f64::max).max(lo * 10.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo * 0.8..hi * 1.2).log_scale(), 0.0..1.0)
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("one-way latency (us, log scale)")
        .y_desc("fraction of packets")
        .draw()
        .map_err(|x| e(x.to_string()))?;
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|(q, us)| (us.max(lo), *q)),
                color.stroke_width(2),
            ))
            .map_err(|x| e(x.to_string()))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

fn format_value(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_their_labels() {
        let dir = std::env::temp_dir().join(format!("sluice-charts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bar_path = dir.join("bars.svg");
        bars(
            &bar_path,
            "CPU per packet",
            "ns",
            &[("sluice xdp".into(), 447.0), ("userspace".into(), 2474.0)],
        )
        .unwrap();
        let text = std::fs::read_to_string(&bar_path).unwrap();
        assert!(text.starts_with("<svg"), "{text}");
        assert!(
            text.contains("sluice xdp") && text.contains("2474"),
            "{text}"
        );
        let cdf_path = dir.join("cdf.svg");
        cdf(
            &cdf_path,
            "latency",
            &[("a".into(), vec![(0.0, 10.0), (0.5, 20.0), (1.0, 300.0)])],
        )
        .unwrap();
        let text = std::fs::read_to_string(&cdf_path).unwrap();
        assert!(
            text.contains("<polyline") || text.contains("<path"),
            "{text}"
        );
        assert_eq!(format_value(586_362.0), "586k");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
