//! The black-box test harness: the real `verve` binary on a loopback port, a raw HTTP/1.1
//! client, a real callback receiver, and a reader for the count log.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[cfg(feature = "kafka")]
pub mod kafka;

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "verve-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `verve` process.
pub struct Verve {
    pub addr: SocketAddr,
    /// The `--admin-listen` address, when one was given.
    pub admin: Option<SocketAddr>,
    pub log: PathBuf,
    child: Child,
    _dir: TempDir,
}

impl Verve {
    /// Starts verve on 127.0.0.1:0 with its own count log, plus `args`.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Verve in fleet mode on `redis`, plus `args`.
    pub fn on_redis(redis: &Redis, args: &[&str]) -> Self {
        let url = redis.url();
        let mut all = vec!["--redis-url", url.as_str()];
        all.extend_from_slice(args);
        Self::start(&all)
    }

    /// Like [`Verve::start`], with extra environment variables (secrets belong there).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn(args, env, Stdio::inherit())
    }

    /// Like [`Verve::start_with_env`], its diagnostics (stderr) written to `stderr`; `env`
    /// may set `RUST_LOG` (default `warn`).
    pub fn start_with_stderr(args: &[&str], env: &[(&str, &str)], stderr: &Path) -> Self {
        let file = std::fs::File::create(stderr).expect("create the stderr file");
        Self::spawn(args, env, Stdio::from(file))
    }

    fn spawn(args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Self {
        Self::spawn_on("127.0.0.1:0", args, env, stderr)
    }

    /// Like [`Verve::start_with_stderr`], listening on `listen` (a fixed port, so that a
    /// load balancer finds a restarted instance where the killed one was).
    pub fn start_on(listen: &str, args: &[&str], env: &[(&str, &str)], stderr: &Path) -> Self {
        let file = std::fs::File::create(stderr).expect("create the stderr file");
        Self::spawn_on(listen, args, env, Stdio::from(file))
    }

    fn spawn_on(listen: &str, args: &[&str], env: &[(&str, &str)], stderr: Stdio) -> Self {
        let dir = TempDir::new("verve");
        let log = dir.0.join("requests.log");
        // VERVE_BIN runs another build (an older commit's) under the same harness.
        let bin = std::env::var_os("VERVE_BIN")
            .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_verve")), PathBuf::from);
        let mut child = Command::new(bin)
            .args(["--listen", listen, "--log-file"])
            .arg(&log)
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn verve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read verve's first line");
        let addr = line
            .split_whitespace()
            .find_map(|w| w.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("no listen address in {line:?}"));
        let admin = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("admin=")?.parse().ok());
        Self {
            addr,
            admin,
            log,
            child,
            _dir: dir,
        }
    }

    /// Verve with one-second windows whose callbacks may reach loopback, plus `extra` flags
    /// and environment.
    pub fn calling_loopback(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut args = vec![
            "--window-secs",
            "1",
            "--grace-ms",
            "200",
            "--callback-allow",
            "127.0.0.0/8",
        ];
        args.extend_from_slice(extra);
        Self::start_with_env(&args, env)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn connect(&self) -> Conn {
        Conn::connect(self.addr)
    }

    /// One GET on a fresh connection.
    pub fn get(&self, target: &str) -> Reply {
        self.connect().get(target)
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        self.wait_up_to(timeout)
            .unwrap_or_else(|| panic!("verve did not exit in {timeout:?}"))
    }

    /// Waits up to `timeout` for the process to exit; `None` if it still runs.
    pub fn wait_up_to(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_for(timeout, || self.child.try_wait().expect("try_wait"))
    }

    /// The count log's lines so far.
    pub fn lines(&self) -> Vec<Line> {
        read_log(&self.log)
    }

    /// Window reports (`unique_requests` lines) so far.
    pub fn windows(&self) -> Vec<Line> {
        self.lines()
            .into_iter()
            .filter(|l| l.kind == "unique_requests")
            .collect()
    }

    /// Waits until the window starting at `start` (epoch seconds) is reported; its line.
    pub fn wait_window(&self, start: i64, timeout: Duration) -> Line {
        let want = rfc3339(start);
        wait_for(timeout, || {
            self.windows()
                .into_iter()
                .find(|l| l.get("window_start") == want)
        })
        .unwrap_or_else(|| panic!("window {want} not reported; log:\n{}", self.log_text()))
    }

    /// Waits until the window starting at `start` has its `scope=fleet` line (a late fleet
    /// count comes after a `scope=local partial=true reason=store` line); that line.
    pub fn wait_fleet_window(&self, start: i64, timeout: Duration) -> Line {
        let want = rfc3339(start);
        wait_for(timeout, || {
            self.windows()
                .into_iter()
                .find(|l| l.get("window_start") == want && l.get("scope") == "fleet")
        })
        .unwrap_or_else(|| panic!("window {want} has no fleet line; log:\n{}", self.log_text()))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A metric's value from `/metrics` (the exact series name, labels included).
    pub fn metric(&self, series: &str) -> u64 {
        let body = self.get("/metrics").body;
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in metrics:\n{body}"))
    }
}

impl Drop for Verve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One count-log line: `<ts> <level> <kind> key=value…`.
#[derive(Debug, Clone)]
pub struct Line {
    pub raw: String,
    pub kind: String,
    pub fields: HashMap<String, String>,
}

impl Line {
    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map_or("", String::as_str)
    }

    pub fn count(&self) -> u64 {
        self.get("unique_requests")
            .parse()
            .unwrap_or_else(|_| panic!("no count in {}", self.raw))
    }

    pub fn partial(&self) -> bool {
        self.get("partial") == "true"
    }
}

pub fn read_log(path: &Path) -> Vec<Line> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|raw| {
            let mut words = raw.split(' ');
            let _ts = words.next();
            let _level = words.next();
            let kind = words.next().unwrap_or_default().to_string();
            let fields = words
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Line {
                raw: raw.to_string(),
                kind,
                fields,
            }
        })
        .collect()
}

/// Polls `probe` every 20 ms until it yields or `timeout` passes.
/// Runs a test binary's fleet tests one at a time (each runs servers and a burst of load:
/// on a small machine a burst must still fit in its window). Held for the test's length.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Sleeps until `offset_ms` into the next `secs`-long window; returns that window's start.
pub fn sleep_into_next_window(secs: i64, offset_ms: i64) -> i64 {
    let now = now_ms();
    let next = (now / 1000 / secs + 1) * secs;
    let until = next * 1000 + offset_ms;
    thread::sleep(Duration::from_millis((until - now) as u64));
    next
}

/// RFC 3339 UTC seconds, via `date` so the harness does not share verve's formatter.
pub fn rfc3339(epoch_secs: i64) -> String {
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{epoch_secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("run date");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// An HTTP response as the raw client read it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// A keep-alive HTTP/1.1 connection that writes exactly the bytes it is given.
pub struct Conn {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Self {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    pub fn get(&mut self, target: &str) -> Reply {
        self.request("GET", target)
    }

    pub fn request(&mut self, method: &str, target: &str) -> Reply {
        self.try_request(method, target)
            .unwrap_or_else(|e| panic!("{method} {target:.80}: {e}"))
    }

    pub fn try_request(&mut self, method: &str, target: &str) -> std::io::Result<Reply> {
        write!(
            self.stream,
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )?;
        self.read_reply(method == "HEAD")
    }

    fn read_reply(&mut self, head_only: bool) -> std::io::Result<Reply> {
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let (headers, len) = read_headers(&mut self.reader)?;
        let mut body = vec![0u8; if head_only { 0 } else { len }];
        self.reader.read_exact(&mut body)?;
        Ok(Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// The first header called `name` (any case).
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Reads header lines up to the blank line; the headers and the Content-Length (0 if none).
fn read_headers(reader: &mut impl BufRead) -> std::io::Result<(Vec<(String, String)>, usize)> {
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len = header(&headers, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((headers, len))
}

/// A request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// A real HTTP server on loopback recording every request. What it answers depends on the
/// path: `/fail…` 500, `/hang…` nothing for 10 s, `/slow…` 200 after 3 s, `/drip…` 200 one
/// byte every 100 ms (4 s in all), `/redirect…` 302
/// to `/landing`, `/huge…` 200 with a 1 GiB body (then a `SENT` entry with `x-sent`: the
/// bytes the client took), else 200.
pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }

    /// A receiver listening on `ip` (any loopback address, e.g. `127.1.0.1`), so that it
    /// sits in an address prefix of its own.
    pub fn start_on(ip: &str) -> Self {
        let listener = TcpListener::bind((ip, 0)).expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&got);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let sink = Arc::clone(&sink);
                thread::spawn(move || serve_receiver(stream, &sink));
            }
        });
        Self { addr, got }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Forgets what was received so far.
    pub fn clear(&self) {
        self.got.lock().unwrap().clear();
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Requests to paths starting with `prefix`.
    pub fn to(&self, prefix: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }
}

fn serve_receiver(stream: TcpStream, sink: &Mutex<Vec<Received>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(15)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let Ok((headers, len)) = read_headers(&mut reader) else {
            return;
        };
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        sink.lock().unwrap().push(Received {
            method,
            path: path.clone(),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let reply = if path.starts_with("/fail") {
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n".to_string()
        } else if path.starts_with("/hang") {
            thread::sleep(Duration::from_secs(10));
            return;
        } else if path.starts_with("/slow") {
            thread::sleep(Duration::from_secs(3));
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_string()
        } else if path.starts_with("/huge") {
            // A 1 GiB body, written until the client goes away; how much it took is
            // recorded as a `x-sent` header on a synthetic entry.
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n");
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0usize;
            let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
            while sent < 1 << 30 && stream.write_all(&chunk).is_ok() {
                sent += chunk.len();
            }
            sink.lock().unwrap().push(Received {
                method: "SENT".into(),
                path,
                headers: vec![("x-sent".into(), sent.to_string())],
                body: String::new(),
            });
            return;
        } else if path.starts_with("/drip") {
            // A whole answer, one byte every 100 ms: no single read ever waits long.
            for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok" {
                if stream.write_all(&[*byte]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
            continue;
        } else if path.starts_with("/redirect") {
            "HTTP/1.1 302 Found\r\nlocation: /landing\r\ncontent-length: 0\r\n\r\n".to_string()
        } else {
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_string()
        };
        if stream.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// The count log's `endpoint_id` of a normalized endpoint without `--callback-secret`: the
/// first 16 hex digits of its SHA-256, computed by `sha256sum` (not verve's code).
pub fn endpoint_id(normalized: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(normalized.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("sha256sum output");
    String::from_utf8(out.stdout).unwrap()[..16].to_string()
}

/// A loopback port with nothing listening.
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Percent-encodes everything but unreserved characters (for building endpoint params).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `command` to its end and returns its output; panics, naming `what` and showing what
/// it printed, unless it succeeded.
pub fn run_ok(command: &mut Command, what: &str) -> std::process::Output {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    closed_port()
}

/// Whether an external server binary is there; under `CI` its absence fails the test.
pub fn have(binary: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{binary} is missing (scripts/test.sh installs it)"
        );
        eprintln!("skipping: {binary} is not installed (scripts/test.sh installs it)");
    }
    found
}

/// A fresh private CA (`ca.crt`, `ca.key`) in `dir` and a certificate for 127.0.0.1 signed by
/// it (`server.crt`, `server.key`).
pub fn make_certificates(dir: &Path) {
    let path = |f: &str| dir.join(f).display().to_string();
    let openssl = |args: &[&str]| {
        run_ok(
            Command::new("openssl").args(args),
            &format!("openssl {args:?}"),
        );
    };
    std::fs::write(path("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=verve-test-ca",
        "-keyout",
        &path("ca.key"),
        "-out",
        &path("ca.crt"),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &path("server.key"),
        "-out",
        &path("server.csr"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &path("server.csr"),
        "-CA",
        &path("ca.crt"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-extfile",
        &path("ext.cnf"),
        "-out",
        &path("server.crt"),
    ]);
}

/// A real redis-server on a free loopback port, with no persistence.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
    /// With TLS: the CA certificate that signed the server's (made by `openssl`).
    pub ca: Option<PathBuf>,
    dir: TempDir,
}

impl Redis {
    /// Starts one, or `None` (outside CI) when redis-server is not installed.
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Option<Self> {
        Self::start_on(free_port(), extra)
    }

    /// Like [`Redis::start_with`], on `port`.
    pub fn start_on(port: u16, extra: &[&str]) -> Option<Self> {
        if !have("redis-server") {
            return None;
        }
        let mut redis = Self {
            port,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            ca: None,
            dir: TempDir::new("redis"),
        };
        redis.launch();
        Some(redis)
    }

    /// A TLS-only server whose certificate (for 127.0.0.1) is signed by a fresh private CA.
    pub fn start_tls() -> Option<Self> {
        if !have("redis-server") || !have("openssl") {
            return None;
        }
        let dir = TempDir::new("redis-tls");
        let path = |f: &str| dir.0.join(f).display().to_string();
        make_certificates(&dir.0);
        let port = free_port();
        let extra = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &path("server.crt"),
            "--tls-key-file",
            &path("server.key"),
            "--tls-ca-cert-file",
            &path("ca.crt"),
            "--tls-auth-clients",
            "no",
        ];
        let mut redis = Self {
            port,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            ca: Some(dir.0.join("ca.crt")),
            dir,
        };
        redis.launch();
        Some(redis)
    }

    /// Starts the server (again, after [`Redis::kill`]) with its directory and arguments.
    pub fn launch(&mut self) {
        let port = self.port.to_string();
        let plain = if self.ca.is_some() {
            vec![]
        } else {
            vec!["--port", port.as_str()]
        };
        let child = Command::new("redis-server")
            .args(plain)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir.0)
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let up = wait_for(Duration::from_secs(10), || {
            (self.cli(&["ping"]).trim() == "PONG").then_some(())
        });
        assert!(up.is_some(), "redis-server on {} did not start", self.port);
    }

    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Runs redis-cli against this server; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cli = Command::new("redis-cli");
        if let Some(ca) = &self.ca {
            cli.arg("--tls").arg("--cacert").arg(ca);
        }
        let out = cli
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string())
                .status();
        }
    }

    /// SIGKILLs the server: everything in it is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a master is failed over in a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// SIGKILL: its connections close; it comes back started again, empty.
    Kill,
    /// SIGSTOP: its clients stay connected to a server that does not answer; SIGCONT wakes
    /// it up a stale master.
    Stop,
    /// An operator's failover (`CLUSTER FAILOVER` on its replica, `SENTINEL FAILOVER`): it
    /// turns replica with its clients still connected, which then get `MOVED`/`READONLY`.
    Manual,
}

impl Failure {
    pub fn name(self) -> &'static str {
        match self {
            Failure::Kill => "SIGKILLed",
            Failure::Stop => "SIGSTOPped",
            Failure::Manual => "failed over by hand",
        }
    }
}

/// A free loopback port whose cluster bus port (+10000) is free too.
pub fn cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_536 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A Redis Cluster on loopback: three masters, and a replica of each with `replicas`
/// (`cluster-node-timeout` 1000 ms then, so that a replica takes over a second or two after
/// its master dies).
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    /// Three masters, no replicas.
    pub fn start() -> Option<Self> {
        Self::start_replicated(false)
    }

    pub fn start_replicated(replicas: bool) -> Option<Self> {
        let timeout = if replicas { "1000" } else { "5000" };
        let mut nodes = Vec::new();
        for _ in 0..if replicas { 6 } else { 3 } {
            nodes.push(Redis::start_on(
                cluster_port(),
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    timeout,
                ],
            )?);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        run_ok(
            Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&addrs)
                .args(["--cluster-replicas", if replicas { "1" } else { "0" }])
                .arg("--cluster-yes"),
            "redis-cli --cluster create",
        );
        let cluster = Self { nodes };
        let ok = wait_for(Duration::from_secs(30), || {
            let all: Vec<usize> = (0..cluster.nodes.len()).collect();
            cluster.settled(&all).then_some(())
        });
        assert!(ok.is_some(), "cluster did not become ok");
        Some(cluster)
    }

    /// The seed URL: the first node (more seeds with [`Cluster::seeds_url`]).
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// Every node as a seed, comma-separated.
    pub fn seeds_url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis://{}", seeds.join(","))
    }

    /// The nodes that are masters now, by their own word.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].cli(&["role"]).lines().next() == Some("master"))
            .collect()
    }

    /// Whether the `live` nodes all say the cluster is ok, with three masters serving every
    /// slot, and every live replica in sync with its master.
    fn settled(&self, live: &[usize]) -> bool {
        live.iter().all(|&i| {
            let node = &self.nodes[i];
            let role = node.cli(&["role"]);
            node.cli(&["cluster", "info"]).contains("cluster_state:ok")
                && node
                    .cli(&["cluster", "nodes"])
                    .lines()
                    .filter(|l| l.contains("master") && !l.contains("fail") && l.contains('-'))
                    .count()
                    == 3
                && (role.starts_with("master")
                    || node
                        .cli(&["info", "replication"])
                        .contains("master_link_status:up"))
        })
    }

    /// SIGKILLs master `i` (SIGSTOPs it with `stop`: its clients stay connected to it) and
    /// waits until a replica has taken over its slots (every other node says so); the epoch
    /// ms of that moment, or `None` after 30 s.
    pub fn fail_master(&mut self, i: usize, how: Failure) -> Option<i64> {
        match how {
            Failure::Stop => self.nodes[i].signal("STOP"),
            Failure::Kill => self.nodes[i].kill(),
            Failure::Manual => {
                let id = self.nodes[i].cli(&["cluster", "myid"]).trim().to_string();
                let replica = (0..self.nodes.len()).find(|&n| {
                    self.nodes[n]
                        .cli(&["cluster", "nodes"])
                        .lines()
                        .any(|l| l.contains("myself,slave") && l.contains(&id))
                })?;
                let said = self.nodes[replica].cli(&["cluster", "failover"]);
                assert!(said.contains("OK"), "CLUSTER FAILOVER: {said}");
                let all: Vec<usize> = (0..self.nodes.len()).collect();
                return wait_for(Duration::from_secs(30), || {
                    (self.nodes[replica].cli(&["role"]).starts_with("master") && self.settled(&all))
                        .then(now_ms)
                });
            }
        }
        let live: Vec<usize> = (0..self.nodes.len()).filter(|&n| n != i).collect();
        wait_for(Duration::from_secs(30), || {
            live.iter()
                .all(|&n| {
                    let nodes = self.nodes[n].cli(&["cluster", "nodes"]);
                    let dead = format!("127.0.0.1:{}@", self.nodes[i].port);
                    nodes
                        .lines()
                        .any(|l| l.contains(&dead) && l.contains("fail"))
                        && self.nodes[n]
                            .cli(&["cluster", "info"])
                            .contains("cluster_state:ok")
                })
                .then(now_ms)
        })
    }

    /// Brings node `i` back after [`Cluster::fail_master`] (SIGCONT, or started again with
    /// its cluster config): it learns it was failed over and turns replica. Waits until the
    /// whole cluster is settled again.
    pub fn revive(&mut self, i: usize, how: Failure) {
        match how {
            Failure::Stop => self.nodes[i].signal("CONT"),
            Failure::Kill => self.nodes[i].launch(),
            Failure::Manual => {}
        }
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        let ok = wait_for(Duration::from_secs(30), || self.settled(&all).then_some(()));
        assert!(
            ok.is_some(),
            "the cluster did not settle after node {i} came back"
        );
    }
}

/// A Redis primary with two replicas and three sentinels watching it (`verve` the service
/// name, quorum 2, a primary deemed down after 1000 ms), all on loopback.
pub struct Sentinels {
    pub servers: Vec<Redis>,
    sentinels: Vec<Child>,
    pub ports: Vec<u16>,
    _dir: TempDir,
}

impl Sentinels {
    pub const SERVICE: &str = "verve";

    pub fn start() -> Option<Self> {
        if !have("redis-sentinel") {
            return None;
        }
        let primary = Redis::start()?;
        let of = primary.port.to_string();
        let mut servers = vec![primary];
        for _ in 0..2 {
            servers.push(Redis::start_with(&["--replicaof", "127.0.0.1", &of])?);
        }
        let dir = TempDir::new("sentinel");
        let (mut sentinels, mut ports) = (Vec::new(), Vec::new());
        for n in 0..3 {
            let port = free_port();
            let conf = dir.0.join(format!("sentinel-{n}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {name} 127.0.0.1 {of} 2\n\
                     sentinel down-after-milliseconds {name} 1000\n\
                     sentinel failover-timeout {name} 3000\n\
                     sentinel parallel-syncs {name} 2\n",
                    dir = dir.0.display(),
                    name = Self::SERVICE,
                ),
            )
            .unwrap();
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn redis-sentinel");
            sentinels.push(child);
            ports.push(port);
        }
        let set = Self {
            servers,
            sentinels,
            ports,
            _dir: dir,
        };
        let ok = wait_for(Duration::from_secs(20), || {
            set.ports
                .iter()
                .all(|&p| {
                    let replicas = sentinel_cli(p, &["sentinel", "replicas", Self::SERVICE]);
                    replicas.matches("flags\nslave\n").count() == 2
                        && sentinel_cli(p, &["sentinel", "sentinels", Self::SERVICE])
                            .matches("flags\nsentinel\n")
                            .count()
                            == 2
                })
                .then_some(())
        });
        assert!(
            ok.is_some(),
            "the sentinels did not find the replicas and each other"
        );
        Some(set)
    }

    /// `redis-sentinel://` naming every sentinel.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!(
            "redis-sentinel://{}?sentinelServiceName={}",
            hosts.join(","),
            Self::SERVICE
        )
    }

    /// The server every sentinel names as the primary, if they agree.
    pub fn primary(&self) -> Option<usize> {
        let named: Vec<String> = self
            .ports
            .iter()
            .map(|&p| sentinel_cli(p, &["sentinel", "get-master-addr-by-name", Self::SERVICE]))
            .collect();
        let port: u16 = named[0].lines().nth(1)?.trim().parse().ok()?;
        (named.iter().all(|n| *n == named[0]))
            .then(|| self.servers.iter().position(|s| s.port == port))
            .flatten()
    }

    /// SIGKILLs the primary (SIGSTOPs it with `stop`: its clients stay connected, and it
    /// wakes up a stale primary) and waits until every sentinel names another, which says it
    /// is the master: (the old one, the epoch ms of that moment), or `None` after 30 s.
    pub fn fail_primary(&mut self, how: Failure) -> Option<(usize, i64)> {
        let old = self.primary()?;
        match how {
            Failure::Stop => self.servers[old].signal("STOP"),
            Failure::Kill => self.servers[old].kill(),
            Failure::Manual => {
                let said = sentinel_cli(self.ports[0], &["sentinel", "failover", Self::SERVICE]);
                assert!(said.contains("OK"), "SENTINEL FAILOVER: {said}");
            }
        }
        wait_for(Duration::from_secs(30), || {
            let new = self.primary().filter(|&n| n != old)?;
            let role = self.servers[new].cli(&["role"]);
            role.starts_with("master").then(|| (old, now_ms()))
        })
    }

    /// Brings server `i` back after [`Sentinels::fail_primary`] (SIGCONT, or started again
    /// empty): the sentinels make it a replica of the new primary. Waits until it is one, in
    /// sync.
    pub fn revive(&mut self, i: usize, how: Failure) {
        match how {
            Failure::Stop => self.servers[i].signal("CONT"),
            Failure::Kill => self.servers[i].launch(),
            Failure::Manual => {}
        }
        let ok = wait_for(Duration::from_secs(30), || {
            let info = self.servers[i].cli(&["info", "replication"]);
            (info.contains("role:slave") && info.contains("master_link_status:up")).then_some(())
        });
        assert!(ok.is_some(), "server {i} did not become a replica in sync");
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for child in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs redis-cli against the sentinel on `port`; its stdout.
pub fn sentinel_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// nginx as a load balancer on a free loopback port in front of `upstreams`.
pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    _dir: TempDir,
}

impl Nginx {
    pub fn start(upstreams: &[SocketAddr]) -> Option<Self> {
        if !have("nginx") {
            return None;
        }
        let dir = TempDir::new("nginx");
        let port = free_port();
        let servers: String = upstreams
            .iter()
            .map(|a| format!("    server {a};\n"))
            .collect();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
               upstream verve {{\n{servers}    keepalive 64;\n  }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://verve;\n\
                 proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
            dir = dir.0.display()
        );
        let path = dir.0.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(&dir.0)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let up = wait_for(Duration::from_secs(10), || TcpStream::connect(addr).ok());
        assert!(up.is_some(), "nginx did not start");
        Some(Self {
            addr,
            child,
            _dir: dir,
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master stops its workers; a killed master would leave
        // them running (holding the test's stdout open).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let stopped = wait_for(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten()
        });
        if stopped.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends `GET /api/verve/accept?id=…` for every id over `connections` keep-alive
/// connections to `addr` (ids dealt round-robin); returns each id with its status (0 when
/// the connection failed).
pub fn send_ids(
    addr: SocketAddr,
    ids: &[i64],
    connections: usize,
    suffix: &str,
) -> Vec<(i64, u16)> {
    let ids = Arc::new(ids.to_vec());
    let suffix = Arc::new(suffix.to_string());
    let workers: Vec<_> = (0..connections)
        .map(|c| {
            let (ids, suffix) = (Arc::clone(&ids), Arc::clone(&suffix));
            thread::spawn(move || {
                let mut conn = Conn::connect(addr);
                let mut out = Vec::new();
                for &id in ids.iter().skip(c).step_by(connections) {
                    let target = format!("/api/verve/accept?id={id}{suffix}");
                    let status = match conn.try_request("GET", &target) {
                        Ok(reply) => reply.status,
                        Err(_) => {
                            conn = Conn::connect(addr);
                            0
                        }
                    };
                    out.push((id, status));
                }
                out
            })
        })
        .collect();
    workers
        .into_iter()
        .flat_map(|w| w.join().expect("sender"))
        .collect()
}

/// A tarpit connection: opened and (once the client gave up) closed, in epoch ms.
type Held = (i64, Option<i64>);

/// Listeners on many loopback addresses, all on one port, that accept connections, read
/// whatever comes and never answer; they record when each connection opened and closed.
pub struct Tarpit {
    pub port: u16,
    connections: Arc<Mutex<Vec<Held>>>,
}

impl Tarpit {
    pub fn start(ips: &[std::net::Ipv4Addr]) -> Self {
        let (port, listeners) = (0..20)
            .find_map(|_| {
                let first = TcpListener::bind((ips[0], 0)).ok()?;
                let port = first.local_addr().ok()?.port();
                let mut all = vec![first];
                for ip in &ips[1..] {
                    all.push(TcpListener::bind((*ip, port)).ok()?); // taken: try another port
                }
                Some((port, all))
            })
            .expect("bind tarpit listeners on one port");
        let connections = Arc::new(Mutex::new(Vec::new()));
        for listener in listeners {
            let connections = Arc::clone(&connections);
            thread::spawn(move || {
                for mut stream in listener.incoming().flatten() {
                    let connections = Arc::clone(&connections);
                    let n = {
                        let mut all = connections.lock().unwrap();
                        all.push((now_ms(), None));
                        all.len() - 1
                    };
                    thread::spawn(move || {
                        // Until the client gives up and closes.
                        let mut sink = [0u8; 4096];
                        while stream.read(&mut sink).is_ok_and(|n| n > 0) {}
                        connections.lock().unwrap()[n].1 = Some(now_ms());
                    });
                }
            });
        }
        Self { port, connections }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.connections.lock().unwrap().len()
    }

    /// Most connections open at once. One closing at most `handover_ms` after another
    /// opened counts as handed over (the client's close and its next connect race).
    pub fn most_open(&self, handover_ms: i64) -> usize {
        let all = self.connections.lock().unwrap();
        all.iter()
            .map(|&(opened, _)| {
                all.iter()
                    .filter(|&&(o, c)| o <= opened && c.is_none_or(|c| c - handover_ms > opened))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }
}

/// A count-log line's timestamp (`2026-11-24T14:06:01.004Z`) in epoch milliseconds.
pub fn line_ms(line: &Line) -> i64 {
    let ts = line.raw.split(' ').next().unwrap_or_default();
    let num = |range: std::ops::Range<usize>| -> i64 {
        ts.get(range)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad timestamp in {}", line.raw))
    };
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days * 86_400 + num(11..13) * 3600 + num(14..16) * 60 + num(17..19);
    secs * 1000 + num(20..23)
}

/// A TCP relay on loopback that holds every client→server byte for `delay_ms` (order kept,
/// per connection) and passes answers back at once: a distant instance's link to Redis.
/// The delay can be changed while it runs ([`DelayLink::set_delay`]: a spike).
pub struct DelayLink {
    pub port: u16,
    delay: Arc<std::sync::atomic::AtomicU64>,
}

impl DelayLink {
    pub fn start(upstream: u16, delay_ms: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind delay link");
        let port = listener.local_addr().unwrap().port();
        let delay = Arc::new(std::sync::atomic::AtomicU64::new(delay_ms));
        let shared = Arc::clone(&delay);
        thread::spawn(move || {
            let delay = shared;
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (mut from_client, mut to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut from_server, mut to_client) = (server, client);
                let (chunks, due) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
                let delay = Arc::clone(&delay);
                thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = from_client.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let ms = delay.load(Ordering::Relaxed);
                        let at = Instant::now() + Duration::from_millis(ms);
                        if chunks.send((at, buf[..n].to_vec())).is_err() {
                            break;
                        }
                    }
                });
                thread::spawn(move || {
                    for (at, bytes) in due {
                        thread::sleep(at.saturating_duration_since(Instant::now()));
                        if to_server.write_all(&bytes).is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown(std::net::Shutdown::Both);
                });
                thread::spawn(move || {
                    let _ = std::io::copy(&mut from_server, &mut to_client);
                    let _ = to_client.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Self { port, delay }
    }

    /// Holds the bytes read from now on for `delay_ms` (those already held keep their time;
    /// order is kept either way).
    pub fn set_delay(&self, delay_ms: u64) {
        self.delay.store(delay_ms, Ordering::Relaxed);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}
