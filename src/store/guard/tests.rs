//! The guard carried out over a backend whose failures a test chooses, on
//! tokio's paused clock: time moves only when every task waits, so the
//! bounds below are exact.

use std::sync::Mutex;

use super::*;
use crate::{
    error::CalcError,
    resilience::breaker::BreakerConfig,
    store::{DedupConfig, MemoryLedger, accumulate, test_args},
};

/// How the test backend behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The in-memory ledger.
    Healthy,
    /// Refuses at once (a stopped PostgreSQL: connection refused).
    Down,
    /// Answers nothing, but honours the deadline it is given (a hung
    /// PostgreSQL behind the real ledger).
    Hung,
    /// Answers nothing and ignores its deadline.
    Deaf,
}

#[derive(Debug)]
struct Backend {
    memory: MemoryLedger,
    mode: Mutex<Mode>,
    /// Calls that reached the backend.
    calls: Mutex<u32>,
}

impl Backend {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            memory: MemoryLedger::new(DedupConfig::default(), EventSink::default()),
            mode: Mutex::new(Mode::Healthy),
            calls: Mutex::new(0),
        })
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn calls(&self) -> u32 {
        *self.calls.lock().unwrap()
    }

    /// What a failing mode does; `None` when healthy.
    async fn fail<T>(&self, deadline: Option<Instant>) -> Option<Result<T, ServiceError>> {
        *self.calls.lock().unwrap() += 1;
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Healthy => None,
            Mode::Down => Some(Err(ServiceError::StoreUnavailable {
                fate: WriteFate::NotApplied,
            })),
            Mode::Hung => {
                sleep_until_some(deadline).await;
                Some(Err(ServiceError::DeadlineExceeded))
            }
            Mode::Deaf => std::future::pending().await,
        }
    }
}

impl Ledger for Backend {
    fn begin<'a>(
        &'a self,
        args: &'a AccumulateArgs,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Begin<'a>, ServiceError>> {
        Box::pin(async move {
            match self.fail(deadline).await {
                Some(failed) => failed,
                None => Ledger::begin(&self.memory, args, deadline).await,
            }
        })
    }

    fn get<'a>(
        &'a self,
        register: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<f64, ServiceError>> {
        Box::pin(async move {
            match self.fail(deadline).await {
                Some(failed) => failed,
                None => Ledger::get(&self.memory, register, deadline).await,
            }
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<StatsView, ServiceError>> {
        Box::pin(async move {
            match self.fail(None).await {
                Some(failed) => failed,
                None => Ledger::stats(&self.memory).await,
            }
        })
    }

    fn backend(&self) -> crate::store::Backend {
        crate::store::Backend::Model
    }
}

/// Trips after 3 failures in a row, opens for 1 s (no jitter), 2 s timeout.
fn config() -> GuardConfig {
    GuardConfig {
        timeout_ms: 2_000,
        slow_ms: 500,
        in_flight_max: 4,
        breaker: BreakerConfig {
            consecutive_failures_max: Some(3),
            failure_rate_threshold: None,
            open_ms: 1_000,
            open_ms_max: 4_000,
            open_jitter_ratio: 0.0,
            ..GuardConfig::default_breaker()
        },
    }
}

fn guarded(backend: &Arc<Backend>) -> GuardedLedger {
    GuardedLedger::new(
        Arc::clone(backend) as Arc<dyn Ledger>,
        config(),
        EventSink::default(),
        1,
    )
    .unwrap()
}

fn refused_open(r: &Result<Accumulated, ServiceError>) -> bool {
    matches!(
        r,
        Err(ServiceError::StoreRefused(Refusal::CircuitOpen { .. }))
    )
}

/// Waits (on the paused clock, event-driven) until the guard reports
/// `want`; returns how long that took.
async fn health_becomes(guard: &GuardedLedger, want: StoreHealth) -> Duration {
    let started = Instant::now();
    let mut health = guard.health();
    health
        .wait_for(|h| *h == want)
        .await
        .expect("the guard lives");
    started.elapsed()
}

#[tokio::test(start_paused = true)]
async fn a_down_store_opens_the_breaker_refuses_fast_and_recovers_by_itself() {
    let backend = Backend::new();
    let guard = guarded(&backend);
    backend.set(Mode::Down);
    for i in 0..3 {
        let r = accumulate(&guard, &test_args("r", 1.0, &format!("id-{i}")), None).await;
        assert_eq!(
            r,
            Err(ServiceError::StoreUnavailable {
                fate: WriteFate::NotApplied
            })
        );
    }
    assert_eq!(guard.snapshot().state, State::Open);
    health_becomes(&guard, StoreHealth::NotServing).await;
    // Open: refused before anything reaches the backend, not-applied, with
    // the time to the next probe as pushback.
    let reached = backend.calls();
    let refused = accumulate(&guard, &test_args("r", 1.0, "id-x"), None).await;
    assert!(refused_open(&refused), "{refused:?}");
    let e = refused.unwrap_err();
    assert!(e.known_not_applied());
    assert_eq!(e.pushback_ms(), Some(1_000));
    assert!(matches!(
        guard.get("r", None).await,
        Err(ServiceError::StoreRefused(_))
    ));
    assert_eq!(backend.calls(), reached, "nothing was sent while open");

    // The store comes back; nobody calls. The guard probes by itself when
    // the open time is up, and the register methods serve again.
    backend.set(Mode::Healthy);
    let waited = health_becomes(&guard, StoreHealth::Serving).await;
    assert!(waited <= Duration::from_millis(1_000), "{waited:?}");
    assert_eq!(guard.snapshot().state, State::Closed);
    assert_eq!(
        accumulate(&guard, &test_args("r", 1.0, "id-y"), None).await,
        Ok(Accumulated {
            value: 1.0,
            replayed: false
        })
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_self_probe_keeps_it_open_for_longer() {
    let backend = Backend::new();
    let guard = guarded(&backend);
    backend.set(Mode::Down);
    for _ in 0..3 {
        let _ = guard.get("r", None).await;
    }
    health_becomes(&guard, StoreHealth::NotServing).await;
    // The first probe (at 1 s) fails: open again, for 2 s.
    let mut state = guard.shared.state.subscribe();
    state.changed().await.unwrap();
    let transitions = guard
        .shared
        .lock()
        .breaker(Instant::now())
        .counters
        .transitions;
    assert_eq!(
        (transitions.open_to_half_open, transitions.half_open_to_open),
        (1, 1)
    );
    backend.set(Mode::Healthy);
    let waited = health_becomes(&guard, StoreHealth::Serving).await;
    assert!(
        waited > Duration::from_millis(1_900) && waited <= Duration::from_millis(2_000),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_store_is_cut_at_the_guards_limit_and_said_unavailable() {
    let backend = Backend::new();
    let guard = guarded(&backend);
    backend.set(Mode::Hung);
    let started = Instant::now();
    // No caller deadline: the guard's 2 s bound it, and the caller is told
    // the store is unavailable, not that its (absent) deadline passed.
    let r = accumulate(&guard, &test_args("r", 1.0, "a"), None).await;
    assert_eq!(
        r,
        Err(ServiceError::StoreUnavailable {
            fate: WriteFate::NotApplied
        })
    );
    assert_eq!(started.elapsed(), Duration::from_secs(2));
    // A caller deadline sooner than that bounds it, and is what it says.
    let started = Instant::now();
    let deadline = started + Duration::from_millis(700);
    let r = guard.get("r", Some(deadline)).await;
    assert_eq!(r, Err(ServiceError::DeadlineExceeded));
    assert_eq!(started.elapsed(), Duration::from_millis(700));
    // The first failed (the guard's limit), the second was slow (cut by
    // its caller after more than slow_ms); a third slow one opens.
    let _ = guard
        .get("r", Some(Instant::now() + Duration::from_millis(600)))
        .await;
    let s = guard.snapshot();
    assert_eq!(s.state, State::Open);
    assert_eq!((s.counters.failures, s.counters.slow), (3, 2));
}

#[tokio::test(start_paused = true)]
async fn impatient_callers_and_their_mistakes_never_open_it() {
    let backend = Backend::new();
    let guard = guarded(&backend);
    for i in 0..10 {
        // Rule errors and reused IDs: the store answered.
        assert!(matches!(
            accumulate(&guard, &test_args("", 1.0, ""), None).await,
            Err(ServiceError::Calc(CalcError::EmptyRegisterName))
        ));
        let id = format!("id-{i}");
        accumulate(&guard, &test_args("r", 1.0, &id), None)
            .await
            .unwrap();
        assert!(matches!(
            accumulate(&guard, &test_args("r", 2.0, &id), None).await,
            Err(ServiceError::RequestIdReused { .. })
        ));
    }
    // A hung store met only by callers with 100 ms deadlines: no evidence.
    backend.set(Mode::Hung);
    for _ in 0..10 {
        let r = guard
            .get("r", Some(Instant::now() + Duration::from_millis(100)))
            .await;
        assert_eq!(r, Err(ServiceError::DeadlineExceeded));
    }
    let s = guard.snapshot();
    assert_eq!((s.state, s.counters.failures), (State::Closed, 0));
}

#[tokio::test(start_paused = true)]
async fn store_work_in_flight_is_bounded_and_refused_beyond_at_once() {
    let backend = Backend::new();
    let guard = guarded(&backend);
    // Four claims held (a slow service between claim and commit): the
    // bound is reached without the store doing anything wrong.
    let args: Vec<_> = (0..5)
        .map(|i| test_args("r", 1.0, &format!("id-{i}")))
        .collect();
    let mut claims = Vec::new();
    for a in &args[..4] {
        match guard.begin(a, None).await.unwrap() {
            Begin::Execute(claim) => claims.push(claim),
            Begin::Replay(r) => panic!("replayed {r:?}"),
        }
    }
    let reached = backend.calls();
    let started = Instant::now();
    let refused = guard.begin(&args[4], None).await.unwrap_err();
    assert_eq!(
        refused,
        ServiceError::StoreRefused(Refusal::Busy {
            in_flight: 4,
            limit: 4
        })
    );
    assert!(refused.known_not_applied());
    assert_eq!(started.elapsed(), Duration::ZERO, "refused at once");
    assert_eq!(backend.calls(), reached);
    // A claim released before its commit frees its slot and tells the
    // breaker nothing; a committed one frees its slot too.
    drop(claims.pop());
    let last = claims.pop().unwrap();
    assert_eq!(last.commit().await.map(|a| a.value), Ok(1.0));
    assert_eq!(guard.snapshot().in_flight, 2);
    assert!(matches!(
        guard.begin(&args[4], None).await,
        Ok(Begin::Execute(_))
    ));
    drop(claims);
    let s = guard.snapshot();
    assert_eq!(
        (s.in_flight, s.state, s.counters.failures),
        (0, State::Closed, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_ignores_its_deadline_is_cut_by_the_backstop() {
    let backend = Backend::new();
    let guard = guarded(&backend);
    backend.set(Mode::Deaf);
    let started = Instant::now();
    // A claim the guard could not see end may have claimed, or be waiting
    // for another attempt that applies: unknown.
    let r = guard
        .begin(&test_args("r", 1.0, "a"), None)
        .await
        .unwrap_err();
    assert_eq!(
        r,
        ServiceError::StoreUnavailable {
            fate: WriteFate::Unknown
        }
    );
    assert_eq!(started.elapsed(), Duration::from_millis(2_100));
    // A read applies nothing.
    assert_eq!(
        guard.get("r", None).await,
        Err(ServiceError::StoreUnavailable {
            fate: WriteFate::NotApplied
        })
    );
    assert_eq!(guard.snapshot().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_operation_frees_its_slot() {
    let backend = Backend::new();
    let guard = guarded(&backend);
    backend.set(Mode::Deaf);
    let call = guard.get("r", None);
    // The caller gives up after 10 ms: its future is dropped mid-call.
    assert!(
        tokio::time::timeout(Duration::from_millis(10), call)
            .await
            .is_err()
    );
    let s = guard.snapshot();
    assert_eq!(
        (s.in_flight, s.counters.failures, s.counters.ignored),
        (0, 0, 1)
    );
}
