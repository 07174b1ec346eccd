//! The endpoint bounds in fleet mode (SPEC §6.1 I-endpoint): enforced fleet-wide when an
//! endpoint is registered, so the first endpoints registered anywhere in the fleet are the
//! ones called; those beyond are refused, counted and logged, and their ids still count.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Receiver, Redis, TempDir, Verve, encode, now_ms, sleep_into_next_window, wait_for};

const WINDOW: &str = "4";
const SECS: i64 = 4;

/// Each test runs Redis and two instances: one at a time, so that on a small machine the
/// registrations fit in their window.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// An instance of the fleet on `redis` calling loopback, with these endpoint bounds; its
/// diagnostics go to `stderr`.
fn instance(redis: &Redis, max: &str, per_domain: &str, stderr: &std::path::Path) -> Verve {
    let url = redis.url();
    Verve::start_with_stderr(
        &[
            "--redis-url",
            &url,
            "--window-secs",
            WINDOW,
            "--grace-ms",
            "1000",
            "--callback-allow",
            "127.0.0.0/8",
            "--callback-max-endpoints",
            max,
            "--callback-max-per-domain",
            per_domain,
        ],
        &[],
        stderr,
    )
}

/// Two instances on `redis` with the same endpoint bounds, their diagnostics in files.
struct Pair {
    a: Verve,
    b: Verve,
    log_a: std::path::PathBuf,
    log_b: std::path::PathBuf,
    _dir: TempDir,
}

impl Pair {
    fn start(redis: &Redis, max: &str, per_domain: &str) -> Self {
        let dir = TempDir::new("caps");
        let (log_a, log_b) = (dir.0.join("a.stderr"), dir.0.join("b.stderr"));
        Self {
            a: instance(redis, max, per_domain, &log_a),
            b: instance(redis, max, per_domain, &log_b),
            log_a,
            log_b,
            _dir: dir,
        }
    }
}

/// `id` with `endpoint` on `verve`: must be answered `ok` (the id counts either way).
fn accept(verve: &Verve, id: i64, endpoint: &str) {
    let reply = verve.get(&format!(
        "/api/verve/accept?id={id}&endpoint={}",
        encode(endpoint)
    ));
    assert_eq!(reply.status, 200, "id {id} with {endpoint}: {}", reply.body);
}

/// The paths that got POSTs, once the fleet's report of `window` is out (the leader is
/// whichever instance won the lease) and a stray second POST would have shown.
fn posted_paths(
    receivers: &[&Receiver],
    fleet: &[&Verve],
    window: i64,
    want: usize,
) -> BTreeSet<String> {
    for verve in fleet {
        let line = verve.wait_window(window, Duration::from_secs(12));
        assert_eq!(line.get("scope"), "fleet", "{}", line.raw);
    }
    let all = || -> Vec<String> {
        receivers
            .iter()
            .flat_map(|r| r.received())
            .filter(|r| r.method == "POST")
            .map(|r| r.path)
            .collect()
    };
    wait_for(Duration::from_secs(10), || {
        (all().len() >= want).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let paths = all();
    let distinct: BTreeSet<String> = paths.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        paths.len(),
        "one POST per endpoint: {paths:?}"
    );
    distinct
}

/// The window's endpoint set as Redis holds it.
fn members(redis: &Redis, window: i64) -> BTreeSet<String> {
    let key = format!("verve:{{{window}}}:endpoints");
    redis
        .cli(&["SMEMBERS", &key])
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Lines of a diagnostics file that contain `what`.
fn warnings(stderr: &std::path::Path, what: &str) -> usize {
    std::fs::read_to_string(stderr)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .count()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Three endpoint slots per window, shared by two instances: B registers first, A fills the
/// window, and the endpoints offered after that — on either instance, though neither holds
/// three itself — are refused, counted and logged once, with their ids counted. Exactly the
/// first three registered get POSTs (with the bounds applied per instance and again over
/// the fleet's set at the end, an arbitrary three of five would).
#[test]
fn the_first_endpoints_registered_in_the_fleet_keep_the_window() {
    let _serial = serial();
    let Some(redis) = Redis::start() else { return };
    let receiver = Receiver::start();
    // One /24 for every endpoint: the per-domain bound is out of the way here.
    let Pair {
        a,
        b,
        log_a,
        log_b,
        _dir,
    } = Pair::start(&redis, "3", "100");

    let window = sleep_into_next_window(SECS, 100);
    accept(&b, 1, &receiver.url("/w/b-first"));
    accept(&a, 2, &receiver.url("/w/a-1"));
    accept(&a, 3, &receiver.url("/w/a-2"));
    let members_when_full = members(&redis, window);
    accept(&b, 4, &receiver.url("/w/b-late"));
    accept(&a, 5, &receiver.url("/w/a-3"));
    let dropped_when_refused = (
        a.metric("verve_endpoints_dropped_total"),
        b.metric("verve_endpoints_dropped_total"),
    );
    let members_after = members(&redis, window);
    // Again, and another one: refused without Redis (the fleet's window stays full).
    accept(&b, 6, &receiver.url("/w/b-late"));
    accept(&b, 7, &receiver.url("/w/b-other"));
    let dropped_b = b.metric("verve_endpoints_dropped_total");
    assert!(
        now_ms() < (window + SECS) * 1000,
        "the registrations spilled past their window"
    );

    let posted = posted_paths(&[&receiver], &[&a, &b], window, 3);
    assert_eq!(
        posted,
        set(&["/w/a-1", "/w/a-2", "/w/b-first"]),
        "the first three registered fleet-wide, and only they, get POSTs"
    );
    let stored: BTreeSet<String> = ["/w/b-first", "/w/a-1", "/w/a-2"]
        .iter()
        .map(|p| receiver.url(p))
        .collect();
    assert_eq!(members_when_full, stored);
    assert_eq!(members_after, stored, "refused endpoints are not stored");
    assert_eq!(
        dropped_when_refused,
        (1, 1),
        "each instance counts the endpoint it refused for the fleet"
    );
    assert_eq!(
        dropped_b, 3,
        "every request naming a refused endpoint counts"
    );
    for verve in [&a, &b] {
        let line = verve.wait_window(window, Duration::from_secs(1));
        assert_eq!(
            line.count(),
            7,
            "refused endpoints' ids count: {}",
            line.raw
        );
    }
    for log in [&log_a, &log_b] {
        assert_eq!(
            warnings(log, "endpoints already; further endpoints are dropped"),
            1,
            "logged once per window: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    let domains = redis.cli(&["HGETALL", &format!("verve:{{{window}}}:domains")]);
    assert_eq!(
        domains.split_whitespace().collect::<Vec<_>>(),
        ["127.0.0.0/24", "3"]
    );
    for what in ["endpoints", "domains"] {
        let ttl: i64 = redis
            .cli(&["TTL", &format!("verve:{{{window}}}:{what}")])
            .trim()
            .parse()
            .unwrap();
        assert!(ttl > 0, "{what} has no expiry ({ttl})");
    }
}

/// Two endpoints per domain (here an IPv4 /24) per window, across two instances: A and B
/// each register one in 127.0.0.0/24, then each is refused a second one there though
/// neither holds two itself, while another /24 still gets its slot. Exactly the endpoints
/// Redis took get POSTs.
#[test]
fn a_domain_full_on_one_instance_is_full_on_every_instance() {
    let _serial = serial();
    let Some(redis) = Redis::start() else { return };
    let near = Receiver::start_on("127.0.0.1");
    let far = Receiver::start_on("127.1.0.1");
    let Pair {
        a,
        b,
        log_a,
        log_b,
        _dir,
    } = Pair::start(&redis, "10", "2");

    let window = sleep_into_next_window(SECS, 100);
    accept(&a, 1, &near.url("/d/a-1"));
    accept(&b, 2, &near.url("/d/b-1"));
    accept(&a, 3, &near.url("/d/a-2"));
    accept(&b, 4, &far.url("/d/b-far"));
    accept(&b, 5, &near.url("/d/b-2"));
    let dropped = (
        a.metric("verve_endpoints_dropped_domain_total"),
        b.metric("verve_endpoints_dropped_domain_total"),
    );
    accept(&b, 6, &near.url("/d/b-3")); // refused without Redis: the domain stays full
    let dropped_b = b.metric("verve_endpoints_dropped_domain_total");
    assert!(
        now_ms() < (window + SECS) * 1000,
        "the registrations spilled past their window"
    );

    let posted = posted_paths(&[&near, &far], &[&a, &b], window, 3);
    assert_eq!(
        posted,
        set(&["/d/a-1", "/d/b-1", "/d/b-far"]),
        "the first two of the /24, and the other /24's, get POSTs"
    );
    assert_eq!(dropped, (1, 1), "each instance counts the one it refused");
    assert_eq!(dropped_b, 2);
    assert_eq!(
        (
            a.metric("verve_endpoints_dropped_total"),
            b.metric("verve_endpoints_dropped_total")
        ),
        (0, 0),
        "the window itself had room"
    );
    for log in [&log_a, &log_b] {
        assert_eq!(
            warnings(log, "its further endpoints are dropped"),
            1,
            "logged once per window: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    let stored: BTreeSet<String> = [near.url("/d/a-1"), near.url("/d/b-1"), far.url("/d/b-far")]
        .into_iter()
        .collect();
    assert_eq!(members(&redis, window), stored);
    for verve in [&a, &b] {
        let line = verve.wait_window(window, Duration::from_secs(1));
        assert_eq!(
            line.count(),
            6,
            "refused endpoints' ids count: {}",
            line.raw
        );
    }
}

/// Redis restarted empty mid-window: each instance re-adds its endpoints through the same
/// bounds, so the window's set and per-domain counts come back as they were (with their
/// expiry), and the endpoints that were refused stay refused.
#[test]
fn re_added_endpoints_keep_to_the_bounds() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let receiver = Receiver::start();
    let Pair { a, b, _dir, .. } = Pair::start(&redis, "2", "100");

    let window = sleep_into_next_window(SECS, 100);
    accept(&a, 1, &receiver.url("/r/a-1"));
    accept(&b, 2, &receiver.url("/r/b-1"));
    accept(&b, 3, &receiver.url("/r/b-2"));
    let stored: BTreeSet<String> = [receiver.url("/r/a-1"), receiver.url("/r/b-1")]
        .into_iter()
        .collect();
    assert_eq!(members(&redis, window), stored);
    redis.restart(); // empty (no persistence); the instances re-add at once

    let posted = posted_paths(&[&receiver], &[&a, &b], window, 2);
    assert_eq!(posted, set(&["/r/a-1", "/r/b-1"]));
    for verve in [&a, &b] {
        assert!(verve.metric("verve_resyncs_total") >= 1, "no re-add");
    }
    assert_eq!(members(&redis, window), stored, "both re-added");
    let domains = redis.cli(&["HGETALL", &format!("verve:{{{window}}}:domains")]);
    assert_eq!(
        domains.split_whitespace().collect::<Vec<_>>(),
        ["127.0.0.0/24", "2"]
    );
    let ttl: i64 = redis
        .cli(&["TTL", &format!("verve:{{{window}}}:domains")])
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 0, "the re-added counts expire ({ttl})");
}

/// The target of a request for `id` naming `endpoint`.
fn accept_target(id: i64, endpoint: &str) -> String {
    format!("/api/verve/accept?id={id}&endpoint={}", encode(endpoint))
}

/// A bound reached only with a registration still in flight refuses nothing: that
/// registration may fail without reaching Redis and give its slot back, and an endpoint
/// refused meanwhile with an `ok` would never get the window's POST though the fleet had
/// room. Bound 2: `/a` registered (Redis holds 1 of 2); Redis holds writes back and `/b`'s
/// registration is in flight (the instance's 2 slots taken); a request naming `/c` comes;
/// `/b`'s script times out and its connection drops before it ran, so Redis holds `{/a}`.
/// `/c`'s request must then be answered 503 (its outcome unknown; a client retries) or, if
/// `ok`, get the POST.
#[test]
fn a_failed_registration_in_flight_costs_an_ok_endpoint_its_post() {
    in_flight_refusal("--callback-max-endpoints", "verve_endpoints_dropped_total");
}

/// The same with the per-domain bound (2 per /24; every endpoint here is in 127.0.0.0/24).
#[test]
fn a_failed_registration_in_flight_costs_an_ok_endpoint_its_post_per_domain() {
    in_flight_refusal(
        "--callback-max-per-domain",
        "verve_endpoints_dropped_domain_total",
    );
}

/// Runs the scenario above with `bound` (a flag) at 2; `metric` counts refusals.
fn in_flight_refusal(bound: &str, metric: &str) {
    let _serial = serial();
    let Some(redis) = Redis::start() else { return };
    let receiver = Receiver::start();
    let verve = Verve::on_redis(
        &redis,
        &[
            "--redis-timeout-ms",
            "250",
            "--window-secs",
            WINDOW,
            "--grace-ms",
            "1000",
            "--callback-allow",
            "127.0.0.0/8",
            bound,
            "2",
        ],
    );
    let (a, b, c) = (receiver.url("/a"), receiver.url("/b"), receiver.url("/c"));
    let window = sleep_into_next_window(SECS, 100);
    let mut conn = verve.connect();
    assert_eq!(conn.get(&accept_target(1, &a)).status, 200);
    let paused = redis.cli(&["CLIENT", "PAUSE", "3000", "WRITE"]);
    assert!(paused.contains("OK"), "{paused}");
    let mut lead = verve.connect();
    let target_b = accept_target(1, &b);
    let lead = std::thread::spawn(move || lead.get(&target_b).status);
    std::thread::sleep(Duration::from_millis(60));
    // Id 1 is known locally: only the endpoint is new.
    let target_c = accept_target(1, &c);
    let status_c = conn.get(&target_c).status;
    let status_b = lead.join().unwrap();
    // The link drops while /b's script is still held: it never runs.
    redis.cli(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    redis.cli(&["CLIENT", "UNPAUSE"]);
    assert_eq!(status_b, 503, "/b's registration was to time out");
    assert!(
        status_c == 200 || status_c == 503,
        "/c's request: {status_c}"
    );
    // A client retries a 503 (and only a 503): the instance reconnects, /b's slot is free.
    if status_c == 503 {
        wait_for(Duration::from_secs(2), || {
            (verve.get(&target_c).status == 200).then_some(())
        })
        .expect("/c's retry answered ok");
    }
    assert!(
        now_ms() < (window + SECS) * 1000,
        "the scenario spilled past its window"
    );

    let line = verve.wait_window(window, Duration::from_secs(12));
    assert_eq!(line.get("scope"), "fleet", "{}", line.raw);
    wait_for(Duration::from_secs(8), || {
        (!receiver.to("/a").is_empty()).then_some(())
    })
    .expect("the window's POST to /a");
    std::thread::sleep(Duration::from_secs(2));
    let stored = members(&redis, window);
    let dropped = verve.metric(metric);
    assert!(
        !receiver.to("/c").is_empty(),
        "/c was answered ok (first answer {status_c}) while the fleet had room (Redis holds \
         {stored:?} of 2), yet it was refused ({dropped} dropped) and got no POST"
    );
    assert_eq!(stored, BTreeSet::from([a, c]), "/b never reached Redis");
    assert_eq!(dropped, 0, "nothing was over a bound Redis holds");
    assert!(receiver.to("/b").is_empty(), "/b was never registered");
}
