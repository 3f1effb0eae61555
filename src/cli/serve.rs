//! `abacus serve`: the real server on a TCP socket, with optional seeded
//! faults for demos, dedup limits, and durable state (`--data-dir`).
//!
//! With `--rest-addr`, the REST twin is served by the same process over the
//! same [`Calculator`]: one state means one set of registers and one dedup
//! store, so a register written through one front is read through the
//! other, and an `Idempotency-Key` and a gRPC `request_id` are the same
//! record. Two processes would need a shared store (and its failure modes)
//! to promise that.

use std::{
    net::SocketAddr, num::NonZeroU32, ops::RangeInclusive, path::PathBuf, process::ExitCode,
    sync::Arc,
};

use clap::Args;

use crate::{
    client::request_id::os_seed,
    resilience::breaker::BreakerConfig,
    server::{
        self, Calculator, DedupConfig, Edge, FaultConfig, Limits, ServerConfig,
        auth::{self, Authenticator, RateLimit},
        faults::parse_delay_range,
        limits::{connections_max_for_fds, open_files_limit},
        metrics::ServerMetrics,
        tls::ServerTls,
    },
    store::{
        Ledger, MemoryLedger,
        guard::{GuardConfig, GuardedLedger, config as guard_defaults},
        postgres::{PgConfig, PgLedger, config::idle_in_transaction_timeout_for},
        redb::RedbLedger,
    },
    trace::EventSink,
};

/// Arguments of `abacus serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,
    /// Also serve the REST twin (HTTP/1.1 and h2c, JSON) on this address,
    /// over the same registers and dedup store as the gRPC front.
    #[arg(long, value_name = "ADDR")]
    pub rest_addr: Option<SocketAddr>,
    /// Calculator calls allowed in flight at once; beyond it, calls are
    /// refused at once with RESOURCE_EXHAUSTED and a retry pushback instead
    /// of queueing until every deadline has passed.
    #[arg(long, default_value_t = server::IN_FLIGHT_MAX_DEFAULT, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub in_flight_max: usize,
    /// Pushback (ms) sent with a shed call.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    pub shed_pushback_ms: u64,
    /// Also shed calls once tasks mostly wait longer than this (ms) for a
    /// thread: a saturated CPU, which the in-flight limit does not see
    /// (5 is CoDel's target). Experimental, so 0 (off) by default: see
    /// docs/operations.md for what it does and does not achieve.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub shed_queue_delay_ms: u64,
    /// Connections open at once per front. At the cap a new connection
    /// replaces one that never sent a byte or has been quiet for a second,
    /// else it is closed at once. Lowered automatically to fit the
    /// process's open-file limit (`ulimit -n`).
    #[arg(long, default_value_t = Limits::default().connections_max, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub connections_max: usize,
    /// Keep registers and dedup records in DIR (created if missing), so both
    /// survive a restart. Without it, state lives in memory and a restart
    /// resets registers and forgets which requests were applied.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where registers and dedup records live: `memory` (the default; this
    /// process only, lost on restart) or
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE`, a PostgreSQL database
    /// shared by replicas: every `abacus serve` given the same URL serves
    /// the same registers, and a request retried at any of them under the
    /// same request ID is applied once. The schema is created on first
    /// start. Not with --data-dir (a redb file: one node).
    #[arg(
        long,
        env = "ABACUS_STORE",
        hide_env_values = true,
        value_name = "memory|postgres://…"
    )]
    pub store: Option<String>,
    /// Refuse Accumulate without a request_id (INVALID_ARGUMENT) instead of
    /// applying it undeduplicated.
    #[arg(long)]
    pub require_request_id: bool,
    /// Dedup store limits.
    #[command(flatten)]
    pub dedup: DedupArgs,
    /// The guard in front of a shared store.
    #[command(flatten)]
    pub guard: StoreGuardArgs,
    /// Fault injection.
    #[command(flatten)]
    pub faults: FaultArgs,
    /// TLS, tokens and metrics.
    #[command(flatten)]
    pub edge: EdgeArgs,
}

/// What a real deployment adds: TLS, tokens, metrics (see
/// docs/security.md and docs/metrics.md).
#[derive(Debug, Clone, Args)]
pub struct EdgeArgs {
    /// Serve TLS on both fronts with this certificate chain (PEM, leaf
    /// first). Needs --tls-key. Without it both fronts speak plaintext.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: require every client to present a certificate signed by
    /// this CA (PEM). Needs --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Require a token on every calculator call, from this file: one
    /// identity per line, `NAME ROLE TOKEN`, ROLE `read` (pure calls only)
    /// or `write`, TOKEN the token or `sha256:HEX` of it; `#` starts a
    /// comment line. Clients send `authorization: Bearer TOKEN`. Request
    /// IDs are scoped by identity. Health stays open. On an address other
    /// than loopback, needs --tls-cert.
    #[arg(long, value_name = "FILE")]
    pub auth_tokens: Option<PathBuf>,
    /// Calls per second each identity may make on average (both fronts
    /// together); beyond it, RESOURCE_EXHAUSTED with a retry pushback (REST:
    /// 429 with Retry-After). Needs --auth-tokens. Default: no limit.
    #[arg(long, value_name = "N", requires = "auth_tokens")]
    pub rate_limit: Option<NonZeroU32>,
    /// Calls an identity may make at once after a quiet period (default:
    /// the --rate-limit, i.e. one second's worth).
    #[arg(long, value_name = "N", requires = "rate_limit")]
    pub rate_burst: Option<NonZeroU32>,
    /// Serve Prometheus metrics at http://ADDR/metrics (gRFC A66's server
    /// series and abacus' own; see docs/metrics.md). No TLS, no token:
    /// listen where only the scraper reaches.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

impl EdgeArgs {
    /// Reads the certificate, key and token files; every problem is one
    /// sentence naming the flag and file.
    pub fn to_edge(&self) -> Result<Edge, String> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(
                ServerTls::from_files(cert, key, self.tls_client_ca.as_deref())
                    .map_err(|e| e.to_string())?,
            ),
            // clap's `requires` makes the other cases impossible; refuse
            // them anyway rather than serve plaintext by surprise.
            (None, None) => None,
            _ => return Err("--tls-cert and --tls-key go together".into()),
        };
        let auth = match &self.auth_tokens {
            Some(path) => {
                let entries = auth::tokens::read_file(path).map_err(|e| e.to_string())?;
                let rate = self.rate_limit.map(|per_second| RateLimit {
                    per_second,
                    burst: self.rate_burst.unwrap_or(per_second),
                });
                Some(Arc::new(Authenticator::new(entries, rate)))
            }
            None => None,
        };
        Ok(Edge {
            tls,
            auth,
            metrics: self.metrics_addr.map(|_| ServerMetrics::new()),
        })
    }
}

/// Dedup store limits (see `abacus::store::dedup`).
#[derive(Debug, Clone, Args)]
pub struct DedupArgs {
    /// Most dedup records retained; the oldest is evicted beyond.
    #[arg(long, default_value_t = DedupConfig::default().entries_max, value_name = "N")]
    pub dedup_entries_max: usize,
    /// How long a dedup record is retained after its commit, in ms. Must
    /// exceed every client's whole retry window.
    #[arg(long, default_value_t = DedupConfig::default().ttl_ms, value_name = "MS")]
    pub dedup_ttl_ms: u64,
    /// Longest a duplicate waits for the in-flight first execution, in ms.
    #[arg(long, default_value_t = DedupConfig::default().join_wait_ms_max, value_name = "MS")]
    pub dedup_join_wait_ms_max: u64,
    /// Most request IDs executing at once.
    #[arg(long, default_value_t = DedupConfig::default().in_flight_max, value_name = "N")]
    pub dedup_in_flight_max: usize,
    /// Switch deduplication OFF (request IDs are ignored, retries may apply
    /// twice): only to demonstrate what it prevents.
    #[arg(long)]
    pub no_dedup: bool,
    /// Most dedup records one client retains (one client: a token's
    /// identity, or a peer IP address without tokens); its own oldest is
    /// evicted beyond. Default: as --dedup-entries-max, where a full store
    /// takes room from the client holding the most, so one client's fresh
    /// IDs never evict another's records while it holds more. With
    /// --store postgres://… this is the bound per client.
    #[arg(long, value_name = "N")]
    pub dedup_entries_per_client_max: Option<usize>,
    /// Most registers one client may create (one client: a token's
    /// identity, or a peer IP address without tokens); beyond it, creating
    /// a register is refused RESOURCE_EXHAUSTED until the client deletes
    /// one (DeleteRegister, `abacus call delete NAME`). The server holds at
    /// most 10,000 registers in all.
    #[arg(long, default_value_t = DedupConfig::default().registers_per_client_max, value_name = "N")]
    pub registers_per_client_max: usize,
}

impl DedupArgs {
    /// The validated dedup configuration.
    pub fn to_config(&self) -> Result<DedupConfig, String> {
        let config = DedupConfig {
            entries_max: self.dedup_entries_max,
            ttl_ms: self.dedup_ttl_ms,
            join_wait_ms_max: self.dedup_join_wait_ms_max,
            in_flight_max: self.dedup_in_flight_max,
            enabled: !self.no_dedup,
            entries_per_client_max: self.dedup_entries_per_client_max,
            registers_per_client_max: self.registers_per_client_max,
        };
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// The store guard's flags (see `abacus::store::guard` and
/// docs/postgres.md, "When the store fails").
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Store guard (with --store postgres://…)")]
pub struct StoreGuardArgs {
    /// Longest one store call may take (a claim, a commit, a read), however
    /// long the caller's deadline; a call cut by it answers UNAVAILABLE and
    /// counts against the store. PostgreSQL also ends a transaction whose
    /// client stays silent twice this long (idle_in_transaction_session_timeout),
    /// which frees a claim orphaned by a vanished replica.
    #[arg(long, default_value_t = guard_defaults::TIMEOUT_MS_DEFAULT, value_name = "MS",
          value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(1..=guard_defaults::TIMEOUT_MS_LIMIT))]
    pub store_timeout_ms: u64,
    /// A register call that spent longer than this in the store counts as a
    /// store failure for the breaker, answered or not (one cut sooner by
    /// its caller's deadline counts for nothing).
    #[arg(long, default_value_t = guard_defaults::SLOW_MS_DEFAULT, value_name = "MS")]
    pub store_slow_ms: u64,
    /// Store operations in flight at once (an Accumulate from claim to
    /// commit, a read); beyond it a register call is refused at once with
    /// UNAVAILABLE, not applied. Keep it below --in-flight-max, so a stuck
    /// store never takes every slot from the pure calls.
    #[arg(long, default_value_t = guard_defaults::IN_FLIGHT_MAX_DEFAULT, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=guard_defaults::IN_FLIGHT_LIMIT as u64))]
    pub store_in_flight_max: usize,
    /// Store failures in a row that open the breaker (it also opens when
    /// half of the last 20 calls failed). While open, register calls are
    /// refused at once (UNAVAILABLE, not applied) and the health service
    /// reports abacus.v1.Registers NOT_SERVING.
    #[arg(long, default_value_t = 5, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<u32>::new().range(1..=1_000))]
    pub store_breaker_failures: u32,
    /// How long the breaker stays open before it probes the store by
    /// itself (a stats call); a failed probe doubles it, up to
    /// --store-breaker-open-ms-max.
    #[arg(long, default_value_t = GuardConfig::default_breaker().open_ms, value_name = "MS")]
    pub store_breaker_open_ms: u64,
    /// Cap on the breaker's open time: writes come back at most this long
    /// after the store does.
    #[arg(long, default_value_t = GuardConfig::default_breaker().open_ms_max, value_name = "MS")]
    pub store_breaker_open_ms_max: u64,
    /// Switch the guard OFF (register calls then wait on a failing store
    /// until their deadlines, holding server slots): only to demonstrate
    /// what it prevents.
    #[arg(long)]
    pub no_store_guard: bool,
}

impl StoreGuardArgs {
    /// The validated guard configuration (`None` when switched off).
    pub fn to_config(&self) -> Result<Option<GuardConfig>, String> {
        if self.no_store_guard {
            return Ok(None);
        }
        let config = GuardConfig {
            timeout_ms: self.store_timeout_ms,
            slow_ms: self.store_slow_ms,
            in_flight_max: self.store_in_flight_max,
            breaker: BreakerConfig {
                consecutive_failures_max: Some(self.store_breaker_failures),
                open_ms: self.store_breaker_open_ms,
                open_ms_max: self.store_breaker_open_ms_max,
                ..GuardConfig::default_breaker()
            },
        };
        config.validate().map_err(|e| e.to_string())?;
        Ok(Some(config))
    }
}

/// Fault-injection flags (all off by default, all seeded).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Fault injection")]
pub struct FaultArgs {
    /// Probability (0..1) of answering UNAVAILABLE before applying a request.
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "P",
        allow_negative_numbers = true
    )]
    pub fail_rate: f64,
    /// Extra delay per request in ms: `D` or a range `A..B`, drawn uniformly.
    #[arg(long, value_parser = parse_delay_range, default_value = "0", value_name = "D|A..B")]
    pub delay_ms: RangeInclusive<u64>,
    /// Probability (0..1) of applying a request and then failing its response
    /// (the partial failure that makes blind retries double-apply).
    #[arg(
        long,
        default_value_t = 0.0,
        value_name = "P",
        allow_negative_numbers = true
    )]
    pub drop_after_apply_rate: f64,
    /// Seed for the fault RNG; the same seed replays the same faults.
    #[arg(long, default_value_t = 1, value_name = "SEED")]
    pub fault_seed: u64,
}

impl FaultArgs {
    /// The validated fault configuration.
    pub fn to_config(&self) -> Result<FaultConfig, String> {
        let config = FaultConfig {
            fail_rate: self.fail_rate,
            delay_ms: self.delay_ms.clone(),
            drop_after_apply_rate: self.drop_after_apply_rate,
            seed: self.fault_seed,
        };
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// The fronts' limits: defaults, with the connection cap from the flag,
/// lowered so that both fronts' connections fit the open-file limit (a cap
/// above it would let `accept` fail instead, and nothing be served).
fn limits(args: &ServeArgs) -> Limits {
    let mut limits = Limits {
        connections_max: args.connections_max,
        ..Limits::default()
    };
    if let Some(fds) = open_files_limit() {
        let fitted = connections_max_for_fds(args.connections_max, fds);
        if fitted < args.connections_max {
            tracing::warn!(
                connections_max = fitted,
                open_files_limit = fds,
                "connection cap lowered to fit the open-file limit (raise it with `ulimit -n`)"
            );
        }
        limits.connections_max = fitted;
    }
    tracing::info!(
        connections_max = limits.connections_max,
        h2_streams_max = limits.h2_streams_max,
        long_streams_max = limits.long_streams_max,
        first_byte_timeout_s = limits.first_byte_timeout.as_secs(),
        idle_timeout_s = limits.idle_timeout.as_secs(),
        "limits per front (see README, Operations)"
    );
    limits
}

/// Runs the server until Ctrl-C.
pub async fn run(args: ServeArgs) -> ExitCode {
    super::init_logging("info");
    let (faults, dedup, guard) = match (
        args.faults.to_config(),
        args.dedup.to_config(),
        args.guard.to_config(),
    ) {
        (Ok(f), Ok(d), Ok(g)) => (f, d, g),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let edge = match args.edge.to_edge() {
        Ok(edge) => edge,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut exposed = vec![("--addr", args.addr)];
    exposed.extend(args.rest_addr.map(|a| ("--rest-addr", a)));
    if let Err(e) = edge.check_exposure(&exposed) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // Metrics count events (dedup, applied, shed) from everything that
    // emits them, the ledger included: the sink is built before it.
    let events = match &edge.metrics {
        Some(metrics) => metrics.hook_into(EventSink::log_only()),
        None => EventSink::log_only(),
    };
    let state: Arc<dyn Ledger> = match (args.store.as_deref(), &args.data_dir) {
        (Some(store), Some(_)) => {
            eprintln!(
                "error: --store {} and --data-dir name two different stores; use one (--data-dir alone keeps state in a redb file)",
                store.split("://").next().unwrap_or(store)
            );
            return ExitCode::from(2);
        }
        (Some(url), None) if url != "memory" => {
            let mut config = match PgConfig::from_url(url) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!(
                        "error: --store (or ABACUS_STORE) takes `memory` or a PostgreSQL URL: {e}"
                    );
                    return ExitCode::from(2);
                }
            };
            // One per-call bound for the guard and the ledger beneath it.
            config.op_timeout = std::time::Duration::from_millis(args.guard.store_timeout_ms);
            config.idle_in_transaction_timeout = idle_in_transaction_timeout_for(config.op_timeout);
            let ledger: Arc<dyn Ledger> =
                match PgLedger::connect(config, dedup.clone(), events.clone()).await {
                    Ok(ledger) => Arc::new(ledger),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                };
            match guard {
                Some(guard) => {
                    tracing::info!(
                        store_timeout_ms = guard.timeout_ms,
                        store_slow_ms = guard.slow_ms,
                        store_in_flight_max = guard.in_flight_max,
                        breaker_failures = args.guard.store_breaker_failures,
                        breaker_open_ms = guard.breaker.open_ms,
                        breaker_open_ms_max = guard.breaker.open_ms_max,
                        "store guard on"
                    );
                    if guard.in_flight_max >= args.in_flight_max {
                        tracing::warn!(
                            store_in_flight_max = guard.in_flight_max,
                            in_flight_max = args.in_flight_max,
                            "--store-in-flight-max is not below --in-flight-max: a stuck store can hold every slot, and pure calls would be shed"
                        );
                    }
                    match GuardedLedger::new(ledger, guard, events.clone(), os_seed()) {
                        Ok(guarded) => Arc::new(guarded),
                        Err(e) => {
                            eprintln!("error: {e}");
                            return ExitCode::from(2);
                        }
                    }
                }
                None => {
                    tracing::warn!(
                        "store guard OFF (--no-store-guard): a failing store holds register calls until their deadlines"
                    );
                    ledger
                }
            }
        }
        _ => match &args.data_dir {
            Some(dir) => match RedbLedger::open(dedup.clone(), events.clone(), dir) {
                Ok(ledger) => {
                    tracing::info!(dir = %dir.display(), "durable state: registers and dedup records survive restarts");
                    Arc::new(ledger)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            },
            None => {
                tracing::info!(
                    "in-memory state: registers and dedup records are lost on restart (use --data-dir to keep them)"
                );
                Arc::new(MemoryLedger::new(dedup.clone(), events.clone()))
            }
        },
    };
    let listener = match tokio::net::TcpListener::bind(args.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    let rest_listener = match args.rest_addr {
        None => None,
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("error: cannot listen on {addr} (--rest-addr): {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let metrics_listener = match args.edge.metrics_addr {
        None => None,
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("error: cannot listen on {addr} (--metrics-addr): {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let local = listener.local_addr().map_or(args.addr, |a| a);
    let tls = match &edge.tls {
        None => "off",
        Some(t) if t.is_mutual() => "mutual",
        Some(_) => "on",
    };
    let identities = edge.auth.as_ref().map_or(0, |a| a.identities().count());
    if faults.is_off() {
        tracing::info!(addr = %local, tls, identities, "abacus listening (no faults)");
    } else {
        tracing::warn!(addr = %local, tls, identities, faults = %faults, "abacus listening WITH INJECTED FAULTS");
    }
    if edge.tls.is_none() && !local.ip().is_loopback() {
        tracing::warn!(
            addr = %local,
            "serving plaintext beyond loopback: anyone on the path reads and writes calls (add --tls-cert and --tls-key)"
        );
    }
    tracing::info!(
        dedup_entries_max = dedup.entries_max,
        dedup_entries_per_client_max = dedup.entries_per_client_max(),
        registers_per_client_max = dedup.registers_per_client_max,
        dedup_ttl_ms = dedup.ttl_ms,
        require_request_id = args.require_request_id,
        "dedup store"
    );
    let limits = limits(&args);
    let config = ServerConfig {
        faults,
        in_flight_max: args.in_flight_max,
        shed_pushback_ms: args.shed_pushback_ms,
        shed_queue_delay_ms: (args.shed_queue_delay_ms > 0).then_some(args.shed_queue_delay_ms),
        events,
        dedup,
        require_request_id: args.require_request_id,
        limits: limits.clone(),
        edge: edge.clone(),
        ..ServerConfig::default()
    };
    let calculator = Calculator::from_config(&config, state);
    // Ends with the process.
    tokio::spawn(server::retention::warn_on_early_evictions(
        std::sync::Arc::clone(calculator.ledger()),
        config.dedup.clone(),
    ));
    // One Ctrl-C stops both fronts.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C: finishing in-flight calls, then exiting");
        let _ = stop.send(true);
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        // An error means the sender is gone, which also means stop.
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let metrics_server = metrics_listener
        .zip(edge.metrics.clone())
        .map(|(listener, metrics)| {
            match listener.local_addr() {
                Ok(local) => tracing::info!(addr = %local, "metrics at http://{local}/metrics"),
                Err(e) => tracing::warn!(error = %e, "metrics listening on an unknown address"),
            }
            let limits = limits.clone();
            let stopped = until_stopped(stopped.clone());
            tokio::spawn(async move {
                server::metrics::serve_metrics(
                    metrics,
                    &limits,
                    server::tcp_incoming(listener),
                    stopped,
                )
                .await;
            })
        });
    let rest = rest_listener.map(|listener| {
        match listener.local_addr() {
            Ok(local) => {
                tracing::info!(addr = %local, "REST twin listening (HTTP/1.1 and h2c, same state)")
            }
            Err(e) => tracing::warn!(error = %e, "REST twin listening on an unknown address"),
        }
        let limits = limits.clone();
        let calculator = calculator.clone();
        let stopped = until_stopped(stopped.clone());
        tokio::spawn(async move {
            server::serve_rest_with(calculator, &limits, server::tcp_incoming(listener), stopped)
                .await;
        })
    });
    let grpc = server::serve_calculator_with(
        calculator,
        &limits,
        server::tcp_incoming(listener),
        until_stopped(stopped),
    )
    .await;
    if let Some(rest) = rest {
        if grpc.is_err() {
            // No Ctrl-C will come to stop it: the process is failing.
            rest.abort();
        }
        let _ = rest.await;
    }
    if let Some(metrics_server) = metrics_server {
        metrics_server.abort();
    }
    match grpc {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: server failed: {e}");
            ExitCode::FAILURE
        }
    }
}
