//! The stream: one record per reported window to a Kafka topic (SPEC §4.3, feature `kafka`).
//!
//! The record's key is the window start (RFC 3339), its value the callback's JSON body, and a
//! `verve-version` header names the build. On a single node every final window is streamed;
//! in a fleet, the window's elected leader streams it while it sends the callbacks, so the
//! fleet writes one record per window (two only if a leader dies between streaming and
//! marking the window done). Windows cut short at shutdown are not streamed, as they are not
//! POSTed.
//!
//! Delivery belongs to librdkafka: an idempotent producer with `acks=all` that never gives a
//! record up (`message.timeout.ms=0`), holding at most `--kafka-buffer` records. While Kafka is
//! unreachable the records wait there in order and go out, each once, when it is back; when
//! the buffer is full a new record is dropped, logged and counted. Handing a record over never
//! blocks, and the accept path never touches the stream.

#[cfg(feature = "kafka")]
mod kafka;

/// librdkafka settings verve sets itself and `--kafka-option` may not change: together they
/// make the delivery guarantee docs/outputs.md states.
pub const FIXED_SETTINGS: [&str; 11] = [
    "bootstrap.servers",
    "metadata.broker.list",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "queue.buffering.max.messages",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
    "enable.gapless.guarantee",
];

/// The header naming the service version on every record.
pub const VERSION_HEADER: &str = "verve-version";

/// What `--kafka-*` configure.
#[derive(Debug, Clone)]
pub struct Settings {
    pub brokers: String,
    pub topic: String,
    pub client_id: String,
    pub compression: String,
    /// Records held while Kafka is unreachable.
    pub buffer: u32,
    /// librdkafka settings passed through.
    pub options: Vec<(String, String)>,
}

/// The producer (feature `kafka`).
#[cfg(feature = "kafka")]
pub use kafka::Stream;

/// Without the `kafka` feature there is no stream: start-up refuses `--kafka-brokers`.
#[cfg(not(feature = "kafka"))]
pub enum Stream {}

#[cfg(not(feature = "kafka"))]
impl Stream {
    pub fn start(_: &Settings, _: std::sync::Arc<crate::metrics::Metrics>) -> Result<Self, String> {
        Err("this build has no kafka feature".to_string())
    }

    pub fn send(&self, _window_start: &str, _body: &str) {
        match *self {}
    }

    pub fn buffered(&self) -> u64 {
        match *self {}
    }

    pub fn flush(&self, _timeout: std::time::Duration) -> u64 {
        match *self {}
    }
}
