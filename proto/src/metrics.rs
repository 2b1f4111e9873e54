//! The Prometheus text exposition format (0.0.4) that `blockctl metrics` and
//! `clusterctl metrics` print, for node_exporter's textfile collector or any scraper:
//!
//! ```text
//! # HELP hablock_block_disk_written_bytes_total Bytes written to the local backing device.
//! # TYPE hablock_block_disk_written_bytes_total counter
//! hablock_block_disk_written_bytes_total{resource="r0"} 1048576
//! ```
//!
//! A family's samples follow its `# HELP` and `# TYPE` lines; label values escape `\`,
//! `"` and newlines, help texts `\` and newlines; integral values print without a
//! fraction, a NaN as `NaN`.

use std::fmt::Write;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down.
    Gauge,
    /// A count that only grows (its name ends in `_total`).
    Counter,
}

/// One sample: its labels and its value.
pub type Sample<'a> = (Vec<(&'a str, &'a str)>, f64);

/// The text of a set of metric families, written one family at a time.
#[derive(Debug, Default)]
pub struct MetricsText {
    out: String,
}

impl MetricsText {
    /// An empty text.
    pub fn new() -> MetricsText {
        MetricsText::default()
    }

    /// Appends a family: its help and type lines, then its samples. A family without
    /// samples is left out.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str, samples: &[Sample<'_>]) {
        if samples.is_empty() {
            return;
        }
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.out.push_str(name);
            if !labels.is_empty() {
                self.out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
                }
                self.out.push('}');
            }
            let _ = writeln!(self.out, " {}", number(*value));
        }
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// 1.0 for true, 0.0 for false.
pub fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_text() {
        let mut m = MetricsText::new();
        m.family(
            "x_bytes_total",
            Kind::Counter,
            "Bytes.\nAll of them \\ here.",
            &[
                (vec![("resource", "r0")], 1048576.0),
                (vec![("resource", "a\"b\\c\nd")], 0.5),
            ],
        );
        m.family("x_empty", Kind::Gauge, "Nothing.", &[]);
        m.family(
            "x_up",
            Kind::Gauge,
            "Up.",
            &[(vec![], flag(true)), (vec![], f64::NAN)],
        );
        assert_eq!(
            m.finish(),
            "# HELP x_bytes_total Bytes.\\nAll of them \\\\ here.\n\
             # TYPE x_bytes_total counter\n\
             x_bytes_total{resource=\"r0\"} 1048576\n\
             x_bytes_total{resource=\"a\\\"b\\\\c\\nd\"} 0.5\n\
             # HELP x_up Up.\n\
             # TYPE x_up gauge\n\
             x_up 1\n\
             x_up NaN\n"
        );
    }

    #[test]
    fn large_and_infinite_values() {
        assert_eq!(number(18446744073709551615.0), "18446744073709552000");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(-3.0), "-3");
    }
}
