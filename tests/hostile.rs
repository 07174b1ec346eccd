//! Hostile callers (SPEC §2, §4.1, §4.2, §7): endpoints that try to forge or split count-log
//! lines are refused or normalized, nothing a caller sends leaves the log's grammar, no
//! message prints a secret, and shutdown never answers `ok` after the open window's line.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Receiver, Tarpit, Verve, endpoint_id, sleep_into_next_window, wait_for};

/// Every line of a count log follows SPEC §4.1: `<RFC 3339 ms> INFO <kind> key=value…`, each
/// word visible ASCII, single spaces; a window line holds its four fields.
fn assert_log_grammar(text: &str) {
    assert!(text.is_empty() || text.ends_with('\n'), "unterminated line");
    for line in text.lines() {
        assert!(
            line.bytes()
                .all(|b| b == b' ' || (0x21..=0x7e).contains(&b)),
            "a byte outside visible ASCII: {line:?}"
        );
        let words: Vec<&str> = line.split(' ').collect();
        assert!(
            words.len() >= 4 && words.iter().all(|w| !w.is_empty()),
            "{line:?}"
        );
        let ts = words[0].as_bytes();
        let shape = ts.len() == 24
            && ts[4] == b'-'
            && ts[10] == b'T'
            && ts[19] == b'.'
            && ts[23] == b'Z'
            && ts
                .iter()
                .enumerate()
                .all(|(i, b)| matches!(i, 4 | 7 | 10 | 13 | 16 | 19 | 23) || b.is_ascii_digit());
        assert!(shape, "timestamp {:?} in {line:?}", words[0]);
        assert_eq!(words[1], "INFO", "{line:?}");
        assert!(
            matches!(words[2], "unique_requests" | "callback"),
            "kind {:?} in {line:?}",
            words[2]
        );
        let mut keys = HashSet::new();
        for word in &words[3..] {
            let (key, value) = word
                .split_once('=')
                .unwrap_or_else(|| panic!("{word:?} is not key=value in {line:?}"));
            assert!(
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "key {key:?} in {line:?}"
            );
            assert!(!value.is_empty(), "empty value in {line:?}");
            assert!(keys.insert(key), "{key} twice in {line:?}");
        }
        if words[2] == "unique_requests" {
            for key in ["window_start", "window_secs", "unique_requests", "scope"] {
                assert!(keys.contains(key), "no {key} in {line:?}");
            }
        }
    }
}

#[test]
fn hostile_endpoints_are_refused_or_normalized_and_never_forge_a_line() {
    let receiver = Receiver::start();
    let verve = Verve::start(&[
        "--window-secs",
        "2",
        "--grace-ms",
        "200",
        "--callback-allow",
        "127.0.0.0/8",
        "--callback-attempts",
        "1",
        "--callback-timeout-ms",
        "1000",
    ]);
    let here = receiver.addr;
    let port = here.port();
    // (raw `endpoint` value as sent in the query, what it must become: None = 400).
    let forged = "%0A2026-11-24T14:06:01.004Z%20INFO%20unique_requests%20\
                  window_start=2026-11-24T14:05:00Z%20window_secs=60%20\
                  unique_requests=999999%20scope=local%0A";
    let table: Vec<(String, Option<String>)> = vec![
        // The report's forgery: a fragment holding a whole count line.
        (format!("http://example.invalid/x%23{forged}"), None),
        (format!("http://example.invalid/x{forged}"), None),
        (format!("http://{here}/lf%0Aunique_requests=1"), None),
        (format!("http://{here}/cr%0D"), None),
        (format!("http://{here}/crlf%0D%0Ax"), None),
        (format!("http://{here}/nul%00"), None),
        (format!("http://{here}/tab%09x"), None),
        (format!("http://{here}/space%20x=1"), None),
        (format!("http://{here}/del%7F"), None),
        (format!("http://{here}/esc%1B%5B2J%1B%5B31m"), None),
        (format!("http://{here}/vt%0Bff%0C"), None),
        (format!("http://{here}/nel%C2%85"), None),
        (format!("http://{here}/ls%E2%80%A8"), None),
        (format!("http://{here}/ps%E2%80%A9"), None),
        (format!("http://{here}/overlong%C0%8A"), None),
        (format!("http://{here}/latin1%FF"), None),
        (format!("http://{here}/cut%E2%80"), None),
        (format!("http://{here}/frag%23top"), None),
        (format!("http://{here}/empty-frag%23"), None),
        (format!("%0Ahttp://{here}/lead"), None),
        ("http://exa%0Ample.invalid/host-lf".to_string(), None),
        ("http://%E4%BE%8B.invalid/idn".to_string(), None),
        ("http://exa%20mple.invalid/".to_string(), None),
        (format!("http://u:p@{here}/userinfo"), None),
        (format!("http://{here}/%3Cscript%3E"), None),
        (format!("http://{here}/bad-escape%25zz"), None),
        (format!("http://{here}/bad-query-escape%zz"), None),
        ("http://a%5Cb.invalid/backslash".to_string(), None),
        // Escapes the URL itself carries are visible ASCII: normalized, POSTed as they are.
        (
            format!("http://{here}/dbl%250A"),
            Some(format!("http://{here}/dbl%0A")),
        ),
        (
            format!("http://{here}/triple%2525250A"),
            Some(format!("http://{here}/triple%25250A")),
        ),
        // Hosts ending in a number that are no IPv4 address.
        ("http://1.2.3.4.5/five-parts".to_string(), None),
        ("http://999.1.1.1/too-big".to_string(), None),
        ("http://example.123/numeric-tld".to_string(), None),
        // Spellings of one target: one endpoint, one POST.
        (
            format!("http://{here}/same"),
            Some(format!("http://{here}/same")),
        ),
        (
            format!("http://127.1:{port}/same"),
            Some(format!("http://{here}/same")),
        ),
        (
            format!("http://2130706433:{port}/same"),
            Some(format!("http://{here}/same")),
        ),
        (
            format!("http://0177.0.0.1:{port}/same"),
            Some(format!("http://{here}/same")),
        ),
        (
            format!("http://0x7F.0.0.1:{port}/same"),
            Some(format!("http://{here}/same")),
        ),
        (
            format!("http://017700000001:{port}/same"),
            Some(format!("http://{here}/same")),
        ),
        (
            format!("http://127.0.0.1.:{port}/same"),
            Some(format!("http://{here}/same")),
        ),
        (
            format!("HTTP://{here}/same"),
            Some(format!("http://{here}/same")),
        ),
        (
            format!("hTTp%3A%2F%2F{here}%2Fsame"),
            Some(format!("http://{here}/same")),
        ),
        (
            format!("http://{here}?q=1"),
            Some(format!("http://{here}/?q=1")),
        ),
        (
            "http://EXAMPLE.invalid:80/x".to_string(),
            Some("http://example.invalid/x".to_string()),
        ),
        (
            "http://example.invalid:/x".to_string(),
            Some("http://example.invalid/x".to_string()),
        ),
        (
            "http://example.invalid/x".to_string(),
            Some("http://example.invalid/x".to_string()),
        ),
        (
            "https://Example.Invalid:443".to_string(),
            Some("https://example.invalid/".to_string()),
        ),
    ];
    assert!(table.iter().filter(|(_, want)| want.is_none()).count() >= 25);

    let window = sleep_into_next_window(2, 50);
    let mut conn = verve.connect();
    let mut counted = 0;
    for (n, (raw, want)) in table.iter().enumerate() {
        let reply = conn.get(&format!("/api/verve/accept?id={n}&endpoint={raw}"));
        let status = if want.is_some() { 200 } else { 400 };
        assert_eq!(reply.status, status, "endpoint {raw}");
        counted += usize::from(want.is_some());
    }
    let line = verve.wait_window(window, Duration::from_secs(6));
    assert_eq!(
        line.count(),
        counted as u64,
        "a refused request was counted"
    );

    let posted = [
        "/dbl%0A".to_string(),
        "/triple%25250A".to_string(),
        "/same".to_string(),
        "/?q=1".to_string(),
    ];
    wait_for(Duration::from_secs(5), || {
        (receiver.received().len() >= posted.len()).then_some(())
    })
    .unwrap_or_else(|| panic!("POSTs missing: {:?}", receiver.received()));
    std::thread::sleep(Duration::from_millis(500));
    let mut paths: Vec<String> = receiver.received().into_iter().map(|r| r.path).collect();
    paths.sort();
    let mut want = posted.to_vec();
    want.sort();
    assert_eq!(
        paths, want,
        "one POST per normalized endpoint, nothing else"
    );

    // The unreachable spellings are one endpoint each: one attempt line apiece.
    let unreachable = ["http://example.invalid/x", "https://example.invalid/"];
    let attempts = wait_for(Duration::from_secs(8), || {
        let lines: Vec<_> = verve
            .lines()
            .into_iter()
            .filter(|l| l.kind == "callback")
            .collect();
        (lines.len() >= posted.len() + unreachable.len()).then_some(lines)
    })
    .unwrap_or_else(|| panic!("attempts missing:\n{}", verve.log_text()));
    for url in unreachable {
        let id = endpoint_id(url);
        let lines: Vec<_> = attempts
            .iter()
            .filter(|l| l.get("endpoint_id") == id)
            .collect();
        assert_eq!(lines.len(), 1, "{url}: {lines:?}");
        let origin = &url[..url[8..].find('/').unwrap() + 8];
        assert_eq!(lines[0].get("endpoint"), origin);
    }
    verve.wait_window(window + 2, Duration::from_secs(6));
    let text = verve.log_text();
    assert_log_grammar(&text);
    assert!(
        !text.contains("999999"),
        "a forged count reached the log:\n{text}"
    );
    let windows = verve.windows();
    let starts: HashSet<&str> = windows.iter().map(|l| l.get("window_start")).collect();
    assert_eq!(
        starts.len(),
        windows.len(),
        "a window was logged twice:\n{text}"
    );
}

#[test]
fn no_message_prints_a_secret() {
    let secrets = [
        ("VERVE_REDIS_URL", "redis://app:hunter2redis@127.0.0.1:1"),
        ("VERVE_CALLBACK_SECRET", "whsec_c2VjcmV0c2lnbmluZ2tleQ=="),
        (
            "VERVE_KAFKA_OPTIONS",
            "sasl.username=kafkauser7,sasl.password=kafkapass9",
        ),
        ("VERVE_HASH_KEY", "hashkeysecret42hashkey"),
    ];
    let values = [
        "hunter2redis",
        "c2VjcmV0c2lnbmluZ2tleQ",
        "kafkauser7",
        "kafkapass9",
        "hashkeysecret42",
    ];
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_verve"))
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .output()
            .expect("run verve");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, help) = run(&["--help"], &secrets);
    assert_eq!(code, Some(0));
    assert!(help.contains("VERVE_REDIS_URL"), "{help}");
    for value in values {
        assert!(!help.contains(value), "--help printed {value}:\n{help}");
    }
    // Start-up errors: Redis unreachable with a password in its URL; malformed secret flags.
    let dir = common::TempDir::new("secrets");
    let log = dir.0.join("requests.log");
    let log = log.to_str().unwrap();
    let listen = ["--listen", "127.0.0.1:0", "--log-file", log];
    // (arguments, environment, the secret that must not show).
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (listen.to_vec(), vec![secrets[0]], "hunter2redis"),
        (
            [
                &listen[..],
                &["--redis-url", "redis://u:hunter2flag@127.0.0.1:1"],
            ]
            .concat(),
            vec![],
            "hunter2flag",
        ),
        (
            [&listen[..], &["--kafka-option", "sasl.password:kafkapass9"]].concat(),
            vec![],
            "kafkapass9",
        ),
        (
            [&listen[..], &["--hash-key", "short42key"]].concat(),
            vec![],
            "short42key",
        ),
        (
            [
                &listen[..],
                &["--callback-secret", "whsec_not!base64secret"],
            ]
            .concat(),
            vec![],
            "not!base64secret",
        ),
        (
            listen.to_vec(),
            vec![("VERVE_REDIS_URL", "http://u:hunter2scheme@h")],
            "hunter2scheme",
        ),
    ];
    for (args, env, secret) in cases {
        let (code, text) = run(&args, &env);
        assert_ne!(code, Some(0), "{args:?} started:\n{text}");
        assert!(
            text.starts_with("verve: ") || text.contains("\nverve: "),
            "{text}"
        );
        assert!(
            !text.contains(secret),
            "{args:?} printed the secret:\n{text}"
        );
    }
}

/// A slow client still sending its head and a callback target that never answers (keeping
/// the process alive for the shutdown deadline): the head completed after the open window's
/// line gets no `ok`, the id is in no count, and the exit stays within the deadline.
#[test]
fn shutdown_never_answers_ok_after_the_partial_line() {
    let tarpit = Tarpit::start(&[std::net::Ipv4Addr::LOCALHOST]);
    let mut verve = Verve::start(&[
        "--window-secs",
        "2",
        "--grace-ms",
        "200",
        "--callback-allow",
        "127.0.0.0/8",
        "--callback-timeout-ms",
        "5000",
        "--shutdown-timeout-ms",
        "1500",
        "--header-read-timeout-ms",
        "30000",
    ]);
    let window = sleep_into_next_window(2, 100);
    let hook = format!("http://127.0.0.1:{}/never", tarpit.port);
    let reply = verve.get(&format!("/api/verve/accept?id=1&endpoint={hook}"));
    assert_eq!(reply.status, 200);
    verve.wait_window(window, Duration::from_secs(6));
    // The window's callback now hangs on the tarpit. A client starts a request head.
    let mut slow = TcpStream::connect(verve.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(b"GET /api/verve/accept?id=777 HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let signalled = Instant::now();
    verve.signal("TERM");
    let partial = wait_for(Duration::from_secs(8), || {
        verve.windows().into_iter().find(|l| l.partial())
    })
    .unwrap_or_else(|| panic!("no partial line:\n{}", verve.log_text()));
    assert_eq!(partial.get("reason"), "shutdown", "{}", partial.raw);
    // The head completes after the partial line was written.
    let _ = slow.write_all(b"X-Late: 1\r\n\r\n");
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "answered after the partial line:\n{answer}"
    );
    let status = verve.wait(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    let took = signalled.elapsed();
    // Listener drain (1.5 s), then due callbacks (1.5 s), plus the grace and slack.
    assert!(took < Duration::from_millis(5000), "exit took {took:?}");
    for line in verve.windows() {
        assert!(line.count() <= 1, "id 777 was counted: {}", line.raw);
    }
    assert_log_grammar(&verve.log_text());
}

/// Diagnostics at every level keep a callback's path and query (its tokens) out: the HTTP
/// client prints whole request targets at trace level, and verve holds those records back.
#[test]
fn trace_diagnostics_never_show_callback_tokens() {
    let receiver = Receiver::start();
    let dir = common::TempDir::new("trace");
    let stderr = dir.0.join("stderr");
    let verve = Verve::start_with_stderr(
        &[
            "--window-secs",
            "1",
            "--grace-ms",
            "200",
            "--callback-allow",
            "127.0.0.0/8",
        ],
        &[
            ("RUST_LOG", "trace"),
            ("VERVE_CALLBACK_SECRET", "whsec_c2VjcmV0c2lnbmluZ2tleQ=="),
        ],
        &stderr,
    );
    let window = sleep_into_next_window(1, 100);
    let hook = receiver.url("/hook/PathTok789?sig=QueryTok000");
    let reply = verve.get(&format!(
        "/api/verve/accept?id=1&endpoint={}",
        common::encode(&hook)
    ));
    assert_eq!(reply.status, 200);
    verve.wait_window(window, Duration::from_secs(5));
    wait_for(Duration::from_secs(5), || {
        (!receiver.to("/hook/").is_empty()).then_some(())
    })
    .expect("the POST");
    std::thread::sleep(Duration::from_millis(300));
    let diagnostics = std::fs::read_to_string(&stderr).unwrap();
    assert!(!diagnostics.is_empty(), "nothing logged at trace level");
    for token in ["PathTok789", "QueryTok000", "c2VjcmV0c2lnbmluZ2tleQ"] {
        assert!(
            !diagnostics.contains(token),
            "stderr shows {token}:\n{diagnostics}"
        );
    }
    assert!(!verve.log_text().contains("PathTok789"));
}
