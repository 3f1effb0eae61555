//! The tonic adapter: decodes requests, reads the caller's deadline from
//! `grpc-timeout`, calls the transport-neutral [`Calculator`] service and
//! encodes its answer (status, not-applied and replayed markers). No
//! calculator rule, dedup rule or fault handling lives here: those are in
//! [`crate::core`], [`crate::store::Ledger`] and [`crate::server::service`].

use std::sync::Arc;

use tonic::{Request, Response, Status, metadata::MetadataValue};

use crate::{
    core::BinaryOp,
    error::REPLAYED_KEY,
    pb::{self, calculator_server::Calculator as CalculatorRpc},
    server::{
        auth::Identity,
        deadline::deadline_from,
        faults::Faults,
        service::{AccumulateError, Calculator},
    },
    store::{AccumulateArgs, Caller, Ledger},
    trace::EventSink,
};

/// Implements `abacus.v1.Calculator` over a [`Calculator`] service.
#[derive(Debug, Clone)]
pub struct GrpcCalculator {
    service: Calculator,
}

impl GrpcCalculator {
    /// An adapter over a shared ledger and faults.
    pub fn new(ledger: Arc<dyn Ledger>, faults: Arc<Faults>, events: EventSink) -> Self {
        Self::from_service(Calculator::new(ledger, faults, events))
    }

    /// An adapter over a service another front may share.
    pub fn from_service(service: Calculator) -> Self {
        Self { service }
    }

    /// Refuses `Accumulate` without a request ID (`--require-request-id`)
    /// instead of applying it undeduplicated.
    pub fn with_require_request_id(mut self, required: bool) -> Self {
        self.service = self.service.with_require_request_id(required);
        self
    }

    async fn binary(
        &self,
        op: BinaryOp,
        req: Request<pb::BinaryRequest>,
    ) -> Result<Response<pb::CalcResponse>, Status> {
        let deadline = deadline_from(req.metadata());
        let pb::BinaryRequest { a, b } = req.into_inner();
        let result = self.service.binary(op, a, b, deadline).await?;
        Ok(Response::new(pb::CalcResponse { result }))
    }
}

/// Sets the replayed marker on a response or a status.
fn mark_replayed(metadata: &mut tonic::metadata::MetadataMap) {
    metadata.insert(REPLAYED_KEY, MetadataValue::from_static("true"));
}

impl From<AccumulateError> for Status {
    fn from(refused: AccumulateError) -> Status {
        let mut status = Status::from(refused.error);
        if refused.replayed {
            mark_replayed(status.metadata_mut());
        }
        status
    }
}

#[tonic::async_trait]
impl CalculatorRpc for GrpcCalculator {
    async fn add(
        &self,
        req: Request<pb::BinaryRequest>,
    ) -> Result<Response<pb::CalcResponse>, Status> {
        self.binary(BinaryOp::Add, req).await
    }

    async fn subtract(
        &self,
        req: Request<pb::BinaryRequest>,
    ) -> Result<Response<pb::CalcResponse>, Status> {
        self.binary(BinaryOp::Subtract, req).await
    }

    async fn multiply(
        &self,
        req: Request<pb::BinaryRequest>,
    ) -> Result<Response<pb::CalcResponse>, Status> {
        self.binary(BinaryOp::Multiply, req).await
    }

    async fn divide(
        &self,
        req: Request<pb::BinaryRequest>,
    ) -> Result<Response<pb::CalcResponse>, Status> {
        self.binary(BinaryOp::Divide, req).await
    }

    async fn accumulate(
        &self,
        req: Request<pb::AccumulateRequest>,
    ) -> Result<Response<pb::AccumulateResponse>, Status> {
        let deadline = deadline_from(req.metadata());
        // The peer's address, for per-client bounds (`Caller::quota_key`):
        // tonic records it for TCP connections (and TLS over them), through
        // the listener guard. The identity `AuthLayer` admitted, if the
        // server checks tokens: it scopes the request ID.
        let caller = Caller {
            peer: req.remote_addr().map(|addr| addr.ip()),
            identity: req
                .extensions()
                .get::<Identity>()
                .map(|identity| Arc::clone(&identity.name)),
        };
        let pb::AccumulateRequest {
            register,
            delta,
            request_id,
        } = req.into_inner();
        let args = AccumulateArgs {
            register,
            delta,
            request_id,
            caller,
        };
        let done = self.service.accumulate(&args, deadline).await?;
        let mut response = Response::new(pb::AccumulateResponse {
            value: done.value,
            replayed: done.replayed,
        });
        if done.replayed {
            mark_replayed(response.metadata_mut());
        }
        Ok(response)
    }

    async fn get_register(
        &self,
        req: Request<pb::GetRegisterRequest>,
    ) -> Result<Response<pb::RegisterValue>, Status> {
        let deadline = deadline_from(req.metadata());
        let register = req.into_inner().register;
        let value = self.service.get(&register, deadline).await?;
        Ok(Response::new(pb::RegisterValue { value }))
    }

    async fn delete_register(
        &self,
        req: Request<pb::DeleteRegisterRequest>,
    ) -> Result<Response<pb::DeleteRegisterResponse>, Status> {
        let deadline = deadline_from(req.metadata());
        let register = req.into_inner().register;
        let value = self.service.delete(&register, deadline).await?;
        Ok(Response::new(pb::DeleteRegisterResponse {
            deleted: value.is_some(),
            value: value.unwrap_or_default(),
        }))
    }

    async fn get_stats(
        &self,
        _req: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::Stats>, Status> {
        let s = self.service.stats().await?;
        Ok(Response::new(pb::Stats {
            dedup_entries: s.dedup_entries,
            dedup_hits: s.dedup_hits,
            dedup_evictions: s.dedup_evictions,
            dedup_mismatches: s.dedup_mismatches,
            applied: s.applied,
            registers: s.registers,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        error::NOT_APPLIED_KEY,
        server::{DedupConfig, FaultConfig},
        store::MemoryLedger,
    };

    fn calculator(state: &Arc<MemoryLedger>, faults: FaultConfig) -> GrpcCalculator {
        GrpcCalculator::new(
            Arc::clone(state) as Arc<dyn Ledger>,
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
        let state = Arc::new(MemoryLedger::new(
            DedupConfig::default(),
            EventSink::log_only(),
        ));
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
        assert_eq!(MemoryLedger::get(&state, "x", None).await, Ok(5.0));
    }

    #[tokio::test]
    async fn a_failure_before_apply_leaves_no_record() {
        let state = Arc::new(MemoryLedger::new(
            DedupConfig::default(),
            EventSink::log_only(),
        ));
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
        let state = Arc::new(MemoryLedger::new(
            DedupConfig::default(),
            EventSink::log_only(),
        ));
        let calc = calculator(&state, FaultConfig::default()).with_require_request_id(true);
        let missing = calc.accumulate(request("x", 1.0, "")).await.unwrap_err();
        assert_eq!(missing.code(), tonic::Code::InvalidArgument);
        assert!(
            missing
                .message()
                .contains("a request ID (gRPC: the request_id field")
        );

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
