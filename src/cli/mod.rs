//! The `abacus` command line: argument definitions and dispatch. Each
//! subcommand lives in its own module and calls into the library.
//!
//! # Layout
//! - [`serve`]: `abacus serve`, a real server on a TCP socket.
//! - [`call`]: `abacus call`, one RPC against a server (or replicas).
//! - [`bench`](mod@bench): `abacus bench`, load through the resilient client.
//! - [`client_args`]: the client policy flags shared by `call` and `demo`.
//! - [`demo`]: `abacus demo`, a narrated tour against an embedded server.
//! - [`log`]: the non-blocking log writer every subcommand logs through.

pub mod bench;
pub mod call;
pub mod client_args;
pub mod demo;
pub mod log;
pub mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// abacus: a distributed calculator over gRPC that shows retries,
/// idempotency and circuit breaking under faults.
#[derive(Debug, Parser)]
#[command(name = "abacus", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (Calculator, health, reflection) until Ctrl-C.
    Serve(serve::ServeArgs),
    /// Make one call against a running server and print the result.
    Call(call::CallArgs),
    /// Start an embedded server and walk through a narrated scenario.
    Demo(demo::DemoArgs),
    /// Load one RPC through the resilient client; report throughput,
    /// latency percentiles, attempts, hedges and the spread over replicas.
    Bench(bench::BenchArgs),
}

/// Installs a `tracing` subscriber honouring `RUST_LOG` (default
/// `default`), writing to stderr through the non-blocking [`log::writer`]:
/// a slow or stalled stderr drops (and counts) lines instead of stalling
/// whoever logs.
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(log::writer())
        .try_init();
}

/// Parses arguments and runs the chosen subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Call(args) => call::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    // Queued log lines are written before exiting, unless the sink is
    // stalled: then the process exits anyway.
    log::finish(LOG_DRAIN_MAX);
    code
}

/// Longest the process waits at exit for queued log lines to be written.
const LOG_DRAIN_MAX: std::time::Duration = std::time::Duration::from_secs(2);
