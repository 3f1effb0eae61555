//! The balancer: one logical client over a set of endpoints, each with its
//! own connection, breaker, health and latency estimate; every attempt
//! picks one.
//!
//! # Where it sits
//!
//! `retry / hedge → balance → per endpoint: breaker → attempt → transport`.
//! Retries and hedges sit above it, so each attempt is a fresh pick, and
//! the pick avoids the endpoints this call already used ([`Call::route`]):
//! a retry lands on another replica whenever one is available (gRPC A6
//! puts retries above the load balancer for the same reason). Breakers sit
//! below it because a breaker is a fact about one endpoint.
//!
//! # What a pick considers
//!
//! - **Ejection.** An endpoint whose breaker would refuse the call (open,
//!   or half-open with its probe slots taken) is unavailable; once its
//!   open period is over it is available again and the call it gets is its
//!   probe (gRPC A50's intent: an ejected endpoint gets its probes and
//!   nothing else). An endpoint whose health watch says NOT_SERVING for
//!   the scope the RPC needs ([`Method::health_scope`]) is unavailable for
//!   that RPC only.
//! - **Choice.** Among the available endpoints the call has not tried,
//!   [`chooser`]: power of two choices over peak-EWMA latency × calls in
//!   flight ([`ewma`]); round robin as a baseline.
//! - **Nothing available.** If some endpoint is out only by its breaker,
//!   the call goes to the breaker due soonest, which refuses it as the
//!   single-endpoint breaker always has (UNAVAILABLE, circuit open, not
//!   applied, nothing sent). Otherwise (no endpoints, or all NOT_SERVING)
//!   it fails at once with [`Cause::NoEndpoint`], not applied.
//!
//! The check and the breaker's admission happen under the balancer's lock,
//! so two callers cannot both take a half-open breaker's single probe slot
//! and have one of them refused.
//!
//! # Why not tower's `balance::p2c::Balance`
//!
//! Its algorithm is the one here (and `load::PeakEwma` the metric), but:
//! - it is not `Clone`: sharing it among callers takes a `Buffer`, a task
//!   hop per call (measured in `benches/client_overhead.rs`; see
//!   docs/benchmarks.md);
//! - it picks in `poll_ready`, before it sees the request, so it cannot
//!   steer a retry away from the replica that just failed it, nor judge
//!   health per method;
//! - it ejects an endpoint only when its service stops being ready, while
//!   our breaker decides at call time, with the clock and the call in hand;
//! - its `PeakEwma` counts a refused connection as a fast reply (see
//!   [`ewma`] on the black hole this makes).
//!
//! So the chooser and the estimate are plain structs here, with the RNG
//! and the clock passed in, unit-tested on their own.
//!
//! # Layout
//! - [`chooser`]: p2c and round robin, the pick itself.
//! - [`ewma`]: the peak-EWMA latency estimate.
//! - [`endpoint`]: health cells, counters, snapshots.
//! - [`health`]: the `grpc.health.v1` watch per endpoint.
//! - [`rewatch`]: when a broken watch is re-opened (its backoff).
//! - [`resolve`]: where endpoint names come from (static, manual, DNS).
//! - [`future`]: the response future (reports the outcome to the breaker
//!   and the estimate).
//!
//! [`Call::route`]: crate::client::Call::route
//! [`Method::health_scope`]: crate::rpc::Method::health_scope
//! [`Cause::NoEndpoint`]: crate::client::Cause::NoEndpoint

pub mod chooser;
pub mod endpoint;
pub mod ewma;
pub mod future;
pub mod health;
pub mod resolve;
pub mod rewatch;

use std::{
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, Weak,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;
use tonic::{Code, transport::Channel};
use tower::Service;

pub use chooser::{Balancing, Candidate, Chooser};
pub use endpoint::{EndpointCounters, EndpointSnapshot, HealthCell};
pub use ewma::PeakEwma;
pub use future::ResponseFuture;
pub use resolve::{DnsResolver, ManualResolver, Resolve, ResolveError, StaticResolver};

use self::{ewma::Sample, health::AbortOnDrop};
use crate::{
    client::{
        breaker::{BreakerConfig, BreakerHandle, BreakerLayer, config::CALLER_CODES},
        call::{Call, Reply},
        error::{CallError, Cause},
    },
    rpc::{HealthScope, Serving},
    trace::{Event, EventSink, Outcome},
};

/// How the balancer chooses and ejects.
#[derive(Debug, Clone, PartialEq)]
pub struct BalanceConfig {
    /// How to choose among the available endpoints.
    pub policy: Balancing,
    /// Time constant of the latency estimate's decay (Finagle and Linkerd:
    /// 10 s). Shorter forgets a slow spell sooner, and trusts a fast reply
    /// sooner.
    pub decay: Duration,
    /// Watch `grpc.health.v1` on every endpoint (see [`health`]).
    pub health_check: bool,
    /// How often a resolved target is resolved again.
    pub resolve_every: Duration,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            policy: Balancing::PeakEwmaP2c,
            decay: Duration::from_secs(10),
            health_check: true,
            resolve_every: Duration::from_secs(30),
        }
    }
}

/// Most endpoints one balancer keeps. Each holds a connection and two
/// health watch streams, and every pick looks at all of them under the
/// balancer's lock: a DNS name answering with hundreds of addresses must
/// not become hundreds of connections and a per-call scan over them.
/// Past it, names are kept in the resolver's (stable) order and the rest
/// left out, with a warning.
pub const ENDPOINTS_MAX: usize = 64;

/// The first [`ENDPOINTS_MAX`] of `names`, warning when some are left out.
pub(crate) fn within_limit(names: &[String]) -> &[String] {
    if names.len() > ENDPOINTS_MAX {
        tracing::warn!(
            resolved = names.len(),
            kept = ENDPOINTS_MAX,
            "the target resolved to more endpoints than a client keeps; the first ones are used"
        );
    }
    &names[..names.len().min(ENDPOINTS_MAX)]
}

/// Builds the service for a named endpoint (its transport and the layers
/// below the breaker), and the channel its health is watched over; `None`
/// when the name cannot be dialled (it is then left out, and logged).
pub type MakeEndpoint<S> = Arc<dyn Fn(&str) -> Option<(S, Option<Channel>)> + Send + Sync>;

/// One endpoint in the set.
struct Slot<S> {
    /// Stable for the endpoint's life in the set; never 0 (0 is "none" in
    /// a [`Route`](crate::client::call::Route)).
    id: u64,
    name: Arc<str>,
    service: S,
    breaker: Option<BreakerHandle>,
    health: Arc<HealthCell>,
    /// Where health is watched, until the watch starts.
    health_channel: Option<Channel>,
    watch: Option<AbortOnDrop>,
    load: PeakEwma,
    pending: u32,
    counters: EndpointCounters,
}

/// Everything behind the lock.
struct State<S> {
    slots: Vec<Slot<S>>,
    chooser: Chooser<ChaCha8Rng>,
    /// Reused for every pick, so a pick allocates nothing.
    scratch: Vec<Candidate>,
    next_id: u64,
    /// Watches to start at the next call (endpoints added outside a
    /// runtime, or since).
    watches_due: bool,
}

/// The balancer's state, shared by every clone of its service, the
/// response futures' guards, the client's handle and the refresh task
/// (which holds it weakly, so it ends with the client).
pub(crate) struct Shared<S> {
    /// A std `Mutex`: held for a pick or a report (arithmetic over a few
    /// endpoints, and the breaker's own short lock, taken inside this one —
    /// never the other way round), never across an `.await`. Events are
    /// emitted after it is released.
    state: Mutex<State<S>>,
    /// Fast path for [`Shared::start_watches`]: one relaxed load per call.
    watches_due: AtomicBool,
    config: BalanceConfig,
    breaker: Option<BreakerConfig>,
    seed: u64,
    events: EventSink,
    refresh: Mutex<Option<AbortOnDrop>>,
}

impl<S> fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance").finish_non_exhaustive()
    }
}

/// Seed of endpoint `id`'s breaker. The first endpoint's is the seed a
/// single-endpoint client has always given its breaker, so a one-endpoint
/// run draws the same jitter as before endpoint sets existed.
fn breaker_seed(seed: u64, id: u64) -> u64 {
    seed.rotate_left(17) ^ (id - 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl<S> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, State<S>> {
        // Every critical section leaves the state consistent between
        // statements; a panic elsewhere must not wedge the client.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `name` unless it is there or the set is full; returns whether
    /// it was added. Logs only once the lock is released.
    fn insert(&self, name: &str, service: S, health_channel: Option<Channel>) -> bool {
        let mut state = self.lock();
        if state.slots.iter().any(|s| &*s.name == name) {
            return false;
        }
        if state.slots.len() >= ENDPOINTS_MAX {
            drop(state);
            tracing::warn!(
                endpoint = name,
                max = ENDPOINTS_MAX,
                "endpoint left out: the set is full"
            );
            return false;
        }
        state.next_id += 1;
        let id = state.next_id;
        let breaker = self.breaker.as_ref().map(|config| {
            BreakerLayer::try_new(
                name,
                config.clone(),
                breaker_seed(self.seed, id),
                self.events.clone(),
            )
            .map(|layer| layer.handle())
        });
        let (breaker, breaker_error) = match breaker {
            Some(Ok(b)) => (Some(b), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        let health_channel = health_channel.filter(|_| self.config.health_check);
        if health_channel.is_some() {
            state.watches_due = true;
            self.watches_due.store(true, Ordering::Relaxed);
        }
        state.slots.push(Slot {
            id,
            name: Arc::from(name),
            service,
            breaker,
            health: Arc::default(),
            health_channel,
            watch: None,
            load: PeakEwma::new(self.config.decay),
            pending: 0,
            counters: EndpointCounters::default(),
        });
        drop(state);
        if let Some(e) = breaker_error {
            tracing::warn!(endpoint = name, error = %e, "breaker off");
        }
        true
    }

    /// Makes the set exactly `names` (in that order for new ones; the first
    /// [`ENDPOINTS_MAX`]): adds the new, drops the gone (their watches
    /// stop; their calls in flight finish on the service they hold), and
    /// announces both. (The set a client starts with is not announced: its
    /// configuration says it.)
    fn update(&self, names: &[String], make: &MakeEndpoint<S>) {
        let names = within_limit(names);
        let gone: Vec<Arc<str>> = {
            let mut state = self.lock();
            let mut gone = Vec::new();
            state.slots.retain(|s| {
                let keep = names.iter().any(|n| **n == *s.name);
                if !keep {
                    gone.push(Arc::clone(&s.name));
                }
                keep
            });
            gone
        };
        for name in gone {
            self.events.emit(Event::EndpointRemoved {
                endpoint: name.to_string(),
            });
        }
        for name in names {
            let known = self.lock().slots.iter().any(|s| *s.name == **name);
            if !known {
                match make(name) {
                    Some((service, channel)) => {
                        if self.insert(name, service, channel) {
                            self.events.emit(Event::EndpointAdded {
                                endpoint: name.clone(),
                            });
                        }
                    }
                    None => tracing::warn!(endpoint = %name, "resolved address cannot be dialled"),
                }
            }
        }
    }

    /// Starts the health watches of endpoints added since the last call:
    /// lazily, on the first call, because that is where a runtime is sure
    /// to be (a client may be built outside one).
    fn start_watches(&self) {
        if !self.watches_due.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut state = self.lock();
        if !state.watches_due {
            return;
        }
        state.watches_due = false;
        self.watches_due.store(false, Ordering::Relaxed);
        for slot in &mut state.slots {
            if let Some(channel) = slot.health_channel.take() {
                slot.watch = Some(health::spawn_watch(
                    &runtime,
                    channel,
                    Arc::clone(&slot.name),
                    Arc::clone(&slot.health),
                    self.events.clone(),
                    self.seed ^ slot.id.rotate_left(40) ^ 0x4ea1_7400,
                ));
            }
        }
    }

    /// A snapshot of every endpoint.
    fn snapshot(&self) -> Vec<EndpointSnapshot> {
        let now = Instant::now();
        let state = self.lock();
        state
            .slots
            .iter()
            .map(|s| EndpointSnapshot {
                name: s.name.to_string(),
                breaker: s.breaker.as_ref().map(BreakerHandle::state),
                health: HealthScope::ALL.map(|scope| s.health.get(scope)),
                latency_ms: s.load.estimate_ns(now).map(|ns| ns / 1e6),
                pending: s.pending,
                counters: s.counters,
            })
            .collect()
    }

    /// Breaker handles, by endpoint name.
    fn breakers(&self) -> Vec<(String, BreakerHandle)> {
        self.lock()
            .slots
            .iter()
            .filter_map(|s| Some((s.name.to_string(), s.breaker.clone()?)))
            .collect()
    }

    /// An attempt to endpoint `id` that started at `started` ended.
    fn finish(&self, id: u64, started: Instant, end: End) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(started);
        let mut state = self.lock();
        // Gone from the set meanwhile: nothing to update.
        let Some(slot) = state.slots.iter_mut().find(|s| s.id == id) else {
            return;
        };
        slot.pending = slot.pending.saturating_sub(1);
        let sample = match end {
            End::Answered => {
                slot.counters.answered += 1;
                Sample::Reply(elapsed)
            }
            End::Failed => {
                slot.counters.failed += 1;
                Sample::AtLeast(elapsed)
            }
            End::Cancelled => {
                slot.counters.cancelled += 1;
                Sample::AtLeast(elapsed)
            }
        };
        slot.load.observe(now, sample);
    }
}

/// How an attempt ended, for the estimate and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Answered,
    Failed,
    Cancelled,
}

impl End {
    /// A reply, or a status the server chose (a caller error: it was up),
    /// is an answer; anything else is a failure.
    pub(crate) fn of(result: &Result<Reply, CallError>) -> Self {
        match result {
            Ok(_) => Self::Answered,
            Err(e) if e.cause == Cause::Status && CALLER_CODES.contains(&e.code) => Self::Answered,
            Err(_) => Self::Failed,
        }
    }
}

/// What a pick decided, taken out of the lock.
enum Pick<S> {
    Send {
        id: u64,
        service: S,
        admitted: Option<(BreakerHandle, crate::client::breaker::future::Report)>,
        transition: Option<crate::client::breaker::Transition>,
    },
    Refuse(BreakerHandle, crate::client::breaker::Rejected),
    NoEndpoint(CallError),
}

/// The balancing service. Cheap to clone: clones share one endpoint set.
pub struct Balance<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for Balance<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> fmt::Debug for Balance<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared.fmt(f)
    }
}

impl<S> Balance<S>
where
    S: Service<Call, Response = Reply, Error = CallError> + Clone + Send + 'static,
{
    /// An empty balancer. `breaker` (if any) is given to every endpoint;
    /// `seed` fixes the picks, the breakers' jitter and the health watches'
    /// backoff.
    pub fn new(
        config: BalanceConfig,
        breaker: Option<BreakerConfig>,
        seed: u64,
        events: EventSink,
    ) -> Self {
        let chooser = Chooser::new(
            config.policy,
            ChaCha8Rng::seed_from_u64(seed.rotate_left(29) ^ 0xba1a_4ce5),
        );
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    slots: Vec::new(),
                    chooser,
                    scratch: Vec::new(),
                    next_id: 0,
                    watches_due: false,
                }),
                watches_due: AtomicBool::new(false),
                config,
                breaker,
                seed,
                events,
                refresh: Mutex::new(None),
            }),
        }
    }

    /// Adds an endpoint named `name` sending through `service`, with its
    /// health watched over `health_channel` (if given and health checking
    /// is on). A name already in the set is left as it is, and nothing is
    /// added to a set of [`ENDPOINTS_MAX`]; returns whether it was added.
    pub fn insert(&self, name: &str, service: S, health_channel: Option<Channel>) -> bool {
        self.shared.insert(name, service, health_channel)
    }

    /// Keeps the set equal to what `resolver` says, asking it every
    /// `config.resolve_every` from a background task that ends with the
    /// balancer. Needs a tokio runtime.
    pub fn refresh_from(&self, resolver: Arc<dyn Resolve>, make: MakeEndpoint<S>) {
        let weak: Weak<Shared<S>> = Arc::downgrade(&self.shared);
        let every = self.shared.config.resolve_every;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let result = resolver.resolve().await;
                let Some(shared) = weak.upgrade() else { return };
                match result {
                    Ok(names) if !names.is_empty() => shared.update(&names, &make),
                    // As gRPC clients do: a failed or empty resolution keeps
                    // the endpoints that were working.
                    Ok(_) => tracing::warn!("resolver returned no endpoint; keeping the set"),
                    Err(e) => tracing::warn!(error = %e, "re-resolving failed; keeping the set"),
                }
            }
        });
        *self
            .shared
            .refresh
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(AbortOnDrop(task));
    }

    /// A handle to watch the set.
    pub fn handle(&self) -> BalanceHandle {
        BalanceHandle(Arc::clone(&self.shared) as Arc<dyn View>)
    }

    /// Books an attempt of `call` to `slot` (under the lock).
    fn sent(
        slot: &mut Slot<S>,
        call: &Call,
        admitted: Option<(BreakerHandle, crate::client::breaker::future::Report)>,
        transition: Option<crate::client::breaker::Transition>,
    ) -> Pick<S> {
        slot.pending += 1;
        slot.counters.attempts += 1;
        call.route.record(call.attempt, slot.id);
        Pick::Send {
            id: slot.id,
            service: slot.service.clone(),
            admitted,
            transition,
        }
    }

    /// Picks under the lock; see the module docs.
    fn pick(&self, call: &Call, now: Instant) -> Pick<S> {
        let scope = call.method().health_scope();
        let mut state = self.shared.lock();
        let State {
            slots,
            chooser,
            scratch,
            ..
        } = &mut *state;
        // One endpoint serving the method: its breaker decides alone, in
        // one lock (admit, or refuse as it always has), with nothing to
        // choose or estimate.
        if let [slot] = slots.as_mut_slice()
            && slot.health.get(scope).admits()
        {
            return match &slot.breaker {
                Some(b) => match b.try_admit(now) {
                    Ok((report, transition)) => {
                        Self::sent(slot, call, Some((b.clone(), report)), transition)
                    }
                    Err(rejected) => Pick::Refuse(b.clone(), rejected),
                },
                None => Self::sent(slot, call, None, None),
            };
        }
        scratch.clear();
        scratch.extend(slots.iter().map(|s| Candidate {
            available: s.health.get(scope).admits()
                && s.breaker.as_ref().is_none_or(|b| b.admits(now)),
            tried: call.route.contains(s.id),
            cost: s.load.cost(now, s.pending),
        }));
        while let Some(i) = chooser.choose(scratch) {
            let slot = &mut slots[i];
            let admission = match &slot.breaker {
                None => Ok(None),
                Some(b) => b.try_admit(now).map(|(r, t)| Some((b.clone(), r, t))),
            };
            match admission {
                Ok(admitted) => {
                    let (admitted, transition) = match admitted {
                        Some((b, r, t)) => (Some((b, r)), t),
                        None => (None, None),
                    };
                    return Self::sent(slot, call, admitted, transition);
                }
                // Its breaker tripped since `admits` (a call ending on
                // another thread): out of this pick, choose again.
                Err(_) => scratch[i].available = false,
            }
        }
        // Nothing available. Out by its breaker: the one due soonest
        // refuses it, as a lone endpoint's breaker would.
        let soonest = slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let b = s.breaker.as_ref()?;
                (!b.admits(now)).then(|| (b.snapshot().probe_in_ms, i))
            })
            .min_by_key(|(ms, _)| *ms);
        if let Some((_, i)) = soonest {
            let slot = &mut slots[i];
            if let Some(b) = &slot.breaker {
                return match b.try_admit(now) {
                    Err(rejected) => Pick::Refuse(b.clone(), rejected),
                    // Came due just now: it takes the call as its probe.
                    Ok((report, transition)) => {
                        Self::sent(slot, call, Some((b.clone(), report)), transition)
                    }
                };
            }
        }
        let not_serving = slots
            .iter()
            .filter(|s| s.health.get(scope) == Serving::NotServing)
            .count();
        let message = if slots.is_empty() {
            "no endpoint to send to: the target resolved to none".to_owned()
        } else {
            format!(
                "no endpoint serves {}: {not_serving} of {} report {scope} NOT_SERVING",
                call.method(),
                slots.len()
            )
        };
        Pick::NoEndpoint(CallError {
            code: Code::Unavailable,
            message,
            cause: Cause::NoEndpoint,
            outcome: Outcome::NotApplied,
            attempts: 0,
            pushback_ms: None,
        })
    }
}

impl<S> Service<Call> for Balance<S>
where
    S: Service<Call, Response = Reply, Error = CallError> + Clone + Send + 'static,
{
    type Response = Reply;
    type Error = CallError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        // The pick needs the call (its method, its route), so it happens in
        // `call`; endpoint services are always ready (the transport buffers
        // in tonic), and a refusal is an answer, not back-pressure.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        self.shared.start_watches();
        let now = Instant::now();
        match self.pick(&call, now) {
            Pick::Send {
                id,
                mut service,
                admitted,
                transition,
            } => {
                let guard = future::Guard::new(Arc::clone(&self.shared), id, now);
                match admitted {
                    Some((breaker, report)) => {
                        breaker.announce(transition);
                        ResponseFuture::guarded(service.call(call), report, guard)
                    }
                    None => ResponseFuture::plain(service.call(call), guard),
                }
            }
            Pick::Refuse(breaker, rejected) => {
                ResponseFuture::failed(breaker.refuse(call.id, rejected))
            }
            Pick::NoEndpoint(error) => ResponseFuture::failed(error),
        }
    }
}

/// What [`BalanceHandle`] reads, whatever the endpoints' service type.
trait View: Send + Sync + fmt::Debug {
    fn snapshot(&self) -> Vec<EndpointSnapshot>;
    fn breakers(&self) -> Vec<(String, BreakerHandle)>;
}

impl<S: Send> View for Shared<S> {
    fn snapshot(&self) -> Vec<EndpointSnapshot> {
        Shared::snapshot(self)
    }

    fn breakers(&self) -> Vec<(String, BreakerHandle)> {
        Shared::breakers(self)
    }
}

/// Reads a balancer's endpoints: for the CLI, the benchmark, the demo and
/// tests.
#[derive(Debug, Clone)]
pub struct BalanceHandle(Arc<dyn View>);

impl BalanceHandle {
    /// Every endpoint now, in the order they joined the set.
    pub fn endpoints(&self) -> Vec<EndpointSnapshot> {
        self.0.snapshot()
    }

    /// Every endpoint's breaker, by name.
    pub fn breakers(&self) -> Vec<(String, BreakerHandle)> {
        self.0.breakers()
    }

    /// The breaker of the endpoint named `name`.
    pub fn breaker(&self, name: &str) -> Option<BreakerHandle> {
        self.breakers()
            .into_iter()
            .find_map(|(n, b)| (n == name).then_some(b))
    }
}

#[cfg(test)]
mod tests;
