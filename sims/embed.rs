// The simulation's modules, for targets outside the `sims` test binary (the
// `sim` example, the `sim_speed` benchmark): `include!` this file from a
// file one directory below the repository root.
#[path = "../sims/checker.rs"]
mod checker;
#[path = "../sims/harness.rs"]
mod harness;
#[path = "../sims/history.rs"]
mod history;
#[path = "../sims/net.rs"]
mod net;
#[path = "../sims/plan.rs"]
mod plan;
#[path = "../sims/scenarios/mod.rs"]
mod scenarios;
#[path = "../sims/shrink.rs"]
mod shrink;
#[path = "../sims/sweep.rs"]
mod sweep;
