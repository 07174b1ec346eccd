//! The count log: one line per window (and per callback attempt) in a file, through `log`.
//!
//! A small `log::Log` sends records with the target [`TARGET`] to the count-log file and
//! everything else to `env_logger` on stderr, so diagnostics never enter the count log. Each
//! line is written with one `write` call (readers tail the file live); the file is reopened
//! on SIGHUP for logrotate; a failed write is reported on stderr and counted, and never stops
//! counting.

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

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.target() == TARGET || self.diagnostics.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if record.target() != TARGET {
            self.diagnostics.log(record);
            return;
        }
        let Some(sink) = SINK.get() else { return };
        let line = format!(
            "{} {} {}\n",
            format_utc(SystemClock::default().now_ms(), true),
            record.level(),
            record.args()
        );
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
