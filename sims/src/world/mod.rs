//! The simulated world of one run: a turmoil `Sim` with one server host
//! and N client hosts running the real abacus server and client, driven
//! until every client is done while the fault driver injects the plan.
//!
//! Everything random flows from the run's seed through
//! [`derive_seed`](crate::seed::derive_seed): turmoil's RNG (latency, link
//! failures), the server's fault RNG, each client's jitter and request IDs,
//! and the workload. Nothing reads the wall clock.
//!
//! # Layout
//! - [`net`]: turmoil TCP ↔ tonic glue (the only network swap).
//! - [`server`]: the server host, its state surviving crashes or not.
//! - [`client`]: client hosts' stacks: the library's own, or a broken
//!   composition ([`Stack`]) for a negative control.

pub mod client;
pub mod net;
pub mod server;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

pub use client::Stack;

use crate::{
    faults::driver,
    history::{History, Record},
    scenario::Scenario,
    seed::derive_seed,
    workload::{LogicalAccumulate, Workload},
};

/// The product of one run.
#[derive(Debug, Clone)]
pub struct Run {
    /// The seed.
    pub seed: u64,
    /// Every record, in order.
    pub records: Vec<Record>,
    /// Every logical Accumulate and its result.
    pub accumulates: Vec<LogicalAccumulate>,
    /// `Err` when the simulation itself failed (e.g. a client did not finish
    /// within the simulated time limit).
    pub sim_result: Result<(), String>,
}

/// Simulated time limit: far above any scenario's needs, so hitting it means
/// a client stopped making progress.
const SIM_DURATION: Duration = Duration::from_secs(300);

/// Runs `scenario` with `seed`.
pub fn run(scenario: &Scenario, seed: u64) -> Run {
    let history = History::default();
    let accumulates: Arc<Mutex<Vec<LogicalAccumulate>>> = Arc::default();

    let plan = &scenario.plan;
    let mut sim = turmoil::Builder::new()
        .rng_seed(derive_seed(seed, "network"))
        .simulation_duration(SIM_DURATION)
        .tick_duration(scenario.tick)
        .min_message_latency(Duration::from_millis(plan.latency_ms.0))
        .max_message_latency(Duration::from_millis(plan.latency_ms.1))
        .fail_rate(plan.link_fail_rate)
        .repair_rate(if plan.link_fail_rate > 0.0 { 0.5 } else { 1.0 })
        .build();

    let fault_switch = server::host(&mut sim, scenario, seed, &history);

    let hosts = scenario.client_hosts();
    for (index, host) in hosts.iter().enumerate() {
        let config = client::config(scenario, seed, host, history.sink(host));
        let workload = Workload::new(
            scenario,
            seed,
            host,
            index,
            history.clone(),
            accumulates.clone(),
        );
        let stack = scenario.stack;
        sim.client(host.as_str(), async move {
            let client = client::build(stack, config);
            workload.run(&client).await;
            Ok(())
        });
    }

    let quiet = scenario.quiet_from().map(|at| (at, fault_switch));
    let sim_result = driver::drive(&mut sim, &plan.windows, quiet, &hosts, &history);
    let accumulates = accumulates
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Run {
        seed,
        records: history.records(),
        accumulates,
        sim_result,
    }
}
