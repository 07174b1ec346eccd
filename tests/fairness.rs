//! Fair callback delivery against real listeners on loopback: hundreds of tarpit endpoints in
//! one address prefix neither delay another prefix's POST nor outlive their window's
//! deadline, and no more than the per-prefix cap of them run at once.

mod common;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use common::{
    Conn, Line, Receiver, Tarpit, Verve, encode, line_ms, now_ms, sleep_into_next_window,
};

/// Tarpit addresses (127.0.0.2, 127.0.0.3, …: one /24) and endpoints on each.
const TARPIT_ADDRS: u8 = 100;
const PATHS_PER_ADDR: usize = 3;
/// The defaults: 3 attempts of 5 s, backoff 250 ms doubling, so a 1-second window's
/// deliveries expire max(1 s, 3 × 5 s + 0.25 s + 0.5 s) = 15.75 s after it is final.
const EXPIRY_MS: i64 = 15_750;
/// `--callback-prefix-concurrency`'s default.
const PREFIX_CAP: usize = 2;

/// Tells endpoints apart by what the log shows of them (the origin, plus `endpoint_id` where
/// the log carries one).
fn endpoint_of(line: &Line) -> String {
    format!("{} {}", line.get("endpoint"), line.get("endpoint_id"))
}

/// Tarpit listeners on `127.0.0.2`, `127.0.0.3`, … (one /24), a healthy receiver on
/// `127.1.0.1` (another prefix), and verve with one-second windows calling loopback, plus
/// `extra` flags.
fn tarpits_and_healthy(extra: &[&str]) -> (Vec<Ipv4Addr>, Tarpit, Receiver, Verve) {
    let ips: Vec<Ipv4Addr> = (2..2 + TARPIT_ADDRS)
        .map(|d| Ipv4Addr::new(127, 0, 0, d))
        .collect();
    let tarpit = Tarpit::start(&ips);
    let healthy = Receiver::start_on("127.1.0.1");
    (ips, tarpit, healthy, Verve::calling_loopback(extra, &[]))
}

/// In the window now open: `PATHS_PER_ADDR` tarpit endpoints on each of `ips` (ids 1…),
/// then the healthy one (id 0); every request must be answered 200. The last id used.
fn register(conn: &mut Conn, ips: &[Ipv4Addr], tarpit: &Tarpit, healthy: &Receiver) -> i64 {
    // The tarpits first: a first-come queue would put the healthy endpoint behind them all.
    let mut id = 0;
    for ip in ips {
        for path in 0..PATHS_PER_ADDR {
            id += 1;
            let endpoint = format!("http://{ip}:{}/tarpit-{path}", tarpit.port);
            let reply = conn.get(&format!(
                "/api/verve/accept?id={id}&endpoint={}",
                encode(&endpoint)
            ));
            assert_eq!(reply.status, 200, "{endpoint}: the id counts either way");
        }
    }
    let reply = conn.get(&format!(
        "/api/verve/accept?id=0&endpoint={}",
        encode(&healthy.url("/healthy"))
    ));
    assert_eq!(reply.status, 200);
    id
}

#[test]
fn tarpits_in_one_prefix_delay_no_other_prefix_and_expire_at_the_deadline() {
    let (ips, tarpit, healthy, verve) = tarpits_and_healthy(&[
        "--callback-max-endpoints",
        "1000",
        "--callback-max-per-domain",
        "1000",
    ]);
    let tarpits = ips.len() * PATHS_PER_ADDR;

    let window = sleep_into_next_window(1, 50);
    register(&mut verve.connect(), &ips, &tarpit, &healthy);
    assert!(
        now_ms() < (window + 1) * 1000,
        "the endpoints did not fit in one window"
    );

    let line = verve.wait_window(window, Duration::from_secs(5));
    assert_eq!(line.count(), tarpits as u64 + 1);
    let final_ms = line_ms(&line);
    let posted = common::wait_for(Duration::from_secs(10), || {
        (!healthy.to("/healthy").is_empty()).then(now_ms)
    })
    .unwrap_or_else(|| panic!("the healthy endpoint got no POST:\n{}", verve.log_text()));
    let took = posted - final_ms;
    eprintln!("healthy POST seen {took} ms after the window's count line");
    assert!(
        took <= 3000,
        "the healthy POST waited {took} ms behind the tarpits"
    );

    // Every tarpit delivery ends by its deadline: delivered, failed or expired.
    let deadline = final_ms + EXPIRY_MS;
    let tarpit_lines = || -> Vec<Line> {
        verve
            .lines()
            .into_iter()
            .filter(|l| l.kind == "callback" && l.get("endpoint").starts_with("http://127.0.0."))
            .collect()
    };
    let ended = |lines: &[Line]| -> usize {
        let mut last: HashMap<String, &Line> = HashMap::new();
        for l in lines {
            last.insert(endpoint_of(l), l);
        }
        last.values()
            .filter(|l| {
                l.get("error") == "expired"
                    || l.get("attempt") == "3"
                    || l.get("status").starts_with('2')
            })
            .count()
    };
    let wait_ms = (deadline + 3000 - now_ms()).max(0) as u64;
    let lines = common::wait_for(Duration::from_millis(wait_ms), || {
        let lines = tarpit_lines();
        (ended(&lines) == tarpits).then_some(lines)
    })
    .unwrap_or_else(|| {
        panic!(
            "tarpit deliveries still running {} ms after the deadline:\n{}",
            now_ms() - deadline,
            verve.log_text()
        )
    });

    let expired: Vec<&Line> = lines
        .iter()
        .filter(|l| l.get("error") == "expired")
        .collect();
    eprintln!(
        "{} tarpit attempts made, {} deliveries expired; tarpit connections: {} accepted, at most {} open at once ({} when a close within 50 ms of the next connect counts as a hand-over)",
        lines.len() - expired.len(),
        expired.len(),
        tarpit.accepted(),
        tarpit.most_open(0),
        tarpit.most_open(50)
    );
    assert!(
        expired.len() > tarpits / 2,
        "most tarpit deliveries never get a turn and expire: {} of {tarpits}",
        expired.len()
    );
    for l in &expired {
        let at = line_ms(l);
        assert!(
            at >= deadline - 200 && at <= deadline + 1500,
            "expired {} ms from the deadline: {}",
            at - deadline,
            l.raw
        );
        assert_ne!(l.get("attempt"), "0", "{}", l.raw);
        assert_eq!(l.get("window_start"), line.get("window_start"));
    }
    let offsets: Vec<i64> = expired.iter().map(|l| line_ms(l) - deadline).collect();
    let last = lines.iter().map(line_ms).max().unwrap_or(0);
    eprintln!(
        "expired lines {}..{} ms from the deadline (window line + {EXPIRY_MS} ms); last tarpit line {} ms after it",
        offsets.iter().min().unwrap_or(&0),
        offsets.iter().max().unwrap_or(&0),
        last - deadline
    );
    assert!(
        last <= deadline + 1500,
        "a tarpit line {} ms after the deadline",
        last - deadline
    );
    assert_eq!(
        verve.metric("verve_callbacks_expired_total"),
        expired.len() as u64
    );
    // The cap: never more than two connections into the tarpits' prefix at once.
    let most = tarpit.most_open(50);
    assert!(most <= PREFIX_CAP, "{most} tarpit connections open at once");
    assert_eq!(healthy.to("/healthy").len(), 1);
}

/// One caller trying to take every endpoint slot of a window with endpoints in one address
/// prefix gets `--callback-max-per-domain` of them; another prefix's endpoint still gets its
/// slot and its POST, and every id counts.
#[test]
fn one_prefix_cannot_take_every_endpoint_slot() {
    let (ips, tarpit, healthy, verve) = tarpits_and_healthy(&[
        "--callback-max-endpoints",
        "120",
        "--callback-max-per-domain",
        "50",
    ]);
    let window = sleep_into_next_window(1, 50);
    let id = register(&mut verve.connect(), &ips, &tarpit, &healthy);
    let line = verve.wait_window(window, Duration::from_secs(5));
    assert_eq!(line.count(), id as u64 + 1);
    common::wait_for(Duration::from_secs(5), || {
        (!healthy.to("/healthy").is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("the other prefix got no POST:\n{}", verve.log_text()));
    let tarpits = ips.len() * PATHS_PER_ADDR;
    assert_eq!(
        verve.metric("verve_endpoints_dropped_domain_total"),
        tarpits as u64 - 50
    );
    assert_eq!(verve.metric("verve_endpoints_dropped_total"), 0);
}

/// Tarpits spread over many prefixes (one endpoint on each of 96 /24s, within every cap)
/// hold two workers per prefix at most, and threads are started while deliveries wait: another
/// prefix's POST still goes out at once.
#[test]
fn tarpits_in_many_prefixes_delay_no_other_prefix() {
    let ips: Vec<Ipv4Addr> = (0..96).map(|c| Ipv4Addr::new(127, 50, c, 1)).collect();
    let tarpit = Tarpit::start(&ips);
    let healthy = Receiver::start_on("127.1.0.1");
    let verve = Verve::calling_loopback(&[], &[]);
    let window = sleep_into_next_window(1, 50);
    let mut conn = verve.connect();
    for (id, ip) in ips.iter().enumerate() {
        let endpoint = format!("http://{ip}:{}/tarpit", tarpit.port);
        let reply = conn.get(&format!(
            "/api/verve/accept?id={id}&endpoint={}",
            encode(&endpoint)
        ));
        assert_eq!(reply.status, 200, "{endpoint}");
    }
    let reply = conn.get(&format!(
        "/api/verve/accept?id=1000&endpoint={}",
        encode(&healthy.url("/healthy"))
    ));
    assert_eq!(reply.status, 200);
    let line = verve.wait_window(window, Duration::from_secs(5));
    let final_ms = line_ms(&line);
    let posted = common::wait_for(Duration::from_secs(10), || {
        (!healthy.to("/healthy").is_empty()).then(now_ms)
    })
    .unwrap_or_else(|| panic!("the healthy endpoint got no POST:\n{}", verve.log_text()));
    let took = posted - final_ms;
    eprintln!("healthy POST seen {took} ms after the window's count line (96 tarpit prefixes)");
    assert!(took <= 3_000, "the healthy POST waited {took} ms");
    let all_tried = common::wait_for(Duration::from_secs(3), || {
        (tarpit.accepted() >= ips.len()).then_some(())
    });
    assert!(
        all_tried.is_some(),
        "{} of {} tarpits tried in parallel",
        tarpit.accepted(),
        ips.len()
    );
}
