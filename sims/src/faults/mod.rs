//! Faults: what a run injects ([`FaultPlan`], written by a scenario or
//! drawn from the seed) and the driver that injects it at its simulated
//! times, recording each step as a [`SimFault`].
//!
//! # Layout
//! - [`plan`]: fault plans, their swarm generator and their text form.
//! - [`driver`]: steps the simulation and applies the plan's windows.

pub mod driver;
pub mod plan;

pub use driver::SimFault;
pub use plan::{FaultPlan, NetFault, Target, Window};
