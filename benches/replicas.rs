//! Benchmark: the client over replicas.
//!
//! 1. **Overhead** (`overhead`): the single-endpoint stack (`Client::new`)
//!    against the multi-endpoint stack (three endpoints, three connections
//!    to the same in-process server, so only the client differs), and the
//!    single stack behind a `tower::buffer::Buffer` (the task hop tower's
//!    `Balance` would need to be shared). Alternating rounds of sequential
//!    calls; the median per-round p50 ratio with its interquartile range.
//! 2. **Slow replica** (`slow`): three in-process replicas, one answering
//!    100 ms late; 16 callers through `abacus bench`'s own measuring code,
//!    for round robin and p2c, each with and without hedging, and one fast
//!    endpoint alone as the floor. Each configuration runs in several
//!    rounds with a fresh client (fresh latency estimates); the table shows
//!    the median and the range over rounds.
//! 3. **Instructions** (`calls VARIANT N`): only N sequential calls of one
//!    variant (`bare` tonic, `single`, `multi`), for `valgrind --tool=callgrind`: the
//!    difference between two N's divided by their difference is the
//!    instructions per call, free of start-up (docs/benchmarks.md).
//!
//! Run: `cargo bench --bench replicas` (both tables), or
//! `cargo bench --bench replicas -- overhead|slow`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use abacus::{
    cli::bench::{BenchOp, BenchReport, Load, measure},
    client::{
        BalanceConfig, Balancing, Call, CallError, Client, ClientConfig, HedgeConfig, Reply,
        Request, tcp_channel,
    },
    core::BinaryOp,
    server::{self, DedupConfig, FaultConfig, ServerConfig},
    store::{Ledger, MemoryLedger as State},
    trace::EventSink,
};
use tower::{ServiceExt, buffer::Buffer, util::BoxCloneSyncService};

const ROUNDS: usize = 40;
const CALLS_PER_ROUND: usize = 1_000;
const SLOW_ROUNDS: usize = 3;
const SLOW_CALLS: u64 = 20_000;

/// Starts a server over `ledger` with `faults`; returns its address.
async fn replica(ledger: Arc<dyn Ledger>, faults: FaultConfig) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server::serve_with_ledger(
        ServerConfig {
            faults,
            ..ServerConfig::default()
        },
        ledger,
        server::tcp_incoming(listener),
        std::future::pending(),
    ));
    addr
}

fn ledger() -> Arc<dyn Ledger> {
    Arc::new(State::new(DedupConfig::default(), EventSink::log_only()))
}

fn config() -> ClientConfig {
    ClientConfig {
        seed: Some(1),
        ..ClientConfig::default()
    }
}

fn add(i: usize) -> Request {
    Request::Binary {
        op: BinaryOp::Add,
        a: i as f64,
        b: 1.0,
    }
}

/// The single-endpoint client, the same three times over one server, and
/// the single one behind a Buffer.
fn clients(addr: SocketAddr) -> (Client, Client, Client) {
    let name = addr.to_string();
    let channel = || tcp_channel(&name).expect("channel");
    let single = Client::new(channel(), config());
    let multi =
        Client::with_endpoints((0..3).map(|i| (format!("{name}#{i}"), channel())), config());
    let inner = Client::new(channel(), config());
    let buffered = {
        let service = tower::service_fn(move |call: Call| {
            let inner = inner.clone();
            async move { inner.call(call.request).await }
        });
        let buffer = Buffer::new(BoxCloneSyncService::new(service), 1024);
        Client::from_stack(BoxCloneSyncService::new(buffer.map_err(|e| {
            CallError::new(
                tonic::Code::Internal,
                e.to_string(),
                abacus::client::Cause::Transport,
                abacus::trace::Outcome::Unknown,
            )
        })))
    };
    (single, multi, buffered)
}

async fn sequential(client: &Client, out: &mut Vec<Duration>) {
    for i in 0..CALLS_PER_ROUND {
        let t = std::time::Instant::now();
        let r = client.call(add(i)).await.expect("call");
        assert_eq!(r, Reply::Calc(i as f64 + 1.0));
        out.push(t.elapsed());
    }
}

fn p50(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median and quartiles of percent changes.
fn quartiles(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let pct = |x: f64| (x - 1.0) * 100.0;
    (
        pct(v[v.len() / 4]),
        pct(v[v.len() / 2]),
        pct(v[v.len() * 3 / 4]),
    )
}

async fn overhead() {
    let addr = replica(ledger(), FaultConfig::default()).await;
    let (single, multi, buffered) = clients(addr);
    for c in [&single, &multi, &buffered] {
        sequential(c, &mut Vec::new()).await;
    }
    let (mut multi_ratios, mut buffer_ratios) = (Vec::new(), Vec::new());
    let mut p50s = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        let (mut s, mut m, mut b) = (Vec::new(), Vec::new(), Vec::new());
        // Rotate the order, so none always runs warmest.
        match round % 3 {
            0 => {
                sequential(&single, &mut s).await;
                sequential(&multi, &mut m).await;
                sequential(&buffered, &mut b).await;
            }
            1 => {
                sequential(&multi, &mut m).await;
                sequential(&buffered, &mut b).await;
                sequential(&single, &mut s).await;
            }
            _ => {
                sequential(&buffered, &mut b).await;
                sequential(&single, &mut s).await;
                sequential(&multi, &mut m).await;
            }
        }
        let (ps, pm, pb) = (p50(&mut s), p50(&mut m), p50(&mut b));
        multi_ratios.push(pm.as_secs_f64() / ps.as_secs_f64());
        buffer_ratios.push(pb.as_secs_f64() / ps.as_secs_f64());
        for (all, p) in p50s.iter_mut().zip([ps, pm, pb]) {
            all.push(p);
        }
    }
    let med = |v: &mut Vec<Duration>| p50(v).as_micros();
    println!(
        "client over replicas, loopback, one in-process server, {ROUNDS} rotating rounds × {CALLS_PER_ROUND} sequential Add calls"
    );
    println!("| stack | median p50 µs | p50 vs single-endpoint, median (IQR) |");
    println!("|---|---:|---:|");
    println!(
        "| single endpoint (`Client::new`) | {} | — |",
        med(&mut p50s[0])
    );
    let (lo, mid, hi) = quartiles(&mut multi_ratios);
    println!(
        "| three endpoints (balancer, p2c) | {} | {mid:+.1} % ({lo:+.1} … {hi:+.1}) |",
        med(&mut p50s[1])
    );
    let (lo, mid, hi) = quartiles(&mut buffer_ratios);
    println!(
        "| single endpoint behind a `Buffer` | {} | {mid:+.1} % ({lo:+.1} … {hi:+.1}) |",
        med(&mut p50s[2])
    );
}

/// One slow-replica configuration.
struct Setup {
    name: &'static str,
    balancing: Balancing,
    hedge: bool,
    /// Only the first (fast) replica.
    alone: bool,
}

async fn slow() {
    let shared = ledger();
    let fast1 = replica(Arc::clone(&shared), FaultConfig::default()).await;
    let fast2 = replica(Arc::clone(&shared), FaultConfig::default()).await;
    let slow = replica(
        Arc::clone(&shared),
        FaultConfig {
            delay_ms: 100..=100,
            ..FaultConfig::default()
        },
    )
    .await;
    let setups = [
        Setup {
            name: "one fast endpoint alone (floor)",
            balancing: Balancing::PeakEwmaP2c,
            hedge: false,
            alone: true,
        },
        Setup {
            name: "round robin",
            balancing: Balancing::RoundRobin,
            hedge: false,
            alone: false,
        },
        Setup {
            name: "round robin + hedging (10 ms)",
            balancing: Balancing::RoundRobin,
            hedge: true,
            alone: false,
        },
        Setup {
            name: "p2c over peak-EWMA",
            balancing: Balancing::PeakEwmaP2c,
            hedge: false,
            alone: false,
        },
        Setup {
            name: "p2c + hedging (10 ms)",
            balancing: Balancing::PeakEwmaP2c,
            hedge: true,
            alone: false,
        },
    ];
    println!(
        "\none of three replicas answers 100 ms late; 16 callers, {SLOW_CALLS} Add calls per round, {SLOW_ROUNDS} rounds per row, a fresh client each round"
    );
    println!(
        "| client | p50 ms | p99 ms (range over rounds) | max ms | calls/s | slow replica's share of attempts | hedges per 1,000 calls |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for setup in setups {
        let mut reports: Vec<BenchReport> = Vec::new();
        for round in 0..SLOW_ROUNDS {
            let config = ClientConfig {
                seed: Some(round as u64 + 1),
                balance: BalanceConfig {
                    policy: setup.balancing,
                    ..BalanceConfig::default()
                },
                hedge: setup.hedge.then(|| HedgeConfig {
                    attempts_max: 2,
                    delay: Duration::from_millis(10),
                    ..HedgeConfig::default()
                }),
                ..ClientConfig::default()
            };
            let addrs: Vec<SocketAddr> = if setup.alone {
                vec![fast1]
            } else {
                vec![fast1, fast2, slow]
            };
            let client = Client::with_endpoints(
                addrs
                    .iter()
                    .map(|a| (a.to_string(), tcp_channel(&a.to_string()).expect("channel"))),
                config,
            );
            let report = measure(
                &client,
                BenchOp::Add,
                "bench",
                Load::Calls(SLOW_CALLS),
                16,
                std::future::pending(),
                |_, _, _| {},
            )
            .await;
            assert_eq!(report.errors, 0, "{report}");
            reports.push(report);
        }
        let mut p99: Vec<f64> = reports.iter().map(|r| r.p99_ms).collect();
        p99.sort_by(f64::total_cmp);
        let median = |f: fn(&BenchReport) -> f64| {
            let mut v: Vec<f64> = reports.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let slow_name = slow.to_string();
        let slow_share = {
            let mut v: Vec<f64> = reports
                .iter()
                .map(|r| {
                    r.per_endpoint
                        .get(&slow_name)
                        .map_or(0.0, |e| e.attempts as f64 / r.attempts.max(1) as f64)
                })
                .collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "| {} | {:.2} | **{:.1}** ({:.1} … {:.1}) | {:.0} | {:.0} | {:.2} % | {:.1} |",
            setup.name,
            median(|r| r.p50_ms),
            p99[p99.len() / 2],
            p99[0],
            p99[p99.len() - 1],
            median(|r| r.max_ms),
            median(|r| r.throughput_per_s),
            slow_share * 100.0,
            median(|r| r.hedges as f64 * 1000.0 / r.calls.max(1) as f64),
        );
    }
}

/// Only `n` sequential calls of one variant, for callgrind: `bare` (the
/// generated tonic client), `single` or `multi`.
async fn calls_only(variant: &str, n: usize) {
    let addr = replica(ledger(), FaultConfig::default()).await;
    if variant == "bare" {
        let channel = tcp_channel(&addr.to_string()).expect("channel");
        let mut bare = abacus::pb::calculator_client::CalculatorClient::new(channel);
        for i in 0..n {
            let request = abacus::pb::BinaryRequest {
                a: i as f64,
                b: 1.0,
            };
            bare.add(request).await.expect("call");
        }
        return;
    }
    let (single, multi, _) = clients(addr);
    let client = match variant {
        "single" => single,
        "multi" => multi,
        other => panic!("unknown variant {other:?}: bare, single or multi"),
    };
    for i in 0..n {
        client.call(add(i)).await.expect("call");
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    // Two threads, as the machine has two cores; callgrind serialises
    // them anyway.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        match args.first().map(String::as_str) {
            Some("calls") => {
                let variant = args.get(1).map_or("single", String::as_str);
                let n = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(1000);
                calls_only(variant, n).await;
            }
            Some("overhead") => overhead().await,
            Some("slow") => slow().await,
            _ => {
                overhead().await;
                slow().await;
            }
        }
    });
}
