//! The harness: a real server on a loopback socket, the raw generated
//! clients, and the one `check` through which every table runs.
//!
//! Calls go through `abacus::pb::calculator_client::CalculatorClient` (and
//! the health and reflection clients), never through `abacus::client`, so
//! these tests pin the *server's* wire behaviour whatever the client stack
//! becomes.

use std::{net::SocketAddr, time::Duration};

use abacus::{
    error::NOT_APPLIED_KEY,
    pb::{self, calculator_client::CalculatorClient},
    server::{self, FaultConfig, ServerConfig},
};
use prost::bytes::{Buf, BufMut};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{
    Code, Request, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

/// A server on `127.0.0.1:0`, stopped when dropped.
#[derive(Debug)]
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), server::ServeError>>,
}

impl TestServer {
    /// Binds before returning, so the port accepts connections at once: no
    /// readiness polling needed.
    pub(crate) async fn start(faults: FaultConfig) -> Self {
        Self::with_config(ServerConfig {
            faults,
            ..ServerConfig::default()
        })
        .await
    }

    /// A server with `config` (limits, faults, ...).
    pub(crate) async fn with_config(config: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(
            config,
            TcpListenerStream::new(listener),
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// A server without faults.
    pub(crate) async fn healthy() -> Self {
        Self::start(FaultConfig::default()).await
    }

    /// An eagerly connected channel.
    pub(crate) async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("valid uri")
            .connect()
            .await
            .expect("connect to the test server")
    }

    /// A connection to run `check` tables over.
    pub(crate) async fn conn(&self) -> Conn {
        Conn {
            channel: self.channel().await,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Graceful shutdown waits for open connections; the test is over,
        // so don't wait for it.
        self.task.abort();
    }
}

/// Which reflection protocol to speak.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reflection {
    V1,
    V1Alpha,
}

/// One call: the input of a `check` row.
#[derive(Debug, Clone)]
pub(crate) enum Rpc {
    Add(f64, f64),
    Subtract(f64, f64),
    Multiply(f64, f64),
    Divide(f64, f64),
    Accumulate {
        register: String,
        delta: f64,
        request_id: String,
    },
    Get(String),
    Stats,
    /// `grpc.health.v1.Health/Check` for a service name.
    Health(&'static str),
    /// `ListServices` over a reflection protocol.
    ListServices(Reflection),
    /// Raw bytes as the (already protobuf-encoded) request message of
    /// `path`; tonic still adds the 5-byte gRPC frame header.
    Raw {
        path: &'static str,
        body: Vec<u8>,
    },
    /// The inner call with a client `grpc-timeout` (`Request::set_timeout`).
    Timeout(Duration, Box<Rpc>),
}

/// `Accumulate` without a request ID.
pub(crate) fn acc(register: impl Into<String>, delta: f64) -> Rpc {
    Rpc::Accumulate {
        register: register.into(),
        delta,
        request_id: String::new(),
    }
}

/// `GetRegister`.
pub(crate) fn get(register: impl Into<String>) -> Rpc {
    Rpc::Get(register.into())
}

/// What a call gave back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Got {
    Value(f64),
    Accumulated { value: f64, replayed: bool },
    Stats { applied: u64, registers: u64 },
    Health(i32),
    Services(Vec<String>),
    Raw(Vec<u8>),
    Status(Code, String, Marker),
}

/// Whether an error status carried the server's not-applied marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Marker {
    NotApplied,
    None,
}

/// What a `check` row expects.
#[derive(Debug, Clone)]
pub(crate) enum Expect {
    Value(f64),
    Accumulated(f64),
    Stats {
        applied: u64,
        registers: u64,
    },
    Serving,
    /// The reflection listing includes all of these.
    Lists(&'static [&'static str]),
    Raw(Vec<u8>),
    /// Refused by abacus before applying: this code, a message containing
    /// the fragment, and the `abacus-not-applied` marker.
    Refused(Code, &'static str),
    /// A status without the marker (tonic's own, or an apply-then-drop).
    Failed(Code, &'static str),
    /// A status without the marker whose code is any of these.
    FailedAnyOf(&'static [Code], &'static str),
}

/// A client connection to a [`TestServer`].
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    pub(crate) channel: Channel,
}

impl Conn {
    /// Runs a table of rows in order (later rows may see earlier rows'
    /// effects).
    pub(crate) async fn check_all(&self, table: Vec<(Rpc, Expect)>) {
        for (rpc, expect) in table {
            self.check(rpc, expect).await;
        }
    }

    /// Runs `rpc` and asserts it gave `expect`.
    pub(crate) async fn check(&self, rpc: Rpc, expect: Expect) {
        let got = self.run(&rpc).await;
        let ok = match (&expect, &got) {
            (Expect::Value(want), Got::Value(v)) => v == want,
            (Expect::Accumulated(want), Got::Accumulated { value, replayed }) => {
                value == want && !replayed
            }
            (
                Expect::Stats { applied, registers },
                Got::Stats {
                    applied: a,
                    registers: r,
                },
            ) => applied == a && registers == r,
            (Expect::Serving, Got::Health(s)) => *s == ServingStatus::Serving as i32,
            (Expect::Lists(want), Got::Services(names)) => {
                want.iter().all(|w| names.iter().any(|n| n == w))
            }
            (Expect::Raw(want), Got::Raw(bytes)) => want == bytes,
            (Expect::Refused(code, fragment), Got::Status(c, msg, marker)) => {
                c == code && msg.contains(fragment) && *marker == Marker::NotApplied
            }
            (Expect::Failed(code, fragment), Got::Status(c, msg, marker)) => {
                c == code && msg.contains(fragment) && *marker == Marker::None
            }
            (Expect::FailedAnyOf(codes, fragment), Got::Status(c, msg, marker)) => {
                codes.contains(c) && msg.contains(fragment) && *marker == Marker::None
            }
            _ => false,
        };
        assert!(
            ok,
            "\n  call:     {rpc:?}\n  expected: {expect:?}\n  got:      {got:?}\n"
        );
    }

    /// Runs one call and flattens its result.
    pub(crate) async fn run(&self, rpc: &Rpc) -> Got {
        self.run_with(rpc, None).await.unwrap_or_else(got_status)
    }

    fn calc(&self) -> CalculatorClient<Channel> {
        CalculatorClient::new(self.channel.clone())
    }

    async fn run_with(&self, rpc: &Rpc, timeout: Option<Duration>) -> Result<Got, Status> {
        fn req<T>(msg: T, timeout: Option<Duration>) -> Request<T> {
            let mut r = Request::new(msg);
            if let Some(t) = timeout {
                r.set_timeout(t);
            }
            r
        }
        let binary = |a: f64, b: f64| req(pb::BinaryRequest { a, b }, timeout);
        let value = |r: tonic::Response<pb::CalcResponse>| Got::Value(r.into_inner().result);
        Ok(match rpc {
            Rpc::Add(a, b) => value(self.calc().add(binary(*a, *b)).await?),
            Rpc::Subtract(a, b) => value(self.calc().subtract(binary(*a, *b)).await?),
            Rpc::Multiply(a, b) => value(self.calc().multiply(binary(*a, *b)).await?),
            Rpc::Divide(a, b) => value(self.calc().divide(binary(*a, *b)).await?),
            Rpc::Accumulate {
                register,
                delta,
                request_id,
            } => {
                let msg = pb::AccumulateRequest {
                    register: register.clone(),
                    delta: *delta,
                    request_id: request_id.clone(),
                };
                let r = self
                    .calc()
                    .accumulate(req(msg, timeout))
                    .await?
                    .into_inner();
                Got::Accumulated {
                    value: r.value,
                    replayed: r.replayed,
                }
            }
            Rpc::Get(register) => {
                let msg = pb::GetRegisterRequest {
                    register: register.clone(),
                };
                Got::Value(
                    self.calc()
                        .get_register(req(msg, timeout))
                        .await?
                        .into_inner()
                        .value,
                )
            }
            Rpc::Stats => {
                let s = self
                    .calc()
                    .get_stats(req(pb::GetStatsRequest {}, timeout))
                    .await?
                    .into_inner();
                Got::Stats {
                    applied: s.applied,
                    registers: s.registers,
                }
            }
            Rpc::Health(service) => {
                let msg = HealthCheckRequest {
                    service: (*service).to_owned(),
                };
                let r = HealthClient::new(self.channel.clone())
                    .check(req(msg, timeout))
                    .await?;
                Got::Health(r.into_inner().status)
            }
            Rpc::ListServices(protocol) => Got::Services(self.list_services(*protocol).await?),
            Rpc::Raw { path, body } => {
                let mut grpc = tonic::client::Grpc::new(self.channel.clone());
                grpc.ready()
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                let path = PathAndQuery::from_static(path);
                let r = grpc
                    .unary(req(body.clone(), timeout), path, RawCodec)
                    .await?;
                Got::Raw(r.into_inner())
            }
            Rpc::Timeout(t, inner) => Box::pin(self.run_with(inner, Some(*t))).await?,
        })
    }

    async fn list_services(&self, protocol: Reflection) -> Result<Vec<String>, Status> {
        // One request on the bidirectional stream, one response back.
        match protocol {
            Reflection::V1 => {
                use v1::{
                    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                    server_reflection_request::MessageRequest,
                    server_reflection_response::MessageResponse,
                };
                let ask = ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(MessageRequest::ListServices(String::new())),
                };
                let mut stream = ServerReflectionClient::new(self.channel.clone())
                    .server_reflection_info(tokio_stream::iter([ask]))
                    .await?
                    .into_inner();
                match stream.message().await?.and_then(|r| r.message_response) {
                    Some(MessageResponse::ListServicesResponse(l)) => {
                        Ok(l.service.into_iter().map(|s| s.name).collect())
                    }
                    other => Err(Status::internal(format!("unexpected answer {other:?}"))),
                }
            }
            Reflection::V1Alpha => {
                use v1alpha::{
                    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                    server_reflection_request::MessageRequest,
                    server_reflection_response::MessageResponse,
                };
                let ask = ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(MessageRequest::ListServices(String::new())),
                };
                let mut stream = ServerReflectionClient::new(self.channel.clone())
                    .server_reflection_info(tokio_stream::iter([ask]))
                    .await?
                    .into_inner();
                match stream.message().await?.and_then(|r| r.message_response) {
                    Some(MessageResponse::ListServicesResponse(l)) => {
                        Ok(l.service.into_iter().map(|s| s.name).collect())
                    }
                    other => Err(Status::internal(format!("unexpected answer {other:?}"))),
                }
            }
        }
    }
}

fn got_status(s: Status) -> Got {
    let marker = if s.metadata().get(NOT_APPLIED_KEY).is_some() {
        Marker::NotApplied
    } else {
        Marker::None
    };
    Got::Status(s.code(), s.message().to_owned(), marker)
}

/// A codec that sends and receives message bytes verbatim, to put bytes on
/// the wire that no generated client would.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}
