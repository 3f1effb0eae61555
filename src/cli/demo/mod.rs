//! `abacus demo`: the README's main command. Starts an embedded server on an
//! ephemeral loopback port (or uses `--addr`) and narrates a scenario.
//!
//! The client policy flags of `abacus call` apply here too, so a reader can
//! rerun a section with, say, `--attempts 1` or `--deadline-ms 200` and watch
//! what changes. Each section overrides only what it is about: section 4
//! (retries) turns the breaker off, section 5 runs all three delivery modes
//! whatever `--mode` says, section 6 brings its own breaker settings,
//! section 7 brings its own hedging, section 8 sends one attempt to the
//! replica that loses its answer.
//!
//! Each fault section ends in a verdict: a pure function of what the section
//! observed (sums, a register's value, the breaker's state), unit-tested on
//! its own, which says whether the section showed its point and whether
//! anything contradicts a promise (a surprise, and a non-zero exit).
//!
//! # Layout
//! - `tally`: the counts behind the summary.
//! - `embedded`: embedded servers and narrated clients.
//! - `basics`: sections 1–3 (arithmetic, bad input, registers).
//! - `retries`: section 4, a server refusing half the requests.
//! - `delivery`: section 5, a server losing half the responses, in each
//!   delivery mode.
//! - `breaker`: section 6, a server failing everything, then recovering.
//! - `replicas`: section 7, three replicas over one shared ledger: one
//!   slow (hedges win), one stopped (failover, ejection, readmission).
//! - `shared_store`: section 8, two replicas over one shared store (in
//!   memory, or `--store postgres://…`): a retry on the other replica is
//!   replayed, not applied again.

mod basics;
mod breaker;
mod delivery;
mod embedded;
mod replicas;
mod retries;
mod shared_store;
mod tally;

use std::process::ExitCode;

use clap::Args;

use self::{embedded::embedded_server, tally::Tally};
use crate::{cli::client_args::ClientArgs, client::Client, server::ServerConfig};

/// Arguments of `abacus demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Use this running server (or replicas: A,B,C) for the fault-free
    /// part instead of starting an embedded one. (The fault sections always
    /// start their own embedded servers, with the faults they need.)
    #[arg(long)]
    pub addr: Option<String>,
    /// Seed for the embedded servers' faults and the clients' jitter; the
    /// same seed replays the same demo.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// The store the replicas of section 8 share: `memory` (one in-memory
    /// store in this process) or `postgres://USER:PASSWORD@HOST:PORT/DATABASE`
    /// (each replica then reaches it through its own ledger, as separate
    /// `abacus serve` processes would). The other sections always run in
    /// memory.
    #[arg(long, default_value = "memory", value_name = "memory|postgres://…")]
    pub store: String,
    /// Client policy for every section (see the module docs for what each
    /// section overrides). `--client-seed` defaults to `--seed`.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> ExitCode {
    super::init_logging("warn");
    let mut policy = match args.client.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    policy.seed = policy.seed.or(Some(args.seed));
    let store = match shared_store::SharedStore::parse(&args.store) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let (addr, _server) = match &args.addr {
        Some(a) => (a.clone(), None),
        None => match embedded_server(ServerConfig::default()).await {
            Ok(server) => {
                println!("Started an embedded abacus server on {}.", server.addr);
                (server.addr.to_string(), Some(server))
            }
            Err(e) => {
                eprintln!("error: cannot start the embedded server: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    // TLS settings apply to servers given with --addr; the embedded one
    // speaks plaintext on loopback.
    let tls = match &args.addr {
        Some(_) => args.client.security.tls(),
        None => Ok(None),
    };
    let client = match tls {
        Ok(tls) => Client::connect_with(&addr, tls, policy.clone())
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut t = Tally::default();

    basics::arithmetic(&mut t, &client).await;
    basics::bad_input(&mut t, &client).await;
    basics::registers(&mut t, &client).await;
    let faults = async {
        retries::section(&mut t, args.seed, &policy).await?;
        delivery::section(&mut t, args.seed, &policy).await?;
        breaker::section(&mut t, args.seed, &policy).await?;
        replicas::section(&mut t, args.seed, &policy).await?;
        shared_store::section(&mut t, args.seed, &policy, &store).await
    };
    if let Err(e) = faults.await {
        eprintln!("error: cannot start an embedded server: {e}");
        return ExitCode::FAILURE;
    }

    println!(
        "\nSummary: {} calls succeeded, {} failed as expected, {} surprise(s).",
        t.ok,
        t.expected_errors,
        t.surprises.len()
    );
    if t.surprises.is_empty() {
        ExitCode::SUCCESS
    } else {
        for s in &t.surprises {
            eprintln!("surprise: {s}");
        }
        ExitCode::FAILURE
    }
}
