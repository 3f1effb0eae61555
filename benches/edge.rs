//! What the edge limits do under abuse, against the real `abacus serve`
//! (release) in a child process. A plain binary (`harness = false`) that
//! prints its figures and stops by itself; never part of `cargo test`.
//!
//! 1. **Shedding on queueing delay** — the CPU saturated by 64 connections
//!    × 100 concurrent `Add` streams whose clients honour the pushback,
//!    with the in-flight cap out of the way (`--in-flight-max 1000000`),
//!    and the queueing-delay shedder off (`--shed-queue-delay-ms 0`) and
//!    on (the default, 5 ms), in alternating rounds: calls answered,
//!    calls shed, their latency, and a health check's latency on its own
//!    connection.
//! 2. **Memory under a flood** — resident memory of the server (from
//!    `/proc/PID/status`) before and after connections that each open 1,000
//!    `Add` streams behind a zero flow-control window (the server admits
//!    `h2_streams_max` of them), then after 2,000 `Health/Watch` streams
//!    (the server admits `long_streams_max`).
//!
//! Run: `taskset -c 1 cargo bench --bench edge` (`-- --quick` for a smoke
//! run): the server is pinned to CPU 0, the load to CPU 1.

#[path = "../tests/e2e/raw_h2.rs"]
#[allow(dead_code)]
mod raw_h2;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use abacus::pb::{self, calculator_client::CalculatorClient};
use prost::Message as _;
use raw_h2::{HEADERS, REFUSED_STREAM, RawH2, SETTINGS_INITIAL_WINDOW_SIZE, grpc_frame};
use tonic::transport::Endpoint;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

struct Sizes {
    rounds: usize,
    load: Duration,
    connections: usize,
    streams: usize,
    flood_connections: u32,
}

const FULL: Sizes = Sizes {
    rounds: 3,
    load: Duration::from_secs(5),
    connections: 64,
    streams: 100,
    flood_connections: 50,
};

const QUICK: Sizes = Sizes {
    rounds: 1,
    load: Duration::from_secs(1),
    connections: 16,
    streams: 50,
    flood_connections: 5,
};

/// A child `abacus serve`, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(args: &[&str]) -> Self {
        // The server on CPU 0 (`taskset`), the load on the others (run the
        // bench under `taskset -c 1`): sharing cores, the load generator
        // would saturate first and measure itself.
        let mut child = Command::new("taskset")
            .args(["-c", "0", env!("CARGO_BIN_EXE_abacus")])
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn,abacus::cli=info,abacus::server=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn abacus serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("shedding") || line.contains("cap reached") {
                    eprintln!("    server: {line}");
                }
                if let Some(at) = line.find("addr=")
                    && let Some(tx) = tx.take()
                {
                    let addr = line[at + 5..].split_whitespace().next().unwrap_or("");
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("an address"));
                }
            }
        });
        // RUST_LOG=warn hides the listening line: ask for it at info.
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("abacus serve logs its address");
        Self { child, addr }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[derive(Default)]
struct Round {
    ok: Vec<Duration>,
    shed: u64,
    other: u64,
    health: Vec<Duration>,
}

/// One connection of the load: `streams` requests kept in flight at once,
/// pipelined over raw HTTP/2 (a library client would spend more CPU than
/// the server and measure itself). A stream that got a DATA frame before
/// its trailers was answered; one that got only trailers was refused, and
/// its slot waits the server's usual pushback (100 ms) before the next
/// request, as a well-behaved client would.
async fn load_connection(addr: SocketAddr, streams: u32, until: Instant) -> Round {
    let add = grpc_frame(&pb::BinaryRequest { a: 1.0, b: 2.0 }.encode_to_vec());
    let mut conn = RawH2::connect(addr, &[]).await;
    let mut round = Round::default();
    // Open streams: id -> (sent at, got data).
    let mut open: std::collections::HashMap<u32, (Instant, bool)> = Default::default();
    let mut next_id = 1u32;
    let mut waiting: std::collections::VecDeque<Instant> = Default::default();
    let mut unacked_window = 0u32;
    for _ in 0..streams {
        let id = next_id;
        next_id += 2;
        open.insert(id, (Instant::now(), false));
        conn.post(id, "/abacus.v1.Calculator/Add", "application/grpc", &add)
            .await;
    }
    while Instant::now() < until {
        // Slots back from their pushback pause.
        while waiting.front().is_some_and(|t| *t <= Instant::now()) {
            waiting.pop_front();
            let id = next_id;
            next_id += 2;
            open.insert(id, (Instant::now(), false));
            if conn
                .try_post(id, "/abacus.v1.Calculator/Add", "application/grpc", &add)
                .await
                .is_err()
            {
                round.other += 1;
                return round;
            }
        }
        let Some(frame) = conn.next_frame(Duration::from_millis(50)).await else {
            continue;
        };
        if frame.kind == raw_h2::DATA {
            unacked_window += frame.payload.len() as u32;
            if let Some(entry) = open.get_mut(&frame.stream) {
                entry.1 = true;
            }
            // Give the connection window back in batches.
            if unacked_window > 16 * 1024 {
                conn.frame(0x8, 0, 0, &unacked_window.to_be_bytes()).await;
                unacked_window = 0;
            }
        }
        if frame.kind == HEADERS && frame.flags & 0x1 != 0 {
            let Some((sent, data)) = open.remove(&frame.stream) else {
                continue;
            };
            if data {
                round.ok.push(sent.elapsed());
                let id = next_id;
                next_id += 2;
                open.insert(id, (Instant::now(), false));
                if conn
                    .try_post(id, "/abacus.v1.Calculator/Add", "application/grpc", &add)
                    .await
                    .is_err()
                {
                    round.other += 1;
                    return round;
                }
            } else {
                round.shed += 1;
                waiting.push_back(Instant::now() + Duration::from_millis(100));
            }
        }
        if frame.rst_code().is_some() {
            round.other += 1;
            open.remove(&frame.stream);
            waiting.push_back(Instant::now() + Duration::from_millis(100));
        }
    }
    round
}

async fn load_round(addr: SocketAddr, sizes: &Sizes) -> Round {
    let until = Instant::now() + sizes.load;
    let tasks: Vec<_> = (0..sizes.connections)
        .map(|_| tokio::spawn(load_connection(addr, sizes.streams as u32, until)))
        .collect();
    // Health, sequentially, on its own connection.
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    let mut round = Round::default();
    while Instant::now() < until {
        let start = Instant::now();
        if health.check(HealthCheckRequest::default()).await.is_ok() {
            round.health.push(start.elapsed());
        }
    }
    for task in tasks {
        let part = task.await.unwrap();
        round.ok.extend(part.ok);
        round.shed += part.shed;
        round.other += part.other;
    }
    round.ok.sort();
    round.health.sort();
    round
}

async fn shedding(sizes: &Sizes) {
    println!(
        "## Shedding on queueing delay: {} connections x {} streams of Add (raw HTTP/2, pipelined; refused slots pause 100 ms), in-flight cap out of the way, {:?} rounds",
        sizes.connections, sizes.streams, sizes.load
    );
    println!(
        "| round | shedder | answered/s | shed/s | answered p50 | p99 | health p50 | health p99 | other errors |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in 0..sizes.rounds {
        // Alternate which goes first, so drift hits both alike.
        let order: [(&str, &str); 2] = if r % 2 == 0 {
            [("off", "0"), ("on (5 ms)", "5")]
        } else {
            [("on (5 ms)", "5"), ("off", "0")]
        };
        for (label, ms) in order {
            // The in-flight cap out of the way: only the queueing delay
            // decides.
            let server =
                Server::start(&["--in-flight-max", "1000000", "--shed-queue-delay-ms", ms]);
            let round = load_round(server.addr, sizes).await;
            let secs = sizes.load.as_secs_f64();
            println!(
                "| {} | {label} | {:.0} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} |",
                r + 1,
                round.ok.len() as f64 / secs,
                round.shed as f64 / secs,
                percentile(&round.ok, 0.5).as_secs_f64() * 1e3,
                percentile(&round.ok, 0.99).as_secs_f64() * 1e3,
                percentile(&round.health, 0.5).as_secs_f64() * 1e3,
                percentile(&round.health, 0.99).as_secs_f64() * 1e3,
                round.other,
            );
        }
    }
}

/// What one flooding connection got: streams answered (held open behind
/// the zero window), refused, and whether the server closed it.
#[derive(Debug, Default, Clone, Copy)]
struct Flooded {
    answered: u32,
    refused: u32,
    closed: bool,
}

/// Opens `streams` streams to `path` behind a zero window on one
/// connection, and reads until the server has answered or refused each
/// (or closed the connection: h2 closes one that keeps sending data on
/// streams it refused).
async fn zero_window_flood(
    addr: SocketAddr,
    streams: u32,
    held: u32,
    path: &str,
    body: &[u8],
) -> (RawH2, Flooded) {
    let mut conn = RawH2::connect(addr, &[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]).await;
    let mut got = Flooded::default();
    let mut sent = 0;
    for i in 0..streams {
        // Beyond the first `held`, headers alone (ending the stream): data
        // on a stream the server refused makes h2 close the connection,
        // which would free what the flood is meant to hold.
        let id = 2 * i + 1;
        let sent_ok = if i < held {
            conn.try_post(id, path, "application/grpc", body).await
        } else {
            conn.try_headers_only(id, path, "application/grpc").await
        };
        if sent_ok.is_err() {
            got.closed = true;
            break;
        }
        sent += 1;
    }
    while got.answered + got.refused < sent {
        let Some(frame) = conn.next_frame(Duration::from_secs(5)).await else {
            got.closed = true;
            break;
        };
        got.answered += u32::from(frame.kind == HEADERS);
        got.refused += u32::from(frame.rst_code() == Some(REFUSED_STREAM));
    }
    (conn, got)
}

async fn flood(sizes: &Sizes) {
    println!("\n## Memory under a flood (server RSS, default limits)");
    let server = Server::start(&[]);
    // Warm the server up so the baseline includes its steady buffers.
    let channel = Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for _ in 0..100 {
        let _ = CalculatorClient::new(channel.clone())
            .add(pb::BinaryRequest { a: 1.0, b: 1.0 })
            .await;
    }
    let base = server.rss_kib();
    let add = grpc_frame(&pb::BinaryRequest { a: 1.0, b: 2.0 }.encode_to_vec());
    let mut held = Vec::new();
    let mut total = Flooded::default();
    let mut closed = 0;
    for _ in 0..sizes.flood_connections {
        let (conn, got) =
            zero_window_flood(server.addr, 1000, 100, "/abacus.v1.Calculator/Add", &add).await;
        total.answered += got.answered;
        total.refused += got.refused;
        closed += u32::from(got.closed);
        held.push(conn);
    }
    let flooded = server.rss_kib();
    println!(
        "- {} connections x 1,000 Add streams behind a zero window: {} streams held open, {} refused, {} connections closed by the server; RSS {} -> {} KiB, +{} KiB per connection",
        sizes.flood_connections,
        total.answered,
        total.refused,
        closed,
        base,
        flooded,
        (flooded.saturating_sub(base)) / u64::from(sizes.flood_connections)
    );
    // Watch streams within the per-connection limit (100), so that they
    // are all asked of the server-wide cap.
    let watch = grpc_frame(&HealthCheckRequest::default().encode_to_vec());
    let mut watch_total = Flooded::default();
    for _ in 0..20 {
        let (conn, got) = zero_window_flood(
            server.addr,
            100,
            100,
            "/grpc.health.v1.Health/Watch",
            &watch,
        )
        .await;
        watch_total.answered += got.answered;
        held.push(conn);
    }
    let watched = server.rss_kib();
    println!(
        "- then 20 connections x 100 Health/Watch streams (2,000 asked; answered, open or refused by the cap: {}): RSS {} KiB, +{} KiB",
        watch_total.answered,
        watched,
        watched.saturating_sub(flooded)
    );
    // Others are still served.
    let start = Instant::now();
    let served = CalculatorClient::new(channel)
        .add(pb::BinaryRequest { a: 2.0, b: 3.0 })
        .await
        .is_ok();
    println!(
        "- a new call during the flood: {} in {:.1} ms",
        if served { "answered" } else { "FAILED" },
        start.elapsed().as_secs_f64() * 1e3
    );
    drop(held);
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes = if quick { &QUICK } else { &FULL };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        flood(sizes).await;
        println!();
        shedding(sizes).await;
    });
}
