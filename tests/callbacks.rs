//! Callbacks against a real HTTP receiver on loopback: one POST per endpoint per window,
//! retries, timeouts, redirects not followed, the SSRF guard, and a free accept path.

mod common;

use std::time::{Duration, Instant};

use common::{
    Line, Receiver, Verve, closed_port, encode, endpoint_id, rfc3339, sleep_into_next_window,
    wait_for,
};

/// The callback lines of one endpoint (its normalized URL), found by its `endpoint_id`.
fn callback_lines(verve: &Verve, url: &str) -> Vec<Line> {
    let id = endpoint_id(url);
    verve
        .lines()
        .into_iter()
        .filter(|l| l.kind == "callback" && l.get("endpoint_id") == id)
        .collect()
}

/// Every callback line.
fn all_callback_lines(verve: &Verve) -> Vec<Line> {
    verve
        .lines()
        .into_iter()
        .filter(|l| l.kind == "callback")
        .collect()
}

fn attempts(lines: &[Line]) -> Vec<(String, String)> {
    lines
        .iter()
        .map(|l| {
            let result = match l.get("status") {
                "" => format!("error={}", l.get("error")),
                s => format!("status={s}"),
            };
            (l.get("attempt").to_string(), result)
        })
        .collect()
}

/// Accepts `id` with `endpoint` (percent-encoded here); the answer must be 200.
fn accept_with(verve: &Verve, id: i64, endpoint: &str) {
    let reply = verve.get(&format!(
        "/api/verve/accept?id={id}&endpoint={}",
        encode(endpoint)
    ));
    assert_eq!(reply.status, 200, "id {id} endpoint {endpoint}");
}

#[test]
fn delivers_once_per_endpoint_retries_failures_and_never_slows_accepts() {
    let receiver = Receiver::start();
    let verve = Verve::calling_loopback(
        &[
            "--callback-timeout-ms",
            "600",
            "--callback-connect-timeout-ms",
            "300",
            "--callback-backoff-ms",
            "50",
        ],
        &[],
    );
    let closed = format!("http://127.0.0.1:{}/closed", closed_port());
    let targets = [
        receiver.url("/ok?token=s3cret"),
        receiver.url("/ok2"),
        receiver.url("/fail"),
        receiver.url("/hang"),
        receiver.url("/redirect"),
        closed,
    ];
    let window = sleep_into_next_window(1, 100);
    let mut conns: Vec<_> = (0..4).map(|_| verve.connect()).collect();
    for round in 0..5 {
        for (n, target) in targets.iter().enumerate() {
            let id = n as i64 * 10 + round % 2; // 12 distinct ids, each sent more than once
            let conn = &mut conns[(round as usize + n) % 4];
            let reply = conn.get(&format!(
                "/api/verve/accept?id={id}&endpoint={}",
                encode(target)
            ));
            assert_eq!(reply.status, 200);
        }
    }
    let line = verve.wait_window(window, Duration::from_secs(5));
    assert_eq!(line.count(), 12);

    // While the hanging target holds a worker, accepts are answered at once and the next
    // windows are reported on time.
    let started = Instant::now();
    for id in 100..200 {
        assert_eq!(
            conns[0].get(&format!("/api/verve/accept?id={id}")).status,
            200
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "accepts waited on callbacks"
    );
    verve.wait_window(window + 2, Duration::from_secs(4));

    let [ok, _, fail, hang, redirect, closed] = &targets;
    let done = wait_for(Duration::from_secs(15), || {
        let hang = callback_lines(&verve, hang);
        let closed = callback_lines(&verve, closed);
        (hang.len() == 3 && closed.len() == 3).then_some(())
    });
    assert!(
        done.is_some(),
        "retries did not finish:\n{}",
        verve.log_text()
    );
    std::thread::sleep(Duration::from_millis(300)); // let any stray extra attempt show

    let start = rfc3339(window);
    let body = format!(
        r#"{{"window_start":"{start}","window_secs":1,"unique_requests":12,"scope":"local"}}"#
    );
    let posts = receiver.to("/ok?");
    assert_eq!(posts.len(), 1, "exactly one POST per endpoint per window");
    let post = &posts[0];
    assert_eq!(post.method, "POST");
    assert_eq!(post.path, "/ok?token=s3cret");
    assert_eq!(post.body, body);
    assert_eq!(post.header("content-type"), Some("application/json"));
    assert_eq!(post.header("idempotency-key"), Some(start.as_str()));
    assert!(
        post.header("user-agent")
            .unwrap_or("")
            .starts_with("verve/")
    );
    assert_eq!(receiver.to("/ok2").len(), 1);
    assert_eq!(receiver.to("/fail").len(), 3);
    assert_eq!(receiver.to("/hang").len(), 3);
    assert_eq!(receiver.to("/redirect").len(), 1);
    assert!(
        receiver.to("/landing").is_empty(),
        "a redirect was followed"
    );

    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        attempts(&callback_lines(&verve, ok)),
        pairs(&[("1", "status=200")])
    );
    assert_eq!(
        attempts(&callback_lines(&verve, fail)),
        pairs(&[
            ("1", "status=500"),
            ("2", "status=500"),
            ("3", "status=500")
        ])
    );
    assert_eq!(
        attempts(&callback_lines(&verve, hang)),
        pairs(&[
            ("1", "error=timeout"),
            ("2", "error=timeout"),
            ("3", "error=timeout")
        ])
    );
    assert_eq!(
        attempts(&callback_lines(&verve, closed)),
        pairs(&[
            ("1", "error=connect"),
            ("2", "error=connect"),
            ("3", "error=connect")
        ])
    );
    assert_eq!(
        attempts(&callback_lines(&verve, redirect)),
        pairs(&[("1", "status=302")])
    );
    for line in all_callback_lines(&verve) {
        assert_eq!(line.get("window_start"), start);
        // Only the origin is logged: paths and queries may carry tokens.
        let origin = line.get("endpoint");
        assert!(origin.starts_with("http://127.0.0.1:"), "{}", line.raw);
        assert!(
            !origin["http://".len()..].contains(['/', '?']),
            "{}",
            line.raw
        );
    }
    let log = verve.log_text();
    assert!(!log.contains("s3cret"), "a token reached the count log");
    assert!(!log.contains("/ok"), "a path reached the count log");
    let ok_line = &callback_lines(&verve, ok)[0];
    assert_eq!(ok_line.get("endpoint"), format!("http://{}", receiver.addr));
    assert_eq!(ok_line.get("endpoint_id").len(), 16);
    assert_eq!(
        verve.metric("verve_callback_attempts_total{result=\"delivered\"}"),
        2
    );
    assert_eq!(
        verve.metric("verve_callback_attempts_total{result=\"timeout\"}"),
        3
    );
}

#[test]
fn loopback_targets_are_blocked_without_an_allow_list() {
    let receiver = Receiver::start();
    let verve = Verve::start(&["--window-secs", "1", "--grace-ms", "200"]);
    let by_name = format!("http://localhost:{}/by-name", receiver.addr.port());
    let window = sleep_into_next_window(1, 100);
    for (id, target) in [(1, receiver.url("/by-ip")), (2, by_name)] {
        let reply = verve.get(&format!(
            "/api/verve/accept?id={id}&endpoint={}",
            encode(&target)
        ));
        assert_eq!(reply.status, 200);
    }
    verve.wait_window(window, Duration::from_secs(5));
    let blocked = wait_for(Duration::from_secs(5), || {
        let lines = all_callback_lines(&verve);
        (lines.len() == 2).then_some(lines)
    })
    .unwrap_or_else(|| panic!("no blocked attempts logged:\n{}", verve.log_text()));
    for line in &blocked {
        assert_eq!(
            (line.get("attempt"), line.get("error")),
            ("1", "blocked"),
            "{}",
            line.raw
        );
    }
    verve.wait_window(window + 2, Duration::from_secs(4));
    assert_eq!(
        all_callback_lines(&verve).len(),
        2,
        "a blocked attempt was retried"
    );
    assert!(
        receiver.received().is_empty(),
        "the guard let a request through"
    );
    assert_eq!(
        verve.metric("verve_callback_attempts_total{result=\"blocked\"}"),
        2
    );
}

/// The usual SSRF tricks all land on loopback or the unspecified address: each is either
/// refused as bad input or logged `error=blocked`; the receiver never sees a request.
#[test]
fn ssrf_tricks_are_blocked() {
    let receiver = Receiver::start();
    let verve = Verve::start(&["--window-secs", "1", "--grace-ms", "200"]);
    let port = receiver.addr.port();
    // (trick, its normalized form: IPv4 spellings as dotted quads, no final dot, lower case).
    let tricks = [
        ("2130706433", "127.0.0.1", "decimal"),
        ("0x7f.1", "127.0.0.1", "hex"),
        ("0177.0.0.1", "127.0.0.1", "octal"),
        ("127.1", "127.0.0.1", "short"),
        ("[::1]", "[::1]", "v6-loopback"),
        ("[::]", "[::]", "v6-unspecified"),
        ("0.0.0.0", "0.0.0.0", "v4-unspecified"),
        ("[::ffff:127.0.0.1]", "[::ffff:127.0.0.1]", "v4-mapped"),
        ("localhost.", "localhost", "trailing-dot"),
        ("LOCALHOST", "localhost", "upper-case"),
    ]
    .map(|(host, normalized, path)| {
        (
            format!("http://{host}:{port}/{path}"),
            format!("http://{normalized}:{port}/{path}"),
        )
    });
    let window = sleep_into_next_window(1, 100);
    let mut accepted = Vec::new();
    for (id, (target, normalized)) in tricks.iter().enumerate() {
        let reply = verve.get(&format!(
            "/api/verve/accept?id={id}&endpoint={}",
            encode(target)
        ));
        match reply.status {
            200 => accepted.push((target.rsplit('/').next().unwrap().to_string(), normalized)),
            400 => {}
            other => panic!("{target}: {other}"),
        }
    }
    assert!(!accepted.is_empty());
    verve.wait_window(window, Duration::from_secs(5));
    let lines = wait_for(Duration::from_secs(5), || {
        let lines: Vec<Line> = verve
            .lines()
            .into_iter()
            .filter(|l| l.kind == "callback")
            .collect();
        (lines.len() >= accepted.len()).then_some(lines)
    })
    .unwrap_or_else(|| panic!("attempts missing for {accepted:?}:\n{}", verve.log_text()));
    for (path, normalized) in &accepted {
        let id = endpoint_id(normalized);
        let line = lines
            .iter()
            .find(|l| l.get("endpoint_id") == id)
            .unwrap_or_else(|| panic!("no attempt for {path}:\n{}", verve.log_text()));
        // `localhost.` resolves nowhere on some machines (a failed lookup: `connect`); where
        // it resolves, it is loopback and blocked.
        let allowed: &[&str] = if path == "trailing-dot" {
            &["blocked", "connect"]
        } else {
            &["blocked"]
        };
        assert!(allowed.contains(&line.get("error")), "{}", line.raw);
    }
    thread_sleep_past_retries();
    assert!(
        receiver.received().is_empty(),
        "the guard let a request through: {:?}",
        receiver.received()
    );
}

fn thread_sleep_past_retries() {
    std::thread::sleep(Duration::from_millis(800));
}

/// HMAC-SHA256 of `message` under `key`, base64, computed by `openssl` (not verve's code).
fn openssl_hmac(key: &str, message: &str) -> String {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut hmac = Command::new("sh")
        .args([
            "-c",
            &format!("openssl dgst -sha256 -hmac '{key}' -binary | openssl base64 -A"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl");
    hmac.stdin
        .take()
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    let out = hmac.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn callback_secret_signs_every_post_with_standard_webhooks_headers() {
    if !common::have("openssl") {
        return;
    }
    let receiver = Receiver::start();
    let secret = "correct horse battery staple";
    let verve = Verve::calling_loopback(
        &["--callback-backoff-ms", "50"],
        &[("VERVE_CALLBACK_SECRET", secret)],
    );
    let window = sleep_into_next_window(1, 100);
    accept_with(&verve, 1, &receiver.url("/signed"));
    accept_with(&verve, 2, &receiver.url("/fail-signed"));
    verve.wait_window(window, Duration::from_secs(5));
    let got = wait_for(Duration::from_secs(5), || {
        let got = receiver.received();
        (got.len() >= 4).then_some(got)
    })
    .unwrap_or_else(|| panic!("posts missing: {:?}", receiver.received()));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for post in &got {
        let id = post.header("webhook-id").expect("webhook-id");
        let timestamp = post.header("webhook-timestamp").expect("webhook-timestamp");
        let signature = post.header("webhook-signature").expect("webhook-signature");
        assert_eq!(id, rfc3339(window), "the message id is the window");
        let ts: u64 = timestamp.parse().unwrap();
        assert!(
            ts + 10 >= before && ts <= before + 1,
            "fresh timestamp {ts}"
        );
        let expected = openssl_hmac(secret, &format!("{id}.{timestamp}.{}", post.body));
        assert_eq!(signature, format!("v1,{expected}"), "{post:?}");
    }
    // Retries of the failing endpoint are signed afresh (same id).
    assert!(got.iter().filter(|p| p.path == "/fail-signed").count() >= 3);
}

#[test]
fn without_a_secret_posts_carry_no_signature() {
    let receiver = Receiver::start();
    let verve = Verve::calling_loopback(&[], &[]);
    let window = sleep_into_next_window(1, 100);
    accept_with(&verve, 1, &receiver.url("/plain"));
    verve.wait_window(window, Duration::from_secs(5));
    let got = wait_for(Duration::from_secs(5), || {
        receiver.received().into_iter().next()
    })
    .expect("the POST");
    assert!(got.header("webhook-signature").is_none());
    assert!(got.header("webhook-id").is_none());
}

#[test]
fn callback_hosts_limits_where_callbacks_go() {
    let receiver = Receiver::start();
    let verve = Verve::calling_loopback(&["--callback-hosts", "localhost,*.example.invalid"], &[]);
    let port = receiver.addr.port();
    let window = sleep_into_next_window(1, 100);
    // Answered 200 either way: the id counts.
    accept_with(&verve, 1, &format!("http://localhost:{port}/listed"));
    accept_with(&verve, 2, &format!("http://127.0.0.1:{port}/unlisted"));
    let line = verve.wait_window(window, Duration::from_secs(5));
    assert_eq!(line.count(), 2);
    let got = wait_for(Duration::from_secs(5), || {
        receiver.received().into_iter().next()
    })
    .expect("the listed host's POST");
    assert_eq!(got.path, "/listed");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.received().len(), 1, "{:?}", receiver.received());
    assert!(callback_lines(&verve, &format!("http://127.0.0.1:{port}/unlisted")).is_empty());
    assert_eq!(verve.metric("verve_endpoints_refused_total"), 1);
}

/// A receiver answering with a 1 GiB body: the delivery counts as done on the status line and
/// verve reads (almost) nothing of the body; the connection is dropped.
#[test]
fn huge_response_bodies_are_not_read() {
    let receiver = Receiver::start();
    let verve = Verve::calling_loopback(&[], &[]);
    let window = sleep_into_next_window(1, 100);
    accept_with(&verve, 1, &receiver.url("/huge"));
    verve.wait_window(window, Duration::from_secs(5));
    let attempt = wait_for(Duration::from_secs(5), || {
        callback_lines(&verve, &receiver.url("/huge"))
            .into_iter()
            .next()
    })
    .expect("the attempt is logged");
    assert_eq!(attempt.get("status"), "200", "{}", attempt.raw);
    let sent = wait_for(Duration::from_secs(10), || {
        receiver.received().into_iter().find(|r| r.method == "SENT")
    })
    .expect("the receiver saw the client go away");
    let sent: usize = sent.header("x-sent").unwrap().parse().unwrap();
    // Socket buffers take a few MiB at most; the body was not read.
    assert!(sent < 32 << 20, "verve took {sent} bytes of the body");
    assert_eq!(
        callback_lines(&verve, &receiver.url("/huge")).len(),
        1,
        "not retried"
    );
}

/// A target that answers one byte every 100 ms never lets a single read wait long; the
/// attempt's whole-response timeout still ends it, each retry too, and the worker moves on.
#[test]
fn drip_fed_answers_time_out_as_a_whole() {
    let receiver = Receiver::start();
    let verve = Verve::calling_loopback(
        &[
            "--callback-timeout-ms",
            "800",
            "--callback-attempts",
            "2",
            "--callback-backoff-ms",
            "50",
            "--callback-workers",
            "1",
        ],
        &[],
    );
    let window = sleep_into_next_window(1, 100);
    accept_with(&verve, 1, &receiver.url("/drip"));
    accept_with(&verve, 2, &receiver.url("/ok"));
    verve.wait_window(window, Duration::from_secs(5));
    let reported = Instant::now();
    let done = wait_for(Duration::from_secs(10), || {
        let drip = callback_lines(&verve, &receiver.url("/drip"));
        let ok = callback_lines(&verve, &receiver.url("/ok"));
        (drip.len() == 2 && !ok.is_empty()).then_some(drip)
    })
    .expect("both attempts and the next delivery are logged");
    assert_eq!(
        attempts(&done),
        vec![
            ("1".to_string(), "error=timeout".to_string()),
            ("2".to_string(), "error=timeout".to_string())
        ]
    );
    // A per-read timeout would have let each attempt run the answer's full 4 s.
    assert!(
        reported.elapsed() < Duration::from_secs(3),
        "the attempts took {:?}",
        reported.elapsed()
    );
    assert_eq!(receiver.to("/ok").len(), 1, "the one worker was freed");
    assert_eq!(receiver.to("/drip").len(), 2);
}
