//! The server host: the real abacus server (`server::serve_with_ledger`)
//! on a simulated listener, with the scenario's faults, shedding limit and
//! dedup setting.

use std::sync::Arc;

use abacus::{
    server::{self, DedupConfig, FaultConfig, FaultSwitch, ServerConfig},
    store::Ledger,
};

use crate::{
    history::History,
    scenario::Scenario,
    seed::derive_seed,
    world::{net, store::MemoryLedger},
};

/// The server's host name.
pub const HOST: &str = "server";

/// Adds the server host to `sim`. Returns the switch that turns its
/// injected faults off (for the liveness phase).
pub fn host(
    sim: &mut turmoil::Sim<'_>,
    scenario: &Scenario,
    seed: u64,
    history: &History,
) -> FaultSwitch {
    let plan = &scenario.plan;
    let fault_switch = FaultSwitch::default();
    let config = ServerConfig {
        fault_switch: fault_switch.clone(),
        faults: FaultConfig {
            fail_rate: plan.fail_rate,
            delay_ms: plan.delay_ms.0..=plan.delay_ms.1,
            drop_after_apply_rate: plan.drop_rate,
            seed: derive_seed(seed, "server-faults"),
        },
        events: history.sink(HOST),
        in_flight_max: scenario.in_flight_max,
        ..ServerConfig::default()
    };
    // Durable mode, modelled: one state outside the host, handed to every
    // incarnation of the server, so registers and dedup records survive a
    // crash together (as `--data-dir` makes them survive a restart).
    // Without it, each start gets fresh state, as a real in-memory server.
    let dedup = DedupConfig {
        enabled: scenario.dedup,
        ..DedupConfig::default()
    };
    let durable = scenario
        .state_survives_crash
        .then(|| Arc::new(MemoryLedger::new(dedup.clone(), history.sink(HOST))));
    sim.host(HOST, move || {
        let config = config.clone();
        let state = durable
            .clone()
            .unwrap_or_else(|| Arc::new(MemoryLedger::new(dedup.clone(), config.events.clone())));
        serve(config, state)
    });
    fault_switch
}

/// The real server on this host's port over `ledger`, until the host
/// crashes: the software of the server host and of every replica.
pub async fn serve(config: ServerConfig, ledger: Arc<dyn Ledger>) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", net::PORT)).await?;
    let incoming = net::incoming(listener);
    server::serve_with_ledger(config, ledger, incoming, std::future::pending()).await?;
    Ok(())
}
