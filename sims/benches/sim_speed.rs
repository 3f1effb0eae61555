//! Benchmark: simulated runs per second, checked against every invariant,
//! on one thread: the standard run (2 clients × 20 calls under a seed-drawn
//! fault mix) and the full swarm (2–3 clients, plus the settle and liveness
//! phase, ≈ 8 s simulated).
//!
//! Run: `cargo bench --bench sim_speed [-- SEEDS]` (default 2,000 seeds each).

use std::time::Instant;

use abacus::client::Delivery;
use abacus_sims::{catalogue, sweep};

fn main() {
    let seeds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2_000);
    for name in ["standard", "swarm"] {
        let start = Instant::now();
        let mut violations = 0;
        let mut events = 0;
        for seed in 0..seeds {
            let s = catalogue::by_name(name, seed).expect("registered scenario");
            assert_eq!(s.mode, Delivery::ExactlyOnce);
            let (run, v) = sweep::run_checked(&s, seed);
            violations += v.len();
            events += run.records.len();
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{name}: {seeds} seeds, {events} events in {secs:.1} s = {:.0} seeds/s ({:.0} events/s), {violations} violations",
            seeds as f64 / secs,
            events as f64 / secs
        );
    }
}
