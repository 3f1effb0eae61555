//! The simulated world of one run: a turmoil `Sim` running the real abacus
//! server and client — one server host, or replicas over a store host —
//! and N client hosts, driven until every client is done while the fault
//! driver injects the plan.
//!
//! Everything random flows from the run's seed through
//! [`derive_seed`]: turmoil's RNG (latency, link
//! failures), the servers' and the store's fault RNGs, each client's
//! jitter and request IDs, and the workload. Nothing reads the wall clock.
//!
//! # Hosts
//! - Single-server world: `server`, `client-1` upwards.
//! - Replicated world: `replica-1` upwards (the real server each, over a
//!   [`RemoteLedger`](store::RemoteLedger)), `store` (the model of the
//!   shared store), `client-1` upwards (one client per replica each).
//!
//! # Layout
//! - [`net`]: turmoil TCP ↔ tonic glue (the only network swap).
//! - [`server`]: the single server host, its state surviving crashes or not,
//!   or durable mode on a simulated disk.
//! - [`disk`]: the simulated disk: lost, torn and failing writes.
//! - [`panicky`]: a server ledger that panics, for the `no-panic` control.
//! - [`replica`]: the replica hosts.
//! - [`store`]: the store host, its protocol, and the replicas' ledger.
//! - [`aware`]: the replica-aware client (one client over every replica)
//!   and the bounds its scenarios promise.
//! - [`client`]: client hosts' stacks: the library's own, or a broken
//!   composition ([`Stack`]) for a negative control; [`Clients`], what a
//!   client host calls through.

pub mod aware;
pub mod client;
pub mod clock;
pub mod disk;
pub mod net;
pub mod panicky;
pub mod replica;
pub mod server;
pub mod store;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

pub use client::{Clients, Stack};

use crate::{
    faults::{Hosts, driver},
    history::{Entry, History, Record},
    panics::{self, Panic},
    scenario::{Scenario, Topology},
    seed::derive_seed,
    workload::{LogicalAccumulate, LogicalRead, Outcomes, Workload},
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
    /// Every logical register read and its result.
    pub reads: Vec<LogicalRead>,
    /// `Err` when the simulation itself failed (e.g. a client did not finish
    /// within the simulated time limit).
    pub sim_result: Result<(), String>,
    /// Replicated world: the most store connections each replica had open
    /// at once (its store work in flight), by replica name.
    pub store_calls_peak: Vec<(String, usize)>,
    /// Every panic during the run but those abacus catches on purpose,
    /// tasks' that tokio swallowed included ([`crate::panics`]): each one
    /// fails the run.
    pub panics: Vec<Panic>,
}

/// Simulated time limit: far above any scenario's needs, so hitting it means
/// a client stopped making progress.
const SIM_DURATION: Duration = Duration::from_secs(300);

/// Runs `scenario` with `seed`, recording every panic meanwhile (until
/// the world is dropped, hosts' tasks with it).
pub fn run(scenario: &Scenario, seed: u64) -> Run {
    let (mut run, panics) = panics::record(|| simulate(scenario, seed));
    run.panics = panics;
    run
}

/// [`run`] but for its panics.
fn simulate(scenario: &Scenario, seed: u64) -> Run {
    let history = History::default();
    let outcomes: Arc<Mutex<Outcomes>> = Arc::default();

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

    let mut disks = BTreeMap::new();
    let (store, switches, store_calls) = match &scenario.topology {
        Topology::Single => {
            let (switch, disk) = server::host(&mut sim, scenario, seed, &history);
            if let Some(disk) = disk {
                disks.insert(server::HOST.to_owned(), disk);
            }
            (None, vec![switch], Vec::new())
        }
        Topology::Replicated(r) => {
            let store = store::Store::new(
                store::StoreConfig {
                    model: r.store,
                    dedup: scenario.dedup_config(),
                    delay_ms: plan.store_delay_ms,
                    lose_rate: plan.store_lose_rate,
                    seed: derive_seed(seed, "store-faults"),
                    idle_claim: store::idle_claim_default(),
                    skew: scenario.skew(seed, store::HOST),
                    key: crate::seed::digest_key(seed, store::HOST),
                },
                &history,
            );
            store.serve_on(&mut sim);
            let (replicas, calls) = replica::hosts(&mut sim, scenario, r, seed, &history);
            (
                Some(store::HOST.to_owned()),
                vec![replicas, store.switch()],
                calls,
            )
        }
    };

    let clients = scenario.client_hosts();
    for (index, host) in clients.iter().enumerate() {
        let workload = Workload::new(
            scenario,
            seed,
            host,
            index,
            history.clone(),
            outcomes.clone(),
        );
        let (scenario, history, name) = (scenario.clone(), history.clone(), host.clone());
        sim.client(host.as_str(), async move {
            let clients = Clients::build(&scenario, seed, &name, &history);
            workload.run(&clients).await;
            Ok(())
        });
    }

    let hosts = Hosts {
        servers: scenario.server_hosts(),
        store,
        clients,
        disks,
    };
    let quiet = scenario.quiet_from().map(|at| (at, switches));
    let sim_result = driver::drive(&mut sim, &plan.windows, quiet, &hosts, &history);
    // What each disk holds after a last power cut, read by the harness:
    // the durable state every acknowledged write must be in.
    for (host, disk) in &hosts.disks {
        disk.quiet();
        let registers = disk::read_back(disk, scenario);
        history.push_at(sim.elapsed(), host, Entry::Disk(registers));
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap_or_else(|p| p.into_inner()));
    Run {
        seed,
        records: history.records(),
        accumulates: outcomes.accumulates,
        reads: outcomes.reads,
        sim_result,
        store_calls_peak: store_calls
            .into_iter()
            .map(|(name, calls)| (name, calls.peak()))
            .collect(),
        panics: Vec::new(),
    }
}
