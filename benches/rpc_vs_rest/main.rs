//! gRPC vs REST, side by side, in one run against one in-process server
//! (one `Calculator`, both fronts, same state), on loopback.
//!
//! ```text
//! cargo bench --bench rpc_vs_rest            # full run (~80 s on 2 cores);
//!                                            # rewrites docs/img/*.svg and the
//!                                            # results section of docs/rpc-vs-rest.md
//! cargo bench --bench rpc_vs_rest -- --quick # ~16 s smoke run; bench-results/ only
//! ```
//!
//! # What it measures
//! 1. *Warm*: unary `Add` at concurrency 1, 16 and 64, closed loop, for a
//!    fixed time per cell, through gRPC (HTTP/2 + protobuf), REST over
//!    HTTP/1.1 keep-alive (JSON) and REST over h2c (JSON): throughput,
//!    p50/p90/p99/max latency, wire bytes per call each way.
//! 2. *Cold*: one call per new connection, sequentially.
//! 3. *Encoding*: a payload-size sweep of N operands, prost vs serde_json,
//!    at the encoding level (the contract has no batch RPC).
//!
//! # Fairness
//! The fronts run in alternating rounds (the order rotates every round),
//! so a burst of noise on this shared machine lands on all three; ratios
//! are medians of per-round ratios. Server and clients share one tokio
//! runtime on the same cores — both fronts pay that equally, and absolute
//! numbers are labelled with the machine they came from.
//!
//! # Layout
//! - `wire.rs`: the byte-counting stream every client connects through.
//! - `clients.rs`: the three clients.
//! - `load.rs`: the closed-loop runner and percentiles.
//! - `cold.rs`: one call per connection.
//! - `encoding.rs`: the payload-size sweep.
//! - `report.rs`: CSV, JSON, Markdown tables, the docs splice.
//! - `plot.rs`: the SVG figures.

mod clients;
mod cold;
mod encoding;
mod load;
mod plot;
mod report;
mod wire;

use std::{sync::Arc, time::Duration};

use abacus::{
    server::{self, Calculator, ServerConfig},
    store::MemoryLedger,
    trace::EventSink,
};
use clients::{Front, Target};
use load::Sample;
use wire::Counters;

/// How long and how often.
#[derive(Debug, Clone, Copy)]
struct Plan {
    quick: bool,
    concurrency: [usize; 3],
    /// Measured time per (front, concurrency), split over `rounds`.
    cell: Duration,
    rounds: usize,
    warmup: Duration,
    /// Cold calls per front per round.
    cold_per_round: usize,
    encoding_sizes: [usize; 4],
    /// Time per encoding measurement.
    encoding_budget: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                concurrency: [1, 16, 64],
                cell: Duration::from_millis(1500),
                rounds: 3,
                warmup: Duration::from_millis(200),
                cold_per_round: 100,
                encoding_sizes: [1, 16, 256, 4096],
                encoding_budget: Duration::from_millis(15),
            }
        } else {
            Self {
                quick,
                concurrency: [1, 16, 64],
                cell: Duration::from_secs(8),
                rounds: 8,
                warmup: Duration::from_millis(500),
                cold_per_round: 250,
                encoding_sizes: [1, 16, 256, 4096],
                encoding_budget: Duration::from_millis(80),
            }
        }
    }
}

/// Per-round ratios of one front against gRPC, for medians.
#[derive(Debug, Default, Clone)]
pub(crate) struct Ratios {
    pub(crate) throughput: Vec<f64>,
    pub(crate) p50: Vec<f64>,
    pub(crate) p99: Vec<f64>,
}

pub(crate) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn sorted(sample: &Sample) -> Vec<u64> {
    let mut v = sample.latencies_ns.clone();
    v.sort_unstable();
    v
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let plan = Plan::new(quick);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let results = runtime.block_on(run(plan));
    report::write(&results, plan.quick);
}

async fn start_server() -> Target {
    // Defaults: no faults, events to `tracing` only (no subscriber here),
    // and an in-flight limit (256) above the highest concurrency (64), so
    // nothing is shed, only measured.
    let config = ServerConfig {
        events: EventSink::log_only(),
        ..ServerConfig::default()
    };
    let state = Arc::new(MemoryLedger::new(
        config.dedup.clone(),
        config.events.clone(),
    ));
    let calculator = Calculator::from_config(&config, state);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let rest = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let target = Target {
        grpc: grpc.local_addr().expect("addr"),
        rest: rest.local_addr().expect("addr"),
    };
    tokio::spawn(server::serve_rest(
        calculator.clone(),
        server::tcp_incoming(rest),
        std::future::pending(),
    ));
    tokio::spawn(server::serve_calculator(
        calculator,
        server::tcp_incoming(grpc),
        std::future::pending(),
    ));
    target
}

/// The fronts in the order round `r` runs them: rotated every round.
fn order(r: usize) -> [Front; 3] {
    let mut fronts = Front::ALL;
    fronts.rotate_left(r % 3);
    fronts
}

fn front_index(front: Front) -> usize {
    Front::ALL
        .iter()
        .position(|f| *f == front)
        .expect("known front")
}

async fn run(plan: Plan) -> report::Results {
    let target = start_server().await;
    eprintln!(
        "rpc_vs_rest: {} run; gRPC on {}, REST on {}",
        if plan.quick { "quick" } else { "full" },
        target.grpc,
        target.rest
    );
    let mut load_rows = Vec::new();
    for &concurrency in &plan.concurrency {
        load_rows.extend(warm(plan, target, concurrency).await);
    }
    let cold_rows = cold_all(plan, target).await;
    eprintln!("[encoding] payload-size sweep (prost vs serde_json)");
    let mut encoding_rows = Vec::new();
    for values in encoding::Values::ALL {
        for &n in &plan.encoding_sizes {
            let row = encoding::measure(values, n, plan.encoding_budget);
            eprintln!(
                "[encoding] {:>14} N={:>5}: proto {:>6} B, JSON {:>6} B",
                row.values, n, row.proto_bytes, row.json_bytes
            );
            encoding_rows.push(row);
        }
    }
    report::Results {
        machine: report::Machine::here(),
        mode: if plan.quick { "quick" } else { "full" },
        cell_seconds: plan.cell.as_secs_f64(),
        rounds: plan.rounds,
        load: load_rows,
        cold: cold_rows,
        encoding: encoding_rows,
        bodies: encoding::add_bodies(),
    }
}

/// One concurrency level: every front, alternating rounds.
async fn warm(plan: Plan, target: Target, concurrency: usize) -> Vec<report::LoadRow> {
    let counters: Vec<Arc<Counters>> = Front::ALL.iter().map(|_| Arc::default()).collect();
    let mut callers = Vec::new();
    for front in Front::ALL {
        let c = &counters[front_index(front)];
        let clients = clients::connect_callers(front, target, concurrency, c)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", front.label()));
        // Warm-up: first calls allocate, fill HPACK tables, grow windows.
        let (clients, _) = load::run(clients, plan.warmup, c).await;
        callers.push(Some(clients));
    }
    let slice = plan.cell / plan.rounds as u32;
    let mut samples: Vec<Sample> = vec![Sample::default(); 3];
    let mut ratios: Vec<Ratios> = vec![Ratios::default(); 3];
    for r in 0..plan.rounds {
        let mut round: Vec<Sample> = vec![Sample::default(); 3];
        for front in order(r) {
            let i = front_index(front);
            let clients = callers[i].take().expect("clients returned each round");
            let (clients, sample) = load::run(clients, slice, &counters[i]).await;
            callers[i] = Some(clients);
            round[i] = sample;
        }
        let grpc = &round[0];
        let (g_sorted, g_tput) = (sorted(grpc), grpc.throughput());
        let mut line = format!("[warm c={concurrency:>2}] round {}/{}:", r + 1, plan.rounds);
        for (i, sample) in round.into_iter().enumerate() {
            let s = sorted(&sample);
            ratios[i].throughput.push(sample.throughput() / g_tput);
            ratios[i]
                .p50
                .push(load::percentile_us(&s, 0.5) / load::percentile_us(&g_sorted, 0.5));
            ratios[i]
                .p99
                .push(load::percentile_us(&s, 0.99) / load::percentile_us(&g_sorted, 0.99));
            line += &format!(
                "  {} {:.0}/s p50 {:.0}µs{}",
                Front::ALL[i].key(),
                sample.throughput(),
                load::percentile_us(&s, 0.5),
                if sample.errors > 0 {
                    format!(" ERRORS {}", sample.errors)
                } else {
                    String::new()
                },
            );
            if let Some(e) = &sample.first_error {
                eprintln!("  first error ({}): {e}", Front::ALL[i].key());
            }
            samples[i].absorb(sample);
        }
        eprintln!("{line}");
    }
    Front::ALL
        .iter()
        .zip(samples)
        .zip(ratios)
        .map(|((front, sample), ratios)| {
            report::LoadRow::new(*front, concurrency, &sample, &ratios)
        })
        .collect()
}

/// Cold calls, alternating fronts every round.
async fn cold_all(plan: Plan, target: Target) -> Vec<report::ColdRow> {
    let mut samples: Vec<Sample> = vec![Sample::default(); 3];
    let mut p50_ratios: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let mut i_call = 0;
    for r in 0..plan.rounds {
        let mut round: Vec<Sample> = vec![Sample::default(); 3];
        for front in order(r) {
            let i = front_index(front);
            for _ in 0..plan.cold_per_round {
                cold::once(front, target, i_call, &mut round[i]).await;
                i_call += 1;
            }
        }
        let g = load::percentile_us(&sorted(&round[0]), 0.5);
        let mut line = format!("[cold] round {}/{}:", r + 1, plan.rounds);
        for (i, sample) in round.into_iter().enumerate() {
            let p50 = load::percentile_us(&sorted(&sample), 0.5);
            p50_ratios[i].push(p50 / g);
            line += &format!("  {} p50 {:.0}µs", Front::ALL[i].key(), p50);
            if let Some(e) = &sample.first_error {
                eprintln!("  first error ({}): {e}", Front::ALL[i].key());
            }
            samples[i].absorb(sample);
        }
        eprintln!("{line}");
    }
    Front::ALL
        .iter()
        .zip(samples)
        .zip(p50_ratios)
        .map(|((front, sample), r)| report::ColdRow::new(*front, &sample, median(&r)))
        .collect()
}
