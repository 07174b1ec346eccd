//! The status page and its JSON: what they report after real traffic, the admin listener,
//! and the page rendered by a real headless Chromium.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    Receiver, TempDir, Verve, encode, have, rfc3339, run_ok, sleep_into_next_window, wait_for,
};
use serde_json::Value;

fn stats(verve: &Verve, addr: std::net::SocketAddr) -> Value {
    let reply = common::Conn::connect(addr).get("/api/verve/stats");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    serde_json::from_str(&reply.body).unwrap_or_else(|e| {
        panic!(
            "stats is not JSON ({e}): {}\nlog: {}",
            reply.body,
            verve.log_text()
        )
    })
}

fn window<'a>(stats: &'a Value, start: &str) -> Option<&'a Value> {
    stats["windows"]
        .as_array()?
        .iter()
        .find(|w| w["window_start"] == start)
}

#[test]
fn stats_follow_reported_windows_and_their_callbacks() {
    let receiver = Receiver::start();
    let verve = Verve::start(&[
        "--window-secs",
        "2",
        "--grace-ms",
        "300",
        "--callback-allow",
        "127.0.0.0/8",
    ]);
    let start = sleep_into_next_window(2, 100);
    let mut conn = verve.connect();
    let hook = encode(&receiver.url("/hook"));
    assert_eq!(
        conn.get(&format!("/api/verve/accept?id=1&endpoint={hook}"))
            .status,
        200
    );
    for id in [2, 3, 4, 5, 5, 1] {
        assert_eq!(conn.get(&format!("/api/verve/accept?id={id}")).status, 200);
    }
    let current = stats(&verve, verve.addr);
    assert_eq!(current["current"]["window_start"], rfc3339(start).as_str());
    assert_eq!(current["current"]["count"], 5);

    verve.wait_window(start, Duration::from_secs(5));
    let want = rfc3339(start);
    let reported = wait_for(Duration::from_secs(5), || {
        let s = stats(&verve, verve.addr);
        let done = window(&s, &want)?["callbacks"]["pending"] == 0;
        done.then_some(s)
    })
    .expect("the window's callback finished");
    assert_eq!(reported["mode"], "single");
    assert_eq!(reported["window_secs"], 2);
    assert_eq!(reported["ready"], true);
    assert_eq!(reported["redis"], Value::Null);
    assert!(reported["uptime_secs"].as_u64().is_some());
    assert_eq!(reported["requests"]["ok"], 7);
    let w = window(&reported, &want).unwrap();
    assert_eq!(w["count"], 5);
    assert_eq!(w["scope"], "local");
    assert_eq!(w["partial"], false);
    assert_eq!(w["callbacks"]["delivered"], 1);
    assert_eq!(w["callbacks"]["failed"], 0);
    assert_eq!(receiver.to("/hook").len(), 1);

    let windows = reported["windows"].as_array().unwrap();
    let starts: Vec<&str> = windows
        .iter()
        .map(|w| w["window_start"].as_str().unwrap())
        .collect();
    assert!(
        starts.windows(2).all(|p| p[0] < p[1]),
        "oldest first: {starts:?}"
    );

    let page = verve.get("/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page.body.contains("<svg id=\"chart\""));
    // Self-contained: no scripts, styles or images fetched from anywhere.
    assert!(!page.body.contains(" src=") && !page.body.contains(" href="));
}

#[test]
fn admin_listen_moves_metrics_and_the_status_page_off_the_public_listener() {
    let verve = Verve::start(&["--admin-listen", "127.0.0.1:0"]);
    let admin = verve.admin.expect("admin address printed at start-up");
    for path in ["/", "/metrics", "/api/verve/stats"] {
        assert_eq!(verve.get(path).status, 404, "public {path}");
        assert_eq!(
            common::Conn::connect(admin).get(path).status,
            200,
            "admin {path}"
        );
    }
    assert_eq!(verve.get("/api/verve/accept?id=1").status, 200);
    assert_eq!(
        common::Conn::connect(admin)
            .get("/api/verve/accept?id=2")
            .status,
        404
    );
    for path in ["/healthz", "/readyz"] {
        assert_eq!(verve.get(path).status, 200, "public {path}");
        assert_eq!(
            common::Conn::connect(admin).get(path).status,
            200,
            "admin {path}"
        );
    }
    assert_eq!(stats(&verve, admin)["current"]["count"], 1);
}

/// Runs headless Chromium on `url` with `args`; its stdout.
fn chromium(url: &str, args: &[&str]) -> String {
    let profile = TempDir::new("chromium");
    let mut chromium = Command::new("chromium");
    chromium
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-extensions",
            "--no-first-run",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .args(args)
        .arg(url);
    String::from_utf8_lossy(&run_ok(&mut chromium, "chromium").stdout).into_owned()
}

/// The chart's bars in a DOM dump: (window_start, count) in drawing order.
fn bars(dom: &str) -> Vec<(String, u64)> {
    dom.split("<rect ")
        .skip(1)
        .filter(|r| r.contains("point"))
        .map(|r| {
            let tag = &r[..r.find('>').unwrap_or(r.len())];
            let attr = |name: &str| {
                let at = tag.find(&format!("{name}=\"")).expect(name) + name.len() + 2;
                tag[at..at + tag[at..].find('"').unwrap()].to_string()
            };
            (attr("data-window"), attr("data-count").parse().unwrap())
        })
        .collect()
}

fn artifact(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn status_page_draws_the_reported_windows_in_a_real_browser() {
    if !have("chromium") {
        return;
    }
    let verve = Verve::start(&["--window-secs", "3", "--grace-ms", "300"]);
    let first = sleep_into_next_window(3, 100);
    let mut conn = verve.connect();
    for id in 1..=3 {
        assert_eq!(conn.get(&format!("/api/verve/accept?id={id}")).status, 200);
    }
    let second = sleep_into_next_window(3, 100);
    for id in [1, 2, 3, 4, 5, 6, 7, 7] {
        assert_eq!(conn.get(&format!("/api/verve/accept?id={id}")).status, 200);
    }
    verve.wait_window(second, Duration::from_secs(6));
    let url = format!("http://{}/", verve.addr);

    // The page and the JSON are compared at one moment: retried if a window was reported
    // while the browser ran.
    let (dom, windows) = (0..3)
        .find_map(|_| {
            let before = stats(&verve, verve.addr)["windows"].clone();
            let dom = chromium(&url, &["--dump-dom"]);
            let after = stats(&verve, verve.addr)["windows"].clone();
            (before == after).then_some((dom, after))
        })
        .expect("a stable moment to compare page and stats");
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page loaded its data:\n{dom}"
    );
    let drawn = bars(&dom);
    let windows = windows.as_array().unwrap();
    assert_eq!(
        drawn.len(),
        windows.len(),
        "one bar per reported window:\n{dom}"
    );
    let latest = windows.last().unwrap();
    assert_eq!(
        drawn.last().map(|(_, c)| *c),
        latest["count"].as_u64(),
        "the latest bar is the latest window"
    );
    for (start, count) in [(first, 3), (second, 7)] {
        assert!(
            drawn.contains(&(rfc3339(start), count)),
            "window {} drawn with {count}: {drawn:?}",
            rfc3339(start)
        );
    }

    let shot = artifact("status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &url,
        &[
            "--window-size=1100,800",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    eprintln!("screenshot: {}", shot.display());
}

#[test]
fn fleet_stats_show_redis_health_and_fleet_counts() {
    let Some(mut redis) = common::Redis::start() else {
        return;
    };
    let verve = Verve::start(&[
        "--redis-url",
        &redis.url(),
        "--window-secs",
        "2",
        "--grace-ms",
        "600",
    ]);
    let start = sleep_into_next_window(2, 100);
    let mut conn = verve.connect();
    for id in [10, 11, 12, 10] {
        assert_eq!(conn.get(&format!("/api/verve/accept?id={id}")).status, 200);
    }
    verve.wait_window(start, Duration::from_secs(6));
    let s = stats(&verve, verve.addr);
    assert_eq!(s["mode"], "fleet");
    assert_eq!(s["redis"]["connected"], true);
    let w = window(&s, &rfc3339(start)).expect("window reported");
    assert_eq!(
        (&w["count"], &w["scope"], &w["partial"]),
        (&3.into(), &"fleet".into(), &false.into())
    );

    redis.kill();
    let down = wait_for(Duration::from_secs(5), || {
        let s = stats(&verve, verve.addr);
        (s["redis"]["connected"] == false).then_some(s)
    })
    .expect("stats show Redis down");
    assert_eq!(down["ready"], false);
}
