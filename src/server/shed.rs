//! Server-side load shedding: past `in_flight_max` concurrent calls, answer
//! at once with RESOURCE_EXHAUSTED and a `grpc-retry-pushback-ms` trailer,
//! instead of queueing work whose callers will have given up by the time it
//! runs. A fast "no" keeps the latency of admitted calls low and tells
//! well-behaved clients (gRPC retry pushback) how long to back off.
//!
//! # Why not tower's `ConcurrencyLimit` + `LoadShed` (tonic's `load_shed`)
//!
//! They decide in `poll_ready`, before the request exists, and refuse with
//! an `Overloaded` *error* that tonic turns into a bare
//! `RESOURCE_EXHAUSTED "Too many active requests for the connection"`. That
//! cannot give us what we need:
//! - health checks and reflection must never be shed (an orchestrator that
//!   sees a busy server as dead restarts it, which makes overload worse), and
//!   only the request's path says which service a call is for;
//! - the refusal must be [`ServiceError::Overloaded`]'s status: pushback
//!   trailer and the not-applied marker, so clients know the request was
//!   never applied and when to come back;
//! - the shed must be an [`Event::Shed`] naming the method;
//! - tonic's `concurrency_limit_per_connection` is per connection, while
//!   overload is a property of the whole server.
//!
//! So this is a small layer over `http::Request` → `http::Response` that
//! decides in `call`, with one atomic counter shared by every clone.
//!
//! # Queueing delay
//!
//! The cap counts calls inside handlers, which never fills while the CPU
//! is the bottleneck: calls then wait *before* their handlers. With a
//! queueing-delay target ([`ShedLayer::with_queue_delay`]), a probe
//! ([`ShedLayer::start_probe`]) measures how long a task waits for a
//! thread, and [`QueueDelay`] decides what share of arrivals to admit; the
//! rest are refused like over-cap calls ([`ServiceError::Saturated`]).
//! Measured by a probe rather than per call: a call's own wait before its
//! handler stays small even when calls take 70 ms end to end. The probe
//! does not see that wait either (docs/operations.md): this shedding is
//! opt-in.
//!
//! The decision itself, [`ShedLayer::try_admit`], knows no protocol: the
//! REST twin's middleware calls it on the same layer (held by the shared
//! [`crate::server::Calculator`]), so both fronts count against one limit
//! and a REST caller is refused with 429 + `Retry-After` where a gRPC
//! caller gets RESOURCE_EXHAUSTED + pushback.
//!
//! # What is counted
//!
//! A call holds its slot until its response future completes or is dropped
//! (an RAII guard). For unary RPCs — all of `abacus.v1.Calculator` — tonic's
//! response future completes only after the handler returned, so the count
//! covers the whole handling. A streaming RPC's body would outlive it;
//! counting those would need the guard moved into the response body.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tonic::{
    Status,
    codegen::http::{Request, Response},
};
use tower::{Layer, Service};

use super::{queue_delay::QueueDelay, tally::Tally};
use crate::{
    error::ServiceError,
    rpc::Method,
    trace::{Event, EventSink},
};

/// Path prefixes that are never shed (nor counted): health checking and
/// reflection must answer however busy the calculator is.
pub const EXEMPT_PATH_PREFIXES: [&str; 2] = ["/grpc.health.v1.Health/", "/grpc.reflection."];

/// A load-shedding layer allowing `in_flight_max` concurrent calls and
/// asking refused clients to wait `pushback_ms`.
///
/// # Panics
///
/// If `in_flight_max` is 0 (every call would be refused).
pub fn shed_layer(in_flight_max: usize, pushback_ms: u64, events: EventSink) -> ShedLayer {
    ShedLayer::new(in_flight_max, pushback_ms, events)
}

/// Sheds calls beyond a concurrency limit. Every service it builds shares
/// one counter: the limit is for the whole server.
#[derive(Debug, Clone)]
pub struct ShedLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    in_flight_max: usize,
    pushback_ms: u64,
    events: EventSink,
    /// Calls holding a slot. An atomic rather than a mutex: admission is a
    /// single compare-and-swap, and the guard releases it from `Drop`.
    in_flight: AtomicUsize,
    /// Calls refused so far.
    shed: AtomicU64,
    /// Refusals for the rate-limited summary line (one per interval, with
    /// the count, instead of a line per refusal). A std mutex: held for a
    /// counter update, never across I/O.
    summary: Mutex<Tally>,
    /// Shedding on queueing delay, if on. A std mutex, held for a few
    /// arithmetic operations per call.
    queue_delay: Option<Mutex<QueueDelay>>,
    /// The probe feeding `queue_delay` is running.
    probing: AtomicBool,
}

/// CoDel's interval: how long the queueing delay must stay high before
/// shedding tightens, and the pace at which it relaxes.
pub const QUEUE_DELAY_INTERVAL: Duration = Duration::from_millis(100);

/// How often the probe measures the run-queue delay.
pub const PROBE_PERIOD: Duration = Duration::from_millis(5);

impl ShedLayer {
    /// See [`shed_layer`].
    ///
    /// # Panics
    ///
    /// If `in_flight_max` is 0.
    pub fn new(in_flight_max: usize, pushback_ms: u64, events: EventSink) -> Self {
        Self::with_queue_delay(in_flight_max, pushback_ms, None, events)
    }

    /// [`ShedLayer::new`], also shedding on queueing delay when
    /// `queue_delay_target` is set: see [`QueueDelay`].
    ///
    /// # Panics
    ///
    /// If `in_flight_max` is 0.
    pub fn with_queue_delay(
        in_flight_max: usize,
        pushback_ms: u64,
        queue_delay_target: Option<Duration>,
        events: EventSink,
    ) -> Self {
        assert!(
            in_flight_max > 0,
            "in_flight_max must be at least 1: a limit of 0 would refuse every call"
        );
        Self {
            shared: Arc::new(Shared {
                in_flight_max,
                pushback_ms,
                events,
                in_flight: AtomicUsize::new(0),
                shed: AtomicU64::new(0),
                summary: Mutex::default(),
                queue_delay: queue_delay_target
                    .map(|target| Mutex::new(QueueDelay::new(target, QUEUE_DELAY_INTERVAL))),
                probing: AtomicBool::new(false),
            }),
        }
    }

    /// Calls holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// Calls shed so far.
    pub fn shed(&self) -> u64 {
        self.shared.shed.load(Ordering::Relaxed)
    }

    /// Admits one call of `method`, or refuses it with
    /// [`ServiceError::Overloaded`] (counted, and reported as
    /// [`Event::Shed`]). The slot is held until the returned permit is
    /// dropped. This is the decision itself, free of any protocol: the
    /// tonic layer below and the REST front both call it, so the two
    /// fronts share one limit.
    pub fn try_admit(&self, method: Option<Method>) -> Result<Permit, ServiceError> {
        admit(&self.shared, method)
    }

    /// Starts measuring the queueing delay, when shedding on it is on
    /// (once per layer; later calls do nothing). A task sleeps for
    /// [`PROBE_PERIOD`], yields — which puts it at the back of its
    /// worker's run queue — and times how late it runs compared with its
    /// timer: the wait every task woken by the runtime's drivers sees,
    /// connection tasks and handlers alike. It stops once the layer is
    /// dropped.
    pub fn start_probe(&self) {
        if self.shared.queue_delay.is_none() || self.shared.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            loop {
                let due = Instant::now() + PROBE_PERIOD;
                tokio::time::sleep_until(due).await;
                tokio::task::yield_now().await;
                let Some(shared) = shared.upgrade() else {
                    break;
                };
                if let Some(queue_delay) = &shared.queue_delay {
                    let now = Instant::now();
                    lock(queue_delay).record(now, now.saturating_duration_since(due));
                }
            }
        });
    }

    /// One arrival in how many is admitted now (1: all, or shedding on
    /// queueing delay is off).
    pub fn admit_one_in(&self) -> u32 {
        self.shared
            .queue_delay
            .as_ref()
            .map_or(1, |q| lock(q).admit_one_in(Instant::now()))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters only: a panic elsewhere cannot leave them half-updated.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn admit(shared: &Arc<Shared>, method: Option<Method>) -> Result<Permit, ServiceError> {
    if let Some(queue_delay) = &shared.queue_delay {
        let mut queue_delay = lock(queue_delay);
        if !queue_delay.admit(Instant::now()) {
            let target_ms = u64::try_from(queue_delay.target().as_millis()).unwrap_or(u64::MAX);
            drop(queue_delay);
            return Err(refuse(
                shared,
                method,
                ServiceError::Saturated {
                    target_ms,
                    pushback_ms: shared.pushback_ms,
                },
            ));
        }
    }
    match InFlight::enter(shared) {
        Ok(guard) => Ok(Permit { _guard: guard }),
        Err(in_flight) => Err(refuse(
            shared,
            method,
            ServiceError::Overloaded {
                in_flight,
                limit: shared.in_flight_max,
                pushback_ms: shared.pushback_ms,
            },
        )),
    }
}

/// Counts, reports and returns a refusal.
fn refuse(shared: &Shared, method: Option<Method>, refusal: ServiceError) -> ServiceError {
    shared.shed.fetch_add(1, Ordering::Relaxed);
    shared.events.emit(Event::Shed { method });
    let report = lock(&shared.summary).record(Instant::now());
    if let Some(report) = report {
        tracing::info!(
            shed = %report,
            in_flight_max = shared.in_flight_max,
            "shedding load: calls refused with RESOURCE_EXHAUSTED ({refusal})"
        );
    }
    refusal
}

/// One admitted call's slot in a [`ShedLayer`]; released when dropped.
#[derive(Debug)]
pub struct Permit {
    _guard: InFlight,
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A service behind the load shedder. Built by [`ShedLayer`].
#[derive(Debug, Clone)]
pub struct Shed<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Shed<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        // The decision needs the path, so it is taken in `call`. tonic's
        // router is always ready, so this never queues anything.
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let path = req.uri().path();
        if EXEMPT_PATH_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return ResponseFuture::called(self.inner.call(req), None);
        }
        // A path that names none of our RPCs is counted all the same (tonic
        // answers it UNIMPLEMENTED, which is work too) and reported as such.
        match admit(&self.shared, Method::from_path(path)) {
            Ok(permit) => ResponseFuture::called(self.inner.call(req), Some(permit)),
            Err(overloaded) => ResponseFuture::shed(Status::from(overloaded).into_http()),
        }
    }
}

/// One call's slot; released when dropped.
#[derive(Debug)]
struct InFlight {
    shared: Arc<Shared>,
}

impl InFlight {
    /// Takes a slot, or returns how many calls hold one.
    fn enter(shared: &Arc<Shared>) -> Result<Self, usize> {
        shared
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < shared.in_flight_max).then_some(n + 1)
            })
            .map(|_| Self {
                shared: Arc::clone(shared),
            })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    /// Response future of [`Shed`]: the inner call holding its slot, or
    /// the ready overload answer.
    #[derive(Debug)]
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, B> {
        Called {
            #[pin]
            future: F,
            // Dropped when the call completes, or with the future if the
            // connection goes away first.
            guard: Option<Permit>,
        },
        Shed {
            // `None` once returned.
            response: Option<Response<B>>,
        },
    }
}

impl<F, B> ResponseFuture<F, B> {
    fn called(future: F, guard: Option<Permit>) -> Self {
        Self {
            kind: Kind::Called { future, guard },
        }
    }

    fn shed(response: Response<B>) -> Self {
        Self {
            kind: Kind::Shed {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future, guard } => {
                let output = ready!(future.poll(cx));
                // Free the slot now, not whenever the server drops the future.
                drop(guard.take());
                Poll::Ready(output)
            }
            KindProj::Shed { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, sync::Mutex, time::Duration};

    use tokio::sync::{Notify, Semaphore};
    use tonic::{Code, body::Body};
    use tower::ServiceExt;

    use super::*;
    use crate::error::{NOT_APPLIED_KEY, PUSHBACK_KEY};

    type Events = Arc<Mutex<Vec<String>>>;

    fn sink() -> (EventSink, Events) {
        let events = Events::default();
        let e = Arc::clone(&events);
        let sink = EventSink::with_hook(move |ev| e.lock().unwrap().push(ev.to_string()));
        (sink, events)
    }

    /// An inner service whose every call waits until `release` has
    /// permits. A semaphore rather than a `Notify`: releasing before a
    /// call starts waiting must not be lost.
    fn blocking(
        release: Arc<Semaphore>,
    ) -> impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send + use<>,
    > + Clone
    + use<> {
        tower::service_fn(move |_req: Request<Body>| {
            let release = Arc::clone(&release);
            async move {
                let _ = release.acquire().await;
                Ok::<_, Infallible>(Response::new(Body::default()))
            }
        })
    }

    fn request(path: &str) -> Request<Body> {
        Request::builder()
            .uri(format!("http://abacus{path}"))
            .body(Body::default())
            .unwrap()
    }

    /// Calls `svc` with a request for `path`. The layer decides in `call`,
    /// so the slot is taken (or the call shed) when this returns, before
    /// the returned future is ever polled: no scheduling to wait for.
    async fn start<S>(svc: &S, path: &str) -> S::Future
    where
        S: Service<Request<Body>> + Clone,
        S::Error: std::fmt::Debug,
    {
        let mut svc = svc.clone();
        svc.ready().await.unwrap().call(request(path))
    }

    #[tokio::test]
    async fn sheds_beyond_the_limit_with_pushback_and_frees_slots() {
        let release = Arc::new(Semaphore::new(0));
        let (events, seen) = sink();
        let layer = shed_layer(2, 50, events);
        let svc = layer.layer(blocking(Arc::clone(&release)));

        let first = start(&svc, "/abacus.v1.Calculator/Add").await;
        let second = start(&svc, "/abacus.v1.Calculator/Divide").await;
        assert_eq!(layer.in_flight(), 2);

        let refused = start(&svc, "/abacus.v1.Calculator/Accumulate")
            .await
            .await
            .unwrap();
        let status = Status::from_header_map(refused.headers()).expect("a trailers-only status");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("2 requests in flight (limit 2)"),
            "{}",
            status.message()
        );
        assert_eq!(refused.headers()[PUSHBACK_KEY], "50");
        assert_eq!(refused.headers()[NOT_APPLIED_KEY], "true");
        assert_eq!(*seen.lock().unwrap(), ["shed Accumulate"]);
        assert_eq!((layer.in_flight(), layer.shed()), (2, 1));

        // Dropping an unfinished call (its client went away) frees a slot...
        drop(second);
        assert_eq!(layer.in_flight(), 1);
        // ...and so does completion.
        release.add_permits(1);
        first.await.unwrap();
        assert_eq!(layer.in_flight(), 0);
    }

    #[tokio::test]
    async fn health_and_reflection_are_never_shed_nor_counted() {
        let release = Arc::new(Semaphore::new(0));
        let layer = shed_layer(1, 50, EventSink::log_only());
        let svc = layer.layer(blocking(Arc::clone(&release)));
        let busy = start(&svc, "/abacus.v1.Calculator/Add").await;
        assert_eq!(layer.in_flight(), 1);

        let mut exempt = Vec::new();
        for path in [
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            exempt.push(start(&svc, path).await);
        }
        assert_eq!((layer.in_flight(), layer.shed()), (1, 0));
        release.add_permits(4);
        for call in exempt {
            let response = call.await.unwrap();
            assert!(response.headers().get("grpc-status").is_none(), "not shed");
        }
        busy.await.unwrap();
        assert_eq!(layer.in_flight(), 0);
    }

    /// The real stack: a tonic server with the layer, a client over TCP. The
    /// refusal must reach the client as RESOURCE_EXHAUSTED, not applied,
    /// with the server's pushback.
    #[tokio::test]
    async fn a_tonic_client_sees_the_pushback() {
        use tokio_stream::wrappers::TcpListenerStream;

        use crate::{
            client::{Call, Request, Transport, tcp_channel},
            core::BinaryOp,
            pb::calculator_server::CalculatorServer,
            server::{FaultConfig, FaultSwitch, Faults, GrpcCalculator},
            store::MemoryLedger,
            trace::Outcome,
        };

        // The slow call announces that it is inside its handler (holding
        // its slot) through the event its fault delay emits.
        let inside = Arc::new(Notify::new());
        let signal = Arc::clone(&inside);
        let events = EventSink::with_hook(move |event| {
            if matches!(event, Event::FaultInjected { .. }) {
                signal.notify_one();
            }
        });
        let faults = FaultConfig {
            // Long enough that the first call is surely still in flight when
            // the second arrives, however slow the machine; the test never
            // waits for it (it is aborted below).
            delay_ms: 60_000..=60_000,
            ..FaultConfig::default()
        };
        let calculator = GrpcCalculator::new(
            Arc::new(MemoryLedger::new(Default::default(), events.clone())),
            Arc::new(Faults::new(faults, FaultSwitch::default())),
            events.clone(),
        );
        let layer = shed_layer(1, 75, events);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(layer.clone())
                .add_service(CalculatorServer::new(calculator))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );

        let transport = Transport::new(tcp_channel(&addr.to_string()).unwrap());
        let add = || {
            let request = Request::Binary {
                op: BinaryOp::Add,
                a: 1.0,
                b: 2.0,
            };
            transport.clone().oneshot(Call::new(1, request))
        };
        let slow = tokio::spawn(add());
        // An upper bound on the wait, not a synchronisation.
        tokio::time::timeout(Duration::from_secs(30), inside.notified())
            .await
            .expect("the first call reaches its handler");
        assert_eq!(layer.in_flight(), 1);
        let err = add().await.unwrap_err();
        assert_eq!(err.code, Code::ResourceExhausted);
        assert_eq!(err.outcome, Outcome::NotApplied);
        assert_eq!(err.pushback_ms, Some(75));
        slow.abort();
        server.abort();
    }
}
