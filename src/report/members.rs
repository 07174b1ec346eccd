//! Membership (SPEC §6.3): the heartbeat that makes an instance one of the fleet's members,
//! the clock offset against Redis's `TIME` and the generation Redis is in, both measured by
//! the same round trip, and the self-fence of an instance that cannot renew its heartbeat
//! or whose clock is beyond the budget.
//!
//! A member is an instance the window barrier waits for. An instance that is not one (not
//! yet, cut off, clock beyond the budget) answers every request 503: an `ok` it gave could
//! be missing from a count the fleet fixes without waiting for it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::Shared;
use crate::store::StoreError;

/// How long a heartbeat keeps an instance a member without renewal.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(3);

/// How often the heartbeat is renewed.
const BEAT_EVERY: Duration = Duration::from_millis(500);

/// How long after a change of generation the members are trusted: every live member has
/// heartbeated into the new Redis by then — one TTL, plus the time to notice that the old
/// one is gone and reconnect (the longest backoff, a Redis timeout), plus a heartbeat's
/// interval and round trip (another Redis timeout). A member slower than that has been
/// unable to renew its heartbeat for longer than the fence allows: it fenced itself.
pub fn trust_period(config: &crate::config::Config) -> Duration {
    HEARTBEAT_TTL
        + crate::store::RECONNECT_MAX
        + BEAT_EVERY
        + 2 * Duration::from_millis(config.redis_timeout_ms)
}

/// An instance with no heartbeat acknowledged for this long fences itself: less than the TTL
/// (counted from when the last acknowledged one was sent, before Redis received it), so it
/// stops answering before the fleet's members forget it.
const FENCE_AFTER: Duration = Duration::from_millis(2500);

/// How often the fence is looked at while a heartbeat is under way.
const FENCE_CHECK: Duration = Duration::from_millis(100);

/// Renews this instance's heartbeat until the task is stopped, measuring the clock offset and
/// following the generation; fences the instance (see the module docs) while it is no member.
/// An instance whose settings differ from the fleet's, or whose clock is surely more than
/// half the skew budget from Redis's (so that any two members are within the budget of each
/// other), withdraws its heartbeat instead.
pub async fn run(shared: Arc<Shared>) {
    let Some(store) = shared.store.as_ref() else {
        return;
    };
    // Windows before the oldest open one are not this instance's: it never answered for them.
    store.serve_from(shared.windows.oldest_start());
    let budget_ms = shared.settings.max_clock_skew_ms as i64 / 2;
    let mut last_ack: Option<Instant> = None;
    let mut clock_beyond = false;
    let mut failing = false;
    // When this instance last made every connection start again (see below).
    let mut reconnected: Option<Instant> = None;
    loop {
        let sent = Instant::now();
        let local_sent = shared.clock.now_ms();
        let join = !shared.settings_differ.load(Ordering::Acquire) && !clock_beyond;
        let beat = store.heartbeat(HEARTBEAT_TTL, join);
        tokio::pin!(beat);
        // A heartbeat that takes long (a slow link, a long --redis-timeout-ms) must not hold
        // the fence back: it is looked at while the heartbeat is under way too.
        let outcome = loop {
            tokio::select! {
                outcome = &mut beat => break outcome,
                () = tokio::time::sleep(FENCE_CHECK) => {
                    fence(&shared, is_member(last_ack, clock_beyond));
                }
            }
        };
        match outcome {
            Ok(beat) => {
                failing = false;
                let local_received = shared.clock.now_ms();
                // Redis read its clock somewhere within the round trip: the offset is known
                // to within half of it (and the clocks' milliseconds, truncated).
                let offset_ms = beat.redis_ms - (local_sent + local_received) / 2;
                let uncertainty_ms = (local_received - local_sent) / 2 + 2;
                shared
                    .metrics
                    .clock_offset_us
                    .store(offset_ms * 1000, Ordering::Relaxed);
                let beyond = offset_ms.abs() - uncertainty_ms > budget_ms;
                if beyond != clock_beyond {
                    clock_beyond = beyond;
                    if beyond {
                        log::error!(
                            "this instance's clock is {offset_ms} ms off Redis's (beyond half of --max-clock-skew-ms {}): fenced, answering 503 until it is back",
                            shared.settings.max_clock_skew_ms
                        );
                    } else {
                        log::warn!(
                            "this instance's clock is within the budget again ({offset_ms} ms off Redis's)"
                        );
                    }
                }
                if store.observe_generation(&beat.generation, beat.up_for) {
                    log::warn!(
                        "Redis is in a new generation (restarted or failed over): re-adding this instance's windows"
                    );
                }
                if join && !clock_beyond {
                    last_ack = Some(sent);
                }
                shared.metrics.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                shared
                    .metrics
                    .heartbeat_failures
                    .fetch_add(1, Ordering::Relaxed);
                if !failing {
                    log::warn!("renewing this instance's heartbeat failed: {e}");
                    failing = true;
                }
                // Connected, but nothing answered for as long as the fence allows: the
                // server stopped answering under live connections (a stalled or paused
                // primary, while a replica may be promoted). Start every connection again,
                // once per fence period (each attempt waits out the connect timeout).
                let stuck = !is_member(last_ack, false)
                    && reconnected.is_none_or(|at| at.elapsed() >= FENCE_AFTER);
                if e == StoreError::Timeout && stuck {
                    log::warn!(
                        "Redis has not answered for {} ms: reconnecting every connection",
                        FENCE_AFTER.as_millis()
                    );
                    store.reconnect();
                    reconnected = Some(Instant::now());
                }
            }
        }
        fence(&shared, is_member(last_ack, clock_beyond));
        shared.beats.fetch_add(1, Ordering::Release);
        tokio::time::sleep_until(sent + BEAT_EVERY).await;
    }
}

/// Whether this instance is a member: a heartbeat sent less than [`FENCE_AFTER`] ago was
/// acknowledged, and its clock is within the budget.
fn is_member(last_ack: Option<Instant>, clock_beyond: bool) -> bool {
    !clock_beyond && last_ack.is_some_and(|at| at.elapsed() < FENCE_AFTER)
}

/// Fences the instance, or lifts its fence, saying so when that changes.
fn fence(shared: &Shared, member: bool) {
    let was_fenced = shared.fenced.swap(!member, Ordering::AcqRel);
    if was_fenced && member {
        log::info!("a member of the fleet: serving");
    } else if !was_fenced && !member {
        shared.metrics.fences.fetch_add(1, Ordering::Relaxed);
        log::error!(
            "fenced: no heartbeat acknowledged for {} ms (or the clock is beyond the budget); answering 503 until one is",
            FENCE_AFTER.as_millis()
        );
    }
}

/// Waits until the first heartbeat round has ended (acknowledged or not), at most `within`:
/// an instance starts fenced and serves only once it is a member.
pub async fn first_beat(shared: &Shared, within: Duration) {
    let deadline = Instant::now() + within;
    while shared.beats.load(Ordering::Acquire) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// At shutdown, once the reporter is done: marks the windows still open drained (their
/// requests are answered, their ids re-added if Redis is in a new generation), then
/// withdraws the heartbeat, so the barrier waits for this instance no longer — a rolling
/// deploy never stalls it. Bounded by `within`.
pub async fn leave(shared: &Shared, within: Duration) {
    let Some(store) = shared.store.as_ref() else {
        return;
    };
    let leaving = async {
        let generation = store.generation();
        if !shared.settings_differ.load(Ordering::Acquire) {
            for window in shared.windows.open() {
                // Approx mode: the sketch's last updates go to Redis before the mark.
                if (window.epoch != generation.seq || window.sketch().is_some())
                    && super::fleet::resync(shared, store, &window).await.is_err()
                {
                    continue;
                }
                let expiry = super::fleet::expire_at(shared, window.start);
                let _ = store.mark(window.start, &generation.id, expiry).await;
            }
        }
        store.heartbeat(HEARTBEAT_TTL, false).await
    };
    let left = tokio::time::timeout(within, leaving).await;
    // Withdrawn, or expiring within a TTL: either way the barrier stops waiting for it.
    shared.left.store(true, Ordering::Release);
    match left {
        Ok(Ok(_)) => log::info!("left the fleet: heartbeat withdrawn"),
        Ok(Err(e)) => log::warn!(
            "withdrawing the heartbeat failed ({e}); it expires in {} s",
            HEARTBEAT_TTL.as_secs()
        ),
        Err(_) => log::warn!(
            "withdrawing the heartbeat timed out; it expires in {} s",
            HEARTBEAT_TTL.as_secs()
        ),
    }
}
