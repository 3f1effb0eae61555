//! The tonic adapter: decodes requests, applies the fault plan and the
//! caller's deadline, calls the core and the state, encodes the answer.
//! No calculator rule lives here, and no dedup rule either: `Accumulate`
//! only sequences [`State::begin`], the fault plan and [`Claim::commit`].
//!
//! [`Claim::commit`]: crate::server::state::Claim::commit

use std::{future::Future, sync::Arc};

use tokio::time::Instant;
use tonic::{Request, Response, Status, metadata::MetadataValue};

use crate::{
    core::{self, BinaryOp},
    error::ServiceError,
    pb::{self, calculator_server::Calculator},
    server::{
        deadline::deadline_from,
        dedup::REPLAYED_KEY,
        faults::{FaultPlan, Faults},
        state::{AccumulateArgs, Begin, State},
    },
    trace::{Event, EventSink},
};

/// Implements `abacus.v1.Calculator` over [`State`].
#[derive(Debug, Clone)]
pub struct GrpcCalculator {
    state: Arc<State>,
    faults: Arc<Faults>,
    events: EventSink,
    require_request_id: bool,
}

impl GrpcCalculator {
    /// An adapter over shared state and faults.
    pub fn new(state: Arc<State>, faults: Arc<Faults>, events: EventSink) -> Self {
        Self {
            state,
            faults,
            events,
            require_request_id: false,
        }
    }

    /// Refuses `Accumulate` without a request ID (`--require-request-id`)
    /// instead of applying it undeduplicated.
    pub fn with_require_request_id(mut self, required: bool) -> Self {
        self.require_request_id = required;
        self
    }

    /// Runs the pre-apply part of the fault plan: the delay (never waiting
    /// past the caller's deadline) and the fail-before-apply fault.
    async fn before_apply(
        &self,
        method: &'static str,
        plan: FaultPlan,
        deadline: Option<Instant>,
    ) -> Result<FaultPlan, ServiceError> {
        if !plan.delay.is_zero() {
            self.events.emit(Event::FaultInjected {
                method,
                fault: format!("delay {}ms", plan.delay.as_millis()),
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
                fault: "fail".into(),
            });
            return Err(ServiceError::InjectedUnavailable);
        }
        Ok(plan)
    }

    fn expired(&self, method: &'static str) -> ServiceError {
        self.events.emit(Event::ServerDeadlineExpired { method });
        ServiceError::DeadlineExceeded
    }

    fn after_apply(&self, method: &'static str, plan: FaultPlan) -> Result<(), ServiceError> {
        if plan.drop_after_apply {
            self.events.emit(Event::FaultInjected {
                method,
                fault: "drop-after-apply".into(),
            });
            return Err(ServiceError::ResponseDropped);
        }
        Ok(())
    }

    async fn binary(
        &self,
        op: BinaryOp,
        method: &'static str,
        req: Request<pb::BinaryRequest>,
    ) -> Result<Response<pb::CalcResponse>, Status> {
        let deadline = deadline_from(req.metadata());
        let pb::BinaryRequest { a, b } = req.into_inner();
        let plan = self
            .before_apply(method, self.faults.plan(), deadline)
            .await?;
        let result = core::evaluate(op, a, b);
        self.events.emit(Event::Evaluated {
            method,
            result: match &result {
                Ok(v) => v.to_string(),
                Err(e) => e.to_string(),
            },
        });
        let result = result.map_err(ServiceError::from)?;
        self.after_apply(method, plan)?;
        Ok(Response::new(pb::CalcResponse { result }))
    }
}

/// Sets the replayed marker on a response or a status.
fn mark_replayed(metadata: &mut tonic::metadata::MetadataMap) {
    metadata.insert(REPLAYED_KEY, MetadataValue::from_static("true"));
}

/// Runs a handler body and turns its typed error into a `Status` in one
/// place.
async fn respond<T>(
    body: impl Future<Output = Result<T, ServiceError>>,
) -> Result<Response<T>, Status> {
    body.await.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl Calculator for GrpcCalculator {
    async fn add(
        &self,
        req: Request<pb::BinaryRequest>,
    ) -> Result<Response<pb::CalcResponse>, Status> {
        self.binary(BinaryOp::Add, "Add", req).await
    }

    async fn subtract(
        &self,
        req: Request<pb::BinaryRequest>,
    ) -> Result<Response<pb::CalcResponse>, Status> {
        self.binary(BinaryOp::Subtract, "Subtract", req).await
    }

    async fn multiply(
        &self,
        req: Request<pb::BinaryRequest>,
    ) -> Result<Response<pb::CalcResponse>, Status> {
        self.binary(BinaryOp::Multiply, "Multiply", req).await
    }

    async fn divide(
        &self,
        req: Request<pb::BinaryRequest>,
    ) -> Result<Response<pb::CalcResponse>, Status> {
        self.binary(BinaryOp::Divide, "Divide", req).await
    }

    async fn accumulate(
        &self,
        req: Request<pb::AccumulateRequest>,
    ) -> Result<Response<pb::AccumulateResponse>, Status> {
        const METHOD: &str = "Accumulate";
        let deadline = deadline_from(req.metadata());
        let pb::AccumulateRequest {
            register,
            delta,
            request_id,
        } = req.into_inner();
        let args = AccumulateArgs {
            register,
            delta,
            request_id,
        };
        // One plan per request, drawn on arrival whatever happens next, so
        // a seed fixes the plans of the request sequence. Faults model the
        // server and the network, which do not know whether an answer comes
        // from the dedup store: replays get them too.
        let plan = self.faults.plan();
        // Set when the error answered is a recorded one, replayed: it gets
        // the replayed marker too. (A fault's error never does: a dropped
        // response must look like a lost connection, nothing more.)
        let mut replayed_error = false;
        let result = async {
            if self.require_request_id && args.request_id.is_empty() {
                return Err(ServiceError::RequestIdRequired);
            }
            // Claim first, so the fault delay below runs while the claim is
            // held: a duplicate arriving during it joins this execution.
            let begin = self.state.begin(&args, deadline).await?;
            // On error the claim (if any) is dropped here, uncommitted:
            // released without a record, so a retry executes.
            let plan = self.before_apply(METHOD, plan, deadline).await?;
            let done = match begin {
                Begin::Replay(result) => result.inspect_err(|_| replayed_error = true)?,
                Begin::Execute(claim) => claim.commit()?,
            };
            // Committed: a drop here loses only the response, and a retry
            // with the same ID replays it.
            self.after_apply(METHOD, plan)?;
            Ok::<_, ServiceError>(done)
        }
        .await;
        match result {
            Ok(done) => {
                let mut response = Response::new(pb::AccumulateResponse {
                    value: done.value,
                    replayed: done.replayed,
                });
                if done.replayed {
                    mark_replayed(response.metadata_mut());
                }
                Ok(response)
            }
            Err(err) => {
                if err.known_not_applied() {
                    self.events.emit(Event::Rejected {
                        method: METHOD,
                        request_id: args.request_id.clone(),
                        reason: err.to_string(),
                    });
                }
                let mut status = Status::from(err);
                if replayed_error {
                    mark_replayed(status.metadata_mut());
                }
                Err(status)
            }
        }
    }

    async fn get_register(
        &self,
        req: Request<pb::GetRegisterRequest>,
    ) -> Result<Response<pb::RegisterValue>, Status> {
        let register = req.into_inner().register;
        respond(async {
            Ok(pb::RegisterValue {
                value: self.state.get(&register)?,
            })
        })
        .await
    }

    async fn get_stats(
        &self,
        _req: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::Stats>, Status> {
        let s = self.state.stats();
        respond(async {
            Ok(pb::Stats {
                dedup_entries: s.dedup_entries,
                dedup_hits: s.dedup_hits,
                dedup_evictions: s.dedup_evictions,
                dedup_mismatches: s.dedup_mismatches,
                applied: s.applied,
                registers: s.registers,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        error::NOT_APPLIED_KEY,
        server::{DedupConfig, FaultConfig},
    };

    fn calculator(state: &Arc<State>, faults: FaultConfig) -> GrpcCalculator {
        GrpcCalculator::new(
            Arc::clone(state),
            Arc::new(Faults::new(faults, crate::server::FaultSwitch::default())),
            EventSink::log_only(),
        )
    }

    fn request(register: &str, delta: f64, id: &str) -> Request<pb::AccumulateRequest> {
        Request::new(pb::AccumulateRequest {
            register: register.into(),
            delta,
            request_id: id.into(),
        })
    }

    #[tokio::test]
    async fn a_retry_after_a_dropped_response_is_replayed_with_the_header() {
        let state = Arc::new(State::new(DedupConfig::default(), EventSink::log_only()));
        let dropping = calculator(
            &state,
            FaultConfig {
                drop_after_apply_rate: 1.0,
                ..FaultConfig::default()
            },
        );
        let lost = dropping
            .accumulate(request("x", 4.0, "r1"))
            .await
            .unwrap_err();
        assert_eq!(lost.code(), tonic::Code::Unavailable);
        assert!(lost.metadata().get(NOT_APPLIED_KEY).is_none());
        assert_eq!(state.stats().applied, 1, "applied before the drop");
        // Faults hit replays too, and a dropped replay looks like any lost
        // connection: no replayed marker, no not-applied marker.
        let lost_again = dropping
            .accumulate(request("x", 4.0, "r1"))
            .await
            .unwrap_err();
        assert!(lost_again.metadata().get(REPLAYED_KEY).is_none());
        assert!(lost_again.metadata().get(NOT_APPLIED_KEY).is_none());
        assert_eq!(state.stats().applied, 1);

        let healthy = calculator(&state, FaultConfig::default());
        let retry = healthy.accumulate(request("x", 4.0, "r1")).await.unwrap();
        assert_eq!(retry.metadata().get(REPLAYED_KEY).unwrap(), "true");
        assert_eq!(
            retry.into_inner(),
            pb::AccumulateResponse {
                value: 4.0,
                replayed: true
            }
        );
        let fresh = healthy.accumulate(request("x", 1.0, "r2")).await.unwrap();
        assert!(fresh.metadata().get(REPLAYED_KEY).is_none());
        assert_eq!(state.get("x"), Ok(5.0));
    }

    #[tokio::test]
    async fn a_failure_before_apply_leaves_no_record() {
        let state = Arc::new(State::new(DedupConfig::default(), EventSink::log_only()));
        let failing = calculator(
            &state,
            FaultConfig {
                fail_rate: 1.0,
                ..FaultConfig::default()
            },
        );
        let refused = failing
            .accumulate(request("x", 4.0, "r1"))
            .await
            .unwrap_err();
        assert_eq!(refused.metadata().get(NOT_APPLIED_KEY).unwrap(), "true");
        assert_eq!(state.stats().dedup_in_flight, 0, "claim released");
        let healthy = calculator(&state, FaultConfig::default());
        let retry = healthy.accumulate(request("x", 4.0, "r1")).await.unwrap();
        assert!(!retry.get_ref().replayed, "executed, not replayed");
        assert_eq!(state.stats().applied, 1);
    }

    #[tokio::test]
    async fn replayed_errors_carry_the_header_and_ids_can_be_required() {
        let state = Arc::new(State::new(DedupConfig::default(), EventSink::log_only()));
        let calc = calculator(&state, FaultConfig::default()).with_require_request_id(true);
        let missing = calc.accumulate(request("x", 1.0, "")).await.unwrap_err();
        assert_eq!(missing.code(), tonic::Code::InvalidArgument);
        assert!(missing.message().contains("request_id is required"));

        calc.accumulate(request("x", f64::MAX, "a")).await.unwrap();
        let first = calc
            .accumulate(request("x", f64::MAX, "b"))
            .await
            .unwrap_err();
        assert!(first.metadata().get(REPLAYED_KEY).is_none());
        let again = calc
            .accumulate(request("x", f64::MAX, "b"))
            .await
            .unwrap_err();
        assert_eq!(again.code(), tonic::Code::InvalidArgument);
        assert_eq!(again.metadata().get(REPLAYED_KEY).unwrap(), "true");
        assert_eq!(again.message(), first.message());
    }
}
