//! Health checking and server reflection, as grpcurl or a load balancer
//! would use them.

use tonic::Code;

use crate::harness::{Expect, Reflection, Rpc, TestServer};

// Each reflection service lists itself but not its sibling protocol: the
// server builds them separately, and tonic-reflection only adds its own
// descriptor to each.
const LISTED_V1: &[&str] = &[
    "abacus.v1.Calculator",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
];
const LISTED_V1ALPHA: &[&str] = &[
    "abacus.v1.Calculator",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
];

#[tokio::test]
async fn health_and_reflection_answer() {
    let server = TestServer::healthy().await;
    server
        .conn()
        .await
        .check_all(vec![
            (Rpc::Health(""), Expect::Serving),
            (Rpc::Health("abacus.v1.Calculator"), Expect::Serving),
            (
                Rpc::Health("abacus.v1.Nope"),
                Expect::Failed(Code::NotFound, "service not registered"),
            ),
            (Rpc::ListServices(Reflection::V1), Expect::Lists(LISTED_V1)),
            (
                Rpc::ListServices(Reflection::V1Alpha),
                Expect::Lists(LISTED_V1ALPHA),
            ),
        ])
        .await;
}
