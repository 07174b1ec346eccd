//! Redis high availability (SPEC §6.4) beyond what the fault checker's failovers strike
//! (`tests/chaos`, topologies `cluster` and `sentinel`): interleavings it would reach only
//! by chance, staged against real sentinels on loopback.

mod common;

use std::time::Duration;

use common::{Failure, Sentinels, Verve, send_ids, sleep_into_next_window, wait_for};

const SECS: i64 = 3;

/// Found by the review of issue 16 (I-agree, I-ok): after a failover by hand the old primary
/// stays a writable master until a sentinel next looks at it (every 10 s), and fred asks the
/// sentinels only when it connects. An instance started (or a connection reset) in between
/// lands on the new primary while the others stay on the old one: two primaries, each
/// instance leading alone, two counts for one window, each short of the other's ids. Every
/// instance must move to the primary the sentinels name within a heartbeat or two.
#[test]
fn after_a_sentinel_failover_every_instance_moves_to_the_new_primary() {
    let Some(mut set) = Sentinels::start() else {
        return;
    };
    let url = set.url();
    let args = [
        "--redis-url",
        &url,
        "--window-secs",
        "3",
        "--grace-ms",
        "1000",
    ];
    let a = Verve::start(&args);
    let (old, _) = set
        .fail_primary(Failure::Manual)
        .expect("the sentinels failed over");
    assert!(
        set.servers[old].cli(&["role"]).starts_with("master"),
        "the old primary was demoted at once: nothing to check"
    );
    let b = Verve::start(&args);
    let both = wait_for(Duration::from_secs(10), || {
        (a.get("/readyz").status == 200 && b.get("/readyz").status == 200).then_some(())
    });
    assert!(both.is_some(), "the instances did not become ready");
    // A heartbeat (500 ms) for A to find out, then ids to both, in one window.
    std::thread::sleep(Duration::from_millis(1000));
    let window = sleep_into_next_window(SECS, 100);
    let to_a: Vec<i64> = (1..=40).collect();
    let to_b: Vec<i64> = (41..=80).collect();
    let answered: Vec<(i64, u16)> = send_ids(a.addr, &to_a, 2, "")
        .into_iter()
        .chain(send_ids(b.addr, &to_b, 2, ""))
        .collect();
    let oks = answered.iter().filter(|(_, s)| *s == 200).count() as u64;
    assert!(oks > 60, "only {oks} of 80 answered ok: {answered:?}");
    let (line_a, line_b) = (
        a.wait_fleet_window(window, Duration::from_secs(15)),
        b.wait_fleet_window(window, Duration::from_secs(15)),
    );
    assert_eq!(
        line_a.count(),
        line_b.count(),
        "I-agree: {} | {}",
        line_a.raw,
        line_b.raw
    );
    assert!(
        line_a.count() >= oks,
        "I-ok: {oks} ids answered ok, counted {}",
        line_a.raw
    );
}
