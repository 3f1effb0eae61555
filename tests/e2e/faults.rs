//! Injected faults as a client on the wire sees them.

use std::time::Duration;

use abacus::server::FaultConfig;
use tonic::Code;

use crate::harness::{Expect, Rpc, TestServer, acc, get};

#[tokio::test]
async fn fail_rate_refuses_before_applying() {
    let server = TestServer::start(FaultConfig {
        fail_rate: 1.0,
        ..FaultConfig::default()
    })
    .await;
    let unavailable = || Expect::Refused(Code::Unavailable, "injected fault");
    server
        .conn()
        .await
        .check_all(vec![
            (acc("r", 5.0), unavailable()),
            (acc("r", 5.0), unavailable()),
            (Rpc::Add(1.0, 2.0), unavailable()),
            // Reads are not faulted: the register was never created.
            (get("r"), Expect::Refused(Code::NotFound, "does not exist")),
            (
                Rpc::Stats,
                Expect::Stats {
                    applied: 0,
                    registers: 0,
                },
            ),
        ])
        .await;
}

#[tokio::test]
async fn drop_after_apply_is_a_partial_failure() {
    let server = TestServer::start(FaultConfig {
        drop_after_apply_rate: 1.0,
        ..FaultConfig::default()
    })
    .await;
    // No marker: the client cannot tell this from a lost connection...
    let dropped = || Expect::Failed(Code::Unavailable, "connection lost");
    server
        .conn()
        .await
        .check_all(vec![
            (acc("r", 5.0), dropped()),
            // ...yet the delta was applied, once per call.
            (get("r"), Expect::Value(5.0)),
            (acc("r", 5.0), dropped()),
            (get("r"), Expect::Value(10.0)),
            (
                Rpc::Stats,
                Expect::Stats {
                    applied: 2,
                    registers: 1,
                },
            ),
            // Refusals are decided before the drop, so they keep the marker.
            (
                Rpc::Divide(1.0, 0.0),
                Expect::Refused(Code::InvalidArgument, "division by zero"),
            ),
        ])
        .await;
}

#[tokio::test]
async fn delay_beyond_the_deadline_does_not_apply() {
    // Every request waits exactly 200 ms before being handled.
    let server = TestServer::start(FaultConfig {
        delay_ms: 200..=200,
        ..FaultConfig::default()
    })
    .await;
    let short = Duration::from_millis(20);
    server
        .conn()
        .await
        .check_all(vec![
            // tonic's Channel enforces the `grpc-timeout` it sends: its own
            // timer fires first and fails the call locally with CANCELLED
            // "Timeout expired" (tonic maps its `TimeoutExpired` to
            // CANCELLED, not DEADLINE_EXCEEDED). The server's tonic layer
            // would answer the same, and only if both lose a same-tick race
            // does the handler's own DEADLINE_EXCEEDED get through, so both
            // codes are accepted.
            (
                Rpc::Timeout(short, Box::new(acc("r", 1.0))),
                Expect::FailedAnyOf(&[Code::Cancelled, Code::DeadlineExceeded], ""),
            ),
            // Proof that it was never applied, without sleeping: this call
            // is delayed by the same 200 ms, started later, so had the first
            // been applied it would have been applied before this one.
            (acc("r", 2.0), Expect::Accumulated(2.0)),
            (get("r"), Expect::Value(2.0)),
            (
                Rpc::Stats,
                Expect::Stats {
                    applied: 1,
                    registers: 1,
                },
            ),
            // A deadline that leaves room for the delay is honoured.
            (
                Rpc::Timeout(Duration::from_secs(120), Box::new(Rpc::Add(1.0, 2.0))),
                Expect::Value(3.0),
            ),
        ])
        .await;
}
