//! `abacus::client`'s classification of failures against the real server:
//! does an error say whether the request was applied? Kept in this one small
//! file because the client's internals (retries, deadlines) are changing;
//! only the facade methods and `CallError`'s fields are used.

use abacus::{
    client::{Cause, Client, ClientConfig, tcp_channel},
    server::FaultConfig,
    trace::Outcome,
};
use tonic::Code;

use crate::{closed_port::ClosedPort, harness::TestServer};

#[derive(Debug, Clone, Copy)]
enum Op {
    Add(f64, f64),
    Divide(f64, f64),
    Accumulate(&'static str, f64),
}

#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Ok(f64),
    Err(Code, Cause, Outcome),
}

async fn check(addr: &str, op: Op, expect: Expect) {
    let client = Client::new(tcp_channel(addr).expect("address"), ClientConfig::default());
    let result = match op {
        Op::Add(a, b) => client.add(a, b).await,
        Op::Divide(a, b) => client.divide(a, b).await,
        Op::Accumulate(r, d) => client.accumulate_with_id(r, d, "").await.map(|(v, _)| v),
    };
    let got = match &result {
        Ok(v) => Expect::Ok(*v),
        Err(e) => Expect::Err(e.code, e.cause.clone(), e.outcome),
    };
    assert_eq!(got, expect, "{op:?} against {addr}: {result:?}");
}

#[tokio::test]
async fn failures_say_whether_the_request_was_applied() {
    // A port nothing listens on (and nothing can take meanwhile):
    // connection refused.
    let closed_port = ClosedPort::new();
    let closed = closed_port.addr().to_string();
    let healthy = TestServer::healthy().await;
    let dropping = TestServer::start(FaultConfig {
        drop_after_apply_rate: 1.0,
        ..FaultConfig::default()
    })
    .await;
    let (healthy_addr, dropping_addr) = (healthy.addr.to_string(), dropping.addr.to_string());

    let table = [
        (&healthy_addr, Op::Add(2.0, 3.0), Expect::Ok(5.0)),
        (
            &closed,
            Op::Add(1.0, 1.0),
            Expect::Err(Code::Unavailable, Cause::Connect, Outcome::NotApplied),
        ),
        (
            &healthy_addr,
            Op::Divide(1.0, 0.0),
            Expect::Err(Code::InvalidArgument, Cause::Status, Outcome::NotApplied),
        ),
        (
            &dropping_addr,
            Op::Accumulate("r", 1.0),
            Expect::Err(Code::Unavailable, Cause::Status, Outcome::Unknown),
        ),
    ];
    for (addr, op, expect) in table {
        check(addr, op, expect).await;
    }
}

/// The resilient client's promise on real sockets: against a server that
/// refuses half the requests, retries carry every call through; against one
/// that applies and then loses every other response, exactly-once mode
/// (request IDs + the server's dedup) applies each Accumulate exactly once,
/// while at-least-once without IDs applies some twice.
#[tokio::test]
async fn retries_and_request_ids_on_real_sockets() {
    use abacus::client::Delivery;

    let flaky = TestServer::start(FaultConfig {
        fail_rate: 0.5,
        seed: 3,
        ..FaultConfig::default()
    })
    .await;
    let config = |mode| ClientConfig {
        mode,
        seed: Some(11),
        breaker: None,
        retry: abacus::client::RetryConfig {
            attempts_max: 10,
            throttle: None,
            ..Default::default()
        },
        ..ClientConfig::default()
    };
    let client = Client::new(
        tcp_channel(&flaky.addr.to_string()).expect("address"),
        config(Delivery::ExactlyOnce),
    );
    for i in 0..20 {
        let v = client
            .add(f64::from(i), 1.0)
            .await
            .expect("retries carry it through");
        assert_eq!(v, f64::from(i) + 1.0);
    }

    let lossy = TestServer::start(FaultConfig {
        drop_after_apply_rate: 0.5,
        seed: 5,
        ..FaultConfig::default()
    })
    .await;
    let addr = lossy.addr.to_string();
    for (mode, register) in [
        (Delivery::ExactlyOnce, "once"),
        (Delivery::AtLeastOnce, "blind"),
    ] {
        let client = Client::new(tcp_channel(&addr).expect("address"), config(mode));
        for _ in 0..20 {
            client
                .accumulate(register, 1.0)
                .await
                .expect("retries carry it through");
        }
    }
    let reader = Client::new(
        tcp_channel(&addr).expect("address"),
        config(Delivery::ExactlyOnce),
    );
    assert_eq!(
        reader.get("once").await.expect("read"),
        20.0,
        "exactly once each"
    );
    let blind = reader.get("blind").await.expect("read");
    assert!(
        blind > 20.0,
        "at-least-once without IDs should double-apply here, got {blind}"
    );
    let stats = reader.stats().await.expect("stats");
    assert!(
        stats.dedup_hits > 0,
        "the retries were answered from the store: {stats:?}"
    );
}
