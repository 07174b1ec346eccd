//! The reporter: closes each window once it is final and reports it.
//!
//! A window is final `grace` after it ends and once the requests admitted to it have finished.
//! Then its count goes to the count log (always) and its endpoints to the callback queue. The
//! reporter wakes at least every [`MAX_NAP`], computing deadlines from the wall clock, so a
//! clock that steps (either way) is followed: windows are reported in order, each once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use crate::Shared;
use crate::callback::Delivery;
use crate::countlog;
use crate::window::format_utc;

/// Longest sleep between looks at the wall clock.
const MAX_NAP: Duration = Duration::from_millis(200);

/// How often a final window's in-flight count is checked while requests finish.
const DRAIN_POLL: Duration = Duration::from_millis(1);

/// Reports windows as they become final until `finish` turns true; then reports the windows
/// that already ended (waiting out their grace) and the open one as `partial=true`.
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
    loop {
        let oldest = shared.windows.oldest_start();
        let end = (oldest + secs) * 1000;
        let now = shared.clock.now_ms();
        if end <= now {
            let due = end + grace_ms;
            if now < due {
                tokio::time::sleep(Duration::from_millis((due - now) as u64)).await;
            }
            report_oldest(&shared, false).await;
        } else {
            if oldest * 1000 <= now {
                report_oldest(&shared, true).await;
            }
            return;
        }
    }
}

/// Closes the oldest open window, waits for its requests, and reports it.
async fn report_oldest(shared: &Shared, partial: bool) {
    let window = shared.windows.rotate();
    while window.inflight() > 0 {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let count = window.count();
    let secs = shared.windows.secs();
    let window_start: Arc<str> = format_utc(window.start * 1000, false).into();
    log::info!(target: countlog::TARGET,
        "unique_requests window_start={window_start} window_secs={secs} unique_requests={count} scope=local{}",
        if partial { " partial=true" } else { "" });
    shared
        .metrics
        .windows_reported
        .fetch_add(1, Ordering::Relaxed);
    shared
        .metrics
        .last_window_ids
        .store(count as u64, Ordering::Relaxed);
    if partial {
        return; // a window cut short is never POSTed
    }
    let body: Arc<str> = callback_body(&window_start, secs, count, "local").into();
    let mut dropped = 0usize;
    for endpoint in window.endpoints() {
        let delivery = Delivery {
            endpoint,
            window_start: Arc::clone(&window_start),
            body: Arc::clone(&body),
        };
        if !shared.callbacks.submit(delivery) {
            dropped += 1;
        }
    }
    if dropped > 0 {
        log::warn!("callback queue full: dropped {dropped} deliveries for window {window_start}");
    }
}

/// The JSON body POSTed to each endpoint (SPEC §4.2).
pub fn callback_body(window_start: &str, secs: i64, count: usize, scope: &str) -> String {
    format!(
        r#"{{"window_start":"{window_start}","window_secs":{secs},"unique_requests":{count},"scope":"{scope}"}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::callback_body;

    #[test]
    fn body_matches_the_contract() {
        assert_eq!(
            callback_body("2026-11-24T14:05:00Z", 60, 1234, "local"),
            r#"{"window_start":"2026-11-24T14:05:00Z","window_secs":60,"unique_requests":1234,"scope":"local"}"#
        );
    }
}
