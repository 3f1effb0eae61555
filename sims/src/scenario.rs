//! [`Scenario`]: everything that defines a run apart from its seed — the
//! world's shape, the client's policy, the workload, the fault plan and the
//! promise the checker holds the run to.

use std::time::Duration;

use abacus::{
    client::{BreakerConfig, Delivery, RetryConfig},
    store::guard::GuardConfig,
};

use crate::{
    faults::FaultPlan,
    probes::Probe,
    world::{
        Stack,
        aware::ReplicaClient,
        disk::DiskBug,
        panicky::ServerBug,
        store::{ReplicaBug, StoreModel},
    },
};

/// Everything that defines a scenario, apart from the seed.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Test name (also used in the replay command).
    pub name: &'static str,
    /// The world's shape: one server, or replicas over a store.
    pub topology: Topology,
    /// Client hosts.
    pub clients: usize,
    /// Logical calls per client.
    pub calls_per_client: usize,
    /// Share of calls that are `Accumulate`.
    pub accumulate_share: f64,
    /// Share of the other calls that read a register (`GetRegister`),
    /// recorded for the linearizability check.
    pub read_share: f64,
    /// Registers the workload writes and reads: one (`total`) or several
    /// (`r1`, `r2`, …), drawn per call.
    pub registers: usize,
    /// Send every Accumulate twice at once under one request ID (to the
    /// first server host).
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
    /// The dedup retention, when not the default (10 minutes): the single
    /// server's, or the store's in the replicated world.
    pub dedup_ttl: Option<Duration>,
    /// Clock skew and drift: every host's clock runs at `1 + rate` with
    /// `rate` drawn from `[-skew_rate_max, skew_rate_max]` (0: true
    /// clocks). Skews the dedup retention (the single server's, or the
    /// store host's), each client's timers and each replica's store timers
    /// (`world::clock`).
    pub skew_rate_max: f64,
    /// What becomes of the single server's state at a crash. Single-server
    /// world only: the replicated world's store is always durable, its
    /// replicas always stateless.
    pub server_state: ServerState,
    /// The single server's bug, for a negative control (none by default).
    pub server_bug: Option<ServerBug>,
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
    /// What a store failure may cost the rest of the service (the store
    /// cascade scenarios): checked when set.
    pub cascade: Option<CascadeBounds>,
    /// With a liveness phase: when the untimed faults (link failures, server
    /// faults) stop. Timed windows stop at their own end.
    pub quiet_after: Duration,
    /// Probes a sweep of this scenario must reach (see [`crate::probes`]):
    /// the paths it exists to exercise. Checked on sweeps, never on a
    /// one-seed replay.
    pub probes: Vec<Probe>,
}

/// What becomes of the single server's state at a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Lost with it: in-memory mode.
    Lost,
    /// Kept, modelled: one in-memory ledger outside the host, handed to
    /// every incarnation (registers and records survive together, and
    /// nothing decided is ever lost).
    Survives,
    /// Durable mode for real: the redb ledger on a simulated disk that
    /// loses and tears unsynced writes at a power cut and fails on
    /// demand (`world::disk`); `bug` breaks the disk for a control.
    Disk {
        /// The disk's bug, if any.
        bug: Option<DiskBug>,
    },
}

/// The shape of the simulated world.
#[derive(Debug, Clone, PartialEq)]
pub enum Topology {
    /// One server host, `server`, its state in process.
    Single,
    /// Replicas, `replica-1` upwards, over one store host, `store`.
    Replicated(Replicated),
}

/// The replicated world.
#[derive(Debug, Clone, PartialEq)]
pub struct Replicated {
    /// Replica hosts (the real abacus server each).
    pub replicas: usize,
    /// What runs on the store host.
    pub store: StoreModel,
    /// A replica bug injected for a negative control.
    pub bug: Option<ReplicaBug>,
    /// Other replicas a logical call may try, one after the other, after a
    /// failure that leaves it safe to (see `workload`).
    pub failover_max: usize,
    /// The guard each replica puts in front of its store
    /// (`abacus::store::guard`), as `abacus serve --store postgres://…`
    /// does; `None` only for the cascade's negative control.
    pub guard: Option<GuardConfig>,
    /// How client hosts reach the replicas: one client per replica (the
    /// workload routes), or one replica-aware client over them all.
    pub client: ReplicaClient,
}

/// What a failing store may cost the rest of a replicated service: the
/// bounds of the store cascade scenarios (`check::cascade`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CascadeBounds {
    /// Every pure call (they never touch the store) succeeds, within this
    /// long of its start.
    pub pure_latency_max: Duration,
    /// Store connections open at once on any one replica: its store work
    /// in flight.
    pub store_calls_max: usize,
}

impl Replicated {
    /// `replicas` correct replicas over the correct store, each call free
    /// to try every replica.
    pub fn new(replicas: usize) -> Self {
        Self {
            replicas,
            store: StoreModel::Atomic,
            bug: None,
            failover_max: replicas.saturating_sub(1),
            guard: Some(GuardConfig::default()),
            client: ReplicaClient::PerReplica,
        }
    }
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

/// Time allowed after the last fault before the liveness phase starts.
pub const SETTLE: Duration = Duration::from_secs(4);

/// The liveness bound: once the phase starts, each client must complete its
/// liveness calls within this much simulated time. It covers a breaker that
/// re-opened on its last probe (open duration ≤ 1.5 s in the swarm, ≤ 30 s
/// by default — scenarios with a liveness phase use short ones) plus a few
/// call deadlines.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(10);

impl Scenario {
    /// Defaults: 2 clients × 10 calls, half of them Accumulate, exactly-once
    /// mode, default retries, no faults.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            topology: Topology::Single,
            clients: 2,
            calls_per_client: 10,
            accumulate_share: 0.5,
            read_share: 0.0,
            registers: 1,
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
            dedup_ttl: None,
            skew_rate_max: 0.0,
            server_state: ServerState::Survives,
            server_bug: None,
            plan: FaultPlan::default(),
            tick: Duration::from_millis(1),
            promise: Promise::ExactlyOnceEffect,
            liveness_calls: 0,
            quiet_after: Duration::ZERO,
            cascade: None,
            probes: Vec::new(),
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

    /// Names of the client hosts, `client-1` upwards.
    pub fn client_hosts(&self) -> Vec<String> {
        (1..=self.clients).map(|i| format!("client-{i}")).collect()
    }

    /// The replicated world, if this is one.
    pub fn replicated(&self) -> Option<&Replicated> {
        match &self.topology {
            Topology::Single => None,
            Topology::Replicated(r) => Some(r),
        }
    }

    /// Names of the server hosts: `server`, or `replica-1` upwards.
    pub fn server_hosts(&self) -> Vec<String> {
        match &self.topology {
            Topology::Single => vec![crate::world::server::HOST.to_owned()],
            Topology::Replicated(r) => (1..=r.replicas).map(|i| format!("replica-{i}")).collect(),
        }
    }

    /// The registers the workload uses: `total` alone, or `r1`, `r2`, ….
    pub fn register_names(&self) -> Vec<String> {
        if self.registers <= 1 {
            vec![crate::workload::REGISTER.to_owned()]
        } else {
            (1..=self.registers).map(|i| format!("r{i}")).collect()
        }
    }

    /// The dedup settings of the server (single world) or the store
    /// (replicated world): on or off, and the retention.
    pub fn dedup_config(&self) -> abacus::server::DedupConfig {
        let default = abacus::server::DedupConfig::default();
        abacus::server::DedupConfig {
            enabled: self.dedup,
            ttl_ms: self
                .dedup_ttl
                .map_or(default.ttl_ms, |t| t.as_millis() as u64),
            ..default
        }
    }

    /// `host`'s clock error in the run of `seed` (none without skew).
    pub fn skew(&self, seed: u64, host: &str) -> Option<crate::world::clock::Skew> {
        (self.skew_rate_max > 0.0)
            .then(|| crate::world::clock::Skew::of(seed, host, self.skew_rate_max))
    }

    /// True when state survives every crash the scenario can inject: the
    /// single server's when it is durable, always in the replicated world
    /// (the store is durable, replicas hold nothing).
    pub fn state_is_durable(&self) -> bool {
        self.replicated().is_some() || self.server_state != ServerState::Lost
    }
}
