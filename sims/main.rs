//! Deterministic simulation of abacus: the real tonic server and the real
//! resilient client run on turmoil's simulated network, with faults injected
//! from a seed; every run's history is checked against invariants, and fixed
//! seeds' timelines are snapshot-tested in `snapshots/`.
//!
//! Seeds: `SIM_SEED=S` runs exactly seed S (and prints its timeline with
//! `--nocapture`); `SIM_SEEDS=N` sweeps seeds `0..N` (default 32);
//! `SIM_PLAN='...'` replaces a scenario's fault plan (printed by shrinking).
//! Every failure prints the seed, the violated invariant, the trace's tail
//! and the one-line replay command.
//!
//! # Layout
//! - [`net`]: turmoil TCP ↔ tonic glue (the only network swap).
//! - [`plan`]: fault plans, generated from a seed (swarm) or written.
//! - [`harness`]: builds a world, runs the workload, injects the plan.
//! - [`history`]: the recorded timeline.
//! - [`checker`]: invariants over a history.
//! - [`sweep`]: seeds, reports, replay commands, negative controls, snapshots.
//! - [`shrink`]: minimises a failing seed's fault plan.
//! - `scenarios/`: the tests — `basic` (happy path, bare tonic, determinism),
//!   `delivery` (at-least-once / at-most-once under apply-then-drop),
//!   `recovery` (partition, hold, crash, latency spikes, retry budget),
//!   `controls` (broken stacks each checker must catch).

// A test binary: `pub` marks what scenarios may use, not an API.
#![allow(unreachable_pub)]

mod checker;
mod harness;
mod history;
mod net;
mod plan;
mod scenarios;
mod shrink;
mod sweep;
