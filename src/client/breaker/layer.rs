//! The tower side of the breaker: asks the [`BreakerPolicy`] before each
//! attempt, refuses without touching the inner service when it says so, and
//! announces every transition and refusal as an [`Event`].

use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;
use tonic::Code;
use tower::{Layer, Service};

use super::{
    config::{BreakerConfig, BreakerConfigError},
    future::{Report, ResponseFuture},
    policy::{BreakerPolicy, BreakerSnapshot, Rejected, State, Transition},
};
use crate::{
    client::{
        call::{Call, Reply},
        error::{CallError, Cause},
    },
    trace::{Event, EventSink, Outcome},
};

/// One breaker, shared by the layer, every service it built and every
/// handle.
pub(super) struct Shared {
    endpoint: String,
    events: EventSink,
    /// A std `Mutex`, not tokio's: it is held for a few arithmetic steps and
    /// never across an `.await`, so it cannot block the runtime, and it can
    /// be taken synchronously in `Drop` (an abandoned ticket), where an async
    /// lock cannot. Events are emitted only after it is released, so a hook
    /// that reads a snapshot cannot deadlock.
    policy: Mutex<BreakerPolicy<ChaCha8Rng>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, BreakerPolicy<ChaCha8Rng>> {
        // Every critical section leaves the policy consistent between
        // statements, so a panic elsewhere while it was held (impossible in
        // this code, but cheap to survive) does not make it unusable.
        self.policy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn announce(&self, transition: Option<Transition>) {
        if let Some(t) = transition {
            self.events.emit(Event::BreakerTransition {
                endpoint: self.endpoint.clone(),
                from: t.from,
                to: t.to,
            });
        }
    }

    fn refusal(&self, rejected: Rejected) -> CallError {
        let probe_in_ms = rejected.probe_in_ms;
        let mut message = format!(
            "circuit open for {}; next probe in {probe_in_ms} ms",
            self.endpoint
        );
        if rejected.state == State::HalfOpen {
            message.push_str(" (half-open: every probe slot is taken)");
        }
        CallError {
            code: Code::Unavailable,
            message,
            cause: Cause::CircuitOpen { probe_in_ms },
            outcome: Outcome::NotApplied,
            attempts: 0,
            pushback_ms: None,
        }
    }
}

/// Wraps a client service in a circuit breaker for one endpoint.
///
/// Unlike a config-only layer, it owns the breaker: every service it builds
/// (and every clone of those) shares one breaker, so the endpoint is judged
/// on all the traffic sent to it, and [`BreakerLayer::handle`] can show it.
#[derive(Debug, Clone)]
pub struct BreakerLayer {
    shared: Arc<Shared>,
}

impl BreakerLayer {
    /// A closed breaker guarding `endpoint` (used in events and messages).
    /// `seed` seeds the RNG for the open-duration jitter; give each client
    /// its own so their probes spread.
    ///
    /// # Panics
    ///
    /// If `config` is invalid; see [`BreakerLayer::try_new`].
    pub fn new(
        endpoint: impl Into<String>,
        config: BreakerConfig,
        seed: u64,
        events: EventSink,
    ) -> Self {
        match Self::try_new(endpoint, config, seed, events) {
            Ok(layer) => layer,
            Err(e) => panic!("invalid breaker config: {e}"),
        }
    }

    /// Like [`BreakerLayer::new`], but returns the error of an invalid
    /// config.
    pub fn try_new(
        endpoint: impl Into<String>,
        config: BreakerConfig,
        seed: u64,
        events: EventSink,
    ) -> Result<Self, BreakerConfigError> {
        let policy = BreakerPolicy::new(config, ChaCha8Rng::seed_from_u64(seed))?;
        Ok(Self {
            shared: Arc::new(Shared {
                endpoint: endpoint.into(),
                events,
                policy: Mutex::new(policy),
            }),
        })
    }

    /// A handle to read the breaker's state.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> Layer<S> for BreakerLayer {
    type Service = Breaker<S>;

    fn layer(&self, inner: S) -> Breaker<S> {
        Breaker {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Reads a breaker's state, for the CLI and demos.
#[derive(Debug, Clone)]
pub struct BreakerHandle {
    shared: Arc<Shared>,
}

impl BreakerHandle {
    /// The endpoint the breaker guards.
    pub fn endpoint(&self) -> &str {
        &self.shared.endpoint
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.shared.lock().state()
    }

    /// State and counters now (tokio time, so simulated time in sims).
    pub fn snapshot(&self) -> BreakerSnapshot {
        self.shared.lock().snapshot(Instant::now())
    }

    /// True when a call at `now` would be admitted (see
    /// [`BreakerPolicy::admits`]); changes nothing.
    pub fn admits(&self, now: Instant) -> bool {
        self.shared.lock().admits(now)
    }

    /// Asks to send a call at `now`: the ticket's guard and the transition
    /// to announce, or the refusal. The balancer admits its pick here while
    /// it holds its own lock, and announces (or refuses, through
    /// [`BreakerHandle::refuse`]) once it has let go of it, so an event
    /// hook never runs under either lock.
    pub(crate) fn try_admit(&self, now: Instant) -> Result<(Report, Option<Transition>), Rejected> {
        let admitted = self.shared.lock().try_acquire(now)?;
        Ok((
            Report::new(Arc::clone(&self.shared), admitted.ticket),
            admitted.transition,
        ))
    }

    /// Announces a transition [`BreakerHandle::try_admit`] returned.
    pub(crate) fn announce(&self, transition: Option<Transition>) {
        self.shared.announce(transition);
    }

    /// Announces the refusal of call `call` and returns its error: not
    /// applied, nothing sent.
    pub(crate) fn refuse(&self, call: u64, rejected: Rejected) -> CallError {
        self.shared.events.emit(Event::BreakerRejected {
            call,
            endpoint: self.shared.endpoint.clone(),
        });
        self.shared.refusal(rejected)
    }

    /// Resolves once the breaker's open period is over: at once unless it
    /// is open, else when the next call would go out as its half-open
    /// probe. A caller that wants to watch a recovery waits on this rather
    /// than sleeping for a guess at the open duration, which is jittered
    /// and grows with each failed probe. On the tokio clock, so a paused or
    /// simulated clock drives it; bound it with a timeout if the caller
    /// must not wait as long as `open_ms_max`.
    pub async fn probe_due(&self) {
        loop {
            let snapshot = self.snapshot();
            if snapshot.state != State::Open || snapshot.probe_in_ms == 0 {
                return;
            }
            // Rounded up, so one sleep reaches the end of the period; the
            // loop only guards against a clock that wakes early.
            tokio::time::sleep(Duration::from_millis(snapshot.probe_in_ms)).await;
        }
    }
}

/// A client service behind a circuit breaker. Built by [`BreakerLayer`].
#[derive(Debug, Clone)]
pub struct Breaker<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Call> for Breaker<S>
where
    S: Service<Call, Response = Reply, Error = CallError>,
{
    type Response = Reply;
    type Error = CallError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        // The decision needs the call (its id for the event) and the time it
        // is made, so it is taken in `call`, not here; readiness is the
        // inner service's.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let handle = BreakerHandle {
            shared: Arc::clone(&self.shared),
        };
        match handle.try_admit(Instant::now()) {
            Ok((report, transition)) => {
                handle.announce(transition);
                ResponseFuture::admitted(self.inner.call(call), report)
            }
            Err(rejected) => ResponseFuture::rejected(handle.refuse(call.id, rejected)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;
    use tower::{ServiceExt, util::BoxCloneService};

    use super::*;

    /// What the fake endpoint does with a call.
    #[derive(Clone, Copy)]
    enum Mode {
        Healthy,
        Failing,
        /// Signals `arrived`, then never answers: the test drops the call.
        Hanging,
        /// Answers OK after 200 ms.
        Slow,
    }

    /// A fake endpoint that counts the calls reaching it.
    #[derive(Clone)]
    struct Endpoint {
        reached: Arc<AtomicUsize>,
        mode: Arc<Mutex<Mode>>,
        /// Signalled by a hanging call once it is inside the endpoint, so
        /// past the breaker's admission.
        arrived: Arc<Notify>,
        events: Arc<Mutex<Vec<String>>>,
    }

    impl Endpoint {
        fn new() -> Self {
            Self {
                reached: Arc::default(),
                mode: Arc::new(Mutex::new(Mode::Failing)),
                arrived: Arc::default(),
                events: Arc::default(),
            }
        }

        fn set(&self, mode: Mode) {
            *self.mode.lock().unwrap() = mode;
        }

        fn reached(&self) -> usize {
            self.reached.load(Ordering::SeqCst)
        }

        fn sink(&self) -> EventSink {
            let events = Arc::clone(&self.events);
            EventSink::with_hook(move |e| events.lock().unwrap().push(e.to_string()))
        }

        fn take_events(&self) -> Vec<String> {
            std::mem::take(&mut *self.events.lock().unwrap())
        }

        fn service(&self) -> BoxCloneService<Call, Reply, CallError> {
            let this = self.clone();
            BoxCloneService::new(tower::service_fn(move |_call: Call| {
                this.reached.fetch_add(1, Ordering::SeqCst);
                let mode = *this.mode.lock().unwrap();
                let arrived = Arc::clone(&this.arrived);
                async move {
                    match mode {
                        Mode::Healthy => Ok(Reply::Calc(3.0)),
                        Mode::Failing => Err(CallError::new(
                            Code::Unavailable,
                            "down",
                            Cause::Connect,
                            Outcome::NotApplied,
                        )),
                        Mode::Hanging => {
                            // A stored permit: the test may start waiting
                            // after this runs.
                            arrived.notify_one();
                            std::future::pending().await
                        }
                        Mode::Slow => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            Ok(Reply::Calc(3.0))
                        }
                    }
                }
            }))
        }
    }

    fn config() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures_max: Some(3),
            open_ms: 1_000,
            open_jitter_ratio: 0.0,
            ..BreakerConfig::default()
        }
    }

    /// A breaker with `config` guarding a fresh (failing) fake endpoint.
    fn guarded(
        config: BreakerConfig,
    ) -> (
        Endpoint,
        BreakerHandle,
        Breaker<BoxCloneService<Call, Reply, CallError>>,
    ) {
        let endpoint = Endpoint::new();
        let layer = BreakerLayer::new("calc-1", config, 7, endpoint.sink());
        let svc = layer.layer(endpoint.service());
        (endpoint, layer.handle(), svc)
    }

    #[tokio::test(start_paused = true)]
    async fn open_breaker_refuses_without_calling_inner_then_probes_and_closes() {
        let (endpoint, handle, svc) = guarded(config());

        for id in 1..=3 {
            let err = svc.clone().oneshot(Call::test_add(id)).await.unwrap_err();
            assert_eq!(err.cause, Cause::Connect);
        }
        assert_eq!(endpoint.reached(), 3);
        assert_eq!(handle.state(), State::Open);

        tokio::time::advance(Duration::from_millis(400)).await;
        for id in 4..=8 {
            let err = svc.clone().oneshot(Call::test_add(id)).await.unwrap_err();
            assert_eq!(
                err,
                CallError {
                    code: Code::Unavailable,
                    message: "circuit open for calc-1; next probe in 600 ms".into(),
                    cause: Cause::CircuitOpen { probe_in_ms: 600 },
                    outcome: Outcome::NotApplied,
                    attempts: 0,
                    pushback_ms: None,
                }
            );
        }
        assert_eq!(
            endpoint.reached(),
            3,
            "nothing reaches an open breaker's inner"
        );
        assert_eq!(handle.snapshot().counters.rejected, 5);

        tokio::time::advance(Duration::from_millis(600)).await;
        endpoint.set(Mode::Healthy);
        assert_eq!(
            svc.clone().oneshot(Call::test_add(9)).await,
            Ok(Reply::Calc(3.0))
        );
        assert_eq!(endpoint.reached(), 4);
        assert_eq!(handle.state(), State::Closed);

        let events = endpoint.take_events();
        assert_eq!(events[0], "breaker calc-1 closed -> open");
        assert_eq!(
            events[1],
            "breaker-rejected #4 calc-1 circuit open, not sent"
        );
        assert_eq!(
            events[5..],
            [
                "breaker-rejected #8 calc-1 circuit open, not sent",
                "breaker calc-1 open -> half-open",
                "breaker calc-1 half-open -> closed",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn clones_and_services_of_one_layer_share_one_breaker() {
        let endpoint = Endpoint::new();
        let layer = BreakerLayer::new("calc-1", config(), 7, endpoint.sink());
        let a = layer.layer(endpoint.service());
        let b = layer.layer(endpoint.service());
        for id in 1..=3 {
            let _ = a.clone().oneshot(Call::test_add(id)).await;
        }
        let err = b.clone().oneshot(Call::test_add(4)).await.unwrap_err();
        assert!(matches!(err.cause, Cause::CircuitOpen { .. }), "{err:?}");
        assert_eq!(endpoint.reached(), 3);
        let s = layer.handle().snapshot();
        assert_eq!(
            (
                s.counters.admitted,
                s.counters.rejected,
                s.counters.failures
            ),
            (3, 1, 3)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_frees_its_slot() {
        let (endpoint, handle, svc) = guarded(config());
        for id in 1..=3 {
            let _ = svc.clone().oneshot(Call::test_add(id)).await;
        }
        tokio::time::advance(Duration::from_millis(1_000)).await;

        // The probe hangs; a caller's deadline would drop it.
        endpoint.set(Mode::Hanging);
        let probe = tokio::spawn(svc.clone().oneshot(Call::test_add(4)));
        endpoint.arrived.notified().await;
        assert_eq!(endpoint.reached(), 4);
        let err = svc.clone().oneshot(Call::test_add(5)).await.unwrap_err();
        assert_eq!(err.cause, Cause::CircuitOpen { probe_in_ms: 0 });
        assert!(err.message.contains("half-open"), "{}", err.message);

        probe.abort();
        assert!(probe.await.unwrap_err().is_cancelled());
        let s = handle.snapshot();
        assert_eq!(
            (s.state, s.probes_in_flight, s.counters.abandoned),
            (State::HalfOpen, 0, 1)
        );

        endpoint.set(Mode::Healthy);
        assert_eq!(
            svc.clone().oneshot(Call::test_add(6)).await,
            Ok(Reply::Calc(3.0))
        );
        assert_eq!(handle.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn probe_due_waits_out_exactly_the_open_period() {
        let (endpoint, handle, svc) = guarded(config());
        let t0 = Instant::now();
        handle.probe_due().await;
        assert_eq!(
            t0.elapsed(),
            Duration::ZERO,
            "a closed breaker is due at once"
        );

        for id in 1..=3 {
            let _ = svc.clone().oneshot(Call::test_add(id)).await;
        }
        tokio::time::advance(Duration::from_millis(300)).await;
        let waiting = Instant::now();
        handle.probe_due().await;
        assert_eq!(waiting.elapsed(), Duration::from_millis(700));
        assert_eq!(handle.snapshot().probe_in_ms, 0);

        // The next call is the probe; its success closes the breaker.
        endpoint.set(Mode::Healthy);
        assert_eq!(
            svc.clone().oneshot(Call::test_add(4)).await,
            Ok(Reply::Calc(3.0))
        );
        assert_eq!(
            endpoint.take_events()[1..],
            [
                "breaker calc-1 open -> half-open",
                "breaker calc-1 half-open -> closed"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_replies_trip_on_the_tokio_clock() {
        let (endpoint, handle, svc) = guarded(BreakerConfig {
            slow_call_ms: Some(100),
            consecutive_failures_max: Some(2),
            ..config()
        });
        endpoint.set(Mode::Slow);
        for id in 1..=2 {
            // The caller still gets its (slow) reply.
            assert_eq!(
                svc.clone().oneshot(Call::test_add(id)).await,
                Ok(Reply::Calc(3.0))
            );
        }
        let s = handle.snapshot();
        assert_eq!((s.state, s.counters.slow_calls), (State::Open, 2));
    }

    #[test]
    fn invalid_configs_are_refused() {
        let config = BreakerConfig {
            half_open_probes: 0,
            ..BreakerConfig::default()
        };
        let err = BreakerLayer::try_new("x", config, 0, EventSink::log_only()).unwrap_err();
        assert_eq!(err, BreakerConfigError::HalfOpenProbes(0));
    }
}
