//! The order callback work is done in: round-robin across destinations, a cap per destination.
//!
//! A destination is a [`Key`]: the /24 (IPv4) or /64 (IPv6) of the address a delivery
//! resolved to, or, before it is resolved, the site its host name belongs to. Host names are
//! free to mint under wildcard DNS; address prefixes are not, so one caller's hundreds of
//! tarpit endpoints share one lane and take at most `cap` workers, while every other lane gets
//! its turn. The schedule owns no threads and reads no clock: callers pass `now`, so the order
//! is tested without a network or real time.
//!
//! It must not decide what a job is or how long one may run; it only holds jobs, hands out the
//! next one, and gives back those whose deadline passed while they waited.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

use crate::http::query::{Endpoint, EndpointBuf, Site};

/// Which destination a job counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// An IPv4 /24 (IPv4-mapped and NAT64 IPv6 addresses included).
    V4([u8; 3]),
    /// An IPv6 /64.
    V6([u16; 4]),
    /// A host name not resolved yet: its registrable domain (public suffix list), so that
    /// minted subdomains of one zone (whose DNS a caller may make slow) share a lane while
    /// they are looked up.
    Site(Box<str>),
}

impl Key {
    /// The prefix `ip` belongs to.
    pub fn of_addr(ip: IpAddr) -> Self {
        Site::of_ip(ip).into()
    }

    /// The key of a host as written in a URL: an IP literal's prefix, else its site.
    pub fn of_host(host: &str) -> Self {
        Site::of_host(&host.to_ascii_lowercase()).into()
    }

    /// The key of a normalized endpoint before it is resolved.
    pub fn of_endpoint(endpoint: &str) -> Self {
        let mut buf = EndpointBuf::new();
        match Endpoint::parse_decoded(endpoint, &mut buf) {
            Ok(endpoint) => Site::of_host(endpoint.host()).into(),
            Err(_) => Key::Site("".into()),
        }
    }
}

impl From<Site<'_>> for Key {
    fn from(site: Site<'_>) -> Self {
        match site {
            Site::V4(prefix) => Key::V4(prefix),
            Site::V6(prefix) => Key::V6(prefix),
            Site::Name(domain) => Key::Site(domain.into()),
        }
    }
}

/// A job waiting in a lane.
struct Queued<T> {
    job: T,
    /// When it is given up if it has not been taken.
    deadline: Instant,
}

/// One destination's jobs.
struct Lane<T> {
    ready: VecDeque<Queued<T>>,
    /// Jobs of this lane taken and not yet [`Schedule::done`].
    running: usize,
    /// Whether the key is in the ring (it has ready jobs and room under the cap).
    in_ring: bool,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Self {
            ready: VecDeque::new(),
            running: 0,
            in_ring: false,
        }
    }
}

/// A job waiting out its backoff; it joins the front of its lane at `not_before`.
struct Later<T> {
    not_before: Instant,
    /// Ties broken by arrival, so equal times come out in order.
    seq: u64,
    key: Key,
    queued: Queued<T>,
}

impl<T> PartialEq for Later<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Later<T> {}
impl<T> PartialOrd for Later<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Later<T> {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.not_before, other.seq).cmp(&(self.not_before, self.seq))
    }
}

/// A job handed out by [`Schedule::take`]; give its `key` back to [`Schedule::done`].
pub struct Taken<T> {
    pub key: Key,
    pub job: T,
    pub deadline: Instant,
}

/// Jobs by destination, handed out round-robin with at most `cap` running per destination.
pub struct Schedule<T> {
    /// Jobs of one key running at once, at most.
    cap: usize,
    lanes: HashMap<Key, Lane<T>>,
    /// Keys whose lane can hand out a job now, in turn order.
    ring: VecDeque<Key>,
    later: BinaryHeap<Later<T>>,
    seq: u64,
    /// Jobs in lanes or in `later`.
    queued: usize,
    /// Jobs taken and not yet done.
    running: usize,
    /// No queued job's deadline is earlier (it may be earlier than any: then a sweep finds
    /// nothing and sets it right).
    next_expiry: Option<Instant>,
}

impl<T> Schedule<T> {
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            lanes: HashMap::new(),
            ring: VecDeque::new(),
            later: BinaryHeap::new(),
            seq: 0,
            queued: 0,
            running: 0,
            next_expiry: None,
        }
    }

    /// Jobs waiting (ready or backing off).
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Jobs taken and not yet done.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Whether a job can be taken now (without waiting for a backoff to end).
    pub fn has_ready(&self) -> bool {
        !self.ring.is_empty()
    }

    /// Adds a job at the back of its lane.
    pub fn push(&mut self, key: Key, job: T, deadline: Instant) {
        self.note_deadline(deadline);
        self.queued += 1;
        self.lanes
            .entry(key.clone())
            .or_default()
            .ready
            .push_back(Queued { job, deadline });
        self.enlist(&key);
    }

    /// Adds a job at the front of its lane, and its lane at the front of the turn order: for
    /// a job whose turn was spent on something else (looking up where it goes).
    pub fn push_first(&mut self, key: Key, job: T, deadline: Instant) {
        self.note_deadline(deadline);
        self.queued += 1;
        let lane = self.lanes.entry(key.clone()).or_default();
        lane.ready.push_front(Queued { job, deadline });
        if !lane.in_ring && lane.running < self.cap {
            lane.in_ring = true;
            self.ring.push_front(key);
        }
    }

    /// Adds a job that may not be taken before `not_before` (a retry's backoff); then it goes
    /// to the front of its lane, ahead of jobs not yet started.
    pub fn push_later(&mut self, key: Key, job: T, deadline: Instant, not_before: Instant) {
        self.note_deadline(deadline);
        self.queued += 1;
        self.seq += 1;
        self.later.push(Later {
            not_before,
            seq: self.seq,
            key,
            queued: Queued { job, deadline },
        });
    }

    /// The next job in turn whose lane is under the cap, if any.
    pub fn take(&mut self, now: Instant) -> Option<Taken<T>> {
        self.release_due(now);
        while let Some(key) = self.ring.pop_front() {
            let Some(lane) = self.lanes.get_mut(&key) else {
                continue;
            };
            lane.in_ring = false;
            if lane.running >= self.cap {
                continue;
            }
            let Some(queued) = lane.ready.pop_front() else {
                continue;
            };
            lane.running += 1;
            self.running += 1;
            self.queued -= 1;
            self.enlist(&key);
            return Some(Taken {
                key,
                job: queued.job,
                deadline: queued.deadline,
            });
        }
        None
    }

    /// A job taken under `key` has finished (whatever comes of it next is pushed anew).
    pub fn done(&mut self, key: &Key) {
        let Some(lane) = self.lanes.get_mut(key) else {
            return;
        };
        lane.running = lane.running.saturating_sub(1);
        self.running = self.running.saturating_sub(1);
        if lane.running == 0 && lane.ready.is_empty() {
            // Forgotten when idle, so the map holds only destinations with work.
            self.lanes.remove(key);
        } else {
            self.enlist(key);
        }
    }

    /// Removes and returns the queued jobs whose deadline is `now` or earlier.
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        if self.next_expiry.is_none_or(|at| now < at) {
            return Vec::new();
        }
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        let mut earliest = |deadline: Instant| {
            next = Some(next.map_or(deadline, |n| n.min(deadline)));
        };
        for lane in self.lanes.values_mut() {
            let ready = std::mem::take(&mut lane.ready);
            for queued in ready {
                if queued.deadline <= now {
                    expired.push(queued.job);
                } else {
                    earliest(queued.deadline);
                    lane.ready.push_back(queued);
                }
            }
        }
        let mut kept = Vec::with_capacity(self.later.len());
        for later in std::mem::take(&mut self.later) {
            if later.queued.deadline <= now {
                expired.push(later.queued.job);
            } else {
                earliest(later.queued.deadline);
                kept.push(later);
            }
        }
        self.later = kept.into();
        self.next_expiry = next;
        self.queued -= expired.len();
        self.lanes
            .retain(|_, lane| lane.running > 0 || !lane.ready.is_empty());
        let lanes = &mut self.lanes;
        self.ring.retain(|key| {
            let keep = lanes.get(key).is_some_and(|lane| !lane.ready.is_empty());
            if let Some(lane) = lanes.get_mut(key) {
                lane.in_ring = keep;
            }
            keep
        });
        expired
    }

    /// When something may change without a push or a done: a backoff ends or a deadline
    /// passes.
    pub fn wake_at(&self) -> Option<Instant> {
        let backoff = self.later.peek().map(|later| later.not_before);
        match (backoff, self.next_expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes and returns every queued job (running ones stay counted until done).
    pub fn drain(&mut self) -> Vec<T> {
        let mut all: Vec<T> = std::mem::take(&mut self.later)
            .into_iter()
            .map(|later| later.queued.job)
            .collect();
        for lane in self.lanes.values_mut() {
            all.extend(lane.ready.drain(..).map(|queued| queued.job));
            lane.in_ring = false;
        }
        self.lanes.retain(|_, lane| lane.running > 0);
        self.ring.clear();
        self.queued = 0;
        self.next_expiry = None;
        all
    }

    /// Moves backoffs that ended by `now` to the front of their lanes.
    fn release_due(&mut self, now: Instant) {
        while self
            .later
            .peek()
            .is_some_and(|later| later.not_before <= now)
        {
            let Some(later) = self.later.pop() else {
                break;
            };
            self.lanes
                .entry(later.key.clone())
                .or_default()
                .ready
                .push_front(later.queued);
            self.enlist(&later.key);
        }
    }

    /// Puts `key` in the ring if its lane can hand out a job and it is not there yet.
    fn enlist(&mut self, key: &Key) {
        if let Some(lane) = self.lanes.get_mut(key)
            && !lane.in_ring
            && lane.running < self.cap
            && !lane.ready.is_empty()
        {
            lane.in_ring = true;
            self.ring.push_back(key.clone());
        }
    }

    fn note_deadline(&mut self, deadline: Instant) {
        self.next_expiry = Some(self.next_expiry.map_or(deadline, |at| at.min(deadline)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(host: &str) -> Key {
        Key::of_host(host)
    }

    #[test]
    fn keys_are_address_prefixes_and_sites() {
        assert_eq!(key("10.1.2.3"), key("10.1.2.200"));
        assert_ne!(key("10.1.2.3"), key("10.1.3.3"));
        assert_eq!(key("[::ffff:10.1.2.3]"), key("10.1.2.9"));
        assert_eq!(key("[64:ff9b::a01:203]"), key("10.1.2.9"));
        assert_eq!(key("[2001:db8:1:2::1]"), key("[2001:db8:1:2:ffff::9]"));
        assert_ne!(key("[2001:db8:1:2::1]"), key("[2001:db8:1:3::1]"));
        assert_eq!(key("a.evil.example"), key("B.evil.example."));
        assert_eq!(key("x.y.evil.example"), Key::Site("evil.example".into()));
        assert_ne!(key("a.evil.example"), key("a.good.example"));
        assert_eq!(key("localhost"), Key::Site("localhost".into()));
        assert_eq!(key("hooks.a.co.uk"), Key::Site("a.co.uk".into()));
        assert_ne!(key("a.co.uk"), key("b.co.uk"));
        assert_eq!(
            Key::of_endpoint("http://127.0.0.7:81/hook?x=1"),
            key("127.0.0.1")
        );
        assert_eq!(
            Key::of_endpoint("https://[::1]/h"),
            Key::of_addr("::1".parse().unwrap())
        );
    }

    /// Takes everything takeable now; the jobs in order.
    fn take_all(s: &mut Schedule<&'static str>, now: Instant) -> Vec<(Key, &'static str)> {
        std::iter::from_fn(|| s.take(now).map(|t| (t.key, t.job))).collect()
    }

    #[test]
    fn round_robin_across_prefixes_within_the_cap() {
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        let (tarpit, a, b) = (key("127.0.0.1"), key("127.1.0.1"), key("127.2.0.1"));
        let mut s = Schedule::new(2);
        for job in ["t1", "t2", "t3", "t4", "t5"] {
            s.push(tarpit.clone(), job, far);
        }
        s.push(a.clone(), "a1", far);
        s.push(a.clone(), "a2", far);
        s.push(b.clone(), "b1", far);
        let order: Vec<_> = take_all(&mut s, now).into_iter().map(|(_, j)| j).collect();
        // Turns alternate; the tarpit lane stops at two running however much it holds.
        assert_eq!(order, ["t1", "a1", "b1", "t2", "a2"]);
        assert_eq!((s.running(), s.queued()), (5, 3));
        s.done(&a);
        assert!(
            s.take(now).is_none(),
            "a has nothing left, tarpit is at its cap"
        );
        s.done(&tarpit);
        let next = s.take(now).map(|t| t.job);
        assert_eq!(next, Some("t3"));
        assert!(s.take(now).is_none());
        s.done(&b);
        s.done(&tarpit);
        s.done(&tarpit);
        assert_eq!(
            take_all(&mut s, now),
            [(tarpit.clone(), "t4"), (tarpit.clone(), "t5")]
        );
    }

    #[test]
    fn cap_of_one_serialises_a_prefix() {
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        let k = key("192.0.2.1");
        let mut s = Schedule::new(1);
        s.push(k.clone(), "x", far);
        s.push(k.clone(), "y", far);
        assert_eq!(s.take(now).map(|t| t.job), Some("x"));
        assert!(s.take(now).is_none());
        s.done(&k);
        assert_eq!(s.take(now).map(|t| t.job), Some("y"));
    }

    #[test]
    fn backoff_holds_no_slot_and_retries_go_first() {
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        let k = key("192.0.2.1");
        let mut s = Schedule::new(1);
        s.push(k.clone(), "first", far);
        s.push(k.clone(), "second", far);
        let first = s.take(now).map(|t| t.job);
        assert_eq!(first, Some("first"));
        // It failed: back off 100 ms. Meanwhile the lane's slot is free for the next job.
        s.done(&k);
        s.push_later(k.clone(), "first", far, now + Duration::from_millis(100));
        assert_eq!(s.wake_at(), Some(now + Duration::from_millis(100)));
        assert_eq!(s.take(now).map(|t| t.job), Some("second"));
        s.done(&k);
        assert!(s.take(now).is_none(), "still backing off");
        let later = now + Duration::from_millis(100);
        assert_eq!(s.take(later).map(|t| t.job), Some("first"));
    }

    #[test]
    fn waiting_jobs_are_given_up_at_their_deadline() {
        let now = Instant::now();
        let soon = now + Duration::from_secs(1);
        let far = now + Duration::from_secs(60);
        let (k, other) = (key("192.0.2.1"), key("198.51.100.1"));
        let mut s = Schedule::new(1);
        s.push(k.clone(), "running", soon);
        s.push(k.clone(), "stuck", soon);
        s.push(other.clone(), "fine", far);
        s.push_later(
            other.clone(),
            "backing-off",
            soon,
            soon + Duration::from_secs(5),
        );
        assert_eq!(s.take(now).map(|t| t.job), Some("running"));
        assert!(s.expire(now).is_empty());
        assert_eq!(s.wake_at(), Some(soon));
        let mut expired = s.expire(soon);
        expired.sort_unstable();
        assert_eq!(expired, ["backing-off", "stuck"]);
        assert_eq!((s.queued(), s.running()), (1, 1));
        assert_eq!(s.wake_at(), Some(far));
        assert_eq!(s.take(soon).map(|t| t.job), Some("fine"));
        s.done(&k);
        s.done(&other);
        assert_eq!((s.queued(), s.running()), (0, 0));
        assert!(s.lanes.is_empty() && s.ring.is_empty());
    }

    #[test]
    fn drain_empties_the_queue() {
        let now = Instant::now();
        let far = now + Duration::from_secs(60);
        let mut s = Schedule::new(2);
        s.push(key("10.0.0.1"), "a", far);
        s.push_later(key("10.0.0.1"), "b", far, far);
        assert_eq!(s.drain().len(), 2);
        assert_eq!(s.queued(), 0);
        assert!(s.take(far).is_none());
    }
}
