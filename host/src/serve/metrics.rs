//! What `wasmail serve` has done, in the Prometheus text exposition format
//! (version 0.0.4): runs, messages by outcome, limit stops, refused
//! requests, and run latency as a histogram.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// The run latency histogram's upper bounds, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Default)]
struct Inner {
    /// (metric, labels) -> count.
    counters: BTreeMap<(&'static str, String), u64>,
    /// plugin -> (bucket counts, sum of seconds, count).
    latency: BTreeMap<String, ([u64; LATENCY_BUCKETS.len()], f64, u64)>,
    in_flight: i64,
}

/// The service's counters.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// A label value, escaped as the format asks (backslash, quote, newline).
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

const HELP: [(&str, &str, &str); 7] = [
    ("wasmail_runs_total", "counter", "Plugin runs finished, by plugin and result (ok, plugin-error, stopped, failed)."),
    ("wasmail_messages_total", "counter", "Messages the runs handled, by plugin and outcome (accepted, denied, rejected, error, skipped, kept)."),
    ("wasmail_limit_stops_total", "counter", "Runs a limit stopped, by plugin and limit."),
    ("wasmail_sends_total", "counter", "Plain sends (POST /v1/messages), by result."),
    ("wasmail_requests_refused_total", "counter", "Requests refused, by reason (unauthorized, forbidden, busy, not-found, bad-request, job-running, timeout)."),
    ("wasmail_jobs_queued_total", "counter", "Runs handed to the queue, by plugin."),
    ("wasmail_reloads_total", "counter", "Reloads on SIGHUP, by result (ok, failed)."),
];

impl Metrics {
    fn with(&self, f: impl FnOnce(&mut Inner)) {
        if let Ok(mut inner) = self.inner.lock() {
            f(&mut inner);
        }
    }

    /// Add `n` to `metric{labels}`; `labels` is `k="v",...` already escaped.
    pub fn add(&self, metric: &'static str, labels: &[(&str, &str)], n: u64) {
        let labels = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", label(v))).collect::<Vec<_>>().join(",");
        self.with(|i| *i.counters.entry((metric, labels)).or_default() += n);
    }

    /// A run of `plugin` took `took`.
    pub fn observe(&self, plugin: &str, took: Duration) {
        let secs = took.as_secs_f64();
        self.with(|i| {
            let (buckets, sum, count) = i.latency.entry(plugin.to_owned()).or_default();
            for (b, le) in buckets.iter_mut().zip(LATENCY_BUCKETS) {
                if secs <= le {
                    *b += 1;
                }
            }
            *sum += secs;
            *count += 1;
        });
    }

    /// One more (or one fewer) run in flight.
    pub fn in_flight(&self, delta: i64) {
        self.with(|i| i.in_flight += delta);
    }

    /// Everything, in the text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(inner) = self.inner.lock() else { return out };
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((metric, labels), n) in &inner.counters {
                if *metric == name {
                    let _ = writeln!(out, "{name}{{{labels}}} {n}");
                }
            }
        }
        let _ = writeln!(out, "# HELP wasmail_runs_in_flight Plugin runs in progress.\n# TYPE wasmail_runs_in_flight gauge");
        let _ = writeln!(out, "wasmail_runs_in_flight {}", inner.in_flight);
        let name = "wasmail_run_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Time from a run's request to its report, by plugin.\n# TYPE {name} histogram");
        for (plugin, (buckets, sum, count)) in &inner.latency {
            let p = label(plugin);
            for (b, le) in buckets.iter().zip(LATENCY_BUCKETS) {
                let _ = writeln!(out, "{name}_bucket{{plugin=\"{p}\",le=\"{le}\"}} {b}");
            }
            let _ = writeln!(out, "{name}_bucket{{plugin=\"{p}\",le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{name}_sum{{plugin=\"{p}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{plugin=\"{p}\"}} {count}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_with_escaped_labels_and_a_histogram() {
        let m = Metrics::default();
        m.add("wasmail_runs_total", &[("plugin", "a\"b"), ("result", "ok")], 2);
        m.observe("p", Duration::from_millis(30));
        let text = m.render();
        assert!(text.contains("wasmail_runs_total{plugin=\"a\\\"b\",result=\"ok\"} 2\n"), "{text}");
        assert!(text.contains("wasmail_run_duration_seconds_bucket{plugin=\"p\",le=\"0.025\"} 0\n"), "{text}");
        assert!(text.contains("wasmail_run_duration_seconds_bucket{plugin=\"p\",le=\"0.05\"} 1\n"), "{text}");
        assert!(text.contains("wasmail_run_duration_seconds_count{plugin=\"p\"} 1\n"), "{text}");
        assert!(text.contains("# TYPE wasmail_runs_in_flight gauge\nwasmail_runs_in_flight 0\n"), "{text}");
    }
}
