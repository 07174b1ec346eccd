//! Start-up, routes, signals and shutdown of the real binary.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::{Receiver, Verve, encode, wait_for};

#[test]
fn serves_health_readiness_metrics_and_404() {
    let verve = Verve::start(&["--window-secs", "1", "--grace-ms", "100"]);
    let health = verve.get("/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    let ready = verve.get("/readyz");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ok"));
    assert_eq!(verve.get("/nope").status, 404);
    assert_eq!(verve.get("/api/verve").status, 404);
    assert_eq!(verve.get("/api/verve/accept?id=5").status, 200);
    let metrics = verve.get("/metrics");
    assert_eq!(metrics.status, 200);
    for series in [
        "verve_requests_total{status=\"200\"} 1",
        "verve_requests_total{status=\"404\"} 2",
        "verve_window_ids ",
        "verve_windows_reported_total ",
        "verve_callback_attempts_total{result=\"delivered\"} 0",
        "process_resident_memory_bytes ",
    ] {
        assert!(
            metrics.body.contains(series),
            "{series} missing:\n{}",
            metrics.body
        );
    }
}

#[test]
fn invalid_settings_stop_start_up_with_one_line_naming_the_flag() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    // An address already taken, for --admin-listen.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().to_string();
    let cases: [Case; 12] = [
        (&["--window-secs", "0"], &[], "--window-secs"),
        (
            &["--callback-hosts", "a.com,x.*.com"],
            &[],
            "--callback-hosts",
        ),
        (
            &[],
            &[("VERVE_CALLBACK_SECRET", "whsec_not*base64")],
            "--callback-secret",
        ),
        (&["--max-header-bytes", "8192"], &[], "--max-header-bytes"),
        (&[], &[("VERVE_MAX_CONNECTIONS", "0")], "--max-connections"),
        (&["--admin-listen", "nowhere"], &[], "--admin-listen"),
        (
            &["--admin-listen", &taken, "--log-file", "/dev/null"],
            &[],
            "--admin-listen",
        ),
        (
            &["--grace-ms", "5000", "--window-secs", "5"],
            &[],
            "--grace-ms",
        ),
        (
            &["--callback-allow", "127.0.0.0/99"],
            &[],
            "--callback-allow",
        ),
        (&["--listen", "not-an-address"], &[], "--listen"),
        (&[], &[("VERVE_WINDOW_SECS", "abc")], "--window-secs"),
        (
            &["--log-file", "/nonexistent-dir/x/requests.log"],
            &[],
            "--log-file",
        ),
    ];
    for (args, env, flag) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_verve"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("run verve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("not*base64"),
            "a secret was echoed: {stderr}"
        );
    }
}

#[test]
fn flags_win_over_environment() {
    let verve = Command::new(env!("CARGO_BIN_EXE_verve"))
        .args(["--listen", "127.0.0.1:0", "--window-secs", "1"])
        .env("VERVE_GRACE_MS", "1500")
        .output()
        .expect("run verve");
    // Env grace 1500 with flag window 1 s: the cross-check sees both.
    assert_eq!(verve.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&verve.stderr).contains("--grace-ms (1500)"));
}

/// SIGTERM under load: every request answered `ok` is in a logged count (ended windows or
/// the open window's partial line); the partial window is never POSTed; exit code 0.
#[test]
fn shutdown_under_load_loses_no_answered_id_and_posts_no_partial_window() {
    let receiver = Receiver::start();
    let mut verve = Verve::calling_loopback(&[], &[]);
    let endpoint = encode(&receiver.url("/hook"));
    let stop = Arc::new(AtomicBool::new(false));
    let addr = verve.addr;
    let senders: Vec<_> = (0..8i64)
        .map(|t| {
            let (stop, endpoint) = (Arc::clone(&stop), endpoint.clone());
            thread::spawn(move || {
                let (mut ok, mut unanswered) = (0u64, 0u64);
                let mut conn = common::Conn::connect(addr);
                for i in 0..1_000_000i64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = t * 1_000_000_000 + i; // unique across the test
                    match conn.try_request(
                        "GET",
                        &format!("/api/verve/accept?id={id}&endpoint={endpoint}"),
                    ) {
                        Ok(reply) if reply.status == 200 => ok += 1,
                        Ok(reply) => panic!("unexpected {}", reply.status),
                        Err(_) => {
                            unanswered += 1;
                            break;
                        }
                    }
                }
                (ok, unanswered)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(2300));
    verve.signal("TERM");
    let status = verve.wait(Duration::from_secs(15));
    stop.store(true, Ordering::Relaxed);
    assert_eq!(status.code(), Some(0), "exit status");
    let (ok, unanswered) = senders
        .into_iter()
        .map(|s| s.join().expect("sender"))
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
    assert!(ok > 1000, "too little load to mean anything: {ok}");

    let windows = verve.windows();
    let counted: u64 = windows.iter().map(|l| l.count()).sum();
    assert!(
        counted >= ok && counted <= ok + unanswered,
        "answered ok {ok}, unanswered {unanswered}, counted {counted}\n{}",
        verve.log_text()
    );
    let partial: Vec<_> = windows.iter().filter(|l| l.partial()).collect();
    assert_eq!(partial.len(), 1, "exactly the open window is partial");
    assert_eq!(partial[0].get("reason"), "shutdown", "{}", partial[0].raw);
    assert_eq!(
        windows.last().unwrap().raw,
        partial[0].raw,
        "the partial line comes last"
    );

    let posted: HashSet<String> = receiver
        .to("/hook")
        .iter()
        .map(|r| r.header("idempotency-key").unwrap_or("").to_string())
        .collect();
    let final_with_ids: HashSet<String> = windows
        .iter()
        .filter(|l| !l.partial() && l.count() > 0)
        .map(|l| l.get("window_start").to_string())
        .collect();
    assert!(
        !posted.contains(partial[0].get("window_start")),
        "partial window POSTed"
    );
    assert_eq!(
        posted, final_with_ids,
        "every ended window's endpoint gets its POST"
    );
    assert_eq!(
        receiver.to("/hook").len(),
        posted.len(),
        "one POST per window"
    );
}

/// During --shutdown-delay-ms the listener stays open and /readyz says 503.
#[test]
fn shutdown_delay_drains_readiness_first() {
    let mut verve = Verve::start(&[
        "--window-secs",
        "1",
        "--grace-ms",
        "100",
        "--shutdown-delay-ms",
        "1500",
    ]);
    verve.signal("TERM");
    let not_ready = wait_for(Duration::from_secs(1), || {
        (verve.get("/readyz").status == 503).then_some(())
    });
    assert!(not_ready.is_some(), "/readyz did not turn 503");
    assert_eq!(
        verve.get("/api/verve/accept?id=1").status,
        200,
        "still serving"
    );
    assert_eq!(verve.wait(Duration::from_secs(10)).code(), Some(0));
}

/// SIGHUP reopens the count log, so logrotate can move it away.
#[test]
fn sighup_reopens_the_count_log() {
    let verve = Verve::start(&["--window-secs", "1", "--grace-ms", "100"]);
    wait_for(Duration::from_secs(5), || {
        (!verve.windows().is_empty()).then_some(())
    })
    .expect("a first window line");
    let rotated = verve.log.with_extension("log.1");
    std::fs::rename(&verve.log, &rotated).unwrap();
    verve.signal("HUP");
    wait_for(Duration::from_secs(5), || {
        (!verve.windows().is_empty()).then_some(())
    })
    .expect("lines in the reopened file");
    let old = common::read_log(&rotated);
    assert!(!old.is_empty());
    let (old_last, new_first) = (old.last().unwrap(), &verve.windows()[0]);
    assert!(old_last.get("window_start") < new_first.get("window_start"));
    assert_eq!(verve.get("/healthz").status, 200);
}

/// Fleet mode needs Redis at start-up: without it verve exits 1, naming the flag.
#[test]
fn unreachable_redis_stops_start_up_naming_the_flag() {
    let port = common::closed_port();
    let out = Command::new(env!("CARGO_BIN_EXE_verve"))
        .args(["--listen", "127.0.0.1:0", "--log-file", "/dev/null"])
        .args(["--redis-url", &format!("redis://127.0.0.1:{port}")])
        .output()
        .expect("run verve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--redis-url"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "printed a listen address without a store"
    );
}
