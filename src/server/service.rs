//! The transport-neutral calculator service: what a request *means* once a
//! front end has decoded it, shared by the gRPC adapter ([`crate::server::grpc`])
//! and the REST adapter ([`crate::server::rest`]).
//!
//! Both fronts used to need the same sequence — draw the fault plan, honour
//! the caller's deadline, claim the request ID, apply, commit, maybe drop
//! the response — and two copies of it would drift. Here it is written once
//! over plain Rust types (`f64`, [`AccumulateArgs`], `Option<Instant>`), so
//! an adapter only decodes, calls one method and encodes the answer.
//!
//! Calculator *rules* are not here either: they live in [`crate::core`]
//! (arithmetic) and the [`Ledger`] (registers and dedup). This module only
//! sequences them with the fault plan.

use std::{borrow::Cow, sync::Arc};

use tokio::time::Instant;

use crate::{
    core::{self, BinaryOp},
    error::ServiceError,
    rpc::Method,
    server::{
        Edge, ServerConfig,
        faults::{FaultPlan, Faults},
        metrics::MeteredLedger,
        shed::ShedLayer,
    },
    store::{AccumulateArgs, Accumulated, Begin, Ledger, StatsView, WriteFate},
    trace::{Event, EventSink, InjectedFault, Probe},
};

/// An `Accumulate` refused: the error, and whether it is a recorded outcome
/// replayed from the dedup store (adapters then mark it replayed too).
#[derive(Debug, Clone, PartialEq)]
pub struct AccumulateError {
    /// What went wrong.
    pub error: ServiceError,
    /// True when the error is the first execution's recorded outcome,
    /// answered again. Never true for a fault's error: a dropped response
    /// must look like a lost connection, nothing more.
    pub replayed: bool,
}

impl From<ServiceError> for AccumulateError {
    fn from(error: ServiceError) -> Self {
        Self {
            error,
            replayed: false,
        }
    }
}

/// The calculator service over a shared [`Ledger`] and [`Faults`]. Cheap
/// to clone (every field is shared), so each front holds its own handle.
#[derive(Debug, Clone)]
pub struct Calculator {
    ledger: Arc<dyn Ledger>,
    faults: Arc<Faults>,
    events: EventSink,
    require_request_id: bool,
    /// The one in-flight limit of the whole process. Both fronts admit
    /// calls through it, because overload is a property of the server, not
    /// of the protocol a caller happens to speak.
    shed: ShedLayer,
    /// TLS, tokens and metrics, the same on both fronts.
    edge: Edge,
}

impl Calculator {
    /// A service over a shared ledger and faults, with the default in-flight
    /// limit ([`crate::server::IN_FLIGHT_MAX_DEFAULT`], 100 ms pushback).
    pub fn new(ledger: Arc<dyn Ledger>, faults: Arc<Faults>, events: EventSink) -> Self {
        let defaults = ServerConfig::default();
        let shed = ShedLayer::new(
            defaults.in_flight_max,
            defaults.shed_pushback_ms,
            events.clone(),
        );
        Self {
            ledger,
            faults,
            events,
            require_request_id: false,
            shed,
            edge: Edge::default(),
        }
    }

    /// The service `config` describes over `ledger`: its faults, its
    /// in-flight limit and whether request IDs are required
    /// (`config.dedup` is not used: the ledger brings its own).
    pub fn from_config(config: &ServerConfig, ledger: Arc<dyn Ledger>) -> Self {
        let faults = Arc::new(Faults::new(
            config.faults.clone(),
            config.fault_switch.clone(),
        ));
        let shed = ShedLayer::with_queue_delay(
            config.in_flight_max.max(1),
            config.shed_pushback_ms,
            config
                .shed_queue_delay_ms
                .map(std::time::Duration::from_millis),
            config.events.clone(),
        );
        Self {
            ledger,
            faults,
            events: config.events.clone(),
            require_request_id: config.require_request_id,
            shed,
            edge: Edge::default(),
        }
        .with_edge(config.edge.clone())
    }

    /// Serves both fronts with `edge`'s TLS, tokens and metrics. With
    /// metrics, the ledger is timed ([`MeteredLedger`]) and watched, and
    /// the authenticator's refusals counted.
    pub fn with_edge(mut self, edge: Edge) -> Self {
        if let Some(metrics) = &edge.metrics {
            self.ledger = Arc::new(MeteredLedger::new(
                Arc::clone(&self.ledger),
                metrics.clone(),
            ));
            metrics.watch_ledger(Arc::clone(&self.ledger));
            if let Some(auth) = &edge.auth {
                metrics.watch_auth(Arc::clone(auth));
            }
        }
        self.edge = edge;
        self
    }

    /// TLS, tokens and metrics of both fronts.
    pub fn edge(&self) -> &Edge {
        &self.edge
    }

    /// Refuses `Accumulate` without a request ID (`--require-request-id`)
    /// instead of applying it undeduplicated.
    pub fn with_require_request_id(mut self, required: bool) -> Self {
        self.require_request_id = required;
        self
    }

    /// The shared ledger (registers and dedup records).
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// Where events go.
    pub fn events(&self) -> &EventSink {
        &self.events
    }

    /// The load shedder both fronts admit calls through (clones share one
    /// counter).
    pub fn shed(&self) -> &ShedLayer {
        &self.shed
    }

    /// `Add`, `Subtract`, `Multiply` or `Divide`: the fault plan (delay
    /// bounded by `deadline`, fail-before-apply), the arithmetic, then the
    /// drop-after-apply fault.
    pub async fn binary(
        &self,
        op: BinaryOp,
        a: f64,
        b: f64,
        deadline: Option<Instant>,
    ) -> Result<f64, ServiceError> {
        let method = Method::from(op);
        let plan = self
            .before_apply(method, self.faults.plan(), deadline)
            .await?;
        let result = core::evaluate(op, a, b);
        // Built only if someone listens: formatting a number on every call
        // of a quiet server is pure overhead on the hot path of both fronts.
        self.events.emit_with(|| Event::Evaluated {
            method,
            result: result.clone(),
        });
        let result = result?;
        self.after_apply(method, plan)?;
        Ok(result)
    }

    /// `Accumulate`: claims the request ID ([`Ledger::begin`]: replay, join
    /// an execution in flight, or execute), runs the fault plan while the
    /// claim is held, commits, then maybe drops the response.
    ///
    /// The deadline bounds every wait (the fault delay and the join). The
    /// ledger's commit is atomic whether or not its future is polled to the
    /// end, and nothing awaits after it, so a caller that gives up — or a
    /// front that drops this future — either committed entirely or not at
    /// all.
    pub async fn accumulate(
        &self,
        args: &AccumulateArgs,
        deadline: Option<Instant>,
    ) -> Result<Accumulated, AccumulateError> {
        const METHOD: Method = Method::Accumulate;
        // One plan per request, drawn on arrival whatever happens next, so
        // a seed fixes the plans of the request sequence. Faults model the
        // server and the network, which do not know whether an answer comes
        // from the dedup store: replays get them too.
        let plan = self.faults.plan();
        // Set when the error answered is a recorded one, replayed.
        let mut replayed_error = false;
        // The name as the store keys it (NFC); a copy of the arguments only
        // when the caller's spelling differs.
        let normal = core::register_name(&args.register).map(|name| match name {
            Cow::Borrowed(_) => None,
            Cow::Owned(register) => Some(AccumulateArgs {
                register,
                ..args.clone()
            }),
        });
        let result = async {
            let args = match &normal {
                Ok(Some(normal)) => normal,
                Ok(None) => args,
                Err(e) => return Err(ServiceError::from(e.clone())),
            };
            if self.require_request_id && args.request_id.is_empty() {
                return Err(ServiceError::RequestIdRequired);
            }
            // Claim first, so the fault delay below runs while the claim is
            // held: a duplicate arriving during it joins this execution.
            let begin = self.ledger.begin(args, deadline).await?;
            // On error the claim (if any) is dropped here, uncommitted:
            // released without a record, so a retry executes.
            let plan = self.before_apply(METHOD, plan, deadline).await?;
            let done = match begin {
                Begin::Replay(result) => result.inspect_err(|_| replayed_error = true)?,
                Begin::Execute(claim) => claim.commit().await?,
            };
            // Committed: a drop here loses only the response, and a retry
            // with the same ID replays it.
            self.after_apply(METHOD, plan)?;
            Ok::<_, ServiceError>(done)
        }
        .await;
        result.map_err(|error| {
            if error.known_not_applied() {
                self.events.emit(Event::Rejected {
                    method: METHOD,
                    request_id: args.request_id.clone(),
                    error: error.clone(),
                });
            } else if let Some(probe) = match error {
                ServiceError::StoreUnavailable {
                    fate: WriteFate::Unknown,
                } => Some(Probe::StoreFateUnknown),
                ServiceError::StillInFlight { .. } => Some(Probe::StillInFlight),
                _ => None,
            } {
                self.events.emit(Event::Probe(probe));
            }
            AccumulateError {
                error,
                replayed: replayed_error,
            }
        })
    }

    /// Reads a register (`NotFound` if it was never written). The name is
    /// normalised as `Accumulate`'s is.
    pub async fn get(
        &self,
        register: &str,
        deadline: Option<Instant>,
    ) -> Result<f64, ServiceError> {
        let register = core::register_name(register)?;
        self.ledger.get(&register, deadline).await
    }

    /// `DeleteRegister`: removes a register (the name normalised as
    /// everywhere); its last value, or `None` when it did not exist.
    pub async fn delete(
        &self,
        register: &str,
        deadline: Option<Instant>,
    ) -> Result<Option<f64>, ServiceError> {
        let register = core::register_name(register)?;
        self.ledger.delete(&register, deadline).await
    }

    /// The ledger's counters.
    pub async fn stats(&self) -> Result<StatsView, ServiceError> {
        self.ledger.stats().await
    }

    /// Runs the pre-apply part of the fault plan: the delay (never waiting
    /// past the caller's deadline) and the fail-before-apply fault.
    async fn before_apply(
        &self,
        method: Method,
        plan: FaultPlan,
        deadline: Option<Instant>,
    ) -> Result<FaultPlan, ServiceError> {
        if !plan.delay.is_zero() {
            self.events.emit(Event::FaultInjected {
                method,
                fault: InjectedFault::Delay {
                    ms: plan.delay.as_millis() as u64,
                },
            });
            let wake = Instant::now() + plan.delay;
            match deadline {
                Some(d) if d <= wake => {
                    tokio::time::sleep_until(d).await;
                    return Err(self.expired(method));
                }
                _ => tokio::time::sleep_until(wake).await,
            }
        }
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(self.expired(method));
        }
        if plan.fail {
            self.events.emit(Event::FaultInjected {
                method,
                fault: InjectedFault::Fail,
            });
            return Err(ServiceError::InjectedUnavailable);
        }
        Ok(plan)
    }

    fn expired(&self, method: Method) -> ServiceError {
        self.events.emit(Event::ServerDeadlineExpired { method });
        ServiceError::DeadlineExceeded
    }

    fn after_apply(&self, method: Method, plan: FaultPlan) -> Result<(), ServiceError> {
        if plan.drop_after_apply {
            self.events.emit(Event::FaultInjected {
                method,
                fault: InjectedFault::DropAfterApply,
            });
            return Err(ServiceError::ResponseDropped);
        }
        Ok(())
    }
}
