//! The status page (`GET /`) and its data (`GET /api/verve/stats`).
//!
//! The reporter tells [`Status`] about every window it reports and every batch of callbacks
//! it sends; the last [`HISTORY`] windows are kept. The page is one self-contained HTML file
//! (`status.html`, no external assets) whose script polls the JSON and draws the chart.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::Instant;

use parking_lot::Mutex;

use crate::Shared;
use crate::callback::Batch;
use crate::metrics::Outcome;
use crate::window::{format_utc, window_start};

/// Windows kept for the page's chart.
pub const HISTORY: usize = 60;

/// The page, served as is.
pub const PAGE: &str = include_str!("status.html");

/// One reported window as the page shows it.
struct Reported {
    start: i64,
    count: u64,
    scope: &'static str,
    partial: bool,
    /// The callbacks this instance sent for the window (none: no endpoint, a cut-short
    /// window, or, in a fleet, another instance was the window's leader).
    callbacks: Option<Batch>,
}

/// What the status page shows besides live counters: recent windows.
pub struct Status {
    started: Instant,
    windows: Mutex<VecDeque<Reported>>,
}

impl Default for Status {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            windows: Mutex::new(VecDeque::with_capacity(HISTORY + 1)),
        }
    }
}

impl Status {
    /// Records a window's logged count. A fleet window first logged with its local count
    /// (`partial`) is replaced when its fleet count arrives.
    pub fn reported(&self, start: i64, count: u64, scope: &'static str, partial: bool) {
        let mut windows = self.windows.lock();
        if let Some(known) = windows.iter_mut().find(|w| w.start == start) {
            known.count = count;
            known.scope = scope;
            known.partial = partial;
            return;
        }
        let at = windows.partition_point(|w| w.start < start);
        windows.insert(
            at,
            Reported {
                start,
                count,
                scope,
                partial,
                callbacks: None,
            },
        );
        while windows.len() > HISTORY {
            windows.pop_front();
        }
    }

    /// Attaches the batch of callbacks sent for a reported window.
    pub fn callbacks_sent(&self, start: i64, batch: &Batch) {
        if let Some(known) = self.windows.lock().iter_mut().find(|w| w.start == start) {
            known.callbacks = Some(Batch::clone(batch));
        }
    }
}

/// The JSON behind the page (documented in docs/operations.md, "Status page").
pub fn stats_json(shared: &Shared) -> String {
    let now = shared.clock.now_ms();
    let secs = shared.windows.secs();
    let current = window_start(now, secs);
    let current_count = shared
        .windows
        .open()
        .iter()
        .find(|w| w.start == current)
        .map_or(0, |w| w.count());
    let metrics = &shared.metrics;
    let mut json = String::with_capacity(512 + HISTORY * 160);
    let _ = write!(
        json,
        r#"{{"mode":"{}","count_mode":"{}","version":"{}","uptime_secs":{},"now":"{}","window_secs":{secs},"ready":{},"#,
        if shared.store.is_some() {
            "fleet"
        } else {
            "single"
        },
        shared.settings.count.as_str(),
        env!("CARGO_PKG_VERSION"),
        shared.status.started.elapsed().as_secs(),
        format_utc(now, true),
        shared.is_ready(),
    );
    let _ = write!(
        json,
        r#""current":{{"window_start":"{}","count":{current_count}}},"requests":{{"ok":{},"bad_request":{},"unavailable":{}}},"#,
        format_utc(current * 1000, false),
        metrics.requests(Outcome::Ok),
        metrics.requests(Outcome::BadRequest),
        metrics.requests(Outcome::Unavailable),
    );
    match &shared.store {
        Some(store) => {
            let _ = write!(
                json,
                r#""redis":{{"connected":{},"errors":{},"reconnections":{}}},"#,
                store.is_connected(),
                metrics.store_errors.load(Ordering::Relaxed),
                store.epoch(),
            );
        }
        None => json.push_str(r#""redis":null,"#),
    }
    json.push_str(r#""windows":["#);
    for (i, w) in shared.status.windows.lock().iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let _ = write!(
            json,
            r#"{{"window_start":"{}","count":{},"scope":"{}","partial":{},"callbacks":"#,
            format_utc(w.start * 1000, false),
            w.count,
            w.scope,
            w.partial
        );
        match &w.callbacks {
            Some(batch) => {
                let _ = write!(
                    json,
                    r#"{{"delivered":{},"failed":{},"pending":{}}}}}"#,
                    batch.delivered(),
                    batch.failed(),
                    batch.pending()
                );
            }
            None => json.push_str("null}"),
        }
    }
    json.push_str("]}");
    json
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callback::BatchState;

    #[test]
    fn keeps_the_last_windows_in_order_and_replaces_partial_ones() {
        let status = Status::default();
        for start in (0..(HISTORY as i64 + 5)).rev() {
            status.reported(start * 60, start as u64, "local", false);
        }
        let windows = status.windows.lock();
        assert_eq!(windows.len(), HISTORY);
        assert_eq!(windows.front().map(|w| w.start), Some(5 * 60));
        assert!(
            windows
                .iter()
                .zip(windows.iter().skip(1))
                .all(|(a, b)| a.start < b.start)
        );
        drop(windows);

        status.reported(7 * 60, 3, "local", true);
        status.reported(7 * 60, 9, "fleet", false);
        status.callbacks_sent(7 * 60, &BatchState::new(2));
        let windows = status.windows.lock();
        let w = windows.iter().find(|w| w.start == 7 * 60).unwrap();
        assert_eq!((w.count, w.scope, w.partial), (9, "fleet", false));
        assert_eq!(w.callbacks.as_ref().map(|b| b.pending()), Some(2));
    }
}
