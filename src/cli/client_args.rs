//! Client policy flags shared by `abacus call`, `abacus demo` and `abacus
//! bench`, turned into one validated [`ClientConfig`].

use std::{path::PathBuf, time::Duration};

use clap::Args;
use tonic::Code;

use crate::{
    client::{
        Balancing, BearerToken, Client, ClientConfig, ClientTls, Delivery, HedgeConfig,
        ServiceConfig, Throttle, service_config::parse_code, tcp_channel_with,
    },
    resilience::ratio_budget::RatioBudgetConfig,
    trace::EventSink,
};

/// How the client retries, times out and delivers.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Delivery semantics for Accumulate: at-most-once never re-sends a
    /// request that may have been applied; at-least-once retries it (and may
    /// apply it twice); exactly-once retries with a request ID the server
    /// deduplicates.
    #[arg(long, value_enum, default_value_t = Delivery::ExactlyOnce, global = true)]
    pub mode: Delivery,
    /// Overall deadline of one call, retries and pauses included (ms).
    #[arg(long, default_value_t = 5000, value_name = "MS", global = true)]
    pub deadline_ms: u64,
    /// Timeout of one attempt (ms), clipped to what is left of the deadline.
    #[arg(long, default_value_t = 1000, value_name = "MS", global = true)]
    pub attempt_timeout_ms: u64,
    /// Attempts per call, the first included (1 = no retries; max 10).
    #[arg(long, default_value_t = 4, value_name = "N", global = true)]
    pub attempts: u32,
    /// Upper bound of the first retry's pause (ms); later pauses grow ×2,
    /// each drawn uniformly below its bound (full jitter).
    #[arg(long, default_value_t = 50, value_name = "MS", global = true)]
    pub backoff_ms: u64,
    /// Cap on any retry pause (ms).
    #[arg(long, default_value_t = 1000, value_name = "MS", global = true)]
    pub backoff_ms_max: u64,
    /// Status codes to retry, comma-separated (e.g. UNAVAILABLE,RESOURCE_EXHAUSTED).
    #[arg(
        long,
        default_value = "UNAVAILABLE",
        value_name = "CODES",
        value_delimiter = ',',
        global = true
    )]
    pub retry_on: Vec<String>,
    /// Disable the retry throttle (by default gRPC's token bucket: 10
    /// tokens, 0.1 per success; retries allowed above half).
    #[arg(long, global = true, conflicts_with = "retry_budget_ratio")]
    pub no_retry_budget: bool,
    /// Throttle retries and hedges with Finagle's budget instead: at most
    /// this ratio of the last 10 s of calls (plus --retry-budget-min-per-s),
    /// which scales with the load where the token bucket does not.
    #[arg(long, value_name = "RATIO", global = true)]
    pub retry_budget_ratio: Option<f64>,
    /// With --retry-budget-ratio: retries allowed per second whatever the
    /// traffic.
    #[arg(long, default_value_t = 10.0, value_name = "N", global = true)]
    pub retry_budget_min_per_s: f64,
    /// Hedge the calls that may be repeated (pure RPCs, Accumulate with a
    /// request ID): if no reply came within MS, send the call again to
    /// another replica; the first reply wins. Off unless given.
    #[arg(long, value_name = "MS", global = true)]
    pub hedge_delay_ms: Option<u64>,
    /// With --hedge-delay-ms: attempts in all, the first included (2..=5).
    #[arg(long, default_value_t = 3, value_name = "N", global = true)]
    pub hedge_attempts: u32,
    /// With --hedge-delay-ms: codes after which the next hedge goes at once
    /// (any other error ends the call).
    #[arg(
        long,
        default_value = "UNAVAILABLE",
        value_name = "CODES",
        value_delimiter = ',',
        global = true
    )]
    pub hedge_on: Vec<String>,
    /// How attempts are spread over the endpoints of --addr: p2c (power of
    /// two choices over peak-EWMA latency) or round-robin (a baseline,
    /// blind to latency).
    #[arg(long, value_enum, default_value_t = Balancing::PeakEwmaP2c, global = true)]
    pub balance: Balancing,
    /// Do not watch grpc.health.v1 on the endpoints (a NOT_SERVING replica
    /// then still gets calls).
    #[arg(long, global = true)]
    pub no_health_check: bool,
    /// Turn the circuit breakers off (an endpoint that keeps failing then
    /// still gets calls).
    #[arg(long, global = true)]
    pub no_breaker: bool,
    /// How often a host name in --addr is resolved again (ms).
    #[arg(long, default_value_t = 30_000, value_name = "MS", global = true)]
    pub resolve_every_ms: u64,
    /// Read the retry policy and deadline from a gRPC service-config JSON
    /// file instead (`methodConfig[].retryPolicy`, `timeout`, `retryThrottling`).
    #[arg(long, value_name = "FILE", global = true)]
    pub service_config: Option<PathBuf>,
    /// Seed for jitter and request IDs (default: from the OS).
    #[arg(long, value_name = "SEED", global = true)]
    pub client_seed: Option<u64>,
    /// Print every attempt, pause and give-up decision to stderr.
    #[arg(long, short = 'v', global = true)]
    pub verbose: bool,
    /// TLS and token.
    #[command(flatten)]
    pub security: ClientSecurityArgs,
}

// ---- TLS and tokens (docs/security.md) ----

/// The environment variable holding the client's token.
pub const TOKEN_ENV: &str = "ABACUS_TOKEN";

/// How the client proves who it is and whom it talks to.
#[derive(Debug, Clone, Args)]
pub struct ClientSecurityArgs {
    /// Connect with TLS, trusting server certificates signed by this CA
    /// (PEM). Without it the client speaks plaintext.
    #[arg(long, value_name = "PEM", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS: present this certificate chain (PEM). Needs --tls-key
    /// and --tls-ca.
    #[arg(long, value_name = "PEM", global = true, requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", global = true, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Verify the server's certificate for this name instead of the
    /// address's host.
    #[arg(long, value_name = "NAME", global = true, requires = "tls_ca")]
    pub tls_server_name: Option<String>,
    /// Read the token to send (`authorization: Bearer TOKEN`) from this
    /// file. Default: the ABACUS_TOKEN environment variable, if set. (No
    /// flag takes the token itself: command lines are visible to every
    /// user of the machine.)
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
}

impl ClientSecurityArgs {
    /// The TLS settings, if any; errors name the flag and file.
    pub fn tls(&self) -> Result<Option<ClientTls>, String> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => return Err("--tls-cert and --tls-key go together".into()),
        };
        let tls = ClientTls::from_files(ca, identity).map_err(|e| e.to_string())?;
        Ok(Some(match &self.tls_server_name {
            Some(name) => tls.with_server_name(name),
            None => tls,
        }))
    }

    /// The token: `--token-file`, else `ABACUS_TOKEN`, else none.
    pub fn token(&self) -> Result<Option<BearerToken>, String> {
        if let Some(path) = &self.token_file {
            return BearerToken::from_file(path)
                .map(Some)
                .map_err(|e| e.to_string());
        }
        match std::env::var(TOKEN_ENV) {
            Ok(token) => BearerToken::new(&token, TOKEN_ENV)
                .map(Some)
                .map_err(|e| e.to_string()),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(format!("{TOKEN_ENV}: the token must be visible ASCII"))
            }
        }
    }

    /// A channel to `addr` with these TLS settings.
    pub fn channel(&self, addr: &str) -> Result<tonic::transport::Channel, String> {
        let tls = self.tls()?;
        tcp_channel_with(addr, tls.as_ref()).map_err(|e| e.to_string())
    }
}

/// The status codes a comma-separated flag names.
fn codes(flag: &str, names: &[String]) -> Result<Vec<Code>, String> {
    names
        .iter()
        .map(|s| parse_code(&serde_json::Value::String(s.trim().to_owned())))
        .collect::<Result<Vec<Code>, _>>()
        .map_err(|e| format!("{flag}: {e}"))
}

impl ClientArgs {
    /// A client to `addr` (one `host:port` or several, comma-separated)
    /// with the policy these flags describe; the error is the message to
    /// print (a usage error: exit code 2).
    pub async fn connect(&self, addr: &str) -> Result<Client, String> {
        let config = self.to_config()?;
        let tls = self.security.tls()?;
        Client::connect_with(addr, tls, config)
            .await
            .map_err(|e| e.to_string())
    }

    /// The client configuration these flags describe.
    pub fn to_config(&self) -> Result<ClientConfig, String> {
        let mut c = ClientConfig {
            deadline: Duration::from_millis(self.deadline_ms),
            attempt_timeout: Duration::from_millis(self.attempt_timeout_ms),
            mode: self.mode,
            seed: self.client_seed,
            ..ClientConfig::default()
        };
        c.retry.attempts_max = self.attempts;
        c.retry.backoff.initial = Duration::from_millis(self.backoff_ms);
        c.retry.backoff.max = Duration::from_millis(self.backoff_ms_max);
        c.retry.retryable_codes = codes("--retry-on", &self.retry_on)?;
        if self.no_retry_budget {
            c.retry.throttle = None;
        }
        if let Some(ratio) = self.retry_budget_ratio {
            c.retry.throttle = Some(Throttle::Ratio(RatioBudgetConfig {
                retry_ratio: ratio,
                min_retries_per_second: self.retry_budget_min_per_s,
                ..RatioBudgetConfig::default()
            }));
        }
        if let Some(ms) = self.hedge_delay_ms {
            c.hedge = Some(HedgeConfig {
                attempts_max: self.hedge_attempts,
                delay: Duration::from_millis(ms),
                non_fatal_codes: codes("--hedge-on", &self.hedge_on)?,
            });
        }
        c.balance.policy = self.balance;
        c.balance.health_check = !self.no_health_check;
        c.balance.resolve_every = Duration::from_millis(self.resolve_every_ms);
        if self.no_breaker {
            c.breaker = None;
        }
        if let Some(path) = &self.service_config {
            let json = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let sc =
                ServiceConfig::from_json(&json).map_err(|e| format!("{}: {e}", path.display()))?;
            // The file's policies replace the flags'; its throttle (or its
            // absence: unthrottled, as in gRPC) goes with them.
            if sc.retry.is_some() || sc.hedge.is_some() {
                c.retry.throttle = sc.throttle;
            }
            if let Some(r) = sc.retry {
                c.retry = r;
            }
            if sc.hedge.is_some() {
                c.hedge = sc.hedge;
            }
            if let Some(b) = sc.balancing {
                c.balance.policy = b;
            }
            if let Some(t) = sc.timeout {
                c.deadline = t;
            }
        }
        if self.verbose {
            c.events = EventSink::with_hook(|e| eprintln!("  · {e}"));
        }
        c.token = self.security.token()?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }
}
