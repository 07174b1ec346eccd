//! Counters for `/metrics`, in the Prometheus text format.
//!
//! Request counters and the store latency histogram are striped per thread (each stripe on its
//! own cache line), so counting on the request path never bounces a shared line between
//! cores. Everything else is touched once per window or per callback attempt and uses plain
//! atomics.

use std::cell::Cell;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

/// Stripes per counter; threads map onto them round-robin.
const STRIPES: usize = 16;

#[repr(align(128))]
#[derive(Default)]
struct Stripe(AtomicU64);

/// A counter that many threads bump without contending.
pub struct Striped {
    stripes: [Stripe; STRIPES],
}

impl Default for Striped {
    fn default() -> Self {
        Self {
            stripes: std::array::from_fn(|_| Stripe::default()),
        }
    }
}

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    STRIPE.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
        }
        s.get()
    })
}

impl Striped {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.stripes[stripe_index()]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    UriTooLong,
    HeaderTooLarge,
    Unavailable,
}

impl Outcome {
    const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::BadRequest,
        Outcome::NotFound,
        Outcome::MethodNotAllowed,
        Outcome::UriTooLong,
        Outcome::HeaderTooLarge,
        Outcome::Unavailable,
    ];

    pub fn status(self) -> u16 {
        match self {
            Outcome::Ok => 200,
            Outcome::BadRequest => 400,
            Outcome::NotFound => 404,
            Outcome::MethodNotAllowed => 405,
            Outcome::UriTooLong => 414,
            Outcome::HeaderTooLarge => 431,
            Outcome::Unavailable => 503,
        }
    }
}

/// The result of one callback attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// A 2xx answer.
    Delivered,
    /// Any other HTTP status.
    Status,
    Timeout,
    Connect,
    /// Refused by the SSRF guard or the host allow-list.
    Blocked,
    /// Anything else (TLS, protocol).
    Error,
}

impl Attempt {
    const ALL: [Attempt; 6] = [
        Attempt::Delivered,
        Attempt::Status,
        Attempt::Timeout,
        Attempt::Connect,
        Attempt::Blocked,
        Attempt::Error,
    ];

    fn label(self) -> &'static str {
        match self {
            Attempt::Delivered => "delivered",
            Attempt::Status => "http_error",
            Attempt::Timeout => "timeout",
            Attempt::Connect => "connect",
            Attempt::Blocked => "blocked",
            Attempt::Error => "error",
        }
    }
}

/// What the exposition reads off the running service besides the counters.
#[derive(Debug, Clone, Copy)]
pub struct State {
    pub window_secs: u64,
    /// Fleet mode: whether the store is connected; `None` on a single node.
    pub redis_connected: Option<bool>,
    /// Fleet mode: whether the instance is fenced.
    pub fenced: bool,
    /// Fleet mode: connections to the store that came back since start-up.
    pub redis_reconnections: u64,
    /// Fleet mode: --max-clock-skew-ms, in milliseconds.
    pub max_clock_skew_ms: u64,
    /// `--count`: `exact` or `approx`.
    pub count: &'static str,
    /// Fleet approx mode: whether ids are refused because no sketch reached Redis lately.
    pub sketches_stale: bool,
}

/// Every counter the service exports.
#[derive(Default)]
pub struct Metrics {
    /// Requests by outcome, indexed like `Outcome::ALL`.
    requests: [Striped; Outcome::ALL.len()],
    /// Windows written to the count log (partial ones included).
    pub windows_reported: AtomicU64,
    /// Callback attempts by result, indexed like `Attempt::ALL`.
    callback_attempts: [AtomicU64; Attempt::ALL.len()],
    /// Deliveries dropped because the pending queue was full.
    pub callbacks_dropped_queue: AtomicU64,
    /// Deliveries given up because their window's delivery deadline passed.
    pub callbacks_expired: AtomicU64,
    /// Endpoints refused because a window already had the maximum (in fleet mode: here, or
    /// fleet-wide at registration).
    pub endpoints_dropped: AtomicU64,
    /// Requests shed with 503 because `--max-inflight` requests were waiting for the store.
    pub shed: AtomicU64,
    /// Endpoints not registered because their host is not in `--callback-hosts`.
    pub endpoints_refused: AtomicU64,
    /// Distinct ids in the last reported window.
    pub last_window_ids: AtomicU64,
    /// Fleet mode: store round trips on the request path, by latency bucket (`LATENCY_BUCKETS`).
    /// (Striped: every id not seen locally passes here.)
    store_latency: [Striped; LATENCY_BUCKETS.len() + 1],
    store_latency_sum_us: Striped,
    /// Fleet mode: store calls on the request path that failed (answered 503).
    pub store_errors: AtomicU64,
    /// Fleet mode: windows this instance led (sent the fleet's callbacks for).
    pub leader_elections: AtomicU64,
    /// Fleet mode: windows whose ids this instance re-added to the store.
    pub resyncs: AtomicU64,
    /// Fleet approx mode: sketches written into their window's Redis HLL.
    pub sketch_merges: AtomicU64,
    /// Endpoints refused because their domain (or address prefix) held the maximum already
    /// (in fleet mode: here, or fleet-wide at registration).
    pub endpoints_dropped_domain: AtomicU64,
    /// Unix time (seconds) the last window line was written; 0 before the first.
    pub last_window_reported_at: AtomicU64,
    /// Fleet mode: windows whose fleet report was given up at its deadline.
    pub fleet_reports_abandoned: AtomicU64,
    /// Fleet mode: this instance's clock offset from Redis's `TIME` (Redis minus ours), µs,
    /// from the last acknowledged heartbeat.
    pub clock_offset_us: AtomicI64,
    /// Fleet mode: heartbeats acknowledged, and those that failed.
    pub heartbeats: AtomicU64,
    pub heartbeat_failures: AtomicU64,
    /// Fleet mode: times this instance fenced itself (no heartbeat, or its clock).
    pub fences: AtomicU64,
    /// Fleet mode: windows whose count this instance fixed without every member's mark (the
    /// barrier's bound ran out).
    pub barrier_timeouts: AtomicU64,
    /// Stream records acknowledged by Kafka.
    pub stream_sent: AtomicU64,
    /// Stream records given up: buffer full, or a permanent delivery error.
    pub stream_failed: AtomicU64,
}

/// Upper bounds (seconds) of the store latency histogram.
const LATENCY_BUCKETS: [f64; 10] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.25,
];

impl Metrics {
    pub fn request(&self, outcome: Outcome) {
        self.requests[outcome as usize].inc();
    }

    pub fn attempt(&self, attempt: Attempt) {
        self.callback_attempts[attempt as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Records one request-path store call (dedup `SADD` or endpoint registration).
    pub fn store_call(&self, elapsed: std::time::Duration, ok: bool) {
        if !ok {
            self.store_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.store_latency[bucket].inc();
        self.store_latency_sum_us.add(elapsed.as_micros() as u64);
    }

    pub fn requests(&self, outcome: Outcome) -> u64 {
        self.requests[outcome as usize].get()
    }

    /// The exposition text; the arguments are sampled by the caller.
    pub fn render(
        &self,
        current_window_ids: usize,
        count_log_errors: u64,
        rss_bytes: Option<u64>,
        stream_buffered: Option<u64>,
        state: &State,
    ) -> String {
        let mut out = String::with_capacity(2048);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        scalar(
            &mut out,
            "gauge",
            "verve_window_seconds",
            "The window length (--window-secs).",
            state.window_secs,
        );
        scalar(
            &mut out,
            "gauge",
            "verve_last_window_reported_timestamp_seconds",
            "Unix time the last window's line was written (0: none yet); alert when it lags.",
            load(&self.last_window_reported_at),
        );
        if let Some(connected) = state.redis_connected {
            scalar(
                &mut out,
                "gauge",
                "verve_redis_connected",
                "1 while every Redis connection of this instance is up (fleet mode).",
                u64::from(connected),
            );
            scalar(
                &mut out,
                "gauge",
                "verve_fenced",
                "1 while this instance is no member of the fleet and answers 503 (no heartbeat, or its clock).",
                u64::from(state.fenced),
            );
            let offset = self.clock_offset_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "# HELP verve_clock_offset_seconds Redis's clock minus this instance's, at the last heartbeat.\n\
                 # TYPE verve_clock_offset_seconds gauge\nverve_clock_offset_seconds {offset}"
            );
            let budget = state.max_clock_skew_ms as f64 / 1e3;
            let _ = writeln!(
                out,
                "# HELP verve_max_clock_skew_seconds The clock-skew budget (--max-clock-skew-ms); an instance more than half of it off Redis's clock fences itself.\n\
                 # TYPE verve_max_clock_skew_seconds gauge\nverve_max_clock_skew_seconds {budget}"
            );
            scalar(
                &mut out,
                "counter",
                "verve_redis_reconnections_total",
                "Connections to Redis that came back after a loss (a restart, a failover, a reset).",
                state.redis_reconnections,
            );
            scalar(
                &mut out,
                "counter",
                "verve_heartbeats_total",
                "Heartbeats Redis acknowledged.",
                load(&self.heartbeats),
            );
            scalar(
                &mut out,
                "counter",
                "verve_heartbeat_failures_total",
                "Heartbeats that failed.",
                load(&self.heartbeat_failures),
            );
            scalar(
                &mut out,
                "counter",
                "verve_fences_total",
                "Times this instance fenced itself.",
                load(&self.fences),
            );
            scalar(
                &mut out,
                "counter",
                "verve_barrier_timeouts_total",
                "Windows whose count was fixed without every member's drained mark (the barrier's bound ran out).",
                load(&self.barrier_timeouts),
            );
        }
        out.push_str("# HELP verve_count_mode How ids are counted (--count): 1 for the mode this instance runs.\n");
        out.push_str("# TYPE verve_count_mode gauge\n");
        for mode in ["exact", "approx"] {
            let on = u64::from(mode == state.count);
            let _ = writeln!(out, "verve_count_mode{{mode=\"{mode}\"}} {on}");
        }
        if state.count == "approx" && state.redis_connected.is_some() {
            scalar(
                &mut out,
                "counter",
                "verve_sketch_merges_total",
                "Window sketches written into their Redis HyperLogLog (approx fleet mode).",
                load(&self.sketch_merges),
            );
            scalar(
                &mut out,
                "gauge",
                "verve_sketches_stale",
                "1 while no sketch reached Redis for 3 s and ids are answered 503 (approx fleet mode).",
                u64::from(state.sketches_stale),
            );
        }
        out.push_str("# HELP verve_requests_total Requests on the accept listener by response status (404: an unknown path).\n");
        out.push_str("# TYPE verve_requests_total counter\n");
        for outcome in Outcome::ALL {
            let _ = writeln!(
                out,
                "verve_requests_total{{status=\"{}\"}} {}",
                outcome.status(),
                self.requests(outcome)
            );
        }
        scalar(
            &mut out,
            "counter",
            "verve_windows_reported_total",
            "Windows written to the count log.",
            load(&self.windows_reported),
        );
        scalar(
            &mut out,
            "counter",
            "verve_count_log_errors_total",
            "Count-log writes that failed.",
            count_log_errors,
        );
        scalar(
            &mut out,
            "counter",
            "verve_callbacks_dropped_total",
            "Callback deliveries dropped because the pending queue was full.",
            load(&self.callbacks_dropped_queue),
        );
        scalar(
            &mut out,
            "counter",
            "verve_callbacks_expired_total",
            "Callback deliveries given up at their window's delivery deadline.",
            load(&self.callbacks_expired),
        );
        scalar(
            &mut out,
            "counter",
            "verve_endpoints_refused_total",
            "Endpoints not registered because their host is not in --callback-hosts.",
            load(&self.endpoints_refused),
        );
        scalar(
            &mut out,
            "counter",
            "verve_requests_shed_total",
            "Requests answered 503 because --max-inflight requests were waiting for Redis.",
            load(&self.shed),
        );
        scalar(
            &mut out,
            "counter",
            "verve_endpoints_dropped_total",
            "Endpoints refused because their window held the maximum already.",
            load(&self.endpoints_dropped),
        );
        scalar(
            &mut out,
            "counter",
            "verve_endpoints_dropped_domain_total",
            "Endpoints refused because their domain or address prefix held --callback-max-per-domain already.",
            load(&self.endpoints_dropped_domain),
        );
        out.push_str("# HELP verve_callback_attempts_total Callback attempts by result.\n");
        out.push_str("# TYPE verve_callback_attempts_total counter\n");
        for attempt in Attempt::ALL {
            let _ = writeln!(
                out,
                "verve_callback_attempts_total{{result=\"{}\"}} {}",
                attempt.label(),
                load(&self.callback_attempts[attempt as usize])
            );
        }
        scalar(
            &mut out,
            "counter",
            "verve_store_errors_total",
            "Request-path store calls that failed (answered 503).",
            load(&self.store_errors),
        );
        scalar(
            &mut out,
            "counter",
            "verve_leader_elections_total",
            "Windows whose fleet callbacks this instance sent as leader.",
            load(&self.leader_elections),
        );
        scalar(
            &mut out,
            "counter",
            "verve_resyncs_total",
            "Windows whose ids this instance re-added to the store.",
            load(&self.resyncs),
        );
        scalar(
            &mut out,
            "counter",
            "verve_fleet_reports_abandoned_total",
            "Windows whose fleet report was given up at its deadline.",
            load(&self.fleet_reports_abandoned),
        );
        if let Some(buffered) = stream_buffered {
            scalar(
                &mut out,
                "counter",
                "verve_stream_records_sent_total",
                "Window records Kafka acknowledged.",
                load(&self.stream_sent),
            );
            scalar(
                &mut out,
                "counter",
                "verve_stream_records_failed_total",
                "Window records given up (buffer full or a permanent error).",
                load(&self.stream_failed),
            );
            scalar(
                &mut out,
                "gauge",
                "verve_stream_records_buffered",
                "Window records handed to the producer and not yet acknowledged.",
                buffered,
            );
        }
        out.push_str("# HELP verve_dedup_seconds Store round trip of an id not seen locally.\n");
        out.push_str("# TYPE verve_dedup_seconds histogram\n");
        let mut cumulative = 0;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.store_latency[i].get();
            let _ = writeln!(
                out,
                "verve_dedup_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += self.store_latency[LATENCY_BUCKETS.len()].get();
        let _ = writeln!(
            out,
            "verve_dedup_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "verve_dedup_seconds_sum {}\nverve_dedup_seconds_count {cumulative}",
            self.store_latency_sum_us.get() as f64 / 1e6
        );
        scalar(
            &mut out,
            "gauge",
            "verve_window_ids",
            "Distinct ids in the current window so far.",
            current_window_ids as u64,
        );
        scalar(
            &mut out,
            "gauge",
            "verve_last_window_ids",
            "Distinct ids in the last reported window.",
            load(&self.last_window_ids),
        );
        if let Some(rss) = rss_bytes {
            scalar(
                &mut out,
                "gauge",
                "process_resident_memory_bytes",
                "Resident set size.",
                rss,
            );
        }
        out
    }
}

/// One counter or gauge with its HELP and TYPE lines.
fn scalar(out: &mut String, kind: &str, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// Resident set size of this process, from `/proc/self/status`.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn striped_counts_across_threads() {
        let c = std::sync::Arc::new(Striped::default());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || (0..1000).for_each(|_| c.inc()))
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(c.get(), 8000);
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.request(Outcome::Ok);
        m.request(Outcome::Ok);
        m.request(Outcome::BadRequest);
        m.attempt(Attempt::Blocked);
        m.last_window_reported_at
            .store(1_795_529_161, Ordering::Relaxed);
        let state = State {
            window_secs: 60,
            redis_connected: Some(false),
            fenced: true,
            redis_reconnections: 3,
            max_clock_skew_ms: 250,
            count: "approx",
            sketches_stale: true,
        };
        let text = m.render(5, 0, Some(4096), None, &state);
        assert!(text.contains("verve_window_seconds 60\n"));
        assert!(text.contains("verve_last_window_reported_timestamp_seconds 1795529161\n"));
        assert!(text.contains("verve_redis_connected 0\n"));
        assert!(text.contains("verve_redis_reconnections_total 3\n"));
        assert!(text.contains("verve_max_clock_skew_seconds 0.25\n"));
        assert!(text.contains("verve_count_mode{mode=\"approx\"} 1\n"));
        assert!(text.contains("verve_count_mode{mode=\"exact\"} 0\n"));
        assert!(text.contains("verve_sketches_stale 1\n"));
        assert!(text.contains("verve_requests_total{status=\"200\"} 2\n"));
        assert!(text.contains("verve_requests_total{status=\"400\"} 1\n"));
        assert!(text.contains("verve_callback_attempts_total{result=\"blocked\"} 1\n"));
        assert!(text.contains("verve_window_ids 5\n"));
        assert!(text.contains("process_resident_memory_bytes 4096\n"));
    }
}
