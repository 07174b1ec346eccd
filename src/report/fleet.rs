//! Fleet reporting (SPEC §6): the fleet-wide count of a final window and its one delivery.
//!
//! Every instance reads the fleet count (the sum of `SCARD` over the window's shard sets)
//! once its own copy of the window is final, after re-adding its ids if Redis lost them.
//! One instance per window, elected with a short lease that it renews while delivering,
//! sends the window's callbacks and marks the window done; if it dies, another takes over
//! when the lease lapses. If the count cannot be read in time, the local count is logged
//! as partial and the fleet report retries in the background until a bounded deadline.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Partial, log_count, post, stream_record};
use crate::Shared;
use crate::http::query::{Endpoint, EndpointBuf};
use crate::sketch::HashKey;
use crate::store::{Announced, EndpointCaps, Fixed, Generation, Store, StoreError};
use crate::window::{Window, format_utc};

/// How long a leader's lease lasts without renewal; a dead leader is replaced after this.
const LEASE: Duration = Duration::from_secs(3);

/// Pause between tries while Redis is unreachable.
const RETRY: Duration = Duration::from_millis(500);

/// Epoch second at which a window's keys expire (see [`crate::config::Config::expire_after`]).
pub fn expire_at(shared: &Shared, window_start: i64) -> i64 {
    window_start + shared.settings.expire_after()
}

/// A window's end + grace (epoch ms): no count of it is fixed before Redis's clock reads it.
fn end_of_grace_ms(shared: &Shared, window_start: i64) -> i64 {
    (window_start + shared.windows.secs()) * 1000 + shared.settings.grace_ms as i64
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

/// Longest a late window whose count is fixed waits for an earlier late window's fleet line
/// (counts fixed together after Redis came back are milliseconds apart): kept short, as its
/// delivery and the republishing of its count wait with it.
const LATE_ORDER_WAIT: Duration = Duration::from_secs(1);

/// Pause between the steps of closing a window (marks awaited, a count not yet fixed).
const STEP: Duration = Duration::from_millis(50);

/// Longest the leader waits for the members' drained marks, from its snapshot of the members;
/// then it counts without the missing ones (a member that heartbeats but never marks is
/// stuck), and says so.
const BARRIER_LIMIT: Duration = Duration::from_secs(5);

/// Endpoints handed to the callback pool at once by a leader, which checks its lease before
/// each such batch.
const DELIVERY_BATCH: usize = 256;

/// How often a delivered window's keeper looks whether the instance is shutting down.
const LINGER_POLL: Duration = Duration::from_millis(250);

/// Longest the leader waits for the replicas to hold the count before it delivers.
const REPLICATION_WAIT: Duration = Duration::from_secs(1);

/// Reports a final window in fleet mode: closes it in the background (see [`close`]) and
/// waits for its fleet count a short while; if the count is not fixed by then, logs the
/// local count as partial, and the fleet's line follows once it is.
pub async fn report(shared: &Arc<Shared>, window: Arc<Window>) {
    if shared.store.is_none() {
        return;
    }
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
    let line = Arc::new(parking_lot::Mutex::new(Line::None));
    let (fixed, on_time) = tokio::sync::oneshot::channel();
    let unlogged = Unlogging::new(shared, window.start);
    shared.spawn(close(
        Arc::clone(shared),
        Arc::clone(&window),
        Arc::clone(&line),
        fixed,
        unlogged,
    ));
    if tokio::time::timeout(read_timeout(shared), on_time)
        .await
        .is_ok_and(|sent| sent.is_ok())
    {
        return;
    }
    let mut line = line.lock();
    if *line == Line::None {
        log::warn!(
            "window {}: fleet count not fixed in time; logging the local count",
            format_utc(window.start * 1000, false)
        );
        log_local(shared, &window);
        *line = Line::Partial;
        shared.unlogged.late(window.start);
    }
}

/// The windows being closed whose fleet line is not in the count log yet, each with whether
/// it was late (its partial line logged). A late window's fleet line waits for every earlier
/// late window's (logged or given up), at most [`LATE_ORDER_WAIT`]: two windows whose counts
/// were late, fixed together after Redis came back, are logged in window order.
#[derive(Default)]
pub struct Unlogged(tokio::sync::watch::Sender<BTreeMap<i64, bool>>);

impl Unlogged {
    fn late(&self, window_start: i64) {
        self.0.send_modify(|windows| {
            if let Some(late) = windows.get_mut(&window_start) {
                *late = true;
            }
        });
    }

    /// Waits until no window before `window_start` is late and unlogged.
    async fn earlier_logged(&self, window_start: i64) {
        let mut windows = self.0.subscribe();
        let _ = windows
            .wait_for(|w| !w.range(..window_start).any(|(_, &late)| late))
            .await;
    }
}

/// A window's place in [`Unlogged`], from its report until its fleet line is logged or its
/// closing ends without one (given up, or dropped at shutdown).
struct Unlogging {
    shared: Arc<Shared>,
    window_start: i64,
}

impl Unlogging {
    fn new(shared: &Arc<Shared>, window_start: i64) -> Self {
        shared.unlogged.0.send_modify(|windows| {
            windows.insert(window_start, false);
        });
        Self {
            shared: Arc::clone(shared),
            window_start,
        }
    }
}

impl Drop for Unlogging {
    fn drop(&mut self) {
        self.shared.unlogged.0.send_modify(|windows| {
            windows.remove(&self.window_start);
        });
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

/// Which line a window has in this instance's count log so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    None,
    /// `scope=local partial=true reason=store`: the fleet count was late.
    Partial,
    /// `scope=fleet`, its one fixed count.
    Fleet,
}

/// Closes a window: finds (or, as the leader, fixes) its one fleet count, logs it, then
/// delivers it ([`deliver`]). Gives up, saying so, at the report deadline.
async fn close(
    shared: Arc<Shared>,
    window: Arc<Window>,
    line: Arc<parking_lot::Mutex<Line>>,
    fixed: tokio::sync::oneshot::Sender<()>,
    unlogged: Unlogging,
) {
    let Some(store) = shared.store.as_ref() else {
        return;
    };
    let start = window.start;
    let mut closing = Closing::new(window);
    let count = loop {
        if past_deadline(&shared, start, "its count was never fixed")
            || outside_fleet(&shared, start)
        {
            return;
        }
        match closing.step(&shared, store).await {
            Ok(Some(count)) => break count,
            Ok(None) => {}
            Err(e) => log::debug!("window {start}: closing: {e}"),
        }
        tokio::time::sleep(STEP).await;
    };
    // Once partial, a line stays so until this logs the fleet's; until then, every earlier
    // late window goes first, unless its count is still not fixed a moment later (this
    // window's delivery and republishing must not wait for a stuck one).
    loop {
        let late = *line.lock() == Line::Partial;
        if late
            && tokio::time::timeout(LATE_ORDER_WAIT, shared.unlogged.earlier_logged(start))
                .await
                .is_err()
        {
            log::warn!(
                "window {}: an earlier late window's count is still not fixed; logging this one first",
                format_utc(start * 1000, false)
            );
        }
        let mut line = line.lock();
        if !late && *line == Line::Partial {
            continue; // its partial line came in between: wait as a late window does
        }
        if late {
            log::warn!(
                "window {}: fleet count {count} fixed late; logging it",
                format_utc(start * 1000, false)
            );
        }
        log_count(&shared, start, count, "fleet", None);
        *line = Line::Fleet;
        break;
    }
    drop(unlogged);
    let _ = fixed.send(());
    let published = closing.published;
    // The ids are no longer needed once the count is fixed; the endpoints are, until the
    // window is delivered (Redis may lose them).
    let endpoints = endpoint_sites(&closing.window);
    drop(closing);
    deliver(shared, start, count, published, endpoints).await;
}

/// What this instance has done so far to close one window.
struct Closing {
    window: Arc<Window>,
    /// The generation (seq) this instance re-added the window's ids for, after its drain.
    readded: Option<u64>,
    /// The generation (id) its drained mark says.
    marked: Option<Arc<str>>,
    /// The generation (seq) in which this instance knows the fixed count to be stored.
    published: u64,
    /// The leader's snapshot of the members, taken after the cutoff, in one generation.
    snapshot: Option<Snapshot>,
    /// Whether the barrier's bound ran out already (said once).
    timed_out: bool,
    /// Whether the shard sets this instance wrote were looked for.
    looked: bool,
}

struct Snapshot {
    seq: u64,
    members: Vec<String>,
    taken: tokio::time::Instant,
}

impl Closing {
    fn new(window: Arc<Window>) -> Self {
        Self {
            window,
            readded: None,
            marked: None,
            published: 0,
            snapshot: None,
            timed_out: false,
            looked: false,
        }
    }

    /// One step of the window barrier (SPEC §6.3), for the generation as seen now:
    /// re-add the window's ids if Redis is in a generation they may not be in, mark the
    /// window drained in it, adopt the count if one is fixed, else try to lead and fix it.
    /// `Ok(None)`: not yet.
    async fn step(&mut self, shared: &Shared, store: &Store) -> Result<Option<u64>, StoreError> {
        let generation = store.generation();
        let start = self.window.start;
        let expiry = expire_at(shared, start);
        // Approx mode merges the sketch once per generation whatever happened: its final
        // state (the window drained) reaches Redis before the mark says so.
        if self.readded != Some(generation.seq)
            && (self.window.sketch().is_some()
                || self.window.epoch != generation.seq
                || self.lost_shard(store).await?)
        {
            resync(shared, store, &self.window).await?;
            self.readded = Some(generation.seq);
        }
        if self.marked.as_ref() != Some(&generation.id) {
            store.mark(start, &generation.id, expiry).await?;
            self.marked = Some(Arc::clone(&generation.id));
        }
        if let Some(count) = store.fixed(start).await? {
            self.published = generation.seq;
            return Ok(Some(count));
        }
        // A fenced instance (its clock beyond the budget, or cut off) fixes nothing.
        if shared.fenced.load(Ordering::Acquire) {
            return Ok(None);
        }
        if !store
            .lead(start, LEASE, may_take_over(shared, &generation))
            .await?
        {
            return Ok(None);
        }
        self.lead(shared, store, &generation).await
    }

    /// Whether a shard set this instance wrote in the window is gone within one generation
    /// (evicted, deleted): looked at once, at the first step.
    async fn lost_shard(&mut self, store: &Store) -> Result<bool, StoreError> {
        if self.looked {
            return Ok(false);
        }
        let lost = store
            .any_missing(self.window.start, &self.window.touched_shards())
            .await?;
        self.looked = true;
        Ok(lost)
    }

    /// The leader's part: waits for every member's drained mark in the current generation
    /// (bounded), then sums the shard sets within one generation and fixes the count.
    async fn lead(
        &mut self,
        shared: &Shared,
        store: &Store,
        generation: &Generation,
    ) -> Result<Option<u64>, StoreError> {
        let start = self.window.start;
        // Every live member heartbeats into a new generation within the trust period: only
        // then does the new Redis know them all.
        if generation.since.elapsed() < super::members::trust_period(&shared.settings) {
            return Ok(None);
        }
        if self
            .snapshot
            .as_ref()
            .is_none_or(|s| s.seq != generation.seq)
        {
            // Those that started after W cannot have answered for it: not waited for.
            let members = store
                .members()
                .await?
                .into_iter()
                .filter(|(_, first)| *first <= start)
                .map(|(instance, _)| instance)
                .collect();
            self.snapshot = Some(Snapshot {
                seq: generation.seq,
                members,
                taken: tokio::time::Instant::now(),
            });
        }
        let Some(snapshot) = &self.snapshot else {
            return Ok(None);
        };
        let alive: std::collections::HashSet<String> = store
            .members()
            .await?
            .into_iter()
            .map(|(instance, _)| instance)
            .collect();
        let marks = store.marks(start).await?;
        let missing: Vec<&String> = snapshot
            .members
            .iter()
            .filter(|m| alive.contains(*m))
            .filter(|m| marks.get(*m).map(String::as_str) != Some(&*generation.id))
            .collect();
        if !missing.is_empty() {
            if snapshot.taken.elapsed() < BARRIER_LIMIT {
                return Ok(None);
            }
            if !self.timed_out {
                self.timed_out = true;
                shared
                    .metrics
                    .barrier_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "window {}: {} members did not mark it drained within {} s; counting without their marks",
                    format_utc(start * 1000, false),
                    missing.len(),
                    BARRIER_LIMIT.as_secs()
                );
            }
        }
        // The sum is the fleet's only if the shard sets stayed in one generation throughout.
        let before = store.read_generation().await?;
        if before != *generation.id {
            return Ok(None);
        }
        let count = match self.window.sketch() {
            None => store.count(start).await?,
            Some(_) => store.approx_count(start).await?,
        };
        if store.read_generation().await? != before {
            return Ok(None);
        }
        match store
            .fix(
                start,
                count,
                end_of_grace_ms(shared, start),
                expire_at(shared, start),
            )
            .await?
        {
            Fixed::TooEarly => Ok(None),
            Fixed::Count { count, replicas } => {
                if replicas > 0 {
                    let acked = store
                        .replicate(start, replicas, REPLICATION_WAIT)
                        .await
                        .unwrap_or(0);
                    if acked < replicas {
                        log::warn!(
                            "window {}: {acked} of {replicas} replicas acknowledged its count in time; delivering",
                            format_utc(start * 1000, false),
                        );
                    }
                }
                self.published = generation.seq;
                Ok(Some(count))
            }
        }
    }
}

/// Whether this instance may take over a lease nobody holds: not within the trust period of
/// a new generation, whose Redis lost the leases — their holders renew them first, and every
/// live knower of a delivered window has put its done mark back by then (found by review: a
/// lease's wait let a peer POST again while a slow, live leader was still reconnecting) —
/// nor after a reconnection before a heartbeat has read the generation (Redis may be new).
fn may_take_over(shared: &Shared, generation: &Generation) -> bool {
    !generation.unconfirmed
        && generation.since.elapsed() >= super::members::trust_period(&shared.settings)
}

/// Re-adds a window's ids and endpoints to the store, the endpoints within the bounds as at
/// registration (so those registered first elsewhere keep their places).
/// Approx mode merges the window's sketch instead of re-adding ids.
pub async fn resync(shared: &Shared, store: &Store, window: &Window) -> Result<(), StoreError> {
    if let Some(sketch) = window.sketch() {
        merge(shared, store, window.start, sketch).await?;
    }
    readd(
        shared,
        store,
        window.start,
        &window.ids(),
        &endpoint_sites(window),
    )
    .await
}

/// Approx mode: writes a window's sketch into its Redis HLL ([`Store::merge`]). Marked
/// changed again if that fails, so the next tick tries again.
async fn merge(
    shared: &Shared,
    store: &Store,
    start: i64,
    sketch: &crate::sketch::Sketch,
) -> Result<(), StoreError> {
    sketch.take_changed();
    let merged = store
        .merge(start, sketch.dense(), expire_at(shared, start))
        .await;
    match merged {
        Ok(()) => {
            shared.metrics.sketch_merges.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            sketch.mark_changed();
            Err(e)
        }
    }
}

/// Longest shutdown spends handing the window it cut short over to the fleet.
const HAND_OVER_WITHIN: Duration = Duration::from_secs(1);

/// Approx fleet mode, at shutdown: merges the sketch of the window cut short (the fleet
/// counts it without this instance, whose ids answered `ok` must be in it: found by review,
/// a SIGTERM lost the last second's) and marks it drained, within [`HAND_OVER_WITHIN`].
/// Exact mode's ids are in Redis already.
pub async fn hand_over(shared: &Shared, window: &Window) {
    let (Some(store), Some(sketch)) = (shared.store.as_ref(), window.sketch()) else {
        return;
    };
    if shared.settings_differ.load(Ordering::Acquire) {
        return;
    }
    let start = window.start;
    let handing = async {
        let generation = store.generation();
        merge(shared, store, start, sketch).await?;
        store
            .mark(start, &generation.id, expire_at(shared, start))
            .await
    };
    match tokio::time::timeout(HAND_OVER_WITHIN, handing).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::warn!(
            "window {}: its last updates did not reach Redis at shutdown: {e}",
            format_utc(start * 1000, false)
        ),
        Err(_) => log::warn!(
            "window {}: its last updates did not reach Redis within {} s of shutdown",
            format_utc(start * 1000, false),
            HAND_OVER_WITHIN.as_secs()
        ),
    }
}

/// How often approx mode writes each open window's sketch to Redis (when it changed).
const MERGE_EVERY: Duration = Duration::from_secs(1);

/// How long approx mode answers `ok` without a successful write of its sketches: beyond
/// this, ids get 503 until a write succeeds (SPEC §3a), so the updates an instance's death
/// can lose are those of its last seconds.
pub const MERGE_STALE: Duration = Duration::from_secs(3);

/// Approx fleet mode: writes each open window's sketch into its Redis HLL every
/// [`MERGE_EVERY`] (when it changed), and keeps [`Shared::merge_stale`] set while none has
/// succeeded for [`MERGE_STALE`]. A final window's last write is its closing's
/// ([`Closing::step`]), before its drained mark.
pub async fn merge_sketches(shared: Arc<Shared>) {
    let Some(store) = shared.store.as_ref() else {
        return;
    };
    if shared.windows.key().is_none() {
        return;
    }
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(MERGE_EVERY).await;
        let mut ok = store.is_connected();
        for window in shared.windows.open() {
            let Some(sketch) = window.sketch() else {
                continue;
            };
            if !sketch.changed() {
                continue;
            }
            if let Err(e) = merge(&shared, store, window.start, sketch).await {
                log::debug!("window {}: writing its sketch failed: {e}", window.start);
                ok = false;
            }
        }
        if ok {
            last_ok = tokio::time::Instant::now();
        }
        let stale = last_ok.elapsed() > MERGE_STALE;
        if shared.merge_stale.swap(stale, Ordering::AcqRel) != stale {
            if stale {
                log::warn!(
                    "no sketch reached Redis for {} s: answering 503 until one does",
                    MERGE_STALE.as_secs()
                );
            } else {
                log::info!("sketches reach Redis again: answering ids");
            }
        }
    }
}

/// The window's endpoints, each with its site (what the fleet's bounds count).
fn endpoint_sites(window: &Window) -> Vec<(Box<str>, String)> {
    window
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
        .collect()
}

/// Re-adds ids and endpoints of a window (see [`resync`]).
async fn readd(
    shared: &Shared,
    store: &Store,
    start: i64,
    ids: &[i64],
    endpoints: &[(Box<str>, String)],
) -> Result<(), StoreError> {
    if ids.is_empty() && endpoints.is_empty() {
        return Ok(());
    }
    store
        .readd(
            start,
            ids,
            endpoints,
            endpoint_caps(shared),
            expire_at(shared, start),
        )
        .await?;
    shared.metrics.resyncs.fetch_add(1, Ordering::Relaxed);
    log::info!(
        "re-added {} ids and {} endpoints of window {} to Redis",
        ids.len(),
        endpoints.len(),
        format_utc(start * 1000, false)
    );
    Ok(())
}

/// The bounds on a window's endpoints, as this instance applies them fleet-wide.
pub fn endpoint_caps(shared: &Shared) -> EndpointCaps {
    EndpointCaps {
        per_window: shared.settings.callback_max_endpoints,
        per_domain: shared.settings.callback_max_per_domain,
    }
}

/// After Redis is in a new generation (it may have restarted empty), re-adds the open windows'
/// ids at once, so that every instance's ids are back soon; each window is re-added again
/// when it closes (an id acknowledged by the old Redis may have entered it since).
pub async fn resync_on_new_generation(shared: Arc<Shared>) {
    let Some(store) = shared.store.as_ref() else {
        return;
    };
    let mut generations = store.generations();
    loop {
        if generations.changed().await.is_err() {
            return;
        }
        let seq = generations.borrow_and_update().seq;
        for window in shared.windows.open() {
            if window.epoch == seq {
                continue;
            }
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

/// What an instance knows of a window whose count is fixed, and stores again in every new
/// generation of Redis until the window's report deadline: its endpoints, the count, the
/// done mark once the window is delivered, and its drained mark. So an empty restart after
/// the count was fixed can neither give the window a second count (a peer still closing it
/// adopts this one: its barrier waits for this instance's mark, written after the count)
/// nor lose its endpoints or its done mark (no second delivery by a leader that did not die).
struct Known {
    start: i64,
    count: u64,
    /// This instance's endpoints of the window, each with its site.
    endpoints: Vec<(Box<str>, String)>,
    /// The generation (seq) in which all of it is known to be stored.
    published: u64,
    done: bool,
}

impl Known {
    /// Stores it all again if Redis is in a generation it may not be in.
    async fn republish(&mut self, shared: &Shared, store: &Store) -> Result<(), StoreError> {
        let generation = store.generation();
        if self.published == generation.seq {
            return Ok(());
        }
        let (start, expiry) = (self.start, expire_at(shared, self.start));
        readd(shared, store, start, &[], &self.endpoints).await?;
        if let Fixed::Count { count, .. } = store
            .fix(start, self.count, end_of_grace_ms(shared, start), expiry)
            .await?
            && count != self.count
        {
            log::error!(
                "window {}: Redis holds count {count}, this instance fixed {}",
                format_utc(start * 1000, false),
                self.count
            );
        }
        if self.done {
            store.mark_done(start, expiry).await?;
        }
        store.mark(start, &generation.id, expiry).await?;
        self.published = generation.seq;
        Ok(())
    }
}

/// Delivers the window's fixed count: if this instance wins (or inherits) the lease, sends
/// the stream record and the callbacks, checking the lease before each batch, and marks the
/// window done; otherwise waits for the done mark, taking over if the lease lapses first.
/// Then, and meanwhile, keeps what it knows stored ([`Known`]) until the report deadline.
async fn deliver(
    shared: Arc<Shared>,
    start: i64,
    count: u64,
    published: u64,
    endpoints: Vec<(Box<str>, String)>,
) {
    let Some(store) = shared.store.as_ref() else {
        return;
    };
    let mut known = Known {
        start,
        count,
        endpoints,
        published,
        done: false,
    };
    let shown = format_utc(start * 1000, false);
    let expiry = expire_at(&shared, start);
    loop {
        if past_deadline(&shared, start, "no instance completed its callbacks")
            || outside_fleet(&shared, start)
        {
            return;
        }
        if known.republish(&shared, store).await.is_err() {
            tokio::time::sleep(RETRY).await;
            continue;
        }
        match store.is_done(start).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(_) => {
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        let take =
            may_take_over(&shared, &store.generation()) && !shared.fenced.load(Ordering::Acquire);
        match store.lead(start, LEASE, take).await {
            Ok(true) => {}
            Ok(false) if shared.left.load(Ordering::Acquire) => {
                return; // shut down: the leader, or a live instance, finishes this window
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
        if !post_while_leading(&shared, store, &mut known, endpoints).await {
            log::warn!(
                "window {shown}: lost its lease while delivering; another instance takes over"
            );
            continue;
        }
        known.done = true;
        let marked = async {
            for _ in 0..5 {
                if store.mark_done(start, expiry).await.is_ok() {
                    return true;
                }
                tokio::time::sleep(RETRY).await;
            }
            false
        };
        if !marked.await {
            log::warn!(
                "window {shown}: callbacks sent but the done mark failed; another instance may repeat them"
            );
        }
        break;
    }
    known.done = true;
    linger(&shared, store, known).await;
}

/// Keeps a delivered window's count, endpoints and marks stored in every new generation
/// until its report deadline (see [`Known`]), or until shutdown has withdrawn this instance
/// from the members (no barrier waits for its marks then).
async fn linger(shared: &Shared, store: &Store, mut known: Known) {
    let mut generations = store.generations();
    loop {
        let left = report_deadline_ms(shared, known.start) - shared.clock.now_ms();
        // A shutting-down instance stays a member (it answers through its shutdown delay)
        // until it withdraws its heartbeat: it keeps the count stored until then.
        if left <= 0 || shared.left.load(Ordering::Acquire) {
            return;
        }
        if known.republish(shared, store).await.is_err() {
            tokio::time::sleep(RETRY).await;
            continue;
        }
        tokio::select! {
            changed = generations.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(Duration::from_millis(left as u64).min(LINGER_POLL)) => {}
        }
    }
}

/// Sends the window's stream record and its callbacks in batches, each after the lease is
/// renewed (compare-and-expire), renewing it while a batch is under way, and keeping what
/// it knows stored if Redis changes generation meanwhile: false if the lease was lost
/// before the last batch.
async fn post_while_leading(
    shared: &Shared,
    store: &Store,
    known: &mut Known,
    endpoints: Vec<Box<str>>,
) -> bool {
    let (start, count) = (known.start, known.count);
    stream_record(shared, start, count, "fleet");
    let mut endpoints = endpoints.into_iter().peekable();
    while endpoints.peek().is_some() {
        let _ = known.republish(shared, store).await;
        if !matches!(store.lead(start, LEASE, true).await, Ok(true)) {
            return false;
        }
        let batch: Vec<Box<str>> = endpoints.by_ref().take(DELIVERY_BATCH).collect();
        let batch = post(shared, start, count, "fleet", batch);
        while batch.pending() > 0 {
            tokio::time::sleep(LEASE / 3).await;
            let _ = known.republish(shared, store).await;
            let _ = store.lead(start, LEASE, true).await;
        }
    }
    true
}

/// The fleet's endpoints for one window within twice this instance's bounds: normalized (an
/// instance of another version may have stored another spelling), each once, at most twice
/// `--callback-max-per-domain` per domain and twice `--callback-max-endpoints` in all. The
/// bounds are enforced fleet-wide at registration (the store's script: the first registered
/// win). Only after Redis lost a window can its set hold more: the members re-add theirs
/// past the bounds (each registered within them first), on top of those registered in the
/// new Redis before the re-adds landed (within them too) — at most twice the bounds, every
/// one registered by an `ok` request, so every one is called. Beyond that it stays a
/// defence against a set written otherwise (another version's plain `SADD`, or instances
/// with larger bounds), and there it keeps an arbitrary subset.
fn bounded(shared: &Shared, shown: &str, stored: Vec<String>) -> Vec<Box<str>> {
    let max = 2 * shared.settings.callback_max_endpoints as usize;
    let per_domain = 2 * shared.settings.callback_max_per_domain as usize;
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

/// How long after Redis started a starting instance only reads the fleet's announcement:
/// the fleet's instances reconnect and announce theirs again within this.
const YOUNG_REDIS: Duration = Duration::from_secs(2);

/// How long the fleet's settings stay announced without a renewal: a fleet that changed its
/// settings everywhere at once (all instances stopped) starts again after this.
const SETTINGS_TTL: Duration = Duration::from_secs(30);

/// The settings every instance of a fleet must share, as announced: those that shape keys
/// and windows (SPEC §6.2), and those that decide what a count holds — the grace and skew
/// budget place every instance's cutoff before every other's count (with two graces, an
/// `ok` can come after another instance read the count), and the endpoint bounds decide
/// which endpoints the fleet calls.
/// Approx mode adds the id of the fleet's hash key: sketches hashed with different keys
/// would count one id once per key.
pub fn settings_fingerprint(config: &crate::config::Config, key: Option<&HashKey>) -> String {
    let key = key
        .map(|k| format!(" hash_key={}", k.id()))
        .unwrap_or_default();
    format!(
        "window_secs={} redis_shards={} count={} grace_ms={} max_clock_skew_ms={} \
         callback_max_endpoints={} callback_max_per_domain={}{key}",
        config.window_secs,
        config.redis_shards(),
        config.count.as_str(),
        config.grace_ms,
        config.max_clock_skew_ms,
        config.callback_max_endpoints,
        config.callback_max_per_domain,
    )
}

/// Approx mode: the fleet's hash key, read from Redis, or (the first instance of a fleet)
/// a new one stored there. Like the settings, a newcomer only reads it while Redis is
/// young: the fleet's instances put theirs back after an empty restart. It never takes a
/// key while a fleet announces its settings (the members put theirs back within a round).
/// And one that stored a new key in a Redis up for less than [`YOUNG_FOR_KEYS`] looks again
/// after the trust period before it serves: members stalled through an empty restart (found
/// by review: a newcomer's sketches, merged under its own key, doubled the count) come back
/// within it and put the fleet's key back, which it then takes.
pub async fn hash_key(
    config: &crate::config::Config,
    store: &Store,
    within: Duration,
) -> Result<HashKey, String> {
    let deadline = tokio::time::Instant::now() + within;
    let settled = deadline + YOUNG_REDIS;
    let ours = HashKey::random().to_hex();
    let mut announced_since: Option<tokio::time::Instant> = None;
    loop {
        let (claim, young) = match store.heartbeat(super::members::HEARTBEAT_TTL, false).await {
            Ok(beat) => (
                beat.up_for >= YOUNG_REDIS || tokio::time::Instant::now() >= settled,
                beat.up_for < YOUNG_FOR_KEYS,
            ),
            Err(_) => (false, false),
        };
        // A fleet that announces its settings has a key: wait for it (bounded: an
        // announcement outlives its last member by at most its lifetime).
        let announced = matches!(
            store.announce("", SETTINGS_TTL, false).await,
            Ok(Announced::Theirs(_))
        );
        if announced {
            announced_since.get_or_insert_with(tokio::time::Instant::now);
        }
        let wait_for_fleet =
            announced && announced_since.is_some_and(|t| t.elapsed() < SETTINGS_TTL);
        let claim = claim && !wait_for_fleet;
        match store.hash_key(claim.then_some(ours.as_str())).await {
            Ok(Some(stored)) => {
                let created = stored == ours;
                let stored = if created && young {
                    log::info!(
                        "stored a new hash key in a Redis that started recently; looking again in {} s before serving",
                        super::members::trust_period(config).as_secs()
                    );
                    tokio::time::sleep(super::members::trust_period(config)).await;
                    match store.hash_key(None).await {
                        Ok(Some(now)) => now,
                        _ => stored,
                    }
                } else {
                    stored
                };
                return HashKey::from_hex(&stored).ok_or_else(|| {
                    format!(
                        "--count approx: Redis holds {}:hash-key, which is no hash key (32 hex digits)",
                        config.redis_prefix
                    )
                });
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "--count approx: cannot read the fleet's hash key under --redis-prefix {}: {e}",
                    config.redis_prefix
                ));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A Redis up for less than this may have restarted empty under a stalled fleet: a key
/// stored in it is looked at again after the trust period (see [`hash_key`]).
const YOUNG_FOR_KEYS: Duration = Duration::from_secs(30);

/// Compares this instance's settings with the fleet's at start-up, taking the announcement
/// if there is none (the first instance of a fleet): `Ok(true)` (and says why) when they
/// differ. Redis must answer within `within` (a write stall longer than the Redis timeout is
/// retried): an instance that cannot tell must not serve, since it might not belong to the
/// fleet (found by review: one started during a stall served under another layout).
pub async fn check_settings(
    config: &crate::config::Config,
    key: Option<&HashKey>,
    store: &Store,
    within: Duration,
) -> Result<bool, String> {
    let ours = settings_fingerprint(config, key);
    let deadline = tokio::time::Instant::now() + within;
    let settled = deadline + YOUNG_REDIS;
    loop {
        // A Redis that has just started (empty) lost the fleet's announcement: its instances
        // announce theirs again within a reconnection and a moment. Claiming it first would
        // turn the whole fleet away (found by review), so a newcomer only reads it until then.
        let claim = match store.heartbeat(super::members::HEARTBEAT_TTL, false).await {
            Ok(beat) => beat.up_for >= YOUNG_REDIS,
            Err(_) => false,
        };
        match store.announce(&ours, SETTINGS_TTL, claim).await {
            Ok(Announced::Theirs(theirs)) => {
                say_settings_differ(config, &ours, &theirs);
                return Ok(true);
            }
            Ok(Announced::Ours) => return Ok(false),
            Ok(Announced::Absent) if tokio::time::Instant::now() < settled => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Announced::Absent) => return Ok(false),
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
    let key = shared.windows.key();
    let ours = settings_fingerprint(&shared.settings, key.as_ref());
    let trust = super::members::trust_period(&shared.settings);
    let mut reconnects = store.reconnections();
    let mut absent_since: Option<tokio::time::Instant> = None;
    let started = tokio::time::Instant::now();
    loop {
        // Soon after start-up (and while Redis settles) it looks often: a fleet that put its
        // announcement back is followed at once.
        let every = if started.elapsed() < trust || store.settling(trust) {
            RECONNECT_ANNOUNCE * 2
        } else {
            SETTINGS_TTL / 3
        };
        tokio::select! {
            () = tokio::time::sleep(every) => {}
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
            // A member since before Redis's new generation outranks an announcement made
            // within its trust period (a newcomer that started while the fleet was still
            // reconnecting, found by review): it puts the fleet's back.
            Ok(Announced::Theirs(theirs)) if !was && store.settling(trust) => {
                match store.replace_announcement(&ours, SETTINGS_TTL).await {
                    Ok(()) => {
                        log::warn!(
                            "replaced the settings announced just after Redis restarted ({theirs}) with this fleet's ({ours})"
                        );
                        false
                    }
                    Err(_) => continue,
                }
            }
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
        // Approx mode: a member of the fleet (the announcement, which carries the key's id,
        // is ours) puts the fleet's hash key back whenever Redis does not hold it: lost in
        // a restart, deleted, or overwritten — by a newcomer after an empty restart too.
        // Found by review: a deleted key, taken by a newcomer, turned the members away.
        if !differ
            && shared.settings.hash_key.is_none()
            && let Some(key) = key
        {
            let hex = key.to_hex();
            match store.hash_key(Some(&hex)).await {
                Ok(stored) if stored.as_deref() == Some(hex.as_str()) => {}
                Ok(_) => {
                    if store.replace_hash_key(&hex).await.is_ok() {
                        log::warn!(
                            "Redis held another hash key than the fleet's: put the fleet's back"
                        );
                    }
                }
                Err(e) => log::debug!("putting the hash key back failed: {e}"),
            }
        }
        shared.settings_differ.store(differ, Ordering::Release);
        if was && !differ {
            log::info!("the fleet's settings match this instance's now: ready");
        }
    }
}
