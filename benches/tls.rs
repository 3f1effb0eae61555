//! Benchmark: TLS vs plaintext on the gRPC front, same run, same process.
//!
//! 1. Requests per second on warm connections: 16 callers over one
//!    connection each way, in alternating rounds (plaintext, TLS, …) so
//!    machine noise lands on both alike; the figure is the median of the
//!    per-round ratios TLS / plaintext, with its spread.
//! 2. Sequential latency on the same warm connections (p50 per round).
//! 3. The cost of a new connection: connect, handshake and one call, each
//!    way, alternating; the median per connection, and the difference.
//!
//! Run: `cargo bench --bench tls` (release). Certificates are generated at
//! start (rcgen, ECDSA P-256, as `tests/support/certs.rs` makes them).

#[path = "../tests/support/certs.rs"]
mod certs;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use abacus::{
    client::{ClientTls, tcp_channel_with},
    pb::{BinaryRequest, calculator_client::CalculatorClient},
    server::{self, Edge, ServerConfig, tls::ServerTls},
    tls::PemSource,
};
use tonic::transport::Channel;

const ROUNDS: usize = 30;
const CALLS_PER_ROUND: usize = 8_000;
const CONCURRENCY: usize = 16;
const SEQUENTIAL_CALLS: usize = 1_000;
const NEW_CONNECTIONS: usize = 200;

fn pem<'a>(flag: &'static str, text: &'a str) -> PemSource<'a> {
    PemSource {
        flag,
        path: std::path::Path::new("(generated)"),
        pem: text.as_bytes(),
    }
}

async fn start(edge: Edge) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig {
        edge,
        ..ServerConfig::default()
    };
    tokio::spawn(server::serve(
        config,
        server::tcp_incoming(listener),
        std::future::pending(),
    ));
    addr
}

async fn connected(addr: SocketAddr, tls: Option<&ClientTls>) -> CalculatorClient<Channel> {
    let mut client = CalculatorClient::new(tcp_channel_with(&addr.to_string(), tls).unwrap());
    // Warm: the connection (and handshake) happen here.
    client.add(BinaryRequest { a: 1.0, b: 1.0 }).await.unwrap();
    client
}

/// Requests per second of `CONCURRENCY` callers sharing `client`.
async fn throughput(client: &CalculatorClient<Channel>) -> f64 {
    let t = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let mut c = client.clone();
            tokio::spawn(async move {
                for i in 0..CALLS_PER_ROUND / CONCURRENCY {
                    let r = c
                        .add(BinaryRequest {
                            a: i as f64,
                            b: 1.0,
                        })
                        .await;
                    assert_eq!(r.unwrap().into_inner().result, i as f64 + 1.0);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    CALLS_PER_ROUND as f64 / t.elapsed().as_secs_f64()
}

/// Median latency of sequential calls.
async fn sequential_p50(client: &mut CalculatorClient<Channel>) -> Duration {
    let mut times = Vec::with_capacity(SEQUENTIAL_CALLS);
    for i in 0..SEQUENTIAL_CALLS {
        let t = Instant::now();
        client
            .add(BinaryRequest {
                a: i as f64,
                b: 1.0,
            })
            .await
            .unwrap();
        times.push(t.elapsed());
    }
    times.sort_unstable();
    times[times.len() / 2]
}

/// Time to connect (and handshake) and make one call on a new connection.
async fn new_connection(addr: SocketAddr, tls: Option<&ClientTls>) -> Duration {
    let t = Instant::now();
    let client = connected(addr, tls).await;
    let took = t.elapsed();
    drop(client);
    took
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// "median (p10–p90, min–max)" of `values`.
fn spread(mut values: Vec<f64>, unit: &str, scale: f64) -> String {
    values.sort_by(f64::total_cmp);
    let f = |v: f64| v * scale;
    format!(
        "{:.3}{unit} (p10–p90 {:.3}–{:.3}, min–max {:.3}–{:.3}, n={})",
        f(quantile(&values, 0.5)),
        f(quantile(&values, 0.1)),
        f(quantile(&values, 0.9)),
        f(values[0]),
        f(values[values.len() - 1]),
        values.len()
    )
}

#[tokio::main]
async fn main() {
    let pki = certs::Pki::generate();
    let server_tls = ServerTls::from_pem(
        pem("--tls-cert", &pki.server.cert),
        pem("--tls-key", &pki.server.key),
        None,
    )
    .unwrap();
    let client_tls = ClientTls::from_pem(pem("--tls-ca", &pki.ca), None).unwrap();
    let plain_addr = start(Edge::default()).await;
    let tls_addr = start(Edge {
        tls: Some(server_tls),
        ..Edge::default()
    })
    .await;

    let mut plain = connected(plain_addr, None).await;
    let mut tls = connected(tls_addr, Some(&client_tls)).await;
    // Warm-up round each, not reported.
    throughput(&plain).await;
    throughput(&tls).await;

    let (mut ratios, mut plain_rps, mut tls_rps, mut lat_ratios) = (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        // Alternate which goes first, so neither always follows the other.
        let (p, t) = if round % 2 == 0 {
            let p = throughput(&plain).await;
            (p, throughput(&tls).await)
        } else {
            let t = throughput(&tls).await;
            (throughput(&plain).await, t)
        };
        plain_rps.push(p);
        tls_rps.push(t);
        ratios.push(t / p);
        let pl = sequential_p50(&mut plain).await;
        let tl = sequential_p50(&mut tls).await;
        lat_ratios.push(tl.as_secs_f64() / pl.as_secs_f64());
    }

    let (mut plain_new, mut tls_new, mut extra) = (vec![], vec![], vec![]);
    for _ in 0..NEW_CONNECTIONS {
        let p = new_connection(plain_addr, None).await.as_secs_f64();
        let t = new_connection(tls_addr, Some(&client_tls))
            .await
            .as_secs_f64();
        plain_new.push(p);
        tls_new.push(t);
        extra.push(t - p);
    }

    println!("TLS vs plaintext, gRPC Add over loopback, {ROUNDS} alternating rounds");
    println!(
        "warm, {CONCURRENCY} callers, {CALLS_PER_ROUND} calls/round: TLS/plaintext requests/s = {}",
        spread(ratios, "×", 1.0)
    );
    println!("  plaintext req/s: {}", spread(plain_rps, "", 1.0));
    println!("  TLS req/s:       {}", spread(tls_rps, "", 1.0));
    println!(
        "warm, sequential p50 latency TLS/plaintext = {}",
        spread(lat_ratios, "×", 1.0)
    );
    println!("new connection + first call ({NEW_CONNECTIONS} each, alternating):");
    println!("  plaintext: {}", spread(plain_new, " ms", 1e3));
    println!("  TLS:       {}", spread(tls_new, " ms", 1e3));
    println!(
        "  TLS − plaintext per connection: {}",
        spread(extra, " ms", 1e3)
    );
}
