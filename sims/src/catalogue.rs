//! The named scenarios: each function builds one [`Scenario`] (a world, a
//! client policy, a workload, a fault plan). The `sims` test binary states
//! what each must show; the `sim` example and the `sim_speed` benchmark run
//! them by name ([`by_name`]).

use std::time::Duration;

use abacus::{
    client::{
        BalanceConfig, Balancing, BreakerConfig, Delivery, HedgeConfig, RetryConfig,
        retry::{Throttle, ThrottleConfig},
    },
    store::guard::GuardConfig,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tonic::Code;

use crate::{
    faults::{Fault, FaultPlan, Link, NetFault, Node, Peer, Side, Slow, Window},
    probes::Probe,
    scenario::{CascadeBounds, Replicated, Scenario, ServerState, Topology},
    seed::derive_seed,
    world::{
        aware::{Aware, Bounds, ReplicaClient},
        clock::dedup_ttl_min,
        disk::DiskBug,
        store::{ReplicaBug, StoreModel},
    },
};

/// Calls without faults, a fifth of the pure ones invalid.
pub fn happy() -> Scenario {
    let mut s = Scenario::new("happy_path");
    s.calls_per_client = 12;
    s.invalid_share = 0.2;
    s
}

/// Bare tonic, as it were: one attempt per call, under latency and link
/// failures.
pub fn plain_tonic() -> Scenario {
    let mut s = Scenario::new("plain_tonic_under_latency_and_link_failures");
    s.retry.attempts_max = 1;
    s.mode = Delivery::AtLeastOnce;
    s.plan.latency_ms = (1, 80);
    s.plan.link_fail_rate = 0.02;
    s
}

/// Accumulates only, against a server that applies then loses 30 % of the
/// responses: the partial failure that makes retries dangerous.
pub fn apply_then_drop(name: &'static str, mode: Delivery) -> Scenario {
    let mut s = Scenario::new(name);
    s.mode = mode;
    s.accumulate_share = 1.0;
    s.plan.drop_rate = 0.3;
    s
}

/// [`apply_then_drop`] in exactly-once mode: request IDs and the server's
/// dedup.
pub fn exactly_once(name: &'static str) -> Scenario {
    apply_then_drop(name, Delivery::ExactlyOnce)
}

/// Pure calls through timed network or host faults, with retries and a
/// retry budget able to ride out one of them, then a liveness phase.
pub fn pure(name: &'static str, windows: Vec<Window>) -> Scenario {
    let mut s = Scenario::new(name);
    s.accumulate_share = 0.0;
    s.deadline = Duration::from_secs(5);
    s.attempt_timeout = Duration::from_millis(400);
    s.retry.attempts_max = 8;
    // A bucket big enough to ride out one partition: a dead connection is
    // only noticed by HTTP/2 keepalive (1 s + 1 s), and every attempt on it
    // costs a token. `retry_budget_bounds_attempts_in_an_outage` shows the
    // default bucket running dry instead.
    s.retry.throttle = Some(
        ThrottleConfig {
            max_tokens: 40.0,
            token_ratio: 0.5,
        }
        .into(),
    );
    s.plan.windows = windows;
    s.liveness_calls = 3;
    s
}

/// The breaker of the breaker and replica-aware scenarios: quick to
/// probe, so recovery is measured in seconds.
pub fn breaker_config() -> BreakerConfig {
    BreakerConfig {
        open_ms: 300,
        open_ms_max: 1_200,
        ..BreakerConfig::default()
    }
}

/// One client with a breaker, steady pure traffic through and well past
/// the fault `windows` (about 8 s), so the recovery time measures the
/// breaker, not a lull in the workload.
pub fn breaker(name: &'static str, windows: Vec<Window>) -> Scenario {
    let mut s = Scenario::new(name);
    s.clients = 1;
    s.calls_per_client = 80;
    s.think_ms = (80, 120);
    s.accumulate_share = 0.0;
    s.deadline = Duration::from_millis(800);
    s.attempt_timeout = Duration::from_millis(250);
    s.breaker = Some(breaker_config());
    s.plan.windows = windows;
    s.liveness_calls = 3;
    s.probes = vec![
        Probe::BreakerOpened,
        Probe::BreakerRejected,
        Probe::BreakerClosedAfterProbe,
    ];
    s
}

/// A slow server (1.5–2 s per request, deadlines of 300 ms) and eight
/// callers, with (`protected`) or without the breaker and load shedding.
/// Work the server does for a caller that already gave up is wasted;
/// requests it admits are what piles up.
pub fn cascade(name: &'static str, protected: bool) -> Scenario {
    let mut s = Scenario::new(name);
    s.clients = 8;
    s.calls_per_client = 10;
    s.accumulate_share = 0.0;
    s.deadline = Duration::from_millis(300);
    s.attempt_timeout = Duration::from_millis(300);
    s.plan.delay_ms = (1_500, 2_000);
    if protected {
        s.breaker = Some(BreakerConfig {
            open_ms: 1_000,
            open_ms_max: 5_000,
            ..BreakerConfig::default()
        });
        s.in_flight_max = 4;
        s.probes = vec![Probe::Shed, Probe::BreakerOpened, Probe::BreakerRejected];
    }
    s
}

/// The swarm scenario for `seed`, in delivery `mode`: the seed draws the
/// fault mix ([`FaultPlan::generate`]) and 2 or 3 clients; a liveness phase
/// follows once every fault has stopped.
pub fn swarm(name: &'static str, mode: Delivery, seed: u64) -> Scenario {
    let mut s = Scenario::new(name);
    s.clients = 2 + (seed % 2) as usize;
    s.calls_per_client = 12;
    s.invalid_share = 0.1;
    s.mode = mode;
    s.plan = FaultPlan::generate(seed, s.clients);
    s.deadline = Duration::from_secs(2);
    s.attempt_timeout = Duration::from_millis(300);
    s.breaker = Some(BreakerConfig {
        // Short enough that an open breaker probes within the settle time.
        open_ms: 200,
        open_ms_max: 1_500,
        ..BreakerConfig::default()
    });
    s.liveness_calls = 3;
    // 10 ms steps: every latency, timeout and pause here is a multiple of
    // 10 ms or far above it, and the run (≈ 8 s simulated, most of it the
    // settle and liveness phase) goes ~5× faster than with 1 ms steps.
    s.tick = Duration::from_millis(10);
    s.quiet_after = Duration::from_secs(3);
    // What every swarm sweep must exercise: retries until the budget runs
    // dry, and the breaker's whole cycle; then what the mode is about.
    s.probes = vec![
        Probe::Retry,
        Probe::RetryBudgetExhausted,
        Probe::BreakerOpened,
        Probe::BreakerRejected,
        Probe::HalfOpenProbeFailed,
        Probe::BreakerClosedAfterProbe,
    ];
    match mode {
        Delivery::ExactlyOnce => s
            .probes
            .extend([Probe::ReplayAfterUnknown, Probe::DedupHit]),
        Delivery::AtMostOnce => s.probes.push(Probe::AtMostOnceStopped),
        Delivery::AtLeastOnce => {}
    }
    s
}

/// The benchmark's standard run: 2 clients × 20 calls under the seed's
/// swarm fault mix, exactly-once, no liveness phase.
pub fn standard(seed: u64) -> Scenario {
    let mut s = swarm("standard", Delivery::ExactlyOnce, seed);
    s.clients = 2;
    s.calls_per_client = 20;
    s.plan = FaultPlan::generate(seed, s.clients);
    s.liveness_calls = 0;
    s
}

/// The durable server for real: the redb ledger on a simulated disk that
/// loses and tears unsynced writes at power cuts and fails reads, writes
/// and syncs ([`FaultPlan::generate_disk`]), under the single-server swarm
/// (crash windows are power cuts too); writes and reads of two registers,
/// exactly-once, then a liveness phase once every fault has stopped.
pub fn durable_disk(name: &'static str, seed: u64) -> Scenario {
    let mut s = swarm(name, Delivery::ExactlyOnce, seed);
    s.server_state = ServerState::Disk { bug: None };
    s.registers = 2;
    s.read_share = 0.3;
    s.plan = FaultPlan::generate_disk(seed, s.clients);
    s
}

/// [`durable_disk`] on a disk that acknowledges a sync before the data is
/// durable (it lands one sync later), with power cuts always on: the
/// negative control of `durable-state`.
pub fn durable_disk_ack_before_fsync(name: &'static str, seed: u64) -> Scenario {
    let mut s = durable_disk(name, seed);
    s.server_state = ServerState::Disk {
        bug: Some(DiskBug::AckBeforeFsync),
    };
    s.plan.disk_cut_rate = s.plan.disk_cut_rate.max(0.05);
    s
}

/// Largest clock rate error in the skew scenarios: a clock may run 20 %
/// fast or slow (far beyond a healthy quartz, as a badly disciplined VM
/// clock can), so the bound's margin is visible in a short run.
pub const SKEW_RATE_MAX: f64 = 0.2;

/// How [`clock_skew`] sets the dedup retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// The smallest TTL the bound allows for the skew
    /// ([`dedup_ttl_min`]): deduplication must hold.
    WithinBound,
    /// A TTL equal to the client's retry window, as if clocks were true
    /// and the network instant: outside the bound, so a late retry may
    /// meet an expired record and apply again (the negative control).
    Naive,
    /// The bound for true clocks (`rate_max` 0): the retry window plus the
    /// latency, enough without skew and not with it (the replicated
    /// world's negative control: what the skew terms of the bound buy).
    TrueClocks,
}

impl Retention {
    /// The TTL for a client retrying for `window`, whose retries reach the
    /// place records are judged within `latency` of leaving, with
    /// simulation step `tick`.
    fn ttl(self, window: Duration, latency: Duration, tick: Duration) -> Duration {
        match self {
            Self::WithinBound => dedup_ttl_min(window, latency, SKEW_RATE_MAX, tick),
            Self::Naive => window,
            Self::TrueClocks => dedup_ttl_min(window, latency, 0.0, tick),
        }
    }
}

/// Exactly-once Accumulates against a server that applies then loses half
/// of the responses, so clients retry one request ID for up to their whole
/// 2 s deadline (ten attempts, backoff up to 500 ms, no retry budget), with
/// every host's clock running up to [`SKEW_RATE_MAX`] fast or slow, and the
/// server's dedup retention set by `retention`.
pub fn clock_skew(name: &'static str, retention: Retention) -> Scenario {
    let mut s = apply_then_drop(name, Delivery::ExactlyOnce);
    s.plan.drop_rate = 0.5;
    s.plan.latency_ms = (1, 20);
    s.calls_per_client = 12;
    s.deadline = Duration::from_secs(2);
    s.attempt_timeout = Duration::from_millis(300);
    s.retry.attempts_max = 10;
    s.retry.backoff.initial = Duration::from_millis(100);
    s.retry.backoff.max = Duration::from_millis(500);
    s.retry.throttle = None;
    s.skew_rate_max = SKEW_RATE_MAX;
    s.tick = Duration::from_millis(10);
    s.dedup_ttl = Some(retention.ttl(
        s.deadline,
        Duration::from_millis(s.plan.latency_ms.1),
        s.tick,
    ));
    s
}

/// [`clock_skew`] on the replicated system: three replicas over the store
/// host, three client hosts each calling through one replica-aware client
/// (retries go on at other replicas under the same request ID), every
/// replica applying then losing half of its responses, and every host —
/// each replica, the store, each client — on its own clock, up to
/// [`SKEW_RATE_MAX`] fast or slow. The store keeps the records and judges
/// their age on its own clock; a fifth of the calls read.
///
/// The retention is the one `retention` gives for the path a retry takes
/// to the store: two hops (client to replica, replica to store), each as
/// long as the plan's latency plus one step of rounding.
/// A replica measures the deadline it received on its own clock, which
/// lets an attempt reach the store as late as the slowest clock's window
/// allows and no later (docs/simulation.md), so the window term is the
/// single server's.
pub fn replicated_clock_skew(name: &'static str, retention: Retention) -> Scenario {
    let mut s = clock_skew(name, retention);
    let mut replicated = Replicated::new(REPLICAS);
    replicated.client = ReplicaClient::Aware(Box::new(Aware {
        balance: BalanceConfig::default(),
        hedge: None,
        bounds: Bounds::default(),
    }));
    s.topology = Topology::Replicated(replicated);
    s.clients = 3;
    s.accumulate_share = 0.8;
    s.read_share = 1.0;
    // Three registers: the linearizability check runs per register, and
    // refuting a history with a double apply costs exponentially in its
    // length (a control's violating seed, every time).
    s.registers = 3;
    let hop = Duration::from_millis(s.plan.latency_ms.1) + s.tick;
    s.dedup_ttl = Some(retention.ttl(s.deadline, 2 * hop, s.tick));
    s
}

/// Replicas in the replicated scenarios.
pub const REPLICAS: usize = 3;

/// The replicated swarm for `seed`: three replicas over the store model,
/// 2 or 3 clients each with one client per replica, three registers
/// written and read, the seed's replicated fault mix
/// ([`FaultPlan::generate_replicated`]), then a liveness phase whose calls
/// reach the store.
pub fn replicated_swarm(name: &'static str, seed: u64) -> Scenario {
    let mut s = swarm(name, Delivery::ExactlyOnce, seed);
    s.topology = Topology::Replicated(Replicated::new(REPLICAS));
    s.registers = 3;
    s.read_share = 0.4;
    s.invalid_share = 0.05;
    // A stored Accumulate crosses seven messages (client to replica; the
    // replica's connect, Begin and Commit to the store; the answer back),
    // each drawing the plan's latency: attempts get twice the swarm's time.
    s.attempt_timeout = Duration::from_millis(600);
    s.deadline = Duration::from_secs(3);
    s.plan = FaultPlan::generate_replicated(seed, s.clients, REPLICAS);
    // The paths the replicated world exists to show: a call going on at
    // another replica, answered from the record another attempt committed;
    // duplicates meeting at the store; a commit whose fate the replica
    // cannot know, and the claims that die with their connections.
    s.probes = vec![
        Probe::Retry,
        Probe::BreakerOpened,
        Probe::Failover,
        Probe::ReplayAfterUnknown,
        Probe::DedupHit,
        Probe::StillInFlight,
        Probe::StoreDuplicateJoined,
        Probe::ClaimRolledBack,
        Probe::CommitReplyLost,
        Probe::StoreFateUnknown,
    ];
    s
}

/// The replicated swarm with a broken store or replica: the negative
/// controls of the replicated checks.
pub fn replicated_control(
    name: &'static str,
    seed: u64,
    store: StoreModel,
    bug: Option<ReplicaBug>,
) -> Scenario {
    let mut s = replicated_swarm(name, seed);
    if let Topology::Replicated(r) = &mut s.topology {
        r.store = store;
        r.bug = bug;
    }
    s
}

/// A written replicated run, for the timeline snapshot and for exploring:
/// two clients over three replicas; one replica down for longer than a
/// call's deadline, so calls routed to it fail over; the store losing a
/// fifth of its commit replies, so retries are answered from the record,
/// and crashing for a moment.
pub fn replicated_failover(name: &'static str) -> Scenario {
    let mut s = Scenario::new(name);
    s.topology = Topology::Replicated(Replicated::new(REPLICAS));
    s.calls_per_client = 10;
    s.registers = 2;
    s.read_share = 0.4;
    s.deadline = Duration::from_secs(2);
    s.attempt_timeout = Duration::from_millis(300);
    s.plan.store_lose_rate = 0.2;
    s.plan.windows = vec![
        Window::new(Fault::Crash(Node::Replica(1)), 100, 2_500),
        Window::new(Fault::Crash(Node::Store), 1_500, 200),
    ];
    s.tick = Duration::from_millis(10);
    s
}

/// Store operations each replica's guard lets through at once in the store
/// cascade: a quarter of the replica's in-flight cap.
pub const CASCADE_STORE_CALLS: usize = 2;

/// The store cascade: the store turns slow — every operation takes 2 s —
/// for the first 5 s, under 18 callers over three replicas whose in-flight
/// cap is 6 calls each; half the calls are Accumulates, a fifth of the rest
/// reads, the others arithmetic, which never touches the store. Callers
/// wait up to 700 ms per attempt: longer than the guard's slow threshold,
/// so their cut calls are evidence. Then the store recovers and a liveness
/// phase checks that writes and reads came back by themselves.
///
/// `guarded`: each replica's store guard lets [`CASCADE_STORE_CALLS`]
/// operations through at once; without it (the negative control), register
/// calls pile up on the slow store until they fill the replicas' caps, and
/// the pure calls are shed. The scenario's bounds are the same either way.
pub fn store_cascade(name: &'static str, guarded: bool) -> Scenario {
    let mut s = Scenario::new(name);
    let mut replicated = Replicated::new(REPLICAS);
    replicated.guard = guarded.then(|| GuardConfig {
        in_flight_max: CASCADE_STORE_CALLS,
        ..GuardConfig::default()
    });
    if guarded {
        // What the guard is for: its breaker opening on the slow store.
        s.probes = vec![Probe::StoreBreakerOpened];
    }
    s.topology = Topology::Replicated(replicated);
    s.clients = 18;
    s.calls_per_client = 10;
    s.accumulate_share = 0.5;
    s.read_share = 0.2;
    s.registers = 3;
    s.in_flight_max = 6;
    s.deadline = Duration::from_secs(2);
    s.attempt_timeout = Duration::from_millis(700);
    s.plan.store_delay_ms = (2_000, 2_000);
    s.quiet_after = Duration::from_secs(5);
    s.liveness_calls = 3;
    // 10 ms steps, as the swarm's: every timeout here is a multiple of it.
    s.tick = Duration::from_millis(10);
    s.cascade = Some(CascadeBounds {
        // A pure call crosses two messages of at most 5 ms each: 100 ms
        // is an order of magnitude of slack, and two orders below the
        // store's 2 s.
        pure_latency_max: Duration::from_millis(100),
        store_calls_max: CASCADE_STORE_CALLS,
    });
    s
}

/// What goes wrong with one replica of three in the replica-aware
/// client's scenarios ([`aware`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaFault {
    /// It crashes, and restarts a while later.
    Crash,
    /// Every client is cut off from it, for a while (it still reaches the
    /// store).
    Partition,
    /// It handles every request 100× slower than the others (150–250 ms
    /// against 1–3 ms), for the whole run.
    Slow,
}

/// The failover bound of a replica-aware scenario whose attempts time out
/// after `attempt_timeout`: one attempt timing out at the lost replica,
/// the longest first backoff pause (50 ms), and 100 ms for a fresh
/// attempt to another replica — a new connection included, and the store
/// behind a read. 300 ms for the crash and the partition (150 ms
/// attempts), 550 ms with the slow replica (400 ms attempts, so that the
/// slow replica answers late rather than not at all).
pub fn aware_failover_bound(attempt_timeout: Duration) -> Duration {
    attempt_timeout + Duration::from_millis(50 + 100)
}

/// The tail bound of the slow-replica scenario: the hedging delay
/// (20 ms) plus a reply from a fast replica with room to spare, and still
/// below the slow replica's fastest answer (150 ms).
pub const AWARE_P99_BOUND: Duration = Duration::from_millis(100);

/// The replica-aware client's hedging policy: a second attempt after
/// 20 ms without a reply, up to three in all.
pub fn aware_hedging() -> HedgeConfig {
    HedgeConfig {
        attempts_max: 3,
        delay: Duration::from_millis(20),
        non_fatal_codes: vec![Code::Unavailable],
    }
}

/// Three replicas, three clients each with ONE replica-aware client over
/// all of them (p2c over peak-EWMA, a breaker and a health watch per
/// replica, retries steered to untried replicas; hedging when a replica
/// is slow), and one replica in trouble — `fault`, on the replica and at
/// the moment the seed draws. Pure calls, reads, and Accumulates with
/// request IDs. Every call that takes no claim must succeed within
/// [`aware_failover_bound`]; with the slow replica, their p99 must stay
/// within [`AWARE_P99_BOUND`].
pub fn aware(name: &'static str, fault: ReplicaFault, seed: u64) -> Scenario {
    let mut s = Scenario::new(name);
    s.clients = 3;
    s.calls_per_client = 40;
    s.think_ms = (5, 40);
    s.accumulate_share = 0.25;
    s.read_share = 0.3;
    s.registers = 2;
    s.deadline = Duration::from_secs(1);
    let slow = fault == ReplicaFault::Slow;
    s.attempt_timeout = Duration::from_millis(if slow { 400 } else { 150 });
    s.breaker = Some(breaker_config());
    // Linkerd's ratio budget, as `abacus bench`'s kill test uses: gRPC's
    // token bucket is sized in absolute tokens, and an Accumulate waiting
    // on the claim a crashed replica orphaned spends its retries' tokens
    // on timeouts; the next pure call that meets the crashed replica is
    // then refused its retry (crash seed 152, seen while the store model
    // held orphaned claims for good).
    s.retry.throttle = Some(Throttle::Ratio(Default::default()));
    s.plan.delay_ms = (1, 3);
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, "aware-plan"));
    let victim = rng.random_range(1..=REPLICAS);
    let (from, length) = (rng.random_range(200..=600), rng.random_range(800..=1_500));
    match fault {
        ReplicaFault::Crash => {
            s.plan.windows = vec![Window::new(
                Fault::Crash(Node::Replica(victim)),
                from,
                length,
            )];
        }
        ReplicaFault::Partition => {
            let link = Link {
                side: Side::Replica(victim),
                peer: Peer::Clients,
            };
            s.plan.windows = vec![Window::new(Fault::Partition(link), from, length)];
        }
        ReplicaFault::Slow => {
            s.plan.slow = Some(Slow {
                replica: victim,
                delay_ms: (150, 250),
            });
        }
    }
    let mut replicated = Replicated::new(REPLICAS);
    if slow {
        // What hedging is for: a hedge answering before the slow attempt.
        s.probes = vec![Probe::HedgeWon];
    }
    replicated.client = ReplicaClient::Aware(Box::new(Aware {
        balance: BalanceConfig::default(),
        hedge: slow.then(aware_hedging),
        bounds: Bounds {
            failover: Some(aware_failover_bound(s.attempt_timeout)),
            p99: slow.then_some(AWARE_P99_BOUND),
        },
    }));
    s.topology = Topology::Replicated(replicated);
    s
}

/// The negative control's client for [`aware`]: round robin, no breaker,
/// no health watch, no hedging, and gRPC's default token bucket — the
/// client one gets without thought; every replica gets its share whatever
/// it does. The scenario's bounds stay.
pub fn round_robin_without_ejection(s: &mut Scenario) {
    s.breaker = None;
    s.retry.throttle = RetryConfig::default().throttle;
    if let Topology::Replicated(r) = &mut s.topology
        && let ReplicaClient::Aware(a) = &mut r.client
    {
        a.balance = BalanceConfig {
            policy: Balancing::RoundRobin,
            health_check: false,
            ..BalanceConfig::default()
        };
        a.hedge = None;
    }
    s.probes.retain(|p| *p != Probe::HedgeWon);
}

/// The breaker alone ejects: round robin (blind to latency) with the
/// breaker and health watch on, so the breaker's trips, probes and
/// readmission are what keeps calls off a crashed replica. (Under p2c one
/// timed-out attempt already prices a lost replica out of most picks, and
/// its breaker rarely trips.)
pub fn round_robin_with_breaker(s: &mut Scenario) {
    if let Topology::Replicated(r) = &mut s.topology
        && let ReplicaClient::Aware(a) = &mut r.client
    {
        a.balance.policy = Balancing::RoundRobin;
    }
}

type Make = fn(u64) -> Scenario;

/// The scenarios the `sim` example runs by name. One table, so a name
/// cannot be listed without a scenario behind it.
const REGISTRY: [(&str, Make); 31] = [
    ("standard", standard),
    ("happy", |_| happy()),
    ("plain-tonic", |_| plain_tonic()),
    ("at-least-once", |_| {
        apply_then_drop("at-least-once", Delivery::AtLeastOnce)
    }),
    ("at-most-once", |_| {
        apply_then_drop("at-most-once", Delivery::AtMostOnce)
    }),
    ("exactly-once", |_| exactly_once("exactly-once")),
    ("dedup-off", |_| {
        let mut s = exactly_once("dedup-off");
        s.dedup = false;
        s
    }),
    ("partition", |_| {
        pure(
            "partition",
            vec![Window::all(NetFault::Partition, 150, 1350)],
        )
    }),
    ("crash", |_| {
        pure("crash", vec![Window::all(NetFault::Crash, 150, 850)])
    }),
    ("hold", |_| {
        pure("hold", vec![Window::all(NetFault::Hold, 150, 750)])
    }),
    ("breaker-partition", |_| {
        breaker(
            "breaker-partition",
            vec![Window::all(NetFault::Partition, 300, 2500)],
        )
    }),
    ("cascade-protected", |_| cascade("cascade-protected", true)),
    ("cascade-unprotected", |_| {
        cascade("cascade-unprotected", false)
    }),
    ("swarm", |seed| swarm("swarm", Delivery::ExactlyOnce, seed)),
    ("swarm-dedup-off", |seed| {
        let mut s = swarm("swarm-dedup-off", Delivery::ExactlyOnce, seed);
        s.dedup = false;
        s
    }),
    ("durable-disk", |seed| durable_disk("durable-disk", seed)),
    ("durable-disk-ack-before-fsync", |seed| {
        durable_disk_ack_before_fsync("durable-disk-ack-before-fsync", seed)
    }),
    ("clock-skew", |_| {
        clock_skew("clock-skew", Retention::WithinBound)
    }),
    ("clock-skew-naive-ttl", |_| {
        clock_skew("clock-skew-naive-ttl", Retention::Naive)
    }),
    ("replicated-clock-skew", |_| {
        replicated_clock_skew("replicated-clock-skew", Retention::WithinBound)
    }),
    ("replicated-clock-skew-true-clock-ttl", |_| {
        replicated_clock_skew(
            "replicated-clock-skew-true-clock-ttl",
            Retention::TrueClocks,
        )
    }),
    ("replicated", |_| replicated_failover("replicated")),
    ("replicated-swarm", |seed| {
        replicated_swarm("replicated-swarm", seed)
    }),
    ("replicated-split-store", |seed| {
        replicated_control(
            "replicated-split-store",
            seed,
            StoreModel::SplitTransactions,
            None,
        )
    }),
    ("replicated-stale-reads", |seed| {
        replicated_control(
            "replicated-stale-reads",
            seed,
            StoreModel::Atomic,
            Some(ReplicaBug::StaleReads),
        )
    }),
    ("replicated-lost-reply-not-applied", |seed| {
        lost_reply_not_applied("replicated-lost-reply-not-applied", seed)
    }),
    ("store-cascade-guarded", |_| {
        store_cascade("store-cascade-guarded", true)
    }),
    ("store-cascade-unguarded", |_| {
        store_cascade("store-cascade-unguarded", false)
    }),
    ("aware-crash", |seed| {
        aware("aware-crash", ReplicaFault::Crash, seed)
    }),
    ("aware-partition", |seed| {
        aware("aware-partition", ReplicaFault::Partition, seed)
    }),
    ("aware-slow", |seed| {
        aware("aware-slow", ReplicaFault::Slow, seed)
    }),
];

/// The replicated swarm whose replicas answer a lost commit reply as
/// not-applied, with lost replies always on, and clients that take a
/// not-applied at its word: one attempt, no failover. (A client that
/// retries under the same request ID would be answered from the record and
/// never see the lie — which is why the lie goes unnoticed in practice,
/// and why it is still a lie to the caller who stops there.)
pub fn lost_reply_not_applied(name: &'static str, seed: u64) -> Scenario {
    let mut s = replicated_control(
        name,
        seed,
        StoreModel::Atomic,
        Some(ReplicaBug::LostReplyIsNotApplied),
    );
    s.plan.store_lose_rate = s.plan.store_lose_rate.max(0.2);
    s.retry.attempts_max = 1;
    if let Topology::Replicated(r) = &mut s.topology {
        r.failover_max = 0;
    }
    s
}

/// Every name [`by_name`] knows, for `--list`, `--help` and errors.
pub fn names() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().map(|(name, _)| *name)
}

/// The scenario called `name`, for `seed` (swarm plans depend on it).
pub fn by_name(name: &str, seed: u64) -> Option<Scenario> {
    REGISTRY
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, make)| make(seed))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use abacus::client::ClientConfig;

    use super::*;

    /// What `sim NAME SEED` relies on: names are unique; every scenario's
    /// client policy is one `Client` accepts (the example builds it with the
    /// same checks a user's configuration gets); its plan prints in a form
    /// that `--plan` reads back; and a swarm name gives a different plan for
    /// a different seed, so the seed argument means something.
    #[test]
    fn every_registered_scenario_is_runnable_and_replayable() {
        let unique: BTreeSet<_> = names().collect();
        assert_eq!(unique.len(), REGISTRY.len(), "duplicate names");
        for name in names() {
            let s = by_name(name, 1).expect("listed");
            let config = ClientConfig {
                deadline: s.deadline,
                attempt_timeout: s.attempt_timeout,
                mode: s.mode,
                retry: s.retry.clone(),
                breaker: s.breaker.clone(),
                ..ClientConfig::default()
            };
            config
                .validate()
                .unwrap_or_else(|e| panic!("{name}: invalid client policy: {e}"));
            assert_eq!(
                s.plan.to_string().parse::<FaultPlan>().as_ref(),
                Ok(&s.plan),
                "{name}: the printed plan does not replay"
            );
            assert!(s.clients >= 1 && s.calls_per_client >= 1, "{name}");
        }
        for name in [
            "swarm",
            "standard",
            "swarm-dedup-off",
            "replicated-swarm",
            "durable-disk",
        ] {
            let plans: BTreeSet<String> = (0..8)
                .filter_map(|seed| by_name(name, seed))
                .map(|s| s.plan.to_string())
                .collect();
            assert!(plans.len() > 1, "{name}: the seed does not change the plan");
        }
        assert!(by_name("no-such-scenario", 1).is_none());
    }
}
