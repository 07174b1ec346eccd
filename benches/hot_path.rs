//! Micro-benchmarks of the accept path's own work: query parsing and the window insert.
//! `cargo bench` measures; `cargo test --benches` (CI) runs each once to keep them working.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use verve::http::query::{self, Endpoint, EndpointBuf};
use verve::sketch::HashKey;
use verve::window::Windows;

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("query");
    group.throughput(Throughput::Elements(1));
    group.bench_function("id only", |b| {
        b.iter(|| query::parse(black_box("id=8402937461023")))
    });
    group.bench_function("id and plain endpoint", |b| {
        b.iter(|| {
            query::parse(black_box(
                "id=8402937461023&endpoint=https://example.com/hook",
            ))
        })
    });
    group.bench_function("id and encoded endpoint", |b| {
        b.iter(|| {
            query::parse(black_box(
                "id=8402937461023&endpoint=https%3A%2F%2Fexample.com%2Fhook%3Fa%3D1",
            ))
        })
    });
    group.finish();
}

fn insert(c: &mut Criterion) {
    let mut group = c.benchmark_group("window");
    group.throughput(Throughput::Elements(1));
    // Each new id into windows made by `make` (exact sets or approx sketches).
    let unique = |b: &mut criterion::Bencher, make: fn() -> Windows| {
        let windows = make();
        let mut id = 0i64;
        b.iter(|| {
            id += 1;
            windows
                .admit(black_box(1_000))
                .map(|a| a.window().insert(black_box(id)))
        })
    };
    group.bench_function("admit and insert unique id", |b| {
        unique(b, || Windows::new(0, 3600, (1000, 100), 0))
    });
    group.bench_function("admit and insert duplicate id", |b| {
        let windows = Windows::new(0, 3600, (1000, 100), 0);
        windows.admit(1_000).map(|a| a.window().insert(42));
        b.iter(|| {
            windows
                .admit(black_box(1_000))
                .map(|a| a.window().insert(black_box(42)))
        })
    });
    group.bench_function("admit and insert unique id, approx", |b| {
        unique(b, || {
            Windows::new(0, 3600, (1000, 100), 0).approx(HashKey::random(), 0)
        })
    });
    group.bench_function("parse and register known endpoint", |b| {
        let windows = Windows::new(0, 3600, (1000, 100), 0);
        let register = |raw: &str| {
            let mut buf = EndpointBuf::new();
            let endpoint = Endpoint::parse(raw, &mut buf).ok()?;
            Some(windows.admit(1_000)?.window().register_endpoint(&endpoint))
        };
        register("https%3A%2F%2Fexample.com%2Fhook");
        b.iter(|| register(black_box("https%3A%2F%2Fexample.com%2Fhook")))
    });
    group.finish();
}

criterion_group!(benches, parse, insert);
criterion_main!(benches);
