//! Deterministic simulation of abacus: the real tonic server and the real
//! resilient client run on turmoil's simulated network, with faults injected
//! from a seed; every run's history is checked against invariants, and fixed
//! seeds' timelines are snapshot-tested in `sims/snapshots/`.
//!
//! Seeds: `SIM_SEED=S` replays exactly seed S (and prints its timeline with
//! `--nocapture`); `SIM_SEEDS=N` sweeps seeds `0..N` (default 32);
//! `SIM_PLAN='...'` replaces a scenario's fault plan (printed by shrinking).
//! Every failure prints the seed, the violated invariant, the trace's tail
//! and the one-line replay command.
//!
//! The scenarios' tests are the `sims` test binary (`tests/sims/`); the
//! `sim` example runs one scenario for one seed; the `sim_speed` benchmark
//! measures seeds per second.
//!
//! # Layout
//! - [`scenario`]: [`Scenario`], everything that defines a run but its seed,
//!   and its [`Topology`].
//! - [`seed`]: [`derive_seed`](seed::derive_seed), the one way a run's
//!   random streams come from its seed.
//! - [`world`]: the simulated hosts (one server, or replicas over a store
//!   model; clients) and [`run`](world::run).
//! - [`faults`]: fault plans (swarm-generated or written) and the driver
//!   that injects them.
//! - [`workload`]: what each client does, and the notes it takes.
//! - [`history`]: the recorded, typed timeline.
//! - [`check`]: invariants over a history.
//! - [`panics`]: every panic on a run's thread, spawned tasks' included
//!   (which tokio swallows), recorded to fail the run.
//! - [`picture`]: one run's history as an SVG timeline (and HTML page).
//! - [`probes`]: named paths a run reached, and a sweep's coverage of them.
//! - [`sweep`]: seeds, sweeps and replays, reports, negative controls.
//! - [`parallel`]: seeds on several threads, results in seed order
//!   (`SIM_THREADS`, default one per core).
//! - [`explore`]: coverage-guided fault search against plain swarm, and
//!   the corpus of plans it keeps (`sims/corpus/`).
//! - [`shrink`]: minimises a failing seed's fault plan.
//! - [`catalogue`]: the named scenarios.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod catalogue;
pub mod check;
pub mod explore;
pub mod faults;
pub mod history;
pub mod panics;
pub mod parallel;
pub mod picture;
pub mod probes;
pub mod scenario;
pub mod seed;
pub mod shrink;
pub mod sweep;
pub mod workload;
pub mod world;

pub use scenario::{Promise, Replicated, Scenario, ServerState, Topology};
