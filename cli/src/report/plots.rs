//! The report's plots, drawn with plotters' SVG backend into strings (inlined in the HTML).

use plotters::prelude::*;

/// The colours of the two strategies (plain, shadow) and of forecasts.
const PLAIN: RGBColor = RGBColor(0xd6, 0x4f, 0x3a);
const SHADOW: RGBColor = RGBColor(0x2a, 0x6f, 0xb5);
const P90: RGBColor = RGBColor(0x8a, 0x5c, 0xc7);

fn draw_err<E: std::fmt::Debug>(e: E) -> String {
    format!("plot: {e:?}")
}

/// A named line.
pub struct Line<'a> {
    /// Legend text.
    pub name: &'a str,
    /// Points.
    pub xy: Vec<(f64, f64)>,
    /// Colour index: 0 plain, 1 shadow, 2 p90, 3 actual.
    pub colour: usize,
}

fn colour(k: usize) -> RGBColor {
    match k {
        0 => PLAIN,
        1 => SHADOW,
        2 => P90,
        _ => RGBColor(0x33, 0x33, 0x33),
    }
}

/// A line chart of `lines` against hours.
///
/// # Errors
/// A message when plotters fails.
pub fn lines(
    title: &str,
    y_desc: &str,
    lines: &[Line<'_>],
    size: (u32, u32),
) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0f64);
        for l in lines {
            for &(x, y) in &l.xy {
                x0 = x0.min(x);
                x1 = x1.max(x);
                if y.is_finite() {
                    y1 = y1.max(y);
                }
            }
        }
        if x0 >= x1 {
            x0 = 0.0;
            x1 = x0 + 1.0;
        }
        let y1 = if y1 > 0.0 { y1 * 1.08 } else { 1.0 };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, 0.0..y1)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("hours since start")
            .y_desc(y_desc)
            .light_line_style(RGBColor(0xee, 0xee, 0xee))
            .y_label_formatter(&|v| short(*v))
            .draw()
            .map_err(draw_err)?;
        for l in lines {
            let c = colour(l.colour);
            chart
                .draw_series(LineSeries::new(l.xy.iter().copied(), c.stroke_width(1)))
                .map_err(draw_err)?
                .label(l.name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// Grouped bars: one group per category, one bar per strategy (plain, shadow).
///
/// # Errors
/// A message when plotters fails.
pub fn bars(
    title: &str,
    categories: &[&str],
    values: &[[u64; 2]],
    size: (u32, u32),
) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let top = values
            .iter()
            .flat_map(|v| v.iter())
            .copied()
            .max()
            .unwrap_or(0)
            .max(1) as f64
            * 1.15;
        let n = categories.len() as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..n, 0.0..top)
            .map_err(draw_err)?;
        let cats: Vec<String> = categories.iter().map(|s| s.to_string()).collect();
        let fmt = move |x: &f64| {
            let k = x.floor() as usize;
            if (x - k as f64 - 0.5).abs() < 1e-6 {
                cats.get(k).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(categories.len() * 2 + 1)
            .x_label_formatter(&fmt)
            .y_label_formatter(&|v| short(*v))
            .y_desc("requests")
            .draw()
            .map_err(draw_err)?;
        for (k, name) in ["plain buckets", "shadow buckets"].iter().enumerate() {
            let c = colour(k);
            chart
                .draw_series(values.iter().enumerate().map(|(i, v)| {
                    let x = i as f64 + 0.1 + 0.4 * k as f64;
                    Rectangle::new([(x, 0.0), (x + 0.38, v[k] as f64)], c.filled())
                }))
                .map_err(draw_err)?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
            chart
                .draw_series(values.iter().enumerate().map(|(i, v)| {
                    let x = i as f64 + 0.1 + 0.4 * k as f64;
                    Text::new(
                        short(v[k] as f64),
                        (x, v[k] as f64 + top * 0.02),
                        ("sans-serif", 11),
                    )
                }))
                .map_err(draw_err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// A short number: 1.2k, 3.4M, 5.6G.
pub fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
