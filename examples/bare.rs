//! The reference for benchmarks: a bare hyper server that answers `ok` to everything, built
//! with the same release profile and runtime as verve (SPEC §8). Usage: `bare [ADDR]`.
//!
//! `BARE_TIMER=1` gives it verve's hyper builder settings too (a timer and a 10 s header read
//! timeout, which arms a timer for every request head): to measure what those cost.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = TcpListener::bind(&addr).await?;
    println!("bare listening on {}", listener.local_addr()?);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true);
    if std::env::var_os("BARE_TIMER").is_some_and(|v| v == "1") {
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10));
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
