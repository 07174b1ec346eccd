//! The fleet's fault checker (SPEC §6.1), in the spirit of Jepsen: N instances (2–4) behind
//! nginx on a real Redis, their clocks skewed within the budget and some reaching Redis
//! through a delay link; clients send unique and repeated ids, half of them with a callback
//! endpoint on a loopback receiver, and record every answer; faults strike at random moments,
//! half of them inside a window's grace:
//!
//! - `redis-restart`: Redis SIGKILLed, then started again empty;
//! - `instance-kill`: an instance SIGKILLed, then started again on its port;
//! - `leader-kill`: the instance delivering a window's callbacks SIGKILLed mid-delivery;
//! - `client-pause`: `CLIENT PAUSE` (writes or all) for up to 2 s;
//! - `delay-spike`: one instance's link to Redis slowed to 150–600 ms for up to 3 s;
//! - `failover` (Cluster with replicas, Sentinel): a master (the primary) SIGKILLed,
//!   SIGSTOPped (its clients stay connected; it wakes up a stale master) or failed over by
//!   hand (`CLUSTER FAILOVER`, `SENTINEL FAILOVER`: it turns replica under its connected
//!   clients); once a replica is promoted every instance must be ready again, and the old
//!   master comes back as a replica (SIGCONT, or started again).
//!
//! Three topologies: `single` (one server, some instances through delay links), `cluster`
//! (three masters, a replica each, the instances given one seed) and `sentinel` (a primary,
//! two replicas, three sentinels).
//!
//! Then, offline, every window is checked against the invariants from the recorded answers,
//! every incarnation's count log and the receiver (`check.rs`), and the service must have
//! answered `ok` again soon after each fault.
//!
//! `scripts/chaos.sh [minutes] [seed] [topology]` runs [`chaos_from_the_environment`] at
//! length; the suite runs a short fixed-seed schedule.

#[path = "../common/mod.rs"]
mod common;

mod check;
mod fleet;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use check::{Answer, Evidence};
use common::{
    Cluster, Conn, Failure, Nginx, Receiver, Redis, Sentinels, encode, have, now_ms, rfc3339,
};
use fleet::{Backend, Member, Settings, Store};

/// A short fixed schedule of every kind of fault: Redis restarted empty at random moments
/// (inside a window's grace too), instance and leader deaths, Redis stalls, link spikes, and
/// skewed clocks throughout; every promise is checked on every window.
#[test]
fn a_fixed_schedule_of_faults_breaks_no_promise() {
    run_and_check(&Plan {
        seed: 15,
        topology: "single".into(),
        duration: Duration::from_secs(90),
        kinds: Kind::defaults("single"),
        instances: 3,
        pace_ms: 2,
        approx: false,
    });
}

/// `scripts/chaos.sh`: the plan from `CHAOS_MINUTES`, `CHAOS_SEED`, `CHAOS_TOPOLOGY`,
/// `CHAOS_FAULTS`, `CHAOS_INSTANCES`, `CHAOS_PACE_MS`.
/// Redis Cluster with replicas: masters SIGKILLed (the seed among them) under load through
/// the load balancer, instances and leaders killed; after each promotion the fleet is ready
/// again and every promise holds on every window.
#[test]
fn a_cluster_failing_over_breaks_no_promise() {
    run_and_check(&Plan {
        seed: 16,
        topology: "cluster".into(),
        duration: Duration::from_secs(80),
        kinds: vec![Kind::Failover, Kind::Failover, Kind::InstanceKill],
        instances: 3,
        pace_ms: 2,
        approx: false,
    });
}

/// Sentinel: the primary SIGKILLed under load, a replica promoted by the sentinels, the old
/// primary back as a replica; instances killed too.
#[test]
fn a_sentinel_failover_breaks_no_promise() {
    run_and_check(&Plan {
        seed: 17,
        topology: "sentinel".into(),
        duration: Duration::from_secs(80),
        kinds: vec![Kind::Failover, Kind::Failover, Kind::LeaderKill],
        instances: 3,
        pace_ms: 2,
        approx: false,
    });
}

/// Approx mode (`--count approx`) under the single topology's faults: every `ok` id's
/// register is in the window's Redis HyperLogLog after the count (checked register by
/// register with the fleet's hash key), no register exceeds what the ids sent can give, and
/// the fleet agrees on one count within the error bound.
#[test]
fn an_approx_fleet_under_faults_breaks_no_promise() {
    run_and_check(&Plan {
        seed: 18,
        topology: "single".into(),
        duration: Duration::from_secs(60),
        kinds: Kind::defaults("single"),
        instances: 3,
        pace_ms: 2,
        approx: true,
    });
}

#[test]
#[ignore = "run by scripts/chaos.sh"]
fn chaos_from_the_environment() {
    run_and_check(&Plan::from_env());
}

/// A small deterministic generator (SplitMix64): one seed, one schedule.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn draw(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.draw() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.draw() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    RedisRestart,
    InstanceKill,
    LeaderKill,
    ClientPause,
    DelaySpike,
    Failover,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::RedisRestart,
        Kind::InstanceKill,
        Kind::LeaderKill,
        Kind::ClientPause,
        Kind::DelaySpike,
        Kind::Failover,
    ];

    /// The kinds that strike in `topology` by default: each one it can suffer.
    fn defaults(topology: &str) -> Vec<Kind> {
        match topology {
            "single" => Kind::ALL[..5].to_vec(),
            "cluster" => vec![Kind::Failover, Kind::InstanceKill, Kind::LeaderKill],
            _ => vec![
                Kind::Failover,
                Kind::InstanceKill,
                Kind::LeaderKill,
                Kind::ClientPause,
            ],
        }
    }

    /// Whether it can strike in `topology`: an empty restart and link delays need the one
    /// server, a failover replicas, a pause one server holding the fleet's keys.
    fn fits(self, topology: &str) -> bool {
        match self {
            Kind::RedisRestart | Kind::DelaySpike => topology == "single",
            Kind::Failover => topology != "single",
            Kind::ClientPause => topology != "cluster",
            Kind::InstanceKill | Kind::LeaderKill => true,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::RedisRestart => "redis-restart",
            Kind::InstanceKill => "instance-kill",
            Kind::LeaderKill => "leader-kill",
            Kind::ClientPause => "client-pause",
            Kind::DelaySpike => "delay-spike",
            Kind::Failover => "failover",
        }
    }
}

/// One fault as it happened: struck at `at_ms`, lifted (the service may recover) at
/// `lifted_ms`, both epoch milliseconds.
pub struct Fault {
    pub kind: Kind,
    pub at_ms: i64,
    pub lifted_ms: i64,
    pub detail: String,
    /// A promise the harness saw broken while it struck (an instance not ready again).
    pub broke: Option<String>,
    /// A failover's way (SIGKILL, SIGSTOP, by hand) and how long its promotion took.
    pub failover: Option<(Failure, i64)>,
}

struct Plan {
    seed: u64,
    topology: String,
    duration: Duration,
    kinds: Vec<Kind>,
    instances: usize,
    pace_ms: u64,
    /// `--count approx` (`CHAOS_COUNT=approx`).
    approx: bool,
}

impl Plan {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let seed = var("CHAOS_SEED").map_or_else(
            || now_ms() as u64 % 1_000_000,
            |s| s.parse().expect("CHAOS_SEED: an integer"),
        );
        let minutes: f64 = var("CHAOS_MINUTES").map_or(15.0, |m| {
            m.parse().expect("CHAOS_MINUTES: a number of minutes")
        });
        let topology = var("CHAOS_TOPOLOGY").unwrap_or_else(|| "single".into());
        let kinds = var("CHAOS_FAULTS").map_or_else(
            || Kind::defaults(&topology),
            |list| {
                list.split(',')
                    .map(|name| {
                        *Kind::ALL
                            .iter()
                            .find(|k| k.name() == name.trim())
                            .unwrap_or_else(|| panic!("CHAOS_FAULTS: no fault {name:?}"))
                    })
                    .collect()
            },
        );
        let instances = var("CHAOS_INSTANCES").map_or_else(
            || 2 + Rng::new(seed).below(3) as usize,
            |n| n.parse().expect("CHAOS_INSTANCES: 2 to 4"),
        );
        Self {
            seed,
            topology,
            duration: Duration::from_secs_f64(minutes * 60.0),
            kinds,
            instances: instances.clamp(2, 4),
            pace_ms: var("CHAOS_PACE_MS").map_or(2, |p| p.parse().expect("CHAOS_PACE_MS")),
            approx: var("CHAOS_COUNT").is_some_and(|c| c == "approx"),
        }
    }
}

/// The window length, grace and Redis timeout every instance runs with.
pub const WINDOW_SECS: i64 = 3;
/// The grace: 1000 ms, or `CHAOS_GRACE_MS` (an older build allowed less than the start-up
/// rule of today's, grace ≥ skew budget + Redis timeout + 100 ms).
fn grace_ms() -> i64 {
    static GRACE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *GRACE.get_or_init(|| {
        std::env::var("CHAOS_GRACE_MS")
            .ok()
            .filter(|v| !v.is_empty())
            .map_or(1000, |v| v.parse().expect("CHAOS_GRACE_MS: milliseconds"))
    })
}
const REDIS_TIMEOUT_MS: i64 = 250;
const SKEW_BUDGET_MS: i64 = 250;
/// Instances' clock offsets lie within ±this (pairwise within the budget).
const MAX_OFFSET_MS: i64 = 100;
/// How long after a fault is lifted the service must answer `ok` again.
pub const RECOVERY_LIMIT_MS: i64 = 10_000;
/// Client threads sending through the load balancer.
const CLIENTS: usize = 12;

fn run_and_check(plan: &Plan) {
    // One schedule at a time: each loads the machine on its own.
    static SERIAL: Mutex<()> = Mutex::new(());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for kind in &plan.kinds {
        assert!(
            kind.fits(&plan.topology),
            "fault {} cannot strike topology {}",
            kind.name(),
            plan.topology
        );
    }
    let backend = match plan.topology.as_str() {
        "single" => Redis::start().map(Backend::Single),
        "cluster" => Cluster::start_replicated(true).map(Backend::Cluster),
        "sentinel" => Sentinels::start().map(Backend::Sentinel),
        other => panic!("topology {other:?}: one of single, cluster, sentinel"),
    };
    let Some(backend) = backend else {
        return;
    };
    if !have("nginx") {
        return;
    }
    let run_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("chaos")
        .join(format!("seed-{}-{}", plan.seed, now_ms() / 1000));
    std::fs::create_dir_all(&run_dir).expect("create the run directory");
    let mut rng = Rng::new(plan.seed);
    let settings = Settings {
        window_secs: WINDOW_SECS,
        grace_ms: grace_ms(),
        redis_timeout_ms: REDIS_TIMEOUT_MS,
        skew_budget_ms: SKEW_BUDGET_MS,
        knows_skew_budget: binary_knows("--max-clock-skew-ms"),
        cluster: plan.topology == "cluster",
        approx: plan.approx,
    };
    let store = Arc::new(Store::new(backend));
    let members: Vec<Member> = (0..plan.instances)
        .map(|n| {
            let offset = rng.range(-MAX_OFFSET_MS, MAX_OFFSET_MS);
            // The first instance is always distant; the others at a toss (one server only).
            let delay = (n == 0 || rng.chance(0.5)).then(|| rng.range(0, 40) as u64);
            let link = store.port.zip(delay);
            Member::new(n, &store.url, offset, link)
        })
        .collect();
    let members = Arc::new(Mutex::new(members));
    for member in members.lock().unwrap().iter_mut() {
        member.start(&settings, &run_dir);
    }
    let listens: Vec<SocketAddr> = members.lock().unwrap().iter().map(|m| m.listen).collect();
    let nginx = Nginx::start(&listens).expect("nginx is installed");
    let receiver = Receiver::start();
    eprintln!(
        "chaos: seed {} topology {} instances {} for {:?}; faults {:?}; run directory {}",
        plan.seed,
        plan.topology,
        plan.instances,
        plan.duration,
        plan.kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
        run_dir.display()
    );
    for m in members.lock().unwrap().iter() {
        eprintln!(
            "  {} on {}: clock {:+} ms, {}",
            m.name,
            m.listen,
            m.offset_ms,
            m.link.as_ref().map_or("direct to Redis".to_string(), |_| {
                format!("through a {} ms link", m.base_delay_ms)
            })
        );
    }

    let started_ms = now_ms();
    let clients_end_ms = started_ms + plan.duration.as_millis() as i64;
    let settle_ms = WINDOW_SECS * 1000 + grace_ms() + 500;
    let faults_end_ms = clients_end_ms - settle_ms;
    let hook = receiver.url("");
    let clients: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let (hook, seed, pace) = (hook.clone(), plan.seed, plan.pace_ms);
            let lb = nginx.addr;
            thread::spawn(move || client(t, seed, lb, &hook, pace, clients_end_ms))
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let auditor = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        let approx = plan.approx;
        thread::spawn(move || audit(&store, &stop, started_ms, approx))
    };
    let faults = inject(
        plan,
        &mut rng,
        &store,
        &members,
        &settings,
        &run_dir,
        faults_end_ms,
    );
    let answers: Vec<Answer> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    // The last windows' reports, a takeover after a lease (3 s) and a slow target (3 s).
    thread::sleep(Duration::from_millis(
        (WINDOW_SECS * 1000 + grace_ms() + 9000) as u64,
    ));
    stop.store(true, Ordering::Relaxed);
    let (audit, registers) = auditor.join().expect("auditor");
    let hash_key = store
        .cli(&["GET", "verve:hash-key"])
        .and_then(|k| verve::sketch::HashKey::from_hex(k.trim()));
    let logs: Vec<_> = members
        .lock()
        .unwrap()
        .iter()
        .flat_map(|m| m.logs(&run_dir))
        .collect();
    let posts = receiver.received();
    let secs_ms = WINDOW_SECS * 1000;
    let first = (started_ms + secs_ms - 1).div_euclid(secs_ms) * WINDOW_SECS;
    let last = clients_end_ms.div_euclid(secs_ms) * WINDOW_SECS - WINDOW_SECS;
    let windows: Vec<i64> = (first..=last).step_by(WINDOW_SECS as usize).collect();
    let summary = check::check(&Evidence {
        windows: &windows,
        answers: &answers,
        logs: &logs,
        posts: &posts,
        audit: &audit,
        sketches: plan.approx.then_some((hash_key, &registers)),
        faults: &faults,
    });
    let report = summary.report(&faults);
    eprintln!("{report}");
    std::fs::write(run_dir.join("report.txt"), &report).expect("write the report");
    drop(nginx);
    assert!(
        summary.violations.is_empty(),
        "{} violations (seed {}); logs in {}",
        summary.violations.len(),
        plan.seed,
        run_dir.display()
    );
}

/// Whether the verve binary under test lists `flag` in its help.
fn binary_knows(flag: &str) -> bool {
    let bin = std::env::var_os("VERVE_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_verve")), PathBuf::from);
    let help = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .expect("run verve --help");
    String::from_utf8_lossy(&help.stdout).contains(flag)
}

/// How far from a window boundary (on the harness's clock) clients keep, so that every
/// instance, whatever its offset, puts a request in the window the harness does.
const BAND_MS: i64 = MAX_OFFSET_MS + 60;

/// One client: ids new to the window (70 %) or repeated; 40 % with one of 12 fixed endpoints,
/// 1 % with a slow one (its POST takes 3 s: a leader is mid-delivery for a while), 5 % with
/// one named after the quarter second they are sent in (so several clients register it at
/// once, and no one after that). Returns every answer.
fn client(
    t: usize,
    seed: u64,
    lb: SocketAddr,
    hook: &str,
    pace_ms: u64,
    end_ms: i64,
) -> Vec<Answer> {
    let mut rng = Rng::new(seed ^ (0xC1_1E47 + t as u64));
    let secs_ms = WINDOW_SECS * 1000;
    let (mut conn, mut answers) = (None::<Conn>, Vec::new());
    let (mut window, mut sent) = (0i64, Vec::<i64>::new());
    loop {
        let now = now_ms();
        if now >= end_ms {
            return answers;
        }
        let pos = now.rem_euclid(secs_ms);
        if pos < BAND_MS || pos >= secs_ms - BAND_MS {
            let wait = (BAND_MS - pos).rem_euclid(secs_ms);
            thread::sleep(Duration::from_millis(wait as u64));
            continue;
        }
        let w = now.div_euclid(secs_ms) * WINDOW_SECS;
        if w != window {
            window = w;
            sent.clear();
        }
        let id = if !sent.is_empty() && rng.chance(0.3) {
            sent[rng.below(sent.len() as u64) as usize]
        } else {
            let id = w * 100_000_000 + t as i64 * 10_000_000 + sent.len() as i64;
            sent.push(id);
            id
        };
        let endpoint = match rng.below(200) {
            0..=79 => Some(format!("/cb/{}", rng.below(12))),
            80 | 81 => Some("/slow/cb".to_string()),
            82..=91 => Some(format!("/cb/w{w}-{}", pos / 250)),
            _ => None,
        };
        let mut target = format!("/api/verve/accept?id={id}");
        if let Some(path) = &endpoint {
            target.push_str("&endpoint=");
            target.push_str(&encode(&format!("{hook}{path}")));
        }
        let sent_ms = now_ms();
        if conn.is_none() && TcpStream::connect(lb).is_ok() {
            conn = Some(Conn::connect(lb));
        }
        let status = match conn.as_mut().map(|c| c.try_request("GET", &target)) {
            Some(Ok(reply)) => reply.status,
            _ => {
                conn = None;
                0
            }
        };
        answers.push(Answer {
            window: w,
            id,
            endpoint,
            status,
            sent_ms,
            done_ms: now_ms(),
        });
        thread::sleep(Duration::from_millis(pace_ms));
    }
}

/// Sleeps until `epoch_ms` (at once if it has passed).
fn sleep_until(epoch_ms: i64) {
    let wait = epoch_ms - now_ms();
    if wait > 0 {
        thread::sleep(Duration::from_millis(wait as u64));
    }
}

/// The start (epoch ms) of the first window boundary after `epoch_ms`.
fn next_boundary(epoch_ms: i64) -> i64 {
    (epoch_ms.div_euclid(WINDOW_SECS * 1000) + 1) * WINDOW_SECS * 1000
}

/// Strikes faults, one at a time, until `end_ms`: the enabled kinds in a shuffled cycle (so
/// every kind strikes), each after the previous one's windows were reported, half of them
/// inside a window's grace.
fn inject(
    plan: &Plan,
    rng: &mut Rng,
    store: &Store,
    members: &Mutex<Vec<Member>>,
    settings: &Settings,
    run_dir: &Path,
    end_ms: i64,
) -> Vec<Fault> {
    let settle_ms = WINDOW_SECS * 1000 + grace_ms() + 500;
    let (mut faults, mut cycle) = (Vec::new(), Vec::<Kind>::new());
    // The first one after the fleet has a window behind it.
    let mut not_before = now_ms() + settle_ms;
    loop {
        if cycle.is_empty() {
            cycle = plan.kinds.clone();
            for i in (1..cycle.len()).rev() {
                cycle.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let kind = cycle.pop().expect("a fault kind");
        let mut at = not_before + rng.range(0, 3000);
        if rng.chance(0.5) {
            at = next_boundary(at) + rng.range(0, grace_ms());
        }
        // Each takes at most a few seconds, then the service must recover before the end.
        if at + 4000 + settle_ms > end_ms {
            return faults;
        }
        sleep_until(at);
        let fault = strike(kind, rng, store, members, settings, run_dir);
        eprintln!(
            "  {} at {} (+{} ms): {}",
            kind.name(),
            fault.at_ms,
            fault.lifted_ms - fault.at_ms,
            fault.detail
        );
        not_before = fault.lifted_ms + settle_ms;
        faults.push(fault);
    }
}

fn strike(
    kind: Kind,
    rng: &mut Rng,
    store: &Store,
    members: &Mutex<Vec<Member>>,
    settings: &Settings,
    run_dir: &Path,
) -> Fault {
    let at_ms = now_ms();
    let (mut lifted_ms, mut broke, mut failover) = (None, None, None);
    let detail = match kind {
        Kind::RedisRestart => {
            let down = rng.range(0, 1500);
            let mut backend = store.backend.lock().unwrap();
            let Backend::Single(redis) = &mut *backend else {
                unreachable!("checked by Kind::fits")
            };
            redis.kill();
            thread::sleep(Duration::from_millis(down as u64));
            redis.restart();
            format!("down {down} ms, back empty")
        }
        Kind::Failover => {
            let how = [Failure::Kill, Failure::Stop, Failure::Manual][rng.below(3) as usize];
            let mut backend = store.backend.lock().unwrap();
            let (killed, promoted_ms, back) = match &mut *backend {
                Backend::Cluster(cluster) => {
                    let masters = cluster.masters();
                    // The seed at a toss, when it is a master: the case of issue 16.
                    let n = if masters.contains(&0) && rng.chance(0.5) {
                        0
                    } else {
                        masters[rng.below(masters.len() as u64) as usize]
                    };
                    let promoted = cluster.fail_master(n, how).expect("no replica took over");
                    (format!("master n{n}"), promoted, n)
                }
                Backend::Sentinel(set) => {
                    let (n, promoted) = set.fail_primary(how).expect("the sentinels failed over");
                    (format!("primary s{n}"), promoted, n)
                }
                Backend::Single(_) => unreachable!("checked by Kind::fits"),
            };
            lifted_ms = Some(promoted_ms);
            failover = Some((how, promoted_ms - at_ms));
            // A node failed over must not keep an instance unready (SPEC §6.4).
            let ready = common::wait_for(Duration::from_millis(RECOVERY_LIMIT_MS as u64), || {
                members
                    .lock()
                    .unwrap()
                    .iter()
                    .all(Member::is_ready)
                    .then(now_ms)
            });
            let ready_after = match ready {
                Some(ms) => format!("all ready {} ms after", ms - promoted_ms),
                None => {
                    broke = Some(format!(
                        "an instance was not ready {RECOVERY_LIMIT_MS} ms after the promotion"
                    ));
                    "NOT READY".to_string()
                }
            };
            thread::sleep(Duration::from_millis(rng.range(0, 2000) as u64));
            match &mut *backend {
                Backend::Cluster(cluster) => cluster.revive(back, how),
                Backend::Sentinel(set) => set.revive(back, how),
                Backend::Single(_) => unreachable!(),
            }
            format!(
                "{killed} {}, promoted after {} ms, {ready_after}; back as a replica",
                how.name(),
                promoted_ms - at_ms
            )
        }
        Kind::InstanceKill => {
            let n = rng.below(members.lock().unwrap().len() as u64) as usize;
            let down = rng.range(0, 2000);
            members.lock().unwrap()[n].kill();
            thread::sleep(Duration::from_millis(down as u64));
            members.lock().unwrap()[n].start(settings, run_dir);
            format!("i{n} down {down} ms")
        }
        Kind::LeaderKill => {
            // The window that closes next, once its leader has begun its callbacks.
            let end = next_boundary(at_ms);
            sleep_until(end + grace_ms() + rng.range(200, 800));
            let shown = rfc3339(end / 1000 - WINDOW_SECS);
            let leader = common::wait_for(Duration::from_secs(2), || {
                members.lock().unwrap().iter().position(|m| {
                    m.live_log()
                        .iter()
                        .any(|l| l.kind == "callback" && l.get("window_start") == shown)
                })
            });
            match leader {
                Some(n) => {
                    members.lock().unwrap()[n].kill();
                    thread::sleep(Duration::from_secs(1));
                    members.lock().unwrap()[n].start(settings, run_dir);
                    format!("i{n}, leading {shown}, down 1000 ms")
                }
                None => format!("no instance was delivering {shown}"),
            }
        }
        Kind::ClientPause => {
            let (ms, what) = (
                rng.range(200, 2000),
                ["WRITE", "ALL"][rng.below(2) as usize],
            );
            let said = store.cli(&["CLIENT", "PAUSE", &ms.to_string(), what]);
            assert!(
                said.as_ref().is_some_and(|s| s.contains("OK")),
                "CLIENT PAUSE: {said:?}"
            );
            thread::sleep(Duration::from_millis(ms as u64));
            format!("{what} for {ms} ms")
        }
        Kind::DelaySpike => {
            let linked: Vec<usize> = {
                let all = members.lock().unwrap();
                (0..all.len()).filter(|&n| all[n].link.is_some()).collect()
            };
            let n = linked[rng.below(linked.len() as u64) as usize];
            let (delay, ms) = (rng.range(150, 600) as u64, rng.range(500, 3000));
            let base = {
                let all = members.lock().unwrap();
                all[n].link.as_ref().unwrap().set_delay(delay);
                all[n].base_delay_ms
            };
            thread::sleep(Duration::from_millis(ms as u64));
            members.lock().unwrap()[n]
                .link
                .as_ref()
                .unwrap()
                .set_delay(base);
            format!("i{n}'s link {delay} ms for {ms} ms")
        }
    };
    Fault {
        kind,
        at_ms,
        lifted_ms: lifted_ms.unwrap_or_else(now_ms),
        detail,
        broke,
        failover,
    }
}

/// Reads each window's ids from Redis soon after its count was read (one server holding the
/// keys, one shard; not in a cluster): when a count falls short, the report names the ids
/// Redis did not hold. In approx mode it reads the window's HyperLogLog registers instead.
fn audit(
    store: &Store,
    stop: &AtomicBool,
    started_ms: i64,
    approx: bool,
) -> (HashMap<i64, HashSet<i64>>, HashMap<i64, Vec<u8>>) {
    let mut held = HashMap::new();
    let mut registers = HashMap::new();
    let mut window = next_boundary(started_ms) / 1000;
    while !stop.load(Ordering::Relaxed) {
        sleep_until((window + WINDOW_SECS) * 1000 + grace_ms() + 1500);
        if approx {
            // As hex: redis-cli cannot hand binary back intact.
            let hex = store.cli(&[
                "EVAL",
                "local v = redis.call('GET', KEYS[1]) if not v then return '' end \
                 return (v:gsub('.', function(c) return string.format('%02x', c:byte()) end))",
                "1",
                &format!("verve:{{{window}}}:hll"),
            ]);
            let bytes: Option<Vec<u8>> = hex.and_then(|h| {
                let h = h.trim();
                (0..h.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
                    .collect()
            });
            if let Some(regs) = bytes.and_then(|b| verve::sketch::registers_of_dense(&b)) {
                registers.insert(window, regs);
            }
        } else {
            let key = format!("verve:{{{window}:0}}:ids");
            if let Some(members) = store.cli(&["SMEMBERS", &key]) {
                let ids = members
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                held.insert(window, ids);
            }
        }
        window += WINDOW_SECS;
    }
    (held, registers)
}
