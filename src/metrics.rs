//! Process-wide counters for `GET /metrics`, rendered in the Prometheus text format
//! (version 0.0.4). Lock-free atomics, so the hot paths (a frame relayed, a commit) pay one
//! relaxed add.
//!
//! One static, `METRICS`, rather than a handle threaded through every module: metrics are
//! observation only, never read back by the server's logic, and every module that does work
//! reports here. Gauges that are state elsewhere (connections, documents) are read at render
//! time by `http` and passed in.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

pub static METRICS: Metrics = Metrics::new();

/// Upper bounds of the commit latency histogram, in seconds.
const COMMIT_SECONDS_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0];
/// Upper bounds of the commit batch size histogram, in commands.
const BATCH_SIZE_BUCKETS: [f64; 8] = [1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 1000.0, 4096.0];

pub struct Histogram<const N: usize> {
    bounds: [f64; N],
    counts: [AtomicU64; N],
    count: AtomicU64,
    /// The sum, in millionths of the unit (no atomic f64).
    sum_micros: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    const fn new(bounds: [f64; N]) -> Self {
        Histogram {
            bounds,
            counts: [const { AtomicU64::new(0) }; N],
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((value * 1e6) as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

pub struct Metrics {
    pub updates_received: AtomicU64,
    pub updates_relayed: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub ot_ops: AtomicU64,
    pub awareness_states: AtomicU64,
    pub sse_streams: AtomicU64,
    pub commit_seconds: Histogram<10>,
    pub commit_batch_size: Histogram<8>,
    /// Refusals by reason (a close reason or an error code); few distinct values.
    refusals: Mutex<Vec<(String, u64)>>,
}

/// Live state read at render time.
pub struct Gauges {
    pub connections: usize,
    pub documents_loaded: usize,
    pub users_online: usize,
}

impl Metrics {
    const fn new() -> Metrics {
        Metrics {
            updates_received: AtomicU64::new(0),
            updates_relayed: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            ot_ops: AtomicU64::new(0),
            awareness_states: AtomicU64::new(0),
            sse_streams: AtomicU64::new(0),
            commit_seconds: Histogram::new(COMMIT_SECONDS_BUCKETS),
            commit_batch_size: Histogram::new(BATCH_SIZE_BUCKETS),
            refusals: Mutex::new(Vec::new()),
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Adjusts a gauge kept here by a signed difference.
    pub fn adjust(gauge: &AtomicU64, before: usize, after: usize) {
        if after > before {
            gauge.fetch_add((after - before) as u64, Relaxed);
        } else {
            gauge.fetch_sub((before - after) as u64, Relaxed);
        }
    }

    pub fn refused(&self, reason: &str) {
        let mut r = self.refusals.lock().expect("metrics lock poisoned");
        if let Some((_, n)) = r.iter_mut().find(|(k, _)| k == reason) {
            *n += 1;
        } else if r.len() < 64 {
            // Reasons are fixed strings of this program; the bound is a safety net.
            r.push((reason.to_string(), 1));
        }
    }

    pub fn commit(&self, elapsed: Duration, commands: usize) {
        self.commit_seconds.observe(elapsed.as_secs_f64());
        self.commit_batch_size.observe(commands as f64);
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", v.load(Relaxed));
        };
        gauge(&mut out, "yserve_connections", "Open WebSocket connections (Yjs and OT).", gauges.connections as u64);
        gauge(&mut out, "yserve_documents_loaded", "Documents live in memory.", gauges.documents_loaded as u64);
        gauge(&mut out, "yserve_users_online", "Users with at least one connection.", gauges.users_online as u64);
        gauge(
            &mut out,
            "yserve_awareness_states",
            "Awareness states present, all documents.",
            self.awareness_states.load(Relaxed),
        );
        gauge(&mut out, "yserve_sse_streams", "Open Server-Sent Event streams.", self.sse_streams.load(Relaxed));
        counter(&mut out, "yserve_updates_received_total", "Updates accepted and stored.", &self.updates_received);
        counter(
            &mut out,
            "yserve_updates_relayed_total",
            "Update frames queued to connections.",
            &self.updates_relayed,
        );
        counter(&mut out, "yserve_received_bytes_total", "Bytes of WebSocket messages received.", &self.bytes_received);
        counter(&mut out, "yserve_sent_bytes_total", "Bytes of WebSocket messages sent.", &self.bytes_sent);
        counter(
            &mut out,
            "yserve_ot_ops_total",
            "OT ops committed (from OT clients and from Yjs edits).",
            &self.ot_ops,
        );
        self.commit_seconds.render(&mut out, "yserve_commit_seconds", "Store transaction (group commit) latency.");
        self.commit_batch_size.render(&mut out, "yserve_commit_batch_size", "Commands per store transaction.");
        let _ = writeln!(out, "# HELP yserve_refusals_total Requests and messages refused, by reason.");
        let _ = writeln!(out, "# TYPE yserve_refusals_total counter");
        for (reason, n) in self.refusals.lock().expect("metrics lock poisoned").iter() {
            let label = reason.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', " ");
            let _ = writeln!(out, "yserve_refusals_total{{reason=\"{label}\"}} {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_count_everything() {
        let h = Histogram::new([1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(9.0);
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"2\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_sum 11\n"), "{out}");
    }

    #[test]
    fn refusal_labels_are_escaped() {
        let m = Metrics::new();
        m.refused("bad \"quote\"");
        m.refused("bad \"quote\"");
        let out = m.render(&Gauges { connections: 0, documents_loaded: 0, users_online: 0 });
        assert!(out.contains("yserve_refusals_total{reason=\"bad \\\"quote\\\"\"} 2"), "{out}");
    }
}
