//! The reporter: closes each window once it is final and reports it.
//!
//! On a single node the count is the local one. In fleet mode ([`fleet`]) the fleet count is
//! read from the store, and one instance per window sends the callbacks and the stream record.
//!
//! A window is final `grace` after it ends and once the requests admitted to it have finished.
//! Then its count goes to the count log (always), its record to the stream and its endpoints
//! to the callback queue. The reporter wakes at least every [`MAX_NAP`], computing deadlines
//! from the wall clock, so a clock that steps (either way) is followed: windows are reported
//! in order, each once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

pub mod fleet;
pub mod members;

use crate::Shared;
use crate::callback::{Batch, BatchState, Delivery};
use crate::countlog::Entry;
use crate::window::format_utc;

/// Longest sleep between looks at the wall clock.
const MAX_NAP: Duration = Duration::from_millis(200);

/// How often a final window's in-flight count is checked while requests finish.
const DRAIN_POLL: Duration = Duration::from_millis(1);

/// Longest the drain waits once the window is cut: its requests are answered at the cutoff,
/// so only a stuck one (a bug) could hold it; the count is read without it.
const DRAIN_LIMIT: Duration = Duration::from_secs(1);

/// Cuts each window at its cutoff (fleet mode), on the monotonic clock and apart from the
/// reporter, which may be busy reading an earlier window's count when a cutoff comes.
pub async fn cut_at_cutoffs(shared: Arc<Shared>) {
    loop {
        let next = shared.windows.cut_due(tokio::time::Instant::now());
        let nap = next.map_or(MAX_NAP, |at| {
            at.saturating_duration_since(tokio::time::Instant::now())
                .min(MAX_NAP)
        });
        tokio::time::sleep(nap).await;
    }
}

/// Reports windows as they become final until `finish` turns true; then reports the windows
/// that already ended (waiting out their grace) and the one open at that moment as
/// `partial=true`.
pub async fn run(shared: Arc<Shared>, mut finish: watch::Receiver<bool>) {
    let grace_ms = shared.settings.grace_ms as i64;
    let secs = shared.windows.secs();
    while !*finish.borrow() {
        let due = (shared.windows.oldest_start() + secs) * 1000 + grace_ms;
        let now = shared.clock.now_ms();
        if now >= due {
            report_oldest(&shared, false).await;
            continue;
        }
        let nap = Duration::from_millis((due - now) as u64).min(MAX_NAP);
        tokio::select! {
            _ = tokio::time::sleep(nap) => {}
            _ = finish.changed() => {}
        }
    }
    // The window open when serving stopped is the last one: windows after it saw no request.
    // Without this bound, reports slower than a window (a stalled Redis: the grace plus the
    // fleet read's timeout each) would find the next window ended too, and the next, and
    // never let the process exit.
    let last_open = crate::window::window_start(shared.clock.now_ms(), secs);
    loop {
        let oldest = shared.windows.oldest_start();
        let end = (oldest + secs) * 1000;
        let now = shared.clock.now_ms();
        if end <= now && oldest < last_open {
            let due = end + grace_ms;
            if now < due {
                tokio::time::sleep(Duration::from_millis((due - now) as u64)).await;
            }
            report_oldest(&shared, false).await;
        } else {
            // From here on no request is admitted (503): none can be answered `ok` after
            // the open window's line is written.
            shared.windows.close();
            // Logged even when the clock stands before it (stepped back): requests of an
            // earlier, reported window were counted in it.
            let last = report_oldest(&shared, true).await;
            // Approx fleet mode: its last updates go to Redis (the fleet counts it without
            // this instance) before the heartbeat is withdrawn.
            fleet::hand_over(&shared, &last).await;
            return;
        }
    }
}

/// Closes the oldest open window, waits for its requests, and reports it; hands it back.
async fn report_oldest(shared: &Arc<Shared>, partial: bool) -> Arc<crate::window::Window> {
    // The next window is tagged with the generation as seen now: ids that Redis of an
    // earlier generation acknowledged are re-added when it closes.
    let epoch = shared.store.as_ref().map_or(0, |s| s.generation().seq);
    let window = shared.windows.rotate(epoch, shared.clock.now_ms());
    // Its cutoff has passed (a wall clock that leapt ahead may get here first): whatever
    // still waits for the store is answered 503 now.
    window.cut();
    let drained = async {
        while window.inflight() > 0 {
            tokio::time::sleep(DRAIN_POLL).await;
        }
    };
    if tokio::time::timeout(DRAIN_LIMIT, drained).await.is_err() {
        log::warn!(
            "window {}: {} requests still running after the cutoff; reading the count without them",
            format_utc(window.start * 1000, false),
            window.inflight()
        );
    }
    if shared.store.is_some() && !partial {
        fleet::report(shared, Arc::clone(&window)).await;
        return window;
    }
    let count = window.count() as u64;
    log_count(
        shared,
        window.start,
        count,
        "local",
        partial.then_some(Partial::Shutdown),
    );
    if !partial {
        // A window cut short is neither POSTed nor streamed.
        publish(shared, window.start, count, "local", window.endpoints());
    }
    window
}

/// Why a window's line is partial (SPEC §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partial {
    /// Cut short by shutdown.
    Shutdown,
    /// Fleet mode: the fleet count was not readable in time.
    Store,
}

/// Writes a window's line to the count log.
fn log_count(
    shared: &Shared,
    start: i64,
    count: u64,
    scope: &'static str,
    partial: Option<Partial>,
) {
    let mut entry = Entry::new("unique_requests")
        .field("window_start", format_utc(start * 1000, false))
        .field("window_secs", shared.windows.secs())
        .field("unique_requests", count)
        .field("scope", scope);
    if approx(shared) {
        entry = entry.field("count", "approx");
    }
    if let Some(reason) = partial {
        entry = entry.field("partial", true).field(
            "reason",
            match reason {
                Partial::Shutdown => "shutdown",
                Partial::Store => "store",
            },
        );
    }
    entry.write();
    let partial = partial.is_some();
    shared
        .metrics
        .windows_reported
        .fetch_add(1, Ordering::Relaxed);
    shared
        .metrics
        .last_window_ids
        .store(count, Ordering::Relaxed);
    let now_secs = shared.clock.now_ms().div_euclid(1000).max(0) as u64;
    shared
        .metrics
        .last_window_reported_at
        .store(now_secs, Ordering::Relaxed);
    shared.status.reported(start, count, scope, partial);
}

/// Publishes a window's final count: its record to the stream, if any, and one POST per
/// endpoint to the callback queue. The returned batch reaches zero once every delivery is
/// done or given up.
fn publish(
    shared: &Shared,
    start: i64,
    count: u64,
    scope: &str,
    endpoints: Vec<Box<str>>,
) -> Batch {
    stream_record(shared, start, count, scope);
    post(shared, start, count, scope, endpoints)
}

/// Sends a window's record to the stream, if there is one.
fn stream_record(shared: &Shared, start: i64, count: u64, scope: &str) {
    if let Some(stream) = &shared.stream {
        let window_start = format_utc(start * 1000, false);
        let body = callback_body(
            &window_start,
            shared.windows.secs(),
            count,
            scope,
            approx(shared),
        );
        stream.send(&window_start, &body);
    }
}

/// Hands one POST of a window's count per endpoint to the callback queue; the returned
/// batch reaches zero once every delivery is done or given up.
fn post(shared: &Shared, start: i64, count: u64, scope: &str, endpoints: Vec<Box<str>>) -> Batch {
    let window_start: Arc<str> = format_utc(start * 1000, false).into();
    let body: Arc<str> = callback_body(
        &window_start,
        shared.windows.secs(),
        count,
        scope,
        approx(shared),
    )
    .into();
    let batch = BatchState::new(endpoints.len());
    if !endpoints.is_empty() {
        shared.status.callbacks_sent(start, &batch);
    }
    let mut dropped = 0usize;
    for endpoint in endpoints {
        let delivery = Delivery::new(
            endpoint,
            Arc::clone(&window_start),
            Arc::clone(&body),
            Arc::clone(&batch),
        );
        if !shared.callbacks.submit(delivery) {
            dropped += 1;
        }
    }
    if dropped > 0 {
        log::warn!("callback queue full: dropped {dropped} deliveries for window {window_start}");
    }
    batch
}

/// Whether counts are approximate (`--count approx`).
fn approx(shared: &Shared) -> bool {
    shared.windows.key().is_some()
}

/// The JSON body POSTed to each endpoint (SPEC §4.2); approx mode's says so (§3a), exact
/// mode's is as it always was.
pub fn callback_body(
    window_start: &str,
    secs: i64,
    count: u64,
    scope: &str,
    approx: bool,
) -> String {
    let mode = if approx { r#","count":"approx""# } else { "" };
    format!(
        r#"{{"window_start":"{window_start}","window_secs":{secs},"unique_requests":{count},"scope":"{scope}"{mode}}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::callback_body;

    #[test]
    fn body_matches_the_contract() {
        assert_eq!(
            callback_body("2026-11-24T14:05:00Z", 60, 1234, "local", false),
            r#"{"window_start":"2026-11-24T14:05:00Z","window_secs":60,"unique_requests":1234,"scope":"local"}"#
        );
        assert_eq!(
            callback_body("2026-11-24T14:05:00Z", 60, 1234, "fleet", true),
            r#"{"window_start":"2026-11-24T14:05:00Z","window_secs":60,"unique_requests":1234,"scope":"fleet","count":"approx"}"#
        );
    }
}

#[cfg(test)]
mod clock_tests {
    use std::sync::atomic::AtomicI64;
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::Duration;

    use log::{Log, Metadata, Record};
    use tokio::sync::watch;

    use crate::Shared;
    use crate::config::Config;
    use crate::countlog::TARGET;
    use crate::window::Clock;

    /// A clock the test sets by hand.
    struct ManualClock(AtomicI64);

    impl Clock for ManualClock {
        fn now_ms(&self) -> i64 {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// Captures count-log records (this test binary's only logger).
    struct Capture(Mutex<Vec<String>>);

    impl Log for Capture {
        fn enabled(&self, m: &Metadata) -> bool {
            m.target() == TARGET
        }
        fn log(&self, r: &Record) {
            if r.target() == TARGET {
                self.0.lock().unwrap().push(r.args().to_string());
            }
        }
        fn flush(&self) {}
    }

    fn capture() -> &'static Capture {
        static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
        CAPTURE.get_or_init(|| {
            let capture: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
            log::set_logger(capture).expect("only logger in this binary");
            log::set_max_level(log::LevelFilter::Info);
            capture
        })
    }

    fn reported() -> Vec<String> {
        capture()
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("unique_requests"))
            .map(|l| {
                let word = |k: &str| {
                    l.split(' ')
                        .find_map(|w| w.strip_prefix(k))
                        .unwrap_or("")
                        .to_string()
                };
                let partial = if l.contains("partial=true") {
                    " partial"
                } else {
                    ""
                };
                format!(
                    "{}={}{partial}",
                    word("window_start="),
                    word("unique_requests=")
                )
            })
            .collect()
    }

    /// The wall clock steps back into a reported window and then leaps ahead: windows are
    /// still reported in order, each once, empty ones included, and no id is lost.
    #[tokio::test(start_paused = true)]
    async fn clock_steps_never_repeat_or_skip_a_window() {
        capture();
        let config = Config::load_from(["verve", "--window-secs", "60", "--grace-ms", "1000"])
            .map_err(|e| e.message)
            .unwrap();
        let clock = Arc::new(ManualClock(AtomicI64::new(120_500)));
        let shared = Arc::new(Shared::new(config, clock.clone(), None, None, None).unwrap());
        let (finish, finishing) = watch::channel(false);
        let reporter = tokio::spawn(super::run(Arc::clone(&shared), finishing));
        let set = |ms: i64| clock.0.store(ms, std::sync::atomic::Ordering::SeqCst);
        let settle = || tokio::time::sleep(Duration::from_secs(1));

        for id in [1, 2, 3] {
            shared
                .windows
                .admit(clock.now_ms())
                .unwrap()
                .window()
                .insert(id);
        }
        set(180_500); // window 120 ended, still within its grace
        shared
            .windows
            .admit(clock.now_ms())
            .unwrap()
            .window()
            .insert(4);
        settle().await;
        assert!(reported().is_empty(), "reported before its grace ran out");
        set(181_000);
        settle().await;
        assert_eq!(reported(), ["1970-01-01T00:02:00Z=3"]);

        set(150_000); // stepped back into the reported window: counts in the oldest open one
        shared
            .windows
            .admit(clock.now_ms())
            .unwrap()
            .window()
            .insert(5);
        settle().await;
        assert_eq!(reported().len(), 1, "a window was reported again");

        set(400_000); // leapt ahead: the windows in between are reported, empty ones with 0
        settle().await;
        assert_eq!(
            reported(),
            [
                "1970-01-01T00:02:00Z=3",
                "1970-01-01T00:03:00Z=2",
                "1970-01-01T00:04:00Z=0",
                "1970-01-01T00:05:00Z=0",
            ]
        );
        finish.send(true).unwrap();
        reporter.await.unwrap();
        assert_eq!(reported().last().unwrap(), "1970-01-01T00:06:00Z=0 partial");
        assert_eq!(reported().len(), 5);
    }
}
