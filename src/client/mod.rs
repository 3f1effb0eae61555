//! The abacus client: a tower stack of small, composable layers over a tonic
//! channel, and a facade with one method per RPC.
//!
//! The stack, outermost first:
//!
//! ```text
//! RequestId   attach one ID per logical call (exactly-once mode)
//! Deadline    stamp and enforce the overall deadline
//! Observe     trace the call's start and outcome
//! Retry       backoff with full jitter, budget, pushback, delivery mode
//! Breaker     per endpoint: fail fast while the server keeps failing
//! Attempt     per-attempt timeout (clipped to the deadline); trace attempts
//! Transport   one tonic RPC; classify the failure's outcome
//! ```
//!
//! # Layout
//! - [`call`]: the typed [`Call`] (one [`Request`]) and [`Reply`] that flow
//!   through the stack.
//! - [`error`]: [`CallError`], which says whether the request was applied.
//! - [`mode`]: [`Delivery`] semantics (at-most-once, at-least-once, exactly-once).
//! - [`request_id`], [`deadline`], [`observe`], [`retry`], [`breaker`],
//!   [`attempt`]: the layers.
//! - [`service_config`]: the retry policy in gRPC service-config JSON.
//! - [`transport`]: the innermost service; builds channels over any connector.
//! - [`tls`]: TLS settings applied to an endpoint; [`credentials`]: the
//!   bearer token sent on every attempt.
//! - [`metrics`]: a recorder of gRFC A66's client series and the
//!   resilience counters, installed as an event hook.

pub mod attempt;
pub mod breaker;
pub mod call;
pub mod credentials;
pub mod deadline;
pub mod error;
pub mod metrics;
pub mod mode;
pub mod observe;
pub mod request_id;
pub mod retry;
pub mod service_config;
pub mod tls;
pub mod transport;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tonic::Code;
use tower::{ServiceBuilder, ServiceExt, util::BoxCloneSyncService};

pub use attempt::AttemptLayer;
pub use breaker::{BreakerConfig, BreakerHandle, BreakerLayer};
pub use call::{Call, Reply, Request};
pub use credentials::BearerToken;
pub use deadline::DeadlineLayer;
pub use error::{CallError, Cause};
pub use mode::Delivery;
pub use observe::ObserveLayer;
pub use request_id::{IdGenerator, RequestIdLayer};
pub use retry::{RetryConfig, RetryLayer, RetryPolicy};
pub use service_config::{ServiceConfig, ServiceConfigError};
pub use tls::ClientTls;
pub use transport::{
    ChannelError, ConnectFailed, InvalidAddress, Transport, channel_with_connector, tcp_channel,
    tcp_channel_with,
};

use crate::{
    core::BinaryOp,
    pb,
    rpc::Method,
    trace::{EventSink, Outcome},
};

/// How the client behaves. `Default` is a sensible production policy.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Overall deadline of one logical call, retries and pauses included.
    pub deadline: Duration,
    /// Timeout of one attempt (clipped to what is left of the deadline).
    pub attempt_timeout: Duration,
    /// Delivery semantics for mutating calls.
    pub mode: Delivery,
    /// Retry policy (attempts, backoff, retryable codes, budget).
    pub retry: RetryConfig,
    /// Circuit breaker for the endpoint; `None` disables it.
    pub breaker: Option<BreakerConfig>,
    /// Name of the endpoint, for the breaker's events (e.g. its address).
    pub endpoint: String,
    /// Seed for jitter, breaker jitter and request IDs. `None`: the OS's
    /// randomness. Simulations always set it.
    pub seed: Option<u64>,
    /// Where events go.
    pub events: EventSink,
    /// Sent as `authorization: Bearer …` on every attempt, for servers
    /// that check tokens.
    pub token: Option<BearerToken>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(1),
            mode: Delivery::default(),
            retry: RetryConfig::default(),
            breaker: Some(BreakerConfig::default()),
            endpoint: "server".into(),
            seed: None,
            events: EventSink::default(),
            token: None,
        }
    }
}

/// A client configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientConfigError {
    /// Retry settings out of range.
    #[error(transparent)]
    Retry(#[from] retry::RetryConfigError),
    /// Breaker settings out of range.
    #[error("circuit breaker: {0}")]
    Breaker(#[from] breaker::BreakerConfigError),
    /// A zero or absurd timeout.
    #[error("{0} must be between 1 ms and 1 hour")]
    Timeout(&'static str),
}

impl ClientConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), ClientConfigError> {
        let ok = |d: Duration| d >= Duration::from_millis(1) && d <= Duration::from_secs(3600);
        if !ok(self.deadline) {
            return Err(ClientConfigError::Timeout("deadline"));
        }
        if !ok(self.attempt_timeout) {
            return Err(ClientConfigError::Timeout("attempt timeout"));
        }
        self.retry.validate()?;
        if let Some(b) = &self.breaker {
            b.validate()?;
        }
        Ok(())
    }
}

type Stack = BoxCloneSyncService<Call, Reply, CallError>;

/// A calculator client. Cheap to clone; clones share the channel, the retry
/// budget and the call counter.
#[derive(Clone)]
pub struct Client {
    stack: Stack,
    next_call: Arc<AtomicU64>,
    retry: Option<RetryLayer>,
    breaker: Option<BreakerHandle>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// A client over `channel` with the full resilient stack.
    ///
    /// # Panics
    /// If `config` holds an invalid breaker configuration: call
    /// [`ClientConfig::validate`] first when the configuration comes from a
    /// user.
    pub fn new(channel: tonic::transport::Channel, config: ClientConfig) -> Self {
        let seed = config.seed.unwrap_or_else(request_id::os_seed);
        let ids = match config.seed {
            Some(s) => IdGenerator::seeded(s ^ 0x05ee_d1d5),
            None => IdGenerator::os(),
        };
        let events = config.events.clone();
        let retry = RetryLayer::new(
            RetryPolicy::new(config.retry.clone(), config.mode),
            seed,
            events.clone(),
        );
        let breaker = config.breaker.clone().map(|b| {
            BreakerLayer::new(
                config.endpoint.clone(),
                b,
                seed.rotate_left(17),
                events.clone(),
            )
        });
        let handle = breaker.as_ref().map(BreakerLayer::handle);
        let stack = ServiceBuilder::new()
            .option_layer(
                config
                    .mode
                    .attaches_request_ids()
                    .then(|| RequestIdLayer::new(ids)),
            )
            // Below this layer every wait is already clipped to the deadline
            // (see `deadline`): a backstop timer would only cost.
            .layer(DeadlineLayer::new(config.deadline).without_backstop())
            .layer(ObserveLayer::new(events.clone()))
            .layer(retry.clone())
            .option_layer(breaker)
            .layer(AttemptLayer::new(config.attempt_timeout, events))
            .service(Transport::new(channel).with_token(config.token.clone()));
        Self {
            stack: BoxCloneSyncService::new(stack),
            next_call: Arc::new(AtomicU64::new(1)),
            retry: Some(retry),
            breaker: handle,
        }
    }

    /// A client over a stack you composed yourself from this module's
    /// layers (or your own), e.g. to add a layer or to leave one out.
    pub fn from_stack(stack: BoxCloneSyncService<Call, Reply, CallError>) -> Self {
        Self {
            stack,
            next_call: Arc::new(AtomicU64::new(1)),
            retry: None,
            breaker: None,
        }
    }

    /// The circuit breaker's handle (state, counters), if the stack has one.
    pub fn breaker(&self) -> Option<&BreakerHandle> {
        self.breaker.as_ref()
    }

    /// Tokens left in the retry budget (`None` when throttling is off or
    /// the stack was composed with [`Client::from_stack`]).
    pub fn retry_budget_tokens(&self) -> Option<f64> {
        self.retry.as_ref()?.budget_tokens()
    }

    /// Runs one logical call through the stack.
    pub async fn call(&self, request: Request) -> Result<Reply, CallError> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        self.stack.clone().oneshot(Call::new(id, request)).await
    }

    async fn binary(&self, op: BinaryOp, a: f64, b: f64) -> Result<f64, CallError> {
        match self.call(Request::Binary { op, a, b }).await? {
            Reply::Calc(v) => Ok(v),
            other => Err(wrong_reply(Method::from(op), &other)),
        }
    }

    /// `a + b`
    pub async fn add(&self, a: f64, b: f64) -> Result<f64, CallError> {
        self.binary(BinaryOp::Add, a, b).await
    }

    /// `a - b`
    pub async fn subtract(&self, a: f64, b: f64) -> Result<f64, CallError> {
        self.binary(BinaryOp::Subtract, a, b).await
    }

    /// `a * b`
    pub async fn multiply(&self, a: f64, b: f64) -> Result<f64, CallError> {
        self.binary(BinaryOp::Multiply, a, b).await
    }

    /// `a / b`
    pub async fn divide(&self, a: f64, b: f64) -> Result<f64, CallError> {
        self.binary(BinaryOp::Divide, a, b).await
    }

    /// Adds `delta` to `register` with an explicit request ID (`""` for none).
    /// Returns the new value and whether the server replayed it.
    pub async fn accumulate_with_id(
        &self,
        register: &str,
        delta: f64,
        request_id: &str,
    ) -> Result<(f64, bool), CallError> {
        let request = Request::Accumulate {
            register: register.to_owned(),
            delta,
            request_id: request_id.to_owned(),
        };
        match self.call(request).await? {
            Reply::Accumulated { value, replayed } => Ok((value, replayed)),
            other => Err(wrong_reply(Method::Accumulate, &other)),
        }
    }

    /// Adds `delta` to `register`.
    pub async fn accumulate(&self, register: &str, delta: f64) -> Result<(f64, bool), CallError> {
        self.accumulate_with_id(register, delta, "").await
    }

    /// Reads `register`.
    pub async fn get(&self, register: &str) -> Result<f64, CallError> {
        let request = Request::GetRegister {
            register: register.to_owned(),
        };
        match self.call(request).await? {
            Reply::Register(v) => Ok(v),
            other => Err(wrong_reply(Method::GetRegister, &other)),
        }
    }

    /// The server's counters.
    pub async fn stats(&self) -> Result<pb::Stats, CallError> {
        match self.call(Request::GetStats).await? {
            Reply::Stats(s) => Ok(s),
            other => Err(wrong_reply(Method::GetStats, &other)),
        }
    }
}

/// The error for a reply of another RPC than the one called. Only a stack
/// composed with [`Client::from_stack`] can produce one; it is reported,
/// not trusted and not panicked on. INTERNAL, and outcome unknown: whatever
/// answered may have sent the request somewhere.
fn wrong_reply(method: Method, reply: &Reply) -> CallError {
    CallError::new(
        Code::Internal,
        format!("{reply:?}"),
        Cause::WrongReply { method },
        Outcome::Unknown,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stack that answers every call with the same reply, right or wrong.
    fn answering(reply: Reply) -> Client {
        Client::from_stack(BoxCloneSyncService::new(tower::service_fn(
            move |_: Call| {
                let reply = reply.clone();
                async move { Ok::<_, CallError>(reply) }
            },
        )))
    }

    #[tokio::test]
    async fn a_wrong_reply_is_an_error_not_a_panic() {
        let stats = answering(Reply::Stats(pb::Stats::default()));
        let e = stats
            .add(1.0, 2.0)
            .await
            .expect_err("Add answered with stats");
        assert_eq!(e.code, Code::Internal);
        assert_eq!(
            e.cause,
            Cause::WrongReply {
                method: Method::Add
            }
        );
        assert_eq!(e.outcome, Outcome::Unknown);
        assert!(e.to_string().contains("Add got another RPC's reply"), "{e}");
        assert!(stats.accumulate("r", 1.0).await.is_err());
        assert!(stats.get("r").await.is_err());
        let calc = answering(Reply::Calc(3.0));
        assert!(calc.stats().await.is_err());
        // The right reply still gets through.
        assert_eq!(calc.add(1.0, 2.0).await, Ok(3.0));
    }
}
