//! Approx mode (`--count approx`, SPEC §3a) against a real redis-server: verve's sketches are
//! Redis's own HyperLogLogs, bit for bit, and a fleet of them behind nginx agrees on one
//! count within the error bound.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use common::{
    Nginx, Receiver, Redis, Verve, encode, now_ms, send_ids, serial, sleep_into_next_window,
    wait_for,
};
use verve::sketch::{self, HashKey, Sketch};

/// A minimal RESP client: redis-cli cannot pass arbitrary bytes as arguments.
struct Resp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

#[derive(Debug, PartialEq)]
enum Value {
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Simple(String),
}

impl Resp {
    fn connect(redis: &Redis) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", redis.port)).expect("connect to redis");
        Self {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn call(&mut self, args: &[&[u8]]) -> Value {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&out).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let (kind, rest) = line.trim_end().split_at(1);
        match kind {
            ":" => Value::Int(rest.parse().unwrap()),
            "+" => Value::Simple(rest.to_string()),
            "$" => {
                let len: i64 = rest.parse().unwrap();
                if len < 0 {
                    return Value::Bulk(None);
                }
                let mut body = vec![0u8; len as usize + 2];
                self.reader.read_exact(&mut body).unwrap();
                body.truncate(len as usize);
                Value::Bulk(Some(body))
            }
            _ => panic!("redis answered {line}"),
        }
    }

    fn int(&mut self, args: &[&[u8]]) -> i64 {
        match self.call(args) {
            Value::Int(n) => n,
            other => panic!("{other:?}"),
        }
    }
}

/// The same keyed bytes through Redis's `PFADD` and through verve's sketch: identical
/// registers, and `PFCOUNT` of verve's dense bytes (its cache marked invalid, so Redis
/// computes it) equals both `PFCOUNT` of Redis's own HLL and verve's estimate — for several
/// cardinalities, from the sparse range to well past the dense switch.
#[test]
fn sketches_are_redis_hyperloglogs_bit_for_bit() {
    let Some(redis) = Redis::start() else { return };
    let mut resp = Resp::connect(&redis);
    let key = HashKey::random();
    for (round, n) in [1i64, 100, 3_000, 40_000, 250_000].into_iter().enumerate() {
        let theirs = format!("theirs:{round}");
        let sketch = Sketch::new();
        let base = round as i64 * 10_000_000;
        let elements: Vec<[u8; 8]> = (base..base + n).map(|id| key.keyed(id)).collect();
        for batch in elements.chunks(1000) {
            let mut args: Vec<&[u8]> = vec![b"PFADD", theirs.as_bytes()];
            args.extend(batch.iter().map(|e| &e[..]));
            resp.int(&args);
            for e in batch {
                sketch.add(e);
            }
        }
        let redis_count = resp.int(&[b"PFCOUNT", theirs.as_bytes()]);
        let ours = format!("ours:{round}");
        let dense = sketch.dense();
        assert_eq!(
            resp.call(&[b"SET", ours.as_bytes(), &dense]),
            Value::Simple("OK".into())
        );
        assert_eq!(
            resp.int(&[b"PFCOUNT", ours.as_bytes()]),
            redis_count,
            "n = {n}"
        );
        assert_eq!(sketch.estimate() as i64, redis_count, "n = {n}");
        // Redis's registers: its HLL merged into an empty dense one comes back dense.
        let copy = format!("copy:{round}");
        assert_eq!(
            resp.call(&[b"SET", copy.as_bytes(), &Sketch::new().dense()]),
            Value::Simple("OK".into())
        );
        resp.call(&[b"PFMERGE", copy.as_bytes(), theirs.as_bytes()]);
        let Value::Bulk(Some(bytes)) = resp.call(&[b"GET", copy.as_bytes()]) else {
            panic!("no copy");
        };
        assert_eq!(
            sketch::registers_of_dense(&bytes).expect("dense"),
            sketch.registers(),
            "n = {n}: every register as Redis has it"
        );
        // And Redis merges ours with theirs into the same count (the fleet's path).
        let both = format!("both:{round}");
        resp.call(&[
            b"PFMERGE",
            both.as_bytes(),
            ours.as_bytes(),
            theirs.as_bytes(),
        ]);
        assert_eq!(resp.int(&[b"PFCOUNT", both.as_bytes()]), redis_count);
        let error = (redis_count - n).abs() as f64 / n as f64;
        assert!(error < 0.025, "n = {n}: estimate {redis_count}");
    }
}

/// One window's line and POST body on a single node say the count is approximate; `007` and
/// `7` are one id; the count is within the bound.
#[test]
fn single_node_approx_counts_and_says_so() {
    let receiver = Receiver::start();
    let verve = Verve::start(&[
        "--count",
        "approx",
        "--window-secs",
        "3",
        "--grace-ms",
        "300",
        "--callback-allow",
        "127.0.0.0/8",
    ]);
    let window = sleep_into_next_window(3, 100);
    let ids: Vec<i64> = (1..=2000).chain(1..=500).collect();
    let replies = send_ids(verve.addr, &ids, 4, "");
    assert!(replies.iter().all(|(_, s)| *s == 200));
    for target in ["/api/verve/accept?id=007", "/api/verve/accept?id=7"] {
        assert_eq!(verve.get(target).status, 200);
    }
    let hook = receiver.url("/hook");
    let reply = verve.get(&format!(
        "/api/verve/accept?id=9&endpoint={}",
        encode(&hook)
    ));
    assert_eq!(reply.status, 200);
    assert!(now_ms() < (window + 3) * 1000, "the load spilled");
    let line = verve.wait_window(window, Duration::from_secs(10));
    assert_eq!(line.get("count"), "approx", "{}", line.raw);
    assert_eq!(line.get("scope"), "local");
    let count = line.count() as f64;
    assert!((count - 2000.0).abs() / 2000.0 < 0.025, "{}", line.raw);
    let posted = wait_for(Duration::from_secs(10), || {
        receiver.to("/hook").into_iter().next()
    })
    .expect("the window's POST");
    assert!(
        posted.body.ends_with(&format!(
            r#""unique_requests":{},"scope":"local","count":"approx"}}"#,
            line.count()
        )),
        "{}",
        posted.body
    );
    let metrics = verve.get("/metrics");
    assert!(
        metrics.body.contains("verve_count_mode{mode=\"approx\"} 1"),
        "{}",
        metrics.body
    );
    let status = verve.get("/api/verve/stats");
    assert!(
        status.body.contains(r#""count_mode":"approx""#),
        "{}",
        status.body
    );
}

/// Exact mode's lines and bodies are byte-for-byte as they were: no `count=` word.
#[test]
fn exact_mode_lines_carry_no_count_word() {
    let verve = Verve::start(&["--window-secs", "1", "--grace-ms", "200"]);
    let window = sleep_into_next_window(1, 50);
    assert_eq!(verve.get("/api/verve/accept?id=1").status, 200);
    let line = verve.wait_window(window, Duration::from_secs(5));
    assert!(!line.raw.contains("count="), "{}", line.raw);
    let metrics = verve.get("/metrics");
    assert!(metrics.body.contains("verve_count_mode{mode=\"exact\"} 1"));
}

fn fleet_args<'a>(url: &'a str, window: &'a str) -> Vec<&'a str> {
    vec![
        "--redis-url",
        url,
        "--count",
        "approx",
        "--window-secs",
        window,
        "--grace-ms",
        "1000",
        "--callback-allow",
        "127.0.0.0/8",
    ]
}

/// Two approx instances behind nginx, a known set of distinct ids (each sent twice, spread
/// by nginx): both log one fleet count, equal, within ±2.5 % of the truth, equal to Redis's
/// `PFCOUNT` of the window's HLL; each endpoint gets one POST carrying it; and no request
/// made a Redis round trip for an id.
#[test]
fn fleet_behind_nginx_agrees_within_the_bound() {
    let _serial = serial();
    let Some(redis) = Redis::start() else { return };
    let receiver = Receiver::start();
    let url = redis.url();
    let fleet: Vec<Verve> = (0..2)
        .map(|_| Verve::start(&fleet_args(&url, "4")))
        .collect();
    let upstreams: Vec<_> = fleet.iter().map(|v| v.addr).collect();
    let Some(nginx) = Nginx::start(&upstreams) else {
        return;
    };
    let ids: Vec<i64> = (0..15_000i64)
        .map(|i| i * 7_919 + 11)
        .chain(0..5_000i64)
        .collect();
    let distinct = ids.iter().collect::<HashSet<_>>().len() as f64;
    let hook = receiver.url("/fleet");
    let window = sleep_into_next_window(4, 100);
    redis.cli(&["config", "resetstat"]);
    // nginx closes a keep-alive connection after 1000 requests: fewer per connection.
    let replies = send_ids(nginx.addr, &ids, 24, "");
    let refused: Vec<_> = replies.iter().filter(|(_, s)| *s != 200).collect();
    assert!(
        refused.is_empty(),
        "not all answered ok: {} such as {:?}",
        refused.len(),
        refused.first()
    );
    for verve in &fleet {
        let reply = verve.get(&format!(
            "/api/verve/accept?id=1&endpoint={}",
            encode(&hook)
        ));
        assert_eq!(reply.status, 200);
    }
    assert!(
        now_ms() < (window + 4) * 1000,
        "the load spilled past its window"
    );
    let commands = redis_commands(&redis);
    let lines: Vec<_> = fleet
        .iter()
        .map(|v| v.wait_fleet_window(window, Duration::from_secs(12)))
        .collect();
    for line in &lines {
        assert_eq!(line.get("count"), "approx", "{}", line.raw);
        assert_eq!(line.count(), lines[0].count(), "one fleet count");
    }
    let count = lines[0].count();
    let error = (count as f64 - distinct).abs() / distinct;
    assert!(error < 0.025, "count {count} of {distinct}");
    let hll = redis.cli(&["pfcount", &format!("verve:{{{window}}}:hll")]);
    assert_eq!(hll.trim(), count.to_string(), "the count is PFCOUNT's");
    for verve in &fleet {
        assert!(verve.metric("verve_requests_total{status=\"200\"}") > 1000);
        assert!(verve.metric("verve_sketch_merges_total") >= 1);
    }
    let posted = wait_for(Duration::from_secs(10), || {
        (!receiver.to("/fleet").is_empty()).then_some(())
    });
    assert!(posted.is_some(), "no POST");
    thread::sleep(Duration::from_secs(2));
    let posts = receiver.to("/fleet");
    assert_eq!(posts.len(), 1, "one POST per endpoint from the fleet");
    assert!(
        posts[0].body.contains(&format!(
            r#""unique_requests":{count},"scope":"fleet","count":"approx""#
        )),
        "{}",
        posts[0].body
    );
    assert!(
        commands < ids.len() as u64 / 20,
        "{commands} Redis commands for {} requests",
        ids.len()
    );
}

/// Commands Redis ran since the last `CONFIG RESETSTAT`.
fn redis_commands(redis: &Redis) -> u64 {
    redis
        .cli(&["info", "stats"])
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(u64::MAX)
}

/// Redis restarted empty in the middle of a window: every live instance merges its sketch
/// again, so the fleet count still holds the ids answered before the restart and after it.
#[test]
fn an_empty_redis_restart_loses_no_answered_id() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let args = fleet_args(&url, "8");
    let a = Verve::start(&args);
    let b = Verve::start(&args);
    let window = sleep_into_next_window(8, 100);
    let before: Vec<i64> = (0..1500).collect();
    assert!(
        send_ids(a.addr, &before, 2, "")
            .iter()
            .all(|(_, s)| *s == 200)
    );
    assert!(
        send_ids(b.addr, &before[..700], 2, "")
            .iter()
            .all(|(_, s)| *s == 200)
    );
    thread::sleep(Duration::from_millis(1500)); // merged once
    redis.restart();
    // Back: each instance answers again within a few seconds; then more ids.
    let back = wait_for(Duration::from_secs(5), || {
        (a.get("/readyz").status == 200 && b.get("/readyz").status == 200).then_some(())
    });
    assert!(back.is_some(), "the fleet did not come back");
    let after: Vec<i64> = (1500..3000).collect();
    let mut ok = 0;
    for (_, status) in send_ids(b.addr, &after, 2, "") {
        ok += u64::from(status == 200);
    }
    assert_eq!(ok, 1500, "answered after the restart");
    assert!(now_ms() < (window + 8) * 1000, "spilled past the window");
    let la = a.wait_fleet_window(window, Duration::from_secs(15));
    let lb = b.wait_fleet_window(window, Duration::from_secs(15));
    assert_eq!(la.count(), lb.count(), "{} / {}", la.raw, lb.raw);
    let error = (la.count() as f64 - 3000.0).abs() / 3000.0;
    assert!(error < 0.025, "{}", la.raw);
}

/// With Redis gone, an instance keeps answering `ok` while its last merge is recent, then
/// 503 (its loss on death stays bounded); back to `ok` once Redis answers again.
#[test]
fn redis_down_answers_ok_briefly_then_503() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let verve = Verve::start(&fleet_args(&url, "30"));
    assert_eq!(verve.get("/api/verve/accept?id=1").status, 200);
    thread::sleep(Duration::from_millis(1200));
    redis.kill();
    assert_eq!(
        verve.get("/api/verve/accept?id=2").status,
        200,
        "a recent merge: still ok"
    );
    let killed = std::time::Instant::now();
    let refused = wait_for(Duration::from_secs(8), || {
        (verve.get("/api/verve/accept?id=3").status == 503).then_some(())
    });
    assert!(refused.is_some(), "still ok long after the last merge");
    assert!(
        killed.elapsed() < Duration::from_secs(6),
        "{:?}",
        killed.elapsed()
    );
    // Fenced first (its heartbeat lapses), and its sketches are marked stale too.
    let stale = wait_for(Duration::from_secs(5), || {
        (verve.metric("verve_sketches_stale") == 1).then_some(())
    });
    assert!(stale.is_some(), "sketches never marked stale");
    redis.launch();
    let back = wait_for(Duration::from_secs(8), || {
        (verve.get("/api/verve/accept?id=4").status == 200).then_some(())
    });
    assert!(back.is_some(), "not back after Redis returned");
}

/// An exact instance cannot join an approx fleet (one would count sets, the other a
/// sketch): it stays unready and says why.
#[test]
fn an_exact_instance_refuses_an_approx_fleet() {
    let _serial = serial();
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let approx = Verve::start(&fleet_args(&url, "4"));
    assert_eq!(approx.get("/readyz").status, 200);
    let exact = Verve::start(&[
        "--redis-url",
        &url,
        "--window-secs",
        "4",
        "--grace-ms",
        "1000",
        "--callback-allow",
        "127.0.0.0/8",
    ]);
    assert_eq!(exact.get("/readyz").status, 503);
    assert_eq!(exact.get("/api/verve/accept?id=1").status, 503);
    // The key is the fleet's, kept in Redis: a second approx instance shares it.
    let stored = redis.cli(&["get", "verve:hash-key"]);
    assert_eq!(stored.trim().len(), 32, "{stored}");
    let second = Verve::start(&fleet_args(&url, "4"));
    assert_eq!(second.get("/readyz").status, 200);
}

/// Found by review: a SIGTERM lost the ids its instance answered `ok` in its last second
/// (the window cut short was never merged). Now the leaving instance hands that window's
/// sketch over: the fleet's count holds both instances' ids.
#[test]
fn sigterm_hands_the_last_updates_over_to_the_fleet() {
    let _serial = serial();
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let a = Verve::start(&fleet_args(&url, "8"));
    let mut b = Verve::start(&fleet_args(&url, "8"));
    let window = sleep_into_next_window(8, 100);
    let to_a: Vec<i64> = (0..1000).collect();
    let to_b: Vec<i64> = (1000..1600).collect();
    assert!(
        send_ids(a.addr, &to_a, 2, "")
            .iter()
            .all(|(_, s)| *s == 200)
    );
    assert!(
        send_ids(b.addr, &to_b, 2, "")
            .iter()
            .all(|(_, s)| *s == 200)
    );
    b.signal("TERM");
    assert!(b.wait(Duration::from_secs(10)).success());
    assert!(now_ms() < (window + 8) * 1000, "spilled past the window");
    let line = a.wait_fleet_window(window, Duration::from_secs(20));
    let error = (line.count() as f64 - 1600.0).abs() / 1600.0;
    assert!(error < 0.025, "{}", line.raw);
}

/// Found by review: with the hash key deleted from Redis, a newcomer took a key of its own
/// and turned the members away, window after window. Now the members put the fleet's key
/// back and stay ready, and the newcomer waits for it and takes it.
#[test]
fn a_deleted_hash_key_is_put_back_and_a_newcomer_takes_it() {
    let _serial = serial();
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let a = Verve::start(&fleet_args(&url, "4"));
    let b = Verve::start(&fleet_args(&url, "4"));
    let key = redis.cli(&["get", "verve:hash-key"]).trim().to_string();
    assert_eq!(key.len(), 32);
    redis.cli(&["del", "verve:hash-key"]);
    let c = Verve::start(&fleet_args(&url, "4"));
    let ready = wait_for(Duration::from_secs(20), || {
        (c.get("/readyz").status == 200).then_some(())
    });
    assert!(ready.is_some(), "the newcomer never took the fleet's key");
    assert_eq!(redis.cli(&["get", "verve:hash-key"]).trim(), key);
    for _ in 0..20 {
        for verve in [&a, &b, &c] {
            assert_eq!(verve.get("/readyz").status, 200, "a member was turned away");
        }
        thread::sleep(Duration::from_millis(250));
    }
}

/// Found by review: Redis restarted empty while the members were stalled (under the
/// heartbeat's TTL, so alive), and a newcomer started 2 s into the new Redis stored a key of
/// its own and merged sketches under it: the same ids counted twice. Now a newcomer that
/// stores a key in a young Redis looks again after the trust period, by which the members
/// put the fleet's back: one count of the ids.
#[test]
fn a_newcomer_after_an_empty_restart_under_stalled_members_counts_nothing_twice() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let a = Verve::start(&fleet_args(&url, "16"));
    let b = Verve::start(&fleet_args(&url, "16"));
    let window = sleep_into_next_window(16, 100);
    let ids: Vec<i64> = (0..2000).collect();
    assert!(send_ids(a.addr, &ids, 2, "").iter().all(|(_, s)| *s == 200));
    thread::sleep(Duration::from_millis(1200)); // merged
    a.signal("STOP");
    b.signal("STOP");
    redis.restart();
    thread::sleep(Duration::from_millis(2050));
    let (pa, pb) = (a.pid(), b.pid());
    let wake = thread::spawn(move || {
        thread::sleep(Duration::from_millis(350));
        for pid in [pa, pb] {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    });
    let n = Verve::start(&fleet_args(&url, "16"));
    wake.join().unwrap();
    let ready = wait_for(Duration::from_secs(10), || {
        (n.get("/readyz").status == 200).then_some(())
    });
    assert!(ready.is_some(), "the newcomer never joined");
    let replies = send_ids(n.addr, &ids, 2, "");
    assert!(replies.iter().all(|(_, s)| *s == 200));
    assert!(now_ms() < (window + 16) * 1000, "spilled past the window");
    let line = a.wait_fleet_window(window, Duration::from_secs(30));
    let error = (line.count() as f64 - 2000.0).abs() / 2000.0;
    assert!(error < 0.025, "counted twice? {}", line.raw);
    assert_eq!(
        n.wait_fleet_window(window, Duration::from_secs(10)).count(),
        line.count()
    );
}

/// Every instance logs one fleet count for the window, the same, within ±2.5 % of `truth`.
fn one_count_near(fleet: &[&Verve], window: i64, truth: f64) {
    let counts: Vec<u64> = fleet
        .iter()
        .map(|v| v.wait_fleet_window(window, Duration::from_secs(30)).count())
        .collect();
    assert!(counts.iter().all(|&c| c == counts[0]), "{counts:?}");
    let error = (counts[0] as f64 - truth).abs() / truth;
    assert!(error < 0.025, "{counts:?} for {truth} (counted twice?)");
}

/// What `--hash-key` gives every instance of a fleet.
const SHARED_KEY: &str = "a secret the whole fleet is given";

fn keyed_args<'a>(url: &'a str, window: &'a str) -> Vec<&'a str> {
    let mut args = fleet_args(url, window);
    args.extend(["--hash-key", SHARED_KEY]);
    args
}

/// Found by the second review, without `--hash-key`: members stalled 3.5 s through an empty
/// restart came back after a newcomer had served under a key of its own (counted twice, the
/// newcomer unready for good). With the key configured every instance hashes alike,
/// whatever Redis lost: one count, and every instance logs it.
#[test]
fn with_a_configured_key_stalled_members_and_a_newcomer_count_once() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let url = redis.url();
    let a = Verve::start(&keyed_args(&url, "16"));
    let b = Verve::start(&keyed_args(&url, "16"));
    let window = sleep_into_next_window(16, 100);
    let ids: Vec<i64> = (0..2000).collect();
    assert!(send_ids(a.addr, &ids, 2, "").iter().all(|(_, s)| *s == 200));
    thread::sleep(Duration::from_millis(1200));
    a.signal("STOP");
    b.signal("STOP");
    redis.restart();
    let (pa, pb) = (a.pid(), b.pid());
    let wake = thread::spawn(move || {
        thread::sleep(Duration::from_millis(3500));
        for pid in [pa, pb] {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    });
    thread::sleep(Duration::from_millis(2200));
    let n = Verve::start(&keyed_args(&url, "16"));
    assert!(send_ids(n.addr, &ids, 2, "").iter().all(|(_, s)| *s == 200));
    wake.join().unwrap();
    // Woken, a member notices its lapsed heartbeat (and stale merge) only at its next tick,
    // so /readyz may answer 200 just before it fences itself for a moment: back means ready
    // at two looks a second and a half apart.
    let ready = || a.get("/readyz").status == 200 && b.get("/readyz").status == 200;
    let back = wait_for(Duration::from_secs(10), || {
        (ready() && {
            thread::sleep(Duration::from_millis(1500));
            ready()
        })
        .then_some(())
    });
    assert!(back.is_some(), "the members did not come back");
    assert!(send_ids(b.addr, &ids, 2, "").iter().all(|(_, s)| *s == 200));
    assert!(now_ms() < (window + 16) * 1000, "spilled past the window");
    one_count_near(&[&a, &b, &n], window, 2000.0);
    assert_eq!(n.get("/readyz").status, 200);
}

/// Found by the second review, without `--hash-key`: Redis lost both the announcement and
/// the key without a restart (`FLUSHDB`), a newcomer took both, and the members were turned
/// away for good with their ids. With the key configured the newcomer's announcement is the
/// fleet's: nobody is turned away and the window's count holds every instance's ids.
#[test]
fn with_a_configured_key_a_flushdb_and_a_newcomer_turn_nobody_away() {
    let _serial = serial();
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let a = Verve::start(&keyed_args(&url, "16"));
    let b = Verve::start(&keyed_args(&url, "16"));
    let window = sleep_into_next_window(16, 100);
    let to_a: Vec<i64> = (0..1000).collect();
    let to_b: Vec<i64> = (1000..2000).collect();
    assert!(
        send_ids(a.addr, &to_a, 2, "")
            .iter()
            .all(|(_, s)| *s == 200)
    );
    assert!(
        send_ids(b.addr, &to_b, 2, "")
            .iter()
            .all(|(_, s)| *s == 200)
    );
    thread::sleep(Duration::from_millis(1200));
    redis.cli(&["flushdb"]);
    let n = Verve::start(&keyed_args(&url, "16"));
    let to_n: Vec<i64> = (2000..3000).collect();
    assert!(
        send_ids(n.addr, &to_n, 2, "")
            .iter()
            .all(|(_, s)| *s == 200)
    );
    for _ in 0..12 {
        for verve in [&a, &b, &n] {
            assert_eq!(
                verve.get("/readyz").status,
                200,
                "an instance was turned away"
            );
        }
        thread::sleep(Duration::from_millis(250));
    }
    assert!(now_ms() < (window + 16) * 1000, "spilled past the window");
    one_count_near(&[&a, &b, &n], window, 3000.0);
}
