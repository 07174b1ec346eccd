//! Connection and request limits under hostile clients, all on loopback and bounded: the
//! connection cap, slowloris heads, idle keep-alive connections, many idle connections, and
//! the in-flight cap in fleet mode while Redis stalls.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::{Conn, Redis, Verve, wait_for};

/// Whether the server closed `stream` (EOF) within `timeout`.
fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    stream.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
}

#[test]
fn connection_cap_holds_new_connections_until_one_closes() {
    let verve = Verve::start(&["--max-connections", "4"]);
    let mut held: Vec<Conn> = (0..4).map(|_| verve.connect()).collect();
    for conn in &mut held {
        assert_eq!(conn.get("/healthz").status, 200);
    }
    // The fifth connects (kernel backlog) but is not served while four are open.
    let mut fifth = TcpStream::connect(verve.addr).unwrap();
    fifth
        .write_all(b"GET /api/verve/accept?id=5 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(fifth.read(&mut buf).is_err(), "served beyond the cap");

    drop(held.pop());
    fifth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = fifth
        .read(&mut buf)
        .expect("served once a connection closed");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[test]
fn slowloris_and_idle_connections_are_cut_at_the_header_read_timeout() {
    let verve = Verve::start(&["--header-read-timeout-ms", "600"]);

    // A head dripped one byte every 100 ms never completes in time.
    let mut drip = TcpStream::connect(verve.addr).unwrap();
    let started = Instant::now();
    let dripping = thread::spawn(move || {
        for b in b"GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if drip.write_all(&[*b]).is_err() || started.elapsed() > Duration::from_secs(5) {
                return started.elapsed();
            }
            thread::sleep(Duration::from_millis(100));
        }
        unreachable!()
    });

    // An idle keep-alive connection is closed too (hyper arms the same timer while it waits
    // for the next request head).
    let mut idle = verve.connect();
    assert_eq!(idle.get("/healthz").status, 200);
    let mut idle_raw = TcpStream::connect(verve.addr).unwrap();
    assert!(
        closed_within(&mut idle_raw, Duration::from_secs(3)),
        "idle connection kept"
    );

    // Meanwhile others are served normally.
    let mut busy = verve.connect();
    for id in 0..50 {
        assert_eq!(busy.get(&format!("/api/verve/accept?id={id}")).status, 200);
    }
    let cut_after = dripping.join().unwrap();
    assert!(
        cut_after < Duration::from_secs(3),
        "the dripping client was cut after {cut_after:?}"
    );
    thread::sleep(Duration::from_millis(800));
    assert!(
        idle.try_request("GET", "/healthz").is_err(),
        "an idle keep-alive connection outlived the timeout"
    );
}

/// Sends `head` in one write on a fresh connection and returns the status code, or `None`
/// when the server cut the connection without one (it may reset a connection whose head it
/// refused unread).
fn status_of_raw(verve: &Verve, head: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(verve.addr).unwrap();
    let _ = stream.write_all(head);
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(n) if n >= 12 => String::from_utf8_lossy(&buf[9..12]).parse().ok(),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
        Err(e) => panic!("no answer: {e}"),
    }
}

#[test]
fn request_heads_above_the_limit_get_431_and_count_nothing() {
    let verve = Verve::start(&["--max-header-bytes", "20000"]);
    let head = |id: u32, pad: usize| {
        format!(
            "GET /api/verve/accept?id={id} HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(pad)
        )
        .into_bytes()
    };
    // Just over the limit (the service refuses it) and far over it (hyper does).
    for (id, pad) in [(1, 20_100), (2, 30_000), (3, 200_000)] {
        let status = status_of_raw(&verve, &head(id, pad));
        assert!(
            matches!(status, Some(431) | None),
            "{pad}-byte header: {status:?}"
        );
    }
    // Just under the limit: served and counted.
    assert_eq!(status_of_raw(&verve, &head(4, 19_000)), Some(200));
    assert_eq!(verve.metric("verve_requests_total{status=\"200\"}"), 1);
    assert_eq!(verve.metric("verve_window_ids"), 1);
}

#[test]
fn many_idle_connections_do_not_slow_the_accept_path() {
    // Thousands of idle connections: raise this process's descriptor limit (verve inherits
    // it) as far as the hard limit allows.
    let hard = raise_descriptor_limit(8192);
    let n = (hard.saturating_sub(512) as usize).clamp(400, 2000);
    // Opening them takes seconds here (this VM wakes an idle server slowly): a header
    // timeout longer than that, so that none is cut before the check.
    let verve = Verve::start(&["--header-read-timeout-ms", "60000"]);
    // Opened from 30 threads at once.
    let addr = verve.addr;
    let openers: Vec<_> = (0..30)
        .map(|t| {
            thread::spawn(move || {
                (t..n)
                    .step_by(30)
                    .map(|_| TcpStream::connect(addr).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let idle: Vec<TcpStream> = openers
        .into_iter()
        .flat_map(|o| o.join().unwrap())
        .collect();
    let mut conn = verve.connect();
    let started = Instant::now();
    for id in 0..200 {
        assert_eq!(conn.get(&format!("/api/verve/accept?id={id}")).status, 200);
    }
    // Correctness, not timing: all answered; the window holds exactly these ids.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(verve.metric("verve_requests_total{status=\"200\"}"), 200);
    // The idle connections are all still open (not shed to make room).
    let mut idle = idle;
    for (i, stream) in idle.iter_mut().enumerate().step_by(97) {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 16];
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let got = stream.read(&mut buf).unwrap();
        assert!(
            buf[..got].starts_with(b"HTTP/1.1 200"),
            "idle connection {i} of {n} was cut: {:?}",
            String::from_utf8_lossy(&buf[..got])
        );
    }
    drop(idle);
}

/// Raises the soft descriptor limit to `want` or the hard limit, whichever is lower; returns
/// the new soft limit.
fn raise_descriptor_limit(want: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        let target = want.min(limit.rlim_max);
        if target > limit.rlim_cur {
            limit.rlim_cur = target;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return 1024;
            }
        }
        limit.rlim_cur
    }
}

#[test]
fn in_flight_cap_sheds_with_503_while_redis_stalls_and_recovers_at_once() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let verve = Verve::start(&[
        "--redis-url",
        &redis.url(),
        "--redis-timeout-ms",
        "3000",
        "--grace-ms",
        "4000",
        "--window-secs",
        "10",
        "--max-inflight",
        "4",
    ]);
    let mut warm = verve.connect();
    assert_eq!(warm.get("/api/verve/accept?id=1").status, 200);

    // Redis stalls for 1.5 s (CLIENT PAUSE); 12 new ids arrive on 12 connections meanwhile.
    let paused = redis.cli(&["CLIENT", "PAUSE", "1500", "ALL"]);
    assert!(paused.contains("OK"), "{paused}");
    let addr = verve.addr;
    let senders: Vec<_> = (100..112)
        .map(|id| {
            thread::spawn(move || {
                let mut conn = Conn::connect(addr);
                let sent = Instant::now();
                let reply = conn.get(&format!("/api/verve/accept?id={id}"));
                let retry = reply.header("retry-after").map(str::to_string);
                (reply.status, retry, sent.elapsed())
            })
        })
        .collect();
    let answers: Vec<_> = senders.into_iter().map(|s| s.join().unwrap()).collect();
    let ok: Vec<_> = answers.iter().filter(|a| a.0 == 200).collect();
    let shed: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    assert_eq!(ok.len() + shed.len(), 12, "{answers:?}");
    assert_eq!(ok.len(), 4, "exactly 4 waited for Redis: {answers:?}");
    assert!(
        ok.iter().all(|a| a.2 >= Duration::from_millis(800)),
        "the admitted ones waited out the stall: {answers:?}"
    );
    assert!(
        shed.iter()
            .all(|a| a.1.as_deref() == Some("1") && a.2 < Duration::from_millis(500)),
        "503 at once, with Retry-After: {answers:?}"
    );
    let shed = shed.len();
    assert_eq!(verve.metric("verve_requests_shed_total"), shed as u64);

    // Redis answers again: the shed ids are accepted at once.
    let recovered = wait_for(Duration::from_secs(3), || {
        (warm.get("/api/verve/accept?id=100").status == 200).then_some(())
    });
    assert!(recovered.is_some());
    for id in 101..112 {
        assert_eq!(warm.get(&format!("/api/verve/accept?id={id}")).status, 200);
    }
}

/// Out of descriptors (a hard limit of 48, far below `--max-connections`): start-up warns
/// naming the flag, the accept loop backs off and warns at most about once a second instead
/// of spinning, and once the connections close new ones are served again.
#[test]
fn descriptor_exhaustion_backs_off_and_recovers() {
    let dir = common::TempDir::new("emfile");
    let stderr_path = dir.0.join("stderr");
    let mut child = std::process::Command::new("prlimit")
        .arg("--nofile=48:48")
        .arg(env!("CARGO_BIN_EXE_verve"))
        .args(["--listen", "127.0.0.1:0", "--log-file"])
        .arg(dir.0.join("requests.log"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("run verve under prlimit");
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let addr: std::net::SocketAddr = first
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    let warned = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        warned.contains("--max-connections"),
        "no start-up warning:\n{warned}"
    );

    // More connections than descriptors: the kernel's backlog takes them, accept fails.
    let held: Vec<TcpStream> = (0..80)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    assert!(held.len() > 48, "only {} connections", held.len());
    thread::sleep(Duration::from_secs(3));
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    let failures = log.matches("accept failed").count();
    assert!(
        (1..=5).contains(&failures),
        "{failures} accept warnings in 3 s:\n{log}"
    );
    drop(held);
    let served = wait_for(Duration::from_secs(5), || {
        let mut conn = TcpStream::connect(addr).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        conn.write_all(b"GET /api/verve/accept?id=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut answer = [0u8; 64];
        let n = conn.read(&mut answer).ok()?;
        String::from_utf8_lossy(&answer[..n])
            .starts_with("HTTP/1.1 200")
            .then_some(())
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(served.is_some(), "not served after the connections closed");
}
