//! The simulation's scenarios, one `#[test]` each, grouped by what they
//! prove; the worlds, checks and sweeps come from the `abacus_sims`
//! library.
//!
//! `cargo test --test sims` sweeps every scenario over seeds `0..32`;
//! `SIM_SEED=S cargo test --test sims PATH -- --exact --nocapture` replays
//! one test at one seed (PATH is the test's full path, as every failure
//! report prints it); `SIM_SEEDS=N` sweeps longer.
//!
//! # Layout
//! - `scenarios/`: `aware` (the replica-aware client over three replicas:
//!   crash, partition, slow replica; its controls), `basic` (happy path, bare tonic), `delivery`
//!   (at-least-once / at-most-once under apply-then-drop), `dedup`
//!   (exactly-once), `recovery` (partition, hold, crash, latency spikes,
//!   retry budget), `breaker` (breaker and cascade), `controls` (broken
//!   stacks each checker must catch), `swarm` (seed-drawn fault mixes),
//!   `replicated` (replicas over the store model: swarm, failover, the
//!   replicated controls), `model` (the ledgers' conformance suite against
//!   the store model over the network), `probes` (a required probe never
//!   reached fails the sweep), `explore` (the coverage-guided search
//!   against random swarm, its determinism and its corpora),
//!   `determinism` (byte-identical replays), `replay` (the README's
//!   replay command, run as written).
//! - `snapshot`: fixed seeds' timelines, snapshot-tested.
//! - `picture`: the SVG timeline of a run, parsed back and rendered by
//!   headless chromium (required: `apt-get install chromium`).

mod picture;
mod scenarios;
mod snapshot;
