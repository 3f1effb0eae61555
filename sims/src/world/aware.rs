//! The replica-aware client of a replicated world: one [`Client`] per
//! client host over every replica (`Client::with_endpoints`), so
//! balancing, ejection, retries steered to untried replicas and hedging
//! all happen inside the library's stack, and the workload has nothing to
//! choose. [`Aware`] is what a scenario sets; [`Bounds`] what its runs are
//! held to beyond the invariants every run is checked against.

use std::time::Duration;

use abacus::client::{
    AttemptLayer, Balance, BalanceConfig, Call, Client, ClientConfig, DeadlineLayer,
    EndpointService, HedgeConfig, HedgePolicy, IdGenerator, ObserveLayer, Request, RequestIdLayer,
    RetryLayer, RetryPolicy, Transport,
};
use tower::{Layer, ServiceBuilder, util::BoxCloneSyncService};

use crate::world::{Stack, net};

/// How the client hosts of a replicated world reach the replicas.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ReplicaClient {
    /// One single-endpoint client per replica; the workload picks a
    /// replica per logical call and fails over itself.
    #[default]
    PerReplica,
    /// One replica-aware client over every replica (boxed: most worlds
    /// have none, and `Topology` stays small).
    Aware(Box<Aware>),
}

/// The replica-aware client's policy, and what its runs promise.
#[derive(Debug, Clone, PartialEq)]
pub struct Aware {
    /// Balancing policy, health watching.
    pub balance: BalanceConfig,
    /// Hedging for the calls that may be repeated; `None` retries them.
    pub hedge: Option<HedgeConfig>,
    /// What every run is held to ([`crate::check::replicas`]).
    pub bounds: Bounds,
}

/// Time bounds a replica-aware scenario promises, in simulated time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bounds {
    /// Every call that takes no claim at the store (every method but
    /// `Accumulate`) succeeds, or is refused as a caller error, within
    /// this long of its start: one replica out costs at most one failed
    /// attempt, one pause and a fresh attempt elsewhere
    /// (`failover-within-bound`).
    pub failover: Option<Duration>,
    /// The 99th percentile (nearest rank) of the latency of every call
    /// that takes no claim, a failed call counting as endless, is at most
    /// this (`tail-within-bound`). A hedged `Accumulate` whose first
    /// attempt holds its claim waits for that attempt, as a second
    /// transaction waits on a row lock: hedging makes a write safe, not
    /// always fast.
    pub p99: Option<Duration>,
}

/// The replica-aware client for `config` over the replica hosts
/// `replicas`, composed as `stack` says. Must run inside the client host.
pub fn build(stack: Stack, replicas: &[String], config: ClientConfig) -> Client {
    let endpoints = replicas.iter().map(|h| (h.clone(), net::channel(h)));
    match stack {
        Stack::HedgeWithoutIds => hedged_without_ids(endpoints, &config),
        // The single-endpoint broken stacks have no multi-endpoint form:
        // a replica-aware scenario uses the library's own.
        Stack::Standard | Stack::DoubleRetry | Stack::DeadlineNotEnforced => {
            Client::with_endpoints(endpoints, config)
        }
    }
}

/// BROKEN (negative control): the library's stack over the same
/// endpoints, but the request ID is taken off each attempt *below* the
/// hedging layer. The hedging policy sees an `Accumulate` that carries an
/// ID and hedges it; the replicas receive two plain Accumulates and apply
/// both — what hedging a write without deduplication does.
fn hedged_without_ids(
    endpoints: impl Iterator<Item = (String, tonic::transport::Channel)>,
    config: &ClientConfig,
) -> Client {
    let seed = config.seed.unwrap_or_default();
    let events = config.events.clone();
    let balance: Balance<EndpointService> = Balance::new(
        config.balance.clone(),
        config.breaker.clone(),
        seed,
        events.clone(),
    );
    for (name, channel) in endpoints {
        let service = AttemptLayer::new(config.attempt_timeout, events.clone())
            .for_endpoint(&name)
            .layer(Transport::new(channel.clone()));
        balance.insert(&name, service, Some(channel));
    }
    let policy = RetryPolicy::new(config.retry.clone(), config.mode);
    let retry = match &config.hedge {
        Some(h) => RetryLayer::hedged(policy, HedgePolicy::new(h.clone()), seed, events.clone()),
        None => RetryLayer::new(policy, seed, events.clone()),
    };
    Client::from_stack(BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(RequestIdLayer::new(IdGenerator::seeded(seed ^ 0x05ee_d1d5)))
            .layer(DeadlineLayer::new(config.deadline))
            .layer(ObserveLayer::new(events))
            .layer(retry)
            .map_request(|mut call: Call| {
                if let Request::Accumulate { request_id, .. } = &mut call.request {
                    request_id.clear();
                }
                call
            })
            .service(balance),
    ))
}
