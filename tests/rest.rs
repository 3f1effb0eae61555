//! End-to-end tests of the REST twin: both fronts of one server on loopback
//! sockets (`127.0.0.1:0`), called over real HTTP/1.1 and h2c connections
//! (hyper's client, no pool) and, for shared state, tonic's generated gRPC
//! client.
//!
//! # Scenarios
//! - every endpoint's happy path, and every error with its status, its
//!   JSON body's code, a useful message and `not_applied`;
//! - `Idempotency-Key`: replay, reuse with another payload, a replayed
//!   recorded error, a concurrent duplicate, keys required;
//! - both fronts share registers, dedup records and the in-flight limit;
//! - tokenless callers from two addresses keep separate dedup retention;
//! - h2c (prior knowledge) on the same port as HTTP/1.1.
//!
//! Every table runs through [`check`].

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use abacus::{
    pb::{self, calculator_client::CalculatorClient},
    server::{self, Calculator, DedupConfig, FaultConfig, ServerConfig},
    store::{AccumulateArgs, Begin, Caller, Ledger, MemoryLedger},
    trace::{Event, EventSink},
};
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::oneshot};

/// Both fronts of one server over one [`Calculator`], stopped when dropped.
struct Fronts {
    grpc: SocketAddr,
    rest: SocketAddr,
    /// The state both fronts share, for tests that act on it directly.
    state: Arc<MemoryLedger>,
    _stop: oneshot::Sender<()>,
}

impl Fronts {
    async fn start(config: ServerConfig) -> Self {
        let state = Arc::new(MemoryLedger::new(
            DedupConfig::default(),
            config.events.clone(),
        ));
        let calculator = Calculator::from_config(&config, state.clone());
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let rest = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (grpc_addr, rest_addr) = (grpc.local_addr().unwrap(), rest.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = futures_util::future::FutureExt::shared(async {
            let _ = stopped.await;
        });
        tokio::spawn(server::serve_rest(
            calculator.clone(),
            server::tcp_incoming(rest),
            stopped.clone(),
        ));
        tokio::spawn(server::serve_calculator(
            calculator,
            server::tcp_incoming(grpc),
            stopped,
        ));
        Self {
            grpc: grpc_addr,
            rest: rest_addr,
            state,
            _stop: stop,
        }
    }

    async fn healthy() -> Self {
        Self::start(ServerConfig::default()).await
    }

    async fn grpc_client(&self) -> CalculatorClient<tonic::transport::Channel> {
        CalculatorClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect gRPC")
    }
}

/// One HTTP request: the input of a `check` row.
#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn post(path: impl Into<String>, body: Value) -> Req {
    Req {
        method: "POST",
        path: path.into(),
        headers: vec![("content-type", "application/json".into())],
        body: body.to_string().into_bytes(),
    }
}

fn get(path: impl Into<String>) -> Req {
    Req {
        method: "GET",
        path: path.into(),
        headers: Vec::new(),
        body: Vec::new(),
    }
}

impl Req {
    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.retain(|(n, _)| *n != name);
        self.headers.push((name, value.into()));
        self
    }

    fn raw_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    fn key(self, key: &str) -> Self {
        self.header("idempotency-key", key)
    }
}

/// What came back.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: hyper::HeaderMap,
    json: Value,
}

impl Reply {
    fn replayed(&self) -> bool {
        self.headers
            .get("abacus-replayed")
            .is_some_and(|v| v == "true")
    }
}

#[derive(Debug, Clone, Copy)]
enum Proto {
    Http1,
    H2c,
}

/// Sends `req` on a fresh connection.
async fn send(addr: SocketAddr, proto: Proto, req: Req) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    exchange(stream, addr, proto, req).await
}

/// Sends `req` on a fresh connection from loopback address `source` (any
/// of 127.0.0.0/8 reaches a server on 127.0.0.1), so that the server sees
/// distinct peers.
async fn send_from(source: IpAddr, addr: SocketAddr, req: Req) -> Reply {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .unwrap_or_else(|e| panic!("bind {source}: {e}"));
    let stream = socket.connect(addr).await.expect("connect");
    assert_eq!(stream.local_addr().expect("local address").ip(), source);
    exchange(stream, addr, Proto::Http1, req).await
}

/// Sends `req` on `stream`, connected to `addr`.
async fn exchange(
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    proto: Proto,
    req: Req,
) -> Reply {
    let io = TokioIo::new(stream);
    let mut builder = Request::builder()
        .method(req.method)
        .uri(format!("http://{addr}{}", req.path));
    for (name, value) in &req.headers {
        builder = builder.header(*name, value);
    }
    let request = builder
        .body(Full::new(Bytes::from(req.body)))
        .expect("valid request");
    let response = match proto {
        Proto::Http1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("h1 handshake");
            tokio::spawn(conn);
            sender.send_request(request).await.expect("h1 response")
        }
        Proto::H2c => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .expect("h2 handshake");
            tokio::spawn(conn);
            sender.send_request(request).await.expect("h2 response")
        }
    };
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {bytes:?}"));
    assert_eq!(
        parts.headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/json"[..]),
        "every answer is JSON"
    );
    Reply {
        status: parts.status,
        headers: parts.headers,
        json,
    }
}

/// What a `check` row expects.
#[derive(Debug, Clone)]
enum Expect {
    /// 200 with exactly this body.
    Ok(Value),
    /// This status, error code, message fragment and `not_applied`.
    Error(u16, &'static str, &'static str, bool),
}

/// Refused before applying: the common error row.
fn refused(status: u16, code: &'static str, fragment: &'static str) -> Expect {
    Expect::Error(status, code, fragment, true)
}

/// The one helper every table goes through.
async fn check(fronts: &Fronts, req: Req, expect: Expect) -> Reply {
    let what = format!("{} {}", req.method, req.path);
    let reply = send(fronts.rest, Proto::Http1, req).await;
    match expect {
        Expect::Ok(body) => {
            assert_eq!(reply.status, StatusCode::OK, "{what}: {}", reply.json);
            assert_eq!(reply.json, body, "{what}");
        }
        Expect::Error(status, code, fragment, not_applied) => {
            assert_eq!(reply.status.as_u16(), status, "{what}: {}", reply.json);
            let error = &reply.json["error"];
            assert_eq!(error["code"], code, "{what}: {}", reply.json);
            let message = error["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(fragment),
                "{what}: message {message:?} lacks {fragment:?}"
            );
            assert_eq!(error["not_applied"], not_applied, "{what}");
        }
    }
    reply
}

async fn check_all(fronts: &Fronts, table: Vec<(Req, Expect)>) {
    for (req, expect) in table {
        check(fronts, req, expect).await;
    }
}

#[tokio::test]
async fn every_endpoint_answers() {
    let fronts = Fronts::healthy().await;
    check_all(
        &fronts,
        vec![
            (
                post("/v1/add", json!({"a": 2, "b": 3})),
                Expect::Ok(json!({"result": 5.0})),
            ),
            (
                post("/v1/subtract", json!({"a": 2, "b": 3.5})),
                Expect::Ok(json!({"result": -1.5})),
            ),
            (
                post("/v1/multiply", json!({"a": -4, "b": 2.5})),
                Expect::Ok(json!({"result": -10.0})),
            ),
            (
                post("/v1/divide", json!({"a": 7, "b": 2})),
                Expect::Ok(json!({"result": 3.5})),
            ),
            (
                post("/v1/registers/total:accumulate", json!({"delta": 5})),
                Expect::Ok(json!({"value": 5.0, "replayed": false})),
            ),
            (
                post("/v1/registers/total:accumulate", json!({"delta": -1.5})),
                Expect::Ok(json!({"value": 3.5, "replayed": false})),
            ),
            // Names may hold colons and, percent-encoded, slashes and spaces.
            (
                post("/v1/registers/a:b%2Fc%20d:accumulate", json!({"delta": 1})),
                Expect::Ok(json!({"value": 1.0, "replayed": false})),
            ),
            (
                get("/v1/registers/a:b%2Fc%20d"),
                Expect::Ok(json!({"value": 1.0})),
            ),
            (
                get("/v1/registers/total"),
                Expect::Ok(json!({"value": 3.5})),
            ),
            (
                get("/v1/stats"),
                Expect::Ok(json!({
                    "dedup_entries": 0, "dedup_hits": 0, "dedup_evictions": 0,
                    "dedup_mismatches": 0, "applied": 3, "registers": 2
                })),
            ),
            (get("/healthz"), Expect::Ok(json!({"status": "SERVING"}))),
            // A generous deadline changes nothing.
            (
                post("/v1/add", json!({"a": 1, "b": 1})).header("abacus-timeout-ms", "60000"),
                Expect::Ok(json!({"result": 2.0})),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn composed_and_decomposed_names_are_one_register() {
    let fronts = Fronts::healthy().await;
    check_all(
        &fronts,
        vec![
            // "café" with U+00E9, then with "e" + U+0301.
            (
                post("/v1/registers/caf%C3%A9:accumulate", json!({"delta": 1})),
                Expect::Ok(json!({"value": 1.0, "replayed": false})),
            ),
            (
                post("/v1/registers/cafe%CC%81:accumulate", json!({"delta": 2})),
                Expect::Ok(json!({"value": 3.0, "replayed": false})),
            ),
            (
                get("/v1/registers/cafe%CC%81"),
                Expect::Ok(json!({"value": 3.0})),
            ),
            (
                get("/v1/stats"),
                Expect::Ok(json!({
                    "dedup_entries": 0, "dedup_hits": 0, "dedup_evictions": 0,
                    "dedup_mismatches": 0, "applied": 2, "registers": 1
                })),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn every_error_is_json_with_the_mapped_status() {
    let fronts = Fronts::healthy().await;
    let long_name = "r".repeat(65);
    check_all(
        &fronts,
        vec![
            // The calculator's rules (INVALID_ARGUMENT → 400).
            (
                post("/v1/divide", json!({"a": 1, "b": 0})),
                refused(400, "INVALID_ARGUMENT", "division by zero"),
            ),
            (
                post("/v1/multiply", json!({"a": 1e308, "b": 10})),
                refused(400, "INVALID_ARGUMENT", "overflow"),
            ),
            // JSON cannot say NaN or infinity; an overflowing literal is
            // refused by the parser rather than rounded to infinity.
            (
                post("/v1/add", json!({})).raw_body(r#"{"a": 1e999, "b": 1}"#),
                refused(400, "INVALID_ARGUMENT", "number out of range"),
            ),
            (
                post("/v1/add", json!({})).raw_body(r#"{"a": NaN, "b": 1}"#),
                refused(400, "INVALID_ARGUMENT", "not valid JSON"),
            ),
            (
                post("/v1/add", json!({"a": "2", "b": 1})),
                refused(400, "INVALID_ARGUMENT", "invalid type: string"),
            ),
            (
                post("/v1/add", json!({"a": null, "b": 1})),
                refused(400, "INVALID_ARGUMENT", "invalid type: null"),
            ),
            (
                post("/v1/add", json!({"a": 2})),
                refused(400, "INVALID_ARGUMENT", "missing field `b`"),
            ),
            (
                post("/v1/add", json!({"a": 2, "b": 1, "c": 3})),
                refused(400, "INVALID_ARGUMENT", "unknown field `c`"),
            ),
            (
                post("/v1/add", json!({})).raw_body("{\"a\": 2,"),
                refused(400, "INVALID_ARGUMENT", "not valid JSON"),
            ),
            (
                post("/v1/add", json!({})).raw_body(""),
                refused(400, "INVALID_ARGUMENT", "EOF"),
            ),
            // Media type and size.
            (
                post("/v1/add", json!({"a": 1, "b": 2})).header("content-type", "text/plain"),
                refused(415, "INVALID_ARGUMENT", "text/plain"),
            ),
            (
                Req {
                    headers: Vec::new(),
                    ..post("/v1/add", json!({"a": 1, "b": 2}))
                },
                refused(415, "INVALID_ARGUMENT", "no Content-Type"),
            ),
            (
                post("/v1/add", json!({})).raw_body(format!(
                    r#"{{"a": 1, "b": 2, "pad": "{}"}}"#,
                    "x".repeat(20_000)
                )),
                refused(413, "OUT_OF_RANGE", "larger than 16384 bytes"),
            ),
            // Registers.
            (
                get("/v1/registers/never"),
                refused(404, "NOT_FOUND", "does not exist"),
            ),
            (
                post("/v1/registers/:accumulate", json!({"delta": 1})),
                refused(400, "INVALID_ARGUMENT", "must not be empty"),
            ),
            (
                post(
                    format!("/v1/registers/{long_name}:accumulate"),
                    json!({"delta": 1}),
                ),
                refused(400, "INVALID_ARGUMENT", "65 bytes"),
            ),
            (
                get(format!("/v1/registers/{long_name}")),
                refused(400, "INVALID_ARGUMENT", "65 bytes"),
            ),
            (
                post("/v1/registers/a%01b:accumulate", json!({"delta": 1})),
                refused(400, "INVALID_ARGUMENT", "U+0001 at character 2"),
            ),
            (
                post(
                    "/v1/registers/txt%E2%80%AEexe:accumulate",
                    json!({"delta": 1}),
                ),
                refused(
                    400,
                    "INVALID_ARGUMENT",
                    "U+202E at character 4, an invisible format",
                ),
            ),
            (
                get("/v1/registers/%EF%BB%BFtotal"),
                refused(400, "INVALID_ARGUMENT", "U+FEFF at character 1"),
            ),
            (
                post("/v1/registers/x%FF:accumulate", json!({"delta": 1})),
                refused(400, "INVALID_ARGUMENT", "invalid path"),
            ),
            (
                post("/v1/registers/x:accumulate", json!({"delta": "5"})),
                refused(400, "INVALID_ARGUMENT", "invalid type: string"),
            ),
            // Headers.
            (
                post("/v1/registers/x:accumulate", json!({"delta": 1})).key(&"k".repeat(200)),
                refused(400, "INVALID_ARGUMENT", "request ID is invalid"),
            ),
            (
                post("/v1/registers/x:accumulate", json!({"delta": 1})).key("\"unterminated"),
                refused(400, "INVALID_ARGUMENT", "Idempotency-Key"),
            ),
            (
                post("/v1/add", json!({"a": 1, "b": 2})).header("abacus-timeout-ms", "soon"),
                refused(400, "INVALID_ARGUMENT", "abacus-timeout-ms"),
            ),
            // A deadline that has passed on arrival: not applied.
            (
                post("/v1/add", json!({"a": 1, "b": 2})).header("abacus-timeout-ms", "0"),
                refused(504, "DEADLINE_EXCEEDED", "deadline exceeded"),
            ),
            (
                post("/v1/registers/late:accumulate", json!({"delta": 1}))
                    .key("late-1")
                    .header("abacus-timeout-ms", "0"),
                refused(504, "DEADLINE_EXCEEDED", "deadline exceeded"),
            ),
            // Paths and methods.
            (
                post("/v1/power", json!({"a": 1, "b": 2})),
                refused(404, "UNIMPLEMENTED", "no endpoint POST /v1/power"),
            ),
            (
                post("/v1/registers/x:reset", json!({"delta": 1})),
                refused(404, "UNIMPLEMENTED", "no endpoint"),
            ),
        ],
    )
    .await;
    let wrong_method = check(
        &fronts,
        get("/v1/add"),
        refused(405, "UNIMPLEMENTED", "method GET is not allowed"),
    )
    .await;
    assert_eq!(wrong_method.headers["allow"], "POST");
    let wrong_method = check(
        &fronts,
        post("/v1/stats", json!({})),
        refused(405, "UNIMPLEMENTED", "allowed: GET"),
    )
    .await;
    assert_eq!(wrong_method.headers["allow"], "GET");
    // Nothing above was applied, not even the late accumulate.
    check(
        &fronts,
        get("/v1/stats"),
        Expect::Ok(json!({
            "dedup_entries": 0, "dedup_hits": 0, "dedup_evictions": 0,
            "dedup_mismatches": 0, "applied": 0, "registers": 0
        })),
    )
    .await;
}

#[tokio::test]
async fn an_idempotency_key_is_applied_once_and_never_reused() {
    let fronts = Fronts::healthy().await;
    let acc = |delta: f64| post("/v1/registers/r:accumulate", json!({ "delta": delta }));
    let first = check(
        &fronts,
        acc(5.0).key("k1"),
        Expect::Ok(json!({"value": 5.0, "replayed": false})),
    )
    .await;
    assert!(!first.replayed());
    // The draft's quoted form names the same key.
    let again = check(
        &fronts,
        acc(5.0).key("\"k1\""),
        Expect::Ok(json!({"value": 5.0, "replayed": true})),
    )
    .await;
    assert!(again.replayed(), "a replay says so in a header");
    let reused = check(
        &fronts,
        acc(6.0).key("k1"),
        refused(409, "FAILED_PRECONDITION", "must not be reused"),
    )
    .await;
    assert!(reused.headers.get("retry-after").is_none());
    check(
        &fronts,
        get("/v1/registers/r"),
        Expect::Ok(json!({"value": 5.0})),
    )
    .await;

    // A recorded error (a state-dependent refusal) is replayed as itself.
    let huge =
        |key: &str| post("/v1/registers/big:accumulate", json!({ "delta": f64::MAX })).key(key);
    check(
        &fronts,
        huge("b1"),
        Expect::Ok(json!({"value": f64::MAX, "replayed": false})),
    )
    .await;
    let refusal = check(
        &fronts,
        huge("b2"),
        refused(400, "INVALID_ARGUMENT", "overflow"),
    )
    .await;
    assert!(!refusal.replayed());
    let replayed = check(
        &fronts,
        huge("b2"),
        refused(400, "INVALID_ARGUMENT", "overflow"),
    )
    .await;
    assert!(replayed.replayed(), "a replayed error is marked too");

    check(
        &fronts,
        get("/v1/stats"),
        Expect::Ok(json!({
            "dedup_entries": 3, "dedup_hits": 2, "dedup_evictions": 0,
            "dedup_mismatches": 1, "applied": 2, "registers": 2
        })),
    )
    .await;
}

#[tokio::test]
async fn a_concurrent_duplicate_gets_the_first_outcome() {
    // The first execution of key "dup" is held in flight by the test
    // itself: it claims the key in the state both fronts share, as a front
    // does before its fault delay. Duplicates over HTTP/1.1 and h2c then
    // cannot help but arrive while it runs. The test waits until the server
    // reports each of them joined (an event, not a sleep), commits, and
    // both answer the first outcome as a replay: applied once.
    let (joined_tx, mut joined) = tokio::sync::mpsc::unbounded_channel();
    let events = EventSink::with_hook(move |event| {
        if let Event::DedupJoined { request_id } = event {
            let _ = joined_tx.send(request_id.clone());
        }
    });
    let fronts = Fronts::start(ServerConfig {
        events,
        ..ServerConfig::default()
    })
    .await;
    let first = AccumulateArgs {
        register: "c".into(),
        delta: 2.0,
        request_id: "dup".into(),
        caller: Caller::default(),
    };
    let Begin::Execute(claim) = Ledger::begin(&*fronts.state, &first, None)
        .await
        .expect("begin")
    else {
        panic!("a fresh key is executed, not replayed");
    };

    let req = post("/v1/registers/c:accumulate", json!({"delta": 2})).key("dup");
    let a = tokio::spawn(send(fronts.rest, Proto::Http1, req.clone()));
    let b = tokio::spawn(send(fronts.rest, Proto::H2c, req));
    for _ in 0..2 {
        // A hang guard, not a timing assertion: the joins come at once.
        let id = tokio::time::timeout(Duration::from_secs(60), joined.recv())
            .await
            .expect("both duplicates join the execution in flight");
        assert_eq!(id.as_deref(), Some("dup"));
    }
    assert!(
        !a.is_finished() && !b.is_finished(),
        "joiners wait for the commit"
    );
    let applied = claim.commit().await.expect("commit");
    assert_eq!((applied.value, applied.replayed), (2.0, false));

    for r in [a.await.expect("h1 task"), b.await.expect("h2c task")] {
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        assert_eq!(r.json, json!({"value": 2.0, "replayed": true}));
        assert!(r.replayed(), "the abacus-replayed header says so too");
    }
    let stats = send(fronts.rest, Proto::Http1, get("/v1/stats")).await;
    assert_eq!(stats.json["applied"], 1);
    assert!(
        joined.try_recv().is_err(),
        "no other join: {:?}",
        joined.try_recv()
    );
}

#[tokio::test]
async fn keys_can_be_required() {
    let fronts = Fronts::start(ServerConfig {
        require_request_id: true,
        ..ServerConfig::default()
    })
    .await;
    check(
        &fronts,
        post("/v1/registers/x:accumulate", json!({"delta": 1})),
        refused(
            400,
            "INVALID_ARGUMENT",
            "Idempotency-Key header) is required",
        ),
    )
    .await;
    check(
        &fronts,
        post("/v1/registers/x:accumulate", json!({"delta": 1})).key("id-1"),
        Expect::Ok(json!({"value": 1.0, "replayed": false})),
    )
    .await;
}

#[tokio::test]
async fn grpc_and_rest_share_registers_and_dedup_records() {
    let fronts = Fronts::healthy().await;
    let mut grpc = fronts.grpc_client().await;
    check(
        &fronts,
        post("/v1/registers/shared:accumulate", json!({"delta": 4})).key("via-rest"),
        Expect::Ok(json!({"value": 4.0, "replayed": false})),
    )
    .await;
    let read = grpc
        .get_register(pb::GetRegisterRequest {
            register: "shared".into(),
        })
        .await
        .expect("gRPC read");
    assert_eq!(read.into_inner().value, 4.0);

    // A key sent over REST is a request ID over gRPC, and back.
    let retry = grpc
        .accumulate(pb::AccumulateRequest {
            register: "shared".into(),
            delta: 4.0,
            request_id: "via-rest".into(),
        })
        .await
        .expect("gRPC replay");
    assert_eq!(retry.metadata().get("abacus-replayed").unwrap(), "true");
    assert_eq!(retry.into_inner().value, 4.0);
    grpc.accumulate(pb::AccumulateRequest {
        register: "shared".into(),
        delta: 1.0,
        request_id: "via-grpc".into(),
    })
    .await
    .expect("gRPC accumulate");
    check(
        &fronts,
        post("/v1/registers/shared:accumulate", json!({"delta": 1})).key("via-grpc"),
        Expect::Ok(json!({"value": 5.0, "replayed": true})),
    )
    .await;
    check(
        &fronts,
        get("/v1/registers/shared"),
        Expect::Ok(json!({"value": 5.0})),
    )
    .await;
}

#[tokio::test]
async fn h2c_and_http1_share_one_port() {
    let fronts = Fronts::healthy().await;
    for proto in [Proto::Http1, Proto::H2c] {
        let reply = send(
            fronts.rest,
            proto,
            post("/v1/divide", json!({"a": 1, "b": 4})),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{proto:?}");
        assert_eq!(reply.json, json!({"result": 0.25}), "{proto:?}");
        let refused = send(
            fronts.rest,
            proto,
            post("/v1/divide", json!({"a": 1, "b": 0})),
        )
        .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{proto:?}");
    }
}

#[tokio::test]
async fn both_fronts_share_one_in_flight_limit() {
    // One slot; every request is held 30 s once admitted. The first is
    // known to hold the slot when its delay starts (an event, not a
    // sleep); the next call on either front must then be shed at once.
    let (delayed_tx, delayed_rx) = oneshot::channel::<()>();
    let delayed_tx = std::sync::Mutex::new(Some(delayed_tx));
    let events = EventSink::with_hook(move |event| {
        if let Event::FaultInjected { .. } = event
            && let Some(tx) = delayed_tx.lock().unwrap().take()
        {
            let _ = tx.send(());
        }
    });
    let fronts = Fronts::start(ServerConfig {
        in_flight_max: 1,
        shed_pushback_ms: 1500,
        events,
        faults: FaultConfig {
            delay_ms: 30_000..=30_000,
            ..FaultConfig::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let rest = fronts.rest;
    let holder = tokio::spawn(send(
        rest,
        Proto::Http1,
        post("/v1/add", json!({"a": 1, "b": 1})),
    ));
    delayed_rx.await.expect("the first call reached its delay");

    let shed = check(
        &fronts,
        post("/v1/add", json!({"a": 1, "b": 1})),
        Expect::Error(429, "RESOURCE_EXHAUSTED", "overloaded", true),
    )
    .await;
    assert_eq!(shed.headers["retry-after"], "2", "1500 ms rounded up");
    assert_eq!(shed.json["error"]["retry_after_ms"], 1500);
    let mut grpc = fronts.grpc_client().await;
    let status = grpc
        .add(pb::BinaryRequest { a: 1.0, b: 1.0 })
        .await
        .expect_err("gRPC shed too");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    // Health is never shed.
    check(
        &fronts,
        get("/healthz"),
        Expect::Ok(json!({"status": "SERVING"})),
    )
    .await;
    holder.abort();
}

/// The adversarial report's flush, over REST without tokens: a victim's
/// record survives an attacker's fresh keys when the two connect from
/// different addresses, because the REST front passes each peer's address
/// to the store as the gRPC front does. From one address (the negative
/// control) the same traffic flushes it.
#[tokio::test]
async fn tokenless_rest_callers_from_two_addresses_keep_separate_retention() {
    const ENTRIES_MAX: usize = 10;
    let victim: IpAddr = "127.0.0.2".parse().unwrap();
    let attacker: IpAddr = "127.0.0.3".parse().unwrap();
    // (attacker's address, the victim's retry replayed, register after).
    for (from, replayed, value) in [(attacker, true, 100.0), (victim, false, 200.0)] {
        let state = Arc::new(MemoryLedger::new(
            DedupConfig {
                entries_max: ENTRIES_MAX,
                ..DedupConfig::default()
            },
            EventSink::log_only(),
        ));
        let calculator = Calculator::from_config(&ServerConfig::default(), state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (_stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server::serve_rest(
            calculator,
            server::tcp_incoming(listener),
            async {
                let _ = stopped.await;
            },
        ));
        let accumulate = |register: &str, delta: f64, key: &str| {
            post(
                format!("/v1/registers/{register}:accumulate"),
                json!({"delta": delta}),
            )
            .key(key)
        };
        let first = send_from(victim, addr, accumulate("victim", 100.0, "victim-1")).await;
        assert_eq!(first.json, json!({"value": 100.0, "replayed": false}));
        for i in 0..=ENTRIES_MAX {
            let fresh = send_from(
                from,
                addr,
                accumulate("attacker", 1.0, &format!("attack-{i}")),
            )
            .await;
            assert_eq!(fresh.status, StatusCode::OK, "{}", fresh.json);
        }
        let retry = send_from(victim, addr, accumulate("victim", 100.0, "victim-1")).await;
        assert_eq!(
            retry.json,
            json!({"value": value, "replayed": replayed}),
            "attacker at {from}"
        );
        assert_eq!(retry.replayed(), replayed);
        assert_eq!(state.get("victim", None).await.expect("read"), value);
    }
}
