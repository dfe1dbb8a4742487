//! The percentile-distribution plot of `bench latency --plot` (SVG): latency (linear) against
//! percentile on a log scale of 1 / (1 − q), as in HdrHistogram's plotter; across processes
//! also the crossing and local parts.

use super::report::LatencyReport;

impl LatencyReport {
    pub fn svg(&self) -> String {
        let (w, h, left, right, top, bottom) = (800.0, 500.0, 80.0, 20.0, 40.0, 50.0);
        let pw = w - left - right;
        let ph = h - top - bottom;
        let decades = 6.0; // up to 99.9999%
        let mut series = vec![("all", &self.histogram, "steelblue")];
        if let Some(split) = &self.split {
            series.push(("crossing", &split.crossing.total, "crimson"));
            series.push(("local", &split.local.total, "seagreen"));
        }
        let max_us = series.iter().map(|(_, hist, _)| hist.max() as f64 / 1e3).fold(1e-3, f64::max);
        let across = if self.processes > 1 { format!(", {} processes", self.processes) } else { String::new() };
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n\
             <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
             <text x=\"{}\" y=\"24\" font-family=\"sans-serif\" font-size=\"16\" text-anchor=\"middle\">\
             {} latency at {} records/s (parallelism {}{across})</text>\n\
             <rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"black\"/>\n",
            w / 2.0,
            self.query.name(),
            self.rate,
            self.parallelism
        );
        for (d, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"].iter().enumerate() {
            let x = left + pw * d as f64 / decades;
            s.push_str(&format!(
                "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#ccc\"/>\n\
                 <text x=\"{x:.1}\" y=\"{}\" font-family=\"sans-serif\" font-size=\"12\" text-anchor=\"middle\">{label}</text>\n",
                top + ph,
                top + ph + 18.0
            ));
        }
        for i in 0..=4 {
            let v = max_us * i as f64 / 4.0;
            let y = top + ph * (1.0 - i as f64 / 4.0);
            s.push_str(&format!(
                "<text x=\"{}\" y=\"{:.1}\" font-family=\"sans-serif\" font-size=\"12\" text-anchor=\"end\">{v:.0}</text>\n",
                left - 6.0,
                y + 4.0
            ));
        }
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" font-family=\"sans-serif\" font-size=\"13\" text-anchor=\"middle\">percentile</text>\n\
             <text x=\"16\" y=\"{}\" font-family=\"sans-serif\" font-size=\"13\" text-anchor=\"middle\" \
             transform=\"rotate(-90 16 {})\">latency (us)</text>\n",
            left + pw / 2.0,
            h - 10.0,
            top + ph / 2.0,
            top + ph / 2.0,
        ));
        for (n, (label, hist, color)) in series.iter().enumerate() {
            let mut points = Vec::new();
            for k in 0..=600 {
                let x = k as f64 / 100.0;
                let q = 1.0 - 10f64.powf(-x);
                let v = hist.value_at_quantile(q) as f64 / 1e3;
                points.push(format!("{:.1},{:.1}", left + pw * x / decades, top + ph * (1.0 - v / max_us)));
            }
            s.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
                points.join(" ")
            ));
            if series.len() > 1 {
                s.push_str(&format!(
                    "<text x=\"{}\" y=\"{}\" font-family=\"sans-serif\" font-size=\"13\" fill=\"{color}\">{label}</text>\n",
                    left + 10.0,
                    top + 18.0 + 16.0 * n as f64
                ));
            }
        }
        s.push_str("</svg>\n");
        s
    }
}
