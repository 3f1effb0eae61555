//! Client hosts' stacks: the library's own ([`Client::new`]), or a
//! deliberately broken composition of its layers, used as a negative
//! control to prove the checker sees the bug it causes; and [`Clients`],
//! what one client host calls the service through.

use abacus::{
    client::{
        AttemptLayer, BalanceConfig, Call, Client, ClientConfig, DeadlineLayer, ObserveLayer,
        RetryLayer, RetryPolicy, Transport,
    },
    trace::EventSink,
};

use tower::{ServiceBuilder, util::BoxCloneSyncService};

use crate::{
    history::History,
    scenario::Scenario,
    seed::derive_seed,
    world::{
        aware::{self, ReplicaClient},
        clock::Skew,
        net, server,
    },
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
    /// BROKEN (replica-aware client only): hedges `Accumulate`s whose
    /// request ID is taken off below the hedging layer, so the copies
    /// reach the replicas without one ([`aware::build`]).
    HedgeWithoutIds,
}

/// The client configuration of `host` in the run of `seed`, towards the
/// server host `endpoint`: the scenario's policy, its own seeded streams,
/// events into the run's history.
pub fn config(
    scenario: &Scenario,
    seed: u64,
    host: &str,
    endpoint: &str,
    events: EventSink,
) -> ClientConfig {
    on_host_clock(
        scenario,
        seed,
        host,
        true_clock_config(scenario, seed, host, endpoint, events),
    )
}

/// [`config`] before `host`'s clock skew is applied.
fn true_clock_config(
    scenario: &Scenario,
    seed: u64,
    host: &str,
    endpoint: &str,
    events: EventSink,
) -> ClientConfig {
    // The single server's client keeps the stream it always had, so its
    // scenarios replay as before; one client per replica gets one each.
    let stream = match scenario.replicated() {
        None => host.to_owned(),
        Some(_) => format!("{host}/{endpoint}"),
    };
    ClientConfig {
        deadline: scenario.deadline,
        attempt_timeout: scenario.attempt_timeout,
        mode: scenario.mode,
        retry: scenario.retry.clone(),
        hedge: None,
        breaker: scenario.breaker.clone(),
        // One server per client, never reporting NOT_SERVING: no health
        // watch, so the network carries only the scenario's calls.
        balance: BalanceConfig {
            health_check: false,
            ..BalanceConfig::default()
        },
        endpoint: endpoint.into(),
        seed: Some(derive_seed(seed, &stream)),
        events,
        token: None,
    }
}

/// `config` on `host`'s clock in the run of `seed`: scaled by its skew,
/// if the scenario skews clocks.
fn on_host_clock(scenario: &Scenario, seed: u64, host: &str, config: ClientConfig) -> ClientConfig {
    match scenario.skew(seed, host) {
        Some(skew) => skewed(config, skew),
        None => config,
    }
}

/// `config` as a client whose clock has `skew` lives it: every duration
/// it measures lasts `1 / (1 + rate)` times as long in real time.
fn skewed(mut config: ClientConfig, skew: Skew) -> ClientConfig {
    config.deadline = skew.real(config.deadline);
    config.attempt_timeout = skew.real(config.attempt_timeout);
    let backoff = &mut config.retry.backoff;
    backoff.initial = skew.real(backoff.initial);
    backoff.max = skew.real(backoff.max);
    if let Some(b) = &mut config.breaker {
        skew.breaker(b);
    }
    if let Some(h) = &mut config.hedge {
        h.delay = skew.real(h.delay);
    }
    config
}

/// Builds the client for `stack`, connected to `config.endpoint`.
pub fn build(stack: Stack, config: ClientConfig) -> Client {
    let channel = net::channel(&config.endpoint);
    let seed = config.seed.unwrap_or(0);
    let retry = || {
        RetryLayer::new(
            RetryPolicy::new(config.retry.clone(), config.mode),
            seed,
            config.events.clone(),
        )
    };
    match stack {
        Stack::Standard | Stack::HedgeWithoutIds => Client::new(channel, config),
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

/// What one client host calls the service through: one client per server
/// host it may reach, each named by its endpoint.
///
/// In the single-server world that is one client; in the replicated world
/// one single-endpoint client per replica, and the workload picks a
/// replica per logical call and fails over itself. This is the one place
/// that decides it: a replica-aware client (balancing and failover inside
/// the stack) becomes one entry here over every replica, and the
/// workload's own choice then has nothing to choose from.
#[derive(Debug, Clone)]
pub struct Clients {
    /// Never empty: the first endpoint apart.
    first: (String, Client),
    rest: Vec<(String, Client)>,
}

impl Clients {
    /// The clients of client host `host` in the run of `seed`. Must run
    /// inside the host (the channels are the host's). Each client's events
    /// go to the history as `host` in the single-server world, as
    /// `host/replica-N` in the replicated one (each client numbers its own
    /// calls, and each has its own breaker).
    pub fn build(scenario: &Scenario, seed: u64, host: &str, history: &History) -> Self {
        if let Some(ReplicaClient::Aware(a)) = scenario.replicated().map(|r| &r.client) {
            // One client over every replica: its events are the host's,
            // each attempt naming the replica it went to.
            let mut config =
                true_clock_config(scenario, seed, host, "replicas", history.sink(host));
            config.seed = Some(derive_seed(seed, host));
            config.balance = a.balance.clone();
            config.hedge = a.hedge.clone();
            let config = on_host_clock(scenario, seed, host, config);
            let client = aware::build(scenario.stack, &scenario.server_hosts(), config);
            return Self {
                first: ("replicas".to_owned(), client),
                rest: Vec::new(),
            };
        }
        let single = scenario.replicated().is_none();
        let client = |endpoint: String| {
            let label = if single {
                host.to_owned()
            } else {
                format!("{host}/{endpoint}")
            };
            let config = config(scenario, seed, host, &endpoint, history.sink(&label));
            let client = build(scenario.stack, config);
            (endpoint, client)
        };
        let mut endpoints = scenario.server_hosts().into_iter();
        let first = client(endpoints.next().unwrap_or_else(|| server::HOST.to_owned()));
        Self {
            first,
            rest: endpoints.map(client).collect(),
        }
    }

    /// How many endpoints there are to choose from (at least one).
    pub fn len(&self) -> usize {
        1 + self.rest.len()
    }

    /// Never: there is always a first endpoint.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The endpoint `i` names, counting round (`i` modulo [`Clients::len`]):
    /// its name and client.
    pub fn at(&self, i: usize) -> (&str, &Client) {
        let (name, client) = match i % self.len() {
            0 => &self.first,
            k => self.rest.get(k - 1).unwrap_or(&self.first),
        };
        (name, client)
    }
}
