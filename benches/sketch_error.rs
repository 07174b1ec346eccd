//! Approx mode's error (SPEC §8): the sketch fed directly — no HTTP — with 10³ … 10⁸ distinct
//! ids, several keys and id ranges each; every run's estimate against the exact count.
//! Target: every run within ±2.5 %, median |error| ≤ 1 %.
//!
//!   cargo bench --bench sketch_error            (the whole table: about half a minute)
//!   cargo bench --bench sketch_error -- 6 9     (seeds: how many; largest power of ten)
//!
//! Under `cargo test` (no `--bench` flag) it runs a small table only, as a smoke test.

use std::time::Instant;

use verve::sketch::{HashKey, Sketch};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let numbers: Vec<u32> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let seeds = numbers.first().copied().unwrap_or(if full { 5 } else { 2 });
    let largest = numbers.get(1).copied().unwrap_or(if full { 8 } else { 4 });
    let started = Instant::now();
    let mut errors = Vec::new();
    println!(
        "{:>12} {:>5} {:>12} {:>9}",
        "distinct", "seed", "estimate", "error %"
    );
    for power in 3..=largest {
        let n = 10u64.pow(power);
        for seed in 0..seeds {
            // A fixed key per seed (reproducible), and ids from a range of its own.
            let key = HashKey::from_hex(&format!("{:016x}{:016x}", 0x9e37_79b9 + seed, seed))
                .expect("a key");
            let base = i64::from(seed) * 1_000_000_000_000 + i64::from(power) * 10_000_000_000;
            let sketch = Sketch::new();
            for id in base..base + n as i64 {
                sketch.insert(&key, id);
            }
            let estimate = sketch.estimate();
            let error = (estimate as f64 - n as f64) / n as f64 * 100.0;
            errors.push(error);
            println!("{n:>12} {seed:>5} {estimate:>12} {error:>+9.3}");
        }
    }
    let mut magnitudes: Vec<f64> = errors.iter().map(|e| e.abs()).collect();
    magnitudes.sort_by(f64::total_cmp);
    let worst = magnitudes.last().copied().unwrap_or(0.0);
    let median = if magnitudes.len() % 2 == 1 {
        magnitudes[magnitudes.len() / 2]
    } else {
        (magnitudes[magnitudes.len() / 2 - 1] + magnitudes[magnitudes.len() / 2]) / 2.0
    };
    let met = worst <= 2.5 && median <= 1.0;
    println!(
        "{} runs in {:.1} s: worst |error| {worst:.3} % (target <= 2.5), median |error| {median:.3} % (target <= 1.0): {}",
        errors.len(),
        started.elapsed().as_secs_f64(),
        if met { "met" } else { "NOT MET" }
    );
}
