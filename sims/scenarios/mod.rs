//! The scenarios, one `#[test]` each, grouped by what they prove.

mod basic;
mod breaker;
mod controls;
mod dedup;
mod delivery;
mod determinism;
mod recovery;
mod swarm;
