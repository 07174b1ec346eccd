//! The container image against a real Kafka broker: the static binary in `verve:latest`
//! streams each window over TLS (a private CA mounted into the container) with SCRAM-SHA-512
//! and zstd, and the record is read back. Run by `scripts/container.sh test` once it has built
//! the image (`--ignored`; `VERVE_IMAGE` names another image).
#![cfg(feature = "kafka")]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::kafka::{Kafka, SCRAM_PASSWORD, SCRAM_USER};
use common::{TempDir, free_port, read_log, rfc3339, run_ok, send_ids, sleep_into_next_window};

/// A container started by the test, removed when the test ends.
struct Container(String);

impl Container {
    fn run(image: &str, args: &[String]) -> Self {
        let name = format!("verve-image-test-{}", std::process::id());
        let _ = Command::new("podman").args(["rm", "-f", &name]).output();
        let mut run = Command::new("podman");
        // podman's default runtime (crun) fails in these VMs: runc with explicit ulimits.
        run.args(["--runtime", "/usr/sbin/runc", "run", "-d", "--name", &name])
            .args(["--network", "host"])
            .args([
                "--ulimit",
                "nofile=4096:4096",
                "--ulimit",
                "nproc=4096:4096",
            ])
            .args(args)
            .arg(image);
        run_ok(&mut run, "podman run");
        Self(name)
    }

    fn logs(&self) -> String {
        let out = Command::new("podman")
            .args(["logs", &self.0])
            .output()
            .expect("podman logs");
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout)
    }

    /// Stops it with SIGTERM and returns its exit code.
    fn stop(&self) -> String {
        run_ok(
            Command::new("podman").args(["stop", "-t", "20", &self.0]),
            "podman stop",
        );
        let out = run_ok(
            Command::new("podman").args(["inspect", &self.0, "--format", "{{.State.ExitCode}}"]),
            "podman inspect",
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", &self.0]).output();
    }
}

#[test]
#[ignore = "needs the image: scripts/container.sh test runs it"]
fn the_image_streams_over_tls_with_scram_and_zstd() {
    let image = std::env::var("VERVE_IMAGE").unwrap_or_else(|_| "localhost/verve:latest".into());
    let kafka = Kafka::start_secure().expect("a Kafka broker (java and scripts/kafka-libs.sh)");
    let data = TempDir::new("image-data");
    std::fs::set_permissions(&data.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let port = free_port();
    let topic = "verve.image";
    let env = [
        format!("VERVE_LISTEN=127.0.0.1:{port}"),
        "VERVE_WINDOW_SECS=1".into(),
        "VERVE_GRACE_MS=200".into(),
        format!("VERVE_KAFKA_BROKERS={}", kafka.secure_brokers()),
        format!("VERVE_KAFKA_TOPIC={topic}"),
        "VERVE_KAFKA_COMPRESSION=zstd".into(),
        format!(
            "VERVE_KAFKA_OPTIONS=security.protocol=sasl_ssl,sasl.mechanism=SCRAM-SHA-512,\
             sasl.username={SCRAM_USER},sasl.password={SCRAM_PASSWORD},\
             ssl.ca.location=/etc/verve/kafka-ca.crt"
        ),
    ];
    let mut args = vec![
        "-v".to_string(),
        format!("{}:/data", data.0.display()),
        "-v".to_string(),
        format!("{}:/etc/verve/kafka-ca.crt:ro", kafka.ca().display()),
    ];
    for e in env {
        args.push("-e".into());
        args.push(e);
    }
    let container = Container::run(&image, &args);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ready = common::wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).ok()
    });
    assert!(ready.is_some(), "not listening:\n{}", container.logs());

    let first = sleep_into_next_window(1, 100);
    let ids: Vec<i64> = (1..=7).chain(1..=7).collect();
    for (id, status) in send_ids(addr, &ids, 2, "") {
        assert_eq!(status, 200, "id {id}");
    }
    let log = data.0.join("requests.log");
    let line = common::wait_for(Duration::from_secs(10), || {
        read_log(&log)
            .into_iter()
            .find(|l| l.get("window_start") == rfc3339(first))
    })
    .unwrap_or_else(|| panic!("no line for the window:\n{}", container.logs()));
    assert_eq!(line.count(), 7, "{}", line.raw);

    // Every window logged so far (empty ones before the ids included) has its record.
    let logged = read_log(&log).iter().filter(|l| !l.partial()).count();
    let records = kafka.read(topic, logged, Duration::from_secs(30), Duration::ZERO);
    let record = records
        .iter()
        .find(|r| r.key == rfc3339(first))
        .unwrap_or_else(|| {
            panic!(
                "no record for the window: {records:?}\n{}",
                container.logs()
            )
        });
    assert_eq!(
        record.value,
        format!(
            r#"{{"window_start":"{}","window_secs":1,"unique_requests":7,"scope":"local"}}"#,
            rfc3339(first)
        )
    );
    assert_eq!(container.stop(), "0", "{}", container.logs());
    assert!(kafka.stored_codecs(topic).contains("zstd"));
    eprintln!(
        "image {image}: window of 7 ids streamed over SASL_SSL (SCRAM-SHA-512, zstd), read back: {}",
        record.value
    );
}
