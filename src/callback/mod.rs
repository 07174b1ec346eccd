//! Callback delivery: one JSON `POST` per endpoint per final window, off the request path.
//!
//! The reporter hands deliveries to a bounded queue ([`Callbacks::submit`]); a fixed pool of
//! blocking worker threads sends them with `ureq`, retrying connect errors, timeouts, 429 and
//! 5xx with backoff. When the queue is full a delivery is dropped and counted: a slow target
//! never delays the next window. Every attempt is written to the count log. The SSRF guard
//! ([`guard`]) sits in the client's resolver; redirects are never followed.

pub mod guard;
pub mod sign;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use ureq::Agent;

use crate::countlog::Entry;
use crate::metrics::{Attempt, Metrics};
use guard::{Guard, GuardedResolver};

/// Delivery settings, from the `--callback-*` flags.
#[derive(Debug, Clone)]
pub struct Settings {
    pub guard: Guard,
    pub workers: usize,
    /// Deliveries waiting for a worker, across windows.
    pub queue: usize,
    pub connect_timeout: Duration,
    /// Whole-attempt timeout: connect, send, and receive the response head.
    pub timeout: Duration,
    pub attempts: u32,
    /// First retry delay; doubles per attempt.
    pub backoff: Duration,
    /// Signs each POST (Standard Webhooks headers) when `--callback-secret` is set.
    pub signer: Option<sign::Signer>,
    /// `--callback-hosts`; checked again here, for endpoints registered fleet-wide.
    pub hosts: guard::HostList,
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
}

impl Delivery {
    pub fn new(endpoint: Box<str>, window_start: Arc<str>, body: Arc<str>, batch: Batch) -> Self {
        Self {
            endpoint,
            window_start,
            body,
            batch,
            delivered: false,
        }
    }
}

/// One window's deliveries, shared by them and by whoever waits for or shows them.
pub type Batch = Arc<BatchState>;

/// How one window's deliveries stand.
#[derive(Debug, Default)]
pub struct BatchState {
    pending: AtomicUsize,
    delivered: AtomicUsize,
    failed: AtomicUsize,
}

impl BatchState {
    /// A batch of `deliveries`, all pending.
    pub fn new(deliveries: usize) -> Batch {
        Arc::new(Self {
            pending: AtomicUsize::new(deliveries),
            ..Self::default()
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

    /// Deliveries given up: no 2xx after the last attempt, blocked, dropped or abandoned.
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

/// The delivery pool. Dropping the sender (in [`Callbacks::close`]) lets workers drain the
/// queue and exit.
pub struct Callbacks {
    sender: Mutex<Option<SyncSender<Delivery>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Set at the shutdown deadline: workers stop retrying and leave.
    abandon: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl Callbacks {
    /// Starts the worker threads.
    pub fn start(settings: Settings, metrics: Arc<Metrics>) -> Self {
        let (sender, receiver) = sync_channel(settings.queue);
        let receiver = Arc::new(Mutex::new(receiver));
        let agent = agent(&settings);
        let abandon = Arc::new(AtomicBool::new(false));
        let workers = (0..settings.workers)
            .map(|n| {
                let worker = Worker {
                    receiver: Arc::clone(&receiver),
                    agent: agent.clone(),
                    settings: settings.clone(),
                    abandon: Arc::clone(&abandon),
                    metrics: Arc::clone(&metrics),
                };
                std::thread::Builder::new()
                    .name(format!("verve-callback-{n}"))
                    .spawn(move || worker.run())
                    .expect("spawn callback worker thread")
            })
            .collect();
        Self {
            sender: Mutex::new(Some(sender)),
            workers: Mutex::new(workers),
            abandon,
            metrics,
        }
    }

    /// Queues a delivery; false (and counted) when the queue is full or closed.
    pub fn submit(&self, delivery: Delivery) -> bool {
        let sender = self.sender.lock();
        let Some(sender) = sender.as_ref() else {
            return false;
        };
        match sender.try_send(delivery) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.metrics
                    .callbacks_dropped_queue
                    .fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Stops taking deliveries and waits up to `deadline` for the queued ones to finish.
    pub async fn close(&self, deadline: Duration) {
        self.sender.lock().take();
        let workers = std::mem::take(&mut *self.workers.lock());
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
            self.abandon.store(true, Ordering::Release);
            log::warn!("callback deliveries still pending at the shutdown deadline were abandoned");
        }
    }
}

fn agent(settings: &Settings) -> Agent {
    let config = Agent::config_builder()
        .proxy(None)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .http_status_as_error(false)
        .timeout_connect(Some(settings.connect_timeout))
        .timeout_global(Some(settings.timeout))
        .user_agent(concat!("verve/", env!("CARGO_PKG_VERSION")))
        .build();
    let resolver = GuardedResolver::new(Arc::new(settings.guard.clone()));
    Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::default(),
        resolver,
    )
}

struct Worker {
    receiver: Arc<Mutex<Receiver<Delivery>>>,
    agent: Agent,
    settings: Settings,
    abandon: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

/// What one attempt came to.
enum Outcome {
    Status(u16),
    Failed(Attempt, &'static str),
}

impl Worker {
    fn run(self) {
        loop {
            let next = self.receiver.lock().recv();
            match next {
                Ok(mut delivery) => self.deliver(&mut delivery),
                Err(_) => return, // closed and drained
            }
        }
    }

    fn deliver(&self, delivery: &mut Delivery) {
        // Logged as its origin and id only: paths and queries often carry tokens.
        let origin = origin(&delivery.endpoint);
        let id = sign::endpoint_id(&delivery.endpoint, self.settings.signer.as_ref());
        let line = |attempt: u32| {
            Entry::new("callback")
                .field("endpoint", origin)
                .field("endpoint_id", &id)
                .field("window_start", &delivery.window_start)
                .field("attempt", attempt)
        };
        for attempt in 1..=self.settings.attempts {
            if self.abandon.load(Ordering::Acquire) {
                return;
            }
            let outcome = self.attempt(delivery);
            let retry = match outcome {
                Outcome::Status(status) => {
                    let delivered = (200..300).contains(&status);
                    delivery.delivered = delivered;
                    self.metrics.attempt(if delivered {
                        Attempt::Delivered
                    } else {
                        Attempt::Status
                    });
                    line(attempt).field("status", status).write();
                    status == 429 || status >= 500
                }
                Outcome::Failed(kind, word) => {
                    self.metrics.attempt(kind);
                    line(attempt).field("error", word).write();
                    matches!(kind, Attempt::Timeout | Attempt::Connect)
                }
            };
            if !retry || attempt == self.settings.attempts {
                return;
            }
            std::thread::sleep(self.settings.backoff * 2u32.pow(attempt - 1));
        }
    }

    fn attempt(&self, delivery: &Delivery) -> Outcome {
        if !self.settings.hosts.permits_url(&delivery.endpoint) {
            return Outcome::Failed(Attempt::Blocked, "blocked");
        }
        let mut request = self
            .agent
            .post(&*delivery.endpoint)
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
        let sent = request.send(delivery.body.as_bytes());
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
    use super::origin;

    #[test]
    fn origins_drop_paths_and_queries() {
        assert_eq!(origin("http://a/hook?token=s3cret"), "http://a");
        assert_eq!(origin("https://a.b:8443/T/B/secret"), "https://a.b:8443");
        assert_eq!(origin("http://[::1]/"), "http://[::1]");
    }
}
