//! The replica hosts: the real abacus server (`server::serve_with_ledger`)
//! on each, over a [`RemoteLedger`] to the store host, with the plan's
//! server faults (one replica perhaps much slower than the others).
//!
//! A replica holds no state of its own: each incarnation (after a crash
//! and restart) builds a fresh ledger — local claim table, counters, the
//! guard's breaker — as a restarted process would, and everything durable
//! lives at the store.
//!
//! The ledger is built here, in one place: the [`RemoteLedger`] to the
//! store, behind the store guard (`abacus::store::guard::GuardedLedger`)
//! exactly as `abacus serve --store postgres://…` puts it in front of the
//! PostgreSQL ledger, unless the scenario switches the guard off.

use std::sync::Arc;

use abacus::{
    server::{DedupConfig, FaultConfig, FaultSwitch, ServerConfig},
    store::{
        Ledger,
        guard::{GuardConfig, GuardedLedger},
    },
};

use crate::{
    history::History,
    scenario::{Replicated, Scenario},
    seed::derive_seed,
    world::{
        clock::Skew,
        server,
        store::{RemoteConfig, RemoteLedger, StoreCalls},
    },
};

/// Adds the replica hosts to `sim`. Returns the switch that turns their
/// injected faults off (for the liveness phase), and each replica's count
/// of open store connections, by name.
pub fn hosts(
    sim: &mut turmoil::Sim<'_>,
    scenario: &Scenario,
    replicated: &Replicated,
    seed: u64,
    history: &History,
) -> (FaultSwitch, Vec<(String, Arc<StoreCalls>)>) {
    let plan = &scenario.plan;
    let switch = FaultSwitch::default();
    let mut counts = Vec::new();
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
        let calls = Arc::new(StoreCalls::default());
        counts.push((name.clone(), Arc::clone(&calls)));
        let mut remote = RemoteConfig {
            dedup: dedup.clone(),
            bug: replicated.bug,
            calls: Some(calls),
            ..RemoteConfig::default()
        };
        let mut guard = replicated.guard.clone();
        if let Some(skew) = scenario.skew(seed, &name) {
            on_clock(skew, &mut remote, guard.as_mut());
        }
        let guard_seed = derive_seed(seed, &format!("{name}-guard"));
        sim.host(name.as_str(), move || {
            let (config, remote, guard) = (config.clone(), remote.clone(), guard.clone());
            async move {
                let remote: Arc<dyn Ledger> =
                    Arc::new(RemoteLedger::new(remote, config.events.clone()));
                let ledger: Arc<dyn Ledger> = match guard {
                    // Built inside the host's runtime: the guard's monitor
                    // task lives and dies with this incarnation.
                    Some(guard) => Arc::new(GuardedLedger::new(
                        remote,
                        guard,
                        config.events.clone(),
                        guard_seed,
                    )?),
                    None => remote,
                };
                server::serve(config, ledger).await
            }
        });
    }
    (switch, counts)
}

/// A replica's store timers as a replica whose clock has `skew` lives
/// them: the per-call bound, the in-process join wait, the guard's slow
/// threshold and breaker. (Its dedup retention is never read: records
/// live at the store, on the store host's clock.)
fn on_clock(skew: Skew, remote: &mut RemoteConfig, guard: Option<&mut GuardConfig>) {
    remote.op_timeout = skew.real(remote.op_timeout);
    remote.dedup.join_wait_ms_max = skew.real_ms(remote.dedup.join_wait_ms_max);
    if let Some(g) = guard {
        g.timeout_ms = skew.real_ms(g.timeout_ms);
        g.slow_ms = skew.real_ms(g.slow_ms);
        skew.breaker(&mut g.breaker);
    }
}
