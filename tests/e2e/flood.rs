//! Floods and protocol abuse on one connection: what a peer can make the
//! gRPC front hold must be bounded, and everyone else keeps being served.
//!
//! - streams pipelined behind a zero flow-control window stop at the
//!   advertised limit (the rest are refused), where tonic's defaults
//!   accepted all of them;
//! - `Health/Watch` streams are capped server-wide;
//! - a non-gRPC content type gets HTTP 415, and a second request message
//!   on a unary call INTERNAL, where both used to be served.

use std::time::Duration;

use abacus::{
    pb::{self, calculator_client::CalculatorClient},
    server::{Limits, ServerConfig},
};
use prost::Message as _;
use tokio::net::TcpStream;
use tonic::{
    Code,
    codegen::http::{HeaderMap, Request},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    harness::TestServer,
    raw_h2::{
        GOAWAY, HEADERS, REFUSED_STREAM, RawH2, SETTINGS_INITIAL_WINDOW_SIZE,
        SETTINGS_MAX_CONCURRENT_STREAMS, grpc_frame,
    },
};

const ADD: &str = "/abacus.v1.Calculator/Add";
/// Upper bound on waiting for the server's next frame.
const FRAME_WAIT: Duration = Duration::from_secs(10);

/// Another client, on its own connection, still gets answers.
async fn others_are_served(server: &TestServer) {
    let channel = server.channel().await;
    let sum = CalculatorClient::new(channel.clone())
        .add(pb::BinaryRequest { a: 2.0, b: 3.0 })
        .await
        .expect("another client is served")
        .into_inner()
        .result;
    assert_eq!(sum, 5.0);
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .expect("health answers");
}

#[tokio::test]
async fn streams_behind_a_zero_window_stop_at_the_limit() {
    let limits = Limits::default();
    let server = TestServer::with_config(ServerConfig {
        limits: limits.clone(),
        ..ServerConfig::default()
    })
    .await;
    let limit = limits.h2_streams_max;
    let sent = 3 * limit;
    // The peer never grants the server a byte of window: every response
    // stays queued, and every stream open.
    let mut conn = RawH2::connect(server.addr, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    let settings = conn.next_frame(FRAME_WAIT).await.expect("server SETTINGS");
    assert_eq!(
        settings.setting(SETTINGS_MAX_CONCURRENT_STREAMS),
        Some(limit),
        "the server must advertise its stream limit: {settings:?}"
    );
    let add = grpc_frame(&pb::BinaryRequest { a: 1.0, b: 2.0 }.encode_to_vec());
    for i in 0..sent {
        conn.post(2 * i + 1, ADD, "application/grpc", &add).await;
    }
    let (mut answered, mut refused) = (0, 0);
    while refused < sent - limit {
        let Some(frame) = conn.next_frame(FRAME_WAIT).await else {
            panic!(
                "refused {refused} of {sent} streams, answered {answered}: the server must refuse all beyond {limit}"
            );
        };
        assert_ne!(frame.kind, GOAWAY, "{frame:?}");
        if frame.kind == HEADERS {
            answered += 1;
        }
        if frame.rst_code() == Some(REFUSED_STREAM) {
            // Only streams past the first `limit` (ids 1, 3, 5, ...).
            assert!(frame.stream > 2 * limit - 1, "{frame:?}");
            refused += 1;
        }
    }
    // Every stream beyond the limit was refused, none below it: the first
    // `limit` were answered (their bodies wait for window that never
    // comes).
    while answered < limit {
        let frame = conn.next_frame(FRAME_WAIT).await.expect("responses");
        answered += u32::from(frame.kind == HEADERS);
        assert_ne!(frame.rst_code(), Some(REFUSED_STREAM), "{frame:?}");
    }
    others_are_served(&server).await;
}

#[tokio::test]
async fn watch_streams_are_capped_server_wide() {
    let long_streams_max = 6;
    let server = TestServer::with_config(ServerConfig {
        limits: Limits {
            long_streams_max,
            ..Limits::default()
        },
        ..ServerConfig::default()
    })
    .await;
    // Over two connections: the cap is for the server, not a connection.
    let channels = [server.channel().await, server.channel().await];
    let watch = |i: usize| {
        let mut client = HealthClient::new(channels[i % 2].clone());
        async move { client.watch(HealthCheckRequest::default()).await }
    };
    let mut open = Vec::new();
    for i in 0..long_streams_max {
        let mut stream = watch(i).await.expect("under the cap").into_inner();
        // The first message: the stream is really open.
        stream
            .message()
            .await
            .expect("a status")
            .expect("one message");
        open.push(stream);
    }
    let refused = watch(0).await.expect_err("over the cap");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("long-lived streams"),
        "{refused:?}"
    );
    // Closing one makes room again (the slot is freed when the server
    // drops the stream's body, after the client's reset arrives).
    drop(open.pop());
    let reopened = tokio::time::timeout(FRAME_WAIT, async {
        loop {
            match watch(1).await {
                Ok(stream) => break stream,
                Err(status) => assert_eq!(status.code(), Code::ResourceExhausted),
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a slot comes back when a Watch stream closes");
    drop(reopened);
    others_are_served(&server).await;
}

/// One request over a fresh h2 connection: status, headers, and the
/// gRPC status (from the headers if trailers-only, else the trailers).
async fn h2_call(
    server: &TestServer,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Option<(i32, String)>) {
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let (mut client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let request = Request::post(format!("http://{}{ADD}", server.addr))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).expect("send");
    send.send_data(body.into(), true).expect("send body");
    let response = response.await.expect("a response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.expect("trailers");
    let grpc = grpc_status(&headers).or_else(|| trailers.as_ref().and_then(grpc_status));
    (status, grpc)
}

fn grpc_status(headers: &HeaderMap) -> Option<(i32, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some((code, message))
}

/// gRPC percent-encodes `grpc-message`; enough of a decoder for ASCII.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], s.get(i + 1..i + 3)) {
            (b'%', Some(hex)) if u8::from_str_radix(hex, 16).is_ok() => {
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn only_grpc_content_types_and_one_request_message_are_served() {
    let server = TestServer::healthy().await;
    let add = grpc_frame(&pb::BinaryRequest { a: 1.0, b: 2.0 }.encode_to_vec());
    // Control: the hand-made call itself is fine.
    let (status, grpc) = h2_call(&server, "application/grpc", add.clone()).await;
    assert_eq!((status, grpc.map(|g| g.0)), (200, Some(0)));
    let (status, grpc) = h2_call(&server, "application/grpc+proto", add.clone()).await;
    assert_eq!((status, grpc.map(|g| g.0)), (200, Some(0)));

    // JSON to the gRPC port: 415, and INVALID_ARGUMENT for gRPC clients.
    let (status, grpc) = h2_call(&server, "application/json", br#"{"a":1,"b":2}"#.to_vec()).await;
    let (code, message) = grpc.expect("a gRPC status");
    assert_eq!((status, code), (415, Code::InvalidArgument as i32));
    assert!(message.contains("application/json"), "{message}");

    // Two request messages on a unary method.
    let twice = [add.clone(), add].concat();
    let (status, grpc) = h2_call(&server, "application/grpc", twice).await;
    let (code, message) = grpc.expect("a gRPC status");
    assert_eq!((status, code), (200, Code::Internal as i32), "{message}");
    assert!(
        message.contains("more than one request message"),
        "{message}"
    );
    others_are_served(&server).await;
}
