//! `plot`: the CSV written by scripts/bench-cpu-vs-load.sh as a PNG with two
//! panels side by side, cores used and median round-trip time against offered
//! load, one series per backend in the file.

use std::error::Error;
use std::ops::Range;
use std::path::{Path, PathBuf};

use clap::Args;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::{CoordTranslate, Shift};
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Debian package `fonts-dejavu-core`; ab_glyph needs a TTF and plotters ships none.
const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FONT: &str = "sans-serif";
const WIDTH: u32 = 1200;
const HEIGHT: u32 = 540;
const X_DESC: &str = "offered load (% of the tool's highest rate)";
const IDEAL_LABEL: &str = "ideal (100 %-load cost per packet x packets)";
const IDEAL_COLOR: RGBColor = RGBColor(90, 90, 90);
const IDEAL2_COLOR: RGBColor = RGBColor(175, 175, 175);
/// Colours and markers for the backends the script measures, in this order; other
/// names take the remaining colours in order of appearance.
const KNOWN: [&str; 4] = ["dedicated", "spreading", "compacting", "testpmd"];
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// CSV written by scripts/bench-cpu-vs-load.sh.
    #[arg(long)]
    csv: PathBuf,
    /// PNG to write.
    #[arg(long)]
    out: PathBuf,
}

/// The columns of one CSV line that the plot uses.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    backend: String,
    load_pct: f64,
    achieved_pps: f64,
    cores: f64,
    rtt_p50_us: f64,
}

/// Parses the CSV by hand: columns are found by name in the header; empty lines
/// are skipped; errors name the (1-based) line.
fn parse_csv(text: &str) -> Result<Vec<Row>, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or("empty file")?;
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    let col = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| format!("line 1: header has no column {name:?}"))
    };
    let backend = col("backend")?;
    let load_pct = col("load_pct")?;
    let achieved_pps = col("achieved_pps")?;
    let cores = col("cores")?;
    let rtt_p50_us = col("rtt_p50_us")?;
    let mut rows = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != names.len() {
            return Err(format!(
                "line {n}: {} fields, the header has {}: {line:?}",
                f.len(),
                names.len()
            ));
        }
        let num = |c: usize| {
            f[c].parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("line {n}: {} is {:?}, not a number >= 0", names[c], f[c]))
        };
        if f[backend].is_empty() {
            return Err(format!("line {n}: empty backend"));
        }
        rows.push(Row {
            backend: f[backend].to_string(),
            load_pct: num(load_pct)?,
            achieved_pps: num(achieved_pps)?,
            cores: num(cores)?,
            rtt_p50_us: num(rtt_p50_us)?,
        });
    }
    if rows.is_empty() {
        return Err("no data lines".into());
    }
    Ok(rows)
}

/// One backend's rows, sorted by load.
struct Series<'a> {
    name: &'a str,
    color: RGBColor,
    marker: usize,
    rows: Vec<&'a Row>,
}

fn series(rows: &[Row]) -> Vec<Series<'_>> {
    let mut out: Vec<Series> = Vec::new();
    for r in rows {
        match out.iter_mut().find(|s| s.name == r.backend) {
            Some(s) => s.rows.push(r),
            None => out.push(Series {
                name: &r.backend,
                color: COLORS[0],
                marker: 0,
                rows: vec![r],
            }),
        }
    }
    let mut next = KNOWN.len();
    for s in &mut out {
        s.rows.sort_by(|a, b| a.load_pct.total_cmp(&b.load_pct));
        let i = KNOWN.iter().position(|k| *k == s.name).unwrap_or_else(|| {
            next += 1;
            next - 1
        });
        s.color = COLORS[i % COLORS.len()];
        s.marker = i;
    }
    out
}

/// Compacting's ideal cores at each of its loads: what it spends per packet
/// at 100 % load times the packets it got through. None without a
/// compacting 100 % row.
fn ideal(rows: &[Row]) -> Option<Vec<(f64, f64)>> {
    let d = rows
        .iter()
        .find(|r| r.backend == "compacting" && r.load_pct == 100.0)?;
    if d.achieved_pps <= 0.0 {
        return None;
    }
    let per_packet = d.cores / d.achieved_pps;
    let mut v: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.backend == "compacting")
        .map(|r| (r.load_pct, per_packet * r.achieved_pps))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    (!v.is_empty()).then_some(v)
}

/// The parts of a polyline below `ymax`: plotters does not clip series to the
/// plotting area but pins points outside it to the edge, which bends the line
/// (plotters-rs/plotters#429).
fn clip_below(points: &[(f64, f64)], ymax: f64) -> Vec<Vec<(f64, f64)>> {
    let mut out = vec![Vec::new()];
    for (i, &(x, y)) in points.iter().enumerate() {
        if let Some(&(px, py)) = i.checked_sub(1).map(|j| &points[j]) {
            if (py > ymax) != (y > ymax) {
                let t = (ymax - py) / (y - py);
                let cross = (px + t * (x - px), ymax);
                out.last_mut().unwrap().push(cross);
                if y > ymax {
                    out.push(Vec::new());
                }
            }
        }
        if y <= ymax {
            out.last_mut().unwrap().push((x, y));
        }
    }
    out.retain(|p| p.len() > 1);
    out
}

/// Evenly spaced categorical x axis: category `i` (the i-th smallest load) is
/// at x = i, with a labelled tick there and nowhere else.
struct Categories(usize);

impl Ranged for Categories {
    type ValueType = f64;
    type FormatOption = DefaultFormatting;

    fn range(&self) -> Range<f64> {
        -0.3..self.0 as f64 - 0.7
    }

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let r = self.range();
        let t = (v - r.start) / (r.end - r.start);
        limit.0 + (t * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            (0..self.0).map(|i| i as f64).collect()
        }
    }
}

/// Draws point marker number `kind` (circle, triangle, square, diamond, ...) at each of `pts`.
fn draw_markers<DB: DrawingBackend, CT: CoordTranslate<From = C>, C: Clone>(
    area: &DrawingArea<DB, CT>,
    pts: &[C],
    kind: usize,
    color: RGBColor,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let style = color.filled();
    for p in pts {
        let at = || EmptyElement::at(p.clone());
        match kind % 4 {
            0 => area.draw(&Circle::new(p.clone(), 5, style))?,
            1 => area.draw(&TriangleMarker::new(p.clone(), 6, style))?,
            2 => area.draw(&(at() + Rectangle::new([(-4, -4), (4, 4)], style)))?,
            _ => {
                area.draw(&(at() + Polygon::new(vec![(0, -6), (6, 0), (0, 6), (-6, 0)], style)))?
            }
        }
    }
    Ok(())
}

/// 1, 2, 5, 10, 20, ... : the values a log axis is labelled with.
fn nice(k: i32) -> f64 {
    [1.0, 2.0, 5.0][k.rem_euclid(3) as usize] * 10f64.powi(k.div_euclid(3))
}

/// Log axis range from the nice value below `lo` to the one above `hi`, its
/// labels, and grid lines at the other multiples of powers of ten.
fn log_axis(lo: f64, hi: f64) -> (f64, f64, Vec<f64>, Vec<f64>) {
    let mut k = (lo.log10().floor() as i32) * 3;
    while nice(k + 1) <= lo {
        k += 1;
    }
    let first = k;
    while nice(k) < hi {
        k += 1;
    }
    let mut keys: Vec<f64> = (first..=k).map(nice).collect();
    if keys.len() > 12 {
        keys.retain(|v| (v.log10() - v.log10().round()).abs() < 1e-9);
    }
    let (lo, hi) = (nice(first), nice(k));
    let mut light = Vec::new();
    let mut decade = 10f64.powi(lo.log10().floor() as i32);
    while decade < hi {
        for m in 1..10 {
            let v = f64::from(m) * decade;
            if v > lo && v < hi && !keys.iter().any(|k| (k / v - 1.0).abs() < 1e-9) {
                light.push(v);
            }
        }
        decade *= 10.0;
    }
    (lo, hi, keys, light)
}

fn fmt_num(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

struct LegendEntry {
    label: String,
    color: RGBColor,
    /// Marker kind, or a dashed line without marker.
    marker: Option<usize>,
}

/// Draws the legend entries in rows, centred, in `area`.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    rows: &[Vec<(&LegendEntry, i32)>],
    style: &TextStyle,
) -> Result<(), Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    let (w, _) = area.dim_in_pixel();
    for (r, row) in rows.iter().enumerate() {
        let y = 14 + 24 * r as i32;
        let total: i32 = row.iter().map(|(_, w)| w).sum();
        let mut x = (w as i32 - total) / 2;
        for (e, ew) in row {
            let line = ShapeStyle {
                color: e.color.to_rgba(),
                filled: false,
                stroke_width: 2,
            };
            match e.marker {
                Some(m) => {
                    area.draw(&PathElement::new(vec![(x, y), (x + 32, y)], line))?;
                    draw_markers(area, &[(x + 16, y)], m, e.color)?;
                }
                None => area.draw(&DashedPathElement::new(
                    vec![(x, y), (x + 32, y)],
                    7,
                    5,
                    line,
                ))?,
            }
            area.draw(&Text::new(
                e.label.clone(),
                (x + 38, y),
                style.pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
            x += ew;
        }
    }
    Ok(())
}

fn draw(rows: &[Row], out: &Path) -> Result<(), Box<dyn Error>> {
    let series = series(rows);
    let ideal = ideal(rows);
    let mut loads: Vec<f64> = rows.iter().map(|r| r.load_pct).collect();
    loads.sort_by(f64::total_cmp);
    loads.dedup();
    let xi = |load: f64| loads.iter().position(|l| *l == load).unwrap_or(0) as f64;
    let x_fmt = |v: &f64| {
        let i = v.round();
        match loads.get(i as usize) {
            Some(l) if (v - i).abs() < 1e-6 => fmt_num(*l),
            _ => String::new(),
        }
    };

    let root = BitMapBackend::new(out, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;

    // Legend below both panels, so it hides no data.
    let mut entries: Vec<LegendEntry> = series
        .iter()
        .map(|s| LegendEntry {
            label: s.name.to_string(),
            color: s.color,
            marker: Some(s.marker),
        })
        .collect();
    if ideal.is_some() {
        for (label, color) in [(IDEAL_LABEL, IDEAL_COLOR), ("2x ideal", IDEAL2_COLOR)] {
            entries.push(LegendEntry {
                label: label.into(),
                color,
                marker: None,
            });
        }
    }
    let legend_style = TextStyle::from((FONT, 15).into_font()).color(&BLACK);
    let mut legend_rows: Vec<Vec<(&LegendEntry, i32)>> = vec![Vec::new()];
    let mut row_w = 0;
    for e in &entries {
        let (tw, _) = root.estimate_text_size(&e.label, &legend_style)?;
        let ew = 38 + tw as i32 + 28;
        if row_w + ew > WIDTH as i32 - 40 && row_w > 0 {
            legend_rows.push(Vec::new());
            row_w = 0;
        }
        legend_rows.last_mut().unwrap().push((e, ew));
        row_w += ew;
    }
    let legend_h = 24 * legend_rows.len() as u32 + 6;
    let (panels, legend) = root.split_vertically(HEIGHT - legend_h);
    let (left, right) = panels.split_horizontally(WIDTH / 2);
    draw_legend(&legend, &legend_rows, &legend_style)?;

    let caption = (FONT, 20).into_font();
    let labels = (FONT, 14).into_font();
    let desc = (FONT, 15).into_font();

    // Left: cores.
    let max_cores = rows.iter().map(|r| r.cores).fold(0.0, f64::max);
    let ymax = f64::max(1.1, max_cores + 0.1);
    let mut chart = ChartBuilder::on(&left)
        .caption("Cores used against offered load", caption.clone())
        .margin(12)
        .margin_right(24)
        .x_label_area_size(48)
        .y_label_area_size(62)
        .build_cartesian_2d(Categories(loads.len()), 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_desc(X_DESC)
        .y_desc("cores used (CPU time / wall time)")
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&|v| format!("{v:.1}"))
        .y_max_light_lines(1)
        .label_style(labels.clone())
        .axis_desc_style(desc.clone())
        .draw()?;
    if let Some(ideal) = &ideal {
        for (factor, color) in [(2.0, IDEAL2_COLOR), (1.0, IDEAL_COLOR)] {
            let pts: Vec<(f64, f64)> = ideal.iter().map(|&(l, c)| (xi(l), factor * c)).collect();
            for part in clip_below(&pts, ymax) {
                chart.draw_series(DashedLineSeries::new(part, 7, 5, color.stroke_width(2)))?;
            }
        }
    }
    for s in &series {
        let pts: Vec<(f64, f64)> = s.rows.iter().map(|r| (xi(r.load_pct), r.cores)).collect();
        chart.draw_series(LineSeries::new(pts.clone(), s.color.stroke_width(2)))?;
        draw_markers(chart.plotting_area(), &pts, s.marker, s.color)?;
    }

    // Right: RTT median, log scale, without the 0 % points (no traffic, no RTT).
    let rtts = || rows.iter().map(|r| r.rtt_p50_us).filter(|v| *v > 0.0);
    let (lo, hi) = match (rtts().reduce(f64::min), rtts().reduce(f64::max)) {
        (Some(lo), Some(hi)) => (lo / 1.2, hi * 1.2),
        _ => (1.0, 10.0),
    };
    let (lo, hi, keys, light) = log_axis(lo, hi);
    let mut chart = ChartBuilder::on(&right)
        .caption("RTT median against offered load", caption)
        .margin(12)
        .margin_right(24)
        .x_label_area_size(48)
        .y_label_area_size(62)
        .build_cartesian_2d(
            Categories(loads.len()),
            (lo..hi)
                .log_scale()
                .with_key_points(keys)
                .with_light_points(light),
        )?;
    chart
        .configure_mesh()
        .x_desc(X_DESC)
        .y_desc("RTT median (µs, log scale)")
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&|v| fmt_num(*v))
        .label_style(labels)
        .axis_desc_style(desc)
        .draw()?;
    for s in &series {
        let pts: Vec<(f64, f64)> = s
            .rows
            .iter()
            .filter(|r| r.rtt_p50_us > 0.0)
            .map(|r| (xi(r.load_pct), r.rtt_p50_us))
            .collect();
        chart.draw_series(LineSeries::new(pts.clone(), s.color.stroke_width(2)))?;
        draw_markers(chart.plotting_area(), &pts, s.marker, s.color)?;
    }

    root.present()?;
    Ok(())
}

fn load_font() -> Result<(), String> {
    let bytes = std::fs::read(FONT_PATH).map_err(|e| {
        format!("{FONT_PATH}: {e} (the plot needs a font: apt-get install fonts-dejavu-core)")
    })?;
    // plotters keeps the font for the rest of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FONT, FontStyle::Normal, bytes)
        .map_err(|_| format!("{FONT_PATH}: not a font plotters can read"))
}

pub fn run_plot(a: PlotArgs) -> Result<(), String> {
    let text = std::fs::read_to_string(&a.csv).map_err(|e| format!("{}: {e}", a.csv.display()))?;
    let rows = parse_csv(&text).map_err(|e| format!("{}: {e}", a.csv.display()))?;
    load_font()?;
    draw(&rows, &a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    println!("wrote {}", a.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_parses_and_names_bad_line() {
        let good = "backend,load_pct,offered_pps,achieved_pps,cores,rtt_p50_us,rtt_p99_us\n\
                    dedicated,0,0,0,1.000,0.0,0.0\n\
                    dedicated,100,2460448,2417171,1.000,22.9,58.4\n\
                    \n\
                    compacting,50,1230224,867484,0.484,78.2,173.6\n";
        let rows = parse_csv(good).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].backend, "compacting");
        assert_eq!(rows[2].load_pct, 50.0);
        assert_eq!(rows[2].achieved_pps, 867484.0);
        assert_eq!(rows[2].cores, 0.484);
        assert_eq!(rows[2].rtt_p50_us, 78.2);
        // Columns are found by name, not position.
        let swapped = "cores,backend,rtt_p50_us,load_pct,achieved_pps\n0.5,x,3.5,10,100\n";
        assert_eq!(parse_csv(swapped).unwrap()[0].rtt_p50_us, 3.5);

        let short = "backend,load_pct,offered_pps,achieved_pps,cores,rtt_p50_us,rtt_p99_us\n\
                     dedicated,0,0,0,1.000,0.0,0.0\n\
                     dedicated,1,24604,24602\n";
        let e = parse_csv(short).unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
        let bad = "backend,load_pct,achieved_pps,cores,rtt_p50_us\nd,1,2,x,4\n";
        let e = parse_csv(bad).unwrap_err();
        assert!(e.starts_with("line 2:") && e.contains("cores"), "{e}");
        assert!(parse_csv("backend,load_pct\n").is_err());
    }
}
