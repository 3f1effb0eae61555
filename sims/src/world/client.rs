//! Client hosts' stacks: the library's own ([`Client::new`]), or a
//! deliberately broken composition of its layers, used as a negative
//! control to prove the checker sees the bug it causes.

use abacus::{
    client::{
        AttemptLayer, Call, Client, ClientConfig, DeadlineLayer, ObserveLayer, RetryLayer,
        RetryPolicy, Transport,
    },
    trace::EventSink,
};
use tower::{ServiceBuilder, util::BoxCloneSyncService};

use crate::{
    scenario::Scenario,
    seed::derive_seed,
    world::{net, server},
};

/// How the client's tower stack is put together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// `Client::new`: the real stack.
    Standard,
    /// BROKEN: a second retry layer around the first, so attempts multiply
    /// (a classic bug when retries are configured at two levels).
    DoubleRetry,
    /// BROKEN: announces the deadline but does not pass it down, so the
    /// retry loop and attempts ignore it.
    DeadlineNotEnforced,
}

/// The client configuration of `host` in the run of `seed`: the scenario's
/// policy, its own seeded streams, events into the run's history.
pub fn config(scenario: &Scenario, seed: u64, host: &str, events: EventSink) -> ClientConfig {
    ClientConfig {
        deadline: scenario.deadline,
        attempt_timeout: scenario.attempt_timeout,
        mode: scenario.mode,
        retry: scenario.retry.clone(),
        breaker: scenario.breaker.clone(),
        endpoint: server::HOST.into(),
        seed: Some(derive_seed(seed, host)),
        events,
    }
}

/// Builds the client for `stack`, connected to the server host.
pub fn build(stack: Stack, config: ClientConfig) -> Client {
    let channel = net::channel(server::HOST);
    let seed = config.seed.unwrap_or(0);
    let retry = || {
        RetryLayer::new(
            RetryPolicy::new(config.retry.clone(), config.mode),
            seed,
            config.events.clone(),
        )
    };
    match stack {
        Stack::Standard => Client::new(channel, config),
        Stack::DoubleRetry => Client::from_stack(BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(DeadlineLayer::new(config.deadline))
                .layer(ObserveLayer::new(config.events.clone()))
                .layer(retry())
                .layer(retry())
                .layer(AttemptLayer::new(
                    config.attempt_timeout,
                    config.events.clone(),
                ))
                .service(Transport::new(channel)),
        )),
        Stack::DeadlineNotEnforced => Client::from_stack(BoxCloneSyncService::new(
            ServiceBuilder::new()
                .map_request(move |mut call: Call| {
                    call.deadline = Some(tokio::time::Instant::now() + config.deadline);
                    call
                })
                .layer(ObserveLayer::new(config.events.clone()))
                .map_request(|mut call: Call| {
                    call.deadline = None;
                    call
                })
                .layer(retry())
                .layer(AttemptLayer::new(
                    config.attempt_timeout,
                    config.events.clone(),
                ))
                .service(Transport::new(channel)),
        )),
    }
}
