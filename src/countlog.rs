//! The count log: one line per window (and per callback attempt) in a file, through `log`.
//!
//! A small `log::Log` sends records with the target [`TARGET`] to the count-log file and
//! everything else to `env_logger` on stderr, so diagnostics never enter the count log. Each
//! line is written with one `write` call (readers tail the file live); the file is reopened
//! on SIGHUP for logrotate; a failed write is reported on stderr and counted, and never stops
//! counting.
//!
//! Every line is ASCII words (SPEC §4.1): entries are built with [`Entry`], which escapes
//! each value, and the sink escapes whatever else would leave visible ASCII, so nothing a
//! caller sends can split a line, add a word or a byte outside 0x21–0x7E.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use log::{Log, Metadata, Record};
use parking_lot::Mutex;

use crate::window::{Clock, SystemClock, format_utc};

/// The `log` target of count-log records.
pub const TARGET: &str = "verve::count";

static SINK: OnceLock<Sink> = OnceLock::new();
static WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);

struct Sink {
    path: PathBuf,
    file: Mutex<File>,
}

struct Logger {
    diagnostics: env_logger::Logger,
}

/// Whether a diagnostic would print a callback's URL: the HTTP client shows whole request
/// targets (with their path and query tokens) at trace level, and hides them below it.
fn shows_callback_urls(metadata: &Metadata) -> bool {
    metadata.level() == log::Level::Trace && metadata.target().starts_with("ureq")
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.target() == TARGET
            || (self.diagnostics.enabled(metadata) && !shows_callback_urls(metadata))
    }

    fn log(&self, record: &Record) {
        if record.target() != TARGET {
            if !shows_callback_urls(record.metadata()) {
                self.diagnostics.log(record);
            }
            return;
        }
        let Some(sink) = SINK.get() else { return };
        let message = record.args().to_string();
        let line = line(SystemClock::default().now_ms(), record.level(), &message);
        if let Err(e) = sink.file.lock().write_all(line.as_bytes()) {
            WRITE_ERRORS.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "verve: count log {}: write failed: {e}",
                sink.path.display()
            );
        }
    }

    fn flush(&self) {
        self.diagnostics.flush();
    }
}

/// The line written for a count-log message: `<timestamp> <level> <words>\n`. Bytes outside
/// 0x21–0x7E are percent-encoded, and so is any space that does not separate two words, so
/// whatever the message holds the result is one line of visible ASCII words.
pub fn line(now_ms: i64, level: log::Level, message: &str) -> String {
    let mut out = format_utc(now_ms, true);
    out.push(' ');
    out.push_str(level.as_str());
    let bytes = message.as_bytes();
    if !bytes.is_empty() {
        out.push(' ');
    }
    for (i, &b) in bytes.iter().enumerate() {
        let separator = b == b' '
            && i > 0
            && bytes[i - 1] != b' '
            && bytes.get(i + 1).is_some_and(|&next| next != b' ');
        if b.is_ascii_graphic() || separator {
            out.push(char::from(b));
        } else {
            push_escaped(&mut out, b);
        }
    }
    out.push('\n');
    out
}

/// One count-log entry: a bare word, then `key=value` words whose values are escaped
/// ([`escape`]), so that no value can split the line or add a word.
#[derive(Debug, Clone)]
pub struct Entry {
    text: String,
}

impl Entry {
    /// An entry of `kind` (`unique_requests`, `callback`).
    pub fn new(kind: &'static str) -> Self {
        Self {
            text: kind.to_string(),
        }
    }

    /// Adds `key=value`, the value escaped.
    pub fn field(mut self, key: &'static str, value: impl fmt::Display) -> Self {
        self.text.push(' ');
        self.text.push_str(key);
        self.text.push('=');
        escape_into(&mut self.text, &value.to_string());
        self
    }

    /// The entry's words.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Writes the entry to the count log.
    pub fn write(&self) {
        log::info!(target: TARGET, "{}", self.text);
    }
}

/// Appends `value` with every byte outside 0x21–0x7E, and `%` itself, percent-encoded: the
/// result is one word, and decoding it gives `value` back.
pub fn escape_into(out: &mut String, value: &str) {
    for &b in value.as_bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b));
        } else {
            push_escaped(out, b);
        }
    }
}

/// `value` escaped as by [`escape_into`].
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    escape_into(&mut out, value);
    out
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Opens the count log at `path` and installs the process-wide logger (diagnostics per
/// `RUST_LOG`, `info` by default). Call once, at start-up.
pub fn install(path: &Path) -> io::Result<()> {
    let file = open(path)?;
    let _ = SINK.set(Sink {
        path: path.to_path_buf(),
        file: Mutex::new(file),
    });
    let diagnostics =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = diagnostics.filter().max(log::LevelFilter::Info);
    log::set_boxed_logger(Box::new(Logger { diagnostics }))
        .map_err(|e| io::Error::other(e.to_string()))?;
    log::set_max_level(max);
    Ok(())
}

/// Reopens the count-log file (after logrotate moved it). On failure the old file stays.
pub fn reopen() {
    let Some(sink) = SINK.get() else { return };
    match open(&sink.path) {
        Ok(file) => *sink.file.lock() = file,
        Err(e) => {
            WRITE_ERRORS.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "verve: count log {}: reopen failed: {e}",
                sink.path.display()
            );
        }
    }
}

/// Count-log writes (and reopens) that failed since start.
pub fn write_errors() -> u64 {
    WRITE_ERRORS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_one_word_each() {
        let record = Entry::new("callback")
            .field(
                "endpoint",
                "http://a/x#\n2026 INFO unique_requests unique_requests=9\r\n",
            )
            .field("attempt", 1);
        assert_eq!(
            record.text(),
            "callback endpoint=http://a/x#%0A2026%20INFO%20unique_requests%20unique_requests=9%0D%0A attempt=1"
        );
        assert_eq!(
            escape("a%b\u{85}\u{2028}\0\t "),
            "a%25b%C2%85%E2%80%A8%00%09%20"
        );
    }

    #[test]
    fn a_line_is_visible_ascii_words() {
        assert_eq!(
            line(0, log::Level::Info, "unique_requests a=1 b=2"),
            "1970-01-01T00:00:00.000Z INFO unique_requests a=1 b=2\n"
        );
        assert_eq!(
            line(0, log::Level::Info, " x  y\nz \u{85}"),
            "1970-01-01T00:00:00.000Z INFO %20x%20%20y%0Az %C2%85\n"
        );
    }
}
