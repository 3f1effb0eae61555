//! The report's figures, as SVG (plotters' SVG backend: no system fonts or
//! libraries needed; text is left to the viewer's sans-serif).

use std::path::Path;

use plotters::prelude::*;

use crate::{clients::Front, report::Results};

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

type Drawn = Result<(), String>;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Draws every figure into `dir`.
pub(crate) fn all(r: &Results, dir: &Path) -> Vec<(&'static str, Drawn)> {
    vec![
        (
            "rpc-vs-rest-latency.svg",
            latency(r, &dir.join("rpc-vs-rest-latency.svg")),
        ),
        (
            "rpc-vs-rest-throughput.svg",
            throughput(r, &dir.join("rpc-vs-rest-throughput.svg")),
        ),
        (
            "rpc-vs-rest-bytes.svg",
            bytes(r, &dir.join("rpc-vs-rest-bytes.svg")),
        ),
        (
            "rpc-vs-rest-payload.svg",
            payload(r, &dir.join("rpc-vs-rest-payload.svg")),
        ),
    ]
}

fn levels(r: &Results) -> Vec<usize> {
    let mut v: Vec<usize> = r.load.iter().map(|l| l.concurrency).collect();
    v.dedup();
    v
}

/// p50 and p99 against concurrency, one line per front, log latency axis.
fn latency(r: &Results, path: &Path) -> Drawn {
    let root = SVGBackend::new(path, (1000, 430)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(500);
    let levels = levels(r);
    type Pick = fn(&crate::report::LoadRow) -> f64;
    let panels: [(&DrawingArea<_, _>, &str, Pick); 2] = [
        (&left, "p50 latency, warm connections", |l| l.p50_us),
        (&right, "p99 latency, warm connections", |l| l.p99_us),
    ];
    for (area, title, pick) in panels {
        let values: Vec<f64> = r.load.iter().map(pick).collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min) * 0.7;
        let hi = values.iter().copied().fold(0.0, f64::max) * 1.5;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                -0.3f64..(levels.len() as f64 - 0.7),
                (lo.max(1.0)..hi).log_scale(),
            )
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(levels.len() + 1)
            .x_label_formatter(&|x| {
                let k = x.round();
                if (x - k).abs() < 1e-6 && k >= 0.0 {
                    levels
                        .get(k as usize)
                        .map_or_else(String::new, |c| c.to_string())
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .x_desc("concurrent callers")
            .y_desc("µs (log scale)")
            .draw()
            .map_err(err)?;
        for (i, front) in Front::ALL.iter().enumerate() {
            let points: Vec<(f64, f64)> = r
                .load
                .iter()
                .filter(|l| l.front == front.key())
                .enumerate()
                .map(|(k, l)| (k as f64, pick(l)))
                .collect();
            let color = COLORS[i];
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(front.label())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)
}

/// Bars: one group per x position, one bar per series.
fn grouped_bars(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    groups: &[String],
    series: &[(&str, Vec<f64>)],
) -> Drawn {
    let hi = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0, f64::max)
        * 1.25;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(groups.len() as f64 - 0.5), 0f64..hi.max(1.0))
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len() + 1)
        .x_label_formatter(&|x| {
            let k = x.round();
            if (x - k).abs() < 1e-6 && k >= 0.0 {
                groups.get(k as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    let width = 0.8 / series.len() as f64;
    for (i, (name, values)) in series.iter().enumerate() {
        let color = COLORS[i];
        let offset = -0.4 + width * i as f64;
        chart
            .draw_series(values.iter().enumerate().map(|(k, v)| {
                let x0 = k as f64 + offset;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.9, *v)], color.filled())
            }))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
        chart
            .draw_series(values.iter().enumerate().map(|(k, v)| {
                let x = k as f64 + offset + width * 0.45;
                Text::new(
                    format_number(*v),
                    (x, *v),
                    ("sans-serif", 11).into_font().color(&BLACK).pos(
                        plotters::style::text_anchor::Pos::new(
                            plotters::style::text_anchor::HPos::Center,
                            plotters::style::text_anchor::VPos::Bottom,
                        ),
                    ),
                )
            }))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    Ok(())
}

fn format_number(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else {
        format!("{v:.0}")
    }
}

fn per_front<T>(
    rows: &[T],
    front: &Front,
    key: impl Fn(&T) -> &str,
    value: impl Fn(&T) -> f64,
) -> Vec<f64> {
    rows.iter()
        .filter(|r| key(r) == front.key())
        .map(value)
        .collect()
}

/// Throughput per concurrency, one bar per front.
fn throughput(r: &Results, path: &Path) -> Drawn {
    let root = SVGBackend::new(path, (800, 430)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let groups: Vec<String> = levels(r).iter().map(|c| format!("{c} callers")).collect();
    let series: Vec<(&str, Vec<f64>)> = Front::ALL
        .iter()
        .map(|f| {
            (
                f.label(),
                per_front(&r.load, f, |l| l.front, |l| l.throughput_per_s),
            )
        })
        .collect();
    grouped_bars(
        &root,
        "Throughput, warm connections (higher is better)",
        "calls/s",
        &groups,
        &series,
    )?;
    root.present().map_err(err)
}

/// Wire bytes per call: warm (one caller) and cold, each way.
fn bytes(r: &Results, path: &Path) -> Drawn {
    let root = SVGBackend::new(path, (800, 430)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let groups = vec![
        "warm: request".to_owned(),
        "warm: response".to_owned(),
        "cold: request".to_owned(),
        "cold: response".to_owned(),
    ];
    let first = r.load.first().map_or(1, |l| l.concurrency);
    let series: Vec<(&str, Vec<f64>)> = Front::ALL
        .iter()
        .map(|f| {
            let warm = r
                .load
                .iter()
                .find(|l| l.front == f.key() && l.concurrency == first);
            let cold = r.cold.iter().find(|c| c.front == f.key());
            (
                f.label(),
                vec![
                    warm.map_or(0.0, |w| w.request_bytes_per_call),
                    warm.map_or(0.0, |w| w.response_bytes_per_call),
                    cold.map_or(0.0, |c| c.request_bytes_per_call),
                    cold.map_or(0.0, |c| c.response_bytes_per_call),
                ],
            )
        })
        .collect();
    grouped_bars(
        &root,
        &format!(
            "Bytes on the wire per Add call, headers and framing included (warm: {first} caller)"
        ),
        "bytes",
        &groups,
        &series,
    )?;
    root.present().map_err(err)
}

/// The encoding sweep: size ratio and CPU time against N.
fn payload(r: &Results, path: &Path) -> Drawn {
    let root = SVGBackend::new(path, (1000, 430)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(500);
    let n_max = r.encoding.iter().map(|e| e.n).max().unwrap_or(1) as f64;
    let kinds = ["small_integers", "full_doubles"];

    let ratio_hi = r
        .encoding
        .iter()
        .map(|e| e.json_bytes as f64 / e.proto_bytes.max(1) as f64)
        .fold(0.0, f64::max)
        * 1.2;
    let mut chart = ChartBuilder::on(&left)
        .caption("Size: JSON ÷ protobuf", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((0.8f64..n_max * 1.5).log_scale(), 0f64..ratio_hi.max(2.0))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("operands per message (log scale)")
        .y_desc("× protobuf size")
        .draw()
        .map_err(err)?;
    for (i, kind) in kinds.iter().enumerate() {
        let points: Vec<(f64, f64)> = r
            .encoding
            .iter()
            .filter(|e| e.values == *kind)
            .map(|e| {
                (
                    e.n as f64,
                    e.json_bytes as f64 / e.proto_bytes.max(1) as f64,
                )
            })
            .collect();
        let color = COLORS[i];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(kind.replace('_', " "))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(err)?;
    }
    chart
        .draw_series(LineSeries::new(
            vec![(0.8, 1.0), (n_max * 1.5, 1.0)],
            BLACK.mix(0.4),
        ))
        .map_err(err)?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;

    let times: Vec<f64> = r
        .encoding
        .iter()
        .flat_map(|e| {
            [
                (e.proto_encode_ns + e.proto_decode_ns) / 1000.0,
                (e.json_encode_ns + e.json_decode_ns) / 1000.0,
            ]
        })
        .collect();
    let lo = times.iter().copied().fold(f64::INFINITY, f64::min) * 0.5;
    let hi = times.iter().copied().fold(0.0, f64::max) * 2.0;
    let mut chart = ChartBuilder::on(&right)
        .caption("CPU: encode + decode one message", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (0.8f64..n_max * 1.5).log_scale(),
            (lo.max(0.001)..hi).log_scale(),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y}"))
        .x_desc("operands per message (log scale)")
        .y_desc("µs (log scale)")
        .draw()
        .map_err(err)?;
    let mut color_index = 0;
    for kind in kinds {
        for (encoding, pick) in [
            (
                "protobuf",
                (|e: &crate::encoding::Row| e.proto_encode_ns + e.proto_decode_ns)
                    as fn(&crate::encoding::Row) -> f64,
            ),
            ("JSON", |e: &crate::encoding::Row| {
                e.json_encode_ns + e.json_decode_ns
            }),
        ] {
            let points: Vec<(f64, f64)> = r
                .encoding
                .iter()
                .filter(|e| e.values == kind)
                .map(|e| (e.n as f64, pick(e) / 1000.0))
                .collect();
            let color = COLORS[color_index % COLORS.len()];
            color_index += 1;
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(err)?
                .label(format!("{encoding}, {}", kind.replace('_', " ")))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}
