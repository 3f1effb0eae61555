//! The abacus client: a tower stack of small, composable layers over a tonic
//! channel, and a facade with one method per RPC.
//!
//! # Layout
//! - [`call`]: the typed [`Call`]/[`Reply`] that flow through the stack.
//! - [`error`]: [`CallError`], which says whether the request was applied.
//! - [`transport`]: the innermost service; sends one attempt, classifies
//!   failures, builds channels over any connector.

pub mod breaker;
pub mod call;
pub mod error;
pub mod transport;

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tower::{ServiceExt, util::BoxCloneSyncService};

pub use call::{Call, Method, Payload, Reply};
pub use error::{CallError, Cause};
pub use transport::{ConnectFailed, Transport, channel_with_connector, tcp_channel};

use crate::{
    pb,
    trace::{Event, EventSink, Outcome},
};

/// How the client behaves.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    /// Where events go.
    pub events: EventSink,
}

type Stack = BoxCloneSyncService<Call, Reply, CallError>;

/// A calculator client. Cheap to clone; clones share the channel and the
/// call counter.
#[derive(Clone)]
pub struct Client {
    stack: Stack,
    next_call: Arc<AtomicU64>,
    events: EventSink,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// A client over `channel`.
    pub fn new(channel: tonic::transport::Channel, config: ClientConfig) -> Self {
        let stack = BoxCloneSyncService::new(Transport::new(channel));
        Self {
            stack,
            next_call: Arc::new(AtomicU64::new(1)),
            events: config.events,
        }
    }

    /// Runs one logical call through the stack.
    pub async fn call(&self, method: Method, payload: Payload) -> Result<Reply, CallError> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let call = Call::new(id, method, payload);
        self.events.emit(Event::CallStarted {
            call: id,
            method: method.name(),
            request_id: call.request_id().to_owned(),
            deadline_ms: 0,
        });
        let result = self.stack.clone().oneshot(call).await;
        self.events.emit(match &result {
            Ok(reply) => Event::CallFinished {
                call: id,
                attempts: 1,
                result: format!("ok {reply}"),
                outcome: Outcome::Applied,
            },
            Err(e) => Event::CallFinished {
                call: id,
                attempts: e.attempts,
                result: format!("err {:?}", e.code),
                outcome: e.outcome,
            },
        });
        result
    }

    async fn binary(&self, method: Method, a: f64, b: f64) -> Result<f64, CallError> {
        match self
            .call(method, Payload::Binary(pb::BinaryRequest { a, b }))
            .await?
        {
            Reply::Calc(v) => Ok(v),
            other => unreachable!("{method:?} answered {other:?}"),
        }
    }

    /// `a + b`
    pub async fn add(&self, a: f64, b: f64) -> Result<f64, CallError> {
        self.binary(Method::Add, a, b).await
    }

    /// `a - b`
    pub async fn subtract(&self, a: f64, b: f64) -> Result<f64, CallError> {
        self.binary(Method::Subtract, a, b).await
    }

    /// `a * b`
    pub async fn multiply(&self, a: f64, b: f64) -> Result<f64, CallError> {
        self.binary(Method::Multiply, a, b).await
    }

    /// `a / b`
    pub async fn divide(&self, a: f64, b: f64) -> Result<f64, CallError> {
        self.binary(Method::Divide, a, b).await
    }

    /// Adds `delta` to `register` with an explicit request ID (`""` for none).
    /// Returns the new value and whether the server replayed it.
    pub async fn accumulate_with_id(
        &self,
        register: &str,
        delta: f64,
        request_id: &str,
    ) -> Result<(f64, bool), CallError> {
        let payload = Payload::Accumulate(pb::AccumulateRequest {
            register: register.to_owned(),
            delta,
            request_id: request_id.to_owned(),
        });
        match self.call(Method::Accumulate, payload).await? {
            Reply::Accumulated { value, replayed } => Ok((value, replayed)),
            other => unreachable!("Accumulate answered {other:?}"),
        }
    }

    /// Adds `delta` to `register`.
    pub async fn accumulate(&self, register: &str, delta: f64) -> Result<(f64, bool), CallError> {
        self.accumulate_with_id(register, delta, "").await
    }

    /// Reads `register`.
    pub async fn get(&self, register: &str) -> Result<f64, CallError> {
        let payload = Payload::GetRegister(pb::GetRegisterRequest {
            register: register.to_owned(),
        });
        match self.call(Method::GetRegister, payload).await? {
            Reply::Register(v) => Ok(v),
            other => unreachable!("GetRegister answered {other:?}"),
        }
    }

    /// The server's counters.
    pub async fn stats(&self) -> Result<pb::Stats, CallError> {
        match self.call(Method::GetStats, Payload::GetStats).await? {
            Reply::Stats(s) => Ok(s),
            other => unreachable!("GetStats answered {other:?}"),
        }
    }
}
