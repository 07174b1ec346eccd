//! The window barrier (SPEC §6.3) against a real Redis on loopback: heartbeats and the fence
//! of an instance cut off from Redis, the clock offset measured against Redis `TIME`, one
//! leader that waits for every member's drained mark and fixes each window's count once
//! (never before Redis's clock reaches the window's end + grace), and a takeover that
//! delivers that fixed count — through empty Redis restarts at the awkward moments.
//!
//! After a Redis restart membership is trusted only after one heartbeat TTL (3 s), so counts
//! after a restart come a few seconds late: the waits here are generous.

mod common;

use std::thread;
use std::time::Duration;

use common::{
    DelayLink, Line, Received, Receiver, Redis, Verve, encode, line_ms, now_ms, rfc3339,
    sleep_into_next_window, wait_for,
};

/// The window of most tests, in seconds.
const SECS: i64 = 3;

/// How long a window's `scope=fleet` line may take (a restart delays it by a heartbeat TTL).
const FLEET_WAIT: Duration = Duration::from_secs(20);

/// Each test runs several servers around window boundaries: one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Verve in fleet mode on `url` (Redis itself or a [`DelayLink`] to it), its callbacks
/// allowed to loopback, plus `extra`.
fn start(url: &str, extra: &[&str]) -> Verve {
    let mut args = vec!["--redis-url", url, "--callback-allow", "127.0.0.0/8"];
    args.extend_from_slice(extra);
    Verve::start(&args)
}

/// Waits until the instance is ready (its first heartbeat acknowledged).
fn wait_ready(name: &str, verve: &Verve) {
    let ready = wait_for(Duration::from_secs(10), || {
        (verve.get("/readyz").status == 200).then_some(())
    });
    assert!(
        ready.is_some(),
        "{name} never became ready in 10 s (setup); its log:\n{}",
        verve.log_text()
    );
}

fn sleep_until(epoch_ms: i64) {
    thread::sleep(Duration::from_millis((epoch_ms - now_ms()).max(0) as u64));
}

/// One accept on a fresh connection, with an (encoded) endpoint or none; its status.
fn accept(verve: &Verve, id: i64, endpoint: Option<&str>) -> u16 {
    let target = match endpoint {
        Some(e) => format!("/api/verve/accept?id={id}&endpoint={e}"),
        None => format!("/api/verve/accept?id={id}"),
    };
    verve.get(&target).status
}

/// An accept the scenario needs answered `ok`.
fn answer_ok(name: &str, verve: &Verve, id: i64, endpoint: Option<&str>) {
    let status = accept(verve, id, endpoint);
    assert_eq!(
        status, 200,
        "{name} answered id {id} with {status}; the scenario needs it counted (setup)"
    );
}

/// Waits for the instance's `scope=fleet` line of the window starting at `window` (a
/// `scope=local partial=true` line may come first).
fn fleet_line(verve: &Verve, window: i64, timeout: Duration) -> Option<Line> {
    let want = rfc3339(window);
    wait_for(timeout, || {
        verve
            .windows()
            .into_iter()
            .find(|l| l.get("window_start") == want && l.get("scope") == "fleet")
    })
}

/// The instance logs the window's one fixed count: `count`, with `scope=fleet`.
fn assert_fleet_count(name: &str, verve: &Verve, window: i64, count: u64) -> Line {
    let shown = rfc3339(window);
    let line = fleet_line(verve, window, FLEET_WAIT).unwrap_or_else(|| {
        panic!(
            "{name} logged no scope=fleet line for window {shown} within {FLEET_WAIT:?}: every \
             live instance must log the window's one fixed count (I-agree); its log:\n{}",
            verve.log_text()
        )
    });
    assert_eq!(
        line.count(),
        count,
        "{name} logged fleet count {} for window {shown}, but the fleet answered {count} \
         distinct ids ok in it: an ok id was lost or the instances disagree (I-ok, I-agree): {}",
        line.count(),
        line.raw
    );
    line
}

/// The POSTs to `prefix` for the window starting at `window`.
fn posts_for(receiver: &Receiver, prefix: &str, window: i64) -> Vec<Received> {
    let tag = format!("\"window_start\":\"{}\"", rfc3339(window));
    receiver
        .to(prefix)
        .into_iter()
        .filter(|p| p.body.contains(&tag))
        .collect()
}

/// The endpoint gets the window's POST, and every POST for the window (any repeat included,
/// waited for 2 s) carries the one fixed count.
fn assert_posts_carry(receiver: &Receiver, prefix: &str, window: i64, count: u64) {
    let shown = rfc3339(window);
    wait_for(FLEET_WAIT, || {
        (!posts_for(receiver, prefix, window).is_empty()).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the endpoint {prefix}, registered by an ok request of window {shown}, got no POST \
             for it within {FLEET_WAIT:?} (I-endpoint); it got: {:?}",
            receiver.to(prefix)
        )
    });
    thread::sleep(Duration::from_secs(2)); // any repeat
    let want = format!("\"unique_requests\":{count},");
    for post in posts_for(receiver, prefix, window) {
        assert!(
            post.body.contains(&want),
            "a POST to {prefix} for window {shown} carried {}, not the fleet's one count {count} \
             (I-agree)",
            post.body
        );
    }
}

/// A gauge's value from `/metrics` (float; the exact series name).
fn gauge(verve: &Verve, series: &str) -> Option<f64> {
    verve.get("/metrics").body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Redis restarts empty inside W's grace, just after W's end, while B's link to Redis is
/// slow: the leader waits for B's drained mark (B re-adds its ids for the new generation
/// first), so both log the count of all three ids and every POST carries it.
#[test]
fn a_leader_waits_for_a_slow_marker() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let link = DelayLink::start(redis.port, 300);
    let receiver = Receiver::start();
    let extra = [
        "--window-secs",
        "3",
        "--grace-ms",
        "1000",
        "--redis-timeout-ms",
        "500",
    ];
    let a = start(&redis.url(), &extra);
    let b = start(&link.url(), &extra);
    wait_ready("A", &a);
    wait_ready("B", &b);
    let hook = encode(&receiver.url("/hook"));
    let window = sleep_into_next_window(SECS, 300);
    answer_ok("A", &a, 1, Some(&hook));
    for id in [2, 3] {
        answer_ok("B", &b, id, Some(&hook));
    }
    sleep_until((window + SECS) * 1000 + 300);
    redis.restart();
    for (name, verve) in [("A", &a), ("B", &b)] {
        assert_fleet_count(name, verve, window, 3);
    }
    assert_posts_carry(&receiver, "/hook", window, 3);
}

/// Redis restarts empty just after W's end + grace, when A (direct) has marked W drained and
/// the count is being gathered while B's marks and reads take 400 ms to reach Redis (a round
/// trip of 800 ms, within B's Redis timeout: slower than that, B is cut off, and fences
/// itself). Nothing is lost: every instance re-adds its ids for the new generation, the barrier waits for the
/// new generation's marks, and both log (and the POSTs carry) all six ids.
#[test]
fn a_restart_between_marks_and_the_read_loses_nothing() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let link = DelayLink::start(redis.port, 100);
    let receiver = Receiver::start();
    // An 800 ms round trip needs a 1 s Redis timeout; the grace then must be at least
    // skew 250 + timeout 1000 + 100 ms (config.rs).
    let extra = [
        "--window-secs",
        "3",
        "--grace-ms",
        "1500",
        "--redis-timeout-ms",
        "1000",
    ];
    let a = start(&redis.url(), &extra);
    let b = start(&link.url(), &extra);
    wait_ready("A", &a);
    wait_ready("B", &b);
    let hook = encode(&receiver.url("/hook"));
    let window = sleep_into_next_window(SECS, 200);
    for id in 1..=3 {
        answer_ok("A", &a, id, Some(&hook));
    }
    for id in 4..=6 {
        answer_ok("B", &b, id, Some(&hook));
    }
    link.set_delay(400);
    sleep_until((window + SECS) * 1000 + 1500 + 100);
    redis.restart();
    for (name, verve) in [("A", &a), ("B", &b)] {
        assert_fleet_count(name, verve, window, 6);
    }
    assert_posts_carry(&receiver, "/hook", window, 6);
}

/// B's clock is 5 s ahead of Redis's `TIME`: it measures that (`verve_clock_offset_seconds`
/// ≈ −5, Redis minus local) and fences itself — not ready, 503 for accepts — while A keeps
/// serving. B's early clock fixes no window early: W, in which A answered five ids ok, has
/// the fleet count 5 everywhere, and its endpoint gets that count.
#[test]
fn a_clock_that_leapt_ahead_fixes_no_window() {
    let _serial = serial();
    let Some(redis) = Redis::start() else {
        return;
    };
    let receiver = Receiver::start();
    let extra = ["--window-secs", "3", "--grace-ms", "1000"];
    let a = start(&redis.url(), &extra);
    wait_ready("A", &a);
    let mut skewed = extra.to_vec();
    skewed.extend_from_slice(&["--clock-offset-ms", "5000"]);
    let b = start(&redis.url(), &skewed);

    let fenced = wait_for(Duration::from_secs(6), || {
        (b.get("/readyz").status == 503).then_some(())
    });
    assert!(
        fenced.is_some(),
        "B's clock is 5 s ahead of Redis TIME (far beyond half of --max-clock-skew-ms 250), \
         yet its /readyz still answered {} after 6 s: it did not fence itself",
        b.get("/readyz").status
    );
    let status = accept(&b, 999, None);
    assert_eq!(
        status, 503,
        "B, fenced for its clock 5 s ahead, answered an accept {status}: a fenced instance \
         must answer 503 to every accept"
    );
    let offset = gauge(&b, "verve_clock_offset_seconds")
        .unwrap_or_else(|| panic!("B exports no verve_clock_offset_seconds gauge on /metrics"));
    assert!(
        (offset + 5.0).abs() < 0.5,
        "B's verve_clock_offset_seconds is {offset}; its clock is 5 s ahead of Redis's, so \
         the offset (Redis minus local) must be about -5"
    );
    let a_offset = gauge(&a, "verve_clock_offset_seconds")
        .unwrap_or_else(|| panic!("A exports no verve_clock_offset_seconds gauge on /metrics"));
    assert!(
        a_offset.abs() < 0.1,
        "A shares Redis's clock (same host), yet its verve_clock_offset_seconds is {a_offset}"
    );
    assert_eq!(
        a.get("/readyz").status,
        200,
        "A, whose clock agrees with Redis's, stopped being ready because B's clock is off"
    );

    let hook = encode(&receiver.url("/leap"));
    let window = sleep_into_next_window(SECS, 300);
    for id in 1..=5 {
        let status = accept(&a, id, Some(&hook));
        assert_eq!(
            status, 200,
            "A answered id {id} with {status}: a skewed peer must not stop A serving"
        );
    }
    assert_fleet_count("A", &a, window, 5);
    // B (fenced) need not log W; if it does, it is the one fixed count.
    if let Some(line) = fleet_line(&b, window, Duration::from_secs(1)) {
        assert_eq!(
            line.count(),
            5,
            "B, whose clock is 5 s ahead, logged fleet count {} for a window in which A \
             answered 5 ids ok: a count was fixed before Redis TIME reached the window's end + \
             grace: {}",
            line.count(),
            line.raw
        );
    }
    assert_posts_carry(&receiver, "/leap", window, 5);
}

/// Both instances logged W's fixed count and the leader is mid-delivery (the endpoint takes
/// 3 s to answer) when it is SIGKILLed and Redis restarts empty: the survivor re-writes what
/// it knows of W (its ids, its endpoints, the count it logged), takes over, and POSTs the
/// same count under the same Idempotency-Key.
#[test]
fn a_takeover_after_the_count_was_fixed_delivers_that_count() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let receiver = Receiver::start();
    let extra = ["--window-secs", "3", "--grace-ms", "1000"];
    let a = start(&redis.url(), &extra);
    let b = start(&redis.url(), &extra);
    wait_ready("A", &a);
    wait_ready("B", &b);
    let slow = encode(&receiver.url("/slow"));
    let window = sleep_into_next_window(SECS, 300);
    answer_ok("A", &a, 1, Some(&slow));
    for id in [2, 3] {
        answer_ok("B", &b, id, Some(&slow));
    }
    // Well after the previous window's report (at this one's start + grace), before this
    // one's (no count of W can be fixed before its end + grace).
    sleep_until((window + SECS) * 1000 + 500);
    let led = |v: &Verve| v.metric("verve_leader_elections_total");
    let (led_a, led_b) = (led(&a), led(&b));
    assert_fleet_count("A", &a, window, 3);
    assert_fleet_count("B", &b, window, 3);
    let first = wait_for(FLEET_WAIT, || {
        posts_for(&receiver, "/slow", window).first().cloned()
    })
    .expect("the leader sent no POST for the window (setup)");
    let (a_led, b_led) = (led(&a) > led_a, led(&b) > led_b);
    let (name, mut leader, survivor) = match (a_led, b_led) {
        (true, false) => ("A", a, b),
        (false, true) => ("B", b, a),
        _ => panic!(
            "expected exactly one leader for the window: A led {a_led}, B led {b_led} \
             (verve_leader_elections_total)"
        ),
    };
    leader.signal("KILL");
    leader.wait(Duration::from_secs(5));
    redis.restart();
    let again = wait_for(Duration::from_secs(25), || {
        let posts = posts_for(&receiver, "/slow", window);
        (posts.len() >= 2).then(|| posts[1].clone())
    });
    let again = again.unwrap_or_else(|| {
        panic!(
            "the leader ({name}) died mid-delivery and Redis restarted empty; the survivor, \
             which had logged the window's fixed count, delivered no POST for it in 25 s: a \
             new leader must deliver the fixed count (I-endpoint, I-agree); survivor's log:\n{}",
            survivor.log_text()
        )
    });
    assert!(
        again.body.contains("\"unique_requests\":3,"),
        "the survivor's POST after the takeover carried {}, not the fixed count 3 (I-agree)",
        again.body
    );
    assert_eq!(
        again.header("idempotency-key"),
        first.header("idempotency-key"),
        "the takeover's POST must repeat the first one's Idempotency-Key"
    );
}

/// An instance whose link to Redis stalls cannot renew its heartbeat: within 2.5 s it fences
/// itself — `/readyz` 503 and 503 even for an id it already answered ok (it may already count
/// as dead to the fleet) — and serves again once its heartbeat succeeds.
#[test]
fn an_instance_cut_off_from_redis_fences_itself() {
    let _serial = serial();
    let Some(redis) = Redis::start() else {
        return;
    };
    let link = DelayLink::start(redis.port, 0);
    let verve = start(&link.url(), &["--window-secs", "10", "--grace-ms", "1000"]);
    wait_ready("the instance", &verve);
    // The fence must show within the window that holds the known id.
    if now_ms() % 10_000 > 2_000 {
        sleep_into_next_window(10, 100);
    }
    answer_ok("the instance", &verve, 1, None);
    link.set_delay(10_000);
    let fenced = wait_for(Duration::from_secs(5), || {
        (accept(&verve, 1, None) == 503).then_some(())
    });
    assert!(
        fenced.is_some(),
        "id 1, answered ok before, was still answered {} 5 s after the instance's link to \
         Redis stalled: an instance that cannot renew its heartbeat for 2.5 s must fence \
         itself (503 for every accept, known ids included)",
        accept(&verve, 1, None)
    );
    assert_eq!(
        verve.get("/readyz").status,
        503,
        "the fenced instance (answering 503) still says it is ready"
    );
    link.set_delay(0);
    // Bytes already held by the link keep their 10 s delay.
    let back = wait_for(Duration::from_secs(15), || {
        (accept(&verve, 1, None) == 200).then_some(())
    });
    assert!(
        back.is_some(),
        "the instance did not serve again within 15 s of its link to Redis recovering: a \
         fence must lift once a heartbeat succeeds; its log:\n{}",
        verve.log_text()
    );
    assert_eq!(
        verve.get("/readyz").status,
        200,
        "the instance serves again but /readyz is not 200"
    );
}

/// B answers some of W's ids and is stopped (SIGTERM) mid-window: it deletes its heartbeat,
/// so A's barrier does not wait for it to expire — A logs W's count, B's ids included, within
/// 2 s of W's end + grace.
#[test]
fn a_stopped_instance_does_not_stall_the_barrier() {
    let _serial = serial();
    let Some(redis) = Redis::start() else {
        return;
    };
    let extra = ["--window-secs", "3", "--grace-ms", "1000"];
    let a = start(&redis.url(), &extra);
    let mut b = start(&redis.url(), &extra);
    wait_ready("A", &a);
    wait_ready("B", &b);
    let window = sleep_into_next_window(SECS, 300);
    for id in 1..=3 {
        answer_ok("A", &a, id, None);
    }
    for id in 4..=8 {
        answer_ok("B", &b, id, None);
    }
    sleep_until(window * 1000 + 1200);
    b.signal("TERM");
    b.wait(Duration::from_secs(10));
    let line = assert_fleet_count("A", &a, window, 8);
    let due = (window + SECS) * 1000 + 1000 + 2000;
    assert!(
        line_ms(&line) <= due,
        "A logged window {}'s fleet count {} ms after its end + grace: the barrier waited for \
         B, stopped by SIGTERM mid-window, instead of B deleting its heartbeat on shutdown: {}",
        rfc3339(window),
        line_ms(&line) - (due - 2000),
        line.raw
    );
}

/// B starts inside W's grace, after W ended: it cannot have answered for W, so W's barrier
/// does not wait for a mark it will never write. A's fleet line for W comes no later than
/// 2 s after W's end + grace (not after the barrier's 5 s bound), and every instance
/// started later still marks its own windows (the next window has both A's and B's ids).
#[test]
fn an_instance_started_after_a_window_does_not_stall_its_barrier() {
    let _serial = serial();
    let Some(redis) = Redis::start() else {
        return;
    };
    let extra = ["--window-secs", "3", "--grace-ms", "1000"];
    let a = start(&redis.url(), &extra);
    wait_ready("A", &a);
    let window = sleep_into_next_window(SECS, 300);
    for id in 1..=3 {
        answer_ok("A", &a, id, None);
    }
    sleep_until((window + SECS) * 1000 + 100);
    let b = start(&redis.url(), &extra);
    wait_ready("B", &b);
    let line = assert_fleet_count("A", &a, window, 3);
    let due = (window + SECS) * 1000 + 1000 + 2000;
    assert!(
        line_ms(&line) <= due,
        "A logged window {}'s fleet count {} ms after its end + grace: the barrier waited for \
         B, which started after the window ended and never answered for it: {}",
        rfc3339(window),
        line_ms(&line) - (due - 2000),
        line.raw
    );
    let next = window + SECS;
    sleep_until(next * 1000 + 300);
    answer_ok("A", &a, 10, None);
    answer_ok("B", &b, 11, None);
    for (name, verve) in [("A", &a), ("B", &b)] {
        assert_fleet_count(name, verve, next, 2);
    }
}
