//! Callback delivery: one JSON `POST` per endpoint per final window, off the request path.
//!
//! The reporter hands deliveries to a bounded [`schedule`] ([`Callbacks::submit`]); when it
//! holds `--callback-queue` deliveries a new one is dropped and counted, so a slow target never
//! delays the next window. A fixed pool of blocking worker threads takes work from it
//! round-robin across destination address prefixes, at most `--callback-prefix-concurrency`
//! per prefix: a worker first resolves a delivery's host through the SSRF [`guard`], which
//! files it under the prefix of the address it resolved to; each attempt then connects to
//! exactly those addresses. Connect errors, timeouts, 429 and 5xx are retried with backoff;
//! a delivery backing off holds no worker. A window's deliveries not done by its deadline
//! (see [`Settings::expiry`]) are given up, logged `error=expired` and counted. Every attempt
//! is written to the count log; redirects are never followed.

pub mod guard;
pub mod schedule;
pub mod sign;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use ureq::Agent;
use ureq::unversioned::resolver::DefaultResolver;

use crate::countlog::Entry;
use crate::metrics::{Attempt, Metrics};
use guard::{Guard, GuardedResolver, Unresolved};
use schedule::{Key, Schedule, Taken};

/// Delivery settings, from the `--callback-*` flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--callback-allow`: networks callbacks may reach although not public.
    pub allow: Vec<ipnet::IpNet>,
    pub workers: usize,
    /// Deliveries held at most (waiting, backing off or being sent), across windows.
    pub queue: usize,
    /// Deliveries to one address prefix (/24, /64) in progress at once, at most.
    pub prefix_concurrency: usize,
    /// The window length: a window's deliveries get at least this long before they expire.
    pub window: Duration,
    pub connect_timeout: Duration,
    /// Whole-attempt timeout: connect, send, and receive the response head.
    pub timeout: Duration,
    pub attempts: u32,
    /// First retry delay; doubles per attempt.
    pub backoff: Duration,
    /// Signs each POST (Standard Webhooks headers) when `--callback-secret` is set.
    pub signer: Option<sign::Signer>,
    /// `--callback-hosts`; checked again here, for endpoints registered fleet-wide.
    pub hosts: crate::lists::HostList,
}

/// Longest a deadline is put off; keeps `Instant` arithmetic far from overflow.
const MAX_EXPIRY: Duration = Duration::from_secs(365 * 86_400);

impl Settings {
    /// The backoff before attempt `attempt + 1`.
    fn backoff_after(&self, attempt: u32) -> Duration {
        self.backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
    }

    /// How long after its window is final a delivery may still start an attempt:
    /// max(one window, attempts × timeout + total backoff) — time for every attempt of a
    /// delivery that starts at once, and at least a window for those that wait their turn.
    pub fn expiry(&self) -> Duration {
        let backoffs = (1..self.attempts)
            .map(|attempt| self.backoff_after(attempt))
            .fold(Duration::ZERO, Duration::saturating_add);
        self.timeout
            .saturating_mul(self.attempts)
            .saturating_add(backoffs)
            .max(self.window)
            .min(MAX_EXPIRY)
    }
}

/// One POST to make.
#[derive(Debug)]
pub struct Delivery {
    pub endpoint: Box<str>,
    /// RFC 3339 start of the window, also the `Idempotency-Key`.
    pub window_start: Arc<str>,
    pub body: Arc<str>,
    /// The window's deliveries; each delivery accounts for itself when dropped (delivered,
    /// given up, or refused by a full queue).
    pub batch: Batch,
    /// Set once an attempt got a 2xx.
    delivered: bool,
    /// Attempts made so far.
    attempts: u32,
    /// The permitted addresses its host resolved to; every attempt connects to these.
    route: Option<Box<[SocketAddr]>>,
}

impl Delivery {
    pub fn new(endpoint: Box<str>, window_start: Arc<str>, body: Arc<str>, batch: Batch) -> Self {
        Self {
            endpoint,
            window_start,
            body,
            batch,
            delivered: false,
            attempts: 0,
            route: None,
        }
    }
}

/// One window's deliveries, shared by them and by whoever waits for or shows them.
pub type Batch = Arc<BatchState>;

/// How one window's deliveries stand.
#[derive(Debug)]
pub struct BatchState {
    pending: AtomicUsize,
    delivered: AtomicUsize,
    failed: AtomicUsize,
    /// When the window became final (the batch was made): its deliveries' deadline counts
    /// from here.
    final_at: Instant,
}

impl BatchState {
    /// A batch of `deliveries`, all pending, for a window final now.
    pub fn new(deliveries: usize) -> Batch {
        Arc::new(Self {
            pending: AtomicUsize::new(deliveries),
            delivered: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            final_at: Instant::now(),
        })
    }

    /// Deliveries still queued or running.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Deliveries answered 2xx.
    pub fn delivered(&self) -> usize {
        self.delivered.load(Ordering::Acquire)
    }

    /// Deliveries given up: no 2xx after the last attempt, blocked, expired, dropped or
    /// abandoned.
    pub fn failed(&self) -> usize {
        self.failed.load(Ordering::Acquire)
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let outcome = if self.delivered {
            &self.batch.delivered
        } else {
            &self.batch.failed
        };
        outcome.fetch_add(1, Ordering::AcqRel);
        self.batch.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the pool's owner and its workers share.
struct Pool {
    state: Mutex<State>,
    /// Signalled when work may have become takeable, and when closing.
    wake: Condvar,
    /// The worker threads started so far (at most `--callback-workers`), joined at close.
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// What each worker is started with.
    agent: Agent,
    /// The SSRF guard, made once from `Settings::allow`: the agent's resolver and each
    /// worker's own resolution share it.
    guard: Arc<Guard>,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
}

impl Pool {
    /// Starts one more worker when work is takeable, none waits for it and the pool is below
    /// `--callback-workers`: threads are started as deliveries need them, so that one slow
    /// destination after another (each capped per prefix) never leaves another prefix's
    /// delivery waiting for a thread, and an idle pool holds none.
    fn grow(self: &Arc<Self>, state: &mut State) {
        if !state.open
            || state.idle > 0
            || state.started >= self.settings.workers
            || !state.schedule.has_ready()
        {
            return;
        }
        let worker = Worker {
            pool: Arc::clone(self),
            agent: self.agent.clone(),
            guard: Arc::clone(&self.guard),
            settings: Arc::clone(&self.settings),
            metrics: Arc::clone(&self.metrics),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("verve-callback-{}", state.started))
            .spawn(move || worker.run());
        match spawned {
            Ok(handle) => {
                state.started += 1;
                self.handles.lock().push(handle);
            }
            Err(e) => log::warn!("cannot start a callback worker thread: {e}"),
        }
    }
}

struct State {
    schedule: Schedule<Delivery>,
    /// Cleared by [`Callbacks::close`]: no more deliveries are taken, workers leave once the
    /// schedule is empty.
    open: bool,
    /// Set at the shutdown deadline: workers leave at once and what is queued is dropped.
    abandon: bool,
    /// Workers started, and those waiting for work.
    started: usize,
    idle: usize,
}

/// The delivery pool: a bounded schedule and the worker threads that empty it.
pub struct Callbacks {
    pool: Arc<Pool>,
    /// Deliveries held at most (queued, backing off or being sent); beyond it new ones are
    /// dropped and counted.
    capacity: usize,
    /// How long after its window is final a delivery may start an attempt.
    expiry: Duration,
    metrics: Arc<Metrics>,
}

impl Callbacks {
    /// The pool; worker threads start as deliveries arrive.
    pub fn start(settings: Settings, metrics: Arc<Metrics>) -> Self {
        let (capacity, expiry) = (settings.queue, settings.expiry());
        let guard = Arc::new(Guard::new(settings.allow.clone()));
        let pool = Arc::new(Pool {
            state: Mutex::new(State {
                schedule: Schedule::new(settings.prefix_concurrency),
                open: true,
                abandon: false,
                started: 0,
                idle: 0,
            }),
            wake: Condvar::new(),
            handles: Mutex::new(Vec::new()),
            agent: agent(&settings, Arc::clone(&guard)),
            guard,
            settings: Arc::new(settings),
            metrics: Arc::clone(&metrics),
        });
        Self {
            pool,
            capacity,
            expiry,
            metrics,
        }
    }

    /// Queues a delivery; false (and counted) when the pool holds `--callback-queue`
    /// deliveries already; false when closed.
    pub fn submit(&self, delivery: Delivery) -> bool {
        let key = Key::of_endpoint(&delivery.endpoint);
        let final_at = delivery.batch.final_at;
        // `expiry` is capped at a year, so the sum does not overflow.
        let deadline = final_at.checked_add(self.expiry).unwrap_or(final_at);
        let mut state = self.pool.state.lock();
        if !state.open {
            return false;
        }
        if state.schedule.queued() + state.schedule.running() >= self.capacity {
            drop(state);
            self.metrics
                .callbacks_dropped_queue
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        state.schedule.push(key, delivery, deadline);
        self.pool.grow(&mut state);
        drop(state);
        self.pool.wake.notify_one();
        true
    }

    /// Stops taking deliveries and waits up to `deadline` for the queued ones to finish.
    pub async fn close(&self, deadline: Duration) {
        self.pool.state.lock().open = false; // no worker is started from here on
        self.pool.wake.notify_all();
        let workers = std::mem::take(&mut *self.pool.handles.lock());
        // Joined on a plain thread, not the runtime's blocking pool: the runtime waits for its
        // blocking tasks when it is dropped, so a worker stuck in an attempt would hold the
        // exit past the deadline.
        let (joined, all_joined) = tokio::sync::oneshot::channel();
        let joiner = std::thread::Builder::new()
            .name("verve-callback-join".into())
            .spawn(move || {
                for worker in workers {
                    let _ = worker.join();
                }
                let _ = joined.send(());
            });
        if joiner.is_err() || tokio::time::timeout(deadline, all_joined).await.is_err() {
            let abandoned = {
                let mut state = self.pool.state.lock();
                state.abandon = true;
                state.schedule.drain()
            };
            self.pool.wake.notify_all();
            // Dropped outside the lock; each accounts for itself in its batch.
            drop(abandoned);
            log::warn!("callback deliveries still pending at the shutdown deadline were abandoned");
        }
    }
}

impl Drop for Callbacks {
    /// Workers finish what is queued and leave, as after [`Callbacks::close`].
    fn drop(&mut self) {
        self.pool.state.lock().open = false;
        self.pool.wake.notify_all();
    }
}

fn agent(settings: &Settings, guard: Arc<Guard>) -> Agent {
    let config = Agent::config_builder()
        .proxy(None)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .http_status_as_error(false)
        .timeout_connect(Some(settings.connect_timeout))
        .timeout_global(Some(settings.timeout))
        .user_agent(concat!("verve/", env!("CARGO_PKG_VERSION")))
        .build();
    let resolver = GuardedResolver::new(guard);
    Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::default(),
        resolver,
    )
}

struct Worker {
    pool: Arc<Pool>,
    agent: Agent,
    guard: Arc<Guard>,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
}

/// What one attempt came to.
enum Outcome {
    Status(u16),
    Failed(Attempt, &'static str),
}

/// What becomes of a delivery after a worker's turn with it.
enum Next {
    /// Delivered, failed for good or blocked: dropped, it accounts for itself.
    Done,
    /// Resolved: queued again under the prefix of the address it resolved to.
    Queue(Key),
    /// Tried again under the same key once its backoff ends, at this time.
    Retry(Instant),
    /// Its deadline passed before the attempt could start.
    Expired,
}

impl Worker {
    fn run(self) {
        let mut state = self.pool.state.lock();
        loop {
            if state.abandon {
                return;
            }
            let now = Instant::now();
            let expired = state.schedule.expire(now);
            if !expired.is_empty() {
                MutexGuard::unlocked(&mut state, || {
                    for delivery in &expired {
                        self.expire(delivery);
                    }
                    drop(expired);
                });
                continue;
            }
            if let Some(Taken {
                key,
                job: mut delivery,
                deadline,
            }) = state.schedule.take(now)
            {
                if state.schedule.has_ready() {
                    // Several jobs may have become takeable at once (backoffs ending
                    // together): pass the turn on so they start in parallel.
                    self.pool.grow(&mut state);
                    self.pool.wake.notify_one();
                }
                let next = MutexGuard::unlocked(&mut state, || self.work(&mut delivery, deadline));
                state.schedule.done(&key);
                if state.abandon {
                    continue; // dropped: the shutdown deadline passed
                }
                match next {
                    Next::Done => {}
                    // Its turn was the look-up: it keeps its place, ahead of the ring.
                    Next::Queue(prefix) => state.schedule.push_first(prefix, delivery, deadline),
                    Next::Retry(not_before) => {
                        state
                            .schedule
                            .push_later(key, delivery, deadline, not_before);
                    }
                    Next::Expired => {
                        MutexGuard::unlocked(&mut state, || self.expire(&delivery));
                    }
                }
                // A slot is free, or a delivery joined a lane: someone may take it.
                self.pool.grow(&mut state);
                self.pool.wake.notify_one();
                continue;
            }
            if !state.open && state.schedule.queued() == 0 && state.schedule.running() == 0 {
                self.pool.wake.notify_all(); // closed and drained: everyone leaves
                return;
            }
            state.idle += 1;
            match state.schedule.wake_at() {
                Some(at) => {
                    self.pool.wake.wait_until(&mut state, at);
                }
                None => self.pool.wake.wait(&mut state),
            }
            state.idle -= 1;
        }
    }

    /// One turn with a delivery: resolve its host, or make its next attempt.
    fn work(&self, delivery: &mut Delivery, deadline: Instant) -> Next {
        if Instant::now() >= deadline {
            return Next::Expired;
        }
        if delivery.route.is_none() {
            match self.resolve(delivery) {
                Ok((key, route)) => {
                    delivery.route = Some(route);
                    return Next::Queue(key);
                }
                Err(failed) => return self.deliver(delivery, Some(failed), deadline),
            }
        }
        self.deliver(delivery, None, deadline)
    }

    /// The permitted addresses of the delivery's host and the prefix they are scheduled
    /// under (the first one's: the address tried first), or why there are none (which counts
    /// as an attempt).
    fn resolve(&self, delivery: &Delivery) -> Result<(Key, Box<[SocketAddr]>), Outcome> {
        if !self.settings.hosts.permits_url(&delivery.endpoint) {
            return Err(Outcome::Failed(Attempt::Blocked, "blocked"));
        }
        let host_port = delivery
            .endpoint
            .parse::<ureq::http::Uri>()
            .ok()
            .and_then(|uri| DefaultResolver::host_and_port(uri.scheme()?, uri.authority()?));
        let Some(host_port) = host_port else {
            return Err(Outcome::Failed(Attempt::Error, "protocol"));
        };
        let not_found = Outcome::Failed(Attempt::Connect, "connect");
        match self.guard.resolve(&host_port) {
            Ok(addrs) => match addrs.first() {
                Some(first) => Ok((Key::of_addr(first.ip()), addrs.into())),
                None => Err(not_found),
            },
            Err(Unresolved::Blocked) => Err(Outcome::Failed(Attempt::Blocked, "blocked")),
            Err(Unresolved::NotFound) => Err(not_found),
        }
    }

    /// Makes (or, when the host did not resolve, records) the delivery's next attempt.
    fn deliver(
        &self,
        delivery: &mut Delivery,
        unresolved: Option<Outcome>,
        deadline: Instant,
    ) -> Next {
        delivery.attempts += 1;
        let attempt = delivery.attempts;
        let outcome = match unresolved {
            Some(failed) => failed,
            None => self.attempt(delivery, deadline),
        };
        let retry = match outcome {
            Outcome::Status(status) => {
                let delivered = (200..300).contains(&status);
                delivery.delivered = delivered;
                self.metrics.attempt(if delivered {
                    Attempt::Delivered
                } else {
                    Attempt::Status
                });
                self.line(delivery, attempt).field("status", status).write();
                status == 429 || status >= 500
            }
            Outcome::Failed(kind, word) => {
                self.metrics.attempt(kind);
                self.line(delivery, attempt).field("error", word).write();
                matches!(kind, Attempt::Timeout | Attempt::Connect)
            }
        };
        if !retry || attempt >= self.settings.attempts {
            return Next::Done;
        }
        // A backoff that ends after the deadline is given up when the deadline passes.
        let backoff = self.settings.backoff_after(attempt).min(MAX_EXPIRY);
        Next::Retry(Instant::now().checked_add(backoff).unwrap_or(deadline))
    }

    /// Gives a delivery up at its window's deadline; the attempt it did not make is logged.
    fn expire(&self, delivery: &Delivery) {
        self.metrics
            .callbacks_expired
            .fetch_add(1, Ordering::Relaxed);
        self.line(delivery, delivery.attempts + 1)
            .field("error", "expired")
            .write();
    }

    /// The start of an attempt's count-log line. The endpoint shows as its origin and id
    /// only: paths and queries often carry tokens.
    fn line(&self, delivery: &Delivery, attempt: u32) -> Entry {
        let id = sign::endpoint_id(&delivery.endpoint, self.settings.signer.as_ref());
        Entry::new("callback")
            .field("endpoint", origin(&delivery.endpoint))
            .field("endpoint_id", id)
            .field("window_start", &delivery.window_start)
            .field("attempt", attempt)
    }

    /// One POST to the delivery's resolved addresses, ending by the window's deadline.
    fn attempt(&self, delivery: &Delivery, deadline: Instant) -> Outcome {
        let Some(route) = delivery.route.as_deref() else {
            return Outcome::Failed(Attempt::Error, "protocol"); // resolved before any attempt
        };
        // No attempt outlives the deadline: a tarpit holds its slot no longer than that.
        let left = deadline.saturating_duration_since(Instant::now());
        let mut request = self
            .agent
            .post(&*delivery.endpoint)
            .config()
            .timeout_global(Some(self.settings.timeout.min(left)))
            .timeout_connect(Some(self.settings.connect_timeout.min(left)))
            .build()
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", &*delivery.window_start);
        if let Some(signer) = &self.settings.signer {
            // The window start identifies the message: the same on every attempt and, in a
            // fleet, on a new leader's repeat, so receivers can drop duplicates.
            let id = &*delivery.window_start;
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            request = request
                .header("webhook-id", id)
                .header("webhook-timestamp", timestamp.to_string())
                .header(
                    "webhook-signature",
                    signer.signature(id, timestamp, &delivery.body),
                );
        }
        // Connect to the addresses checked when the host was resolved, not to a new look-up
        // (which DNS rebinding could point elsewhere).
        let pinned = guard::pin(route);
        let sent = request.send(delivery.body.as_bytes());
        drop(pinned);
        match sent {
            // The body is not read: a receiver cannot make us buffer a large answer.
            Ok(response) => Outcome::Status(response.status().as_u16()),
            Err(e) if guard::is_blocked(&e) => Outcome::Failed(Attempt::Blocked, "blocked"),
            Err(ureq::Error::Timeout(_)) => Outcome::Failed(Attempt::Timeout, "timeout"),
            Err(ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound) => {
                Outcome::Failed(Attempt::Connect, "connect")
            }
            Err(e) => {
                log::debug!("callback to {}: {e}", origin(&delivery.endpoint));
                Outcome::Failed(Attempt::Error, "protocol")
            }
        }
    }
}

/// `scheme://host[:port]` of a normalized endpoint: all of it the count log shows.
pub fn origin(endpoint: &str) -> &str {
    let authority = endpoint.find("://").map_or(0, |i| i + 3);
    let end = endpoint[authority..]
        .find(['/', '?'])
        .map_or(endpoint.len(), |i| authority + i);
    &endpoint[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(window_secs: u64, attempts: u32, backoff_ms: u64) -> Settings {
        Settings {
            allow: Vec::new(),
            workers: 1,
            queue: 1,
            prefix_concurrency: 2,
            window: Duration::from_secs(window_secs),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            attempts,
            backoff: Duration::from_millis(backoff_ms),
            signer: None,
            hosts: crate::lists::HostList::default(),
        }
    }

    #[test]
    fn deadline_is_a_window_or_every_attempt_and_backoff() {
        // 3 × 5 s + 250 ms + 500 ms.
        assert_eq!(settings(1, 3, 250).expiry(), Duration::from_millis(15_750));
        assert_eq!(settings(60, 3, 250).expiry(), Duration::from_secs(60));
        assert_eq!(settings(1, 1, 250).expiry(), Duration::from_secs(5));
        // An absurd backoff saturates instead of overflowing.
        assert_eq!(settings(1, 10, u64::MAX).expiry(), MAX_EXPIRY);
    }

    #[test]
    fn origins_drop_paths_and_queries() {
        assert_eq!(origin("http://a/hook?token=s3cret"), "http://a");
        assert_eq!(origin("https://a.b:8443/T/B/secret"), "https://a.b:8443");
        assert_eq!(origin("http://[::1]/"), "http://[::1]");
    }
}
