//! Benchmark: simulated runs per second, checked against every invariant,
//! on one thread: the standard run (2 clients × 20 calls under a seed-drawn
//! fault mix), the full swarm (2–3 clients, plus the settle and liveness
//! phase, ≈ 8 s simulated) and the replicated swarm (three replicas over
//! the store model, 2–3 clients with one client per replica, writes and
//! reads of three registers, the replicated fault mix, then the liveness
//! phase).
//!
//! It also times the linearizability checker alone on each run's history
//! (already included in the seeds/s), to state its cost per seed.
//!
//! Run: `cargo bench --bench sim_speed [-- SEEDS]` (default 2,000 seeds each).

use std::time::{Duration, Instant};

use abacus::client::Delivery;
use abacus_sims::{catalogue, check::linearizable, sweep};

fn main() {
    let seeds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2_000);
    for name in ["standard", "swarm", "replicated-swarm"] {
        let start = Instant::now();
        let mut violations = 0;
        let mut events = 0;
        let (mut lin_time, mut lin_ops, mut lin_steps, mut lin_max) =
            (Duration::ZERO, 0, 0, Duration::ZERO);
        for seed in 0..seeds {
            let s = catalogue::by_name(name, seed).expect("registered scenario");
            assert_eq!(s.mode, Delivery::ExactlyOnce);
            let (run, v) = sweep::run_checked(&s, seed);
            violations += v.len();
            events += run.records.len();
            let t = Instant::now();
            let effort = linearizable::check(&s, &run, &mut Vec::new());
            let took = t.elapsed();
            lin_time += took;
            lin_max = lin_max.max(took);
            lin_ops += effort.ops;
            lin_steps += effort.steps;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{name}: {seeds} seeds, {events} events in {secs:.1} s = {:.0} seeds/s ({:.0} events/s), {violations} violations",
            seeds as f64 / secs,
            events as f64 / secs
        );
        println!(
            "  linearizability: {:.1} operations and {:.1} search steps per seed, {:.1} µs per seed (max {:.1} µs)",
            lin_ops as f64 / seeds as f64,
            lin_steps as f64 / seeds as f64,
            lin_time.as_secs_f64() * 1e6 / seeds as f64,
            lin_max.as_secs_f64() * 1e6
        );
    }
}
