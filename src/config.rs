//! Settings: every flag has an environment variable; flags win (SPEC §5).
//!
//! Parsing and cross-checks live here so that a bad value stops start-up with one line that
//! names the flag, and exit code 2. Nothing else in the crate reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::callback;
use crate::callback::sign::Signer;
use crate::lists::{CidrList, HostList};
use crate::store;
use crate::stream;

/// Counts distinct ids per wall-clock window; see README.md.
#[derive(Parser, Debug, Clone)]
#[command(name = "verve", version, about, allow_negative_numbers = true)]
pub struct Config {
    /// Address for the HTTP listener.
    #[arg(long, env = "VERVE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Separate listener for /metrics, the status page and its JSON; unset serves them on
    /// --listen.
    #[arg(long, env = "VERVE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// File the per-window counts (and callback attempts) are appended to.
    #[arg(long, env = "VERVE_LOG_FILE", default_value = "requests.log")]
    pub log_file: PathBuf,

    /// Window length in seconds; windows are aligned to the Unix epoch.
    #[arg(long, env = "VERVE_WINDOW_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub window_secs: u32,

    /// How long after a window ends its count is read (late requests still count).
    #[arg(long, env = "VERVE_GRACE_MS", default_value_t = 1000)]
    pub grace_ms: u64,

    /// Comma-separated CIDRs callbacks may reach although not public (e.g. 127.0.0.0/8).
    #[arg(long, env = "VERVE_CALLBACK_ALLOW", default_value = "")]
    pub callback_allow: CidrList,

    /// Host names callbacks may go to, comma-separated; `*.example.com` allows any name
    /// under example.com. Unset: any host the address guard permits.
    #[arg(long, env = "VERVE_CALLBACK_HOSTS", default_value = "")]
    pub callback_hosts: HostList,

    /// Distinct callback endpoints kept per window; more are dropped and counted.
    #[arg(long, env = "VERVE_CALLBACK_MAX_ENDPOINTS", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub callback_max_endpoints: u32,

    /// Endpoints kept per window for one registrable domain (or one IPv4 /24, IPv6 /64 of
    /// IP literals); more are dropped and counted, and their ids still count.
    #[arg(long, env = "VERVE_CALLBACK_MAX_PER_DOMAIN", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub callback_max_per_domain: u32,

    /// Threads delivering callbacks at most (each holds one delivery at a time); started
    /// as deliveries need them, so that slow targets never leave another destination's
    /// delivery waiting for one.
    #[arg(long, env = "VERVE_CALLBACK_WORKERS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub callback_workers: u32,

    /// Deliveries held (waiting, backing off or being sent), across windows; more are
    /// dropped and counted.
    #[arg(long, env = "VERVE_CALLBACK_QUEUE", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub callback_queue: u32,

    /// Deliveries in progress at once to one destination, the /24 (IPv4) or /64 (IPv6) its
    /// host resolved to; workers take turns across destinations.
    #[arg(long, env = "VERVE_CALLBACK_PREFIX_CONCURRENCY", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub callback_prefix_concurrency: u32,

    /// Connect timeout of one callback attempt.
    #[arg(long, env = "VERVE_CALLBACK_CONNECT_TIMEOUT_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub callback_connect_timeout_ms: u64,

    /// Total timeout of one callback attempt.
    #[arg(long, env = "VERVE_CALLBACK_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub callback_timeout_ms: u64,

    /// Attempts per callback (retries on connect errors, timeouts, 429 and 5xx).
    #[arg(long, env = "VERVE_CALLBACK_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=10))]
    pub callback_attempts: u32,

    /// Delay before the first retry; doubles with each further attempt.
    #[arg(long, env = "VERVE_CALLBACK_BACKOFF_MS", default_value_t = 250)]
    pub callback_backoff_ms: u64,

    /// Signs every callback (Standard Webhooks: HMAC-SHA256); `whsec_<base64>` or raw text.
    /// Prefer the environment variable: flags show in process listings.
    #[arg(long, env = "VERVE_CALLBACK_SECRET")]
    pub callback_secret: Option<String>,

    /// After SIGTERM, how long /readyz answers 503 before the listener closes.
    #[arg(long, env = "VERVE_SHUTDOWN_DELAY_MS", default_value_t = 0)]
    pub shutdown_delay_ms: u64,

    /// After the listener closes, how long in-flight requests, and then due callbacks, get.
    #[arg(long, env = "VERVE_SHUTDOWN_TIMEOUT_MS", default_value_t = 5000)]
    pub shutdown_timeout_ms: u64,

    /// A connection must send a complete request head within this time (slowloris).
    #[arg(long, env = "VERVE_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_ms: u64,

    /// Open client connections at most; beyond it new connections wait in the kernel's
    /// backlog until one closes.
    #[arg(long, env = "VERVE_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Requests waiting for Redis at most (fleet mode); beyond it 503 + Retry-After.
    #[arg(long, env = "VERVE_MAX_INFLIGHT", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_inflight: u32,

    /// Largest request head, in bytes; a larger one gets 431. At least 16384 so that verve
    /// itself answers an over-long target with 414.
    #[arg(long, env = "VERVE_MAX_HEADER_BYTES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(16_384..=16_777_216))]
    pub max_header_bytes: u32,

    /// Redis for fleet mode (`redis://` or `rediss://`, user and password allowed;
    /// `redis-sentinel://host:26379,host2:26379?sentinelServiceName=NAME` for Sentinel, more
    /// hosts comma-separated); unset runs a single node.
    #[arg(long, env = "VERVE_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Treat --redis-url as a seed node of a Redis Cluster (more seeds comma-separated).
    #[arg(long, env = "VERVE_REDIS_CLUSTER", default_value_t = false,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub redis_cluster: bool,

    /// Sets per window in Redis (spreads a window over a cluster's nodes) [default: 1 on one
    /// server, 16 with --redis-cluster].
    #[arg(long, env = "VERVE_REDIS_SHARDS",
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub redis_shards: Option<u32>,

    /// Fleet mode's connection threads, each with its own Redis connection and `SADD`
    /// batcher [default: the CPU cores].
    #[arg(long, env = "VERVE_LANES",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub lanes: Option<u32>,

    /// A Redis command not answered in this time fails (the request gets 503).
    #[arg(long, env = "VERVE_REDIS_TIMEOUT_MS", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub redis_timeout_ms: u64,

    /// Fleet mode: how far apart the instances' clocks may be (NTP keeps them much closer).
    /// A window's cutoff — the last moment an id of it can be answered `ok` — is this much
    /// (and 100 ms) before the end of its grace.
    #[arg(long, env = "VERVE_MAX_CLOCK_SKEW_MS", default_value_t = 250)]
    pub max_clock_skew_ms: u64,

    /// Prefix of every Redis key.
    #[arg(long, env = "VERVE_REDIS_PREFIX", default_value = "verve")]
    pub redis_prefix: String,

    /// How ids are counted: `exact` (the ids themselves) or `approx` (a HyperLogLog sketch
    /// per window, 0.81 % standard error, 16 KiB whatever the ids; SPEC §3a).
    #[arg(long, env = "VERVE_COUNT", value_enum, default_value_t = CountMode::Exact)]
    pub count: CountMode,

    /// Approx mode: the secret ids are hashed with, the same on every instance of a fleet (at
    /// least 16 characters; prefer the environment variable). Unset: a fleet keeps one in
    /// Redis (`<prefix>:hash-key`), a single node draws its own.
    #[arg(long, env = "VERVE_HASH_KEY")]
    pub hash_key: Option<String>,

    /// PEM file of the CA that signed Redis's certificate (rediss:// with a private CA);
    /// unset trusts the system's roots.
    #[arg(long, env = "VERVE_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// Kafka bootstrap servers (`host:port,...`): each window's count is streamed to
    /// --kafka-topic. Unset streams nothing. Needs a build with the `kafka` feature.
    #[arg(long, env = "VERVE_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,

    /// Topic of the per-window records.
    #[arg(long, env = "VERVE_KAFKA_TOPIC", default_value = "verve.unique-counts")]
    pub kafka_topic: String,

    /// Client id the producer presents to the brokers.
    #[arg(long, env = "VERVE_KAFKA_CLIENT_ID", default_value = "verve")]
    pub kafka_client_id: String,

    /// Record compression: none, gzip, snappy, lz4 or zstd.
    #[arg(long, env = "VERVE_KAFKA_COMPRESSION", default_value = "none",
          value_parser = ["none", "gzip", "snappy", "lz4", "zstd"])]
    pub kafka_compression: String,

    /// Records held while Kafka is unreachable (1440 is a day of one-minute windows); when
    /// full, a new record is dropped and counted.
    #[arg(long, env = "VERVE_KAFKA_BUFFER", default_value_t = 100_000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub kafka_buffer: u32,

    /// A librdkafka setting passed through, `key=value` (repeatable; the variable takes a
    /// comma-separated list), e.g. `security.protocol=sasl_ssl`, `sasl.mechanism=PLAIN`,
    /// `sasl.username=...`, `ssl.ca.location=/etc/ca.pem`.
    #[arg(long = "kafka-option", env = "VERVE_KAFKA_OPTIONS", value_delimiter = ',',
          value_parser = parse_kafka_option)]
    pub kafka_options: Vec<(String, String)>,

    /// Shifts this instance's clock (testing clock skew between instances).
    #[arg(long, env = "VERVE_CLOCK_OFFSET_MS", default_value_t = 0, hide = true)]
    pub clock_offset_ms: i64,
}

/// One `key=value` librdkafka setting. The producer's guarantees are not negotiable here.
fn parse_kafka_option(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| "an item is not key=value".to_string())?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("'{s}' has no key"));
    }
    if crate::stream::FIXED_SETTINGS.contains(&key) {
        return Err(format!(
            "'{key}' is set by verve (idempotent producer, acks=all)"
        ));
    }
    Ok((key.to_string(), value.trim().to_string()))
}

/// How long after a window's last possible report its keys outlive it.
const EXPIRY_MARGIN_SECS: i64 = 30;

/// Between a window's cutoff and the end of its grace beyond the clock skew: time for the
/// last acknowledgement to be read (SPEC §6.2).
pub const CUTOFF_MARGIN_MS: u64 = 100;

/// Flags whose values are secrets (or may hold them): never echoed in an error.
const SECRET_FLAGS: [&str; 4] = [
    "--redis-url",
    "--callback-secret",
    "--kafka-option",
    "--hash-key",
];

/// Clap's first error line without the offending value when the flag is a secret one.
fn hide_secret_value(e: &clap::Error, first: &str) -> String {
    use clap::error::{ContextKind, ContextValue};
    let line = first.trim_start_matches("error: ");
    let secret = matches!(e.get(ContextKind::InvalidArg),
        Some(ContextValue::String(arg)) if SECRET_FLAGS.iter().any(|f| arg.starts_with(f)));
    match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) if secret && !value.is_empty() => {
            line.replace(value.as_str(), "(hidden)")
        }
        _ => line.to_string(),
    }
}

/// Why start-up stops: print the message, exit with the code.
#[derive(Debug)]
pub struct ConfigError {
    pub message: String,
    pub exit_code: i32,
}

impl Config {
    /// Reads flags and environment; `--help` and `--version` come back as errors with code 0.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(std::env::args_os())
    }

    pub fn load_from<I, T>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        // `--help` never shows what the environment holds: a Redis URL carries a password.
        let command = Self::command().mut_args(|arg| arg.hide_env_values(true));
        let config = command
            .try_get_matches_from(args)
            .and_then(|matches| Self::from_arg_matches(&matches))
            .map_err(|e| {
                use clap::error::ErrorKind::{DisplayHelp, DisplayVersion};
                if matches!(e.kind(), DisplayHelp | DisplayVersion) {
                    return ConfigError {
                        message: e.to_string(),
                        exit_code: 0,
                    };
                }
                let rendered = e.to_string();
                let first = rendered.lines().next().unwrap_or("invalid arguments");
                ConfigError {
                    message: format!("verve: {}", hide_secret_value(&e, first)),
                    exit_code: 2,
                }
            })?;
        config.validate().map_err(|message| ConfigError {
            message: format!("verve: {message}"),
            exit_code: 2,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        // Checked here rather than by clap, whose message would repeat the secret.
        if let Some(secret) = &self.callback_secret
            && let Err(why) = Signer::new(secret)
        {
            return Err(format!("--callback-secret: {why}"));
        }
        if let Some(key) = &self.hash_key
            && key.chars().count() < 16
        {
            return Err(
                "--hash-key: at least 16 characters (a secret: callers who know it can choose ids that inflate the count)"
                    .into(),
            );
        }
        let window_ms = u64::from(self.window_secs) * 1000;
        if self.grace_ms >= window_ms {
            return Err(format!(
                "--grace-ms ({}) must be shorter than the window (--window-secs {} = {window_ms} ms)",
                self.grace_ms, self.window_secs
            ));
        }
        let margin = self
            .max_clock_skew_ms
            .saturating_add(self.redis_timeout_ms)
            .saturating_add(CUTOFF_MARGIN_MS);
        if self.redis_url.is_some() && self.grace_ms < margin {
            return Err(format!(
                "--grace-ms ({}) must be at least --max-clock-skew-ms ({}) + --redis-timeout-ms ({}) + {CUTOFF_MARGIN_MS} ms = {margin} in fleet mode",
                self.grace_ms, self.max_clock_skew_ms, self.redis_timeout_ms
            ));
        }
        if let Some(url) = &self.redis_url
            && ![
                "redis://",
                "rediss://",
                "redis-cluster://",
                "rediss-cluster://",
                "redis-sentinel://",
                "rediss-sentinel://",
            ]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return Err(
                "--redis-url must start with redis://, rediss://, redis-sentinel:// or rediss-sentinel://"
                    .to_string(),
            );
        }
        if let Some(url) = &self.redis_url
            && url.contains("-sentinel://")
            && !url.contains("sentinelServiceName=")
        {
            return Err(
                "--redis-url: a redis-sentinel:// URL needs ?sentinelServiceName=<the primary's name>"
                    .to_string(),
            );
        }
        if self.redis_cluster
            && self
                .redis_url
                .as_deref()
                .is_some_and(|u| u.contains("-sentinel://"))
        {
            return Err(
                "--redis-cluster cannot be used with a redis-sentinel:// --redis-url".to_string(),
            );
        }
        if self.redis_ca_file.is_some()
            && !self
                .redis_url
                .as_deref()
                .is_some_and(|u| u.starts_with("rediss"))
        {
            return Err("--redis-ca-file needs a rediss:// --redis-url".to_string());
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(['{', '}', ' ']) {
            return Err("--redis-prefix must be non-empty, without braces or spaces".to_string());
        }
        let topic = &self.kafka_topic;
        if topic.is_empty()
            || topic.len() > 249
            || !topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(
                "--kafka-topic must be 1-249 characters of letters, digits, '.', '_' or '-'"
                    .to_string(),
            );
        }
        if self.kafka_brokers.is_some() && !cfg!(feature = "kafka") {
            return Err(
                "--kafka-brokers needs a build with the kafka feature (cargo build --features kafka)"
                    .to_string(),
            );
        }
        Ok(())
    }

    /// The stream's settings, when --kafka-brokers is set.
    pub fn stream_settings(&self) -> Option<stream::Settings> {
        self.kafka_brokers.as_ref().map(|brokers| stream::Settings {
            brokers: brokers.clone(),
            topic: self.kafka_topic.clone(),
            client_id: self.kafka_client_id.clone(),
            compression: self.kafka_compression.clone(),
            buffer: self.kafka_buffer,
            options: self.kafka_options.clone(),
        })
    }

    /// Seconds after a window's start at which its keys expire: about two windows and the
    /// grace, plus a margin for a late fleet report. The store's batcher adds it to every
    /// window's start itself (each write of a shard set carries its expiry).
    pub fn expire_after(&self) -> i64 {
        let grace_secs = self.grace_ms.div_ceil(1000) as i64;
        2 * i64::from(self.window_secs) + grace_secs + EXPIRY_MARGIN_SECS
    }

    /// Fleet mode's store settings, when --redis-url is set.
    pub fn store_settings(&self) -> Option<store::Settings> {
        self.redis_url.as_ref().map(|url| store::Settings {
            url: url.clone(),
            cluster: self.is_cluster(),
            shards: self.redis_shards(),
            timeout: Duration::from_millis(self.redis_timeout_ms),
            prefix: self.redis_prefix.clone(),
            ca_file: self.redis_ca_file.clone(),
            expire_after: self.expire_after(),
        })
    }

    /// Sets per window: `--redis-shards`, or 1 on one server (more only split each group
    /// commit into more commands) and 16 on a cluster (spread over its nodes).
    pub fn redis_shards(&self) -> u32 {
        self.redis_shards
            .unwrap_or(if self.is_cluster() { 16 } else { 1 })
    }

    /// Whether Redis is a cluster: `--redis-cluster`, or a `redis-cluster://` URL.
    pub fn is_cluster(&self) -> bool {
        self.redis_cluster
            || self.redis_url.as_deref().is_some_and(|u| {
                u.starts_with("redis-cluster://") || u.starts_with("rediss-cluster://")
            })
    }

    /// Fleet mode: a window's cutoff, in ms after its end: grace − clock skew − margin.
    pub fn cutoff_after_end_ms(&self) -> i64 {
        self.grace_ms as i64 - self.max_clock_skew_ms as i64 - CUTOFF_MARGIN_MS as i64
    }

    /// How many lanes fleet mode runs: `--lanes`, or one per CPU core.
    pub fn lanes(&self) -> usize {
        self.lanes.map_or_else(
            || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            |lanes| lanes as usize,
        )
    }

    /// The callback pool's settings.
    pub fn callback_settings(&self) -> callback::Settings {
        callback::Settings {
            allow: self.callback_allow.0.clone(),
            workers: self.callback_workers as usize,
            queue: self.callback_queue as usize,
            prefix_concurrency: self.callback_prefix_concurrency as usize,
            window: Duration::from_secs(u64::from(self.window_secs)),
            connect_timeout: Duration::from_millis(self.callback_connect_timeout_ms),
            timeout: Duration::from_millis(self.callback_timeout_ms),
            attempts: self.callback_attempts,
            backoff: Duration::from_millis(self.callback_backoff_ms),
            hosts: self.callback_hosts.clone(),
            // Validated at load: a secret that made it here makes a key.
            signer: self
                .callback_secret
                .as_deref()
                .and_then(|secret| Signer::new(secret).ok()),
        }
    }
}

/// How a window counts its ids (`--count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CountMode {
    /// The ids themselves: exact counts.
    Exact,
    /// A HyperLogLog sketch per window, Redis-compatible: approximate counts.
    Approx,
}

impl CountMode {
    /// The mode's name, as the flag spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::Approx => "approx",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str]) -> Result<Config, ConfigError> {
        Config::load_from(std::iter::once("verve").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = load(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.log_file, PathBuf::from("requests.log"));
        assert_eq!((c.window_secs, c.grace_ms), (60, 1000));
        assert_eq!(c.callback_max_endpoints, 1000);
        assert!(c.callback_allow.0.is_empty());
        assert_eq!(c.redis_shards(), 1, "one server: one set per window");
        assert_eq!(load(&["--redis-cluster"]).unwrap().redis_shards(), 16);
        assert_eq!(
            load(&["--redis-cluster", "--redis-shards", "4"])
                .unwrap()
                .redis_shards(),
            4
        );
        let clustered = load(&["--redis-url", "redis-cluster://h:7000,h:7001"]).unwrap();
        assert!(clustered.is_cluster(), "the scheme says it is a cluster");
        assert_eq!(clustered.redis_shards(), 16);
        let sentinel = load(&["--redis-url", "redis-sentinel://h?sentinelServiceName=m"]).unwrap();
        assert!(!sentinel.is_cluster());
    }

    #[test]
    fn bad_values_name_the_flag_in_one_line() {
        for (args, flag) in [
            (&["--window-secs", "0"][..], "--window-secs"),
            (&["--window-secs", "x"][..], "--window-secs"),
            (&["--grace-ms", "-1"][..], "--grace-ms"),
            (&["--listen", "nowhere"][..], "--listen"),
            (&["--callback-allow", "10.0.0.0/33"][..], "--callback-allow"),
            (
                &["--window-secs", "1", "--grace-ms", "1000"][..],
                "--grace-ms",
            ),
            (&["--no-such-flag"][..], "--no-such-flag"),
            (
                &[
                    "--redis-url",
                    "redis://h",
                    "--grace-ms",
                    "200",
                    "--redis-timeout-ms",
                    "300",
                ][..],
                "--redis-timeout-ms",
            ),
            (&["--redis-url", "http://h"][..], "--redis-url"),
            (
                &["--redis-url", "redis-sentinel://h:26379"][..],
                "--redis-url",
            ),
            (
                &[
                    "--redis-cluster",
                    "--redis-url",
                    "redis-sentinel://h?sentinelServiceName=m",
                ][..],
                "--redis-cluster",
            ),
            (&["--redis-shards", "0"][..], "--redis-shards"),
            (&["--lanes", "0"][..], "--lanes"),
            (
                &["--callback-max-per-domain", "0"][..],
                "--callback-max-per-domain",
            ),
            (&["--kafka-topic", "a topic"][..], "--kafka-topic"),
            (&["--kafka-option", "acks=1"][..], "--kafka-option"),
            (&["--kafka-option", "novalue"][..], "--kafka-option"),
            (
                &["--kafka-compression", "brotli"][..],
                "--kafka-compression",
            ),
            (&["--kafka-buffer", "0"][..], "--kafka-buffer"),
            (
                &["--callback-prefix-concurrency", "0"][..],
                "--callback-prefix-concurrency",
            ),
            (
                &["--callback-prefix-concurrency", "1025"][..],
                "--callback-prefix-concurrency",
            ),
        ] {
            let err = load(args).unwrap_err();
            assert_eq!(err.exit_code, 2, "{args:?}");
            assert!(err.message.contains(flag), "{args:?}: {}", err.message);
            assert_eq!(err.message.lines().count(), 1, "{}", err.message);
        }
    }

    #[test]
    fn parses_cidr_lists() {
        let c = load(&["--callback-allow", "127.0.0.0/8, 10.0.0.0/8,::1/128"]).unwrap();
        assert_eq!(c.callback_allow.0.len(), 3);
    }
}
