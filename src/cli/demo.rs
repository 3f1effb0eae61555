//! `abacus demo`: the README's main command. Starts an embedded server on an
//! ephemeral loopback port (or uses `--addr`) and narrates a scenario.
//!
//! The client policy flags of `abacus call` apply here too, so a reader can
//! rerun a section with, say, `--attempts 1` or `--deadline-ms 200` and watch
//! what changes. Each section overrides only what it is about: section 4
//! (retries) turns the breaker off, section 5 runs all three delivery modes
//! whatever `--mode` says, section 6 brings its own breaker settings.

use std::{net::SocketAddr, process::ExitCode};

use clap::Args;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;

use crate::{
    cli::client_args::ClientArgs,
    client::{BreakerConfig, CallError, Client, ClientConfig, Delivery, IdGenerator, tcp_channel},
    server::{self, FaultConfig, FaultSwitch, ServerConfig},
    trace::{Event, EventSink, Outcome},
};

/// Arguments of `abacus demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Use this running server for the fault-free part instead of starting
    /// an embedded one. (The fault sections always start their own embedded
    /// servers, with the faults they need.)
    #[arg(long)]
    pub addr: Option<String>,
    /// Seed for the embedded servers' faults and the clients' jitter; the
    /// same seed replays the same demo.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Client policy for every section (see the module docs for what each
    /// section overrides). `--client-seed` defaults to `--seed`.
    #[command(flatten)]
    pub client: ClientArgs,
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

    /// A call against a faulty server: success, or the retry policy giving
    /// up (which flags like `--attempts 1` make likely) — not a surprise.
    fn expect_ok_or_give_up<T: std::fmt::Display>(&mut self, what: &str, r: Result<T, CallError>) {
        match r {
            Err(e) => {
                self.expected_errors += 1;
                println!("  {what}: the retry policy gave up: {e}");
            }
            ok => self.expect_ok(what, ok),
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

/// A server running inside the demo's process; stops when dropped.
struct Embedded {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn embedded_server(config: ServerConfig) -> std::io::Result<Embedded> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server::serve(
        config,
        TcpListenerStream::new(listener),
        async {
            let _ = stopped.await;
        },
    ));
    Ok(Embedded { addr, _stop: stop })
}

/// A client to `addr` whose every attempt, pause and decision is printed.
fn narrated_client(addr: SocketAddr, mut config: ClientConfig) -> Client {
    config.events = EventSink::with_hook(|e| match e {
        Event::AttemptStarted { .. }
        | Event::AttemptFailed { .. }
        | Event::Backoff { .. }
        | Event::GaveUp { .. }
        | Event::BreakerTransition { .. }
        | Event::BreakerRejected { .. } => println!("      · {e}"),
        _ => {}
    });
    let channel = tcp_channel(&addr.to_string()).expect("a socket address is a valid authority");
    Client::new(channel, config)
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
    let channel = match tcp_channel(&addr) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let client = Client::new(channel, policy.clone());
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

    if let Err(e) = faults(&mut t, args.seed, &policy).await {
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

/// The fault sections: retries, and what each delivery mode does when the
/// server applies a request and the response is lost. `policy` is the
/// user's client policy; each section overrides only what it is about.
async fn faults(t: &mut Tally, seed: u64, policy: &ClientConfig) -> std::io::Result<()> {
    println!("\n4. Retries: a server that refuses 50% of requests (before applying them)");
    let flaky = embedded_server(ServerConfig {
        faults: FaultConfig {
            fail_rate: 0.5,
            seed,
            ..FaultConfig::default()
        },
        ..ServerConfig::default()
    })
    .await?;
    println!(
        "   server: abacus serve --fail-rate 0.5 --fault-seed {seed}  ({})",
        flaky.addr
    );
    let client = narrated_client(
        flaky.addr,
        ClientConfig {
            // This section is about retries; section 6 shows the breaker.
            breaker: None,
            ..policy.clone()
        },
    );
    for (a, b) in [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)] {
        println!("   add({a}, {b}):");
        t.expect_ok_or_give_up(&format!("  add({a}, {b})"), client.add(a, b).await);
    }

    println!(
        "\n5. Partial failure: a server that applies Accumulate, then loses 50% of the responses"
    );
    let lossy = embedded_server(ServerConfig {
        faults: FaultConfig {
            drop_after_apply_rate: 0.5,
            seed,
            ..FaultConfig::default()
        },
        ..ServerConfig::default()
    })
    .await?;
    println!(
        "   server: abacus serve --drop-after-apply-rate 0.5 --fault-seed {seed}  ({})",
        lossy.addr
    );
    for mode in [
        Delivery::AtLeastOnce,
        Delivery::AtMostOnce,
        Delivery::ExactlyOnce,
    ] {
        let register = mode.name();
        println!("\n   --mode {mode}: 5 × accumulate({register}, 1)");
        let client = narrated_client(
            lossy.addr,
            ClientConfig {
                mode,
                breaker: None,
                ..policy.clone()
            },
        );
        let (mut acked, mut unknown, mut replays) = (0, 0, 0);
        let ids = IdGenerator::seeded(seed);
        for _ in 0..5 {
            // Exactly-once: one ID per logical call (the client would make
            // one itself; the demo makes it here so that it can re-send the
            // call later under the same ID).
            let id = if mode.attaches_request_ids() {
                ids.next_id()
            } else {
                String::new()
            };
            let mut result = client.accumulate_with_id(register, 1.0, &id).await;
            if let Err(e) = &result
                && e.outcome == Outcome::Unknown
                && !id.is_empty()
            {
                println!("     outcome unknown: {e}");
                println!("     -> safe to re-send later under the same id {id}:");
                result = client.accumulate_with_id(register, 1.0, &id).await;
            }
            match result {
                Ok((v, replayed)) => {
                    acked += 1;
                    replays += u32::from(replayed);
                    println!(
                        "     ok -> {v}{}",
                        if replayed { " (replayed)" } else { "" }
                    );
                }
                Err(e) => {
                    if e.outcome == Outcome::Unknown {
                        unknown += 1;
                    }
                    println!("     error: {e}");
                }
            }
        }
        let value = match client.get(register).await {
            Ok(v) => v,
            Err(e) => {
                t.surprises.push(format!("get({register}): {e}"));
                continue;
            }
        };
        println!(
            "   => {acked} acknowledged, {unknown} with unknown outcome; register {register} = {value} (5 intended)"
        );
        // What each mode promises, whatever the policy flags: these are the
        // surprises. (Whether at-least-once *does* double-apply depends on
        // the retries the flags allow; with the defaults it does.)
        let never_lost = value >= f64::from(acked);
        match mode {
            Delivery::AtLeastOnce if value > 5.0 => {
                t.expected_errors += 1;
                println!(
                    "   => DOUBLE-APPLIED: retries re-sent requests the server had already applied."
                );
            }
            Delivery::AtLeastOnce if never_lost => {
                t.ok += 1;
                println!(
                    "   => not double-applied this time: no retry re-sent a request the server had applied."
                );
            }
            Delivery::AtMostOnce if value <= 5.0 && never_lost => {
                t.ok += 1;
                println!(
                    "   => never applied twice; the unknown outcomes are reported, not retried."
                );
            }
            Delivery::ExactlyOnce if value == 5.0 && acked == 5 => {
                t.ok += 1;
                println!(
                    "   => applied exactly once each: {replays} call(s) got their result replayed from the dedup store instead of applying again."
                );
            }
            Delivery::ExactlyOnce if value <= 5.0 && never_lost => {
                t.ok += 1;
                println!(
                    "   => never applied twice; {} call(s) still unknown: re-sending them under their IDs is safe.",
                    5 - acked
                );
            }
            _ => t.surprises.push(format!(
                "{mode}: register {register} = {value} after {acked} acknowledged"
            )),
        }
    }
    let quiet = Client::new(
        tcp_channel(&lossy.addr.to_string()).expect("a socket address is a valid authority"),
        ClientConfig {
            events: EventSink::default(),
            ..policy.clone()
        },
    );
    let stats = quiet.stats().await;
    match stats {
        Ok(s) => println!("\n   server stats: {}", crate::client::Reply::Stats(s)),
        Err(e) => t.surprises.push(format!("stats: {e}")),
    }

    breaker(t, seed, policy).await
}

/// Section 6: a server that fails everything trips the breaker; calls then
/// fail fast without touching the network; when the server recovers, a
/// probe closes the breaker again.
async fn breaker(t: &mut Tally, seed: u64, policy: &ClientConfig) -> std::io::Result<()> {
    println!("\n6. Circuit breaker: a server that fails every request, then recovers");
    let switch = FaultSwitch::default();
    let down = embedded_server(ServerConfig {
        faults: FaultConfig {
            fail_rate: 1.0,
            seed,
            ..FaultConfig::default()
        },
        fault_switch: switch.clone(),
        ..ServerConfig::default()
    })
    .await?;
    println!("   server: abacus serve --fail-rate 1  ({})", down.addr);
    let config = ClientConfig {
        endpoint: down.addr.to_string(),
        // Trips after four failures in a row, whatever the retry policy:
        // with the default 4 attempts the first call trips it, with
        // `--attempts 1` the fourth does, and the fifth fails fast.
        breaker: Some(BreakerConfig {
            consecutive_failures_max: Some(4),
            open_ms: 500,
            ..BreakerConfig::default()
        }),
        ..policy.clone()
    };
    let client = narrated_client(down.addr, config);
    let mut fast = 0;
    for i in 0..5 {
        let started = std::time::Instant::now();
        match client.add(f64::from(i), 1.0).await {
            Ok(v) => t
                .surprises
                .push(format!("add succeeded against a failing server: {v}")),
            Err(e) if matches!(e.cause, crate::client::Cause::CircuitOpen { .. }) => {
                fast += 1;
                println!("     failed fast in {:?}: {e}", started.elapsed());
            }
            Err(e) => println!("     error: {e}"),
        }
    }
    println!("   ... the server recovers (faults switched off); waiting for the breaker to probe");
    switch.turn_off();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let recovered = client.add(40.0, 2.0).await;
    match (&recovered, client.breaker().map(|b| b.state())) {
        (Ok(v), Some(state)) => {
            println!("     add(40, 2) = {v}; breaker is {}", state.name());
            if fast > 0 && state.name() == "closed" {
                t.ok += 1;
            } else {
                t.surprises.push(format!(
                    "breaker: {fast} fast failures, state {}",
                    state.name()
                ));
            }
        }
        _ => t
            .surprises
            .push(format!("breaker did not recover: {recovered:?}")),
    }
    if let Some(b) = client.breaker() {
        println!("   breaker: {}", b.snapshot());
    }
    Ok(())
}
