//! Runs one scenario for one seed: builds the turmoil world (one server host,
//! N client hosts), runs the real abacus server and client in it, injects the
//! scenario's faults at their simulated times, and returns the history.
//!
//! Everything random flows from the seed: turmoil's RNG (latency, link
//! failures), the server's fault RNG, each client's jitter and request IDs,
//! and the workload. Nothing reads the wall clock.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use abacus::{
    client::{CallError, Client, ClientConfig, Delivery, RetryConfig},
    server::{self, FaultConfig, ServerConfig},
    trace::Outcome,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{
    history::{Entry, History, Record},
    net,
};

/// A network fault active during a window of simulated time.
#[derive(Debug, Clone, PartialEq)]
pub enum NetFault {
    /// Drop every message between the server and all clients.
    Partition,
    /// Queue every message between the server and all clients, delivering
    /// them on release.
    Hold,
    /// Crash the server at the window's start, restart it at its end.
    Crash,
}

/// A fault and when it is active.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// What.
    pub fault: NetFault,
    /// From (simulated time since start).
    pub from: Duration,
    /// Until.
    pub until: Duration,
}

/// Everything that defines a scenario, apart from the seed.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Test name (also used in the replay command).
    pub name: &'static str,
    /// Client hosts.
    pub clients: usize,
    /// Logical calls per client.
    pub calls_per_client: usize,
    /// Share of calls that are `Accumulate` (the rest are `Add`).
    pub accumulate_share: f64,
    /// Client delivery mode.
    pub mode: Delivery,
    /// Client retry policy.
    pub retry: RetryConfig,
    /// Overall deadline per call.
    pub deadline: Duration,
    /// Per-attempt timeout.
    pub attempt_timeout: Duration,
    /// Server-side faults (the seed is replaced by one derived from the run's).
    pub server_faults: FaultConfig,
    /// Message latency range.
    pub latency: (Duration, Duration),
    /// turmoil link fail rate per step (kills connections).
    pub link_fail_rate: f64,
    /// Timed network and host faults.
    pub windows: Vec<Window>,
    /// What the scenario promises (which invariants must hold).
    pub promise: Promise,
}

/// Which delivery promise the checker holds the run to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promise {
    /// Every logical Accumulate applied at most once; acknowledged ones
    /// exactly once.
    ExactlyOnceEffect,
    /// Acknowledged calls applied at least once; duplicates allowed.
    AtLeastOnce,
}

impl Scenario {
    /// Defaults: 2 clients × 10 calls, half of them Accumulate, exactly-once
    /// mode, default retries, no faults.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            clients: 2,
            calls_per_client: 10,
            accumulate_share: 0.5,
            mode: Delivery::ExactlyOnce,
            retry: RetryConfig::default(),
            deadline: Duration::from_secs(3),
            attempt_timeout: Duration::from_millis(500),
            server_faults: FaultConfig::default(),
            latency: (Duration::from_millis(1), Duration::from_millis(5)),
            link_fail_rate: 0.0,
            windows: Vec::new(),
            promise: Promise::ExactlyOnceEffect,
        }
    }
}

/// What one client's workload did for one logical Accumulate.
#[derive(Debug, Clone, PartialEq)]
pub struct LogicalAccumulate {
    /// Client host.
    pub host: String,
    /// Register.
    pub register: String,
    /// Delta; unique per logical call across the run, so server `applied`
    /// events can be attributed to their logical call even without IDs.
    pub delta: f64,
    /// What the client saw.
    pub result: Result<f64, (tonic::Code, Outcome)>,
}

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

/// The register every client accumulates into.
pub const REGISTER: &str = "total";

/// Simulated time limit: far above any scenario's needs, so hitting it means
/// a client stopped making progress.
const SIM_DURATION: Duration = Duration::from_secs(300);

/// Runs `scenario` with `seed`.
pub fn run(scenario: &Scenario, seed: u64) -> Run {
    let history = History::default();
    let ledger: Arc<Mutex<Vec<LogicalAccumulate>>> = Arc::default();

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(SIM_DURATION)
        .min_message_latency(scenario.latency.0)
        .max_message_latency(scenario.latency.1)
        .fail_rate(scenario.link_fail_rate)
        .repair_rate(if scenario.link_fail_rate > 0.0 {
            0.5
        } else {
            1.0
        })
        .build();

    let server_config = ServerConfig {
        faults: FaultConfig {
            seed: seed ^ 0x5e4f_e4f5,
            ..scenario.server_faults.clone()
        },
        events: history.sink("server"),
    };
    sim.host("server", move || {
        let config = server_config.clone();
        async move {
            let listener = turmoil::net::TcpListener::bind(("0.0.0.0", net::PORT)).await?;
            server::serve(config, net::incoming(listener), std::future::pending()).await?;
            Ok(())
        }
    });

    for index in 0..scenario.clients {
        let host = format!("client-{}", index + 1);
        let config = ClientConfig {
            deadline: scenario.deadline,
            attempt_timeout: scenario.attempt_timeout,
            mode: scenario.mode,
            retry: scenario.retry.clone(),
            seed: Some(seed.wrapping_mul(31).wrapping_add(index as u64 + 1)),
            events: history.sink(&host),
        };
        let workload = Workload {
            host: host.clone(),
            index,
            calls: scenario.calls_per_client,
            accumulate_share: scenario.accumulate_share,
            rng: ChaCha8Rng::seed_from_u64(seed ^ ((index as u64 + 1) << 32)),
            history: history.clone(),
            ledger: ledger.clone(),
        };
        sim.client(host, async move {
            let client = Client::new(net::channel("server"), config);
            workload.run(&client).await;
            Ok(())
        });
    }

    let clients: Vec<String> = (1..=scenario.clients)
        .map(|i| format!("client-{i}"))
        .collect();
    let sim_result = drive(&mut sim, &scenario.windows, &clients, &history);
    let accumulates = ledger.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Run {
        seed,
        records: history.records(),
        accumulates,
        sim_result,
    }
}

/// Steps the simulation, applying timed faults, until every client is done.
fn drive(
    sim: &mut turmoil::Sim<'_>,
    windows: &[Window],
    clients: &[String],
    history: &History,
) -> Result<(), String> {
    let mut started = vec![false; windows.len()];
    let mut ended = vec![false; windows.len()];
    loop {
        let now = sim.elapsed();
        for (i, w) in windows.iter().enumerate() {
            if !started[i] && now >= w.from {
                started[i] = true;
                history.push_at(now, "sim", Entry::Fault(fault_line(&w.fault, true)));
                for c in clients {
                    match w.fault {
                        NetFault::Partition => sim.partition("server", c.as_str()),
                        NetFault::Hold => sim.hold("server", c.as_str()),
                        NetFault::Crash => {}
                    }
                }
                if w.fault == NetFault::Crash {
                    sim.crash("server");
                }
            }
            if started[i] && !ended[i] && now >= w.until {
                ended[i] = true;
                history.push_at(now, "sim", Entry::Fault(fault_line(&w.fault, false)));
                for c in clients {
                    match w.fault {
                        NetFault::Partition => sim.repair("server", c.as_str()),
                        NetFault::Hold => sim.release("server", c.as_str()),
                        NetFault::Crash => {}
                    }
                }
                if w.fault == NetFault::Crash {
                    sim.bounce("server");
                }
            }
        }
        match sim.step() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn fault_line(fault: &NetFault, start: bool) -> String {
    match (fault, start) {
        (NetFault::Partition, true) => "partition server <-> clients".into(),
        (NetFault::Partition, false) => "repair server <-> clients".into(),
        (NetFault::Hold, true) => "hold server <-> clients".into(),
        (NetFault::Hold, false) => "release server <-> clients".into(),
        (NetFault::Crash, true) => "crash server".into(),
        (NetFault::Crash, false) => "restart server".into(),
    }
}

/// One client's sequence of logical calls, drawn from its own seeded RNG.
struct Workload {
    host: String,
    index: usize,
    calls: usize,
    accumulate_share: f64,
    rng: ChaCha8Rng,
    history: History,
    ledger: Arc<Mutex<Vec<LogicalAccumulate>>>,
}

impl Workload {
    async fn run(mut self, client: &Client) {
        for k in 0..self.calls {
            // Think time between calls (simulated), so that faults land in
            // the middle of the workload rather than after it.
            let think = self.rng.random_range(0..60);
            tokio::time::sleep(std::time::Duration::from_millis(think)).await;
            if self.rng.random_bool(self.accumulate_share) {
                let delta = (self.index * 1000 + k + 1) as f64;
                let result = client.accumulate(REGISTER, delta).await;
                let result = result
                    .map(|(v, _)| v)
                    .map_err(|e: CallError| (e.code, e.outcome));
                self.ledger
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(LogicalAccumulate {
                        host: self.host.clone(),
                        register: REGISTER.into(),
                        delta,
                        result,
                    });
            } else {
                let a = self.rng.random_range(0..100) as f64;
                let b = self.rng.random_range(0..100) as f64;
                if let Ok(v) = client.add(a, b).await
                    && v != a + b
                {
                    self.history.push(
                        &self.host,
                        Entry::Note(format!("WRONG: add({a}, {b}) = {v}")),
                    );
                }
            }
        }
        self.history
            .push(&self.host, Entry::Note("workload done".into()));
    }
}
