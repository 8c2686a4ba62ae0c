//! Server-rendered SVG charts: readable without JavaScript, with axes, labels and units. Every
//! label is escaped (maud), and each bar carries its raw value in `data-value`.

use maud::{html, Markup};

/// A bar chart of `(label, value)` points, e.g. requests per day. `unit` names the y axis.
pub fn bars(id: &str, title: &str, unit: &str, points: &[(String, u64)]) -> Markup {
    const W: f64 = 640.0;
    const H: f64 = 220.0;
    const LEFT: f64 = 48.0;
    const BOTTOM: f64 = 28.0;
    const TOP: f64 = 26.0;
    let max = points.iter().map(|p| p.1).max().unwrap_or(0);
    let top = nice_max(max);
    let plot_h = H - BOTTOM - TOP;
    let plot_w = W - LEFT - 8.0;
    let n = points.len().max(1) as f64;
    let slot = plot_w / n;
    let bar_w = (slot * 0.7).max(1.0);
    let ticks: Vec<u64> = (0..=4).map(|i| top * i / 4).collect();
    let label_every = (points.len() / 6).max(1);
    let total: u64 = points.iter().map(|p| p.1).sum();
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {W} {H}")) role="img" aria-labelledby=(format!("{id}-title {id}-desc")) data-metric=(id) data-value=(total) {
                title id=(format!("{id}-title")) { (title) }
                desc id=(format!("{id}-desc")) { (format!("{} points, {} {unit} in all, at most {max} on one", points.len(), total)) }
                @for t in &ticks {
                    @let y = TOP + plot_h - (*t as f64 / top as f64) * plot_h;
                    line.grid x1=(LEFT) x2=(W - 8.0) y1=(y) y2=(y) {}
                    text.tick x=(LEFT - 6.0) y=(y + 4.0) text-anchor="end" { (short(*t)) }
                }
                text.axis-unit x="4" y="12" { (unit) }
                @for (i, (label, v)) in points.iter().enumerate() {
                    @let h = (*v as f64 / top as f64) * plot_h;
                    @let x = LEFT + i as f64 * slot + (slot - bar_w) / 2.0;
                    rect.bar x=(format!("{x:.1}")) y=(format!("{:.1}", TOP + plot_h - h)) width=(format!("{bar_w:.1}")) height=(format!("{h:.1}")) data-label=(label) data-value=(v) {
                        title { (label) ": " (v) " " (unit) }
                    }
                    @if i % label_every == 0 || i + 1 == points.len() {
                        text.tick x=(format!("{:.1}", x + bar_w / 2.0)) y=(H - 8.0) text-anchor="middle" { (label.get(5..).unwrap_or(label)) }
                    }
                }
                line.axis x1=(LEFT) x2=(LEFT) y1=(TOP) y2=(TOP + plot_h) {}
                line.axis x1=(LEFT) x2=(W - 8.0) y1=(TOP + plot_h) y2=(TOP + plot_h) {}
            }
            figcaption { (title) }
        }
    }
}

/// The smallest "nice" axis maximum (1, 2 or 5 × 10ⁿ, at least 4 so ticks are whole) at or above `max`.
fn nice_max(max: u64) -> u64 {
    if max <= 4 {
        return 4;
    }
    let mut base = 1u64;
    loop {
        for m in [1, 2, 5] {
            let c = base * m;
            if c >= max {
                return c.div_ceil(4) * 4;
            }
        }
        base *= 10;
    }
}

/// Axis labels: 1200 as 1.2k.
fn short(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{}k", n / 1000),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_axis_covers_the_largest_bar() {
        for m in [0, 1, 3, 5, 7, 19, 20, 99, 101, 999, 12345] {
            let t = nice_max(m);
            assert!(t >= m && t >= 4 && t.is_multiple_of(4), "{m} -> {t}");
        }
    }

    #[test]
    fn bars_carry_values_and_escaped_labels() {
        let svg = bars("req", "Requests <per day>", "requests", &[("2026-12-01".into(), 3), ("2026-12-02".into(), 9)]).into_string();
        assert!(svg.contains(r#"data-value="12""#), "{svg}");
        assert!(svg.contains(r#"data-label="2026-12-02" data-value="9""#), "{svg}");
        assert!(svg.contains("Requests &lt;per day&gt;"));
        assert!(!svg.contains("<per day>"));
    }
}
