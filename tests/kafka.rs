//! The stream against a real Apache Kafka broker (KRaft, on loopback): one record per window
//! on a single node and across a fleet, and every window delivered, in order and once, across
//! a broker outage; records compressed (zstd, lz4) and sent over TLS with SCRAM. Needs the `kafka` feature; scripts/test.sh runs these with it.
#![cfg(feature = "kafka")]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::kafka::{Kafka, Record, SCRAM_PASSWORD, SCRAM_USER};
use common::{
    Line, Redis, TempDir, Verve, now_ms, rfc3339, send_ids, sleep_into_next_window, wait_for,
};

/// The tests each run a broker (a JVM) and verve instances: one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sleeps until `offset_ms` into the window starting at `start` (epoch seconds).
fn sleep_until(start: i64, offset_ms: i64) {
    let wait = start * 1000 + offset_ms - now_ms();
    if wait > 0 {
        std::thread::sleep(Duration::from_millis(wait as u64));
    }
}

/// Sends `n` distinct ids (each twice) from `base` to `verve` within the window at `start`.
fn fill_window(verve: &Verve, start: i64, base: i64, n: i64) {
    sleep_until(start, 100);
    let ids: Vec<i64> = (base..base + n).chain(base..base + n).collect();
    for (id, status) in send_ids(verve.addr, &ids, 4, "") {
        assert_eq!(status, 200, "id {id}");
    }
}

/// What a record's value must be for a logged window.
fn expected_value(line: &Line, secs: i64) -> String {
    format!(
        r#"{{"window_start":"{}","window_secs":{secs},"unique_requests":{},"scope":"{}"}}"#,
        line.get("window_start"),
        line.count(),
        line.get("scope")
    )
}

/// Stops verve with SIGTERM (it flushes the stream) and returns its complete windows.
fn stop_and_list_windows(verve: &mut Verve) -> Vec<Line> {
    verve.signal("TERM");
    assert!(verve.wait(Duration::from_secs(20)).success());
    verve
        .windows()
        .into_iter()
        .filter(|l| !l.partial())
        .collect()
}

/// Every record matches the window logged at its position: same key, same JSON, versioned.
fn assert_records_match(records: &[Record], windows: &[Line], secs: i64) {
    let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    let want: Vec<&str> = windows.iter().map(|l| l.get("window_start")).collect();
    assert_eq!(keys, want, "record keys vs logged windows");
    for (record, line) in records.iter().zip(windows) {
        assert_eq!(record.value, expected_value(line, secs));
        assert_eq!(record.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    }
}

/// A single node with one-second windows streaming to `topic`, plus `extra` flags.
fn start_streaming(kafka: &Kafka, topic: &str, extra: &[&str]) -> Verve {
    start_streaming_to(&kafka.brokers(), topic, extra, None)
}

/// Like [`start_streaming`], to `brokers`, with stderr to a file if given.
fn start_streaming_to(
    brokers: &str,
    topic: &str,
    extra: &[&str],
    stderr: Option<&std::path::Path>,
) -> Verve {
    let mut args = vec![
        "--window-secs",
        "1",
        "--grace-ms",
        "200",
        "--kafka-brokers",
        brokers,
        "--kafka-topic",
        topic,
    ];
    args.extend_from_slice(extra);
    match stderr {
        Some(path) => Verve::start_with_stderr(&args, &[], path),
        None => Verve::start(&args),
    }
}

#[test]
fn single_node_streams_one_record_per_window() {
    let _serial = serial();
    let Some(kafka) = Kafka::start() else {
        return;
    };
    let topic = "verve.single";
    let mut verve = start_streaming(&kafka, topic, &["--kafka-compression", "zstd"]);
    let first = sleep_into_next_window(1, 100);
    for k in 0..4 {
        fill_window(&verve, first + k, k * 1000, 10 * (k + 1));
    }
    verve.wait_window(first + 4, Duration::from_secs(10));
    let sent = wait_for(Duration::from_secs(20), || {
        let sent = verve.metric("verve_stream_records_sent_total");
        (sent >= verve.windows().len() as u64).then_some(sent)
    });
    assert!(sent.is_some(), "records not acknowledged");
    assert_eq!(verve.metric("verve_stream_records_failed_total"), 0);

    let windows = stop_and_list_windows(&mut verve);
    for k in 0..4 {
        let line = windows
            .iter()
            .find(|l| l.get("window_start") == rfc3339(first + k))
            .expect("window logged");
        assert_eq!(line.count(), 10 * (k as u64 + 1), "{}", line.raw);
    }
    let records = kafka.read(
        topic,
        windows.len(),
        Duration::from_secs(30),
        Duration::from_secs(2),
    );
    assert_records_match(&records, &windows, 1);
    // Sent with zstd, stored with zstd: the broker's own tool reads the codec from its log.
    assert_eq!(
        kafka.stored_codecs(topic).into_iter().collect::<Vec<_>>(),
        ["zstd"],
        "the broker's log should hold zstd batches only"
    );
}

#[test]
fn a_fleet_streams_exactly_one_record_per_window() {
    let _serial = serial();
    let Some(redis) = Redis::start() else {
        return;
    };
    let Some(kafka) = Kafka::start() else {
        return;
    };
    let topic = "verve.fleet";
    let (url, brokers) = (redis.url(), kafka.brokers());
    let args = [
        "--redis-url",
        &url,
        "--window-secs",
        "2",
        "--grace-ms",
        "600",
        "--kafka-brokers",
        &brokers,
        "--kafka-topic",
        topic,
        "--kafka-compression",
        "lz4",
    ];
    let mut a = Verve::start(&args);
    let mut b = Verve::start(&args);
    let first = sleep_into_next_window(2, 100);
    for k in 0..3 {
        // The same ids to both instances: the fleet counts each once.
        let start = first + 2 * k;
        sleep_until(start, 100);
        let ids: Vec<i64> = (k * 1000..k * 1000 + 50 * (k + 1)).collect();
        let (a_addr, b_addr) = (a.addr, b.addr);
        let to_a = std::thread::spawn({
            let ids = ids.clone();
            move || send_ids(a_addr, &ids, 2, "")
        });
        let to_b = send_ids(b_addr, &ids, 2, "");
        let to_a = to_a.join().unwrap();
        assert!(to_a.iter().chain(&to_b).all(|&(_, status)| status == 200));
    }
    a.wait_window(first + 6, Duration::from_secs(12));
    b.wait_window(first + 6, Duration::from_secs(12));
    let sent = wait_for(Duration::from_secs(20), || {
        let sent = a.metric("verve_stream_records_sent_total")
            + b.metric("verve_stream_records_sent_total");
        (sent as usize >= a.windows().len()).then_some(sent)
    });
    assert!(sent.is_some(), "records not acknowledged");

    let mut fleet: BTreeMap<String, Line> = BTreeMap::new();
    for verve in [&mut a, &mut b] {
        for line in stop_and_list_windows(verve) {
            if line.get("scope") == "fleet" {
                fleet.insert(line.get("window_start").to_string(), line);
            }
        }
    }
    for k in 0..3 {
        let line = &fleet[&rfc3339(first + 2 * k)];
        assert_eq!(line.count(), 50 * (k as u64 + 1), "{}", line.raw);
    }
    let windows: Vec<Line> = fleet.into_values().collect();
    let mut records = kafka.read(
        topic,
        windows.len(),
        Duration::from_secs(30),
        Duration::from_secs(3),
    );
    // Two leaders may finish neighbouring windows out of order; one record per window is
    // the contract across a fleet, so compare by key.
    records.sort_by(|x, y| x.key.cmp(&y.key));
    assert_records_match(&records, &windows, 2);
}

#[test]
fn a_broker_outage_delays_records_but_loses_none() {
    let _serial = serial();
    let Some(mut kafka) = Kafka::start() else {
        return;
    };
    let topic = "verve.outage";
    // Reconnect within a second of the broker's return (passed through to librdkafka).
    let mut verve = start_streaming(
        &kafka,
        topic,
        &["--kafka-option", "reconnect.backoff.max.ms=1000"],
    );
    let first = sleep_into_next_window(1, 100);
    fill_window(&verve, first, 0, 5);
    fill_window(&verve, first + 1, 100, 6);
    verve.wait_window(first + 1, Duration::from_secs(10));

    kafka.stop();
    let down = sleep_into_next_window(1, 100);
    for k in 0..4 {
        fill_window(&verve, down + k, 1000 + 100 * k, 7 + k);
    }
    verve.wait_window(down + 3, Duration::from_secs(10));
    // The records wait; accepting and readiness do not.
    assert!(verve.metric("verve_stream_records_buffered") >= 4);
    assert_eq!(verve.get("/readyz").status, 200);
    assert_eq!(verve.get("/api/verve/accept?id=99999").status, 200);

    let buffered = verve.metric("verve_stream_records_buffered");
    let restarted = std::time::Instant::now();
    kafka.restart();
    let up = sleep_into_next_window(1, 100);
    fill_window(&verve, up, 5000, 3);
    verve.wait_window(up + 1, Duration::from_secs(10));
    let drained = wait_for(Duration::from_secs(60), || {
        (verve.metric("verve_stream_records_buffered") == 0).then(|| restarted.elapsed())
    });
    let drained = drained.expect("records still buffered a minute after the broker returned");
    assert_eq!(verve.metric("verve_stream_records_failed_total"), 0);

    let windows = stop_and_list_windows(&mut verve);
    let records = kafka.read(
        topic,
        windows.len(),
        Duration::from_secs(30),
        Duration::from_secs(3),
    );
    // In order, none missing, none twice.
    assert_records_match(&records, &windows, 1);
    eprintln!(
        "outage: {buffered} records buffered while the broker was down; buffer empty {:.1} s \
         after the restart began; {} windows logged, {} records read, in order, none twice",
        drained.as_secs_f64(),
        windows.len(),
        records.len()
    );
}

/// Streams two windows, waits for their acknowledgement and stops; returns the windows.
fn stream_two_windows(verve: &mut Verve) -> Vec<Line> {
    let first = sleep_into_next_window(1, 100);
    fill_window(verve, first, 0, 3);
    fill_window(verve, first + 1, 100, 4);
    verve.wait_window(first + 1, Duration::from_secs(10));
    let sent = wait_for(Duration::from_secs(20), || {
        (verve.metric("verve_stream_records_sent_total") >= verve.windows().len() as u64)
            .then_some(())
    });
    assert!(sent.is_some(), "records not acknowledged");
    assert_eq!(verve.metric("verve_stream_records_failed_total"), 0);
    stop_and_list_windows(verve)
}

#[test]
fn records_go_over_tls_with_scram_and_a_wrong_password_sends_none() {
    let _serial = serial();
    let Some(kafka) = Kafka::start_secure() else {
        return;
    };
    let ca = kafka.ca().display().to_string();
    let options = |password: &str| {
        format!(
            "security.protocol=sasl_ssl,sasl.mechanism=SCRAM-SHA-512,sasl.username={SCRAM_USER},\
             sasl.password={password},ssl.ca.location={ca}"
        )
    };
    let brokers = kafka.secure_brokers();
    let start = |topic: &str, password: &str, stderr: &std::path::Path| {
        let options = options(password);
        let extra = ["--kafka-compression", "zstd", "--kafka-option", &options];
        start_streaming_to(&brokers, topic, &extra, Some(stderr))
    };
    let dir = TempDir::new("kafka-tls");

    let topic = "verve.tls";
    let mut verve = start(topic, SCRAM_PASSWORD, &dir.0.join("good.err"));
    let windows = stream_two_windows(&mut verve);
    let records = kafka.read(
        topic,
        windows.len(),
        Duration::from_secs(30),
        Duration::from_secs(1),
    );
    assert_records_match(&records, &windows, 1);

    // The broker refuses the login: nothing is sent, the count log is written all the same,
    // and the password never reaches the diagnostics.
    let wrong = "not-the-password-4711";
    let err = dir.0.join("wrong.err");
    let mut refused = start("verve.tls-refused", wrong, &err);
    let first = sleep_into_next_window(1, 100);
    fill_window(&refused, first, 0, 5);
    fill_window(&refused, first + 1, 100, 6);
    refused.wait_window(first + 2, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(refused.metric("verve_stream_records_sent_total"), 0);
    assert!(refused.metric("verve_stream_records_buffered") >= 2);
    let logged = refused.windows();
    assert!(
        logged
            .iter()
            .any(|l| l.get("window_start") == rfc3339(first) && l.count() == 5),
        "{logged:?}"
    );
    refused.signal("TERM");
    assert!(refused.wait(Duration::from_secs(20)).success());
    let diagnostics = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        diagnostics.to_lowercase().contains("authentication"),
        "librdkafka's refusal should be reported:\n{diagnostics}"
    );
    assert!(
        !diagnostics.contains(wrong),
        "password leaked:\n{diagnostics}"
    );
    assert!(
        kafka
            .read(
                "verve.tls-refused",
                1,
                Duration::from_secs(3),
                Duration::ZERO
            )
            .is_empty()
    );
}
