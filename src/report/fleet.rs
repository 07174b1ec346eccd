//! Fleet reporting (SPEC §6): the fleet-wide count of a final window and its one delivery.
//!
//! Every instance reads the fleet count (the sum of `SCARD` over the window's shard sets)
//! once its own copy of the window is final, after re-adding its ids if Redis lost them.
//! One instance per window, elected with a short lease that it renews while delivering,
//! sends the window's callbacks and marks the window done; if it dies, another takes over
//! when the lease lapses. If the count cannot be read in time, the local count is logged
//! as partial and the fleet report retries in the background until a bounded deadline.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Partial, log_count, publish};
use crate::Shared;
use crate::config::Config;
use crate::http::query::{Endpoint, EndpointBuf};
use crate::store::{Announced, EndpointCaps, Store, StoreError};
use crate::window::{Window, format_utc};

/// How long a leader's lease lasts without renewal; a dead leader is replaced after this.
const LEASE: Duration = Duration::from_secs(3);

/// How long after a window's last possible report its keys outlive it.
const EXPIRY_MARGIN_SECS: i64 = 30;

/// Pause between tries while Redis is unreachable.
const RETRY: Duration = Duration::from_millis(500);

/// Longest that re-adding waits after a reconnection for the instance's other connections.
const RECONNECT_SETTLE: Duration = Duration::from_secs(1);

/// Seconds after a window's start at which its keys expire: about two windows and the
/// grace, plus a margin for a late fleet report. The store's batcher adds it to every
/// window's start itself (each write of a shard set carries its expiry).
pub fn expire_after(config: &Config) -> i64 {
    let grace_secs = config.grace_ms.div_ceil(1000) as i64;
    2 * i64::from(config.window_secs) + grace_secs + EXPIRY_MARGIN_SECS
}

/// Epoch second at which a window's keys expire (see [`expire_after`]).
pub fn expire_at(shared: &Shared, window_start: i64) -> i64 {
    window_start + expire_after(&shared.settings)
}

/// Until when a window's fleet report is attempted (its keys are still there).
fn report_deadline_ms(shared: &Shared, window_start: i64) -> i64 {
    (expire_at(shared, window_start) - 5) * 1000
}

/// Whether the window's fleet report is past its deadline; if so, says so (log, metric).
fn past_deadline(shared: &Shared, window_start: i64, why: &str) -> bool {
    if shared.clock.now_ms() < report_deadline_ms(shared, window_start) {
        return false;
    }
    shared
        .metrics
        .fleet_reports_abandoned
        .fetch_add(1, Ordering::Relaxed);
    log::warn!(
        "window {}: fleet report given up at its deadline: {why}",
        format_utc(window_start * 1000, false)
    );
    true
}

/// How long the reporter waits for the fleet count before logging the local one as partial.
fn read_timeout(shared: &Shared) -> Duration {
    let redis =
        Duration::from_millis(shared.settings.redis_timeout_ms * 4).max(Duration::from_secs(1));
    let half_window = Duration::from_millis(shared.windows.secs() as u64 * 500);
    redis.min(half_window)
}

/// Reports a final window in fleet mode.
pub async fn report(shared: &Arc<Shared>, window: Arc<Window>) {
    let Some(store) = shared.store.as_ref() else {
        return;
    };
    if outside_fleet(shared, window.start) {
        log_local(shared, &window);
        return;
    }
    let (owner, start) = (Arc::clone(shared), window.start);
    shared.spawn(async move {
        if let Some(store) = &owner.store
            && let Err(e) = store.expire_window(start, expire_at(&owner, start)).await
        {
            log::warn!("window {start}: re-applying its keys' expiry failed: {e}");
        }
    });
    match tokio::time::timeout(read_timeout(shared), fleet_count(shared, store, &window)).await {
        Ok(Ok(count)) => {
            log_count(shared, window.start, count, "fleet", None);
            shared.spawn(deliver(Arc::clone(shared), window.start, count));
        }
        outcome => {
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_string(),
            };
            log::warn!(
                "window {}: fleet count unavailable ({why}); logging the local count",
                format_utc(window.start * 1000, false)
            );
            log_local(shared, &window);
            shared.spawn(report_later(Arc::clone(shared), window));
        }
    }
}

/// Logs the window's local count, as partial: the fleet's is not this instance's to give.
fn log_local(shared: &Shared, window: &Window) {
    let count = window.count() as u64;
    log_count(shared, window.start, count, "local", Some(Partial::Store));
}

/// Whether this instance stands outside the fleet because its settings differ (it is not
/// ready): then it reads no count, takes no lease and sends nothing — its windows are not
/// the fleet's. Says so for the window.
fn outside_fleet(shared: &Shared, window_start: i64) -> bool {
    let outside = shared.settings_differ.load(Ordering::Acquire);
    if outside {
        log::warn!(
            "window {}: not reported to the fleet: this instance's settings differ from the fleet's",
            format_utc(window_start * 1000, false)
        );
    }
    outside
}

/// Re-adds this instance's ids if Redis may have lost them, then reads the fleet count.
async fn fleet_count(shared: &Shared, store: &Store, window: &Window) -> Result<u64, StoreError> {
    let lost = window.epoch != store.epoch()
        || store
            .any_missing(window.start, &window.touched_shards())
            .await?;
    if lost {
        resync(shared, store, window).await?;
    }
    store.count(window.start).await
}

/// Re-adds a window's ids and endpoints to the store, the endpoints within the bounds as at
/// registration (so those registered first elsewhere keep their places).
async fn resync(shared: &Shared, store: &Store, window: &Window) -> Result<(), StoreError> {
    let ids = window.ids();
    let endpoints: Vec<(Box<str>, String)> = window
        .endpoints()
        .into_iter()
        .filter_map(|url| {
            let mut buf = EndpointBuf::new();
            let site = Endpoint::parse_decoded(&url, &mut buf)
                .ok()?
                .site()
                .to_string();
            Some((url, site))
        })
        .collect();
    if ids.is_empty() && endpoints.is_empty() {
        return Ok(());
    }
    let refused = store
        .readd(
            window.start,
            &ids,
            &endpoints,
            endpoint_caps(shared),
            expire_at(shared, window.start),
        )
        .await?;
    shared.metrics.resyncs.fetch_add(1, Ordering::Relaxed);
    log::info!(
        "re-added {} ids of window {} to Redis",
        ids.len(),
        format_utc(window.start * 1000, false)
    );
    if refused > 0 {
        // Redis lost the window and others registered endpoints before these came back.
        log::warn!(
            "window {}: {refused} of this instance's endpoints no longer fit the fleet's bounds when re-added; they are not called",
            format_utc(window.start * 1000, false)
        );
    }
    Ok(())
}

/// The bounds on a window's endpoints, as this instance applies them fleet-wide.
pub fn endpoint_caps(shared: &Shared) -> EndpointCaps {
    EndpointCaps {
        per_window: shared.settings.callback_max_endpoints,
        per_domain: shared.settings.callback_max_per_domain,
    }
}

/// After the store reconnects (it may have restarted empty), re-adds the open windows' ids
/// at once, so that every instance's ids are back before any instance reads a count.
pub async fn resync_on_reconnect(shared: Arc<Shared>) {
    let Some(store) = shared.store.as_ref() else {
        return;
    };
    let mut reconnects = store.reconnections();
    loop {
        if reconnects.changed().await.is_err() {
            return;
        }
        // Every connection (one per lane, and the bookkeeping one) comes back soon after the
        // others: one re-add for all of them, once they are up (or the wait is over).
        let settled = tokio::time::Instant::now() + RECONNECT_SETTLE;
        while !store.is_connected() && tokio::time::Instant::now() < settled {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        reconnects.borrow_and_update();
        for window in shared.windows.open() {
            for _ in 0..5 {
                match resync(&shared, store, &window).await {
                    Ok(()) => break,
                    Err(e) => {
                        log::warn!("re-adding window {} failed: {e}", window.start);
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        }
    }
}

/// Retries a window's fleet report while Redis is unreachable, up to its deadline.
async fn report_later(shared: Arc<Shared>, window: Arc<Window>) {
    let Some(store) = shared.store.as_ref() else {
        return;
    };
    let start = window.start;
    let shown = format_utc(start * 1000, false);
    loop {
        tokio::time::sleep(RETRY).await;
        if past_deadline(&shared, start, "Redis unreachable until then")
            || outside_fleet(&shared, start)
        {
            return;
        }
        let read =
            tokio::time::timeout(read_timeout(&shared), fleet_count(&shared, store, &window)).await;
        if let Ok(Ok(count)) = read {
            log::warn!("window {shown}: fleet count {count} read late; sending its fleet report");
            drop(window);
            deliver(shared, start, count).await;
            return;
        }
    }
}

/// Sends the window's callbacks if this instance wins (or inherits) the lease; otherwise
/// waits for the leader's done mark, taking over if the lease lapses first.
async fn deliver(shared: Arc<Shared>, start: i64, count: u64) {
    let Some(store) = shared.store.as_ref() else {
        return;
    };
    let shown = format_utc(start * 1000, false);
    let expiry = expire_at(&shared, start);
    loop {
        if past_deadline(&shared, start, "no instance completed its callbacks")
            || outside_fleet(&shared, start)
        {
            return;
        }
        match store.is_done(start).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(_) => {
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        match store.lead(start, LEASE).await {
            Ok(true) => {}
            Ok(false) if !shared.ready.load(Ordering::Acquire) => {
                return; // shutting down: the leader, or a live instance, finishes this window
            }
            Ok(false) => {
                tokio::time::sleep(LEASE / 2).await;
                continue;
            }
            Err(_) => {
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        shared
            .metrics
            .leader_elections
            .fetch_add(1, Ordering::Relaxed);
        let endpoints = match store.endpoints(start).await {
            Ok(endpoints) => endpoints,
            Err(_) => {
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let endpoints = bounded(&shared, &shown, endpoints);
        let batch = publish(&shared, start, count, "fleet", endpoints);
        while batch.pending() > 0 {
            tokio::time::sleep(LEASE / 3).await;
            let _ = store.lead(start, LEASE).await;
        }
        for _ in 0..5 {
            if store.mark_done(start, expiry).await.is_ok() {
                return;
            }
            tokio::time::sleep(RETRY).await;
        }
        log::warn!(
            "window {shown}: callbacks sent but the done mark failed; another instance may repeat them"
        );
        return;
    }
}

/// The fleet's endpoints for one window within this instance's bounds: normalized (an
/// instance of another version may have stored another spelling), each once, at most
/// `--callback-max-per-domain` per domain and `--callback-max-endpoints` in all. The bounds
/// are enforced fleet-wide at registration (the store's script: the first registered win),
/// so this changes nothing in a fleet of this version with one set of bounds; it stays as a
/// defence against a set written otherwise (another version's plain `SADD`, or instances
/// with larger bounds), and there it keeps an arbitrary subset.
fn bounded(shared: &Shared, shown: &str, stored: Vec<String>) -> Vec<Box<str>> {
    let max = shared.settings.callback_max_endpoints as usize;
    let per_domain = shared.settings.callback_max_per_domain as usize;
    let mut seen = std::collections::HashSet::new();
    let mut domains = std::collections::HashMap::<u64, usize>::new();
    let mut kept = Vec::new();
    let mut dropped = 0usize;
    for url in &stored {
        let mut buf = EndpointBuf::new();
        let Ok(endpoint) = Endpoint::parse_decoded(url, &mut buf) else {
            dropped += 1;
            continue;
        };
        if !seen.insert(endpoint.key()) {
            continue;
        }
        let taken = domains.entry(endpoint.domain_key()).or_default();
        if kept.len() >= max || *taken >= per_domain {
            dropped += 1;
            continue;
        }
        *taken += 1;
        kept.push(endpoint.as_str().into());
    }
    if dropped > 0 {
        shared
            .metrics
            .endpoints_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
        log::warn!(
            "window {shown}: {} endpoints fleet-wide; {dropped} beyond the bounds are not called",
            stored.len()
        );
    }
    kept
}

/// How long after a reconnection the announcement is renewed (the instance's other
/// connections come back meanwhile).
const RECONNECT_ANNOUNCE: Duration = Duration::from_millis(200);

/// How long the fleet's settings stay announced without a renewal: a fleet that changed its
/// settings everywhere at once (all instances stopped) starts again after this.
const SETTINGS_TTL: Duration = Duration::from_secs(30);

/// The settings every instance of a fleet must share, as announced: those that shape keys
/// and windows (SPEC §6.2), and those that decide what a count holds — the grace and skew
/// budget place every instance's cutoff before every other's count (with two graces, an
/// `ok` can come after another instance read the count), and the endpoint bounds decide
/// which endpoints the fleet calls.
pub fn settings_fingerprint(config: &crate::config::Config) -> String {
    format!(
        "window_secs={} redis_shards={} count=exact grace_ms={} max_clock_skew_ms={} \
         callback_max_endpoints={} callback_max_per_domain={}",
        config.window_secs,
        config.redis_shards(),
        config.grace_ms,
        config.max_clock_skew_ms,
        config.callback_max_endpoints,
        config.callback_max_per_domain,
    )
}

/// Compares this instance's settings with the fleet's at start-up, taking the announcement
/// if there is none (the first instance of a fleet): `Ok(true)` (and says why) when they
/// differ. Redis must answer within `within` (a write stall longer than the Redis timeout is
/// retried): an instance that cannot tell must not serve, since it might not belong to the
/// fleet (found by review: one started during a stall served under another layout).
pub async fn check_settings(
    config: &crate::config::Config,
    store: &Store,
    within: Duration,
) -> Result<bool, String> {
    let ours = settings_fingerprint(config);
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match store.announce(&ours, SETTINGS_TTL, true).await {
            Ok(Announced::Theirs(theirs)) => {
                say_settings_differ(config, &ours, &theirs);
                return Ok(true);
            }
            Ok(_) => return Ok(false),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "--redis-url: cannot check the fleet's settings under --redis-prefix {}: {e}",
                    config.redis_prefix
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn say_settings_differ(config: &crate::config::Config, ours: &str, theirs: &str) {
    log::error!(
        "the fleet under --redis-prefix {} runs with {theirs}, this instance with {ours}: \
         not ready, counting nothing (a change of these settings takes a new --redis-prefix)",
        config.redis_prefix
    );
}

/// Renews the announcement every third of its lifetime, and at once after the store
/// reconnects (Redis may have lost it), following the fleet. An instance whose settings
/// differ stays unready and only reads the announcement: it claims it only after none has
/// been seen for a whole lifetime (the fleet is gone), so that after Redis lost it the
/// fleet's instances, renewing within a third of that, announce theirs again first.
pub async fn announce_settings(shared: Arc<Shared>) {
    let Some(store) = shared.store.as_ref() else {
        return;
    };
    let ours = settings_fingerprint(&shared.settings);
    let mut reconnects = store.reconnections();
    let mut absent_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(SETTINGS_TTL / 3) => {}
            changed = reconnects.changed() => {
                if changed.is_err() {
                    return;
                }
                reconnects.borrow_and_update();
                tokio::time::sleep(RECONNECT_ANNOUNCE).await; // the other connections
            }
        }
        let was = shared.settings_differ.load(Ordering::Acquire);
        let claim = !was || absent_since.is_some_and(|t| t.elapsed() >= SETTINGS_TTL);
        let differ = match store.announce(&ours, SETTINGS_TTL, claim).await {
            Ok(Announced::Absent) => {
                absent_since.get_or_insert_with(tokio::time::Instant::now);
                continue;
            }
            Ok(Announced::Ours) => false,
            Ok(Announced::Theirs(theirs)) => {
                if !was {
                    say_settings_differ(&shared.settings, &ours, &theirs);
                }
                true
            }
            Err(e) => {
                log::debug!("renewing this instance's settings failed: {e}");
                continue;
            }
        };
        absent_since = None;
        shared.settings_differ.store(differ, Ordering::Release);
        if was && !differ {
            log::info!("the fleet's settings match this instance's now: ready");
        }
    }
}
