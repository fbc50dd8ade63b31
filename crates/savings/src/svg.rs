//! The study's grouped bar chart (per method: closure size and downloaded size) as a
//! self-contained SVG, written by hand: no font or plotting library needed to produce it.

use std::fmt::Write as _;

use crate::measure::Report;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 190.0;

/// An SVG grouped bar chart of `report`, with `title` on top.
pub fn plot(report: &Report, title: &str) -> String {
    let max = report
        .rows
        .iter()
        .map(|r| r.closure)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let step = nice_step(max / 5.0);
    let top_value = (max / step).ceil() * step;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let y = |v: f64| TOP + plot_h * (1.0 - v / top_value);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    let mut tick = 0.0;
    while tick <= top_value + step / 2.0 {
        let ty = y(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{ty:.1}" y2="{ty:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            ty + 4.0,
            mb(tick)
        );
        tick += step;
    }
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">MB (10^6 bytes)</text>"#,
        TOP + plot_h / 2.0
    );
    let group = plot_w / report.rows.len().max(1) as f64;
    let bar = group * 0.36;
    for (i, row) in report.rows.iter().enumerate() {
        let x0 = LEFT + group * i as f64 + group * 0.14;
        for (j, (what, value, color)) in [
            ("closure", row.closure, "#9ecae1"),
            ("downloaded", row.downloaded, "#08519c"),
        ]
        .into_iter()
        .enumerate()
        {
            let x = x0 + bar * j as f64;
            let top = y(value as f64);
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{top:.1}" width="{bar:.1}" height="{:.1}" fill="{color}"><title>{} {what}: {value} bytes</title></rect>"#,
                TOP + plot_h - top,
                escape(&row.method),
            );
        }
        if let Some(p) = row.savings_percent {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{p:.1}%</text>"#,
                x0 + bar * 1.5,
                y(row.downloaded as f64) - 4.0
            );
        }
        let lx = x0 + bar;
        let ly = TOP + plot_h + 12.0;
        let _ = writeln!(
            s,
            r#"<text transform="translate({lx:.1} {ly:.1}) rotate(-40)" text-anchor="end">{}</text>"#,
            escape(&row.method)
        );
    }
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="black"/>"#,
        WIDTH - RIGHT,
        TOP + plot_h,
        TOP + plot_h
    );
    for (k, (label, color)) in [
        ("closure size", "#9ecae1"),
        ("downloaded (percent: saved vs baseline)", "#08519c"),
    ]
    .into_iter()
    .enumerate()
    {
        // Above the plot area, where no bar can reach.
        let lx = LEFT + 320.0 * k as f64;
        let ly = 36.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{ly}" width="12" height="12" fill="{color}"/><text x="{}" y="{}">{label}</text>"#,
            lx + 18.0,
            ly + 10.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.max(1.0).log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

fn mb(bytes: f64) -> String {
    let v = bytes / 1e6;
    if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::{Row, Side};

    #[test]
    fn steps_are_round_and_large_enough() {
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(120_000.0), 200_000.0);
        assert_eq!(nice_step(1_000_000.0), 1_000_000.0);
    }

    #[test]
    fn plot_has_two_bars_per_method_and_escapes_text() {
        let side = Side {
            source: "s".into(),
            paths: 1,
            nar_bytes: 10,
        };
        let row = |method: &str, closure, downloaded| Row {
            method: method.into(),
            closure,
            downloaded,
            reused: closure - downloaded,
            closure_units: 1,
            downloaded_units: 1,
            savings_percent: Some(0.0),
        };
        let report = crate::measure::Report {
            old: side.clone(),
            new: side,
            baseline: "a".into(),
            rows: vec![row("a<b", 100, 50), row("c", 80, 0)],
        };
        let svg = plot(&report, "t & u");
        assert_eq!(svg.matches("<title>").count(), 4);
        assert!(svg.contains("a&lt;b") && svg.contains("t &amp; u"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
