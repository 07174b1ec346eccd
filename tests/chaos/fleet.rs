//! The checker's processes: one real Redis, N verve instances on fixed loopback ports (so a
//! restarted one is found where the killed one was), some reaching Redis through a delay
//! link, nginx in front, and a callback receiver. Every incarnation of an instance is kept
//! until the end, so that the logs of killed ones are checked too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::common::{
    Cluster, DelayLink, Line, Redis, Sentinels, Verve, free_port, read_log, wait_for,
};

/// What every instance is started with.
pub struct Settings {
    pub window_secs: i64,
    pub grace_ms: i64,
    pub redis_timeout_ms: i64,
    pub skew_budget_ms: i64,
    /// Whether the binary knows `--max-clock-skew-ms` (an older build does not).
    pub knows_skew_budget: bool,
    /// Redis is a cluster (`--redis-cluster`).
    pub cluster: bool,
    /// The instances run `--count approx`.
    pub approx: bool,
}

/// One instance slot: its port, clock offset and link to Redis, and its incarnations.
pub struct Member {
    pub name: String,
    pub listen: SocketAddr,
    pub offset_ms: i64,
    pub link: Option<DelayLink>,
    pub base_delay_ms: u64,
    redis_url: String,
    live: Option<Verve>,
    incarnations: usize,
    /// Killed incarnations, with their names (`i1.0`, `i1.1`, …), kept for their logs.
    past: Vec<(String, Verve)>,
}

impl Member {
    /// Instance `n`, reaching Redis at `url`, or through a link with `delay_ms` to the one
    /// server on `port` (a cluster's or a sentinel's clients go where Redis tells them, not
    /// through a link).
    pub fn new(n: usize, url: &str, offset_ms: i64, delay_ms: Option<(u16, u64)>) -> Self {
        let link = delay_ms.map(|(port, ms)| DelayLink::start(port, ms));
        let redis_url = link
            .as_ref()
            .map_or_else(|| url.to_string(), DelayLink::url);
        Self {
            name: format!("i{n}"),
            listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            offset_ms,
            link,
            base_delay_ms: delay_ms.map_or(0, |(_, ms)| ms),
            redis_url,
            live: None,
            incarnations: 0,
            past: Vec::new(),
        }
    }

    fn incarnation(&self) -> String {
        format!("{}.{}", self.name, self.incarnations)
    }

    /// Starts a new incarnation and waits until it is ready.
    pub fn start(&mut self, settings: &Settings, run_dir: &Path) {
        let offset = self.offset_ms.to_string();
        let (window, grace) = (
            settings.window_secs.to_string(),
            settings.grace_ms.to_string(),
        );
        let (timeout, budget) = (
            settings.redis_timeout_ms.to_string(),
            settings.skew_budget_ms.to_string(),
        );
        let mut args = vec![
            "--redis-url",
            &self.redis_url,
            "--window-secs",
            &window,
            "--grace-ms",
            &grace,
            "--redis-timeout-ms",
            &timeout,
            "--clock-offset-ms",
            &offset,
            "--callback-allow",
            "127.0.0.0/8",
        ];
        if settings.knows_skew_budget {
            args.extend(["--max-clock-skew-ms", &budget]);
        }
        if settings.cluster {
            args.push("--redis-cluster");
        }
        if settings.approx {
            args.extend(["--count", "approx"]);
        }
        let stderr = run_dir.join(format!("{}.stderr", self.incarnation()));
        let verve = Verve::start_on(&self.listen.to_string(), &args, &[], &stderr);
        self.live = Some(verve);
        let ready = wait_for(Duration::from_secs(10), || self.is_ready().then_some(()));
        assert!(
            ready.is_some(),
            "{} did not become ready",
            self.incarnation()
        );
    }

    /// Whether the live incarnation answers `/readyz` with 200.
    pub fn is_ready(&self) -> bool {
        let Some(verve) = &self.live else {
            return false;
        };
        if std::net::TcpStream::connect(verve.addr).is_err() {
            return false;
        }
        let mut conn = crate::common::Conn::connect(verve.addr);
        conn.try_request("GET", "/readyz")
            .is_ok_and(|reply| reply.status == 200)
    }

    /// SIGKILLs the live incarnation (kept for its log).
    pub fn kill(&mut self) {
        if let Some(mut verve) = self.live.take() {
            verve.signal("KILL");
            verve.wait(Duration::from_secs(5));
            self.past.push((self.incarnation(), verve));
            self.incarnations += 1;
        }
    }

    /// The live incarnation's count log so far.
    pub fn live_log(&self) -> Vec<Line> {
        self.live.as_ref().map(Verve::lines).unwrap_or_default()
    }

    /// Every incarnation's name and count log (copied into `run_dir` for a later look).
    pub fn logs(&self, run_dir: &Path) -> Vec<(String, Vec<Line>)> {
        let live = self.live.as_ref().map(|v| (self.incarnation(), v));
        self.past
            .iter()
            .map(|(name, v)| (name.clone(), v))
            .chain(live)
            .map(|(name, verve)| {
                let copy: PathBuf = run_dir.join(format!("{name}.log"));
                let _ = std::fs::copy(&verve.log, &copy);
                (name, read_log(&verve.log))
            })
            .collect()
    }
}

/// The fleet's Redis: one server, a cluster with replicas, or a primary with replicas and
/// sentinels.
pub enum Backend {
    Single(Redis),
    Cluster(Cluster),
    Sentinel(Sentinels),
}

/// The shared Redis, behind a lock: faults restart it or fail it over while the auditor
/// reads it.
pub struct Store {
    pub backend: Mutex<Backend>,
    /// What the instances are given as `--redis-url`.
    pub url: String,
    /// The one server's port (single topology): delay links lead there.
    pub port: Option<u16>,
}

impl Store {
    pub fn new(backend: Backend) -> Self {
        let (url, port) = match &backend {
            Backend::Single(redis) => (redis.url(), Some(redis.port)),
            // One seed: a master's death may take the seed with it (issue 16).
            Backend::Cluster(cluster) => (cluster.url(), None),
            Backend::Sentinel(sentinels) => (sentinels.url(), None),
        };
        Self {
            backend: Mutex::new(backend),
            url,
            port,
        }
    }

    /// redis-cli against the server holding the fleet's keys: the one server, or the
    /// primary; `None` in a cluster (its keys are spread over the masters).
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        match &*self.backend.lock().unwrap() {
            Backend::Single(redis) => Some(redis.cli(args)),
            Backend::Sentinel(set) => set.primary().map(|p| set.servers[p].cli(args)),
            Backend::Cluster(_) => None,
        }
    }
}
