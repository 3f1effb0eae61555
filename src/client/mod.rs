//! The abacus client: a tower stack of small, composable layers over a tonic
//! channel, and a facade with one method per RPC.
//!
//! The stack, outermost first:
//!
//! ```text
//! RequestId   attach one ID per logical call (exactly-once mode)
//! Deadline    stamp and enforce the overall deadline
//! Observe     trace the call's start and outcome
//! Retry       backoff with full jitter, budget, pushback, delivery mode;
//!  / Hedge    or, for calls that may be repeated, hedging (A6)
//! Balance     pick an endpoint per attempt: p2c over peak-EWMA, avoiding
//!             the endpoints the call already tried, ejected ones, and
//!             ones NOT_SERVING for the method
//!   per endpoint:
//!   Breaker   fail fast while the endpoint keeps failing
//!   Attempt   per-attempt timeout (clipped to the deadline); trace attempts
//!   Transport one tonic RPC on the endpoint's connection; classify failures
//! ```
//!
//! One endpoint ([`Client::new`]) is a set of one: the same stack.
//!
//! # Layout
//! - [`call`]: the typed [`Call`] (one [`Request`]) and [`Reply`] that flow
//!   through the stack.
//! - [`error`]: [`CallError`], which says whether the request was applied.
//! - [`mode`]: [`Delivery`] semantics (at-most-once, at-least-once, exactly-once).
//! - [`request_id`], [`deadline`], [`observe`], [`retry`], [`hedge`],
//!   [`balance`], [`breaker`], [`attempt`]: the layers.
//! - [`service_config`]: the retry policy in gRPC service-config JSON.
//! - [`transport`]: the innermost service; builds channels over any connector.
//! - [`tls`]: TLS settings applied to an endpoint; [`credentials`]: the
//!   bearer token sent on every attempt.
//! - [`metrics`]: a recorder of gRFC A66's client series and the
//!   resilience counters, installed as an event hook.

pub mod attempt;
pub mod balance;
pub mod breaker;
pub mod call;
pub mod credentials;
pub mod deadline;
pub mod error;
pub mod hedge;
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

use tonic::{Code, transport::Channel};
use tower::{Layer, ServiceBuilder, ServiceExt, util::BoxCloneSyncService};

pub use attempt::AttemptLayer;
pub use balance::{
    Balance, BalanceConfig, BalanceHandle, Balancing, DnsResolver, EndpointSnapshot,
    ManualResolver, Resolve, ResolveError, StaticResolver,
};
pub use breaker::{BreakerConfig, BreakerHandle, BreakerLayer};
pub use call::{Call, Reply, Request};
pub use credentials::BearerToken;
pub use deadline::DeadlineLayer;
pub use error::{CallError, Cause};
pub use hedge::{HedgeConfig, HedgePolicy};
pub use mode::Delivery;
pub use observe::ObserveLayer;
pub use request_id::{IdGenerator, RequestIdLayer};
pub use retry::{ResendCounters, RetryConfig, RetryLayer, RetryPolicy, Throttle};
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
    /// Retry policy (attempts, backoff, retryable codes, throttle).
    pub retry: RetryConfig,
    /// Hedging for the calls that may be repeated (pure RPCs, `Accumulate`
    /// with a request ID); they are then hedged instead of retried. `None`:
    /// every call is retried.
    pub hedge: Option<HedgeConfig>,
    /// Circuit breaker, one per endpoint; `None` disables it.
    pub breaker: Option<BreakerConfig>,
    /// How attempts are spread over the endpoints and who is ejected.
    pub balance: BalanceConfig,
    /// Name of the endpoint [`Client::new`] sends to, for events (e.g. its
    /// address). Clients over several endpoints name each by its address.
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
            hedge: None,
            breaker: Some(BreakerConfig::default()),
            balance: BalanceConfig::default(),
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
    /// Hedging settings out of range.
    #[error(transparent)]
    Hedge(#[from] hedge::HedgeConfigError),
    /// A zero or absurd latency decay.
    #[error("the latency estimate's decay must be between 100 ms and 10 minutes")]
    Decay,
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
        if let Some(h) = &self.hedge {
            h.validate()?;
        }
        if let Some(b) = &self.breaker {
            b.validate()?;
        }
        let decay = self.balance.decay;
        if decay < Duration::from_millis(100) || decay > Duration::from_secs(600) {
            return Err(ClientConfigError::Decay);
        }
        if self.balance.resolve_every < Duration::from_millis(1) {
            return Err(ClientConfigError::Timeout("re-resolution interval"));
        }
        Ok(())
    }
}

type Stack = BoxCloneSyncService<Call, Reply, CallError>;

/// What sits below the balancer for each endpoint (the breaker is the
/// balancer's, per endpoint: see [`balance`]).
pub type EndpointService = attempt::Attempt<Transport>;

/// Makes the channel to an endpoint from its name: [`tcp_channel_with`] on
/// real sockets, a simulated connector in the simulation.
pub type Connect = Arc<dyn Fn(&str) -> Result<Channel, ChannelError> + Send + Sync>;

/// A calculator client. Cheap to clone; clones share the endpoints, their
/// connections and breakers, the retry throttle and the call counter.
#[derive(Clone)]
pub struct Client {
    stack: Stack,
    next_call: Arc<AtomicU64>,
    retry: Option<RetryLayer>,
    balance: Option<BalanceHandle>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// The per-endpoint stack below the balancer.
fn endpoint_service(name: &str, channel: Channel, config: &ClientConfig) -> EndpointService {
    AttemptLayer::new(config.attempt_timeout, config.events.clone())
        .for_endpoint(name)
        .layer(Transport::new(channel).with_token(config.token.clone()))
}

impl Client {
    /// A client over one endpoint, `channel`, named `config.endpoint`.
    ///
    /// # Panics
    /// If `config` holds an invalid breaker configuration: call
    /// [`ClientConfig::validate`] first when the configuration comes from a
    /// user.
    pub fn new(channel: Channel, config: ClientConfig) -> Self {
        let name = config.endpoint.clone();
        Self::with_endpoints([(name, channel)], config)
    }

    /// A client over a fixed set of endpoints, each a name (for events and
    /// snapshots) and its channel; its health is watched over the same
    /// channel when `config.balance.health_check` is on.
    pub fn with_endpoints(
        endpoints: impl IntoIterator<Item = (String, Channel)>,
        config: ClientConfig,
    ) -> Self {
        let (client, balance) = Self::build(&config);
        for (name, channel) in endpoints {
            let service = endpoint_service(&name, channel.clone(), &config);
            balance.insert(&name, service, Some(channel));
        }
        client
    }

    /// A client over the endpoints `resolver` names, each dialled with
    /// `connect`, resolved again every `config.balance.resolve_every` in
    /// the background (endpoints come and go with the answer; a failed or
    /// empty answer keeps the set). Fails if the first resolution does, or
    /// finds nothing.
    pub async fn resolve(
        resolver: Arc<dyn Resolve>,
        connect: Connect,
        config: ClientConfig,
    ) -> Result<Self, ResolveError> {
        let names = resolver.resolve().await?;
        if names.is_empty() {
            return Err(ResolveError::Empty);
        }
        let (client, balance) = Self::build(&config);
        let make: balance::MakeEndpoint<EndpointService> = {
            let config = config.clone();
            Arc::new(move |name: &str| match connect(name) {
                Ok(channel) => Some((
                    endpoint_service(name, channel.clone(), &config),
                    Some(channel),
                )),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot dial a resolved endpoint");
                    None
                }
            })
        };
        for name in balance::within_limit(&names) {
            if let Some((service, channel)) = make(name) {
                balance.insert(name, service, channel);
            }
        }
        balance.refresh_from(resolver, make);
        Ok(client)
    }

    /// A client over real TCP to `targets`: `host:port`, or several
    /// comma-separated; a name resolving to several addresses gives one
    /// endpoint per address (see [`DnsResolver`]).
    pub async fn connect(targets: &str, config: ClientConfig) -> Result<Self, ResolveError> {
        Self::connect_with(targets, None, config).await
    }

    /// [`Client::connect`] with TLS to every endpoint when `tls` is given.
    /// A name resolving to several addresses is dialled by address: give
    /// the certificate's name with [`ClientTls::with_server_name`].
    pub async fn connect_with(
        targets: &str,
        tls: Option<ClientTls>,
        config: ClientConfig,
    ) -> Result<Self, ResolveError> {
        let resolver = DnsResolver::parse(targets)?;
        let connect: Connect = Arc::new(move |name: &str| tcp_channel_with(name, tls.as_ref()));
        Self::resolve(Arc::new(resolver), connect, config).await
    }

    /// The stack above the endpoints, and the balancer to fill.
    fn build(config: &ClientConfig) -> (Self, Balance<EndpointService>) {
        let seed = config.seed.unwrap_or_else(request_id::os_seed);
        let ids = match config.seed {
            Some(s) => IdGenerator::seeded(s ^ 0x05ee_d1d5),
            None => IdGenerator::os(),
        };
        let events = config.events.clone();
        let policy = RetryPolicy::new(config.retry.clone(), config.mode);
        let retry = match &config.hedge {
            Some(h) => {
                RetryLayer::hedged(policy, HedgePolicy::new(h.clone()), seed, events.clone())
            }
            None => RetryLayer::new(policy, seed, events.clone()),
        };
        if let Some(b) = &config.breaker {
            // The documented panic: a user's configuration is validated
            // before it gets here.
            if let Err(e) = b.validate() {
                panic!("invalid breaker config: {e}");
            }
        }
        let balance = Balance::new(
            config.balance.clone(),
            config.breaker.clone(),
            seed,
            events.clone(),
        );
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
            .layer(ObserveLayer::new(events))
            .layer(retry.clone())
            .service(balance.clone());
        let client = Self {
            stack: BoxCloneSyncService::new(stack),
            next_call: Arc::new(AtomicU64::new(1)),
            retry: Some(retry),
            balance: Some(balance.handle()),
        };
        (client, balance)
    }

    /// A client over a stack you composed yourself from this module's
    /// layers (or your own), e.g. to add a layer or to leave one out.
    pub fn from_stack(stack: BoxCloneSyncService<Call, Reply, CallError>) -> Self {
        Self {
            stack,
            next_call: Arc::new(AtomicU64::new(1)),
            retry: None,
            balance: None,
        }
    }

    /// The breaker of the first endpoint, if the stack has one (for a
    /// single-endpoint client, its breaker).
    pub fn breaker(&self) -> Option<BreakerHandle> {
        let (_, b) = self.balance.as_ref()?.breakers().into_iter().next()?;
        Some(b)
    }

    /// The endpoint set (`None` for a stack composed with
    /// [`Client::from_stack`]).
    pub fn balance(&self) -> Option<&BalanceHandle> {
        self.balance.as_ref()
    }

    /// Every endpoint now: breaker, health, latency, attempts.
    pub fn endpoints(&self) -> Vec<EndpointSnapshot> {
        self.balance
            .as_ref()
            .map(BalanceHandle::endpoints)
            .unwrap_or_default()
    }

    /// What the retry and hedging policies counted (`None` for a stack
    /// composed with [`Client::from_stack`]).
    pub fn counters(&self) -> Option<ResendCounters> {
        Some(self.retry.as_ref()?.counters())
    }

    /// What is left in the retry throttle (`None` when throttling is off or
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

    /// Removes `register`: its last value, or `None` when it did not exist
    /// (deleting is idempotent, so a retried delete is harmless).
    pub async fn delete(&self, register: &str) -> Result<Option<f64>, CallError> {
        let request = Request::DeleteRegister {
            register: register.to_owned(),
        };
        match self.call(request).await? {
            Reply::Deleted { deleted, value } => Ok(deleted.then_some(value)),
            other => Err(wrong_reply(Method::DeleteRegister, &other)),
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
