//! The server host: the real abacus server (`server::serve_with_ledger`)
//! on a simulated listener, with the scenario's faults, shedding limit and
//! dedup setting; in durable mode, the redb ledger on a simulated disk
//! ([`super::disk`]), opened again at every restart as `--data-dir` is.

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use abacus::{
    error::{CalcError, ServiceError},
    server::{self, DedupConfig, FaultConfig, FaultSwitch, ServerConfig},
    store::{Ledger, StoreHealth, redb::RedbLedger},
};

use crate::{
    history::{Entry, History},
    scenario::{Scenario, ServerState},
    seed::{derive_seed, digest_key},
    world::{
        clock::Skew,
        disk::{self, DiskFaultRates, DiskNote, SimDisk, SimVolume},
        net,
        panicky::{PanickyLedger, ServerBug},
        store::MemoryLedger,
    },
};

/// The server's host name.
pub const HOST: &str = "server";

/// Adds the server host to `sim`. Returns the switch that turns its
/// injected faults off (for the liveness phase), and its simulated disk
/// in durable mode.
pub fn host(
    sim: &mut turmoil::Sim<'_>,
    scenario: &Scenario,
    seed: u64,
    history: &History,
) -> (FaultSwitch, Option<Arc<SimDisk>>) {
    let (plan, bug) = (&scenario.plan, scenario.server_bug);
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
    let dedup = scenario.dedup_config();
    let clock = Skew::clock_or_tokio(scenario.skew(seed, HOST));
    let key = digest_key(seed, HOST);
    let panicked = Arc::new(AtomicBool::new(false));
    let bugged = move |ledger: Arc<dyn Ledger>| -> Arc<dyn Ledger> {
        match bug {
            None => ledger,
            Some(ServerBug::PanicOnFirstRead) => {
                Arc::new(PanickyLedger::new(ledger, Arc::clone(&panicked)))
            }
        }
    };
    match scenario.server_state {
        ServerState::Disk { bug } => {
            let rates = DiskFaultRates {
                error_rate: plan.disk_error_rate,
                cut_rate: plan.disk_cut_rate,
            };
            let disk = SimDisk::new(seed, HOST, rates, bug, history.clone());
            if let Err(why) = disk::provision(&disk) {
                history.push_at(
                    Duration::ZERO,
                    HOST,
                    Entry::Disk(DiskNote::OpenFailed { why }),
                );
            }
            let (volume, history, registers) = (
                SimVolume(Arc::clone(&disk)),
                history.clone(),
                scenario.register_names(),
            );
            sim.host(HOST, move || {
                let (config, volume, history, registers, dedup, bugged) = (
                    config.clone(),
                    volume.clone(),
                    history.clone(),
                    registers.clone(),
                    dedup.clone(),
                    bugged.clone(),
                );
                async move {
                    let ledger = open_durable(dedup, &config, volume, &history, &registers).await;
                    serve(config, bugged(ledger)).await
                }
            });
            (fault_switch, Some(disk))
        }
        ServerState::Survives | ServerState::Lost => {
            // Durable mode, modelled: one state outside the host, handed to
            // every incarnation of the server, so registers and dedup
            // records survive a crash together (as `--data-dir` makes them
            // survive a restart). Without it, each start gets fresh state,
            // as a real in-memory server.
            let durable = (scenario.server_state == ServerState::Survives).then(|| {
                Arc::new(MemoryLedger::with_key_and_clock(
                    dedup.clone(),
                    history.sink(HOST),
                    key,
                    clock.clone(),
                ))
            });
            sim.host(HOST, move || {
                let config = config.clone();
                let state = durable.clone().unwrap_or_else(|| {
                    Arc::new(MemoryLedger::with_key_and_clock(
                        dedup.clone(),
                        config.events.clone(),
                        key,
                        clock.clone(),
                    ))
                });
                serve(config, bugged(state))
            });
            (fault_switch, None)
        }
    }
}

/// How long a server whose database would not open waits before trying
/// again (what a supervisor restarting the process would do).
const REOPEN_PAUSE: Duration = Duration::from_millis(200);

/// Opens the durable ledger on the disk, as `abacus serve --data-dir`
/// would at start, trying again until it opens; then notes what it loaded.
async fn open_durable(
    dedup: DedupConfig,
    config: &ServerConfig,
    volume: SimVolume,
    history: &History,
    registers: &[String],
) -> Arc<dyn Ledger> {
    let ledger = loop {
        match RedbLedger::open_volume(
            dedup.clone(),
            config.events.clone(),
            Arc::new(volume.clone()),
        ) {
            Ok(ledger) => break ledger,
            Err(e) => {
                history.push(
                    HOST,
                    Entry::Disk(DiskNote::OpenFailed { why: e.to_string() }),
                );
                tokio::time::sleep(REOPEN_PAUSE).await;
            }
        }
    };
    let ledger = Arc::new(ledger);
    if let Some(registers) = loaded(&ledger, registers).await {
        history.push(HOST, Entry::Disk(DiskNote::Loaded { registers }));
    }
    // A failed write makes the ledger reload memory from the disk without
    // a restart: note what it loaded then too. (A batch can fail after its
    // commit became durable — the file's shrink after the commit failing —
    // and the reload then brings back a commit its caller was told might
    // not have happened.)
    tokio::spawn(note_reloads(
        Arc::clone(&ledger),
        history.clone(),
        registers.to_vec(),
    ));
    ledger
}

/// Notes the registers each time `ledger` serves again after a failure
/// (it has reloaded them from the disk). Ends with the host.
async fn note_reloads(ledger: Arc<RedbLedger>, history: History, registers: Vec<String>) {
    let mut health = ledger.health();
    while health.changed().await.is_ok() {
        if *health.borrow_and_update() == StoreHealth::Serving
            && let Some(registers) = loaded(&ledger, &registers).await
        {
            history.push(HOST, Entry::Disk(DiskNote::Loaded { registers }));
        }
    }
}

/// The values of `registers` in a freshly opened ledger (`None`: absent),
/// or `None` if the ledger stopped serving meanwhile (a new failure: the
/// next reload is noted instead).
pub async fn loaded(
    ledger: &RedbLedger,
    registers: &[String],
) -> Option<Vec<(String, Option<f64>)>> {
    let mut values = Vec::new();
    for name in registers {
        let value = match ledger.memory().get(name, None).await {
            Ok(value) => Some(value),
            Err(ServiceError::Calc(CalcError::UnknownRegister(_))) => None,
            Err(_) => return None,
        };
        values.push((name.clone(), value));
    }
    Some(values)
}

/// The real server on this host's port over `ledger`, until the host
/// crashes: the software of the server host and of every replica.
pub async fn serve(config: ServerConfig, ledger: Arc<dyn Ledger>) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", net::PORT)).await?;
    let incoming = net::incoming(listener);
    server::serve_with_ledger(config, ledger, incoming, std::future::pending()).await?;
    Ok(())
}
