//! verve counts, exactly, how many distinct ids arrive in each wall-clock window.
//!
//! The major components, in the order a request meets them:
//!
//! * [`http`] — the edge: accepts connections, routes, parses and validates the accept
//!   query, answers. Maps every error cause to a status in one place.
//! * [`window`] — time and the local windows: which window a timestamp belongs to, the exact
//!   per-window id sets, and the in-flight count that tells when a window is final.
//! * [`store`] — Redis for fleet mode: the key layout and every command the fleet sends.
//! * [`lanes`] — fleet mode's connection threads: a request, its `SADD` round and its answer
//!   stay on one thread.
//! * [`report`] — the window tick: closes each window after its grace, writes its count to
//!   the count log and hands its endpoints to the callback pool; in fleet mode reads the
//!   fleet count and elects the instance that sends the window's callbacks.
//! * [`callback`] — delivery of the per-window POSTs on blocking worker threads, with
//!   retries, turns taken across destination address prefixes, and the SSRF guard.
//! * [`stream`] — one record per reported window to Kafka (feature `kafka`).
//! * [`countlog`] — the `log` sink that puts count lines in a file and diagnostics on stderr.
//! * [`config`] — flags and environment, checked at start-up.
//! * [`metrics`] — counters exported at `/metrics`.
//! * [`status`] — the status page at `/` and its JSON, with the recent windows.
//!
//! [`run`] wires them together on an already-bound listener, so tests and `main` start the
//! same server.

pub mod callback;
pub mod config;
pub mod countlog;
pub mod http;
pub mod lanes;
pub mod lists;
pub mod memory;
pub mod metrics;
pub mod report;
pub mod sketch;
pub mod status;
pub mod store;
pub mod stream;
pub mod window;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use callback::Callbacks;
use config::{Config, CountMode};
use http::Routes;
use lanes::Lanes;
use metrics::Metrics;
use sketch::HashKey;
use store::Store;
use stream::Stream;
use window::{Clock, SystemClock, Windows};

/// State shared by the edge, the reporter and the callback pool.
pub struct Shared {
    pub settings: Config,
    pub clock: Arc<dyn Clock>,
    pub windows: Windows,
    pub metrics: Arc<Metrics>,
    pub callbacks: Callbacks,
    /// Fleet mode's shared store; `None` on a single node.
    pub store: Option<Store>,
    /// Fleet mode's connection threads; `None` on a single node, whose requests never wait
    /// and are served on the main runtime.
    pub lanes: Option<Lanes>,
    /// The main runtime, where background work runs wherever it is started from.
    runtime: tokio::runtime::Handle,
    /// The Kafka producer; `None` without `--kafka-brokers`.
    pub stream: Option<Stream>,
    /// False once shutdown began: `/readyz` answers 503 so load balancers drain us.
    pub ready: AtomicBool,
    /// Uptime and the recent windows, for the status page.
    pub status: status::Status,
    /// Requests waiting for the store (fleet mode), limited by `--max-inflight`.
    pub waiting: AtomicUsize,
    /// Fleet mode: set while the fleet announces settings that shape keys and windows other
    /// than ours; the instance is then not ready and counts nothing (SPEC §6.2).
    pub settings_differ: AtomicBool,
    /// Fleet mode: set while this instance is no member of the fleet (its heartbeat not
    /// renewed in time, or its clock beyond the budget): every request is answered 503.
    pub fenced: AtomicBool,
    /// Fleet approx mode: set while this instance's sketches have not reached Redis for
    /// longer than [`report::fleet::MERGE_STALE`]: ids are answered 503 then, so an
    /// instance that dies loses at most the updates of its last seconds (SPEC §3a).
    pub merge_stale: AtomicBool,
    /// Fleet mode: heartbeat rounds ended so far.
    pub beats: AtomicU64,
    /// Fleet mode: set once shutdown withdrew the heartbeat: no barrier waits for this
    /// instance any more, so it stops keeping its windows' counts stored.
    pub left: AtomicBool,
    /// Fleet mode: the windows being closed whose fleet line is not logged yet, each with
    /// whether its partial line was: late fleet lines follow in window order.
    pub unlogged: report::fleet::Unlogged,
    /// Fleet work that outlives the call that started it (window deliveries, late reports,
    /// key expiries): owned here so shutdown waits for it, reaped as it finishes.
    background: parking_lot::Mutex<JoinSet<()>>,
}

impl Shared {
    fn new(
        settings: Config,
        clock: Arc<dyn Clock>,
        store: Option<Store>,
        lanes: Option<Lanes>,
        key: Option<HashKey>,
    ) -> io::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let stream = match settings.stream_settings() {
            Some(stream) => {
                Some(Stream::start(&stream, Arc::clone(&metrics)).map_err(io::Error::other)?)
            }
            None => None,
        };
        let mut windows = Windows::new(
            clock.now_ms(),
            i64::from(settings.window_secs),
            (
                settings.callback_max_endpoints as usize,
                settings.callback_max_per_domain as usize,
            ),
            store.as_ref().map_or(0, |s| s.shards() as usize),
        );
        if store.is_some() {
            windows = windows.with_cutoff(settings.cutoff_after_end_ms(), clock.now_ms());
        }
        if settings.count == CountMode::Approx {
            // The fleet's key (from Redis), or this process's own on a single node.
            windows = windows.approx(key.unwrap_or_else(HashKey::random), clock.now_ms());
        }
        let callbacks = Callbacks::start(settings.callback_settings(), Arc::clone(&metrics));
        let fleet = store.is_some();
        Ok(Self {
            settings,
            clock,
            windows,
            metrics,
            callbacks,
            store,
            lanes,
            runtime: tokio::runtime::Handle::current(),
            stream,
            ready: AtomicBool::new(true),
            status: status::Status::default(),
            waiting: AtomicUsize::new(0),
            settings_differ: AtomicBool::new(false),
            merge_stale: AtomicBool::new(false),
            // A fleet instance is a member only once its first heartbeat is acknowledged.
            fenced: AtomicBool::new(fleet),
            beats: AtomicU64::new(0),
            left: AtomicBool::new(false),
            unlogged: report::fleet::Unlogged::default(),
            background: parking_lot::Mutex::new(JoinSet::new()),
        })
    }

    /// Runs `task` in the background on the main runtime, owned by this instance.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut background = self.background.lock();
        while background.try_join_next().is_some() {}
        background.spawn_on(task, &self.runtime);
    }

    /// Waits for background work until `deadline`, then cancels what is left.
    async fn finish_background(&self, deadline: Instant) {
        let mut background = std::mem::take(&mut *self.background.lock());
        let drained = async { while background.join_next().await.is_some() {} };
        if tokio::time::timeout_at(deadline, drained).await.is_err() {
            log::warn!(
                "background fleet work still running at the shutdown deadline was cancelled"
            );
        }
    }

    /// Ready to serve: not shutting down and, in fleet mode, a member of the fleet,
    /// connected to the store (and in approx mode, its sketches reaching Redis).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && !self.settings_differ.load(Ordering::Acquire)
            && !self.fenced.load(Ordering::Acquire)
            && !self.merge_stale.load(Ordering::Acquire)
            && self.store.as_ref().is_none_or(Store::is_connected)
    }

    fn render_metrics(&self) -> String {
        let now = self.clock.now_ms();
        let current = window::window_start(now, self.windows.secs());
        let current_ids = self
            .windows
            .open()
            .iter()
            .find(|w| w.start == current)
            .map_or(0, |w| w.count());
        self.metrics.render(
            current_ids,
            countlog::write_errors(),
            metrics::rss_bytes(),
            self.stream.as_ref().map(Stream::buffered),
            &metrics::State {
                window_secs: self.windows.secs() as u64,
                redis_connected: self.store.as_ref().map(Store::is_connected),
                fenced: self.fenced.load(Ordering::Relaxed),
                redis_reconnections: self.store.as_ref().map_or(0, Store::reconnection_count),
                max_clock_skew_ms: self.settings.max_clock_skew_ms,
                count: self.settings.count.as_str(),
                sketches_stale: self.merge_stale.load(Ordering::Relaxed),
            },
        )
    }
}

/// Longest that shutdown spends marking its windows drained and leaving the fleet.
const LEAVE_WITHIN: Duration = Duration::from_secs(1);

/// How long start-up waits for the first Redis connection.
const STORE_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs the service on `listener` until `shutdown` resolves, then shuts down as SPEC §7 says:
/// readiness off, listener drained and closed, ended windows reported, the open window logged
/// as partial, due callbacks delivered within the shutdown timeout. Prints the listen address
/// and mode once it serves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let clock = Arc::new(SystemClock {
        offset_ms: config.clock_offset_ms,
    });
    // SIGHUP (logrotate, `systemctl reload`) is caught from the start: its default action
    // would end a process still waiting for Redis.
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let deadline = Duration::from_millis(config.shutdown_timeout_ms);
    http::raise_descriptor_limit(config.max_connections);
    let (store, lanes) = match config.store_settings() {
        Some(settings) => {
            let lanes = Lanes::start(config.lanes())?;
            let store = Store::connect(&settings, STORE_CONNECT_TIMEOUT, &lanes)
                .await
                .map_err(io::Error::other)?;
            (Some(store), Some(lanes))
        }
        None => (None, None),
    };
    // Approx mode's fleet-wide hash key: from --hash-key, or kept in Redis (the fleet's, or
    // ours if we are its first).
    let key = match (&store, config.count, &config.hash_key) {
        (_, CountMode::Approx, Some(secret)) => Some(HashKey::derive(secret)),
        (Some(store), CountMode::Approx, None) => Some(
            report::fleet::hash_key(&config, store, STORE_CONNECT_TIMEOUT)
                .await
                .map_err(io::Error::other)?,
        ),
        _ => None,
    };
    // A fleet whose instances disagree on the key layout would count into different sets:
    // checked before serving, then kept up (a later instance may differ).
    let differ = match &store {
        Some(store) => {
            report::fleet::check_settings(&config, key.as_ref(), store, STORE_CONNECT_TIMEOUT)
                .await
                .map_err(io::Error::other)?
        }
        None => false,
    };
    let mode = if store.is_some() { "fleet" } else { "single" };
    let count = config.count.as_str();
    let shared = Arc::new(Shared::new(config, clock, store, lanes, key)?);
    shared.settings_differ.store(differ, Ordering::Release);

    let (finish, finishing) = watch::channel(false);
    let reporter = tokio::spawn(report::run(Arc::clone(&shared), finishing));
    let reopener = tokio::spawn(reopen_count_log_on_sighup(hangups));
    let resyncer = tokio::spawn(report::fleet::resync_on_new_generation(Arc::clone(&shared)));
    let heartbeat = tokio::spawn(report::members::run(Arc::clone(&shared)));
    if shared.store.is_some() {
        // Ready only once a member: the first heartbeat's answer tells.
        report::members::first_beat(&shared, STORE_CONNECT_TIMEOUT).await;
    }
    let announcer = tokio::spawn(report::fleet::announce_settings(Arc::clone(&shared)));
    let cutter = tokio::spawn(report::cut_at_cutoffs(Arc::clone(&shared)));
    let merger = tokio::spawn(report::fleet::merge_sketches(Arc::clone(&shared)));
    if shared.store.is_none() {
        cutter.abort(); // a single node's requests never wait: no cutoffs
    }
    let admin_addr = match &admin {
        Some(admin) => format!(" admin={}", admin.local_addr()?),
        None => String::new(),
    };
    println!(
        "verve listening on {} mode={mode} count={count}{admin_addr}",
        listener.local_addr()?
    );

    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    match admin {
        Some(admin) => {
            tokio::join!(
                http::serve(
                    listener,
                    Routes::Public,
                    Arc::clone(&shared),
                    shutdown.clone()
                ),
                http::serve(admin, Routes::Admin, Arc::clone(&shared), shutdown),
            );
        }
        None => http::serve(listener, Routes::All, Arc::clone(&shared), shutdown).await,
    }

    let _ = finish.send(true);
    if let Err(e) = reporter.await {
        log::error!("reporter failed: {e}");
    }
    let until = Instant::now() + deadline;
    heartbeat.abort();
    report::members::leave(&shared, LEAVE_WITHIN.min(deadline)).await;
    shared.finish_background(until).await;
    shared
        .callbacks
        .close(until.saturating_duration_since(Instant::now()))
        .await;
    if shared.stream.is_some() {
        // librdkafka's flush blocks its thread: off the async workers.
        let wait = until.saturating_duration_since(Instant::now());
        let flushing = Arc::clone(&shared);
        let left = tokio::task::spawn_blocking(move || {
            flushing
                .stream
                .as_ref()
                .map_or(0, |stream| stream.flush(wait))
        })
        .await
        .unwrap_or(0);
        if left > 0 {
            log::warn!(
                "kafka: {left} window records still unsent at the shutdown deadline are lost"
            );
        }
    }
    reopener.abort();
    resyncer.abort();
    announcer.abort();
    cutter.abort();
    merger.abort();
    // Connections cut at the shutdown deadline hold the shared state: dropped with their
    // lanes, so that nothing outlives `run`.
    if let Some(lanes) = &shared.lanes {
        lanes.stop();
    }
    Ok(())
}

async fn reopen_count_log_on_sighup(hangups: io::Result<tokio::signal::unix::Signal>) {
    let Ok(mut hangups) = hangups else {
        log::warn!("cannot listen for SIGHUP; the count log will not be reopened");
        return;
    };
    while hangups.recv().await.is_some() {
        countlog::reopen();
    }
}

/// Listens for SIGTERM and SIGINT from now on; the future resolves on the first of them.
/// Registering before the listen address is printed means a signal sent right after start-up
/// is never lost to the default action.
pub fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
