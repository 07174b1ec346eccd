//! The Kafka producer behind [`Stream`](super::Stream), on rdkafka (librdkafka).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};

use super::{Settings, VERSION_HEADER};
use crate::metrics::Metrics;

/// An idempotent producer polled by its own thread; delivery reports go to the metrics.
pub struct Stream {
    producer: ThreadedProducer<Reports>,
    topic: String,
}

/// Least time between two logged client errors: while Kafka is down librdkafka reports each
/// failed reconnect, several a second.
const ERROR_LOG_EVERY_SECS: u64 = 30;

/// Counts delivery reports, logs failures, and keeps librdkafka's chatter out of the log.
struct Reports {
    metrics: Arc<Metrics>,
    /// When a client error was last logged (epoch seconds), and how many since were not.
    last_error_logged: AtomicU64,
    errors_unlogged: AtomicU64,
    /// `--kafka-option` values that are credentials: never printed, whatever librdkafka says.
    secrets: Vec<String>,
}

/// Whether a librdkafka setting holds a credential (SASL user names and passwords, key
/// passwords, OAuth client secrets, JAAS configs).
fn is_secret(key: &str) -> bool {
    key.starts_with("sasl.") || key.contains("password") || key.contains("secret")
}

/// `text` with every one of `secrets` replaced.
fn scrub(secrets: &[String], text: &str) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_string(), |text, secret| {
            text.replace(secret.as_str(), "(hidden)")
        })
}

impl ClientContext for Reports {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        // What matters reaches `error` (connection state) or `delivery` (records).
        log::debug!(target: "librdkafka", "{level:?} {facility}: {}", scrub(&self.secrets, message));
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_error_logged.load(Ordering::Relaxed);
        if now < last + ERROR_LOG_EVERY_SECS
            || self
                .last_error_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.errors_unlogged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let unlogged = self.errors_unlogged.swap(0, Ordering::Relaxed);
        log::warn!(
            "kafka: {}: {} ({unlogged} more since the last report; records wait in the buffer)",
            scrub(&self.secrets, &error.to_string()),
            scrub(&self.secrets, reason)
        );
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.metrics.stream_sent.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, message)) => {
                self.metrics.stream_failed.fetch_add(1, Ordering::Relaxed);
                let key = message
                    .key()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                log::warn!("kafka: the record of window {key} was not delivered: {error}");
            }
        }
    }
}

impl Stream {
    /// Creates the producer; it connects in the background, so an unreachable Kafka does not
    /// stop start-up (records wait in the buffer).
    pub fn start(settings: &Settings, metrics: Arc<Metrics>) -> Result<Self, String> {
        let mut config = ClientConfig::new();
        for (key, value) in &settings.options {
            config.set(key, value);
        }
        config
            .set("bootstrap.servers", &settings.brokers)
            .set("client.id", &settings.client_id)
            .set("compression.codec", &settings.compression)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Never give a record up: it waits out any outage, and with idempotence it is
            // written once and in order when the brokers are back.
            .set("message.timeout.ms", "0")
            .set("queue.buffering.max.messages", settings.buffer.to_string())
            .set("linger.ms", "5");
        let secrets: Vec<String> = settings
            .options
            .iter()
            .filter(|(key, _)| is_secret(key))
            .map(|(_, value)| value.clone())
            .collect();
        let producer: ThreadedProducer<Reports> = config
            .create_with_context(Reports {
                metrics,
                last_error_logged: AtomicU64::new(0),
                errors_unlogged: AtomicU64::new(0),
                secrets: secrets.clone(),
            })
            .map_err(|e| {
                let shown = scrub(&secrets, &e.to_string());
                format!("--kafka-brokers/--kafka-option: {shown}")
            })?;
        Ok(Self {
            producer,
            topic: settings.topic.clone(),
        })
    }

    /// Hands one window's record to the producer; a full buffer drops it (logged, counted).
    pub fn send(&self, window_start: &str, body: &str) {
        let headers = OwnedHeaders::new().insert(Header {
            key: VERSION_HEADER,
            value: Some(env!("CARGO_PKG_VERSION")),
        });
        let record = BaseRecord::to(&self.topic)
            .key(window_start)
            .payload(body)
            .headers(headers);
        if let Err((error, _)) = self.producer.send(record) {
            let metrics = &self.producer.context().metrics;
            metrics.stream_failed.fetch_add(1, Ordering::Relaxed);
            log::warn!("kafka: the record of window {window_start} was dropped: {error}");
        }
    }

    /// Records handed over and not yet acknowledged by the brokers.
    pub fn buffered(&self) -> u64 {
        self.producer.in_flight_count().max(0) as u64
    }

    /// Waits up to `timeout` for the buffer to empty; returns how many records are left.
    pub fn flush(&self, timeout: Duration) -> u64 {
        let _ = self.producer.flush(timeout);
        self.buffered()
    }
}
