//! `abacus serve`: the real server on a TCP socket, with optional seeded
//! faults for demos.

use std::{net::SocketAddr, ops::RangeInclusive, process::ExitCode};

use clap::Args;
use tokio_stream::wrappers::TcpListenerStream;

use crate::server::{self, FaultConfig, ServerConfig, faults::parse_delay_range};

/// Arguments of `abacus serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,
    /// Calculator calls allowed in flight at once; beyond it, calls are
    /// refused at once with RESOURCE_EXHAUSTED and a retry pushback instead
    /// of queueing until every deadline has passed.
    #[arg(long, default_value_t = server::IN_FLIGHT_MAX_DEFAULT, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub in_flight_max: usize,
    /// Pushback (ms) sent with a shed call.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    pub shed_pushback_ms: u64,
    /// Fault injection.
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// Fault-injection flags (all off by default, all seeded).
#[derive(Debug, Clone, Args)]
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

/// Runs the server until Ctrl-C.
pub async fn run(args: ServeArgs) -> ExitCode {
    super::init_logging("info");
    let faults = match args.faults.to_config() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().map_or(args.addr, |a| a);
    if faults.is_off() {
        tracing::info!(addr = %local, "abacus listening (no faults)");
    } else {
        tracing::warn!(addr = %local, faults = %faults, "abacus listening WITH INJECTED FAULTS");
    }
    let config = ServerConfig {
        faults,
        in_flight_max: args.in_flight_max,
        shed_pushback_ms: args.shed_pushback_ms,
        ..ServerConfig::default()
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C: finishing in-flight calls, then exiting");
    };
    match server::serve(config, TcpListenerStream::new(listener), shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: server failed: {e}");
            ExitCode::FAILURE
        }
    }
}
