//! The tonic adapter: decodes requests, applies the fault plan and the
//! caller's deadline, calls the core and the state, encodes the answer.
//! No calculator rule lives here.

use std::{future::Future, sync::Arc};

use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::{
    core::{self, BinaryOp},
    error::ServiceError,
    pb::{self, calculator_server::Calculator},
    server::{
        deadline::deadline_from,
        faults::{FaultPlan, Faults},
        state::{AccumulateArgs, State},
    },
    trace::{Event, EventSink},
};

/// Implements `abacus.v1.Calculator` over [`State`].
#[derive(Debug, Clone)]
pub struct GrpcCalculator {
    state: Arc<State>,
    faults: Arc<Faults>,
    events: EventSink,
}

impl GrpcCalculator {
    /// An adapter over shared state and faults.
    pub fn new(state: Arc<State>, faults: Arc<Faults>, events: EventSink) -> Self {
        Self {
            state,
            faults,
            events,
        }
    }

    /// Runs the pre-apply part of the fault plan: the delay (never waiting
    /// past the caller's deadline) and the fail-before-apply fault.
    async fn before_apply(
        &self,
        method: &'static str,
        deadline: Option<Instant>,
    ) -> Result<FaultPlan, ServiceError> {
        let plan = self.faults.plan();
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
        let plan = self.before_apply(method, deadline).await?;
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
        let result = async {
            let plan = self.before_apply(METHOD, deadline).await?;
            let done = self.state.accumulate(&args)?;
            self.after_apply(METHOD, plan)?;
            Ok::<_, ServiceError>(done)
        }
        .await;
        match result {
            Ok(done) => Ok(Response::new(pb::AccumulateResponse {
                value: done.value,
                replayed: done.replayed,
            })),
            Err(err) => {
                if err.known_not_applied() {
                    self.events.emit(Event::Rejected {
                        method: METHOD,
                        request_id: args.request_id.clone(),
                        reason: err.to_string(),
                    });
                }
                Err(err.into())
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
