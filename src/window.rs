//! Time and the local minute windows.
//!
//! Owns the arithmetic that maps a timestamp to its window, the exact per-window id sets and
//! the per-window in-flight count that lets the reporter read a count only once every request
//! of that window has finished. It never blocks on I/O and never formats output: the reporter
//! decides when a window is final and what is written about it.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use parking_lot::RwLock;
use tokio::sync::watch;
use tokio::time::{Duration, Instant};

use crate::http::query::Endpoint;
use crate::sketch::{HashKey, Sketch};

/// Start (epoch seconds) of the `secs`-long, epoch-aligned window holding `now_ms`.
pub fn window_start(now_ms: i64, secs: i64) -> i64 {
    now_ms.div_euclid(1000).div_euclid(secs) * secs
}

/// The wall clock, injectable so window rollover is tested without waiting.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock, shifted by a fixed offset (zero outside skew tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock {
    /// Added to the system time; lets tests run instances with skewed clocks.
    pub offset_ms: i64,
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        since + self.offset_ms
    }
}

/// One-shot xxh3 with a per-process random seed: cheap for 8-byte ids and not floodable by a
/// caller who does not know the seed.
#[derive(Debug, Clone, Copy)]
pub struct Xxh3Seeded {
    seed: u64,
}

impl Xxh3Seeded {
    /// A hasher builder with a seed drawn from the OS (through std's `RandomState`).
    pub fn random() -> Self {
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x0076_6572_7665_u64);
        Self { seed }
    }
}

impl BuildHasher for Xxh3Seeded {
    type Hasher = Xxh3Hasher;
    fn build_hasher(&self) -> Xxh3Hasher {
        Xxh3Hasher {
            seed: self.seed,
            state: 0,
        }
    }
}

/// The hasher built by [`Xxh3Seeded`].
pub struct Xxh3Hasher {
    seed: u64,
    state: u64,
}

impl Hasher for Xxh3Hasher {
    fn finish(&self) -> u64 {
        self.state
    }
    fn write(&mut self, bytes: &[u8]) {
        self.state = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.seed ^ self.state);
    }
    fn write_i64(&mut self, id: i64) {
        self.write(&id.to_le_bytes());
    }
}

/// Shards per id set: many, so that growing one shard stalls few writers for little time.
const SHARDS: usize = 64;

/// Cutoff signals per window: a request waiting for the store registers with its lane's
/// (lane index modulo this), so that requests on different cores never contend for one
/// signal's lock.
const CUT_LANES: usize = 16;

/// Id slots above which a dropped window's table is handed back to the system at once.
const RELEASE_AFTER_IDS: usize = 1 << 16;

/// One window's ids and the endpoints registered in it.
pub struct Window {
    /// Window start, epoch seconds.
    pub start: i64,
    /// Exact mode: the ids themselves (empty in approx mode).
    ids: DashMap<i64, (), Xxh3Seeded>,
    /// Approx mode: the window's HyperLogLog sketch and the key ids are hashed with.
    sketch: Option<(Sketch, HashKey)>,
    /// Registered endpoints by [`Endpoint::key`]: normalized, allocated once per window.
    endpoints: DashMap<u128, Registration, Xxh3Seeded>,
    /// Endpoint slots per [`Endpoint::domain_key`]; an entry exists only while it holds a
    /// slot, so the map stays within `max_endpoints`.
    domains: DashMap<u64, DomainSlots, Xxh3Seeded>,
    /// Endpoint slots taken, registrations in flight included; never exceeds
    /// `max_endpoints`, so the set stays bounded (and so do the registrations in flight).
    endpoint_slots: AtomicUsize,
    /// Fleet mode: the slots whose endpoint Redis holds (confirmed registrations). Only
    /// these refuse an endpoint as over the bound: a slot still in flight may be given back.
    endpoints_held: AtomicUsize,
    max_endpoints: usize,
    max_per_domain: usize,
    /// Set by the first endpoint refused for want of a slot, so the overflow is logged once.
    endpoints_overflowed: AtomicBool,
    /// Set by the first endpoint refused because its domain was full, likewise.
    domain_overflowed: AtomicBool,
    /// Fleet mode: Redis refused an endpoint because the window is full fleet-wide. It stays
    /// full (the fleet's set only grows), so further new endpoints are refused here, without
    /// a store call each.
    fleet_full: AtomicBool,
    /// Fleet mode: domains Redis refused an endpoint for, full fleet-wide; likewise refused
    /// here from then on. Capped at `max_endpoints` entries (a fleet running these bounds
    /// cannot fill more domains than it has slots), so it stays bounded too.
    full_domains: DashMap<u64, (), Xxh3Seeded>,
    /// Requests holding this window beyond their admission (waiting for the store) and not
    /// yet finished; those decided on the spot finish under the windows' read lock.
    inflight: AtomicUsize,
    /// Fleet mode: ids whose `SADD` is in flight, so concurrent requests share one and its
    /// outcome (see [`Added`]).
    pending: DashMap<i64, Sharers, Xxh3Seeded>,
    /// Fleet mode: store shards this instance has written in this window (checked for loss
    /// before the count is read).
    touched: Box<[AtomicBool]>,
    /// Fleet mode: the store's reconnection count when the window opened.
    pub epoch: u64,
    /// Fleet mode: the window's cutoff on the monotonic clock (end + grace − clock skew −
    /// 100 ms, fixed when the window is made, so a wall-clock step cannot move it); `None`
    /// on a single node, whose requests never wait.
    cut_at: Option<Instant>,
    /// Turned true at the cutoff: requests still waiting for the store are answered 503 and
    /// no acknowledgement enters the window any more. One signal per lane ([`CUT_LANES`]),
    /// all turned by [`Window::cut`].
    cut: [watch::Sender<bool>; CUT_LANES],
    /// Set by [`Window::cut`] before the signals: read on the request path without a lock.
    is_cut: AtomicBool,
}

impl Drop for Window {
    /// Frees the id table first and then asks the allocator to return freed memory: glibc
    /// otherwise keeps a closed window's pages for reuse, and the process's size swings with
    /// which windows' tables it happens to hold.
    fn drop(&mut self) {
        if self.ids.capacity() < RELEASE_AFTER_IDS {
            return;
        }
        let empty = DashMap::with_hasher_and_shard_amount(*self.ids.hasher(), 2);
        drop(std::mem::replace(&mut self.ids, empty));
        crate::memory::release_freed();
    }
}

/// One domain's endpoint slots in a window.
#[derive(Debug, Default)]
struct DomainSlots {
    /// Taken, registrations in flight included; at most `max_per_domain`.
    taken: usize,
    /// Fleet mode: of those, the ones Redis holds.
    held: usize,
}

/// A registered endpoint.
struct Registration {
    /// The normalized URL.
    url: Box<str>,
    domain: u64,
    /// Fleet mode: `None` once Redis holds it; until then the outcome of the registration in
    /// flight, which every request naming the endpoint waits for.
    pending: Option<watch::Receiver<Option<Verdict>>>,
}

impl Registration {
    /// What a request naming this registered endpoint gets.
    fn claim<'w>(&self) -> Claim<'w> {
        match &self.pending {
            None => Claim::Settled(Registered::Known),
            Some(pending) => Claim::Wait(Pending(pending.clone())),
        }
    }
}

/// An endpoint offered to a window in fleet mode, where it counts as known only once Redis
/// holds it.
pub enum Claim<'w> {
    /// Redis holds it already (or a bound refuses it: see [`Registered`]).
    Settled(Registered),
    /// Another request is registering it: the outcome, shared.
    Wait(Pending),
    /// This request registers it: report the outcome with [`Lead::confirm`] or
    /// [`Lead::refuse`]; dropping the lead unregisters it and fails every waiter.
    Lead(Lead<'w>),
    /// A bound is reached only counting registrations still in flight, any of which may yet
    /// fail and give its slot back: whether this endpoint fits is unknown (the request gets
    /// 503; a retry finds them settled). Never refused for a slot Redis may never hold, and
    /// never one more registration in flight than the bound has slots.
    Undecided,
}

/// How a fleet-wide endpoint registration ended, for every request that named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Redis holds the endpoint.
    Registered,
    /// A fleet-wide bound refused it: not registered, and the ids still count.
    Refused(Bound),
    /// Unknown (the store failed, or answered after the cutoff): the requests get 503.
    Failed,
    /// The request leading it went away first (its client hung up): a sharer takes its place.
    Abandoned,
}

/// The bound that refused an endpoint fleet-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// `--callback-max-endpoints` per window.
    Window,
    /// `--callback-max-per-domain` per domain or address prefix.
    Domain,
}

/// The outcome of an endpoint registration another request leads, shared with it.
pub struct Pending(watch::Receiver<Option<Verdict>>);

impl Pending {
    /// The registration's verdict once it is known.
    pub async fn verdict(mut self) -> Verdict {
        match self.0.wait_for(Option::is_some).await {
            Ok(done) => done.unwrap_or(Verdict::Abandoned),
            Err(_) => Verdict::Abandoned,
        }
    }
}

/// The outcome of a store call another request is making, shared with it.
pub struct Shared(watch::Receiver<Option<Added>>);

/// How a shared `SADD` ended, for the requests sharing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// Redis holds the id, and it entered the window.
    Yes,
    /// It failed (or came after the cutoff): the sharers are answered 503 with the lead.
    No,
    /// The request leading it went away first (its client hung up): a sharer takes its place.
    Abandoned,
}

impl Shared {
    /// How the call ended.
    pub async fn outcome(mut self) -> Added {
        match self.0.wait_for(Option::is_some).await {
            Ok(done) => done.unwrap_or(Added::Abandoned),
            Err(_) => Added::Abandoned,
        }
    }
}

/// A request's duty to register an endpoint fleet-wide.
pub struct Lead<'w> {
    window: &'w Window,
    key: u128,
    domain: u64,
    /// The registration's outcome, for its sharers; `None` until it is known.
    outcome: watch::Sender<Option<Verdict>>,
}

impl Lead<'_> {
    /// The store failed (or answered after the cutoff): the endpoint is unregistered and its
    /// sharers are answered 503 with this request.
    pub fn fail(self) {
        self.unregister();
        self.outcome.send_replace(Some(Verdict::Failed));
    }

    /// Redis holds the endpoint: it is known from now on.
    pub fn confirm(self) {
        let window = self.window;
        if let Some(mut registration) = window.endpoints.get_mut(&self.key)
            && registration.pending.take().is_some()
        {
            // Held under the endpoint's entry (lock order: the entry, then the domains), so
            // the slot is counted held once, when it turns known.
            window.endpoints_held.fetch_add(1, Ordering::AcqRel);
            if let Some(mut slots) = window.domains.get_mut(&self.domain) {
                slots.held += 1;
            }
        }
        self.outcome.send_replace(Some(Verdict::Registered));
    }

    /// A fleet-wide bound refused the endpoint: it is not registered here either (its slots
    /// are given back, so refused endpoints never hold any), its sharers are told, and the
    /// window refuses further endpoints over that bound without asking Redis. What to count
    /// and log for this request.
    pub fn refuse(self, bound: Bound) -> Registered {
        let window = self.window;
        // Marked before the registration goes: a request claiming the endpoint after it
        // finds the bound, not a free slot to ask Redis with again.
        let refused = match bound {
            Bound::Window => {
                window.fleet_full.store(true, Ordering::Release);
                Registered::Full {
                    first: !window.endpoints_overflowed.swap(true, Ordering::AcqRel),
                }
            }
            Bound::Domain => {
                if window.full_domains.len() < window.max_endpoints {
                    window.full_domains.insert(self.domain, ());
                }
                Registered::DomainFull {
                    first: !window.domain_overflowed.swap(true, Ordering::AcqRel),
                }
            }
        };
        self.unregister();
        self.outcome.send_replace(Some(Verdict::Refused(bound)));
        refused
    }

    /// Removes the registration this lead made, giving its slots back (if it is still the
    /// one there). The slots go while its entry is still held: a request claiming the
    /// endpoint meanwhile finds either the registration or its slots free, never a full
    /// window for want of the slot this one is about to give back.
    fn unregister(&self) {
        if let dashmap::Entry::Occupied(entry) = self.window.endpoints.entry(self.key) {
            let ours = entry
                .get()
                .pending
                .as_ref()
                .is_some_and(|p| p.same_channel(&self.outcome.subscribe()));
            if ours {
                self.window.release(entry.get().domain);
                entry.remove();
            }
        }
    }
}

impl Drop for Lead<'_> {
    /// Dropped undecided, the lead was cancelled (its request went away): the endpoint is
    /// unregistered first, so a sharer told of it leads anew.
    fn drop(&mut self) {
        if self.outcome.borrow().is_some() {
            return; // confirmed, refused or failed
        }
        self.unregister();
        self.outcome.send_replace(Some(Verdict::Abandoned));
    }
}

/// What happened to an endpoint offered to a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// Already known in this window.
    Known,
    /// Newly added.
    Added,
    /// The window's endpoint set is full; `first` for the window's first such refusal.
    Full { first: bool },
    /// Its domain (or address prefix) holds `--callback-max-per-domain` endpoints already;
    /// `first` for the window's first such refusal.
    DomainFull { first: bool },
}

impl Window {
    /// A window sized for `capacity` ids (its predecessor's count), so that it does not
    /// rehash while it fills.
    fn new(start: i64, shape: &Shape, epoch: u64, capacity: usize, now_ms: i64) -> Self {
        let Shape {
            secs,
            hasher,
            max_endpoints,
            max_per_domain,
            store_shards,
            cutoff_after_end_ms,
            key,
        } = *shape;
        let cut_at = cutoff_after_end_ms.map(|after| {
            let cutoff_ms = (start + secs) * 1000 + after;
            Instant::now() + Duration::from_millis((cutoff_ms - now_ms).max(0) as u64)
        });
        Self {
            cut_at,
            cut: std::array::from_fn(|_| watch::Sender::new(false)),
            is_cut: AtomicBool::new(false),
            start,
            ids: DashMap::with_capacity_and_hasher_and_shard_amount(
                if key.is_some() { 0 } else { capacity },
                hasher,
                SHARDS,
            ),
            sketch: key.map(|key| (Sketch::new(), key)),
            endpoints: DashMap::with_hasher_and_shard_amount(hasher, 8),
            domains: DashMap::with_hasher_and_shard_amount(hasher, 8),
            endpoint_slots: AtomicUsize::new(0),
            endpoints_held: AtomicUsize::new(0),
            max_endpoints,
            max_per_domain,
            endpoints_overflowed: AtomicBool::new(false),
            domain_overflowed: AtomicBool::new(false),
            fleet_full: AtomicBool::new(false),
            full_domains: DashMap::with_hasher_and_shard_amount(hasher, 2),
            inflight: AtomicUsize::new(0),
            pending: DashMap::with_hasher_and_shard_amount(hasher, SHARDS),
            touched: (0..store_shards).map(|_| AtomicBool::new(false)).collect(),
            epoch,
        }
    }

    /// Adds `id`; true when it was not in this window yet (approx mode: when it grew the
    /// sketch).
    pub fn insert(&self, id: i64) -> bool {
        match &self.sketch {
            None => self.ids.insert(id, ()).is_none(),
            Some((sketch, key)) => sketch.add(&key.keyed(id)),
        }
    }

    /// Whether `id` is already in this window (exact mode; approx mode holds no ids).
    pub fn contains(&self, id: i64) -> bool {
        self.ids.contains_key(&id)
    }

    /// Distinct ids in this window so far (exact once the window is drained; approx mode:
    /// the sketch's estimate, as `PFCOUNT` would give it).
    pub fn count(&self) -> usize {
        match &self.sketch {
            None => self.ids.len(),
            Some((sketch, _)) => sketch.estimate() as usize,
        }
    }

    /// Approx mode: the window's sketch.
    pub fn sketch(&self) -> Option<&Sketch> {
        self.sketch.as_ref().map(|(sketch, _)| sketch)
    }

    /// Registers a callback endpoint, bounded by `max_endpoints` per window and
    /// `max_per_domain` per domain. Allocates only when the endpoint is added.
    pub fn register_endpoint(&self, endpoint: &Endpoint<'_>) -> Registered {
        // Known endpoints (the common case) take only a read lock.
        if self.endpoints.contains_key(&endpoint.key()) {
            return Registered::Known;
        }
        match self.register(endpoint, None) {
            Ok(()) => Registered::Added,
            Err(Claim::Settled(refused)) => refused,
            // Without a store nothing is in flight: never undecided.
            Err(_) => Registered::Known,
        }
    }

    /// Fleet mode: offers an endpoint that counts as known only once Redis holds it. The
    /// first request for it leads its registration; concurrent ones share the outcome.
    pub fn claim_endpoint(&self, endpoint: &Endpoint<'_>) -> Claim<'_> {
        if let Some(registration) = self.endpoints.get(&endpoint.key()) {
            return registration.claim();
        }
        let (outcome, pending) = watch::channel(None);
        match self.register(endpoint, Some(pending)) {
            Ok(()) => Claim::Lead(Lead {
                window: self,
                key: endpoint.key(),
                domain: endpoint.domain_key(),
                outcome,
            }),
            Err(settled) => settled,
        }
    }

    /// Adds the endpoint unless it is there (then its registration's state decides) or a
    /// bound refuses it (this instance's, or one the fleet was found at). Decided under the
    /// endpoint's map entry, so that two requests for one endpoint never both take a slot,
    /// and one finds the other's registration as it stands.
    ///
    /// In fleet mode (`pending` given) a bound refuses only when the endpoints Redis holds
    /// reach it: one reached with registrations still in flight is [`Claim::Undecided`].
    /// On a single node every registration is final when made, and every slot refuses.
    fn register(
        &self,
        endpoint: &Endpoint<'_>,
        pending: Option<watch::Receiver<Option<Verdict>>>,
    ) -> Result<(), Claim<'_>> {
        let vacant = match self.endpoints.entry(endpoint.key()) {
            dashmap::Entry::Occupied(occupied) => return Err(occupied.get().claim()),
            dashmap::Entry::Vacant(vacant) => vacant,
        };
        let fleet = pending.is_some();
        if self.fleet_full.load(Ordering::Acquire) {
            let first = !self.endpoints_overflowed.swap(true, Ordering::AcqRel);
            return Err(Claim::Settled(Registered::Full { first }));
        }
        if !self.take_slot() {
            // Held only grows (a confirmed registration is never given back): once it reaches
            // the bound, Redis holds that many of this window's endpoints.
            if fleet && self.endpoints_held.load(Ordering::Acquire) < self.max_endpoints {
                return Err(Claim::Undecided);
            }
            let first = !self.endpoints_overflowed.swap(true, Ordering::AcqRel);
            return Err(Claim::Settled(Registered::Full { first }));
        }
        // Lock order: an endpoint's entry, then the domain counts (as in `release`'s callers).
        let domain = endpoint.domain_key();
        if self.full_domains.contains_key(&domain) {
            self.endpoint_slots.fetch_sub(1, Ordering::AcqRel);
            let first = !self.domain_overflowed.swap(true, Ordering::AcqRel);
            return Err(Claim::Settled(Registered::DomainFull { first }));
        }
        {
            let mut slots = self.domains.entry(domain).or_default();
            if slots.taken >= self.max_per_domain {
                let undecided = fleet && slots.held < self.max_per_domain;
                drop(slots);
                self.endpoint_slots.fetch_sub(1, Ordering::AcqRel);
                self.domains.remove_if(&domain, |_, slots| slots.taken == 0);
                if undecided {
                    return Err(Claim::Undecided);
                }
                let first = !self.domain_overflowed.swap(true, Ordering::AcqRel);
                return Err(Claim::Settled(Registered::DomainFull { first }));
            }
            slots.taken += 1;
        }
        vacant.insert(Registration {
            url: endpoint.as_str().into(),
            domain,
            pending,
        });
        Ok(())
    }

    /// Takes an endpoint slot, if one is free.
    fn take_slot(&self) -> bool {
        if self.endpoint_slots.fetch_add(1, Ordering::AcqRel) >= self.max_endpoints {
            self.endpoint_slots.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Gives back an endpoint slot and its domain's (of a registration never held: a
    /// confirmed one keeps its slots for the window's life).
    fn release(&self, domain: u64) {
        self.endpoint_slots.fetch_sub(1, Ordering::AcqRel);
        if let Some(mut slots) = self.domains.get_mut(&domain) {
            slots.taken = slots.taken.saturating_sub(1);
        }
        self.domains.remove_if(&domain, |_, slots| slots.taken == 0);
    }

    /// Whether the endpoint is registered in this window (in fleet mode: Redis holds it).
    pub fn has_endpoint(&self, endpoint: &Endpoint<'_>) -> bool {
        self.endpoints
            .get(&endpoint.key())
            .is_some_and(|r| r.pending.is_none())
    }

    /// The ids of this window (for re-adding them to the store).
    pub fn ids(&self) -> Vec<i64> {
        self.ids.iter().map(|e| *e.key()).collect()
    }

    /// Runs `add` for `id` unless a concurrent request already is; every caller gets the
    /// outcome of that one call at once, a failure too (`Err(None)` for those that shared
    /// it). On success the id enters this window before anyone is answered.
    pub async fn add_once<F, Fut, E>(&self, id: i64, add: F) -> Result<(), Option<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        loop {
            let lead = match self.pending.entry(id) {
                dashmap::Entry::Occupied(mut running) => Err(Shared(running.get_mut().subscribe())),
                dashmap::Entry::Vacant(vacant) => {
                    vacant.insert(Sharers::default());
                    Ok(PendingId {
                        window: self,
                        id,
                        ended: false,
                    })
                }
            };
            let pending = match lead {
                Err(shared) => match shared.outcome().await {
                    Added::Yes => return Ok(()),
                    Added::No => return Err(None),
                    // Its lead's client hung up before the outcome: this request leads in
                    // its place (a `SADD` again is harmless), or shares a newer lead's —
                    // unless the cutoff passed meanwhile (no write after it).
                    Added::Abandoned if self.is_cut() => return Err(None),
                    Added::Abandoned => continue,
                },
                Ok(pending) => pending,
            };
            let added = add().await;
            // Acknowledged after the cutoff: the count may have been read without it.
            let mut entered = added.is_ok() && !self.is_cut();
            if entered {
                self.insert(id);
                // Cut meanwhile: out again (the count may have been read without it).
                if self.is_cut() {
                    self.ids.remove(&id);
                    entered = false;
                }
            }
            pending.finish(entered);
            return match added {
                Ok(()) if !entered => Err(None),
                added => added.map_err(Some),
            };
        }
    }

    /// Marks a store shard written by this instance (an id of it entered the window). Read
    /// first: once marked, the shared flag is only read, never written again.
    pub fn touch_shard(&self, shard: u32) {
        if let Some(t) = self.touched.get(shard as usize)
            && !t.load(Ordering::Relaxed)
        {
            t.store(true, Ordering::Release);
        }
    }

    /// The store shards this instance wrote in this window: those whose loss (Redis
    /// restarted or evicted them) makes the reporter re-add its ids.
    pub fn touched_shards(&self) -> Vec<u32> {
        (0..self.touched.len() as u32)
            .filter(|&s| self.touched[s as usize].load(Ordering::Acquire))
            .collect()
    }

    /// The endpoints registered in this window, normalized (in fleet mode: those Redis
    /// holds, not those whose registration is still in flight).
    pub fn endpoints(&self) -> Vec<Box<str>> {
        self.endpoints
            .iter()
            .filter(|e| e.value().pending.is_none())
            .map(|e| e.value().url.clone())
            .collect()
    }

    /// Requests admitted and still running.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// Fleet mode: when the window's cutoff is (see [`Window::cut`]).
    pub fn cut_at(&self) -> Option<Instant> {
        self.cut_at
    }

    /// Passes the cutoff: every request of this window still waiting for the store is
    /// answered 503, and no acknowledgement enters the window from now on (SPEC §6.2).
    pub fn cut(&self) {
        if !self.is_cut.swap(true, Ordering::AcqRel) {
            for lane in &self.cut {
                lane.send_replace(true);
            }
        }
    }

    /// Whether the cutoff has passed: cut, or due (whoever cuts may be late).
    pub fn is_cut(&self) -> bool {
        self.is_cut.load(Ordering::Acquire) || self.cut_at.is_some_and(|at| Instant::now() >= at)
    }

    /// Resolves at the cutoff.
    pub fn cutoff(&self) -> impl Future<Output = ()> + use<> {
        let lane = crate::lanes::current().unwrap_or(0) % CUT_LANES;
        let mut cut = self.cut[lane].subscribe();
        async move {
            let _ = cut.wait_for(|cut| *cut).await;
        }
    }
}

/// The requests sharing a lead's `SADD`: their channel is made when the first of them
/// arrives, so an id nobody shares (the common case) costs no allocation and no wake-up.
#[derive(Default)]
struct Sharers(Option<watch::Sender<Option<Added>>>);

impl Sharers {
    fn subscribe(&mut self) -> watch::Receiver<Option<Added>> {
        self.0
            .get_or_insert_with(|| watch::Sender::new(None))
            .subscribe()
    }

    fn tell(self, added: Added) {
        if let Some(outcome) = self.0 {
            outcome.send_replace(Some(added));
        }
    }
}

/// The id whose `SADD` a request leads: its sharers are told the outcome when it finishes,
/// or (dropped: the request was cancelled) that it was abandoned, so one of them leads.
struct PendingId<'w> {
    window: &'w Window,
    id: i64,
    /// The entry is gone and the sharers told.
    ended: bool,
}

impl PendingId<'_> {
    fn finish(mut self, entered: bool) {
        // A failure is not remembered: the next request tries again.
        self.end(if entered { Added::Yes } else { Added::No });
    }

    /// Removes the id's entry, then tells its sharers (told of an abandonment, one of them
    /// leads anew and finds the entry gone). The entry is this lead's: only the request that
    /// put it there removes it, and nobody else puts one there while it is.
    fn end(&mut self, added: Added) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        if let Some((_, sharers)) = self.window.pending.remove(&self.id) {
            sharers.tell(added);
        }
    }
}

impl Drop for PendingId<'_> {
    fn drop(&mut self) {
        self.end(Added::Abandoned);
    }
}

/// A request admitted to a window, while the open windows cannot change
/// ([`Windows::with_admitted`]).
pub struct Admitted<'a> {
    window: &'a Arc<Window>,
}

impl Admitted<'_> {
    pub fn window(&self) -> &Window {
        self.window
    }

    /// Holds the window beyond the admission (a request that waits for the store).
    pub fn hold(&self) -> Admission {
        // Incremented under the read lock: once `rotate` has taken the write lock, every
        // admission to the window it removes is visible in `inflight`.
        self.window.inflight.fetch_add(1, Ordering::AcqRel);
        Admission {
            window: Arc::clone(self.window),
        }
    }
}

/// A request's hold on the window it was admitted to; the window's count is not read while
/// any admission is alive.
pub struct Admission {
    window: Arc<Window>,
}

impl Admission {
    pub fn window(&self) -> &Window {
        &self.window
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.window.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The two open windows: the one being filled and its neighbour (the previous one while it
/// waits out its grace, or the next one, created ahead so requests never create windows).
pub struct Windows {
    shape: Shape,
    /// `[older, newer]`, `newer.start == older.start + secs`. Written once per window.
    open: RwLock<[Arc<Window>; 2]>,
    /// Set by [`Windows::close`] at shutdown; read under `open`'s read lock.
    closed: AtomicBool,
}

/// What every window of an instance is made with.
#[derive(Debug, Clone, Copy)]
struct Shape {
    secs: i64,
    hasher: Xxh3Seeded,
    max_endpoints: usize,
    max_per_domain: usize,
    /// Store shards per window in fleet mode; 0 on a single node.
    store_shards: usize,
    /// Fleet mode: the cutoff's distance from the window's end; `None` on a single node.
    cutoff_after_end_ms: Option<i64>,
    /// Approx mode: the key ids are hashed with before the sketch's hash; `None` in exact
    /// mode.
    key: Option<HashKey>,
}

impl Windows {
    /// Opens the window holding `now_ms` and the one after it, each holding at most
    /// `max_endpoints` endpoints and `max_per_domain` per domain. `store_shards` is the
    /// number of store shards per window in fleet mode, 0 on a single node.
    pub fn new(
        now_ms: i64,
        secs: i64,
        (max_endpoints, max_per_domain): (usize, usize),
        store_shards: usize,
    ) -> Self {
        let shape = Shape {
            secs,
            hasher: Xxh3Seeded::random(),
            max_endpoints,
            max_per_domain,
            store_shards,
            cutoff_after_end_ms: None,
            key: None,
        };
        let first = window_start(now_ms, secs);
        let open = [
            Arc::new(Window::new(first, &shape, 0, 0, now_ms)),
            Arc::new(Window::new(first + secs, &shape, 0, 0, now_ms)),
        ];
        Self {
            shape,
            open: RwLock::new(open),
            closed: AtomicBool::new(false),
        }
    }

    /// Fleet mode: every window gets a cutoff `after_end_ms` after its end (the two open now
    /// included; `now_ms` is the wall clock now).
    pub fn with_cutoff(mut self, after_end_ms: i64, now_ms: i64) -> Self {
        self.shape.cutoff_after_end_ms = Some(after_end_ms);
        self.reopen(now_ms)
    }

    /// Approx mode: every window is a sketch of ids hashed with `key` (the two open now
    /// included).
    pub fn approx(mut self, key: HashKey, now_ms: i64) -> Self {
        self.shape.key = Some(key);
        self.reopen(now_ms)
    }

    /// Makes the open windows again with the current shape (at start-up, before any
    /// request).
    fn reopen(mut self, now_ms: i64) -> Self {
        let open = self.open.get_mut();
        for window in open.iter_mut() {
            *window = Arc::new(Window::new(window.start, &self.shape, 0, 0, now_ms));
        }
        self
    }

    /// Approx mode's key; `None` in exact mode.
    pub fn key(&self) -> Option<HashKey> {
        self.shape.key
    }

    /// Window length in seconds.
    pub fn secs(&self) -> i64 {
        self.shape.secs
    }

    /// Cuts every open window whose cutoff is `now` or earlier; the next cutoff still ahead.
    pub fn cut_due(&self, now: Instant) -> Option<Instant> {
        let mut next = None;
        for window in self.open.read().iter() {
            match window.cut_at {
                Some(at) if at <= now => window.cut(),
                Some(at) => next = Some(next.map_or(at, |n: Instant| n.min(at))),
                None => {}
            }
        }
        next
    }

    /// Admits a request arriving at `now_ms` to its window, for as long as `f` runs: under
    /// the open windows' read lock, so that a rotation (which takes the write lock) finds
    /// nothing `f` did to the window it removes still under way, and a request decided on the
    /// spot needs neither the window's `inflight` nor a reference to it. `f` may
    /// [`Admitted::hold`] the window beyond the call. A time before the older open window
    /// (the clock stepped back into a reported window) lands in the older one; a time past
    /// the newer one (the reporter has not rotated yet) lands in the newer one. `None` once
    /// [`Windows::close`] ran: the open window's line may be written already.
    pub fn with_admitted<R>(&self, now_ms: i64, f: impl FnOnce(Admitted<'_>) -> R) -> Option<R> {
        let start = window_start(now_ms, self.shape.secs);
        let open = self.open.read();
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let window = if start >= open[1].start {
            &open[1]
        } else {
            &open[0]
        };
        Some(f(Admitted { window }))
    }

    /// Admits a request arriving at `now_ms` to its window until the returned admission is
    /// dropped (see [`Windows::with_admitted`]).
    pub fn admit(&self, now_ms: i64) -> Option<Admission> {
        self.with_admitted(now_ms, |admitted| admitted.hold())
    }

    /// Admits nothing from now on (shutdown's last rotation). Under the write lock: every
    /// admission made before is visible in its window's `inflight` once this returns.
    pub fn close(&self) {
        let _open = self.open.write();
        self.closed.store(true, Ordering::Release);
    }

    /// Both open windows, older first.
    pub fn open(&self) -> [Arc<Window>; 2] {
        self.open.read().clone()
    }

    /// Start of the older open window: the next one to be reported.
    pub fn oldest_start(&self) -> i64 {
        self.open.read()[0].start
    }

    /// Closes the older window to new requests and opens the one after the newer, tagged
    /// with the store's `epoch`. Returns the closed window; its count is final once its
    /// `inflight` reaches zero.
    pub fn rotate(&self, epoch: u64, now_ms: i64) -> Arc<Window> {
        let (next_start, capacity) = {
            let open = self.open.read();
            (open[1].start + self.shape.secs, open[0].ids.len())
        };
        // Built outside the lock: allocating a large table must not stall requests.
        let next = Arc::new(Window::new(
            next_start,
            &self.shape,
            epoch,
            capacity,
            now_ms,
        ));
        let mut open = self.open.write();
        let newer = std::mem::replace(&mut open[1], next);
        std::mem::replace(&mut open[0], newer)
    }
}

/// Formats epoch milliseconds as RFC 3339 UTC: `2026-11-24T14:05:00Z`, or with `.mmm` when
/// `millis` is set.
pub fn format_utc(epoch_ms: i64, millis: bool) -> String {
    let secs = epoch_ms.div_euclid(1000);
    let ms = epoch_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (tod / 3600, tod % 3600 / 60, tod % 60);
    if millis {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{ms:03}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::query::EndpointBuf;

    #[test]
    fn window_start_is_epoch_aligned() {
        assert_eq!(window_start(0, 60), 0);
        assert_eq!(window_start(59_999, 60), 0);
        assert_eq!(window_start(60_000, 60), 60);
        assert_eq!(window_start(1_764_000_123_456, 60), 1_764_000_120);
        assert_eq!(window_start(-1, 60), -60);
        assert_eq!(window_start(2_500, 1), 2);
    }

    #[test]
    fn formats_rfc3339_utc() {
        assert_eq!(format_utc(0, false), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_795_529_100_000, false), "2026-11-24T14:05:00Z");
        assert_eq!(
            format_utc(1_795_529_161_004, true),
            "2026-11-24T14:06:01.004Z"
        );
        assert_eq!(format_utc(951_782_400_000, false), "2000-02-29T00:00:00Z");
        assert_eq!(
            format_utc(4_107_542_399_999, true),
            "2100-02-28T23:59:59.999Z"
        );
    }

    #[test]
    fn counts_distinct_ids() {
        let w = Windows::new(120_000, 60, (10, 10), 0);
        for id in [1, 2, 2, 3, 1, -1, i64::MIN, i64::MAX] {
            w.admit(125_000).unwrap().window().insert(id);
        }
        assert_eq!(w.open()[0].count(), 6);
        assert_eq!(w.open()[1].count(), 0);
    }

    #[test]
    fn admits_by_arrival_time_and_clamps_to_open_windows() {
        let w = Windows::new(120_000, 60, (10, 10), 0);
        let [older, newer] = w.open();
        assert_eq!((older.start, newer.start), (120, 180));
        w.admit(179_999).unwrap().window().insert(1); // older
        w.admit(180_000).unwrap().window().insert(2); // newer
        w.admit(10_000).unwrap().window().insert(3); // clock stepped back: the older open window
        w.admit(900_000).unwrap().window().insert(4); // far ahead of the reporter: the newer one
        assert_eq!(older.count(), 2);
        assert_eq!(newer.count(), 2);
    }

    #[test]
    fn a_closed_set_admits_nothing() {
        let w = Windows::new(120_000, 60, (10, 10), 0);
        let held = w.admit(130_000).unwrap();
        w.close();
        assert!(w.admit(130_000).is_none());
        assert!(w.admit(190_000).is_none());
        assert_eq!(
            held.window().inflight(),
            1,
            "admitted before: still counted"
        );
    }

    #[test]
    fn rotation_hands_back_the_older_window_and_opens_the_next() {
        let w = Windows::new(120_000, 60, (10, 10), 0);
        let held = w.admit(130_000).unwrap();
        held.window().insert(7);
        let closed = w.rotate(0, 130_000);
        assert_eq!(closed.start, 120);
        assert_eq!(
            closed.inflight(),
            1,
            "the live admission keeps the count open"
        );
        drop(held);
        assert_eq!(closed.inflight(), 0);
        assert_eq!(closed.count(), 1);
        let [older, newer] = w.open();
        assert_eq!((older.start, newer.start), (180, 240));
        // A late request for the closed window now counts in the oldest open one.
        w.admit(130_000).unwrap().window().insert(8);
        assert_eq!(older.count(), 1);
        assert_eq!(closed.count(), 1);
    }

    /// Parses `url` and offers it to `window`.
    fn offer(window: &Window, url: &str) -> Registered {
        let mut buf = EndpointBuf::new();
        window.register_endpoint(&Endpoint::parse(url, &mut buf).unwrap())
    }

    #[test]
    fn endpoints_are_bounded_per_window() {
        let w = Windows::new(0, 60, (2, 2), 0);
        let win = w.admit(0).unwrap();
        let win = win.window();
        assert_eq!(offer(win, "http://a/"), Registered::Added);
        assert_eq!(offer(win, "http://a/"), Registered::Known);
        assert_eq!(offer(win, "HTTP://A:80"), Registered::Known, "one target");
        assert_eq!(offer(win, "http://b/"), Registered::Added);
        assert_eq!(offer(win, "http://c/"), Registered::Full { first: true });
        assert_eq!(offer(win, "http://d/"), Registered::Full { first: false });
        assert_eq!(offer(win, "http://a/"), Registered::Known);
        assert_eq!(offer(win, "http://c/"), Registered::Full { first: false });
        let mut eps = win.endpoints();
        eps.sort();
        assert_eq!(eps, vec![Box::<str>::from("http://a/"), "http://b/".into()]);
    }

    #[test]
    fn endpoints_are_bounded_per_domain() {
        let w = Windows::new(0, 60, (10, 2), 0);
        let win = w.admit(0).unwrap();
        let win = win.window();
        assert_eq!(offer(win, "http://a.evil.com/"), Registered::Added);
        assert_eq!(offer(win, "http://b.evil.com/"), Registered::Added);
        assert_eq!(
            offer(win, "http://c.evil.com/"),
            Registered::DomainFull { first: true }
        );
        assert_eq!(
            offer(win, "http://evil.com/x"),
            Registered::DomainFull { first: false }
        );
        assert_eq!(offer(win, "http://127.0.0.2/"), Registered::Added);
        assert_eq!(offer(win, "http://127.0.0.3/"), Registered::Added);
        assert_eq!(
            offer(win, "http://127.0.0.4/"),
            Registered::DomainFull { first: false }
        );
        assert_eq!(offer(win, "http://127.1.0.1/"), Registered::Added);
        assert_eq!(offer(win, "https://good.example/"), Registered::Added);
        assert_eq!(win.endpoints().len(), 6);
    }

    #[test]
    fn concurrent_inserts_count_exactly() {
        let w = Arc::new(Windows::new(0, 60, (1, 1), 0));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = Arc::clone(&w);
                std::thread::spawn(move || {
                    for i in 0..50_000i64 {
                        // Every thread sends the same ids, half of them once more.
                        w.admit(1_000).unwrap().window().insert(i);
                        if (i + t) % 2 == 0 {
                            w.admit(1_000).unwrap().window().insert(i);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(w.open()[0].count(), 50_000);
    }
}

#[cfg(test)]
mod fleet_tests {
    use super::*;
    use crate::http::query::EndpointBuf;
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_adds_of_one_id_share_one_store_call() {
        let windows = Windows::new(0, 60, (1, 1), 4);
        let window = Arc::clone(&windows.open()[0]);
        let calls = AtomicUsize::new(0);
        let add = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<(), &str>(())
        };
        let adds = (0..10).map(|_| window.add_once(5, add));
        let outcomes = futures::future::join_all(adds).await;
        assert!(outcomes.iter().all(Result::is_ok));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one store call for ten requests"
        );
        assert!(window.contains(5));

        // A failure answers every sharer at once, and is not remembered: the next request
        // asks the store again.
        calls.store(0, Ordering::SeqCst);
        let fail = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err::<(), &str>("down")
        };
        let outcomes = futures::future::join_all((0..10).map(|_| window.add_once(6, fail))).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one failed call for ten");
        assert_eq!(
            outcomes.iter().filter(|o| **o == Err(Some("down"))).count(),
            1
        );
        assert_eq!(outcomes.iter().filter(|o| **o == Err(None)).count(), 9);
        assert!(!window.contains(6));
        assert_eq!(
            window.add_once(6, || async { Ok::<(), &str>(()) }).await,
            Ok(())
        );
        assert!(window.contains(6));
    }

    /// A lead cancelled before its outcome (its client hung up) fails nobody: a sharer leads
    /// in its place and gets the store's answer.
    #[tokio::test]
    async fn a_cancelled_lead_hands_its_sadd_to_a_sharer() {
        let windows = Windows::new(0, 60, (1, 1), 4);
        let window = Arc::clone(&windows.open()[0]);
        let calls = AtomicUsize::new(0);
        let add = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<(), &str>(())
        };
        let lead = window.add_once(8, add);
        let sharers = futures::future::join_all((0..3).map(|_| window.add_once(8, add)));
        // The lead goes first, then is dropped 10 ms in, while the sharers wait on it.
        let cancelled = tokio::time::timeout(Duration::from_millis(10), lead);
        let (lead, outcomes) = tokio::join!(cancelled, sharers);
        assert!(lead.is_err(), "the lead was cancelled");
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "one call, then one for all sharers"
        );
        assert!(window.contains(8));
    }

    /// Two requests claiming one endpoint whose registrations keep failing: neither is ever
    /// told it is known, nor refused as over a bound it is within, and no slot leaks.
    #[test]
    fn racing_claims_of_one_endpoint_settle_nothing_falsely() {
        let windows = Windows::new(0, 60, (1, 1), 4);
        let window = Arc::clone(&windows.open()[0]);
        let settled = AtomicUsize::new(0);
        let undecided = AtomicUsize::new(0);
        let leads = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..50_000 {
                        let mut buf = EndpointBuf::new();
                        let e = Endpoint::parse("http://hooks.example/x", &mut buf).unwrap();
                        match window.claim_endpoint(&e) {
                            Claim::Lead(lead) => {
                                leads.fetch_add(1, Ordering::Relaxed);
                                lead.fail(); // the store failed
                            }
                            Claim::Settled(_) => {
                                settled.fetch_add(1, Ordering::Relaxed);
                            }
                            Claim::Undecided => {
                                undecided.fetch_add(1, Ordering::Relaxed);
                            }
                            Claim::Wait(_) => {}
                        }
                    }
                });
            }
        });
        assert!(leads.load(Ordering::Relaxed) > 0);
        assert_eq!(settled.load(Ordering::Relaxed), 0, "settled without Redis");
        assert_eq!(
            undecided.load(Ordering::Relaxed),
            0,
            "a slot seen taken without its registration"
        );
        assert_eq!(
            window.endpoint_slots.load(Ordering::Relaxed),
            0,
            "slot leak"
        );
        assert_eq!(window.domains.len(), 0, "domain count leak");
    }

    /// Due is cut, whether or not anyone cut it yet.
    #[tokio::test(start_paused = true)]
    async fn a_due_cutoff_counts_as_cut() {
        let windows = Windows::new(59_500, 60, (1, 1), 4).with_cutoff(650, 59_500);
        let window = Arc::clone(&windows.open()[0]);
        tokio::time::sleep(Duration::from_millis(1_149)).await;
        assert!(!window.is_cut());
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(
            window.is_cut(),
            "nobody called cut(), but the cutoff has passed"
        );
    }

    /// Past the cutoff an acknowledgement no longer enters the window, and the cutoff is
    /// fixed on the monotonic clock when the window is made.
    #[tokio::test(start_paused = true)]
    async fn the_cutoff_closes_a_window_to_acknowledgements() {
        // Window [0, 60 s); cutoff 650 ms after its end; the wall clock reads 59.5 s.
        let windows = Windows::new(59_500, 60, (1, 1), 4).with_cutoff(650, 59_500);
        let window = Arc::clone(&windows.open()[0]);
        let at = window.cut_at().unwrap();
        assert_eq!(at - Instant::now(), Duration::from_millis(1_150));
        assert_eq!(windows.cut_due(Instant::now()), Some(at));
        assert!(!window.is_cut());
        let slow = window.add_once(7, || async {
            tokio::time::sleep(Duration::from_millis(2_000)).await;
            Ok::<(), &str>(())
        });
        let cut = async {
            tokio::time::sleep_until(at).await;
            windows.cut_due(Instant::now());
        };
        let (added, ()) = tokio::join!(slow, cut);
        assert!(window.is_cut());
        assert_eq!(added, Err(None), "acknowledged after the cutoff");
        assert!(!window.contains(7));
        assert!(
            windows.open()[1].cut_at().unwrap() > at,
            "the next window's is later"
        );
    }

    /// Requests naming an endpoint whose registration is in flight wait for it and share its
    /// outcome; a confirmed one is known at once.
    #[tokio::test]
    async fn endpoint_registrations_are_shared() {
        let windows = Windows::new(0, 60, (10, 10), 4);
        let window = Arc::clone(&windows.open()[0]);
        let mut buf = EndpointBuf::new();
        let e = Endpoint::parse("http://hooks.example/x", &mut buf).unwrap();
        let Claim::Lead(lead) = window.claim_endpoint(&e) else {
            panic!("first claim leads");
        };
        let Claim::Wait(shared) = window.claim_endpoint(&e) else {
            panic!("second claim waits");
        };
        let waiter = tokio::spawn(shared.verdict());
        lead.confirm();
        assert_eq!(waiter.await.unwrap(), Verdict::Registered);
        assert!(window.has_endpoint(&e));
        assert!(matches!(
            window.claim_endpoint(&e),
            Claim::Settled(Registered::Known)
        ));
    }

    /// Leads `url`'s registration in `window`, or panics.
    fn lead<'w>(window: &'w Window, url: &str) -> Lead<'w> {
        let mut buf = EndpointBuf::new();
        match window.claim_endpoint(&Endpoint::parse(url, &mut buf).unwrap()) {
            Claim::Lead(lead) => lead,
            _ => panic!("{url}: expected to lead its registration"),
        }
    }

    /// Claims `url` in `window`: what is settled at once, `None` if it leads or waits.
    fn settled(window: &Window, url: &str) -> Option<Registered> {
        let mut buf = EndpointBuf::new();
        match window.claim_endpoint(&Endpoint::parse(url, &mut buf).unwrap()) {
            Claim::Settled(settled) => Some(settled),
            _ => None,
        }
    }

    /// An endpoint the fleet refuses (its window full elsewhere) holds no slot here, its
    /// sharers are told it was refused, not failed, and further new endpoints are refused
    /// without asking Redis again; the endpoints Redis holds stay known.
    #[tokio::test]
    async fn a_window_full_fleet_wide_refuses_without_holding_slots() {
        let windows = Windows::new(0, 60, (3, 3), 4);
        let window = Arc::clone(&windows.open()[0]);
        lead(&window, "http://a.example/").confirm();
        let refused = lead(&window, "http://b.example/");
        let mut buf = EndpointBuf::new();
        let b = Endpoint::parse("http://b.example/", &mut buf).unwrap();
        let Claim::Wait(sharer) = window.claim_endpoint(&b) else {
            panic!("a second claim of b waits for the first");
        };
        assert_eq!(window.endpoint_slots.load(Ordering::Relaxed), 2);
        assert_eq!(
            refused.refuse(Bound::Window),
            Registered::Full { first: true }
        );
        assert_eq!(sharer.verdict().await, Verdict::Refused(Bound::Window));
        assert_eq!(
            window.endpoint_slots.load(Ordering::Relaxed),
            1,
            "b holds none"
        );
        assert_eq!(window.domains.len(), 1, "only a's domain");
        assert!(!window.has_endpoint(&b));
        assert_eq!(
            settled(&window, "http://b.example/"),
            Some(Registered::Full { first: false })
        );
        assert_eq!(
            settled(&window, "http://c.other.example/"),
            Some(Registered::Full { first: false }),
            "the fleet's window stays full"
        );
        assert_eq!(
            settled(&window, "http://a.example/"),
            Some(Registered::Known)
        );
        assert_eq!(
            window.endpoints(),
            vec![Box::<str>::from("http://a.example/")]
        );
    }

    /// A domain full fleet-wide: its endpoints are refused from then on, without a slot or
    /// a store call; other domains still lead their registrations.
    #[test]
    fn a_domain_full_fleet_wide_refuses_its_endpoints_only() {
        let windows = Windows::new(0, 60, (10, 2), 4);
        let window = Arc::clone(&windows.open()[0]);
        assert_eq!(
            lead(&window, "http://x.evil.example/").refuse(Bound::Domain),
            Registered::DomainFull { first: true }
        );
        assert_eq!(window.endpoint_slots.load(Ordering::Relaxed), 0);
        assert_eq!(window.domains.len(), 0);
        assert_eq!(
            settled(&window, "http://y.evil.example/"),
            Some(Registered::DomainFull { first: false })
        );
        assert_eq!(window.endpoint_slots.load(Ordering::Relaxed), 0);
        // A failed registration is not a refusal: the next request asks Redis again.
        lead(&window, "http://good.example/").fail();
        lead(&window, "http://good.example/").confirm();
        assert!(window.endpoints().len() == 1);
    }

    /// A registration whose store call failed fails its sharers; one whose lead was cancelled
    /// (its request went away) is handed over.
    #[tokio::test]
    async fn a_failed_lead_fails_its_sharers_and_a_cancelled_one_hands_over() {
        let windows = Windows::new(0, 60, (10, 10), 4);
        let window = Arc::clone(&windows.open()[0]);
        let mut buf = EndpointBuf::new();
        let e = Endpoint::parse("http://hooks.example/x", &mut buf).unwrap();
        for (cancelled, verdict) in [(false, Verdict::Failed), (true, Verdict::Abandoned)] {
            let first = lead(&window, "http://hooks.example/x");
            let Claim::Wait(sharer) = window.claim_endpoint(&e) else {
                panic!("second claim waits");
            };
            if cancelled {
                drop(first);
            } else {
                first.fail();
            }
            assert_eq!(sharer.verdict().await, verdict);
            assert_eq!(window.endpoint_slots.load(Ordering::Relaxed), 0);
            assert!(window.endpoints().is_empty());
            // Unregistered either way: the next claim leads.
            assert!(matches!(window.claim_endpoint(&e), Claim::Lead(_)));
        }
    }

    /// Claims `url` in `window`: whether the claim is undecided (the request gets 503).
    fn undecided(window: &Window, url: &str) -> bool {
        let mut buf = EndpointBuf::new();
        matches!(
            window.claim_endpoint(&Endpoint::parse(url, &mut buf).unwrap()),
            Claim::Undecided
        )
    }

    /// The window's bound reached only with a registration in flight refuses nothing: the
    /// endpoint offered meanwhile is undecided (no slot, no refusal counted), and once the
    /// registration fails it gets the slot; refused only when Redis holds the bound.
    #[test]
    fn a_window_full_only_in_flight_refuses_nothing() {
        let windows = Windows::new(0, 60, (2, 10), 4);
        let window = Arc::clone(&windows.open()[0]);
        lead(&window, "http://a.example/").confirm();
        let b = lead(&window, "http://b.example/");
        assert!(undecided(&window, "http://c.example/"), "b may yet fail");
        assert!(undecided(&window, "http://d.other.example/"));
        assert_eq!(window.endpoint_slots.load(Ordering::Relaxed), 2);
        assert!(
            !window.endpoints_overflowed.load(Ordering::Relaxed),
            "nothing refused"
        );
        drop(b); // the store failed: Redis holds a only
        let c = lead(&window, "http://c.example/");
        assert!(undecided(&window, "http://b.example/"));
        c.confirm();
        assert_eq!(
            settled(&window, "http://b.example/"),
            Some(Registered::Full { first: true }),
            "Redis holds two: the bound"
        );
        assert_eq!(
            settled(&window, "http://d.other.example/"),
            Some(Registered::Full { first: false })
        );
        let mut eps = window.endpoints();
        eps.sort();
        assert_eq!(
            eps,
            vec![
                Box::<str>::from("http://a.example/"),
                "http://c.example/".into()
            ]
        );
    }

    /// Registrations in flight never outnumber the window's slots: the claims beyond them
    /// are undecided, holding nothing.
    #[test]
    fn registrations_in_flight_stay_within_the_bound() {
        let windows = Windows::new(0, 60, (2, 10), 4);
        let window = Arc::clone(&windows.open()[0]);
        let _leads = [
            lead(&window, "http://a.example/"),
            lead(&window, "http://b.example/"),
        ];
        for i in 0..100 {
            assert!(undecided(&window, &format!("http://e{i}.example/")));
        }
        assert_eq!(window.endpoint_slots.load(Ordering::Relaxed), 2);
        assert_eq!(window.endpoints.len(), 2);
        assert_eq!(window.domains.len(), 2, "a's and b's only");
    }

    /// Per domain: a registration in flight in one domain leaves its domain undecided and no
    /// other; a domain Redis holds full refuses, whatever is in flight elsewhere.
    #[test]
    fn a_domain_full_only_in_flight_is_undecided_in_that_domain_only() {
        let windows = Windows::new(0, 60, (10, 2), 4);
        let window = Arc::clone(&windows.open()[0]);
        lead(&window, "http://x1.evil.example/").confirm();
        let x2 = lead(&window, "http://x2.evil.example/");
        assert!(undecided(&window, "http://x3.evil.example/"));
        // Another domain: its own slots, untouched by x's registration in flight.
        lead(&window, "http://y1.good.example/").confirm();
        lead(&window, "http://y2.good.example/").confirm();
        assert_eq!(
            settled(&window, "http://y3.good.example/"),
            Some(Registered::DomainFull { first: true }),
            "Redis holds two in good.example"
        );
        assert!(
            undecided(&window, "http://x3.evil.example/"),
            "still in flight"
        );
        drop(x2); // the store failed: evil.example holds one
        lead(&window, "http://x3.evil.example/").confirm();
        assert_eq!(
            settled(&window, "http://x4.evil.example/"),
            Some(Registered::DomainFull { first: false })
        );
        assert_eq!(window.endpoint_slots.load(Ordering::Relaxed), 4);
        assert_eq!(window.endpoints_held.load(Ordering::Relaxed), 4);
        assert_eq!(window.endpoints().len(), 4);
    }

    #[test]
    fn touched_shards_are_listed_once() {
        let windows = Windows::new(0, 60, (1, 1), 4);
        let window = &windows.open()[0];
        window.touch_shard(2);
        window.touch_shard(2);
        window.touch_shard(0);
        window.touch_shard(9); // out of range: ignored
        assert_eq!(window.touched_shards(), vec![0, 2]);
    }
}
