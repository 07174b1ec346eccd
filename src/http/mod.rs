//! The HTTP edge: accept connections, route, parse the accept query, answer.
//!
//! A hand-written `hyper` service whose future is `Ready`: a single-node accept is decided
//! synchronously, so the request path neither boxes a future nor clones shared state. Error
//! causes map to a status in one place ([`Outcome`]); this module never decides when windows
//! are reported.

pub mod query;

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::Shared;
use crate::metrics::Outcome;
use crate::window::Registered;

/// The counted path.
pub const ACCEPT_PATH: &str = "/api/verve/accept";

/// Longest request target answered by the service; longer gets 414.
pub const MAX_TARGET_LEN: usize = 8 * 1024;

/// hyper's read buffer, and so its head limit: well above [`MAX_TARGET_LEN`] so that the
/// service, not hyper, answers an over-long target.
const MAX_BUF: usize = 64 * 1024;

const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");

pub type Body = Full<Bytes>;

/// Serves `listener` until `shutdown` resolves: then `/readyz` turns 503, the listener stays
/// open for the shutdown delay, closes, and in-flight requests get the shutdown timeout.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(
            shared.settings.header_read_timeout_ms,
        ))
        .max_buf_size(MAX_BUF)
        .keep_alive(true);
    let draining = async {
        shutdown.await;
        shared.ready.store(false, Ordering::Release);
        tokio::time::sleep(Duration::from_millis(shared.settings.shutdown_delay_ms)).await;
    };
    tokio::pin!(draining);
    loop {
        let stream = tokio::select! {
            biased;
            _ = &mut draining => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    log::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = Service {
            shared: Arc::clone(&shared),
        };
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
    drop(listener);
    let deadline = Duration::from_millis(shared.settings.shutdown_timeout_ms);
    if tokio::time::timeout(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        log::warn!("connections still open at the shutdown deadline were cut");
    }
}

/// The per-connection service.
#[derive(Clone)]
struct Service {
    shared: Arc<Shared>,
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        ready(Ok(respond(&self.shared, &req)))
    }
}

fn respond(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let uri = req.uri();
    let target_len = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    let is_get = req.method() == Method::GET;
    if target_len > MAX_TARGET_LEN {
        return answer(shared, Outcome::UriTooLong);
    }
    match uri.path() {
        ACCEPT_PATH if is_get => accept(shared, uri.query().unwrap_or("")),
        "/healthz" if is_get => text(StatusCode::OK, Bytes::from_static(b"ok")),
        "/readyz" if is_get => {
            if shared.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, Bytes::from_static(b"ok"))
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Bytes::from_static(b"failed"),
                )
            }
        }
        "/metrics" if is_get => {
            let mut response = text(StatusCode::OK, shared.render_metrics().into());
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        ACCEPT_PATH | "/healthz" | "/readyz" | "/metrics" => {
            answer(shared, Outcome::MethodNotAllowed)
        }
        _ => answer(shared, Outcome::NotFound),
    }
}

/// Counts the id (and registers the endpoint) of a valid query in its window.
fn accept(shared: &Shared, query: &str) -> Response<Body> {
    let query = match query::parse(query) {
        Ok(query) => query,
        Err(e) => {
            log::debug!("bad accept query: {e:?}");
            return answer(shared, Outcome::BadRequest);
        }
    };
    let admission = shared.windows.admit(shared.clock.now_ms());
    let window = admission.window();
    window.insert(query.id);
    if let Some(endpoint) = &query.endpoint {
        match window.register_endpoint(endpoint) {
            Registered::Yes => {}
            Registered::FirstOverflow => {
                shared
                    .metrics
                    .endpoints_dropped
                    .fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "window {} holds {} endpoints already; further endpoints are dropped",
                    window.start,
                    shared.settings.callback_max_endpoints
                );
            }
            Registered::Overflow => {
                shared
                    .metrics
                    .endpoints_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    drop(admission);
    answer(shared, Outcome::Ok)
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
