//! The scenarios, one `#[test]` each, grouped by what they prove.

mod basic;
mod controls;
mod delivery;
mod recovery;
mod swarm;
