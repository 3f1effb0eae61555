//! The balancer under the retry and hedging layers, over fake endpoints on
//! a paused clock: where attempts go, who is ejected and when, what a
//! hedge does. Deterministic: seeded picks, tokio's paused time.

use std::sync::{
    Mutex,
    atomic::{AtomicUsize, Ordering},
};

use tower::{Layer, ServiceExt, util::BoxCloneSyncService};

use super::*;
use crate::{
    client::{
        breaker::State as BreakerState,
        call::Request,
        hedge::{HedgeConfig, HedgePolicy, HedgeTrigger},
        mode::Delivery,
        retry::{RetryConfig, RetryLayer, RetryPolicy},
    },
    core::BinaryOp,
};

type Fake = BoxCloneSyncService<Call, Reply, CallError>;

/// What a fake endpoint does with a call.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Ok,
    /// Refuses the connection: UNAVAILABLE, nothing sent.
    Down,
    /// Answers after this long.
    Slow(Duration),
    /// UNAVAILABLE with a negative pushback.
    Stop,
}

/// A fake endpoint that counts the calls reaching it.
#[derive(Clone)]
struct Endpoint {
    mode: Arc<Mutex<Mode>>,
    hits: Arc<AtomicUsize>,
}

impl Endpoint {
    fn new(mode: Mode) -> Self {
        Self {
            mode: Arc::new(Mutex::new(mode)),
            hits: Arc::default(),
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn service(&self) -> Fake {
        let this = self.clone();
        BoxCloneSyncService::new(tower::service_fn(move |_: Call| {
            this.hits.fetch_add(1, Ordering::SeqCst);
            let mode = *this.mode.lock().unwrap();
            async move {
                match mode {
                    Mode::Ok => Ok(Reply::Calc(1.0)),
                    Mode::Down => Err(CallError::new(
                        Code::Unavailable,
                        "refused",
                        Cause::Connect,
                        Outcome::NotApplied,
                    )),
                    Mode::Slow(d) => {
                        tokio::time::sleep(d).await;
                        Ok(Reply::Calc(1.0))
                    }
                    Mode::Stop => {
                        let mut e = CallError::new(
                            Code::Unavailable,
                            "go away",
                            Cause::Status,
                            Outcome::NotApplied,
                        );
                        e.pushback_ms = Some(-1);
                        Err(e)
                    }
                }
            }
        }))
    }
}

/// Every event, in order.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<Event>>>);

impl Events {
    fn sink(&self) -> EventSink {
        let events = Arc::clone(&self.0);
        EventSink::with_hook(move |e| events.lock().unwrap().push(e.clone()))
    }

    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn breaker() -> BreakerConfig {
    BreakerConfig {
        consecutive_failures_max: Some(3),
        open_ms: 1_000,
        open_jitter_ratio: 0.0,
        ..BreakerConfig::default()
    }
}

/// A balancer over `endpoints` (named `e0`, `e1`, …) with the retry (and
/// hedging) layer above it.
struct Rig {
    balance: Balance<Fake>,
    retry: RetryLayer,
    events: Events,
}

impl Rig {
    fn new(endpoints: &[&Endpoint], hedge: Option<HedgeConfig>) -> Self {
        Self::with(endpoints, hedge, Some(breaker()), Balancing::PeakEwmaP2c)
    }

    fn with(
        endpoints: &[&Endpoint],
        hedge: Option<HedgeConfig>,
        breaker: Option<BreakerConfig>,
        policy: Balancing,
    ) -> Self {
        let events = Events::default();
        let config = BalanceConfig {
            policy,
            ..BalanceConfig::default()
        };
        let balance = Balance::new(config, breaker, 7, events.sink());
        for (i, e) in endpoints.iter().enumerate() {
            assert!(balance.insert(&format!("e{i}"), e.service(), None));
        }
        let retry_config = RetryConfig {
            attempts_max: 3,
            throttle: None,
            ..RetryConfig::default()
        };
        let policy = RetryPolicy::new(retry_config, Delivery::ExactlyOnce);
        let retry = match hedge {
            Some(h) => RetryLayer::hedged(policy, HedgePolicy::new(h), 3, events.sink()),
            None => RetryLayer::new(policy, 3, events.sink()),
        };
        Self {
            balance,
            retry,
            events,
        }
    }

    async fn call(&self, id: u64, request: Request) -> Result<Reply, CallError> {
        let mut call = Call::new(id, request);
        call.deadline = Some(Instant::now() + Duration::from_secs(5));
        self.retry.layer(self.balance.clone()).oneshot(call).await
    }

    async fn add(&self, id: u64) -> Result<Reply, CallError> {
        self.call(
            id,
            Request::Binary {
                op: BinaryOp::Add,
                a: 1.0,
                b: 2.0,
            },
        )
        .await
    }

    fn snapshot(&self, i: usize) -> EndpointSnapshot {
        self.balance.handle().endpoints().remove(i)
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_goes_to_another_endpoint() {
    let (down, up) = (Endpoint::new(Mode::Down), Endpoint::new(Mode::Ok));
    let rig = Rig::with(&[&down, &up], None, None, Balancing::PeakEwmaP2c);
    for id in 1..=20 {
        assert_eq!(rig.add(id).await, Ok(Reply::Calc(1.0)), "call {id}");
    }
    // Without a breaker the dead endpoint keeps being tried, but never
    // twice in one call: each of its failures was retried on the other.
    assert!(down.hits() >= 1, "the dead endpoint was never picked");
    assert!(down.hits() <= 20);
    assert_eq!(up.hits(), 20);
    let retries = rig
        .events
        .take()
        .into_iter()
        .filter(|e| matches!(e, Event::Backoff { .. }))
        .count();
    assert_eq!(retries, down.hits());
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_ejects_its_endpoint_until_its_probe() {
    let (flaky, steady) = (Endpoint::new(Mode::Down), Endpoint::new(Mode::Ok));
    let rig = Rig::new(&[&flaky, &steady], None);
    let mut id = 0;
    // Until the breaker trips (3 failures in a row), the dead endpoint is
    // picked now and then; every call still succeeds.
    while rig.snapshot(0).breaker != Some(BreakerState::Open) {
        id += 1;
        assert!(id < 200, "the breaker never opened");
        assert_eq!(rig.add(id).await, Ok(Reply::Calc(1.0)));
    }
    assert_eq!(flaky.hits(), 3);
    // Open: nothing reaches it, however cheap it looks.
    for _ in 0..50 {
        id += 1;
        assert_eq!(rig.add(id).await, Ok(Reply::Calc(1.0)));
    }
    assert_eq!(flaky.hits(), 3, "an ejected endpoint got traffic");
    // It recovers; once the open period is over, its probe goes out and
    // readmits it.
    flaky.set(Mode::Ok);
    tokio::time::advance(Duration::from_millis(1_000)).await;
    while rig.snapshot(0).breaker != Some(BreakerState::Closed) {
        id += 1;
        assert!(id < 400, "never probed");
        assert_eq!(rig.add(id).await, Ok(Reply::Calc(1.0)));
    }
    assert_eq!(flaky.hits(), 4, "exactly one probe readmitted it");
    let transitions: Vec<_> = rig
        .events
        .take()
        .into_iter()
        .filter_map(|e| match e {
            Event::BreakerTransition { endpoint, from, to } => Some((endpoint, from, to)),
            _ => None,
        })
        .collect();
    use BreakerState::*;
    assert_eq!(
        transitions,
        [
            ("e0".to_owned(), Closed, Open),
            ("e0".to_owned(), Open, HalfOpen),
            ("e0".to_owned(), HalfOpen, Closed),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn when_every_breaker_is_open_the_call_fails_fast_not_applied() {
    let (a, b) = (Endpoint::new(Mode::Down), Endpoint::new(Mode::Down));
    let rig = Rig::new(&[&a, &b], None);
    let mut id = 0;
    while rig
        .balance
        .handle()
        .endpoints()
        .iter()
        .any(|e| e.breaker != Some(BreakerState::Open))
    {
        id += 1;
        assert!(id < 50);
        let _ = rig.add(id).await;
    }
    let hits = a.hits() + b.hits();
    let err = rig.add(id + 1).await.unwrap_err();
    assert!(matches!(err.cause, Cause::CircuitOpen { .. }), "{err:?}");
    assert_eq!(
        (err.code, err.outcome, err.attempts),
        (Code::Unavailable, Outcome::NotApplied, 0)
    );
    assert_eq!(a.hits() + b.hits(), hits, "nothing was sent");
    assert!(
        rig.events
            .take()
            .iter()
            .any(|e| matches!(e, Event::BreakerRejected { call, .. } if *call == id + 1)),
        "the refusal is announced as the breaker's"
    );
}

#[tokio::test(start_paused = true)]
async fn not_serving_takes_an_endpoint_out_for_the_methods_that_need_it() {
    let (sick, well) = (Endpoint::new(Mode::Ok), Endpoint::new(Mode::Ok));
    let rig = Rig::new(&[&sick, &well], None);
    rig.balance.shared.lock().slots[0]
        .health
        .set(HealthScope::Registers, Serving::NotServing);
    let acc = |id: u64| Request::Accumulate {
        register: "r".into(),
        delta: 1.0,
        request_id: format!("id-{id}"),
    };
    for id in 1..=30 {
        rig.call(id, acc(id))
            .await
            .expect("the healthy replica serves it");
    }
    assert_eq!(
        sick.hits(),
        0,
        "a register call went to a NOT_SERVING replica"
    );
    // Arithmetic does not need the store: both serve it.
    for id in 31..=60 {
        rig.add(id).await.expect("served");
    }
    assert!(sick.hits() > 0, "the calculator scope was not NOT_SERVING");
    // Nobody serves registers: fail fast, not applied, nothing sent.
    rig.balance.shared.lock().slots[1]
        .health
        .set(HealthScope::Registers, Serving::NotServing);
    let before = sick.hits() + well.hits();
    let err = rig.call(99, acc(99)).await.unwrap_err();
    assert_eq!(
        (err.cause.clone(), err.outcome),
        (Cause::NoEndpoint, Outcome::NotApplied)
    );
    assert!(
        err.message
            .contains("2 of 2 report abacus.v1.Registers NOT_SERVING"),
        "{}",
        err.message
    );
    assert_eq!(sick.hits() + well.hits(), before);
}

#[tokio::test(start_paused = true)]
async fn p2c_steers_away_from_a_slow_endpoint_and_round_robin_does_not() {
    let slow = || Endpoint::new(Mode::Slow(Duration::from_millis(100)));
    let fast = || Endpoint::new(Mode::Slow(Duration::from_millis(1)));
    for (policy, slow_share_max, slow_share_min) in [
        (Balancing::PeakEwmaP2c, 0.05, 0.0),
        (Balancing::RoundRobin, 0.34, 0.32),
    ] {
        let endpoints = [fast(), slow(), fast()];
        let refs: Vec<&Endpoint> = endpoints.iter().collect();
        let rig = Rig::with(&refs, None, None, policy);
        let calls = 300;
        for id in 1..=calls {
            rig.add(id).await.expect("served");
        }
        let share = endpoints[1].hits() as f64 / calls as f64;
        assert!(
            (slow_share_min..=slow_share_max).contains(&share),
            "{policy:?}: the slow endpoint got {share:.3} of the calls"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_hedge_to_another_endpoint_wins_and_the_slow_attempt_is_cancelled() {
    let slow = Endpoint::new(Mode::Slow(Duration::from_millis(500)));
    let fast = Endpoint::new(Mode::Slow(Duration::from_millis(5)));
    let hedge = HedgeConfig {
        attempts_max: 3,
        delay: Duration::from_millis(20),
        non_fatal_codes: vec![Code::Unavailable],
    };
    // Round robin, so the first call goes to the slow endpoint whatever
    // its estimate says.
    let rig = Rig::with(&[&slow, &fast], Some(hedge), None, Balancing::RoundRobin);
    let t0 = Instant::now();
    assert_eq!(rig.add(1).await, Ok(Reply::Calc(1.0)));
    assert_eq!(
        t0.elapsed(),
        Duration::from_millis(25),
        "hedged at 20 ms, answered 5 ms later"
    );
    let hedge_events: Vec<_> = rig
        .events
        .take()
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                Event::HedgeSent { .. } | Event::HedgeWon { .. } | Event::HedgeCancelled { .. }
            )
        })
        .collect();
    assert_eq!(
        hedge_events,
        [
            Event::HedgeSent {
                call: 1,
                attempt: 2,
                trigger: HedgeTrigger::Delay
            },
            Event::HedgeWon {
                call: 1,
                attempt: 2
            },
            Event::HedgeCancelled {
                call: 1,
                attempt: 1
            },
        ]
    );
    let c = rig.retry.counters();
    assert_eq!((c.hedges, c.hedges_won, c.hedges_cancelled), (1, 1, 1));
    let slow_seen = rig.snapshot(0);
    assert_eq!(
        (slow_seen.counters.cancelled, slow_seen.pending),
        (1, 0),
        "the loser is recorded as cancelled"
    );
    // A cancelled attempt says the endpoint took at least 20 ms.
    assert!(slow_seen.latency_ms.expect("measured") >= 20.0);
}

#[tokio::test(start_paused = true)]
async fn the_attempts_a_late_hedge_beats_are_cancelled_in_launch_order() {
    let slow = || Endpoint::new(Mode::Slow(Duration::from_millis(500)));
    let endpoints = [
        slow(),
        slow(),
        Endpoint::new(Mode::Slow(Duration::from_millis(5))),
    ];
    let refs: Vec<&Endpoint> = endpoints.iter().collect();
    let hedge = HedgeConfig {
        attempts_max: 3,
        delay: Duration::from_millis(20),
        non_fatal_codes: vec![Code::Unavailable],
    };
    let rig = Rig::with(&refs, Some(hedge), None, Balancing::RoundRobin);
    let t0 = Instant::now();
    assert_eq!(rig.add(1).await, Ok(Reply::Calc(1.0)));
    assert_eq!(
        t0.elapsed(),
        Duration::from_millis(45),
        "third attempt at 40 ms"
    );
    let cancelled: Vec<_> = rig
        .events
        .take()
        .into_iter()
        .filter_map(|e| match e {
            Event::HedgeCancelled { call: 1, attempt } => Some(attempt),
            _ => None,
        })
        .collect();
    assert_eq!(cancelled, [1, 2]);
    let c = rig.retry.counters();
    assert_eq!((c.hedges, c.hedges_won, c.hedges_cancelled), (2, 1, 2));
    for i in 0..2 {
        assert_eq!(rig.snapshot(i).counters.cancelled, 1, "endpoint {i}");
    }
}

#[tokio::test(start_paused = true)]
async fn hedges_stop_on_negative_pushback_and_a_failure_sends_the_next_at_once() {
    let stop = Endpoint::new(Mode::Stop);
    let down = Endpoint::new(Mode::Down);
    let ok = Endpoint::new(Mode::Ok);
    let hedge = HedgeConfig {
        attempts_max: 3,
        delay: Duration::from_millis(50),
        non_fatal_codes: vec![Code::Unavailable],
    };
    // The down endpoint fails at once: the next hedge goes without waiting
    // for the 50 ms delay.
    let rig = Rig::with(
        &[&down, &ok],
        Some(hedge.clone()),
        None,
        Balancing::RoundRobin,
    );
    let t0 = Instant::now();
    assert_eq!(rig.add(1).await, Ok(Reply::Calc(1.0)));
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert!(rig.events.take().contains(&Event::HedgeSent {
        call: 1,
        attempt: 2,
        trigger: HedgeTrigger::Failure(Code::Unavailable)
    }));
    // A negative pushback: no hedge at all, the call fails with it.
    let rig = Rig::with(&[&stop, &ok], Some(hedge), None, Balancing::RoundRobin);
    let err = rig.add(1).await.unwrap_err();
    assert_eq!((err.cause.clone(), err.attempts), (Cause::PushbackStop, 1));
    assert_eq!(ok.hits(), 1, "only the first rig's hedge reached it");
}

#[tokio::test(start_paused = true)]
async fn re_resolution_adds_and_drops_endpoints_within_the_limit() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sink = EventSink::with_hook(move |e| {
        if matches!(
            e,
            Event::EndpointAdded { .. } | Event::EndpointRemoved { .. }
        ) {
            let _ = tx.send(e.clone());
        }
    });
    let config = BalanceConfig {
        resolve_every: Duration::from_secs(1),
        ..BalanceConfig::default()
    };
    let balance: Balance<Fake> = Balance::new(config, None, 7, sink);
    let up = Endpoint::new(Mode::Ok);
    assert!(balance.insert("a:1", up.service(), None));
    let make: MakeEndpoint<Fake> = {
        let up = up.clone();
        Arc::new(move |_: &str| Some((up.service(), None)))
    };
    let resolver = ManualResolver::new(["a:1", "b:1"]);
    balance.refresh_from(Arc::new(resolver.clone()), make);
    let names = || {
        balance
            .handle()
            .endpoints()
            .into_iter()
            .map(|e| e.name)
            .collect::<Vec<_>>()
    };
    let added = |endpoint: &str| Event::EndpointAdded {
        endpoint: endpoint.into(),
    };
    assert_eq!(rx.recv().await, Some(added("b:1")));
    assert_eq!(names(), ["a:1", "b:1"]);

    resolver.set(["b:1"]);
    let removed = Event::EndpointRemoved {
        endpoint: "a:1".into(),
    };
    assert_eq!(rx.recv().await, Some(removed));
    assert_eq!(names(), ["b:1"]);

    // A name answering with more addresses than a client keeps: the first
    // ENDPOINTS_MAX, in the resolver's order.
    let many: Vec<String> = (0..ENDPOINTS_MAX + 10)
        .map(|i| format!("10.0.{}.{}:1", i / 256, i % 256))
        .collect();
    resolver.set(many.clone());
    assert_eq!(
        rx.recv().await,
        Some(Event::EndpointRemoved {
            endpoint: "b:1".into()
        })
    );
    for name in &many[..ENDPOINTS_MAX] {
        assert_eq!(rx.recv().await, Some(added(name)));
    }
    assert_eq!(names(), many[..ENDPOINTS_MAX]);
    assert!(
        !balance.insert("c:1", up.service(), None),
        "the set is full"
    );
    assert_eq!(names().len(), ENDPOINTS_MAX);
}
