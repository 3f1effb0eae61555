//! Faults: what a run injects ([`FaultPlan`], written by a scenario or
//! drawn from the seed) and the driver that injects it at its simulated
//! times, recording each step as a [`SimFault`].
//!
//! # Layout
//! - [`plan`]: fault plans, their swarm generators and their text form.
//! - [`driver`]: steps the simulation and applies the plan's windows.

pub mod driver;
pub mod plan;

pub use driver::{Hosts, SimFault};
pub use plan::{Fault, FaultPlan, Link, NetFault, Node, Peer, Side, Slow, Window};
