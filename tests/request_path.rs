//! Fleet mode's request path against a real Redis stalled with `CLIENT PAUSE` (SPEC §6.2):
//! concurrent requests for one id share one `SADD` and its failure, and an endpoint counts as
//! registered only once Redis holds it (issue 14's scenarios 5 and 4).

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{Conn, Receiver, Redis, Verve, encode, sleep_into_next_window, wait_for};

/// Ten requests for one new id while Redis stalls: one `SADD` for all of them, and its
/// timeout answers all ten at once (each retrying in turn would answer them 250 ms apart,
/// the last ones only once the stall ended).
#[test]
fn concurrent_requests_for_one_id_share_its_failure() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let verve = Verve::start(&[
        "--redis-url",
        &redis.url(),
        "--redis-timeout-ms",
        "250",
        "--window-secs",
        "10",
    ]);
    let mut warm = verve.connect();
    assert_eq!(warm.get("/api/verve/accept?id=1").status, 200);
    let conns: Vec<Conn> = (0..10).map(|_| verve.connect()).collect();
    let paused = redis.cli(&["CLIENT", "PAUSE", "2500", "ALL"]);
    assert!(paused.contains("OK"), "{paused}");
    let start = Instant::now();
    let answers: Vec<(u16, Duration)> = conns
        .into_iter()
        .map(|mut conn| {
            thread::spawn(move || {
                let reply = conn.get("/api/verve/accept?id=500");
                (reply.status, start.elapsed())
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let slowest = answers.iter().map(|a| a.1).max().unwrap();
    let fastest = answers.iter().map(|a| a.1).min().unwrap();
    assert!(
        answers.iter().all(|a| a.0 == 503),
        "answered before Redis could hold the id: {answers:?}"
    );
    assert!(
        slowest < Duration::from_millis(1200) && slowest - fastest < Duration::from_millis(300),
        "the failure was not shared: {answers:?}"
    );
    // Redis back: the id is accepted.
    let back = wait_for(Duration::from_secs(5), || {
        (warm.get("/api/verve/accept?id=500").status == 200).then_some(())
    });
    assert!(back.is_some());
}

/// While one request registers an endpoint fleet-wide and Redis stalls, a second request
/// naming the same id and endpoint must not be answered `ok` from memory: if the first one's
/// registration fails, nothing would POST to the endpoint (I-endpoint).
#[test]
fn an_endpoint_counts_as_registered_only_once_redis_holds_it() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let receiver = Receiver::start();
    let verve = Verve::start(&[
        "--redis-url",
        &redis.url(),
        "--redis-timeout-ms",
        "250",
        "--window-secs",
        "4",
        "--grace-ms",
        "1000",
        "--callback-allow",
        "127.0.0.0/8",
    ]);
    let endpoint = encode(&receiver.url("/hook"));
    let window = sleep_into_next_window(4, 100);
    let mut conn = verve.connect();
    assert_eq!(conn.get("/api/verve/accept?id=1").status, 200);
    let (mut first, mut second) = (verve.connect(), verve.connect());
    let paused = redis.cli(&["CLIENT", "PAUSE", "1200", "ALL"]);
    assert!(paused.contains("OK"), "{paused}");
    let target = format!("/api/verve/accept?id=1&endpoint={endpoint}");
    let leader = {
        let target = target.clone();
        thread::spawn(move || first.get(&target).status)
    };
    thread::sleep(Duration::from_millis(50));
    let sharer = second.get(&target).status;
    let leader = leader.join().unwrap();
    assert_eq!(leader, 503, "the registration was to time out");
    verve.wait_window(window, Duration::from_secs(10));
    thread::sleep(Duration::from_millis(1500));
    let posts = receiver.to("/hook").len();
    assert!(
        sharer != 200 || posts == 1,
        "answered ok with the endpoint, which got {posts} POSTs"
    );
    assert_eq!(sharer, 503, "the sharer shares the failed registration");
}
