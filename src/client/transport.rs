//! The innermost service of the client stack: sends one attempt of a
//! [`Call`] over a tonic channel and classifies its failure.
//!
//! Classification is conservative. A failure counts as *not applied* only
//! when that is certain: the connection was never established (our own
//! connector's [`ConnectFailed`] is in the error chain), or the server
//! attached its not-applied marker. Everything else that can follow a sent
//! request is *outcome unknown*.

use std::{
    error::Error as _,
    future::Future,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tonic::{
    Code, Status,
    metadata::MetadataValue,
    transport::{Channel, Endpoint, Uri},
};

use crate::{
    client::{
        call::{Call, CallFuture, Reply, Request},
        credentials::BearerToken,
        error::{CallError, Cause},
        tls::{self, ClientTls, ClientTlsError},
    },
    core::BinaryOp,
    error::{NOT_APPLIED_KEY, PUSHBACK_KEY},
    pb::{self, calculator_client::CalculatorClient},
    rpc::timeout::{GRPC_TIMEOUT_HEADER, encode_grpc_timeout},
    trace::Outcome,
};

/// Error our connectors return when a connection cannot be made, so the
/// transport can prove that nothing was sent.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {addr}: {source}")]
pub struct ConnectFailed {
    /// Where we tried to connect.
    pub addr: String,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// Builds a lazily-connecting channel to `uri` over `connector`, with HTTP/2
/// keepalive so a connection silently broken by a partition is noticed and
/// replaced rather than waited on forever.
pub fn channel_with_connector<C, IO, Fut>(uri: Uri, connector: C) -> Channel
where
    C: FnMut(Uri) -> Fut + Send + 'static,
    Fut: Future<Output = Result<IO, ConnectFailed>> + Send + 'static,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    connect_lazy(Endpoint::from(uri), connector)
}

/// [`channel_with_connector`] over an endpoint already configured (TLS).
fn connect_lazy<C, IO, Fut>(endpoint: Endpoint, connector: C) -> Channel
where
    C: FnMut(Uri) -> Fut + Send + 'static,
    Fut: Future<Output = Result<IO, ConnectFailed>> + Send + 'static,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let mut connector = connector;
    let service = tower::service_fn(move |uri: Uri| {
        let fut = connector(uri);
        async move { fut.await.map(TokioIo::new) }
    });
    endpoint
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(1))
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(service)
}

/// An address that is not `host:port`.
#[derive(Debug, thiserror::Error)]
#[error("{addr:?} is not a server address: expected host:port, e.g. 127.0.0.1:50051")]
pub struct InvalidAddress {
    /// What was given.
    pub addr: String,
}

/// A channel to `addr` (`host:port`) over real TCP.
pub fn tcp_channel(addr: &str) -> Result<Channel, InvalidAddress> {
    tcp_channel_with(addr, None).map_err(|e| match e {
        ChannelError::Address(e) => e,
        // Without TLS settings there is nothing else to fail.
        ChannelError::Tls(_) => InvalidAddress {
            addr: addr.to_owned(),
        },
    })
}

/// A channel cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// Not `host:port`.
    #[error(transparent)]
    Address(#[from] InvalidAddress),
    /// TLS settings refused.
    #[error(transparent)]
    Tls(#[from] ClientTlsError),
}

/// A channel to `addr` (`host:port`) over real TCP, with TLS when `tls`
/// is given (the endpoint is then `https`, see [`ClientTls::apply`]).
pub fn tcp_channel_with(addr: &str, tls: Option<&ClientTls>) -> Result<Channel, ChannelError> {
    let invalid = || InvalidAddress {
        addr: addr.to_owned(),
    };
    let scheme = if tls.is_some() { tls::SCHEME } else { "http" };
    let uri: Uri = format!("{scheme}://{addr}")
        .parse()
        .map_err(|_| invalid())?;
    // Only an authority: a scheme or path in `addr` would have ended up in
    // the path of this URI.
    if uri.authority().is_none() || uri.path() != "/" || uri.port_u16().is_none() {
        return Err(invalid().into());
    }
    let mut endpoint = Endpoint::from(uri);
    if let Some(tls) = tls {
        endpoint = tls.apply(endpoint)?;
    }
    Ok(connect_lazy(endpoint, |uri: Uri| async move {
        let addr = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        match tokio::net::TcpStream::connect(&addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Err(source) => Err(ConnectFailed { addr, source }),
        }
    }))
}

/// Sends calls over a tonic channel.
///
/// The layers above clone the stack for every call (the tower idiom:
/// `clone` + `oneshot`, and the retry layer keeps its own copy), so the
/// client sits behind an `Arc`: those clones cost a reference count, and
/// the one real client clone per attempt happens in `Transport`'s `call`,
/// where tonic needs it (its calls borrow the client mutably for as long
/// as they run).
#[derive(Debug, Clone)]
pub struct Transport {
    client: Arc<CalculatorClient<Channel>>,
    /// Sent on every attempt, when the server checks tokens.
    token: Option<BearerToken>,
}

impl Transport {
    /// A transport over `channel`.
    pub fn new(channel: Channel) -> Self {
        Self {
            client: Arc::new(CalculatorClient::new(channel)),
            token: None,
        }
    }

    /// Sends `token` as `authorization: Bearer …` on every attempt.
    pub fn with_token(mut self, token: Option<BearerToken>) -> Self {
        self.token = token;
        self
    }
}

/// Wraps one attempt's message with its metadata: the time left before
/// `deadline`, and how many attempts came before this one.
fn request<T>(
    msg: T,
    deadline: Option<Instant>,
    attempt: u32,
    token: Option<&BearerToken>,
) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(token) = token {
        token.apply(req.metadata_mut());
    }
    if let Some(deadline) = deadline {
        // Tell the server how long we will wait, so it can stop work that
        // nobody will collect.
        let remaining = deadline.saturating_duration_since(Instant::now());
        // From the `String` itself: its buffer becomes the header value,
        // where parsing a `&str` would copy it.
        if let Ok(v) = MetadataValue::try_from(encode_grpc_timeout(remaining)) {
            req.metadata_mut().insert(GRPC_TIMEOUT_HEADER, v);
        }
    }
    if attempt > 1 {
        req.metadata_mut().insert(
            "grpc-previous-rpc-attempts",
            MetadataValue::from(attempt - 1),
        );
    }
    req
}

/// Turns a tonic status into a classified attempt error.
pub fn classify(status: &Status) -> CallError {
    let pushback_ms = status
        .metadata()
        .get(PUSHBACK_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let server_says_not_applied = status.metadata().get(NOT_APPLIED_KEY).is_some();
    if in_chain::<tonic::TimeoutExpired>(status) {
        // tonic's channel enforces the `grpc-timeout` we send, at the same
        // instant as our attempt timeout: it is the same event.
        return CallError::new(
            Code::DeadlineExceeded,
            "attempt timed out",
            Cause::AttemptTimeout,
            Outcome::Unknown,
        );
    }
    // tonic's `ConnectError` wraps every failure to establish a connection,
    // our connector's and the TLS handshake's (a wrong CA, an expired
    // certificate): no request goes out before both succeed.
    let never_connected =
        in_chain::<ConnectFailed>(status) || in_chain::<tonic::ConnectError>(status);
    let (cause, outcome) = if never_connected {
        (Cause::Connect, Outcome::NotApplied)
    } else if server_says_not_applied {
        (Cause::Status, Outcome::NotApplied)
    } else if status.source().is_some() {
        (Cause::Transport, Outcome::Unknown)
    } else {
        (Cause::Status, Outcome::Unknown)
    };
    let mut err = CallError::new(status.code(), status.message(), cause, outcome);
    err.pushback_ms = pushback_ms;
    if err.cause == Cause::Transport {
        // A failure of our own connection (hyper/h2 report a reset or closed
        // connection as UNKNOWN or CANCELLED) is, for the caller, the
        // transient UNAVAILABLE of the gRPC spec: the server did not answer.
        err.code = Code::Unavailable;
    }
    err
}

/// True when an error of type `E` is in the status's source chain.
fn in_chain<E: std::error::Error + 'static>(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = status.source();
    while let Some(err) = source {
        if err.is::<E>() {
            return true;
        }
        source = err.source();
    }
    false
}

impl tower::Service<Call> for Transport {
    type Response = Reply;
    type Error = CallError;
    type Future = CallFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), CallError>> {
        // The tonic client buffers internally; readiness is checked per call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let mut client = CalculatorClient::clone(&self.client);
        // The call is ours: move its request into the message rather than
        // cloning it on every attempt. Each request variant names its RPC,
        // so nothing here can send one RPC's message as another's.
        let (deadline, attempt) = (call.effective_deadline(), call.attempt);
        let token = self.token.clone();
        Box::pin(async move {
            let result = match call.request {
                Request::Binary { op, a, b } => {
                    let req = request(
                        pb::BinaryRequest { a, b },
                        deadline,
                        attempt,
                        token.as_ref(),
                    );
                    let resp = match op {
                        BinaryOp::Add => client.add(req).await,
                        BinaryOp::Subtract => client.subtract(req).await,
                        BinaryOp::Multiply => client.multiply(req).await,
                        BinaryOp::Divide => client.divide(req).await,
                    };
                    resp.map(|r| Reply::Calc(r.into_inner().result))
                }
                Request::Accumulate {
                    register,
                    delta,
                    request_id,
                } => {
                    let msg = pb::AccumulateRequest {
                        register,
                        delta,
                        request_id,
                    };
                    client
                        .accumulate(request(msg, deadline, attempt, token.as_ref()))
                        .await
                        .map(|r| {
                            let r = r.into_inner();
                            Reply::Accumulated {
                                value: r.value,
                                replayed: r.replayed,
                            }
                        })
                }
                Request::GetRegister { register } => client
                    .get_register(request(
                        pb::GetRegisterRequest { register },
                        deadline,
                        attempt,
                        token.as_ref(),
                    ))
                    .await
                    .map(|r| Reply::Register(r.into_inner().value)),
                Request::DeleteRegister { register } => client
                    .delete_register(request(
                        pb::DeleteRegisterRequest { register },
                        deadline,
                        attempt,
                        token.as_ref(),
                    ))
                    .await
                    .map(|r| {
                        let r = r.into_inner();
                        Reply::Deleted {
                            deleted: r.deleted,
                            value: r.value,
                        }
                    }),
                Request::GetStats => client
                    .get_stats(request(
                        pb::GetStatsRequest {},
                        deadline,
                        attempt,
                        token.as_ref(),
                    ))
                    .await
                    .map(|r| Reply::Stats(r.into_inner())),
            };
            result.map_err(|status| classify(&status))
        })
    }
}
