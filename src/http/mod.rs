//! The HTTP edge: accept connections, route, parse the accept query, answer.
//!
//! A hand-written `hyper` service whose future is `Ready`: a single-node accept is decided
//! synchronously, so the request path neither boxes a future nor clones shared state. Error
//! causes map to a status in one place ([`Outcome`]); this module never decides when windows
//! are reported.

pub mod conns;
pub mod query;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::Shared;
use crate::metrics::Outcome;
use crate::report::fleet::{endpoint_caps, expire_at};
use crate::report::members::trust_period;
use crate::store::EndpointAdd;
use crate::window::{Admission, Admitted, Bound, Claim, Lead, Registered, Verdict, Window};
use conns::{Activity, Connections};
use query::{Endpoint, EndpointBuf};

/// The counted path.
pub const ACCEPT_PATH: &str = "/api/verve/accept";

/// Longest request target answered by the service; longer gets 414.
pub const MAX_TARGET_LEN: usize = 8 * 1024;

const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");

pub type Body = Full<Bytes>;

/// Serves `listener` until `shutdown` resolves: then `/readyz` turns 503, the listener stays
/// open for the shutdown delay, closes, and in-flight requests get the shutdown timeout.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        // No timer, so no timer per request head: the header read timeout is the sweeper's
        // (`conns`).
        .header_read_timeout(None)
        // hyper's read buffer: at least 16 KiB (the flag's floor), well above MAX_TARGET_LEN,
        // so that the service answers an over-long target. hyper refuses a head only once a
        // read leaves it incomplete with the buffer full, so one that arrives in a single read
        // can reach twice this; `Service::call` holds the exact limit.
        .max_buf_size(shared.settings.max_header_bytes as usize)
        .keep_alive(true);
    let open = Connections::new(Duration::from_millis(
        shared.settings.header_read_timeout_ms,
    ));
    let sweeper = tokio::spawn(Arc::clone(&open).sweep());
    let draining = async {
        shutdown.await;
        shared.ready.store(false, Ordering::Release);
        tokio::time::sleep(Duration::from_millis(shared.settings.shutdown_delay_ms)).await;
    };
    tokio::pin!(draining);
    // One permit per open connection: at the limit the loop stops accepting, and new
    // connections wait in the kernel's backlog.
    let connections = Arc::new(Semaphore::new(shared.settings.max_connections as usize));
    let mut accept_errors = AcceptErrors::default();
    loop {
        let permit = tokio::select! {
            biased;
            _ = &mut draining => break,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            biased;
            _ = &mut draining => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    accept_errors.succeeded();
                    stream
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    let pause = accept_errors.failed(&e);
                    tokio::select! {
                        biased;
                        _ = &mut draining => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::default());
        let service = Service {
            shared: Arc::clone(&shared),
            routes,
            activity: Arc::clone(&activity),
        };
        match &shared.lanes {
            None => {
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                let connection = open.watch(connection, activity);
                tokio::spawn(async move {
                    connection.await;
                    drop(permit);
                });
            }
            Some(lanes) => {
                // Moved to its lane's runtime: deregistered here, registered there.
                let Ok(stream) = stream.into_std() else {
                    continue;
                };
                let (builder, open) = (builder.clone(), Arc::clone(&open));
                lanes.spawn_connection(move || async move {
                    if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                        let connection = builder.serve_connection(TokioIo::new(stream), service);
                        open.watch(connection, activity).await;
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    // Each connection finishes the request it serves and closes; at the deadline every one
    // still open is cut, so none can be answered after the reporter has written the open
    // window's line.
    open.drain();
    let all = shared.settings.max_connections;
    let deadline = Duration::from_millis(shared.settings.shutdown_timeout_ms);
    if tokio::time::timeout(deadline, connections.acquire_many(all))
        .await
        .is_err()
    {
        open.cut();
        log::warn!("connections still open at the shutdown deadline were cut");
        // A connection task may not have seen the cut yet: wait until every permit is back.
        let _ = tokio::time::timeout(CUT_GRACE, connections.acquire_many(all)).await;
    }
    sweeper.abort();
}

/// How long `serve` waits for cut connections to be dropped.
const CUT_GRACE: Duration = Duration::from_secs(1);

/// The accept loop's failures (out of descriptors, say): the pause before the next try
/// doubles up to a second, and one warning a second at most says how many there were.
#[derive(Default)]
struct AcceptErrors {
    pause: Duration,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    const FIRST_PAUSE: Duration = Duration::from_millis(10);
    const MAX_PAUSE: Duration = Duration::from_secs(1);

    fn succeeded(&mut self) {
        self.pause = Duration::ZERO;
    }

    /// Counts `e`, maybe logs it; how long to pause before accepting again.
    fn failed(&mut self, e: &std::io::Error) -> Duration {
        self.unlogged += 1;
        if self
            .last_logged
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            log::warn!(
                "accept failed: {e} ({} failures since the last warning); pausing accepts",
                self.unlogged
            );
            self.last_logged = Some(Instant::now());
            self.unlogged = 0;
        }
        self.pause = (self.pause * 2).clamp(Self::FIRST_PAUSE, Self::MAX_PAUSE);
        self.pause
    }
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// Everything (no `--admin-listen`).
    All,
    /// The accept path and the probes; the admin routes are 404 here.
    Public,
    /// The admin routes (`/metrics`, `/`, `/api/verve/stats`) and the probes.
    Admin,
}

/// The status page, its JSON and the metrics: what `--admin-listen` moves off `--listen`.
const ADMIN_PATHS: [&str; 3] = ["/", STATS_PATH, "/metrics"];

/// The status page's data.
pub const STATS_PATH: &str = "/api/verve/stats";

/// The per-connection service.
#[derive(Clone)]
struct Service {
    shared: Arc<Shared>,
    routes: Routes,
    /// The connection's, for its header read timeout.
    activity: Arc<Activity>,
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<Incoming>) -> Answer {
        self.activity.head();
        let uri = req.uri();
        let target_len = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
        if target_len > MAX_TARGET_LEN {
            return Answer::now(answer(&self.shared, Outcome::UriTooLong));
        }
        if target_len + header_lines_len(&req) > self.shared.settings.max_header_bytes as usize {
            return Answer::now(answer(&self.shared, Outcome::HeaderTooLarge));
        }
        if req.method() == Method::GET && uri.path() == ACCEPT_PATH && self.routes != Routes::Admin
        {
            let mut answer = accept(&self.shared, uri.query().unwrap_or(""));
            if let Answer::Later(_, waiting) = &mut answer {
                // In service until answered: not idle, whatever the timeout.
                self.activity.serving(true);
                *waiting = Some(Arc::clone(&self.activity));
            }
            return answer;
        }
        Answer::now(respond(&self.shared, self.routes, &req))
    }
}

/// The header lines' size as sent, near enough: each `name: value\r\n`. With the target's
/// length, the request head's.
fn header_lines_len(req: &Request<Incoming>) -> usize {
    req.headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// The service's future: decided on the spot, or (fleet mode, an id not seen locally)
/// waiting for the store, with the connection's activity to tell when it is answered.
pub enum Answer {
    Now(Option<Response<Body>>),
    Later(
        Pin<Box<dyn Future<Output = Response<Body>> + Send>>,
        Option<Arc<Activity>>,
    ),
}

impl Answer {
    fn now(response: Response<Body>) -> Self {
        Answer::Now(Some(response))
    }
}

impl Future for Answer {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Answer::Now(response) => Poll::Ready(Ok(response
                .take()
                .unwrap_or_else(|| text(StatusCode::INTERNAL_SERVER_ERROR, Bytes::new())))),
            Answer::Later(future, waiting) => {
                let response = std::task::ready!(future.as_mut().poll(cx));
                if let Some(activity) = waiting.take() {
                    activity.serving(false);
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}

/// Every route but a GET of the accept path (the target length is already checked).
fn respond(shared: &Shared, routes: Routes, req: &Request<Incoming>) -> Response<Body> {
    let uri = req.uri();
    let path = uri.path();
    let served = match routes {
        Routes::All => true,
        Routes::Public => !ADMIN_PATHS.contains(&path),
        Routes::Admin => path != ACCEPT_PATH,
    };
    if !served {
        return answer(shared, Outcome::NotFound);
    }
    if req.method() != Method::GET {
        return match path {
            ACCEPT_PATH | "/healthz" | "/readyz" | "/metrics" | "/" | STATS_PATH => {
                answer(shared, Outcome::MethodNotAllowed)
            }
            _ => answer(shared, Outcome::NotFound),
        };
    }
    match path {
        "/healthz" => text(StatusCode::OK, Bytes::from_static(b"ok")),
        "/readyz" => {
            if shared.is_ready() {
                text(StatusCode::OK, Bytes::from_static(b"ok"))
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Bytes::from_static(b"failed"),
                )
            }
        }
        "/metrics" => typed(shared.render_metrics().into(), "text/plain; version=0.0.4"),
        "/" => typed(
            Bytes::from_static(crate::status::PAGE.as_bytes()),
            "text/html; charset=utf-8",
        ),
        STATS_PATH => typed(crate::status::stats_json(shared).into(), "application/json"),
        _ => answer(shared, Outcome::NotFound),
    }
}

/// A 200 with `body` of `content_type`, never cached (it is live data).
fn typed(body: Bytes, content_type: &'static str) -> Response<Body> {
    let mut response = text(StatusCode::OK, body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Counts the id (and registers the endpoint) of a valid query in its window. On a single
/// node, or in fleet mode for an id and endpoint this instance has seen in the window, that
/// is decided here; otherwise the store decides.
fn accept(shared: &Arc<Shared>, query: &str) -> Answer {
    let query = match query::parse_params(query) {
        Ok(query) => query,
        Err(e) => {
            log::debug!("bad accept query: {e:?}");
            return Answer::now(answer(shared, Outcome::BadRequest));
        }
    };
    // Decoded and normalized on this stack frame: nothing is allocated for an endpoint
    // unless it is registered for the first time.
    let mut buf;
    let endpoint = match query.endpoint {
        None => None,
        Some(raw) => {
            buf = EndpointBuf::new();
            match Endpoint::parse(raw, &mut buf) {
                Ok(endpoint) => Some(endpoint),
                Err(e) => {
                    log::debug!("bad accept query: {e:?}");
                    return Answer::now(answer(shared, Outcome::BadRequest));
                }
            }
        }
    };
    let endpoint = match endpoint {
        Some(e) if !shared.settings.callback_hosts.permits(e.host()) => {
            // Not a host callbacks may go to: the id counts, the endpoint is not registered.
            shared
                .metrics
                .endpoints_refused
                .fetch_add(1, Ordering::Relaxed);
            None
        }
        endpoint => endpoint,
    };
    // Decided under the open windows' read lock; only a request that waits for the store
    // holds its window beyond it.
    let decided = shared
        .windows
        .with_admitted(shared.clock.now_ms(), |admitted| {
            decide(shared, admitted, query.id, endpoint)
        });
    // `None`: shut down, counted no more.
    decided.unwrap_or_else(|| Answer::now(answer(shared, Outcome::Unavailable)))
}

/// [`accept`] for a request admitted to its window.
fn decide(
    shared: &Arc<Shared>,
    admitted: Admitted<'_>,
    id: i64,
    endpoint: Option<Endpoint<'_>>,
) -> Answer {
    let window = admitted.window();
    if shared.store.is_none() {
        window.insert(id);
        if let Some(endpoint) = &endpoint {
            note(shared, window, window.register_endpoint(endpoint));
        }
        return Answer::now(answer(shared, Outcome::Ok));
    }
    if shared.fenced.load(Ordering::Relaxed) || shared.settings_differ.load(Ordering::Relaxed) {
        // No member of the fleet: the fleet may fix a count without waiting for us, so not
        // even an id this window holds already is answered `ok` (SPEC §6.3).
        return Answer::now(answer(shared, Outcome::Unavailable));
    }
    let seen = match window.sketch() {
        None => window.contains(id),
        // Approx mode: the id only updates this instance's sketch, which reaches Redis
        // within a second — while the last merge is recent (else 503: an instance that dies
        // must not take more than a few seconds of updates with it) and before the cutoff.
        Some(_) => {
            if shared.merge_stale.load(Ordering::Relaxed) || window.is_cut() {
                return Answer::now(answer(shared, Outcome::Unavailable));
            }
            window.insert(id);
            true
        }
    };
    let endpoint_known = endpoint.as_ref().is_none_or(|e| window.has_endpoint(e));
    if endpoint_known && seen {
        return Answer::now(answer(shared, Outcome::Ok));
    }
    if window.is_cut() {
        // Past its cutoff: a count read at the end of the grace could miss this id.
        return Answer::now(answer(shared, Outcome::Unavailable));
    }
    let Some(waiting) = Waiting::enter(shared) else {
        return Answer::now(answer(shared, Outcome::Unavailable));
    };
    // The future outlives this frame: the endpoint moves into it (normalized, allocated once).
    let endpoint = endpoint
        .filter(|_| !endpoint_known)
        .map(|e| e.as_str().to_owned());
    Answer::Later(
        Box::pin(accept_in_fleet(
            waiting,
            admitted.hold(),
            id,
            seen,
            endpoint,
        )),
        None,
    )
}

/// A request's place among those waiting for the store (at most `--max-inflight`), held
/// until it is answered.
struct Waiting(Arc<Shared>);

impl Waiting {
    /// A place, or `None` when all are taken (the request is shed with 503).
    fn enter(shared: &Arc<Shared>) -> Option<Self> {
        let max = shared.settings.max_inflight as usize;
        let taken = shared.waiting.fetch_add(1, Ordering::AcqRel);
        if taken >= max {
            shared.waiting.fetch_sub(1, Ordering::AcqRel);
            shared.metrics.shed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Self(Arc::clone(shared)))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts and logs an endpoint the window refused; true when it was newly added.
fn note(shared: &Shared, window: &Window, registered: Registered) -> bool {
    match registered {
        Registered::Added => true,
        Registered::Known => false,
        Registered::Full { first } => {
            shared
                .metrics
                .endpoints_dropped
                .fetch_add(1, Ordering::Relaxed);
            if first {
                log::warn!(
                    "window {} holds {} endpoints already; further endpoints are dropped",
                    window.start,
                    shared.settings.callback_max_endpoints
                );
            }
            false
        }
        Registered::DomainFull { first } => {
            shared
                .metrics
                .endpoints_dropped_domain
                .fetch_add(1, Ordering::Relaxed);
            if first {
                log::warn!(
                    "window {}: a domain holds {} endpoints already; its further endpoints are dropped",
                    window.start,
                    shared.settings.callback_max_per_domain
                );
            }
            false
        }
    }
}

/// Fleet mode: the store decides an id this instance has not seen in the window (one
/// `SADD`, shared by concurrent requests for the same id) and registers a new endpoint
/// fleet-wide, within the fleet's bounds (an endpoint refused by one is not registered, and
/// the request is still `ok`). Any store failure answers 503: the outcome is unknown, a
/// retry is safe.
/// `seen`: the id was in the window when the request arrived (only its endpoint is new).
async fn accept_in_fleet(
    waiting: Waiting,
    admission: Admission,
    id: i64,
    seen: bool,
    endpoint: Option<String>,
) -> Response<Body> {
    // One timer per window, not per request: at the window's cutoff every request of it
    // still waiting is answered 503 (SPEC §6.2).
    let cutoff = admission.window().cutoff();
    let shared = &waiting.0;
    tokio::select! {
        biased;
        response = decide_in_fleet(shared, &admission, id, seen, endpoint) => response,
        () = cutoff => answer(shared, Outcome::Unavailable),
    }
}

/// What the store makes of a request in fleet mode (see [`accept_in_fleet`]).
async fn decide_in_fleet(
    shared: &Arc<Shared>,
    admission: &Admission,
    id: i64,
    seen: bool,
    endpoint: Option<String>,
) -> Response<Body> {
    let Some(store) = shared.store.as_ref() else {
        return answer(shared, Outcome::Unavailable);
    };
    let window = admission.window();
    let expiry = expire_at(shared, window.start);
    if !seen {
        let started = Instant::now();
        let added = window.add_once(id, || store.add(window.start, id)).await;
        shared.metrics.store_call(started.elapsed(), added.is_ok());
        if let Err(e) = added {
            // `None`: the SADD of a concurrent request for the same id, whose failure is
            // everyone's.
            log::debug!("SADD for window {} failed: {e:?}", window.start);
            return answer(shared, Outcome::Unavailable);
        }
        // The write carried the key's expiry; this only tells the reporter which shard sets
        // must still be in Redis when the window is final (else it re-adds its ids).
        window.touch_shard(store.shard(id));
    }
    // fred's command futures are several KiB: boxed here, they are only built for a new
    // endpoint instead of being carried (and copied) by every request's future.
    if let Some(endpoint) = endpoint {
        // It counts as known only once Redis holds it; concurrent requests naming it share
        // the one registration and its outcome. Normalized by this request already, it
        // parses again; a failure (a bug) is an unknown outcome, never an `ok` without it.
        // The lead also takes the endpoint's site, which the fleet counts domains by.
        // Registered or refused by a bound, the id counts: `ok`. Unknown: 503.
        let settled = loop {
            let Some((claim, site)) = with_endpoint(&endpoint, |e| {
                let claim = window.claim_endpoint(e);
                let site = matches!(claim, Claim::Lead(_)).then(|| e.site().to_string());
                (claim, site)
            }) else {
                return answer(shared, Outcome::Unavailable);
            };
            break match claim {
                Claim::Settled(registered) => {
                    note(shared, window, registered);
                    true
                }
                Claim::Wait(registration) => match registration.verdict().await {
                    Verdict::Registered => true,
                    Verdict::Refused(bound) => {
                        // The lead logged it; each request naming a refused endpoint counts.
                        note(shared, window, refused_again(bound));
                        true
                    }
                    Verdict::Failed => false,
                    // Its lead's client hung up first: claim again (lead in its place, or
                    // share a newer lead's registration) — unless the cutoff passed.
                    Verdict::Abandoned if window.is_cut() => false,
                    Verdict::Abandoned => continue,
                },
                // A bound is reached only with registrations in flight: no store call, no
                // refusal; 503, and a retry finds them settled.
                Claim::Undecided => {
                    log::debug!(
                        "window {}: endpoint bound reached with registrations in flight",
                        window.start
                    );
                    return answer(shared, Outcome::Unavailable);
                }
                // Redis is in a new generation and the members may not all have re-added
                // their endpoints yet: a new one now could take the place of one registered
                // (and answered `ok`) first. 503 until the trust period is over.
                Claim::Lead(lead) if store.settling(trust_period(&shared.settings)) => {
                    lead.fail();
                    false
                }
                Claim::Lead(lead) => {
                    let site = site.unwrap_or_default();
                    let caps = endpoint_caps(shared);
                    let added =
                        Box::pin(store.add_endpoint(window.start, &endpoint, &site, caps, expiry));
                    // Refused: not registered, counted, logged once per window; the id counts.
                    let refuse = |lead: Lead<'_>, bound| {
                        note(shared, window, lead.refuse(bound));
                        true
                    };
                    match added.await {
                        // Acknowledged after the cutoff: as good as failed for this window.
                        Ok(_) if window.is_cut() => {
                            lead.fail();
                            false
                        }
                        Ok(EndpointAdd::Registered) => {
                            lead.confirm();
                            true
                        }
                        Ok(EndpointAdd::WindowFull) => refuse(lead, Bound::Window),
                        Ok(EndpointAdd::DomainFull) => refuse(lead, Bound::Domain),
                        Err(e) => {
                            log::debug!(
                                "registering an endpoint for window {} failed: {e}",
                                window.start
                            );
                            lead.fail();
                            false
                        }
                    }
                }
            };
        };
        if !settled {
            shared.metrics.store_call(Duration::ZERO, false);
            return answer(shared, Outcome::Unavailable);
        }
    }
    answer(shared, Outcome::Ok)
}

/// What a request naming an endpoint already refused by `bound` counts (the refusal was
/// logged when it was first made).
fn refused_again(bound: Bound) -> Registered {
    match bound {
        Bound::Window => Registered::Full { first: false },
        Bound::Domain => Registered::DomainFull { first: false },
    }
}

/// Runs `f` on a normalized endpoint held by a request's future (its buffer lives on the
/// stack of this call only, not in the future); `None` if it does not parse.
fn with_endpoint<T>(url: &str, f: impl FnOnce(&Endpoint<'_>) -> T) -> Option<T> {
    let mut buf = EndpointBuf::new();
    Endpoint::parse_decoded(url, &mut buf).ok().map(|e| f(&e))
}

/// The response for an outcome of the accept path, counted in metrics.
fn answer(shared: &Shared, outcome: Outcome) -> Response<Body> {
    shared.metrics.request(outcome);
    let status = StatusCode::from_u16(outcome.status()).unwrap_or(StatusCode::OK);
    let body = if outcome == Outcome::Ok {
        Bytes::from_static(b"ok")
    } else {
        Bytes::from_static(b"failed")
    };
    let mut response = text(status, body);
    match outcome {
        Outcome::MethodNotAllowed => {
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
        }
        Outcome::Unavailable => {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    response
}

fn text(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, TEXT_PLAIN);
    response
}

/// Descriptors kept for everything but client connections: the listeners, Redis, callback
/// targets, the count log, Kafka.
const DESCRIPTOR_RESERVE: u64 = 256;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (as nginx and most servers do) and warns
/// when `max_connections` client connections would not fit in it. Returns the soft limit.
pub fn raise_descriptor_limit(max_connections: u32) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed in.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        // An unlimited hard limit still stops at the kernel's nr_open (2^20 by default).
        let target = if limit.rlim_max == libc::RLIM_INFINITY {
            1 << 20
        } else {
            limit.rlim_max
        };
        if limit.rlim_cur < target {
            let raised = libc::rlimit {
                rlim_cur: target,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = target;
            }
        }
        limit.rlim_cur
    };
    let needed = u64::from(max_connections) + DESCRIPTOR_RESERVE;
    if soft < needed {
        log::warn!(
            "--max-connections {max_connections} needs about {needed} file descriptors but the limit is {soft}: \
             connections beyond it fail to be accepted (raise the limit, e.g. LimitNOFILE= or ulimit -n)"
        );
    }
    soft
}
