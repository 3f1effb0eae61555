//! Instructions per `Accumulate`, for callgrind (`valgrind --tool=callgrind`):
//! a small, fixed workload whose cost per call is the difference of two runs
//! of different lengths (start-up cancels out). See docs/durable.md.
//!
//! - `durable_ir ledger|grpc memory|durable CALLS CALLERS`: CALLS calls
//!   spread over CALLERS tasks, straight into the ledger or over loopback
//!   gRPC (8 connections), against an in-memory or a durable ledger (data
//!   under the system temp dir);
//! - `durable_ir client ADDR CALLS [CALLERS]`: CALLS calls spread over
//!   CALLERS tasks (1: sequential) against a running server (e.g.
//!   `abacus serve --data-dir` under callgrind or perf).
//!
//! Not a timed benchmark: `cargo bench` runs it as `durable_ir --bench`,
//! which does 10,000 calls straight into an in-memory ledger.

use std::sync::Arc;

use abacus::{
    pb::{AccumulateRequest, calculator_client::CalculatorClient},
    server::{self, ServerConfig},
    store::{AccumulateArgs, Ledger, MemoryLedger, accumulate, redb::RedbLedger},
    trace::EventSink,
};
use tonic::transport::Channel;

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let how = args.first().map_or("ledger", String::as_str);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if how == "client" {
        let addr = args[1].clone();
        let (per_caller, callers, calls) = split(&args, 2, None);
        rt.block_on(async {
            let channels = connect(&addr, callers.clamp(1, 8)).await;
            let tag = std::process::id();
            let t0 = std::time::Instant::now();
            let tasks: Vec<_> = (0..callers)
                .map(|caller| {
                    let mut c = channels[caller % channels.len()].clone();
                    tokio::spawn(async move {
                        for n in 0..per_caller {
                            c.accumulate(AccumulateRequest {
                                register: format!("latency-{caller}"),
                                delta: 1.0,
                                request_id: format!("c{tag}-{caller}-{n}"),
                            })
                            .await
                            .unwrap();
                        }
                    })
                })
                .collect();
            let what = format!("client: {calls} calls over {callers} callers");
            report_rate(tasks, t0, &what, calls).await;
        });
        return;
    }
    let kind = args.get(1).map_or("memory", String::as_str);
    let (per_caller, callers, calls) = split(&args, 2, Some(10_000));
    let dir = std::env::temp_dir().join(format!("abacus-durable-ir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let ledger: Arc<dyn Ledger> = match kind {
            "memory" => Arc::new(MemoryLedger::new(Default::default(), EventSink::log_only())),
            _ => {
                Arc::new(RedbLedger::open(Default::default(), EventSink::log_only(), &dir).unwrap())
            }
        };
        rt.block_on(async {
            let channels = if how == "grpc" {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                tokio::spawn(server::serve_with_ledger(
                    ServerConfig::default(),
                    Arc::clone(&ledger),
                    server::tcp_incoming(listener),
                    std::future::pending(),
                ));
                connect(&addr.to_string(), 8).await
            } else {
                Vec::new()
            };
            let t0 = std::time::Instant::now();
            let tasks: Vec<_> = (0..callers)
                .map(|c| {
                    let ledger = Arc::clone(&ledger);
                    let mut client = channels.get(c % 8).cloned();
                    tokio::spawn(async move {
                        for n in 0..per_caller {
                            if let Some(client) = &mut client {
                                client
                                    .accumulate(AccumulateRequest {
                                        register: format!("r{c}"),
                                        delta: 1.0,
                                        request_id: format!("id-{c}-{n}"),
                                    })
                                    .await
                                    .unwrap();
                            } else {
                                let a = AccumulateArgs {
                                    register: format!("r{c}"),
                                    delta: 1.0,
                                    request_id: format!("id-{c}-{n}"),
                                    ..Default::default()
                                };
                                accumulate(&*ledger, &a, None).await.unwrap();
                            }
                        }
                    })
                })
                .collect();
            report_rate(tasks, t0, &format!("{how} {kind}: {calls} calls"), calls).await;
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// CALLS and CALLERS from `args[at]` and `args[at + 1]` (CALLS defaults to
/// `default_calls`, CALLERS to 1 and is at least 1): the calls each caller
/// makes, the callers, and the calls made in all — CALLS rounded down to a
/// multiple of CALLERS, so that the rate reported is of the calls made.
fn split(args: &[String], at: usize, default_calls: Option<usize>) -> (usize, usize, usize) {
    let calls = match args.get(at).map(|s| s.parse::<usize>()) {
        Some(Ok(calls)) => calls,
        _ => default_calls.expect("CALLS: a number of calls"),
    };
    let callers = args
        .get(at + 1)
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    (calls / callers, callers, calls / callers * callers)
}

/// Waits for the callers started at `t0`, then prints what they did and
/// the rate.
async fn report_rate(
    tasks: Vec<tokio::task::JoinHandle<()>>,
    t0: std::time::Instant,
    what: &str,
    calls: usize,
) {
    for t in tasks {
        t.await.unwrap();
    }
    let el = t0.elapsed();
    eprintln!(
        "{what} in {:.3}s = {:.0}/s",
        el.as_secs_f64(),
        calls as f64 / el.as_secs_f64()
    );
}

/// `n` connections to the server at `addr`.
async fn connect(addr: &str, n: usize) -> Vec<CalculatorClient<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..n {
        let ch = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        channels.push(CalculatorClient::new(ch));
    }
    channels
}
