//! A real Apache Kafka broker (KRaft, one combined broker+controller node) on free loopback
//! ports, run from the Maven Central jars that scripts/kafka-libs.sh puts in
//! .cache/kafka-libs, and a consumer that reads a topic back.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{TempDir, free_port, have, make_certificates, run_ok, wait_for};

/// How long a broker gets to print its start-up line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Kafka {
    pub port: u16,
    controller_port: u16,
    libs: PathBuf,
    dir: TempDir,
    child: Option<Child>,
    /// Start-ups so far: each one's output goes to its own file.
    launches: usize,
    /// The SASL_SSL listener's port, when started with [`Kafka::start_secure`].
    pub secure_port: Option<u16>,
}

/// The SCRAM-SHA-512 user of a secure broker, and its password.
pub const SCRAM_USER: &str = "verve";
pub const SCRAM_PASSWORD: &str = "verve-scram-secret";
/// The broker's PKCS#12 key store password.
const KEYSTORE_PASSWORD: &str = "verve-test";

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub value: String,
    /// The `verve-version` header.
    pub version: Option<String>,
}

impl Kafka {
    /// Formats a fresh log directory and starts the broker; `None` (outside CI) when java or
    /// the jars are missing.
    pub fn start() -> Option<Self> {
        Self::start_with(false)
    }

    /// Like [`Kafka::start`], with a second listener, SASL_SSL: TLS with a certificate for
    /// 127.0.0.1 signed by a fresh private CA ([`Kafka::ca`]), and SCRAM-SHA-512 for
    /// [`SCRAM_USER`]. The PLAINTEXT listener stays, for the test's consumer.
    pub fn start_secure() -> Option<Self> {
        Self::start_with(true)
    }

    fn start_with(secure: bool) -> Option<Self> {
        let libs = std::env::var_os("VERVE_KAFKA_LIBS").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/kafka-libs"),
            PathBuf::from,
        );
        if !have("java") {
            return None;
        }
        if std::fs::read_dir(&libs).map_or(0, |d| d.count()) < 10 {
            assert!(
                std::env::var_os("CI").is_none(),
                "no Kafka jars in {} (scripts/kafka-libs.sh fetches them)",
                libs.display()
            );
            eprintln!(
                "skipping: no Kafka jars in {} (run scripts/kafka-libs.sh)",
                libs.display()
            );
            return None;
        }
        let dir = TempDir::new("kafka");
        let kafka = Self {
            port: free_port(),
            controller_port: free_port(),
            libs,
            dir,
            child: None,
            launches: 0,
            secure_port: secure.then(free_port),
        };
        let mut properties = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{c}\n\
             listeners=PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{p}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
             log.dirs={logs}\n\
             num.partitions=1\n\
             auto.create.topics.enable=true\n\
             offsets.topic.replication.factor=1\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n",
            c = kafka.controller_port,
            p = kafka.port,
            logs = kafka.dir.0.join("data").display(),
        );
        let mut format = kafka.java();
        format
            .args(["kafka.tools.StorageTool", "format", "-t"])
            .arg("dmVydmUtdGVzdC1jbHVzdGVy")
            .arg("-c")
            .arg(kafka.properties());
        if let Some(secure) = kafka.secure_port {
            let (p, c) = (kafka.port, kafka.controller_port);
            properties = properties
                .replace(
                    &format!("listeners=PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}\n"),
                    &format!("listeners=PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c},SASL_SSL://127.0.0.1:{secure}\n"),
                )
                .replace(
                    &format!("advertised.listeners=PLAINTEXT://127.0.0.1:{p}\n"),
                    &format!("advertised.listeners=PLAINTEXT://127.0.0.1:{p},SASL_SSL://127.0.0.1:{secure}\n"),
                )
                .replace(
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL\n",
                );
            make_certificates(&kafka.dir.0);
            let path = |f: &str| kafka.dir.0.join(f).display().to_string();
            run_ok(
                Command::new("openssl").args([
                    "pkcs12",
                    "-export",
                    "-in",
                    &path("server.crt"),
                    "-inkey",
                    &path("server.key"),
                    "-name",
                    "kafka",
                    "-passout",
                    &format!("pass:{KEYSTORE_PASSWORD}"),
                    "-out",
                    &path("server.p12"),
                ]),
                "openssl pkcs12 -export",
            );
            properties.push_str(&format!(
                "sasl.enabled.mechanisms=SCRAM-SHA-512\n\
                 listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
                 ssl.keystore.type=PKCS12\n\
                 ssl.keystore.location={keystore}\n\
                 ssl.keystore.password={KEYSTORE_PASSWORD}\n\
                 ssl.key.password={KEYSTORE_PASSWORD}\n",
                keystore = path("server.p12"),
            ));
            format.arg("--add-scram").arg(format!(
                "SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]"
            ));
        }
        std::fs::write(kafka.properties(), properties).expect("write server.properties");
        run_ok(&mut format, "kafka-storage format");
        let mut kafka = kafka;
        kafka.launch();
        Some(kafka)
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The SASL_SSL listener, of a broker started with [`Kafka::start_secure`].
    pub fn secure_brokers(&self) -> String {
        format!("127.0.0.1:{}", self.secure_port.expect("a secure broker"))
    }

    /// The compression codecs of the batches stored for partition 0 of `topic`, as the
    /// broker's own `DumpLogSegments` reads them from its log files (`zstd`, `none`, ...).
    pub fn stored_codecs(&self, topic: &str) -> std::collections::BTreeSet<String> {
        let dir = self.dir.0.join("data").join(format!("{topic}-0"));
        let segments: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        let files = segments
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(",");
        let out = run_ok(
            self.java()
                .args(["kafka.tools.DumpLogSegments", "--files"])
                .arg(files),
            "DumpLogSegments",
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "compresscodec:")
            .map(|w| w[1].to_lowercase())
            .collect()
    }

    /// The private CA that signed a secure broker's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.0.join("ca.crt")
    }

    fn properties(&self) -> PathBuf {
        self.dir.0.join("server.properties")
    }

    fn java(&self) -> Command {
        let mut java = Command::new("java");
        java.args(["-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"])
            .arg(format!(
                "-Dlog4j2.configurationFile={}/scripts/kafka/log4j2.properties",
                env!("CARGO_MANIFEST_DIR")
            ))
            .arg("-cp")
            .arg(format!("{}/*", self.libs.display()));
        java
    }

    fn launch(&mut self) {
        self.launches += 1;
        let out_path = self.dir.0.join(format!("broker-{}.out", self.launches));
        let out = std::fs::File::create(&out_path).expect("broker output file");
        let child = self
            .java()
            .arg("kafka.Kafka")
            .arg(self.properties())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn the Kafka broker");
        self.child = Some(child);
        let started = wait_for(START_TIMEOUT, || {
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            text.contains("Kafka Server started").then_some(())
        });
        if started.is_none() {
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            panic!("Kafka did not start; last lines:\n{}", tail.join("\n"));
        }
    }

    /// Stops the broker with SIGTERM (a clean shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped broker again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Reads `topic` (one partition) from the start until `expected` records arrived, then for
    /// `linger` more to catch any extra; returns every record, in order.
    pub fn read(
        &self,
        topic: &str,
        expected: usize,
        timeout: Duration,
        linger: Duration,
    ) -> Vec<Record> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("group.id", format!("verve-test-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .expect("create the test consumer");
        let mut partitions = TopicPartitionList::new();
        partitions
            .add_partition_offset(topic, 0, Offset::Beginning)
            .expect("partition offset");
        consumer.assign(&partitions).expect("assign");
        let mut records = Vec::new();
        let mut until = Instant::now() + timeout;
        let mut lingering = false;
        while Instant::now() < until {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                let text =
                    |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).to_string();
                let version = message.headers().and_then(|headers| {
                    headers
                        .iter()
                        .find(|h| h.key == "verve-version")
                        .map(|h| text(h.value))
                });
                records.push(Record {
                    key: text(message.key()),
                    value: text(message.payload()),
                    version,
                });
            }
            if !lingering && records.len() >= expected {
                lingering = true;
                until = Instant::now() + linger;
            }
        }
        records
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        self.stop();
    }
}
