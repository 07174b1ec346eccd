//! Bad input is answered as SPEC §2 says and changes nothing: not counted, not registered.

mod common;

use std::time::Duration;

use common::{Receiver, Verve, encode, now_ms, sleep_into_next_window, wait_for};

#[test]
fn bad_inputs_are_refused_and_change_nothing() {
    let receiver = Receiver::start();
    let verve = Verve::start(&[
        "--window-secs",
        "2",
        "--grace-ms",
        "200",
        "--callback-allow",
        "127.0.0.0/8",
    ]);
    let port = receiver.addr.port();
    let host = format!("127.0.0.1:{port}");
    let long_endpoint = format!("http://{host}/long/{}", "x".repeat(2100));
    let accept = "/api/verve/accept";
    // (method, target, status). Every id here is one that must never be counted.
    let table: Vec<(&str, String, u16)> = vec![
        ("GET", accept.to_string(), 400),
        ("GET", format!("{accept}?"), 400),
        ("GET", format!("{accept}?id="), 400),
        ("GET", format!("{accept}?id"), 400),
        ("GET", format!("{accept}?id=abc"), 400),
        ("GET", format!("{accept}?id=12a"), 400),
        ("GET", format!("{accept}?id=9223372036854775808"), 400),
        ("GET", format!("{accept}?id=-9223372036854775809"), 400),
        ("GET", format!("{accept}?id=+1001"), 400),
        ("GET", format!("{accept}?id=%2B1001"), 400),
        ("GET", format!("{accept}?id=%201001"), 400),
        ("GET", format!("{accept}?id=1001%20"), 400),
        ("GET", format!("{accept}?id=1e3"), 400),
        ("GET", format!("{accept}?id=1001.0"), 400),
        ("GET", format!("{accept}?id=0x3E9"), 400),
        ("GET", format!("{accept}?id=1001&id=1002"), 400),
        ("GET", format!("{accept}?id=1001&id=1001"), 400),
        ("GET", format!("{accept}?id=%zz"), 400),
        ("GET", format!("{accept}?id=100%3"), 400),
        ("GET", format!("{accept}?id=%E0%A4"), 400),
        (
            "GET",
            format!("{accept}?other=1&endpoint=http://{host}/no-id"),
            400,
        ),
        ("GET", format!("{accept}?id=1003&endpoint="), 400),
        ("GET", format!("{accept}?id=1004&endpoint"), 400),
        ("GET", format!("{accept}?id=1005&endpoint=not-a-url"), 400),
        (
            "GET",
            format!("{accept}?id=1006&endpoint=/relative/path"),
            400,
        ),
        (
            "GET",
            format!("{accept}?id=1007&endpoint=ftp://{host}/ftp"),
            400,
        ),
        (
            "GET",
            format!("{accept}?id=1008&endpoint=http://user:pw@{host}/userinfo"),
            400,
        ),
        (
            "GET",
            format!(
                "{accept}?id=1009&endpoint={}",
                encode(&format!("http://user@{host}/userinfo2"))
            ),
            400,
        ),
        (
            "GET",
            format!("{accept}?id=1010&endpoint={long_endpoint}"),
            400,
        ),
        (
            "GET",
            format!("{accept}?id=1011&endpoint=http://{host}/dup1&endpoint=http://{host}/dup2"),
            400,
        ),
        (
            "GET",
            format!("{accept}?id=1012&endpoint=http://{host}/bad%zz"),
            400,
        ),
        (
            "GET",
            format!(
                "{accept}?id=1013&endpoint={}%E0%A4",
                encode(&format!("http://{host}/utf8"))
            ),
            400,
        ),
        ("GET", format!("{accept}?id=1014&endpoint=http://"), 400),
        (
            "GET",
            format!("{accept}?id=1015&endpoint=javascript:alert(1)"),
            400,
        ),
        (
            "GET",
            format!("{accept}?id=1016&endpoint=http://127.0.0.1:99999/port"),
            400,
        ),
        (
            "GET",
            format!("{accept}?id=1017&endpoint=https:///nohost"),
            400,
        ),
        ("HEAD", format!("{accept}?id=1018"), 405),
        ("POST", format!("{accept}?id=1019"), 405),
        ("DELETE", format!("{accept}?id=1020"), 405),
        (
            "GET",
            format!("{accept}?id=1021&pad={}", "p".repeat(9000)),
            414,
        ),
        (
            "GET",
            format!("{accept}x?id=1022&endpoint=http://{host}/not-found"),
            404,
        ),
    ];
    assert!(table.len() >= 30);

    let window = sleep_into_next_window(2, 50);
    let mut conn = verve.connect();
    for (method, target, status) in &table {
        let reply = conn.request(method, target);
        assert_eq!(reply.status, *status, "{method} {target:.120}");
        if *method != "HEAD" {
            assert_eq!(reply.body, "failed", "{method} {target:.120}");
        }
        if *status == 405 {
            assert_eq!(reply.header("allow"), Some("GET"));
        }
        if *status != 404 {
            assert_eq!(reply.header("content-type"), Some("text/plain"));
        }
    }
    // Two valid requests in the same window: the only ids and the only endpoint counted.
    assert_eq!(conn.get("/api/verve/accept?id=1").body, "ok");
    let good = encode(&format!("http://{host}/good"));
    assert_eq!(
        conn.get(&format!("/api/verve/accept?id=2&endpoint={good}"))
            .body,
        "ok"
    );
    assert!(
        now_ms() < (window + 2) * 1000,
        "requests spilled over the window"
    );

    let line = verve.wait_window(window, Duration::from_secs(6));
    assert_eq!(line.count(), 2, "bad requests were counted: {}", line.raw);
    wait_for(Duration::from_secs(5), || {
        (!receiver.to("/good").is_empty()).then_some(())
    })
    .expect("the valid endpoint was called");
    verve.wait_window(window + 2, Duration::from_secs(6));
    let paths: Vec<String> = receiver.received().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        vec!["/good".to_string()],
        "a refused endpoint was registered"
    );
    assert_eq!(verve.metric("verve_requests_total{status=\"400\"}"), 36);
}
