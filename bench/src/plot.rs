//! Charts (plotters): latency by percentile, sweeps, and latency and throughput per second. SVG
//! or PNG, chosen by file extension.
//!
//! The percentile chart is HdrHistogram's: the x axis is `1/(1-percentile)` on a log scale, so
//! 90%, 99%, 99.9%, ... are evenly spaced and the tail gets the room. The y axis is log too, so
//! microsecond medians and second-long stalls are both readable on one chart.

use plotters::coord::Shift;
use plotters::prelude::*;
use std::error::Error;
use std::path::Path;

/// One line on the percentile chart.
pub struct PercentileSeries {
    pub label: String,
    /// (percentile in percent, value in microseconds), ascending, 100% excluded.
    pub points: Vec<(f64, f64)>,
    /// Drawn dashed (service time next to corrected latency).
    pub dashed: bool,
    /// Index into the palette; a target's latency and service lines share it.
    pub color: usize,
}

/// One line on a sweep chart: a target's (parameter value, throughput, p99 µs) points.
pub struct SweepSeries {
    pub label: String,
    pub points: Vec<(f64, f64, f64)>,
}

/// One run on the timeline chart: a point per second of measured time, for each repetition.
/// Repetitions are drawn end to end, each with its own lines.
pub struct TimelineSeries {
    pub label: String,
    pub repetitions: Vec<Vec<TimelinePoint>>,
}

impl TimelineSeries {
    fn points(&self) -> impl Iterator<Item = &TimelinePoint> {
        self.repetitions.iter().flatten()
    }

    /// Where each repetition after the first starts.
    fn boundaries(&self) -> impl Iterator<Item = f64> + '_ {
        self.repetitions
            .iter()
            .skip(1)
            .filter_map(|points| points.first())
            .map(|point| point.x - 0.5)
    }
}

/// One second of a run.
pub struct TimelinePoint {
    /// The middle of the second, in seconds.
    pub x: f64,
    /// Replies in that second.
    pub throughput: f64,
    /// Latencies in microseconds; `None` in a second without replies.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 720;

fn palette(index: usize) -> RGBColor {
    const COLORS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
    ];
    COLORS[index % COLORS.len()]
}

/// Draws with `$draw(&root)` on an SVG or PNG backend of `$size`, as `$path`'s extension says.
/// (A macro: the drawing functions are generic over the backend, which a closure cannot be.)
macro_rules! render {
    ($path:expr, $size:expr, $draw:ident($($arg:expr),*)) => {{
        match extension($path)?.as_str() {
            "svg" => {
                let root = SVGBackend::new($path, $size).into_drawing_area();
                $draw(&root, $($arg),*)?;
                root.present()?;
            }
            _ => {
                let root = BitMapBackend::new($path, $size).into_drawing_area();
                $draw(&root, $($arg),*)?;
                root.present()?;
            }
        }
        Ok(())
    }};
}

/// Writes the latency-by-percentile chart.
pub fn percentile_chart(
    path: &Path,
    title: &str,
    subtitle: &str,
    series: &[PercentileSeries],
) -> Result<(), Box<dyn Error>> {
    render!(
        path,
        (WIDTH, HEIGHT),
        draw_percentiles(title, subtitle, series)
    )
}

/// Writes the sweep chart: throughput and p99 latency against the swept parameter.
pub fn sweep_chart(
    path: &Path,
    title: &str,
    parameter: &str,
    series: &[SweepSeries],
) -> Result<(), Box<dyn Error>> {
    render!(
        path,
        (WIDTH, HEIGHT / 3 * 2),
        draw_sweep(title, parameter, series)
    )
}

/// Writes the timeline chart: latency per second above (log scale), throughput below.
pub fn timeline_chart(
    path: &Path,
    title: &str,
    subtitle: &str,
    series: &[TimelineSeries],
) -> Result<(), Box<dyn Error>> {
    render!(
        path,
        (WIDTH, HEIGHT),
        draw_timeline(title, subtitle, series)
    )
}

/// Fails unless `path` ends in `.svg` or `.png`.
pub fn check_extension(path: &Path) -> Result<(), String> {
    extension(path).map(|_| ()).map_err(|e| e.to_string())
}

fn extension(path: &Path) -> Result<String, Box<dyn Error>> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match extension.as_str() {
        "svg" | "png" => Ok(extension),
        _ => Err(format!(
            "{}: charts are written as .svg or .png, by extension",
            path.display()
        )
        .into()),
    }
}

/// `1/(1-p)` for percentile `p` in percent.
fn inverse_tail(percentile: f64) -> f64 {
    1.0 / (1.0 - percentile / 100.0)
}

/// The percentile label of an x position, for powers of ten only (others get no label).
fn percentile_label(x: f64) -> String {
    let decade = x.log10();
    if (decade - decade.round()).abs() > 1e-6 {
        return String::new();
    }
    let nines = decade.round() as i32;
    match nines {
        0 => "0%".into(),
        1 => "90%".into(),
        n => format!("{:.*}%", (n - 2).max(0) as usize, 100.0 - 100.0 / x),
    }
}

/// A duration in microseconds, in the unit that reads best.
fn duration_label(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{} s", trim(us / 1_000_000.0))
    } else if us >= 1000.0 {
        format!("{} ms", trim(us / 1000.0))
    } else {
        format!("{} µs", trim(us))
    }
}

fn trim(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Fills `root` white, writes the title and subtitle at the top, and returns the rest.
fn titled<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    subtitle: &str,
) -> Result<DrawingArea<DB, Shift>, Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(70);
    header.draw(&Text::new(
        title.to_string(),
        (20, 12),
        ("sans-serif", 24).into_font(),
    ))?;
    header.draw(&Text::new(
        subtitle.to_string(),
        (20, 44),
        ("sans-serif", 15).into_font().color(&RGBColor(90, 90, 90)),
    ))?;
    Ok(body)
}

/// A log axis from the decade below `min` to the decade above `max`, with some room.
fn log_bounds(min: f64, max: f64) -> (f64, f64) {
    let (min, max) = if max <= 0.0 {
        (1.0, 1000.0)
    } else {
        (min, max)
    };
    (
        10_f64.powf((min.max(0.01) * 0.8).log10().floor()),
        10_f64.powf((max * 1.25).log10().ceil()),
    )
}

fn draw_percentiles<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    subtitle: &str,
    series: &[PercentileSeries],
) -> Result<(), Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    let body = titled(root, title, subtitle)?;
    let max_x = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(p, _)| inverse_tail(p)))
        .fold(100.0_f64, f64::max);
    let max_x = 10_f64.powf((max_x.log10() - 1e-3).ceil());
    let (mut min_y, mut max_y) = (f64::MAX, 0.0_f64);
    for &(_, y) in series.iter().flat_map(|s| s.points.iter()) {
        min_y = min_y.min(y);
        max_y = max_y.max(y);
    }
    let (min_y, max_y) = log_bounds(min_y, max_y);
    let mut chart = ChartBuilder::on(&body)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d((1.0..max_x).log_scale(), (min_y..max_y).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency")
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| duration_label(*y))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for line in series {
        let color = palette(line.color);
        let points: Vec<(f64, f64)> = line
            .points
            .iter()
            .map(|&(p, y)| (inverse_tail(p), y.max(min_y)))
            .collect();
        let style = color.stroke_width(2);
        let drawn = if line.dashed {
            chart.draw_series(DashedLineSeries::new(points, 8, 5, style))?
        } else {
            chart.draw_series(LineSeries::new(points, style))?
        };
        let dashed = line.dashed;
        drawn.label(line.label.clone()).legend(move |(x, y)| {
            // Three segments, with gaps when the line is dashed.
            let gap = if dashed { 4 } else { 0 };
            let style = color.stroke_width(2);
            EmptyElement::at((x, y))
                + PathElement::new(vec![(0, 0), (8, 0)], style)
                + PathElement::new(vec![(8 + gap, 0), (16, 0)], style)
                + PathElement::new(vec![(16 + gap, 0), (26, 0)], style)
        });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .draw()?;
    Ok(())
}

/// The latency metrics of the timeline, each with its line: (name, value, width, dashed).
type TimelineMetric = (&'static str, fn(&TimelinePoint) -> Option<f64>, u32, bool);

const TIMELINE_METRICS: [TimelineMetric; 3] = [
    ("p50", |p| p.p50, 1, false),
    ("p99", |p| p.p99, 2, false),
    ("max", |p| p.max, 1, true),
];

/// The runs of consecutive `Some` points: a second without replies breaks the line, so a stall
/// shows as a gap instead of a slope drawn across it.
fn segments(points: impl Iterator<Item = Option<(f64, f64)>>) -> Vec<Vec<(f64, f64)>> {
    let mut segments: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut open = false;
    for point in points {
        match point {
            Some(point) if open => segments.last_mut().expect("open segment").push(point),
            Some(point) => {
                segments.push(vec![point]);
                open = true;
            }
            None => open = false,
        }
    }
    segments
}

fn draw_timeline<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    subtitle: &str,
    series: &[TimelineSeries],
) -> Result<(), Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    let body = titled(root, title, subtitle)?;
    let (upper, lower) = body.split_vertically(body.dim_in_pixel().1 * 3 / 5);
    let points = || series.iter().flat_map(TimelineSeries::points);
    let max_x = points().map(|p| p.x + 0.5).fold(1.0, f64::max);
    let (mut min_y, mut max_y) = (f64::MAX, 0.0_f64);
    for y in points().flat_map(|p| [p.p50, p.p99, p.max]).flatten() {
        min_y = min_y.min(y);
        max_y = max_y.max(y);
    }
    let (min_y, max_y) = log_bounds(min_y, max_y);
    let max_rps = points().map(|p| p.throughput).fold(1.0, f64::max) * 1.15;
    let repeated = series.iter().any(|s| s.repetitions.len() > 1);
    let x_desc = if repeated {
        "seconds of measured time (repetitions end to end, dotted lines between them)"
    } else {
        "seconds of measured time"
    };
    let boundary_style = RGBColor(150, 150, 150).stroke_width(1);

    let mut latency = ChartBuilder::on(&upper)
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(90)
        .build_cartesian_2d(0.0..max_x, (min_y..max_y).log_scale())?;
    latency
        .configure_mesh()
        .y_desc("latency per second")
        .x_label_formatter(&|x| trim(*x))
        .y_label_formatter(&|y| duration_label(*y))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for (index, line) in series.iter().enumerate() {
        let color = palette(index);
        for boundary in line.boundaries() {
            latency.draw_series(DashedLineSeries::new(
                [(boundary, min_y), (boundary, max_y)],
                2,
                4,
                boundary_style,
            ))?;
        }
        for (metric, value, width, dashed) in TIMELINE_METRICS {
            let style = color.stroke_width(width);
            let parts = line
                .repetitions
                .iter()
                .flat_map(|points| segments(points.iter().map(|p| value(p).map(|y| (p.x, y)))));
            for (number, part) in parts.enumerate() {
                // A lone second between gaps has no line to draw: mark it.
                let dot = (part.len() == 1).then(|| Circle::new(part[0], 2, color.filled()));
                latency.draw_series(dot)?;
                let drawn = if dashed {
                    latency.draw_series(DashedLineSeries::new(part, 6, 4, style))?
                } else {
                    latency.draw_series(LineSeries::new(part, style))?
                };
                if number == 0 {
                    drawn
                        .label(format!("{} {metric}", line.label))
                        .legend(move |(x, y)| {
                            let gap = if dashed { 4 } else { 0 };
                            EmptyElement::at((x, y))
                                + PathElement::new(vec![(0, 0), (8, 0)], style)
                                + PathElement::new(vec![(8 + gap, 0), (16, 0)], style)
                                + PathElement::new(vec![(16 + gap, 0), (26, 0)], style)
                        });
                }
            }
        }
    }
    latency
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .draw()?;

    let mut rate = ChartBuilder::on(&lower)
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(90)
        .build_cartesian_2d(0.0..max_x, 0.0..max_rps)?;
    rate.configure_mesh()
        .x_desc(x_desc)
        .y_desc("replies per second")
        .x_label_formatter(&|x| trim(*x))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for (index, line) in series.iter().enumerate() {
        let color = palette(index);
        for boundary in line.boundaries() {
            rate.draw_series(DashedLineSeries::new(
                [(boundary, 0.0), (boundary, max_rps)],
                2,
                4,
                boundary_style,
            ))?;
        }
        for (number, repetition) in line.repetitions.iter().enumerate() {
            let points: Vec<(f64, f64)> = repetition.iter().map(|p| (p.x, p.throughput)).collect();
            rate.draw_series(points.iter().map(|&p| Circle::new(p, 2, color.filled())))?;
            let drawn = rate.draw_series(LineSeries::new(points, color.stroke_width(2)))?;
            if number == 0 {
                drawn.label(line.label.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
                });
            }
        }
    }
    rate.configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .draw()?;
    Ok(())
}

fn draw_sweep<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    parameter: &str,
    series: &[SweepSeries],
) -> Result<(), Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(50);
    header.draw(&Text::new(
        title.to_string(),
        (20, 12),
        ("sans-serif", 24).into_font(),
    ))?;
    let (left, right) = body.split_horizontally(WIDTH / 2);
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    let min_x = xs.iter().copied().fold(f64::MAX, f64::min).max(1e-9);
    let max_x = xs.iter().copied().fold(0.0, f64::max).max(min_x * 1.01);
    let max_rps = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let (mut min_p99, mut max_p99) = (f64::MAX, 0.0_f64);
    for p in series.iter().flat_map(|s| s.points.iter()) {
        min_p99 = min_p99.min(p.2);
        max_p99 = max_p99.max(p.2);
    }
    let min_p99 = 10_f64.powf((min_p99.max(0.01) * 0.8).log10().floor());
    let max_p99 = 10_f64.powf((max_p99.max(1.0) * 1.25).log10().ceil());
    let logarithmic = max_x / min_x >= 10.0;
    let x_label = |x: &f64| trim(*x);

    macro_rules! panel {
        ($area:expr, $y_range:expr, $y_desc:expr, $y_format:expr, $pick:expr) => {{
            let mut builder = ChartBuilder::on($area);
            builder
                .margin(20)
                .x_label_area_size(45)
                .y_label_area_size(90);
            if logarithmic {
                let mut chart = builder
                    .build_cartesian_2d((min_x * 0.8..max_x * 1.25).log_scale(), $y_range)?;
                chart
                    .configure_mesh()
                    .x_desc(parameter)
                    .y_desc($y_desc)
                    .x_label_formatter(&x_label)
                    .y_label_formatter(&$y_format)
                    .label_style(("sans-serif", 14))
                    .axis_desc_style(("sans-serif", 16))
                    .light_line_style(RGBColor(235, 235, 235))
                    .draw()?;
                draw_sweep_lines(&mut chart, series, $pick)?;
            } else {
                let span = (max_x - min_x).max(1.0);
                let mut chart = builder
                    .build_cartesian_2d((min_x - span * 0.05)..(max_x + span * 0.05), $y_range)?;
                chart
                    .configure_mesh()
                    .x_desc(parameter)
                    .y_desc($y_desc)
                    .x_label_formatter(&x_label)
                    .y_label_formatter(&$y_format)
                    .label_style(("sans-serif", 14))
                    .axis_desc_style(("sans-serif", 16))
                    .light_line_style(RGBColor(235, 235, 235))
                    .draw()?;
                draw_sweep_lines(&mut chart, series, $pick)?;
            }
        }};
    }
    panel!(
        &left,
        0.0..max_rps * 1.15,
        "throughput (req/s)",
        |y: &f64| format!("{y:.0}"),
        |p: &(f64, f64, f64)| p.1
    );
    panel!(
        &right,
        (min_p99..max_p99).log_scale(),
        "p99 latency",
        |y: &f64| duration_label(*y),
        |p: &(f64, f64, f64)| p.2
    );
    Ok(())
}

fn draw_sweep_lines<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    series: &[SweepSeries],
    pick: impl Fn(&(f64, f64, f64)) -> f64,
) -> Result<(), Box<dyn Error>>
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (index, line) in series.iter().enumerate() {
        let color = palette(index);
        let points: Vec<(f64, f64)> = line.points.iter().map(|p| (p.0, pick(p))).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(line.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|point| Circle::new(point, 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(100000.0), "99.999%");
        assert_eq!(percentile_label(20.0), "");
        assert_eq!(duration_label(95.0), "95 µs");
        assert_eq!(duration_label(1500.0), "1.5 ms");
        assert_eq!(duration_label(2_000_000.0), "2 s");
    }

    #[test]
    fn gaps_split_lines() {
        let points = [
            Some(1.0),
            Some(2.0),
            None,
            None,
            Some(5.0),
            None,
            Some(7.0),
            Some(8.0),
        ];
        let parts = segments(
            points
                .iter()
                .enumerate()
                .map(|(x, y)| y.map(|y| (x as f64, y))),
        );
        assert_eq!(
            parts,
            vec![
                vec![(0.0, 1.0), (1.0, 2.0)],
                vec![(4.0, 5.0)],
                vec![(6.0, 7.0), (7.0, 8.0)]
            ]
        );
    }

    #[test]
    fn timeline_chart_draws_a_stall() {
        let second = |x: f64, stalled: bool, slow: bool| TimelinePoint {
            x,
            throughput: if stalled { 0.0 } else { 1000.0 },
            p50: (!stalled).then_some(80.0),
            p99: (!stalled).then_some(if slow { 900_000.0 } else { 200.0 }),
            max: (!stalled).then_some(if slow { 1_000_000.0 } else { 400.0 }),
        };
        let series = [TimelineSeries {
            label: "ringport".into(),
            repetitions: vec![
                vec![
                    second(0.5, false, false),
                    second(1.5, true, false),
                    second(2.5, false, true),
                ],
                vec![second(3.5, false, false), second(4.5, false, false)],
            ],
        }];
        assert_eq!(series[0].boundaries().collect::<Vec<_>>(), vec![3.0]);
        let path = std::env::temp_dir().join(format!(
            "ringport-bench-timeline-{}.svg",
            std::process::id()
        ));
        timeline_chart(&path, "Latency and throughput per second", "test", &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.contains("Latency and throughput per second"));
        assert!(svg.contains("ringport p99") && svg.contains("replies per second"));
    }
}
