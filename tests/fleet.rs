//! Fleet mode against real Redis, Redis Cluster and nginx, all on loopback.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    Cluster, Nginx, Receiver, Redis, Verve, encode, now_ms, rfc3339, send_ids, serial,
    sleep_into_next_window, wait_for,
};

const WINDOW: &str = "4";
const SECS: i64 = 4;

/// The instance logged the window with this fleet count.
fn assert_fleet_count(verve: &Verve, window: i64, count: u64) {
    let line = verve.wait_fleet_window(window, Duration::from_secs(12));
    assert_eq!(
        (line.count(), line.get("scope")),
        (count, "fleet"),
        "{}",
        line.raw
    );
}

fn fleet_args<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    fleet_args_with_window(url, WINDOW, extra)
}

fn fleet_args_with_window<'a>(url: &'a str, window: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--redis-url",
        url,
        "--window-secs",
        window,
        "--grace-ms",
        "1000",
        "--callback-allow",
        "127.0.0.0/8",
    ];
    args.extend_from_slice(extra);
    args
}

/// Both instances get the same 10 000 distinct ids at the same moment, each twice over: each
/// logs the exact fleet count, and every endpoint gets exactly one POST from the fleet.
#[test]
fn two_instances_count_the_same_ids_once_and_post_once() {
    let _serial = serial();
    let Some(redis) = Redis::start() else { return };
    let receiver = Receiver::start();
    let url = redis.url();
    // 24 000 requests must fit in one window even in a debug build on a busy machine.
    const BURST_SECS: i64 = 8;
    // One lane, and more lanes than most CI machines have cores: the six connections of a
    // burst spread over b's three lanes, each with its own Redis connection and batcher.
    let a = Verve::start(&fleet_args_with_window(&url, "8", &["--lanes", "1"]));
    let b = Verve::start(&fleet_args_with_window(&url, "8", &["--lanes", "3"]));
    // A connection per lane and one for the bookkeeping: 2 + 4.
    let clients = redis.cli(&["client", "list"]).lines().count();
    assert_eq!(clients, 6 + 1, "redis-cli itself is the seventh client");
    let both = receiver.url("/both");
    let only_a = receiver.url("/only-a");
    let mut attempt = 0;
    let window = loop {
        // Fresh ids per attempt; the first 2000 of them are sent twice to each instance.
        let base = attempt * 100_000;
        let ids: Vec<i64> = (base + 1..=base + 10_000)
            .chain(base + 1..=base + 2_000)
            .collect();
        let window = sleep_into_next_window(BURST_SECS, 100);
        let (addr_a, addr_b) = (a.addr, b.addr);
        let ids_b = ids.clone();
        let to_b = thread::spawn(move || send_ids(addr_b, &ids_b, 6, ""));
        let to_a = send_ids(addr_a, &ids, 6, "");
        let to_b = to_b.join().unwrap();
        for (id, status) in to_a.iter().chain(&to_b) {
            assert_eq!(*status, 200, "id {id}");
        }
        for (verve, target) in [(&a, &both), (&b, &both), (&a, &only_a)] {
            let reply = verve.get(&format!(
                "/api/verve/accept?id={}&endpoint={}",
                base + 7,
                encode(target)
            ));
            assert_eq!(reply.status, 200);
        }
        if now_ms() < (window + BURST_SECS) * 1000 {
            break window;
        }
        attempt += 1;
        assert!(attempt < 3, "the load never fit in one window");
        eprintln!("burst spilled past its window on a slow machine; retrying");
        thread::sleep(Duration::from_secs(BURST_SECS as u64 + 2)); // let those callbacks go by
        receiver.clear();
    };

    for verve in [&a, &b] {
        assert_fleet_count(verve, window, 10_000);
    }
    let posted = wait_for(Duration::from_secs(10), || {
        (receiver.to("/both").len() == 1 && receiver.to("/only-a").len() == 1).then_some(())
    });
    assert!(
        posted.is_some(),
        "callbacks missing: {:?}",
        receiver.received()
    );
    thread::sleep(Duration::from_secs(2)); // a second, wrong POST would show by now
    assert_eq!(
        receiver.to("/both").len(),
        1,
        "one POST per endpoint from the whole fleet"
    );
    assert_eq!(receiver.to("/only-a").len(), 1);
    let body = &receiver.to("/both")[0].body;
    assert!(
        body.contains(r#""unique_requests":10000,"scope":"fleet""#),
        "{body}"
    );
    assert!(
        a.metric("verve_dedup_seconds_count") >= 1,
        "store latency is measured"
    );
}

/// nginx in front of three instances, ids with many duplicates over many connections: every
/// instance logs the exact fleet count.
#[test]
fn behind_nginx_three_instances_count_exactly() {
    let _serial = serial();
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let fleet: Vec<Verve> = (0..3)
        .map(|_| Verve::start(&fleet_args(&url, &[])))
        .collect();
    let upstreams: Vec<_> = fleet.iter().map(|v| v.addr).collect();
    let Some(nginx) = Nginx::start(&upstreams) else {
        return;
    };
    let ids: Vec<i64> = (0..12_000i64).map(|i| (i * 7919) % 3001 - 1500).collect();
    let distinct = ids.iter().collect::<HashSet<_>>().len() as u64;

    let window = sleep_into_next_window(SECS, 100);
    let replies = send_ids(nginx.addr, &ids, 16, "");
    assert!(
        replies.iter().all(|(_, s)| *s == 200),
        "not all answered ok"
    );
    assert!(
        now_ms() < (window + SECS) * 1000,
        "the load spilled past its window"
    );
    for verve in &fleet {
        assert_fleet_count(verve, window, distinct);
        assert!(
            verve.metric("verve_requests_total{status=\"200\"}") > 0,
            "nginx spread the load"
        );
    }
}

/// A three-master Redis Cluster: exact counts, and a window's keys spread over the nodes;
/// an endpoint is registered there too (its script's two keys share the window's slot).
#[test]
fn redis_cluster_counts_exactly_and_spreads_windows() {
    let _serial = serial();
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let receiver = Receiver::start();
    let url = cluster.url();
    let a = Verve::start(&fleet_args(&url, &["--redis-cluster"]));
    let b = Verve::start(&fleet_args(
        &url,
        &["--redis-cluster", "--redis-prefix", "verve"],
    ));
    let ids: Vec<i64> = (0..4000).collect();

    let window = sleep_into_next_window(SECS, 100);
    let (addr_b, ids_b) = (b.addr, ids[1000..].to_vec());
    let to_b = thread::spawn(move || send_ids(addr_b, &ids_b, 4, ""));
    let to_a = send_ids(a.addr, &ids[..3000], 4, "");
    assert!(
        to_a.iter()
            .chain(&to_b.join().unwrap())
            .all(|(_, s)| *s == 200)
    );
    let hook = encode(&receiver.url("/cluster"));
    for verve in [&a, &b] {
        let reply = verve.get(&format!("/api/verve/accept?id=1&endpoint={hook}"));
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert!(
        now_ms() < (window + SECS) * 1000,
        "the load spilled past its window"
    );
    for verve in [&a, &b] {
        assert_fleet_count(verve, window, 4000);
    }
    let posted = wait_for(Duration::from_secs(10), || {
        (!receiver.to("/cluster").is_empty()).then_some(())
    });
    assert!(
        posted.is_some(),
        "the endpoint registered on the cluster got no POST"
    );
    let pattern = format!("verve:{{{window}:*");
    let holding = cluster
        .nodes
        .iter()
        .filter(|n| !n.cli(&["--scan", "--pattern", &pattern]).trim().is_empty())
        .count();
    assert!(holding >= 2, "the window's keys sit on {holding} node(s)");
}

/// Redis killed mid-load and restarted empty: 503s while it is down, /readyz flips and
/// recovers, the same processes serve again, and every id answered ok is in a fleet count.
#[test]
fn redis_restart_loses_no_answered_id() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let a = Verve::start(&fleet_args(&url, &["--redis-timeout-ms", "200"]));
    let b = Verve::start(&fleet_args(&url, &["--redis-timeout-ms", "200"]));
    let stop = Arc::new(AtomicBool::new(false));
    let started = sleep_into_next_window(SECS, 100);
    let load: Vec<_> = [a.addr, b.addr]
        .into_iter()
        .enumerate()
        .map(|(n, addr)| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut answered = Vec::new(); // (id, status, sent ms, answered ms)
                let mut id = n as i64 * 1_000_000_000;
                let mut conn = common::Conn::connect(addr);
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    let sent = now_ms();
                    let status =
                        match conn.try_request("GET", &format!("/api/verve/accept?id={id}")) {
                            Ok(r) => r.status,
                            Err(_) => {
                                conn = common::Conn::connect(addr);
                                0
                            }
                        };
                    answered.push((id, status, sent, now_ms()));
                    thread::sleep(Duration::from_millis(1));
                }
                answered
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(1500));
    redis.kill();
    let not_ready = wait_for(Duration::from_secs(3), || {
        (a.get("/readyz").status == 503).then_some(())
    });
    assert!(not_ready.is_some(), "/readyz stayed 200 with Redis down");
    assert_eq!(a.metric("verve_redis_connected"), 0);
    thread::sleep(Duration::from_millis(500));
    redis.restart();
    let ready = wait_for(Duration::from_secs(10), || {
        (a.get("/readyz").status == 200 && b.get("/readyz").status == 200).then_some(())
    });
    assert!(ready.is_some(), "/readyz did not recover");
    assert_eq!(a.metric("verve_redis_connected"), 1);
    assert_eq!(a.metric("verve_window_seconds"), SECS as u64);
    let reported_at = a.metric("verve_last_window_reported_timestamp_seconds") as i64;
    assert!(
        (now_ms() / 1000 - reported_at) <= 2 * SECS,
        "last window reported at {reported_at}"
    );
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let answered: Vec<_> = load.into_iter().flat_map(|l| l.join().unwrap()).collect();
    let unavailable = answered.iter().filter(|r| r.1 == 503).count();
    assert!(unavailable > 0, "no request saw Redis down");
    assert!(
        answered.iter().all(|r| matches!(r.1, 200 | 503)),
        "only ok or 503"
    );

    let last = answered.iter().map(|r| r.3).max().unwrap() / 1000 / SECS * SECS;
    for verve in [&a, &b] {
        // After the restart a count may come late: a partial line, then the fleet's.
        let reported = verve.wait_fleet_window(last, Duration::from_secs(20));
        assert_eq!(reported.get("scope"), "fleet", "{}", reported.raw);
    }
    // Every ok id whose request lay wholly inside one window is in that window's fleet count.
    for start in (started..=last).step_by(SECS as usize) {
        let (lo, hi) = (start * 1000, (start + SECS) * 1000);
        let ok_inside = answered
            .iter()
            .filter(|r| r.1 == 200 && r.2 >= lo && r.3 < hi)
            .count() as u64;
        for verve in [&a, &b] {
            let line = verve.wait_fleet_window(start, Duration::from_secs(20));
            assert_eq!(line.get("scope"), "fleet", "{}", line.raw);
            assert!(
                line.count() >= ok_inside,
                "window {start}: {} < {ok_inside} ok ids",
                line.count()
            );
        }
    }
    // And in total: every ok id counted, nothing counted that was not sent.
    let ok = answered.iter().filter(|r| r.1 == 200).count() as u64;
    let counted: u64 = a
        .windows()
        .iter()
        .filter(|l| l.get("scope") == "fleet")
        .map(|l| l.count())
        .sum();
    assert!(
        counted >= ok && counted <= answered.len() as u64,
        "ok {ok}, counted {counted}"
    );
    assert!(a.metric("verve_resyncs_total") + b.metric("verve_resyncs_total") > 0);
}

/// One of two instances killed mid-window: the survivor's fleet count holds every id either
/// answered ok. Then the leader of a later window is killed after election, mid-delivery:
/// the survivor takes over and the window's callback still arrives.
#[test]
fn instance_and_leader_deaths_lose_nothing() {
    let _serial = serial();
    let Some(redis) = Redis::start() else { return };
    let receiver = Receiver::start();
    let url = redis.url();
    let mut a = Verve::start(&fleet_args(&url, &[]));
    let mut b = Verve::start(&fleet_args(&url, &[]));

    let window = sleep_into_next_window(SECS, 100);
    let to_a = send_ids(a.addr, &(0..1500).collect::<Vec<_>>(), 4, "");
    let to_b = send_ids(b.addr, &(1000..3000).collect::<Vec<_>>(), 4, "");
    b.signal("KILL");
    b.wait(Duration::from_secs(5));
    let ok: HashSet<i64> = to_a
        .iter()
        .chain(&to_b)
        .filter(|r| r.1 == 200)
        .map(|r| r.0)
        .collect();
    assert_eq!(ok.len(), 3000);
    assert!(
        now_ms() < (window + SECS) * 1000,
        "the load spilled past its window"
    );
    assert_fleet_count(&a, window, 3000);

    // Leader death: both instances register a slow endpoint; kill whichever leads.
    let mut c = Verve::start(&fleet_args(&url, &[]));
    let slow = encode(&receiver.url("/slow"));
    let window = sleep_into_next_window(SECS, 100);
    for verve in [&a, &c] {
        let reply = verve.get(&format!("/api/verve/accept?id=1&endpoint={slow}"));
        assert_eq!(reply.status, 200);
    }
    // After the previous window's report (at its end + grace), before this one's.
    thread::sleep(Duration::from_millis(
        (window * 1000 + 2000 - now_ms()).max(0) as u64,
    ));
    let led_before = a.metric("verve_leader_elections_total");
    let first = wait_for(Duration::from_secs(12), || {
        receiver.to("/slow").first().cloned()
    })
    .expect("the leader's POST");
    let killed_at = Instant::now();
    let (leader, survivor) = if a.metric("verve_leader_elections_total") > led_before {
        (&mut a, &c)
    } else {
        (&mut c, &a)
    };
    leader.signal("KILL");
    leader.wait(Duration::from_secs(5));
    let again = wait_for(Duration::from_secs(15), || {
        (receiver.to("/slow").len() >= 2).then_some(())
    });
    assert!(
        again.is_some(),
        "no instance took over the dead leader's window"
    );
    assert!(
        killed_at.elapsed() >= Duration::from_secs(1),
        "took over before the lease lapsed"
    );
    let retried = &receiver.to("/slow")[1];
    assert_eq!(
        retried.header("idempotency-key"),
        first.header("idempotency-key")
    );
    assert_eq!(retried.body, first.body);
    assert!(survivor.metric("verve_leader_elections_total") >= 1);
    assert_eq!(
        first.header("idempotency-key"),
        Some(common::rfc3339(window).as_str())
    );
}

/// Two instances whose clocks differ by less than the grace agree on every window's count,
/// also for ids that arrive around a boundary (one puts them in the window, the other in the
/// next).
#[test]
fn skewed_clocks_agree_on_every_window() {
    let _serial = serial();
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    // 700 ms apart: beyond the default budget, so the budget and the grace are raised.
    let skewed = |offset| {
        let mut args = fleet_args_with_window(&url, WINDOW, &["--clock-offset-ms", offset]);
        args.extend(["--max-clock-skew-ms", "700"]);
        let grace = args.iter().position(|a| *a == "--grace-ms").unwrap() + 1;
        args[grace] = "1200";
        Verve::start(&args)
    };
    let (a, b) = (skewed("350"), skewed("-350"));
    let window = sleep_into_next_window(SECS, 1000);
    let mut next_id = 0i64;
    let mut batch = |n: i64| {
        let ids: Vec<i64> = (next_id..next_id + n).collect();
        next_id += n;
        ids
    };
    for ids in [batch(300), batch(300)] {
        let (ra, rb) = (send_ids(a.addr, &ids, 2, ""), send_ids(b.addr, &ids, 2, ""));
        assert!(ra.iter().chain(&rb).all(|r| r.1 == 200));
    }
    // Around the boundary: a sees the next window already, b still this one.
    let boundary = (window + SECS) * 1000;
    thread::sleep(Duration::from_millis(
        (boundary - 150 - now_ms()).max(0) as u64
    ));
    for _ in 0..3 {
        let ids = batch(100);
        let (ra, rb) = (send_ids(a.addr, &ids, 2, ""), send_ids(b.addr, &ids, 2, ""));
        assert!(ra.iter().chain(&rb).all(|r| r.1 == 200));
    }
    for start in [window, window + SECS] {
        let (la, lb) = (
            a.wait_window(start, Duration::from_secs(15)),
            b.wait_window(start, Duration::from_secs(15)),
        );
        assert_eq!(la.get("scope"), "fleet", "{}", la.raw);
        assert_eq!(
            la.count(),
            lb.count(),
            "window {start}: {} vs {}",
            la.raw,
            lb.raw
        );
    }
    let total: u64 = [window, window + SECS]
        .iter()
        .map(|&s| a.wait_window(s, Duration::from_secs(1)).count())
        .sum();
    assert!(total >= next_id as u64, "ids lost: {total} < {next_id}");
}

/// `rediss://` with a private CA (`--redis-ca-file`): the fleet counts over TLS, and a
/// server whose certificate is not trusted stops start-up.
#[test]
fn fleet_over_tls_with_a_private_ca() {
    let _serial = serial();
    let Some(redis) = Redis::start_tls() else {
        return;
    };
    let url = redis.url();
    let ca = redis.ca.clone().unwrap().display().to_string();
    let a = Verve::start(&fleet_args(&url, &["--redis-ca-file", &ca]));
    let b = Verve::start(&fleet_args(&url, &["--redis-ca-file", &ca]));
    let window = sleep_into_next_window(SECS, 100);
    let to_a = send_ids(a.addr, &(0..600).collect::<Vec<_>>(), 2, "");
    let to_b = send_ids(b.addr, &(300..900).collect::<Vec<_>>(), 2, "");
    assert!(to_a.iter().chain(&to_b).all(|r| r.1 == 200));
    assert!(
        now_ms() < (window + SECS) * 1000,
        "the load spilled past its window"
    );
    assert_fleet_count(&a, window, 900);
    assert_fleet_count(&b, window, 900);

    // Without the CA the certificate is not trusted: start-up fails naming the flag.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_verve"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-file",
            "/dev/null",
            "--redis-url",
            &url,
        ])
        .output()
        .expect("run verve");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--redis-url"));
}

/// A master that refuses writes (`min-replicas-to-write 1` with its replica gone: every write
/// answers `NOREPLICAS`, as a minority master does in a split brain) gets no `ok` out of
/// verve: 503, and nothing of those ids lands in Redis. Once the replica is back, `ok`
/// again, and the fleet counts every id answered ok.
#[test]
fn a_master_refusing_writes_gets_503_not_ok() {
    let _serial = serial();
    let Some(master) = Redis::start_with(&[
        "--min-replicas-to-write",
        "1",
        "--min-replicas-max-lag",
        "10",
    ]) else {
        return;
    };
    let of = master.port.to_string();
    let mut replica = Redis::start_with(&["--replicaof", "127.0.0.1", &of]).unwrap();
    let writes = |master: &Redis| master.cli(&["SET", "probe", "1"]).trim() == "OK";
    let synced = wait_for(Duration::from_secs(10), || writes(&master).then_some(()));
    assert!(synced.is_some(), "the master never took a write");
    let url = master.url();
    let verve = Verve::start(&fleet_args(&url, &[]));

    let window = sleep_into_next_window(SECS, 100);
    let before: Vec<i64> = (0..50).collect();
    assert!(
        send_ids(verve.addr, &before, 2, "")
            .iter()
            .all(|(_, s)| *s == 200)
    );
    replica.kill();
    let refusing = wait_for(Duration::from_secs(10), || {
        master
            .cli(&["SET", "probe", "1"])
            .contains("NOREPLICAS")
            .then_some(())
    });
    assert!(refusing.is_some(), "the master kept taking writes");
    let refused: Vec<i64> = (1000..1050).collect();
    let answers = send_ids(verve.addr, &refused, 2, "");
    assert!(
        answers.iter().all(|(_, s)| *s == 503),
        "a refused write was answered: {:?}",
        answers
            .iter()
            .filter(|(_, s)| *s != 503)
            .collect::<Vec<_>>()
    );
    let key = format!("verve:{{{window}:0}}:ids");
    let held: HashSet<i64> = master
        .cli(&["SMEMBERS", &key])
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(before.iter().all(|id| held.contains(id)));
    assert!(refused.iter().all(|id| !held.contains(id)), "{held:?}");

    replica.launch();
    let back = wait_for(Duration::from_secs(15), || {
        (writes(&master) && verve.get("/readyz").status == 200).then_some(())
    });
    assert!(
        back.is_some(),
        "verve did not serve again once writes were taken"
    );
    let window = sleep_into_next_window(SECS, 100);
    let after: Vec<i64> = (2000..2100).collect();
    assert!(
        send_ids(verve.addr, &after, 2, "")
            .iter()
            .all(|(_, s)| *s == 200)
    );
    assert_fleet_count(&verve, window, 100);
}

/// SIGTERM while Redis is frozen (SIGSTOP: its connections up, no answers), with reports
/// slower than a window (the grace plus the fleet read's timeout): the process exits within
/// its bound, with the partial line, instead of reporting window after window until Redis
/// answers again (the review of issue 17 saw 635 s). The stop timeouts of deploy/ rely on it.
#[test]
fn sigterm_while_redis_is_frozen_exits_within_its_bound() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let mut verve = Verve::on_redis(
        &redis,
        &[
            "--window-secs",
            "4",
            "--grace-ms",
            "2850",
            "--redis-timeout-ms",
            "2500",
            "--shutdown-timeout-ms",
            "1000",
        ],
    );
    assert_eq!(verve.get("/api/verve/accept?id=1").status, 200);
    let open = sleep_into_next_window(4, 200);
    redis.signal("STOP");
    let stopped = Instant::now();
    verve.signal("TERM");
    let exited = verve.wait_up_to(Duration::from_secs(30));
    redis.signal("CONT");
    let status = exited.expect("verve still running 30 s after SIGTERM with Redis frozen");
    let took = stopped.elapsed();
    assert!(status.success(), "{status:?}");
    let last = verve.windows().pop().expect("a window line");
    assert_eq!(last.get("window_start"), rfc3339(open), "{}", last.raw);
    assert_eq!(last.get("reason"), "shutdown", "{}", last.raw);
    eprintln!(
        "SIGTERM with Redis frozen: exited 0 in {:.1} s",
        took.as_secs_f64()
    );
}

/// SIGHUP (logrotate's postrotate, `systemctl reload`) while start-up waits for Redis: the
/// process keeps starting and serves once Redis answers, instead of dying of SIGHUP's default
/// action, which systemd's `Restart=on-failure` does not restart (the review of issue 17).
#[test]
fn sighup_during_start_up_does_not_kill_the_process() {
    let Some(redis) = Redis::start() else {
        return;
    };
    redis.signal("STOP");
    let dir = common::TempDir::new("sighup");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_verve"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            &redis.url(),
            "--log-file",
        ])
        .arg(dir.0.join("requests.log"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn verve");
    thread::sleep(Duration::from_millis(500));
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    thread::sleep(Duration::from_millis(300));
    redis.signal("CONT");
    let mut line = String::new();
    let _ = std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut line,
    );
    let alive = child.try_wait().expect("try_wait").is_none();
    let _ = child.kill();
    let status = child.wait().expect("wait");
    assert!(
        alive && line.contains("listening on"),
        "verve did not survive SIGHUP during start-up: {status:?}, first line {line:?}"
    );
}

/// Two windows whose fleet counts are late (Redis frozen across both reports, then back
/// empty) are logged in window order when their counts are fixed together: the earlier one,
/// with many ids to re-add, first — not the later one, whose single id re-adds at once (the
/// review of issue 19 saw them swapped). Each late window has its partial line, then its one
/// fleet line with every id answered `ok`.
#[test]
fn late_fleet_counts_are_logged_in_window_order() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let verve = Verve::start(&fleet_args(&redis.url(), &[]));
    let first = sleep_into_next_window(SECS, 100);
    let ids: Vec<i64> = (1..=8000).collect();
    let answered = send_ids(verve.addr, &ids, 8, "");
    assert!(answered.iter().all(|&(_, status)| status == 200));
    let second = first + SECS;
    assert!(
        now_ms() < second * 1000,
        "the first window's ids took past its end; nothing to check"
    );
    thread::sleep(Duration::from_millis(
        (second * 1000 + 100 - now_ms()) as u64,
    ));
    assert_eq!(verve.get("/api/verve/accept?id=-1").status, 200);
    assert!(now_ms() < second * 1000 + 300);
    redis.signal("STOP");
    let partial = |start: i64| {
        let want = rfc3339(start);
        move |l: &common::Line| l.get("window_start") == want && l.partial()
    };
    let second_late = wait_for(Duration::from_secs(12), || {
        verve.windows().into_iter().find(partial(second))
    });
    assert!(
        second_late.is_some(),
        "no partial line:\n{}",
        verve.log_text()
    );
    redis.kill();
    redis.restart();
    assert_fleet_count(&verve, first, 8000);
    assert_fleet_count(&verve, second, 1);
    let lines = verve.windows();
    // Every late window (a partial line first), in the order of their fleet lines.
    let late: HashSet<&str> = lines
        .iter()
        .filter(|l| l.partial())
        .map(|l| l.get("window_start"))
        .collect();
    let fleet_order: Vec<&str> = lines
        .iter()
        .filter(|l| l.get("scope") == "fleet" && late.contains(l.get("window_start")))
        .map(|l| l.get("window_start"))
        .collect();
    let mut in_order = fleet_order.clone();
    in_order.sort_unstable(); // RFC 3339 UTC sorts as time does
    assert!(
        fleet_order == in_order && fleet_order.len() >= 2,
        "late fleet lines out of window order:\n{}",
        verve.log_text()
    );
    for start in [first, second] {
        let kinds: Vec<bool> = lines
            .iter()
            .filter(|l| l.get("window_start") == rfc3339(start))
            .map(common::Line::partial)
            .collect();
        assert_eq!(kinds, [true, false], "{}", verve.log_text());
    }
}
