//! `loss.svg`: the training loss (line) and the held-out loss (dots) against the step, as a
//! plain SVG file with axes and a few labelled ticks (no plotting dependency).

use std::fmt::Write;

/// The SVG text for `train` (step, loss) and `eval` (step, loss) points.
pub fn loss_svg(train: &[(u64, f32)], eval: &[(u64, f32)]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 60.0, 20.0, 20.0, 40.0);
    let all = train.iter().chain(eval).filter(|(_, l)| l.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (u64::MAX, 0u64, f32::INFINITY, f32::NEG_INFINITY);
    for &(s, l) in all {
        x0 = x0.min(s);
        x1 = x1.max(s);
        y0 = y0.min(l);
        y1 = y1.max(l);
    }
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    if x0 > x1 {
        let _ = writeln!(svg, r#"<text x="20" y="40">no losses yet</text></svg>"#);
        return svg;
    }
    if x1 == x0 {
        x1 = x0 + 1;
    }
    if y1 - y0 < 1e-6 {
        y1 = y0 + 1.0;
    }
    let (pw, ph) = (w - left - right, h - top - bottom);
    let px = |s: u64| left + (s - x0) as f64 / (x1 - x0) as f64 * pw;
    let py = |l: f32| top + (1.0 - ((l - y0) / (y1 - y0)) as f64) * ph;
    let _ = writeln!(
        svg,
        r##"<path d="M{left} {top} V{} H{}" fill="none" stroke="#444"/>"##,
        top + ph,
        left + pw
    );
    for i in 0..=4 {
        let l = y0 + (y1 - y0) * i as f32 / 4.0;
        let s = x0 + (x1 - x0) * i / 4;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{l:.3}</text><text x="{}" y="{}" text-anchor="middle">{s}</text>"#,
            left - 6.0,
            py(l) + 4.0,
            px(s),
            top + ph + 16.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">step</text>"#,
        left + pw / 2.0,
        h - 6.0
    );
    let points: Vec<String> = train
        .iter()
        .filter(|(_, l)| l.is_finite())
        .map(|&(s, l)| format!("{:.1},{:.1}", px(s), py(l)))
        .collect();
    let _ = writeln!(
        svg,
        r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>"##,
        points.join(" ")
    );
    for &(s, l) in eval.iter().filter(|(_, l)| l.is_finite()) {
        let _ = writeln!(
            svg,
            r##"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="#d62728"/>"##,
            px(s),
            py(l)
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" fill="#1f77b4">train loss</text><text x="{}" y="{}" fill="#d62728">held-out loss</text>"##,
        left + pw - 180.0,
        top + 14.0,
        left + pw - 90.0,
        top + 14.0
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_both_series() {
        let svg = super::loss_svg(&[(1, 4.0), (2, 3.5), (3, 3.0)], &[(3, 3.2)]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("<polyline") && svg.contains("<circle"));
        assert!(super::loss_svg(&[], &[]).contains("no losses"));
    }
}
