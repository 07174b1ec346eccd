//! The checker's processes: one real Redis, N verve instances on fixed loopback ports (so a
//! restarted one is found where the killed one was), some reaching Redis through a delay
//! link, nginx in front, and a callback receiver. Every incarnation of an instance is kept
//! until the end, so that the logs of killed ones are checked too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::common::{DelayLink, Line, Redis, Verve, free_port, read_log, wait_for};

/// What every instance is started with.
pub struct Settings {
    pub window_secs: i64,
    pub grace_ms: i64,
    pub redis_timeout_ms: i64,
    pub skew_budget_ms: i64,
    /// Whether the binary knows `--max-clock-skew-ms` (an older build does not).
    pub knows_skew_budget: bool,
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
    pub fn new(n: usize, redis_port: u16, offset_ms: i64, delay_ms: Option<u64>) -> Self {
        let link = delay_ms.map(|ms| DelayLink::start(redis_port, ms));
        let redis_url = link
            .as_ref()
            .map_or_else(|| format!("redis://127.0.0.1:{redis_port}"), DelayLink::url);
        Self {
            name: format!("i{n}"),
            listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            offset_ms,
            link,
            base_delay_ms: delay_ms.unwrap_or(0),
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
        let stderr = run_dir.join(format!("{}.stderr", self.incarnation()));
        let verve = Verve::start_on(&self.listen.to_string(), &args, &[], &stderr);
        let ready = wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(verve.addr).ok()?;
            let mut conn = crate::common::Conn::connect(verve.addr);
            (conn.try_request("GET", "/readyz").ok()?.status == 200).then_some(())
        });
        assert!(
            ready.is_some(),
            "{} did not become ready",
            self.incarnation()
        );
        self.live = Some(verve);
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

/// The shared Redis, behind a lock: faults restart it while the auditor reads it.
pub struct Store {
    pub redis: Mutex<Redis>,
    pub port: u16,
}

impl Store {
    pub fn cli(&self, args: &[&str]) -> String {
        self.redis.lock().unwrap().cli(args)
    }
}
