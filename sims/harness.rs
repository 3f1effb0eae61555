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
    client::{BreakerConfig, CallError, Client, ClientConfig, Delivery, IdGenerator, RetryConfig},
    server::{self, DedupConfig, FaultConfig, FaultSwitch, ServerConfig, State},
    trace::Outcome,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{
    history::{Entry, History, Note, Record, SimFault, Wrong},
    net,
    plan::{FaultPlan, NetFault, Target, Window},
};

/// How the client's tower stack is put together. `Standard` is the
/// library's own; the others are deliberately broken compositions used as
/// negative controls, to prove the checker sees the bug they cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// `Client::new`: the real stack.
    Standard,
    /// BROKEN: a second retry layer around the first, so attempts multiply
    /// (a classic bug when retries are configured at two levels).
    DoubleRetry,
    /// BROKEN: announces the deadline but does not pass it down, so the
    /// retry loop and attempts ignore it.
    DeadlineNotEnforced,
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
    /// Share of calls that are `Accumulate`.
    pub accumulate_share: f64,
    /// Send every Accumulate twice at once under one request ID.
    pub hedge: bool,
    /// Think time between a client's calls, drawn from this range (ms).
    pub think_ms: (u64, u64),
    /// Share of the other calls that are invalid (`Divide` by zero).
    pub invalid_share: f64,
    /// Client delivery mode.
    pub mode: Delivery,
    /// Client retry policy.
    pub retry: RetryConfig,
    /// Overall deadline per call.
    pub deadline: Duration,
    /// Per-attempt timeout.
    pub attempt_timeout: Duration,
    /// How the client stack is composed.
    pub stack: Stack,
    /// The client's circuit breaker (off unless a scenario is about it).
    pub breaker: Option<BreakerConfig>,
    /// The server's cap on calls in flight (load shedding).
    pub in_flight_max: usize,
    /// Server-side deduplication on (the default) or off (negative controls).
    pub dedup: bool,
    /// Server state survives a crash (durable mode, the default) or is lost
    /// with it (in-memory mode).
    pub state_survives_crash: bool,
    /// Faults to inject.
    pub plan: FaultPlan,
    /// Simulated time per turmoil step: the resolution of every timer and
    /// message delivery. Smaller is finer, larger runs faster.
    pub tick: Duration,
    /// What the scenario promises (which invariants must hold).
    pub promise: Promise,
    /// Calls each client makes once every fault has stopped (VOPR-style
    /// liveness phase): all of them must succeed.
    pub liveness_calls: usize,
    /// With a liveness phase: when the untimed faults (link failures, server
    /// faults) stop. Timed windows stop at their own end.
    pub quiet_after: Duration,
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
            hedge: false,
            think_ms: (0, 60),
            invalid_share: 0.0,
            mode: Delivery::ExactlyOnce,
            retry: RetryConfig::default(),
            deadline: Duration::from_secs(3),
            attempt_timeout: Duration::from_millis(500),
            stack: Stack::Standard,
            breaker: None,
            in_flight_max: abacus::server::IN_FLIGHT_MAX_DEFAULT,
            dedup: true,
            state_survives_crash: true,
            plan: FaultPlan::default(),
            tick: Duration::from_millis(1),
            promise: Promise::ExactlyOnceEffect,
            liveness_calls: 0,
            quiet_after: Duration::ZERO,
        }
    }

    /// With a liveness phase, when every fault has stopped; `None` when the
    /// faults never stop.
    pub fn quiet_from(&self) -> Option<Duration> {
        (self.liveness_calls > 0).then(|| self.quiet_after.max(self.plan.last_fault_end()))
    }

    /// When faults have stopped and the network has settled: the last timed
    /// fault's end plus time for HTTP/2 keepalive to replace dead
    /// connections (1 s interval + 1 s timeout) and a retry or two.
    pub fn heal_at(&self) -> Duration {
        self.quiet_from().unwrap_or_default() + SETTLE
    }
}

/// Time allowed after the last fault before the liveness phase starts.
pub const SETTLE: Duration = Duration::from_secs(4);

/// The liveness bound: once the phase starts, each client must complete its
/// liveness calls within this much simulated time. It covers a breaker that
/// re-opened on its last probe (open duration ≤ 1.5 s in the swarm, ≤ 30 s
/// by default — scenarios with a liveness phase use short ones) plus a few
/// call deadlines.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(10);

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

    let plan = &scenario.plan;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(SIM_DURATION)
        .tick_duration(scenario.tick)
        .min_message_latency(Duration::from_millis(plan.latency_ms.0))
        .max_message_latency(Duration::from_millis(plan.latency_ms.1))
        .fail_rate(plan.link_fail_rate)
        .repair_rate(if plan.link_fail_rate > 0.0 { 0.5 } else { 1.0 })
        .build();

    let fault_switch = FaultSwitch::default();
    let server_config = ServerConfig {
        fault_switch: fault_switch.clone(),
        faults: FaultConfig {
            fail_rate: plan.fail_rate,
            delay_ms: plan.delay_ms.0..=plan.delay_ms.1,
            drop_after_apply_rate: plan.drop_rate,
            seed: seed ^ 0x5e4f_e4f5,
        },
        events: history.sink("server"),
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
        .then(|| Arc::new(State::new(dedup.clone(), history.sink("server"))));
    sim.host("server", move || {
        let config = server_config.clone();
        let state = durable
            .clone()
            .unwrap_or_else(|| Arc::new(State::new(dedup.clone(), config.events.clone())));
        async move {
            let listener = turmoil::net::TcpListener::bind(("0.0.0.0", net::PORT)).await?;
            let incoming = net::incoming(listener);
            server::serve_with_ledger(config, state, incoming, std::future::pending()).await?;
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
            breaker: scenario.breaker.clone(),
            endpoint: "server".into(),
            seed: Some(seed.wrapping_mul(31).wrapping_add(index as u64 + 1)),
            events: history.sink(&host),
        };
        let stack = scenario.stack;
        let workload = Workload {
            host: host.clone(),
            index,
            calls: scenario.calls_per_client,
            accumulate_share: scenario.accumulate_share,
            think_ms: scenario.think_ms,
            hedge: scenario.hedge,
            ids: IdGenerator::seeded(seed ^ 0x0bad_cafe ^ index as u64),
            invalid_share: scenario.invalid_share,
            liveness_calls: scenario.liveness_calls,
            heal_at: scenario.heal_at(),
            rng: ChaCha8Rng::seed_from_u64(seed ^ ((index as u64 + 1) << 32)),
            history: history.clone(),
            ledger: ledger.clone(),
        };
        sim.client(host, async move {
            let client = build_client(stack, config);
            workload.run(&client).await;
            Ok(())
        });
    }

    let clients: Vec<String> = (1..=scenario.clients)
        .map(|i| format!("client-{i}"))
        .collect();
    let quiet = scenario.quiet_from().map(|at| (at, fault_switch));
    let sim_result = drive(&mut sim, &plan.windows, quiet, &clients, &history);
    let accumulates = ledger.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Run {
        seed,
        records: history.records(),
        accumulates,
        sim_result,
    }
}

/// Steps the simulation, applying timed faults, until every client is done.
/// At `quiet.0` link failures and server faults stop, so the liveness phase
/// runs on a quiet network.
fn drive(
    sim: &mut turmoil::Sim<'_>,
    windows: &[Window],
    quiet: Option<(Duration, FaultSwitch)>,
    clients: &[String],
    history: &History,
) -> Result<(), String> {
    let mut started = vec![false; windows.len()];
    let mut ended = vec![false; windows.len()];
    let mut quieted = false;
    loop {
        let now = sim.elapsed();
        for (i, w) in windows.iter().enumerate() {
            if !started[i] && now >= w.from {
                started[i] = true;
                history.push_at(now, "sim", Entry::Fault(sim_fault(w, true)));
                apply(sim, w, clients, true);
            }
            if started[i] && !ended[i] && now >= w.until() {
                ended[i] = true;
                history.push_at(now, "sim", Entry::Fault(sim_fault(w, false)));
                apply(sim, w, clients, false);
            }
        }
        if let Some((at, switch)) = &quiet
            && !quieted
            && now >= *at
        {
            quieted = true;
            history.push_at(now, "sim", Entry::Fault(SimFault::AllStop));
            sim.set_fail_rate(0.0);
            // turmoil repairs a randomly failed link only when a message
            // crosses it, and only by chance: repair them all explicitly.
            for c in clients {
                sim.repair("server", c.as_str());
            }
            switch.turn_off();
        }
        match sim.step() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn apply(sim: &mut turmoil::Sim<'_>, w: &Window, clients: &[String], start: bool) {
    let targets: Vec<&str> = match w.target {
        Target::All => clients.iter().map(String::as_str).collect(),
        Target::Client(n) => clients.get(n - 1).map(String::as_str).into_iter().collect(),
    };
    match (w.fault, start) {
        (NetFault::Crash, true) => sim.crash("server"),
        (NetFault::Crash, false) => sim.bounce("server"),
        (fault, start) => {
            for c in targets {
                match (fault, start) {
                    (NetFault::Partition, true) => sim.partition("server", c),
                    (NetFault::Partition, false) => sim.repair("server", c),
                    (NetFault::Hold, true) => sim.hold("server", c),
                    _ => sim.release("server", c),
                }
            }
        }
    }
}

fn sim_fault(w: &Window, start: bool) -> SimFault {
    match (w.fault, start) {
        (NetFault::Partition, true) => SimFault::Partition(w.target),
        (NetFault::Partition, false) => SimFault::Repair(w.target),
        (NetFault::Hold, true) => SimFault::Hold(w.target),
        (NetFault::Hold, false) => SimFault::Release(w.target),
        (NetFault::Crash, true) => SimFault::Crash,
        (NetFault::Crash, false) => SimFault::Restart,
    }
}

/// Builds the client for `stack` (see [`Stack`]).
fn build_client(stack: Stack, config: ClientConfig) -> Client {
    use abacus::client::{
        AttemptLayer, Call, DeadlineLayer, ObserveLayer, RetryLayer, RetryPolicy, Transport,
    };
    use tower::{ServiceBuilder, util::BoxCloneSyncService};
    let channel = net::channel("server");
    let seed = config.seed.unwrap_or(0);
    let retry = || {
        RetryLayer::new(
            RetryPolicy::new(config.retry.clone(), config.mode),
            seed,
            config.events.clone(),
        )
    };
    match stack {
        Stack::Standard => Client::new(channel, config),
        Stack::DoubleRetry => Client::from_stack(BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(DeadlineLayer::new(config.deadline))
                .layer(ObserveLayer::new(config.events.clone()))
                .layer(retry())
                .layer(retry())
                .layer(AttemptLayer::new(
                    config.attempt_timeout,
                    config.events.clone(),
                ))
                .service(Transport::new(channel)),
        )),
        Stack::DeadlineNotEnforced => Client::from_stack(BoxCloneSyncService::new(
            ServiceBuilder::new()
                .map_request(move |mut call: Call| {
                    call.deadline = Some(tokio::time::Instant::now() + config.deadline);
                    call
                })
                .layer(ObserveLayer::new(config.events.clone()))
                .map_request(|mut call: Call| {
                    call.deadline = None;
                    call
                })
                .layer(retry())
                .layer(AttemptLayer::new(
                    config.attempt_timeout,
                    config.events.clone(),
                ))
                .service(Transport::new(channel)),
        )),
    }
}

/// One client's sequence of logical calls, drawn from its own seeded RNG.
struct Workload {
    host: String,
    index: usize,
    calls: usize,
    accumulate_share: f64,
    think_ms: (u64, u64),
    invalid_share: f64,
    hedge: bool,
    ids: IdGenerator,
    liveness_calls: usize,
    heal_at: Duration,
    rng: ChaCha8Rng,
    history: History,
    ledger: Arc<Mutex<Vec<LogicalAccumulate>>>,
}

impl Workload {
    /// Sends the same Accumulate twice at once under one request ID (a
    /// hedged request racing the original): the server must apply it once,
    /// and both copies must see the same value, at most one of them fresh
    /// (both may be replays when both first attempts timed out).
    async fn hedged(&mut self, client: &Client, delta: f64) -> Result<(f64, bool), CallError> {
        let id = self.ids.next_id();
        let (a, b) = tokio::join!(
            client.accumulate_with_id(REGISTER, delta, &id),
            client.accumulate_with_id(REGISTER, delta, &id)
        );
        if let (Ok((va, ra)), Ok((vb, rb))) = (&a, &b)
            && (va != vb || (!ra && !rb))
        {
            self.history.push(
                &self.host,
                Entry::Note(Note::Wrong(Wrong::Hedged {
                    id: id.clone(),
                    first: (*va, *ra),
                    second: (*vb, *rb),
                })),
            );
        }
        a.or(b)
    }

    async fn run(mut self, client: &Client) {
        for k in 0..self.calls {
            // Think time between calls (simulated), so that faults land in
            // the middle of the workload rather than after it.
            let think = self.rng.random_range(self.think_ms.0..=self.think_ms.1);
            tokio::time::sleep(std::time::Duration::from_millis(think)).await;
            if self.rng.random_bool(self.accumulate_share) {
                let delta = (self.index * 1000 + k + 1) as f64;
                let result = if self.hedge {
                    self.hedged(client, delta).await
                } else {
                    client.accumulate(REGISTER, delta).await
                };
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
            } else if self.rng.random_bool(self.invalid_share) {
                // Never valid: must fail INVALID_ARGUMENT without a retry.
                if client.divide(1.0, 0.0).await.is_ok() {
                    self.history.push(
                        &self.host,
                        Entry::Note(Note::Wrong(Wrong::DivisionByZeroSucceeded)),
                    );
                }
            } else {
                let a = self.rng.random_range(0..100) as f64;
                let b = self.rng.random_range(0..100) as f64;
                if let Ok(v) = client.add(a, b).await
                    && v != a + b
                {
                    self.history.push(
                        &self.host,
                        Entry::Note(Note::Wrong(Wrong::Add { a, b, got: v })),
                    );
                }
            }
        }
        self.history
            .push(&self.host, Entry::Note(Note::WorkloadDone));
        if self.liveness_calls == 0 {
            return;
        }
        let now = turmoil::sim_elapsed().unwrap_or_default();
        tokio::time::sleep(self.heal_at.saturating_sub(now)).await;
        self.history
            .push(&self.host, Entry::Note(Note::LivenessPhase));
        // Progress, not perfection: calls may still fail while the client
        // recovers (an empty retry budget, a breaker waiting to probe), but
        // `liveness_calls` must succeed within the bound.
        let start = tokio::time::Instant::now();
        let (mut done, mut last_error) = (0, None);
        while done < self.liveness_calls && start.elapsed() < LIVENESS_BOUND {
            match client.add(done as f64, 1.0).await {
                Ok(_) => done += 1,
                Err(e) => {
                    last_error = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        if done < self.liveness_calls {
            self.history.push(
                &self.host,
                Entry::Note(Note::LivenessFailed {
                    done,
                    wanted: self.liveness_calls,
                    last_error,
                }),
            );
        }
    }
}
