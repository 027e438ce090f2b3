//! The results as a picture, `bench/results.svg`: the Envoy CPU each variant adds per request
//! (a bar to the median, a whisker from min to max over repetitions), bare Envoy (zero added)
//! and the pass-through floor (the empty module's median) marked. Drawn from the same rows as
//! the table of `bench/results.md`, or read back from that table (`bench --chart-from`), so the
//! committed chart is the committed table's (the test below).

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::Spread;

/// The variant whose median is the floor of any wasm filter.
const FLOOR: &str = "passthrough";

/// The table column the chart shows (`report::main_table`'s header).
const ADDED_COLUMN: &str = "added µs/req: median [min, max]";

/// One bar: a variant's label as the table writes it and its added µs per request.
#[derive(Debug, Clone)]
pub struct Bar {
    pub label: String,
    pub added: Spread,
}

/// The bars of a results file: its first table with the variant and added-CPU columns.
pub fn bars_from_results(markdown: &str) -> Result<Vec<Bar>, String> {
    let cells = |line: &str| -> Vec<String> {
        line.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect()
    };
    let mut lines = markdown
        .lines()
        .skip_while(|l| !l.starts_with("| variant |"));
    let header = cells(lines.next().ok_or("no table starting `| variant |`")?);
    let added = header
        .iter()
        .position(|c| c == ADDED_COLUMN)
        .ok_or_else(|| format!("the table has no column `{ADDED_COLUMN}`"))?;
    let mut bars = Vec::new();
    for line in lines.skip(1).take_while(|l| l.starts_with('|')) {
        let row = cells(line);
        let (Some(label), Some(cell)) = (row.first(), row.get(added)) else {
            return Err(format!("a row without column {added}: {line}"));
        };
        bars.push(Bar {
            label: label.clone(),
            added: spread_cell(cell).ok_or_else(|| format!("not `median [min, max]`: {cell}"))?,
        });
    }
    if bars.is_empty() {
        return Err("the table has no rows".to_owned());
    }
    Ok(bars)
}

/// `+25.9 [+14.7, +30.3] ⚠` → median 25.9, min 14.7, max 30.3.
fn spread_cell(cell: &str) -> Option<Spread> {
    let (median, rest) = cell.split_once(" [")?;
    let (range, _) = rest.split_once(']')?;
    let (min, max) = range.split_once(", ")?;
    let number = |s: &str| s.trim().parse::<f64>().ok();
    Some(Spread {
        min: number(min)?,
        median: number(median)?,
        max: number(max)?,
    })
}

/// The chart as SVG text.
pub fn svg(bars: &[Bar]) -> Result<String, String> {
    let n = bars.len();
    let lowest = bars.iter().map(|b| b.added.min).fold(0.0, f64::min);
    let highest = bars.iter().map(|b| b.added.max).fold(0.0, f64::max);
    let pad = (highest - lowest) * 0.04;
    let x = (lowest - pad)..(highest + pad);
    let floor = bars
        .iter()
        .find(|b| b.label == FLOOR)
        .map(|b| b.added.median);
    let height = 136 + 26 * u32::try_from(n).map_err(|e| e.to_string())?;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (960, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let count = i32::try_from(n).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Envoy CPU added per request, µs (median; whisker: min to max over repetitions)",
                ("sans-serif", 17),
            )
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(230)
            .build_cartesian_2d(x, (0..count + 1).into_segmented())
            .map_err(|e| e.to_string())?;
        let labels: Vec<&str> = bars.iter().map(|b| b.label.as_str()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n + 2)
            // Row `i` from the bottom is the table's row `count - 1 - i`: the table reads top
            // down. The two segments above them hold the marks' names.
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => usize::try_from(count - 1 - *i)
                    .ok()
                    .and_then(|i| labels.get(i))
                    .map_or_else(String::new, |l| (*l).to_owned()),
                _ => String::new(),
            })
            .x_desc("added Envoy CPU per request (µs) over a bare listener")
            .draw()
            .map_err(|e| e.to_string())?;
        let ours = RGBColor(54, 105, 168);
        let baseline = RGBColor(160, 180, 205);
        // Rows are drawn top down, in the table's order.
        for (bar, row) in bars.iter().zip((0..count).rev()) {
            let fill = if bar.label.contains('@') {
                baseline
            } else {
                ours
            };
            let mut rect = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(row)),
                    (bar.added.median, SegmentValue::Exact(row + 1)),
                ],
                fill.filled(),
            );
            rect.set_margin(5, 5, 0, 0);
            chart.draw_series([rect]).map_err(|e| e.to_string())?;
            chart
                .draw_series([ErrorBar::new_horizontal(
                    SegmentValue::CenterOf(row),
                    bar.added.min,
                    bar.added.median,
                    bar.added.max,
                    BLACK.stroke_width(1),
                    8,
                )])
                .map_err(|e| e.to_string())?;
        }
        let mut mark =
            |value: f64, color: RGBColor, text: String, row: i32| -> Result<(), String> {
                chart
                    .draw_series([PathElement::new(
                        [(value, SegmentValue::Exact(0)), (value, SegmentValue::Last)],
                        color.stroke_width(2),
                    )])
                    .map_err(|e| e.to_string())?;
                chart
                    .draw_series([Text::new(
                        text,
                        (value, SegmentValue::CenterOf(row)),
                        ("sans-serif", 13)
                            .into_font()
                            .color(&color)
                            .pos(Pos::new(HPos::Left, VPos::Center)),
                    )])
                    .map_err(|e| e.to_string())?;
                Ok(())
            };
        mark(
            0.0,
            RGBColor(90, 90, 90),
            " bare Envoy".to_owned(),
            count + 1,
        )?;
        if let Some(floor) = floor {
            mark(
                floor,
                RGBColor(200, 80, 40),
                format!(" pass-through floor: {floor:+.1} µs"),
                count,
            )?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "# Benchmark results\n\n## Results\n\n\
        | variant | what | req/s | added µs/req: median [min, max] | module KB |\n\
        | --- | --- | ---: | ---: | ---: |\n\
        | bare | no filter | 8581 | -3.1 [-11.1, +22.2] ⚠ | – |\n\
        | passthrough | empty | 6802 | +25.9 [+14.7, +30.3] | 66.3 |\n\
        | traceid @1fe5f52 | trace | 6837 | +47.6 [+36.9, +61.3] ⚠ | 90.1 |\n\
        \n| variant | other table |\n| --- | --- |\n| x | y |\n";

    #[test]
    fn bars_are_read_from_the_first_results_table() {
        let bars = bars_from_results(TABLE).unwrap();
        let read: Vec<(&str, f64, f64, f64)> = bars
            .iter()
            .map(|b| (b.label.as_str(), b.added.min, b.added.median, b.added.max))
            .collect();
        assert_eq!(
            read,
            [
                ("bare", -11.1, -3.1, 22.2),
                ("passthrough", 14.7, 25.9, 30.3),
                ("traceid @1fe5f52", 36.9, 47.6, 61.3)
            ]
        );
        assert!(bars_from_results("no table").is_err());
        assert!(bars_from_results("| variant | what |\n| --- | --- |\n| a | b |\n").is_err());
        assert!(spread_cell("+1.0 [2.0]").is_none());
    }

    #[test]
    fn the_chart_names_every_variant_and_marks_bare_and_the_floor() {
        let svg = svg(&bars_from_results(TABLE).unwrap()).unwrap();
        for text in ["bare", "passthrough", "traceid @1fe5f52", "bare Envoy"] {
            assert!(svg.contains(text), "{text}");
        }
        assert!(svg.contains("pass-through floor: +25.9 µs"));
        assert!(svg.starts_with("<svg"));
    }

    /// The committed chart is the committed table's: `bench --chart-from bench/results.md`
    /// rewrites it.
    #[test]
    fn the_committed_chart_is_drawn_from_the_committed_results() {
        let root = mesh_integration::envoy::repo_root();
        let table = std::fs::read_to_string(root.join("bench/results.md")).unwrap();
        let committed = std::fs::read_to_string(root.join("bench/results.svg")).unwrap_or_default();
        let drawn = svg(&bars_from_results(&table).unwrap()).unwrap();
        assert!(
            committed == drawn,
            "bench/results.svg is not what bench/results.md draws: run \
             `cargo run -p mesh-integration --bin bench -- --chart-from bench/results.md`"
        );
    }
}
