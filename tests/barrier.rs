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
    DelayLink, Line, Received, Receiver, Redis, Verve, encode, line_ms, now_ms, rfc3339, serial,
    sleep_into_next_window, wait_for,
};

/// The window of most tests, in seconds.
const SECS: i64 = 3;

/// How long a window's `scope=fleet` line may take (a restart delays it by a heartbeat TTL).
const FLEET_WAIT: Duration = Duration::from_secs(30);

/// Verve in fleet mode on `url` (Redis itself or a [`DelayLink`] to it), its callbacks
/// allowed to loopback, plus `extra`.
fn start(url: &str, extra: &[&str]) -> Verve {
    let mut args = vec!["--redis-url", url, "--callback-allow", "127.0.0.0/8"];
    args.extend_from_slice(extra);
    Verve::start(&args)
}

/// A and B, started on their URLs with `extra`, both ready.
fn start_two(a_url: &str, b_url: &str, extra: &[&str]) -> (Verve, Verve) {
    let (a, b) = (start(a_url, extra), start(b_url, extra));
    wait_ready("A", &a);
    wait_ready("B", &b);
    (a, b)
}

/// Settings for an instance on a slow link: an 800 ms round trip needs a 1 s Redis timeout,
/// and the grace then must be at least skew 250 + timeout 1000 + 100 ms (config.rs).
const SLOW_LINK: [&str; 6] = [
    "--window-secs",
    "3",
    "--grace-ms",
    "1500",
    "--redis-timeout-ms",
    "1000",
];

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

/// Polls faster than `wait_for` (5 ms): the moment an instance logs the fleet count.
fn fleet_line_fast(verve: &Verve, window: i64, timeout: Duration) -> Option<Line> {
    let want = rfc3339(window);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(l) = verve
            .windows()
            .into_iter()
            .find(|l| l.get("window_start") == want && l.get("scope") == "fleet")
        {
            return Some(l);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn fleet_lines(verve: &Verve, window: i64) -> Vec<Line> {
    let want = rfc3339(window);
    verve
        .windows()
        .into_iter()
        .filter(|l| l.get("window_start") == want)
        .collect()
}

fn has_fleet_line(verve: &Verve, window: i64) -> bool {
    let want = rfc3339(window);
    verve
        .windows()
        .into_iter()
        .any(|l| l.get("window_start") == want && l.get("scope") == "fleet")
}

fn window_lines(verve: &Verve, window: i64) -> Vec<String> {
    let want = rfc3339(window);
    verve
        .windows()
        .into_iter()
        .filter(|l| l.get("window_start") == want)
        .map(|l| l.raw)
        .collect()
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
    let (a, b) = start_two(&redis.url(), &link.url(), &extra);
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
    let extra = SLOW_LINK;
    let (a, b) = start_two(&redis.url(), &link.url(), &extra);
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
    let (a, b) = start_two(&redis.url(), &redis.url(), &extra);
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
    let (a, mut b) = start_two(&redis.url(), &redis.url(), &extra);
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

/// Found by review (finding 1; I-agree, I-ok): the fixed count is re-published in a new generation only by
/// instances still in `deliver`'s loop. The leader stops looking at the generation while it
/// is in `post_while_leading` and returns for good after `mark_done`, and every other
/// instance returns once it sees `done`. An instance still in `close` (it has not yet read
/// the count: here B, whose link to Redis holds each command 400 ms — within its 1 s
/// timeout) finds no count after an empty restart that comes right after A fixed it; it
/// re-adds only its own ids, waits out the barrier for A's mark (A, alive, never marks
/// again: its window was dropped), and fixes a second count from its own ids. A logged 6,
/// B logs 3; A's `ok` ids 1..3 are missing from B's count though A never died.
#[test]
fn a_restart_right_after_the_fix_gives_a_peer_still_closing_a_second_count() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let link = DelayLink::start(redis.port, 400);
    let extra = SLOW_LINK;
    let (a, b) = start_two(&redis.url(), &link.url(), &extra);
    let window = sleep_into_next_window(SECS, 200);
    for id in 1..=3 {
        answer_ok("A", &a, id, None);
    }
    for id in 4..=6 {
        answer_ok("B", &b, id, None);
    }
    // A fixes the count once B's mark lands (B's end + grace + 400 ms); B's next read of
    // the count lands 400 ms after that. Restart Redis, empty, in between.
    let a_line = fleet_line_fast(&a, window, Duration::from_secs(10))
        .expect("A logged no fleet count (setup)");
    let b_early = fleet_lines(&b, window)
        .into_iter()
        .any(|l| l.get("scope") == "fleet");
    redis.restart();
    let restarted_at = now_ms();
    assert_eq!(a_line.count(), 6, "A's fleet count (setup): {}", a_line.raw);
    if b_early {
        eprintln!("B read the count before the restart: the race was lost (inconclusive)");
        return;
    }
    let b_line = fleet_line(&b, window, FLEET_WAIT)
        .unwrap_or_else(|| panic!("B logged no fleet count for the window:\n{}", b.log_text()));
    eprintln!(
        "A: {} | B ({} ms after the restart): {}",
        a_line.raw,
        common::line_ms(&b_line) - restarted_at,
        b_line.raw
    );
    assert_eq!(
        b_line.count(),
        a_line.count(),
        "I-agree broken: A logged fleet count {} for window {}, B (alive, never cut off \
         longer than a 1 s reconnect) logged {} after an empty restart right after the fix; \
         A's ok ids 1..3 are missing from B's count (I-ok). B's lines: {:?}",
        a_line.count(),
        rfc3339(window),
        b_line.count(),
        fleet_lines(&b, window)
            .iter()
            .map(|l| &l.raw)
            .collect::<Vec<_>>()
    );
}

/// Finding 1, second face (I-endpoint, I-agree): the same hole after the leader finished
/// delivering. B's link is slowed to 1.6 s just after B sent its drained mark (B is cut off
/// for under 3 s: not dead); A fixes 6, POSTs it to /hook, marks the window done. Redis
/// restarts empty (done and count lost); B's link recovers. B re-adds its ids and its
/// endpoint, fixes 3 after the barrier bound, finds no done mark and POSTs 3 to /hook: the
/// endpoint gets two POSTs with two counts from a leader that did not die.
#[test]
fn a_restart_after_done_gives_an_endpoint_a_second_post_with_another_count() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let link = DelayLink::start(redis.port, 400);
    let receiver = Receiver::start();
    let extra = SLOW_LINK;
    let (a, b) = start_two(&redis.url(), &link.url(), &extra);
    let hook = encode(&receiver.url("/hook"));
    let window = sleep_into_next_window(SECS, 200);
    for id in 1..=3 {
        answer_ok("A", &a, id, Some(&hook));
    }
    for id in 4..=6 {
        answer_ok("B", &b, id, Some(&hook));
    }
    // B sends its mark at its end + grace; the link holds it 400 ms. Slow B's link while
    // the mark is held: its next command (the read of the count) is held 1.6 s.
    sleep_until((window + SECS) * 1000 + 1500 + 150);
    link.set_delay(1600);
    let a_line = fleet_line_fast(&a, window, Duration::from_secs(10))
        .expect("A logged no fleet count (setup)");
    let done_key = format!("verve:{{{window}}}:done");
    let done = wait_for(Duration::from_secs(5), || {
        (redis.cli(&["exists", &done_key]).trim() == "1").then_some(())
    });
    let b_early = fleet_lines(&b, window)
        .into_iter()
        .any(|l| l.get("scope") == "fleet");
    redis.restart();
    link.set_delay(400);
    assert!(done.is_some(), "A never marked the window done (setup)");
    assert_eq!(a_line.count(), 6, "A's fleet count (setup): {}", a_line.raw);
    if b_early {
        eprintln!("B read the count before the restart: the race was lost (inconclusive)");
        return;
    }
    let b_line = fleet_line(&b, window, FLEET_WAIT);
    thread::sleep(Duration::from_secs(4)); // B's delivery, if any
    let posts = posts_for(&receiver, "/hook", window);
    let bodies: Vec<&str> = posts.iter().map(|p| p.body.as_str()).collect();
    eprintln!(
        "A: {} | B: {:?} | POSTs to /hook: {bodies:?}",
        a_line.raw,
        b_line.as_ref().map(|l| &l.raw)
    );
    if let Some(b_line) = &b_line {
        assert_eq!(
            b_line.count(),
            6,
            "I-agree broken: A logged 6, B logged {}: {}",
            b_line.count(),
            b_line.raw
        );
    }
    assert_eq!(
        posts.len(),
        1,
        "I-endpoint broken: /hook got {} POSTs for window {} though no leader died: \
         {bodies:?}",
        posts.len(),
        rfc3339(window)
    );
}

/// Found by review (finding 2; I-endpoint): the barrier's 5 s bound cuts off a live member whose re-add is
/// merely slow. B's link holds each command 200 ms (within its 500 ms timeout); B registered
/// 60 endpoints in W. Redis restarts empty in W's grace (after the cutoff). B re-adds its
/// ids at once but its endpoints one round trip each (`Store::readd` awaits
/// `add_endpoint` in a loop): 12 s. A trusts membership 3 s after the restart, waits 5 s for
/// B's mark, counts without it and reads the endpoint set once: the endpoints B had not
/// re-added yet get no POST, though each was registered by a request answered `ok`.
#[test]
fn a_slow_readd_of_endpoints_outlasts_the_barrier_and_loses_posts() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let link = DelayLink::start(redis.port, 200);
    let receiver = Receiver::start();
    let extra = [
        "--window-secs",
        "3",
        "--grace-ms",
        "1000",
        "--redis-timeout-ms",
        "500",
    ];
    let (a, b) = start_two(&redis.url(), &link.url(), &extra);
    const N: i64 = 60;
    let window = sleep_into_next_window(SECS, 100);
    answer_ok("A", &a, 1, None);
    let threads: Vec<_> = (0..N)
        .map(|n| {
            let hook = encode(&receiver.url(&format!("/e/{n}/x")));
            let addr = b.addr;
            thread::spawn(move || {
                let mut conn = common::Conn::connect(addr);
                let target = format!("/api/verve/accept?id={}&endpoint={hook}", 100 + n);
                conn.get(&target).status
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok: Vec<i64> = (0..N).filter(|&n| statuses[n as usize] == 200).collect();
    assert!(
        ok.len() as i64 == N,
        "B answered {} of {N} endpoint requests ok (setup): {statuses:?}",
        ok.len()
    );
    assert!(
        now_ms() < (window + SECS) * 1000,
        "setup took past the window"
    );
    // After the cutoff (end + 1000 - 250 - 100), inside the grace.
    sleep_until((window + SECS) * 1000 + 750);
    redis.restart();
    let a_line = fleet_line(&a, window, FLEET_WAIT).expect("A logged no fleet count");
    assert_eq!(
        a_line.count(),
        1 + N as u64,
        "count (ids re-added first): {}",
        a_line.raw
    );
    // Every endpoint must get its POST; give B's re-add all the time it needs.
    thread::sleep(Duration::from_secs(12));
    let missing: Vec<i64> = (0..N)
        .filter(|n| posts_for(&receiver, &format!("/e/{n}/"), window).is_empty())
        .collect();
    eprintln!(
        "A: {} | B: {:?} | endpoints without a POST: {} of {N}",
        a_line.raw,
        fleet_line(&b, window, Duration::ZERO).map(|l| l.raw),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "I-endpoint broken: {} of {N} endpoints registered by ok requests of window {} got no \
         POST (B, alive, was still re-adding them when A's barrier gave up on its mark): {:?}",
        missing.len(),
        rfc3339(window),
        missing
    );
}

/// Found by review (finding 3; I-agree, I-ok, Available): after an empty restart the settings announcement
/// goes to whoever claims it first. The fleet's instances claim it again only 200 ms after
/// their reconnection (`announce_settings`), while an instance starting up claims it at
/// once (`check_settings`). A single newcomer Y with a different fingerprint (here only
/// `--grace-ms`) started during the restart takes the announcement; both fleet instances
/// then find "theirs" differ, withdraw their heartbeats, answer 503 and never log W's
/// fleet count — and they stay out for as long as Y renews its announcement.
#[test]
fn a_misconfigured_newcomer_after_an_empty_restart_evicts_the_fleet() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let extra = ["--window-secs", "3", "--grace-ms", "1000"];
    let x1 = start(&redis.url(), &extra);
    let x2 = start(&redis.url(), &extra);
    wait_ready("X1", &x1);
    wait_ready("X2", &x2);
    let window = sleep_into_next_window(SECS, 200);
    for id in 1..=3 {
        answer_ok("X1", &x1, id, None);
    }
    for id in 4..=6 {
        answer_ok("X2", &x2, id, None);
    }
    sleep_until((window + SECS) * 1000 + 700);
    redis.restart();
    let y = start(&redis.url(), &["--window-secs", "3", "--grace-ms", "1100"]);
    let announced = redis.cli(&["get", "verve:settings"]);
    eprintln!("announced after the restart: {}", announced.trim());
    let x1_line = fleet_line(&x1, window, FLEET_WAIT);
    let x2_line = fleet_line(&x2, window, Duration::from_secs(1));
    let ready = (
        x1.get("/readyz").status,
        x2.get("/readyz").status,
        y.get("/readyz").status,
    );
    let fresh = (accept(&x1, 1000, None), accept(&x2, 1001, None));
    eprintln!(
        "X1: {:?} | X2: {:?} | readyz X1,X2,Y: {ready:?} | a new id on X1, X2: {fresh:?}",
        x1_line.as_ref().map(|l| &l.raw),
        x2_line.as_ref().map(|l| &l.raw)
    );
    for (name, line) in [("X1", &x1_line), ("X2", &x2_line)] {
        let line = line.as_ref().unwrap_or_else(|| {
            panic!(
                "I-agree broken: {name}, a live instance of the fleet, logged no scope=fleet \
                 line for window {} (the newcomer with other settings took the fleet's \
                 announcement after the empty restart: {})",
                rfc3339(window),
                announced.trim()
            )
        });
        assert_eq!(line.count(), 6, "{name}: {}", line.raw);
    }
    assert_eq!(
        fresh,
        (200, 200),
        "Available broken: the fleet's instances answer new ids {fresh:?} {FLEET_WAIT:?} \
         after Redis came back, because one instance with other settings started meanwhile"
    );
}

/// Found by review (finding 4; I-endpoint): the fleet-wide bounds keep "the first registered", but after an
/// empty restart mid-window the order is lost: B's endpoints, registered (Redis held them)
/// and answered `ok` before the restart, come back only when B sees the new generation (its
/// next heartbeat, up to 500 ms later, plus the reconnect). A registers new endpoints of
/// the same address prefix in that gap; B's re-add is then refused by the per-prefix bound
/// (`readd` logs "they are not called"), and those endpoints get no POST.
#[test]
fn an_empty_restart_mid_window_lets_later_endpoints_take_the_earlier_ones_places() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let receiver = Receiver::start();
    let extra = [
        "--window-secs",
        "5",
        "--grace-ms",
        "1000",
        "--callback-max-per-domain",
        "80",
    ];
    let (a, b) = start_two(&redis.url(), &redis.url(), &extra);
    const N: i64 = 60;
    let send = |v: &Verve, tag: &'static str, base: i64, until: i64| {
        let addr = v.addr;
        (0..N)
            .map(|n| {
                let hook = encode(&receiver.url(&format!("/{tag}/{n}/x")));
                thread::spawn(move || {
                    loop {
                        let mut conn = common::Conn::connect(addr);
                        let target = format!("/api/verve/accept?id={}&endpoint={hook}", base + n);
                        let status = conn.get(&target).status;
                        if status == 200 || now_ms() >= until {
                            return status;
                        }
                        thread::sleep(Duration::from_millis(20));
                    }
                })
            })
            .collect::<Vec<_>>()
    };
    let window = sleep_into_next_window(5, 100);
    let end = (window + 5) * 1000;
    let b_status: Vec<u16> = send(&b, "b", 1000, end - 1500)
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert!(
        b_status.iter().all(|&s| s == 200),
        "B (setup): {b_status:?}"
    );
    redis.restart();
    let a_status: Vec<u16> = send(&a, "a", 2000, end - 1000)
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let a_ok: Vec<i64> = (0..N).filter(|&n| a_status[n as usize] == 200).collect();
    eprintln!(
        "A answered {} of {N} ok (before {})",
        a_ok.len(),
        now_ms() - end
    );
    assert!(now_ms() < end - 700, "setup took past the cutoff");
    let line = fleet_line(&a, window, FLEET_WAIT).expect("A logged no fleet count");
    thread::sleep(Duration::from_secs(4));
    let missing = |tag: &str, ns: &[i64]| -> Vec<i64> {
        ns.iter()
            .copied()
            .filter(|n| posts_for(&receiver, &format!("/{tag}/{n}/"), window).is_empty())
            .collect()
    };
    let all: Vec<i64> = (0..N).collect();
    let (miss_b, miss_a) = (missing("b", &all), missing("a", &a_ok));
    // A's endpoints beyond the per-prefix bound are refused (their ids still count, `ok`):
    // not registered, so no POST is owed to them.
    let refused = a.metric("verve_endpoints_dropped_domain_total") as usize;
    eprintln!(
        "fleet: {} | B's endpoints without a POST: {} | A's: {}",
        line.raw,
        miss_b.len(),
        miss_a.len()
    );
    assert!(
        miss_b.is_empty() && miss_a.len() <= refused,
        "I-endpoint broken: endpoints registered by ok requests of window {} got no POST: \
         {} of B's (registered first, before the empty restart) and {} of A's ({refused} \
         of A's refused by the bound)",
        rfc3339(window),
        miss_b.len(),
        miss_a.len()
    );
}

/// A TCP relay whose upstream can be switched; `switch` also cuts every relayed connection,
/// as a failover does (the clients reconnect, to the new upstream).
struct Switch {
    port: u16,
    upstream: std::sync::Arc<std::sync::atomic::AtomicU16>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Switch {
    fn start(upstream: u16) -> Self {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(upstream));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", up2.load(Ordering::SeqCst)))
                else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                {
                    let mut all = conns2.lock().unwrap();
                    all.push(client.try_clone().unwrap());
                    all.push(server.try_clone().unwrap());
                }
                let (mut c1, mut s1) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut c2, mut s2) = (client, server);
                thread::spawn(move || {
                    let _ = std::io::copy(&mut c1, &mut s1);
                    let _ = s1.shutdown(std::net::Shutdown::Both);
                });
                thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Self {
            port,
            upstream: up,
            conns,
        }
    }

    fn switch(&self, upstream: u16) {
        self.upstream
            .store(upstream, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// Found by review (finding 5; I-ok): a generation is a `run_id` sampled every 500 ms, so a failover and a
/// failback to the same master process (A → B → A: same `run_id` before and after) within
/// one heartbeat period is no generation change at all. Here Y's link fails over to B (a
/// master that does not have A's data, and whose writes A will never get: both are losses
/// of acknowledged writes by async replication, which the re-add is there to heal) for
/// about 250 ms, in which Y answers ids 4..6 `ok` (acknowledged by B); then it fails back to
/// A. Neither heartbeat saw B, nothing is re-added, and the fleet count is fixed without
/// Y's three ids. (A slower A → B → A is caught by the sequence number, but marks are
/// compared by `run_id` string: a mark written in era A still satisfies a leader in the
/// second era A.)
#[test]
fn a_failover_and_failback_within_a_heartbeat_is_no_generation_change() {
    let _serial = serial();
    let Some(a_redis) = Redis::start() else {
        return;
    };
    let b_redis = Redis::start().unwrap();
    let link = Switch::start(a_redis.port);
    let extra = ["--window-secs", "3", "--grace-ms", "1000"];
    let x = start(&a_redis.url(), &extra);
    let y = start(&link.url(), &extra);
    wait_ready("X", &x);
    wait_ready("Y", &y);
    for attempt in 0..5 {
        b_redis.cli(&["flushall"]);
        let window = sleep_into_next_window(SECS, 300);
        let base = 100 * attempt;
        answer_ok("X", &x, base + 1, None);
        answer_ok("Y", &y, base + 2, None);
        link.switch(b_redis.port);
        let era_end = now_ms() + 250;
        let mut ok = Vec::new();
        for id in [base + 3, base + 4, base + 5] {
            while now_ms() < era_end {
                if accept(&y, id, None) == 200 {
                    ok.push(id);
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        link.switch(a_redis.port);
        let seen_b = b_redis.cli(&["zrange", "verve:members", "0", "-1"]);
        if !seen_b.trim().is_empty() || ok.is_empty() {
            eprintln!(
                "attempt {attempt}: Y's heartbeat reached B ({}) or nothing was ok in B's \
                 era ({ok:?}): inconclusive, again",
                seen_b.trim()
            );
            continue;
        }
        // Everything Y answers from now on is answered ok again (and is in A): ids it knows.
        assert!(
            now_ms() < (window + SECS) * 1000,
            "setup ran past the window"
        );
        let want = 2 + ok.len() as u64;
        let line = fleet_line(&x, window, FLEET_WAIT).expect("X logged no fleet count");
        let y_line = fleet_line(&y, window, Duration::from_secs(2));
        eprintln!(
            "attempt {attempt}: ok in B's era {ok:?}; X: {} | Y: {:?}",
            line.raw,
            y_line.map(|l| l.raw)
        );
        assert_eq!(
            line.count(),
            want,
            "I-ok broken: the fleet answered {want} distinct ids ok in window {} (Y's {ok:?} \
             acknowledged by B during a 250 ms failover, then lost by the failback to A), \
             yet fixed {}: the A -> B -> A change fell between two heartbeats and nobody \
             re-added",
            rfc3339(window),
            line.count()
        );
        return;
    }
    panic!("five attempts inconclusive");
}

/// Probe (trust period vs a slow member): after an empty restart the leader trusts the
/// members 3 s after *it* saw the new generation; a member whose link holds each command
/// 900 ms (within its 1 s timeout) needs a reconnect handshake and a heartbeat through that
/// link before it is a member of the new Redis. If that takes longer than 3 s, it is not in
/// the leader's snapshot, its re-add comes after the count, and its ok ids are lost.
#[test]
fn a_slow_member_reaches_the_new_redis_after_the_trust_period() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let link = DelayLink::start(
        redis.port,
        std::env::var("REVIEW_DELAY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(900),
    );
    let extra = SLOW_LINK;
    let (a, b) = start_two(&redis.url(), &link.url(), &extra);
    let window = sleep_into_next_window(SECS, 100);
    for id in 1..=3 {
        answer_ok("A", &a, id, None);
    }
    for id in 4..=6 {
        answer_ok("B", &b, id, None);
    }
    // After the cutoff (end + 1500 - 350), inside the grace.
    sleep_until((window + SECS) * 1000 + 1200);
    redis.restart();
    let a_line = fleet_line(&a, window, FLEET_WAIT).expect("A logged no fleet count");
    let b_line = fleet_line(&b, window, FLEET_WAIT);
    eprintln!(
        "A: {} | B: {:?}",
        a_line.raw,
        b_line.as_ref().map(|l| &l.raw)
    );
    assert_eq!(
        a_line.count(),
        6,
        "I-ok: A's fleet count lacks ids: {}",
        a_line.raw
    );
    if let Some(l) = b_line {
        assert_eq!(l.count(), 6, "I-agree: {}", l.raw);
    }
}

/// Found by the second review (finding A) (I-agree, I-ok; "shutdown during lingering"). The first review's fix keeps a
/// knower's count stored in every new generation (`linger`, `Known::republish`) — but only
/// while `shared.ready` holds: `linger` and `deliver` return at once when it is false. It
/// turns false at the *start* of a graceful shutdown (SIGTERM), while the instance stays a
/// member (heartbeat on), keeps serving through `--shutdown-delay-ms`, and leaves the fleet
/// only at the very end. So finding 1 is back for every window closed in that span: A is
/// shutting down (a rolling deploy with a 60 s preStop-style delay), fixes W's count 6 and
/// logs it; Redis restarts empty before B (link 250 ms) read the count. A never re-writes
/// the count, its mark or anything else for W; B re-adds its own ids, waits out the
/// barrier's bound for the mark of A (alive, listed, never marking) and fixes a second
/// count, 3, without A's `ok` ids 1..3 — while A is still alive and answering.
#[test]
fn a_shutdown_in_progress_stops_republishing_and_a_restart_gives_a_second_count() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let link = DelayLink::start(redis.port, 250);
    let extra = [
        "--window-secs",
        "3",
        "--grace-ms",
        "1500",
        "--redis-timeout-ms",
        "1000",
    ];
    let mut a_args = extra.to_vec();
    a_args.extend_from_slice(&["--shutdown-delay-ms", "90000"]);
    let a = start(&redis.url(), &a_args);
    let b = start(&link.url(), &extra);
    wait_ready("A", &a);
    wait_ready("B", &b);
    // A begins a graceful shutdown: /readyz turns 503, but it stays a member and serves
    // (the listener stays open for the shutdown delay).
    a.signal("TERM");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        a.get("/readyz").status,
        503,
        "A did not start shutting down (setup)"
    );
    for attempt in 0..4 {
        let window = sleep_into_next_window(3, 200);
        let base = attempt * 100;
        for id in 1..=3 {
            answer_ok("A (shutting down, still serving)", &a, base + id, None);
        }
        for id in 4..=6 {
            answer_ok("B", &b, base + id, None);
        }
        let a_line = fleet_line_fast(&a, window, Duration::from_secs(10))
            .expect("A logged no fleet count (setup)");
        if has_fleet_line(&b, window) {
            eprintln!("attempt {attempt}: B read the count before the restart (race lost), again");
            continue;
        }
        redis.restart();
        let restarted_at = now_ms();
        assert_eq!(a_line.count(), 6, "A's fleet count (setup): {}", a_line.raw);
        let b_line = fleet_line(&b, window, FLEET_WAIT)
            .unwrap_or_else(|| panic!("B logged no fleet count:\n{}", b.log_text()));
        if line_ms(&b_line) < restarted_at + 3000 {
            // Read from the old Redis (in flight at the kill): the race was lost.
            eprintln!(
                "attempt {attempt}: B read the count as Redis was killed ({}): again",
                b_line.raw
            );
            thread::sleep(Duration::from_secs(12));
            continue;
        }
        let a_alive = a.get("/healthz").status == 200;
        let a_serves = accept(&a, 999_999, None);
        eprintln!(
            "attempt {attempt}: A: {} | B ({} ms after the restart): {} | A alive: {a_alive}, \
             A answers a new id: {a_serves}",
            a_line.raw,
            line_ms(&b_line) - restarted_at,
            b_line.raw
        );
        assert!(
            a_alive,
            "A exited before B's count (setup: shutdown delay too short)"
        );
        assert_eq!(
            b_line.count(),
            a_line.count(),
            "I-agree broken: A (shutting down gracefully but alive, a member, still answering \
             ok) logged fleet count {} for window {}; after an empty restart B logged {}: A \
             stopped re-writing the count and its mark when its shutdown began (`linger` and \
             `deliver` return once `ready` is false), and never re-added its ok ids 1..3 (I-ok). \
             B's lines: {:?}",
            a_line.count(),
            rfc3339(window),
            b_line.count(),
            window_lines(&b, window)
        );
        return;
    }
    // The interleaving needs B to read after the restart; on a loaded machine B may read
    // before it every time: nothing was checked then, which is said, not hidden.
    eprintln!("four attempts inconclusive: B always read the count before the restart");
}

/// Found by the second review (finding B) (I-endpoint; "the 503 for new endpoints while Redis settles"). `Store::settling`
/// is `unconfirmed || (changes > 0 && since.elapsed() < trust)`: an instance that *started*
/// after the restart has seen no change (`changes == 0`; its first generation is not one),
/// so it registers new endpoints at once, while the fleet's members have not yet re-added
/// theirs. Those re-adds are forced past the bounds, so the window's endpoint set ends with
/// twice `--callback-max-endpoints`, and the leader's `bounded` keeps an arbitrary half:
/// endpoints registered by `ok` requests (Redis held each one when it was answered) get no
/// POST. Here: max 4 endpoints; A (link 250 ms, so its reconnection handshake — PING, CLIENT
/// ID, INFO — and its re-add, EVALSHA then EVAL on the new Redis, take ~1.3 s) registered /a/0..3; Redis restarts empty; C starts
/// (B, direct, re-announces the settings within ~0.5 s, so C is ready at once) and
/// registers /c/0..3 before A's forced re-add lands.
#[test]
fn a_newcomer_after_an_empty_restart_registers_endpoints_before_the_readds() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let receiver = Receiver::start();
    let link = DelayLink::start(redis.port, 250);
    let extra = [
        "--window-secs",
        "5",
        "--grace-ms",
        "1500",
        "--redis-timeout-ms",
        "1000",
        "--callback-max-endpoints",
        "4",
    ];
    let a = start(&link.url(), &extra);
    let b = start(&redis.url(), &extra);
    wait_ready("A", &a);
    wait_ready("B", &b);
    let hook = |tag: &str, n: i64| encode(&receiver.url(&format!("/{tag}/{n}/x")));
    let window = sleep_into_next_window(5, 200);
    for n in 0..4 {
        answer_ok("A", &a, 1 + n, Some(&hook("a", n)));
    }
    let key = format!("verve:{{{window}}}:endpoints");
    assert_eq!(
        redis.cli(&["scard", &key]).trim(),
        "4",
        "setup: A's 4 endpoints"
    );
    redis.restart();
    let restarted = now_ms();
    let c = start(&redis.url(), &extra);
    let c_started = now_ms() - restarted;
    // C's four endpoints, all at once, each retried until ok (C may still be fenced for its
    // first heartbeat).
    let until = (window + 5) * 1000;
    let threads: Vec<_> = (0..4)
        .map(|n| {
            let addr = c.addr;
            let target = format!("/api/verve/accept?id={}&endpoint={}", 11 + n, hook("c", n));
            thread::spawn(move || {
                loop {
                    let status = common::Conn::connect(addr).get(&target).status;
                    if status == 200 || now_ms() >= until {
                        return (status, now_ms());
                    }
                    thread::sleep(Duration::from_millis(10));
                }
            })
        })
        .collect();
    let c_ok: Vec<(u16, i64)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        c_ok.iter().all(|&(s, _)| s == 200),
        "C's requests (setup): {c_ok:?}"
    );
    let c_dropped = c.metric("verve_endpoints_dropped_total");
    thread::sleep(Duration::from_secs(3)); // A's re-add
    let held = redis.cli(&["smembers", &key]);
    let held: Vec<&str> = held.lines().collect();
    eprintln!(
        "C started {c_started} ms after the restart, its endpoints ok at {:?} ms; C refused \
         {c_dropped} endpoints; Redis holds {} endpoints for the window: {held:?}",
        c_ok.iter().map(|&(_, t)| t - restarted).collect::<Vec<_>>(),
        held.len()
    );
    if c_dropped >= 4 {
        eprintln!("A's forced re-add landed before C's registrations (race lost): inconclusive");
        return;
    }
    fleet_line(&a, window, FLEET_WAIT).expect("A logged no fleet count");
    thread::sleep(Duration::from_secs(5)); // deliveries
    let tag = format!("\"window_start\":\"{}\"", rfc3339(window));
    let posted = |tag_path: &str| {
        receiver
            .to(tag_path)
            .into_iter()
            .any(|p| p.body.contains(&tag))
    };
    let mut unposted = Vec::new();
    for t in ["a", "c"] {
        for n in 0..4 {
            let path = format!("/{t}/{n}/");
            if !posted(&path) {
                unposted.push(path);
            }
        }
    }
    // C, started after the empty restart, saw no change of generation and registered 4 new
    // endpoints before A's re-add of its 4 (past the bound: registered within it first).
    // Each of the 8 was held by Redis when its request was answered ok: each gets the POST,
    // and the set holds at most twice the bound.
    assert!(
        held.len() <= 8 && unposted.is_empty(),
        "I-endpoint broken: window {} (--callback-max-endpoints 4) holds {} endpoints \
         ({held:?}), every one registered by an ok request, and these got no POST: \
         {unposted:?}",
        rfc3339(window),
        held.len()
    );
}

/// Found by the second review (finding C) (Available, I-ok; "the young-Redis settings rule at start-up"). A newcomer
/// only reads the settings announcement while Redis's `uptime_in_seconds` is below 2, on the
/// assumption that the fleet re-announces within that. But (1) `uptime_in_seconds` is
/// whole seconds of Redis's cached clock, so it reads 2 as early as just over 1 s after the
/// start; (2) a fleet instance re-announces only after its reconnection, which is fred's
/// handshake (PING, CLIENT ID, INFO: three round trips) after a backoff of up to 1 s, plus
/// `RECONNECT_ANNOUNCE` (200 ms), plus the `SET`'s own trip. With a 450 ms link (well within
/// a 1000 ms `--redis-timeout-ms`) that is 2 to 3 s after a 3 s outage. A newcomer Y with
/// another grace, started just as Redis comes back empty, claims the announcement first: A and B find
/// "theirs" differ, withdraw their heartbeats and stay unready for as long as Y renews it.
#[test]
fn a_fleet_behind_a_slow_link_reannounces_too_late_for_the_young_redis_rule() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let link = DelayLink::start(redis.port, 450);
    let extra = [
        "--window-secs",
        "3",
        "--grace-ms",
        "1500",
        "--redis-timeout-ms",
        "1000",
    ];
    let a = start(&link.url(), &extra);
    let b = start(&link.url(), &extra);
    wait_ready("A", &a);
    wait_ready("B", &b);
    let ours = redis.cli(&["get", "verve:settings"]);
    // Redis is down for 3 s (the fleet's reconnect backoff reaches its 1 s ceiling), then
    // comes back empty.
    redis.kill();
    thread::sleep(Duration::from_secs(3));
    redis.restart();
    let restarted = now_ms();
    let y = start(
        &redis.url(),
        &[
            "--window-secs",
            "3",
            "--grace-ms",
            "1600",
            "--redis-timeout-ms",
            "1000",
        ],
    );
    let y_up = now_ms() - restarted;
    // The fleet's service should be back within seconds of Redis answering (looked at
    // after 12 s, so that a moment of readiness before the announcement is read back
    // does not count).
    thread::sleep(Duration::from_secs(12));
    let back = wait_for(Duration::from_secs(5), || {
        (a.get("/readyz").status == 200 && b.get("/readyz").status == 200).then_some(())
    });
    let settings = redis.cli(&["get", "verve:settings"]);
    eprintln!(
        "Y printed its address {y_up} ms after the restart; the fleet's settings: {} | now \
         announced: {} | A ready: {}, B ready: {}, Y ready: {}",
        ours.trim(),
        settings.trim(),
        a.get("/readyz").status,
        b.get("/readyz").status,
        y.get("/readyz").status
    );
    assert!(
        back.is_some(),
        "Available broken: 15 s after an empty restart the fleet (A, B: same settings, links \
         of 450 ms within their 1000 ms Redis timeout) is still unready: the newcomer Y \
         (--grace-ms 1600) claimed the settings announcement ({}) before the fleet \
         re-announced its own ({}); the young-Redis rule (read only while uptime < 2 s) \
         expired first",
        settings.trim(),
        ours.trim()
    );
    // And the fleet counts again (its ids, not Y's layout): a window answered by A is
    // reported with scope=fleet.
    let window = sleep_into_next_window(3, 200);
    answer_ok("A", &a, 1, None);
    let line = fleet_line(&a, window, FLEET_WAIT).expect("A logged no fleet count");
    assert_eq!(line.count(), 1, "{}", line.raw);
}

/// Probe (windows of 1 s through an empty restart; the late-count lines). Two instances,
/// `--window-secs 1`, a fresh id every 50 ms alternately on each; Redis restarts empty
/// once, mid-run. For every window: each instance logs at most one `partial=true` line and
/// then exactly one `scope=fleet` line (never a partial after the fleet one), both
/// instances log the same fleet count, it holds every id answered ok well inside the window
/// (I-ok), and it is no more than the ids sent in the window and its edges (I-bound).
#[test]
fn one_second_windows_through_an_empty_restart_keep_one_count_each() {
    let _serial = serial();
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let extra = ["--window-secs", "1", "--grace-ms", "700"];
    let a = start(&redis.url(), &extra);
    let b = start(&redis.url(), &extra);
    wait_ready("A", &a);
    wait_ready("B", &b);
    let first = sleep_into_next_window(1, 0);
    let mut sent: Vec<(i64, i64, i64, u16)> = Vec::new(); // id, sent, answered, status
    let mut restarted_at = 0;
    let mut id = 0;
    while now_ms() < (first + 12) * 1000 {
        id += 1;
        let verve = if id % 2 == 0 { &a } else { &b };
        let t0 = now_ms();
        let status = accept(verve, id, None);
        sent.push((id, t0, now_ms(), status));
        if restarted_at == 0 && now_ms() >= (first + 4) * 1000 + 300 {
            redis.restart();
            restarted_at = now_ms();
        }
        thread::sleep(Duration::from_millis(50));
    }
    let last = first + 11;
    for (name, v) in [("A", &a), ("B", &b)] {
        wait_for(Duration::from_secs(45), || {
            has_fleet_line(v, last).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{name}: no fleet line for the last window:\n{}",
                v.log_text()
            )
        });
    }
    thread::sleep(Duration::from_secs(2));
    let mut problems = Vec::new();
    for w in first..=last {
        let mut counts = Vec::new();
        for (name, v) in [("A", &a), ("B", &b)] {
            let lines: Vec<Line> = v
                .windows()
                .into_iter()
                .filter(|l| l.get("window_start") == rfc3339(w))
                .collect();
            let shape: Vec<&str> = lines
                .iter()
                .map(|l| {
                    if l.get("scope") == "fleet" {
                        "fleet"
                    } else {
                        "partial"
                    }
                })
                .collect();
            if shape != ["fleet"] && shape != ["partial", "fleet"] {
                problems.push(format!("{name} window {w}: lines {shape:?}"));
            }
            if let Some(l) = lines.iter().find(|l| l.get("scope") == "fleet") {
                counts.push(l.count());
            }
        }
        let ok_inside = sent
            .iter()
            .filter(|&&(_, s, r, st)| st == 200 && s >= w * 1000 + 100 && r <= w * 1000 + 900)
            .count() as u64;
        let sent_near = sent
            .iter()
            .filter(|&&(_, s, r, _)| r >= w * 1000 - 300 && s < (w + 1) * 1000 + 300)
            .count() as u64;
        if counts.len() == 2 && counts[0] != counts[1] {
            problems.push(format!(
                "window {w}: I-agree: A {} B {}",
                counts[0], counts[1]
            ));
        }
        for c in &counts {
            if *c < ok_inside {
                problems.push(format!(
                    "window {w}: I-ok: count {c} < {ok_inside} ok ids inside"
                ));
            }
            if *c > sent_near {
                problems.push(format!("window {w}: I-bound: count {c} > {sent_near} sent"));
            }
        }
        eprintln!("window {w}: counts {counts:?}, ok inside {ok_inside}, sent near {sent_near}");
    }
    eprintln!("restarted at +{} ms", restarted_at - first * 1000);
    assert!(problems.is_empty(), "{problems:#?}");
}
