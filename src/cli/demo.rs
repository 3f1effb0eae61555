//! `abacus demo`: the README's main command. Starts an embedded server on an
//! ephemeral loopback port (or uses `--addr`) and narrates a scenario.

use std::{net::SocketAddr, process::ExitCode};

use clap::Args;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;

use crate::{
    client::{CallError, Client, ClientConfig, tcp_channel},
    server::{self, ServerConfig},
};

/// Arguments of `abacus demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Use this running server instead of starting an embedded one.
    #[arg(long)]
    pub addr: Option<String>,
}

/// A tally of what the demo saw, printed at the end.
#[derive(Debug, Default)]
struct Tally {
    ok: u32,
    expected_errors: u32,
    surprises: Vec<String>,
}

impl Tally {
    fn expect_ok<T: std::fmt::Display>(&mut self, what: &str, r: Result<T, CallError>) {
        match r {
            Ok(v) => {
                self.ok += 1;
                println!("  {what} = {v}");
            }
            Err(e) => {
                println!("  {what} FAILED: {e}");
                self.surprises.push(format!("{what}: {e}"));
            }
        }
    }

    fn expect_err<T: std::fmt::Debug>(&mut self, what: &str, r: Result<T, CallError>) {
        match r {
            Err(e) => {
                self.expected_errors += 1;
                println!("  {what} -> error, as expected: {e}");
            }
            Ok(v) => {
                println!("  {what} unexpectedly succeeded: {v:?}");
                self.surprises.push(format!("{what} should have failed"));
            }
        }
    }
}

async fn embedded_server() -> std::io::Result<(SocketAddr, oneshot::Sender<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server::serve(
        ServerConfig::default(),
        TcpListenerStream::new(listener),
        async {
            let _ = stopped.await;
        },
    ));
    Ok((addr, stop))
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> ExitCode {
    super::init_logging("warn");
    let (addr, _stop) = match &args.addr {
        Some(a) => (a.clone(), None),
        None => match embedded_server().await {
            Ok((addr, stop)) => {
                println!("Started an embedded abacus server on {addr}.");
                (addr.to_string(), Some(stop))
            }
            Err(e) => {
                eprintln!("error: cannot start the embedded server: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let channel = match tcp_channel(&addr) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid address {addr:?}: {e}");
            return ExitCode::from(2);
        }
    };
    let client = Client::new(channel, ClientConfig::default());
    let mut t = Tally::default();

    println!("\n1. Pure arithmetic (NO_SIDE_EFFECTS: always safe to retry)");
    t.expect_ok("add(2, 3)", client.add(2.0, 3.0).await);
    t.expect_ok("subtract(10, 4.5)", client.subtract(10.0, 4.5).await);
    t.expect_ok("multiply(-3, 7)", client.multiply(-3.0, 7.0).await);
    t.expect_ok("divide(1, 8)", client.divide(1.0, 8.0).await);

    println!("\n2. Bad input gets a clear gRPC status, never a panic");
    t.expect_err("divide(1, 0)", client.divide(1.0, 0.0).await);
    t.expect_err("multiply(1e308, 10)", client.multiply(1e308, 10.0).await);
    t.expect_err("add(NaN, 1)", client.add(f64::NAN, 1.0).await);
    t.expect_err("get(\"never-written\")", client.get("never-written").await);

    println!("\n3. Registers accumulate: each Accumulate is applied once per call");
    for delta in [5.0, 2.5, -1.0] {
        t.expect_ok(
            &format!("accumulate(demo, {delta})"),
            client.accumulate("demo", delta).await.map(|(v, _)| v),
        );
    }
    t.expect_ok("get(demo)", client.get("demo").await);

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
