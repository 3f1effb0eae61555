//! `abacus::client::Request` against the real server: each request is sent
//! as the RPC it names, and one that may not be repeated is not repeated.
//!
//! Both guard bugs of the time the client took a method and a payload
//! separately: an Accumulate payload under `Method::Accumulate` went out as
//! `Divide`, and under `Method::Add` it counted as idempotent, so
//! at-most-once mode retried it and applied it several times.

use abacus::{
    client::{Client, ClientConfig, Delivery, Reply, Request, tcp_channel},
    core::BinaryOp,
    rpc::Method,
    server::FaultConfig,
    trace::Outcome,
};

use crate::harness::TestServer;

/// Every shape of request, and how the server must answer it: distinct
/// results for the four operations on (6, 3), so a request sent as another
/// operation cannot pass.
#[tokio::test]
async fn each_request_is_sent_as_the_rpc_it_names() {
    let server = TestServer::healthy().await;
    let client = Client::new(
        tcp_channel(&server.addr.to_string()).expect("address"),
        ClientConfig::default(),
    );
    let binary = |op| Request::Binary { op, a: 6.0, b: 3.0 };
    let accumulate = |request_id: &str| Request::Accumulate {
        register: "r".into(),
        delta: 1.5,
        request_id: request_id.into(),
    };
    let table = [
        (binary(BinaryOp::Add), Reply::Calc(9.0)),
        (binary(BinaryOp::Subtract), Reply::Calc(3.0)),
        (binary(BinaryOp::Multiply), Reply::Calc(18.0)),
        (binary(BinaryOp::Divide), Reply::Calc(2.0)),
        (
            accumulate(""),
            Reply::Accumulated {
                value: 1.5,
                replayed: false,
            },
        ),
        (
            accumulate("id-1"),
            Reply::Accumulated {
                value: 3.0,
                replayed: false,
            },
        ),
        (
            Request::GetRegister {
                register: "r".into(),
            },
            Reply::Register(3.0),
        ),
        (
            Request::DeleteRegister {
                register: "r".into(),
            },
            Reply::Deleted {
                deleted: true,
                value: 3.0,
            },
        ),
        (
            Request::DeleteRegister {
                register: "r".into(),
            },
            Reply::Deleted {
                deleted: false,
                value: 0.0,
            },
        ),
    ];
    let mut methods = Vec::new();
    for (request, expect) in table {
        methods.push(request.method());
        let got = client.call(request.clone()).await;
        assert_eq!(got, Ok(expect), "{request:?}");
    }
    match client.call(Request::GetStats).await {
        Ok(Reply::Stats(s)) => assert_eq!(s.applied, 2, "{s:?}"),
        other => panic!("GetStats answered {other:?}"),
    }
    methods.push(Method::GetStats);
    methods.dedup();
    assert_eq!(methods, Method::ALL, "the table covers every RPC");
}

/// At-most-once against a server that applies, then loses the response:
/// an Accumulate without request ID may have been applied, so it is sent
/// once and reported as unknown, never re-sent.
#[tokio::test]
async fn at_most_once_never_resends_an_accumulate_without_id() {
    let server = TestServer::start(FaultConfig {
        drop_after_apply_rate: 1.0,
        ..FaultConfig::default()
    })
    .await;
    let addr = server.addr.to_string();
    let config = ClientConfig {
        mode: Delivery::AtMostOnce,
        breaker: None,
        ..ClientConfig::default()
    };
    let client = Client::new(tcp_channel(&addr).expect("address"), config);
    let request = Request::Accumulate {
        register: "once".into(),
        delta: 1.0,
        request_id: String::new(),
    };
    let err = client
        .call(request)
        .await
        .expect_err("the response is lost");
    assert_eq!((err.attempts, err.outcome), (1, Outcome::Unknown), "{err}");
    // Reads are not faulted: the register shows one apply.
    assert_eq!(client.get("once").await, Ok(1.0));
}
