//! The three clients compared, each as a typical program would use it:
//! - gRPC: tonic's generated client over one `Channel` (one HTTP/2
//!   connection, calls multiplexed), protobuf bodies;
//! - REST over HTTP/1.1: hyper's client, keep-alive, one connection per
//!   concurrent caller (HTTP/1.1 cannot multiplex; a pool of N is what any
//!   HTTP/1.1 client library opens for N calls in flight), JSON bodies;
//! - REST over h2c: hyper's HTTP/2 client over one connection (prior
//!   knowledge, no upgrade), JSON bodies — the same protocol as gRPC with
//!   the REST encoding, which separates the protocol's share from the
//!   encoding's.
//!
//! Every connection goes through [`wire::Counting`]. The REST clients send
//! what a minimal real client sends: `host` (or `:authority`),
//! `content-type`, `content-length` (HTTP/1.1; h2 frames carry the length),
//! `user-agent`; tonic sends its own defaults (`content-type`, `te`,
//! `user-agent`).

use std::{net::SocketAddr, sync::Arc};

use abacus::{
    pb::{BinaryRequest, calculator_client::CalculatorClient},
    server::rest::json::{BinaryBody, ResultBody},
};
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Request,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::wire::{self, Counters};

/// A front and the protocol used to reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Front {
    Grpc,
    RestH1,
    RestH2c,
}

impl Front {
    pub(crate) const ALL: [Front; 3] = [Front::Grpc, Front::RestH1, Front::RestH2c];

    /// Column name in CSV and JSON.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Front::Grpc => "grpc",
            Front::RestH1 => "rest_h1",
            Front::RestH2c => "rest_h2c",
        }
    }

    /// Name in tables and plots.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Front::Grpc => "gRPC (h2, protobuf)",
            Front::RestH1 => "REST (HTTP/1.1, JSON)",
            Front::RestH2c => "REST (h2c, JSON)",
        }
    }
}

/// Where the two fronts listen.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    pub(crate) grpc: SocketAddr,
    pub(crate) rest: SocketAddr,
}

const USER_AGENT: &str = "abacus-bench/0.1";

/// One caller's handle on a front.
#[derive(Debug)]
pub(crate) enum Client {
    Grpc(CalculatorClient<Channel>),
    H1 {
        sender: http1::SendRequest<Full<Bytes>>,
        authority: String,
    },
    H2 {
        sender: http2::SendRequest<Full<Bytes>>,
        uri: Uri,
    },
}

/// One new connection to `front`, counted into `counters`.
pub(crate) async fn connect(
    front: Front,
    target: Target,
    counters: &Arc<Counters>,
) -> Result<Client, String> {
    match front {
        Front::Grpc => {
            let counters = Arc::clone(counters);
            let addr = target.grpc;
            let connector = tower::service_fn(move |_: Uri| {
                let counters = Arc::clone(&counters);
                async move { wire::connect(addr, &counters).await.map(TokioIo::new) }
            });
            let channel = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| e.to_string())?
                .connect_with_connector(connector)
                .await
                .map_err(|e| format!("gRPC connect: {e}"))?;
            Ok(Client::Grpc(CalculatorClient::new(channel)))
        }
        Front::RestH1 => {
            let io = wire::connect(target.rest, counters)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let (sender, conn) = http1::handshake(TokioIo::new(io))
                .await
                .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Client::H1 {
                sender,
                authority: target.rest.to_string(),
            })
        }
        Front::RestH2c => {
            let io = wire::connect(target.rest, counters)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .map_err(|e| format!("h2c handshake: {e}"))?;
            tokio::spawn(conn);
            let uri = format!("http://{}/v1/add", target.rest)
                .parse()
                .map_err(|e| format!("{e}"))?;
            Ok(Client::H2 { sender, uri })
        }
    }
}

/// Clients for `concurrency` callers: clones of one multiplexed connection
/// (gRPC, h2c) or one connection each (HTTP/1.1).
pub(crate) async fn connect_callers(
    front: Front,
    target: Target,
    concurrency: usize,
    counters: &Arc<Counters>,
) -> Result<Vec<Client>, String> {
    match front {
        Front::RestH1 => {
            let mut clients = Vec::with_capacity(concurrency);
            for _ in 0..concurrency {
                clients.push(connect(front, target, counters).await?);
            }
            Ok(clients)
        }
        Front::Grpc | Front::RestH2c => {
            let one = connect(front, target, counters).await?;
            Ok((0..concurrency).map(|_| one.share()).collect())
        }
    }
}

fn json_request(
    builder: hyper::http::request::Builder,
    a: f64,
    b: f64,
) -> Result<Request<Full<Bytes>>, String> {
    let body = serde_json::to_vec(&BinaryBody { a, b }).map_err(|e| e.to_string())?;
    builder
        .header("content-type", "application/json")
        .header("user-agent", USER_AGENT)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())
}

async fn json_result(response: hyper::Response<hyper::body::Incoming>) -> Result<f64, String> {
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    serde_json::from_slice::<ResultBody>(&bytes)
        .map(|r| r.result)
        .map_err(|e| format!("JSON: {e}"))
}

impl Client {
    /// Another handle on the same multiplexed connection.
    fn share(&self) -> Client {
        match self {
            Client::Grpc(c) => Client::Grpc(c.clone()),
            Client::H2 { sender, uri } => Client::H2 {
                sender: sender.clone(),
                uri: uri.clone(),
            },
            Client::H1 { .. } => unreachable!("HTTP/1.1 connections are not shared"),
        }
    }

    /// One `Add(a, b)`.
    pub(crate) async fn add(&mut self, a: f64, b: f64) -> Result<f64, String> {
        match self {
            Client::Grpc(client) => client
                .add(BinaryRequest { a, b })
                .await
                .map(|r| r.into_inner().result)
                .map_err(|s| format!("gRPC {}: {}", s.code(), s.message())),
            Client::H1 { sender, authority } => {
                sender.ready().await.map_err(|e| format!("HTTP/1.1: {e}"))?;
                let request = json_request(
                    Request::post("/v1/add").header("host", authority.as_str()),
                    a,
                    b,
                )?;
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| format!("HTTP/1.1: {e}"))?;
                json_result(response).await
            }
            Client::H2 { sender, uri } => {
                sender.ready().await.map_err(|e| format!("h2c: {e}"))?;
                let request = json_request(Request::post(uri.clone()), a, b)?;
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| format!("h2c: {e}"))?;
                json_result(response).await
            }
        }
    }
}
