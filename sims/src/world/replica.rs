//! The replica hosts: the real abacus server (`server::serve_with_ledger`)
//! on each, over a [`RemoteLedger`] to the store host, with the plan's
//! server faults (one replica perhaps much slower than the others).
//!
//! A replica holds no state of its own: each incarnation (after a crash
//! and restart) builds a fresh ledger — local claim table, counters — as a
//! restarted process would, and everything durable lives at the store.

use std::sync::Arc;

use abacus::server::{DedupConfig, FaultConfig, FaultSwitch, ServerConfig};

use crate::{
    history::History,
    scenario::{Replicated, Scenario},
    seed::derive_seed,
    world::{
        server,
        store::{RemoteConfig, RemoteLedger},
    },
};

/// Adds the replica hosts to `sim`. Returns the switch that turns their
/// injected faults off (for the liveness phase).
pub fn hosts(
    sim: &mut turmoil::Sim<'_>,
    scenario: &Scenario,
    replicated: &Replicated,
    seed: u64,
    history: &History,
) -> FaultSwitch {
    let plan = &scenario.plan;
    let switch = FaultSwitch::default();
    let dedup = DedupConfig {
        enabled: scenario.dedup,
        ..DedupConfig::default()
    };
    for (index, name) in scenario.server_hosts().into_iter().enumerate() {
        let delay_ms = match plan.slow {
            Some(slow) if slow.replica == index + 1 => slow.delay_ms,
            _ => plan.delay_ms,
        };
        let config = ServerConfig {
            fault_switch: switch.clone(),
            faults: FaultConfig {
                fail_rate: plan.fail_rate,
                delay_ms: delay_ms.0..=delay_ms.1,
                drop_after_apply_rate: plan.drop_rate,
                seed: derive_seed(seed, &format!("{name}-faults")),
            },
            events: history.sink(&name),
            in_flight_max: scenario.in_flight_max,
            ..ServerConfig::default()
        };
        let remote = RemoteConfig {
            dedup: dedup.clone(),
            bug: replicated.bug,
            ..RemoteConfig::default()
        };
        sim.host(name.as_str(), move || {
            let ledger = Arc::new(RemoteLedger::new(remote.clone(), config.events.clone()));
            server::serve(config.clone(), ledger)
        });
    }
    switch
}
