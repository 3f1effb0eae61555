//! Benchmark: simulated runs per second, checked against every invariant:
//! the standard run (2 clients × 20 calls under a seed-drawn fault mix),
//! the full swarm (2–3 clients, plus the settle and liveness phase, ≈ 8 s
//! simulated) and the replicated swarm (three replicas over the store
//! model, 2–3 clients with one client per replica, writes and reads of
//! three registers, the replicated fault mix, then the liveness phase).
//!
//! Each scenario runs its seeds once on one thread, then on every core
//! (`SIM_THREADS`, as sweeps do; results in seed order), and the two
//! passes must agree seed for seed — the event count and the violations —
//! since a seed's run depends on nothing else. The one-thread pass also
//! times the linearizability checker alone on each history (already
//! included in the seeds/s), to state its cost per seed.
//!
//! Run: `cargo bench --bench sim_speed [-- SEEDS]` (default 2,000 seeds each).

use std::time::{Duration, Instant};

use abacus::client::Delivery;
use abacus_sims::{catalogue, check::linearizable, parallel, sweep};

/// What one seed's run produced: events and violations.
type Outcome = (usize, usize);

fn run(name: &str, seed: u64) -> Outcome {
    let s = catalogue::by_name(name, seed).expect("registered scenario");
    assert_eq!(s.mode, Delivery::ExactlyOnce);
    let (run, v) = sweep::run_checked(&s, seed);
    (run.records.len(), v.len())
}

fn main() {
    let seeds: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2_000);
    let threads = parallel::threads();
    for name in ["standard", "swarm", "replicated-swarm"] {
        // One thread, with the linearizability checker timed alone.
        let start = Instant::now();
        let mut one = Vec::with_capacity(seeds as usize);
        let (mut lin_time, mut lin_ops, mut lin_steps, mut lin_max) =
            (Duration::ZERO, 0, 0, Duration::ZERO);
        for seed in 0..seeds {
            let s = catalogue::by_name(name, seed).expect("registered scenario");
            let (run, v) = sweep::run_checked(&s, seed);
            one.push((run.records.len(), v.len()));
            let t = Instant::now();
            let effort = linearizable::check(&s, &run, &mut Vec::new());
            let took = t.elapsed();
            lin_time += took;
            lin_max = lin_max.max(took);
            lin_ops += effort.ops;
            lin_steps += effort.steps;
        }
        let secs_one = start.elapsed().as_secs_f64();

        let list: Vec<u64> = (0..seeds).collect();
        let start = Instant::now();
        let many = parallel::in_seed_order(&list, threads, |seed| run(name, seed), |_| false);
        let secs_many = start.elapsed().as_secs_f64();
        let many: Vec<Outcome> = many.into_iter().map(|(_, o)| o).collect();
        assert_eq!(
            one, many,
            "{name}: a seed's run differed between one thread and {threads}"
        );

        let events: usize = one.iter().map(|o| o.0).sum();
        let violations: usize = one.iter().map(|o| o.1).sum();
        println!(
            "{name}: {seeds} seeds, {events} events, {violations} violations; \
             1 thread {secs_one:.1} s = {:.0} seeds/s; {threads} threads {secs_many:.1} s = {:.0} seeds/s",
            seeds as f64 / secs_one,
            seeds as f64 / secs_many,
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
