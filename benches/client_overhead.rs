//! Benchmark: the resilient client stack against a bare tonic client, same
//! server, same run, on loopback. Reports p50 latency and throughput ratios.
//!
//! Run: `cargo bench --bench client_overhead` (release). The two clients are
//! measured in alternating rounds so that machine noise hits both alike;
//! only the ratios are meant to be compared across machines.

use std::time::{Duration, Instant};

use abacus::{
    client::{Client, ClientConfig, tcp_channel},
    pb::{BinaryRequest, calculator_client::CalculatorClient},
    server::{self, ServerConfig},
};
use tokio_stream::wrappers::TcpListenerStream;

// Many short rounds, alternating, so that a burst of noise from the shared
// machine lands on both clients alike; the reported ratio is the median of
// the per-round ratios.
const ROUNDS: usize = 80;
const CALLS_PER_ROUND: usize = 1_000;
const CONCURRENCY: usize = 16;
// The concurrent rounds run longer than the sequential ones: at 16 callers
// a 1,000-call round lasts a few tens of milliseconds, short enough for one
// scheduling hiccup of the shared machine to swing its ratio by a third.
const CONCURRENT_CALLS_PER_ROUND: usize = 8_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Sequential calls with the bare tonic client; with `deadline`, each call
/// also carries `grpc-timeout`, as any deadline-aware client's would.
async fn sequential_bare(
    client: &mut CalculatorClient<tonic::transport::Channel>,
    deadline: Option<Duration>,
    out: &mut Vec<Duration>,
) {
    for i in 0..CALLS_PER_ROUND {
        let t = Instant::now();
        let mut req = tonic::Request::new(BinaryRequest {
            a: i as f64,
            b: 1.0,
        });
        if let Some(d) = deadline {
            req.set_timeout(d);
        }
        let r = client.add(req).await.expect("bare call");
        assert_eq!(r.into_inner().result, i as f64 + 1.0);
        out.push(t.elapsed());
    }
}

async fn sequential_stack(client: &Client, out: &mut Vec<Duration>) {
    for i in 0..CALLS_PER_ROUND {
        let t = Instant::now();
        let r = client.add(i as f64, 1.0).await.expect("stack call");
        assert_eq!(r, i as f64 + 1.0);
        out.push(t.elapsed());
    }
}

async fn concurrent_bare(client: &CalculatorClient<tonic::transport::Channel>) -> Duration {
    let t = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let mut c = client.clone();
            tokio::spawn(async move {
                for i in 0..CONCURRENT_CALLS_PER_ROUND / CONCURRENCY {
                    c.add(BinaryRequest {
                        a: i as f64,
                        b: 1.0,
                    })
                    .await
                    .expect("bare call");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    t.elapsed()
}

async fn concurrent_stack(client: &Client) -> Duration {
    let t = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move {
                for i in 0..CONCURRENT_CALLS_PER_ROUND / CONCURRENCY {
                    c.add(i as f64, 1.0).await.expect("stack call");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    t.elapsed()
}

/// The layers alone, over a service that answers at once: what the stack
/// costs per call in CPU, without any network or server in the picture.
async fn layers_alone() -> Duration {
    use abacus::client::{
        AttemptLayer, BreakerConfig, BreakerLayer, Call, CallError, DeadlineLayer, Delivery,
        ObserveLayer, Reply, Request, RetryConfig, RetryLayer, RetryPolicy,
    };
    use tower::{ServiceBuilder, ServiceExt, util::BoxCloneSyncService};
    let events = abacus::trace::EventSink::default();
    let policy = RetryPolicy::new(RetryConfig::default(), Delivery::ExactlyOnce);
    let stack = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(DeadlineLayer::new(Duration::from_secs(5)))
            .layer(ObserveLayer::new(events.clone()))
            .layer(RetryLayer::new(policy, 1, events.clone()))
            .layer(BreakerLayer::new(
                "bench",
                BreakerConfig::default(),
                1,
                events.clone(),
            ))
            .layer(AttemptLayer::new(Duration::from_secs(1), events))
            .service(tower::service_fn(|_: Call| async {
                Ok::<_, CallError>(Reply::Calc(1.0))
            })),
    );
    let calls = 100_000u32;
    let t = Instant::now();
    for i in 0..calls {
        let request = Request::Binary {
            op: abacus::core::BinaryOp::Add,
            a: f64::from(i),
            b: 1.0,
        };
        let call = Call::new(u64::from(i), request);
        stack.clone().oneshot(call).await.expect("no-op service");
    }
    t.elapsed() / calls
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(server::serve(
            ServerConfig::default(),
            TcpListenerStream::new(listener),
            std::future::pending(),
        ));
        // One channel, so both clients share one HTTP/2 connection: the
        // comparison is then about the client code, not about which
        // connection the scheduler happened to favour.
        let channel = tcp_channel(&addr).expect("channel");
        let mut bare = CalculatorClient::new(channel.clone());
        let stack = Client::new(
            channel,
            ClientConfig {
                seed: Some(1),
                ..ClientConfig::default()
            },
        );
        // Warm up.
        sequential_bare(&mut bare, None, &mut Vec::new()).await;
        sequential_stack(&stack, &mut Vec::new()).await;

        let (mut lat_bare, mut lat_stack) = (Vec::new(), Vec::new());
        // Each client's time per concurrent round, for the pooled ratio.
        let (mut conc_bare, mut conc_stack) = (Vec::new(), Vec::new());
        let (mut p50_ratios, mut tput_ratios, mut deadline_ratios) =
            (Vec::new(), Vec::new(), Vec::new());
        // Sequential rounds first, then concurrent ones: interleaving them
        // let each concurrent phase disturb the sequential phase after it
        // (the stack's p50 ratio read 1.5–3 points higher that way).
        // The same `grpc-timeout` the stack sends: its attempt timeout.
        let header = Some(ClientConfig::default().attempt_timeout);
        for round in 0..ROUNDS {
            if round % 20 == 0 {
                eprintln!("sequential round {}/{ROUNDS}", round + 1);
            }
            let (mut rb, mut rd, mut rs) = (Vec::new(), Vec::new(), Vec::new());
            // Alternate which goes first, so neither always runs warmer.
            if round % 2 == 0 {
                sequential_bare(&mut bare, None, &mut rb).await;
                sequential_bare(&mut bare, header, &mut rd).await;
                sequential_stack(&stack, &mut rs).await;
            } else {
                sequential_stack(&stack, &mut rs).await;
                sequential_bare(&mut bare, header, &mut rd).await;
                sequential_bare(&mut bare, None, &mut rb).await;
            }
            rb.sort();
            rd.sort();
            rs.sort();
            p50_ratios.push(percentile(&rs, 0.5).as_secs_f64() / percentile(&rb, 0.5).as_secs_f64());
            deadline_ratios
                .push(percentile(&rd, 0.5).as_secs_f64() / percentile(&rb, 0.5).as_secs_f64());
            lat_bare.extend(rb);
            lat_stack.extend(rs);
        }
        for round in 0..ROUNDS {
            if round % 20 == 0 {
                eprintln!("concurrent round {}/{ROUNDS}", round + 1);
            }
            let (cb, cs) = if round % 2 == 0 {
                (concurrent_bare(&bare).await, concurrent_stack(&stack).await)
            } else {
                let cs = concurrent_stack(&stack).await;
                (concurrent_bare(&bare).await, cs)
            };
            // Same number of calls: the throughput ratio is the inverse time ratio.
            tput_ratios.push(cb.as_secs_f64() / cs.as_secs_f64());
            conc_bare.push(cb.as_secs_f64());
            conc_stack.push(cs.as_secs_f64());
        }
        lat_bare.sort();
        lat_stack.sort();
        // Median and interquartile range of the per-round ratios, as percent
        // changes: the spread says how far to trust the median.
        let quartiles = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            let pct = |x: f64| (x - 1.0) * 100.0;
            (pct(v[v.len() / 4]), pct(v[v.len() / 2]), pct(v[v.len() * 3 / 4]))
        };
        let calls = (ROUNDS * CONCURRENT_CALLS_PER_ROUND) as f64;
        let tput_bare = calls / conc_bare.iter().sum::<f64>();
        let tput_stack = calls / conc_stack.iter().sum::<f64>();
        // At 16 callers a round's throughput swings by ±20 % for either
        // client, independently (the scheduling of 16 tasks and the server
        // on two shared cores), so per-round ratios are wide. The pooled
        // ratio (all calls over all time) is the steadier estimate; its
        // standard error, by the delta method over the per-round times,
        // says how small a difference this run can resolve.
        let pooled = tput_stack / tput_bare;
        let rel_var = |v: &[f64]| {
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
            var / (n * mean * mean)
        };
        let pooled_se = pooled * (rel_var(&conc_bare) + rel_var(&conc_stack)).sqrt();
        let p50_b = percentile(&lat_bare, 0.5);
        let p50_s = percentile(&lat_stack, 0.5);
        let p99_b = percentile(&lat_bare, 0.99);
        let p99_s = percentile(&lat_stack, 0.99);
        println!("client overhead, loopback, {ROUNDS} alternating rounds × {CALLS_PER_ROUND} Add calls (sequential) and {CONCURRENT_CALLS_PER_ROUND} at concurrency {CONCURRENCY}");
        println!("| client | p50 µs | p99 µs | throughput @{CONCURRENCY} (calls/s) |");
        println!("|---|---:|---:|---:|");
        println!("| bare tonic | {} | {} | {:.0} |", p50_b.as_micros(), p99_b.as_micros(), tput_bare);
        println!("| resilient stack | {} | {} | {:.0} |", p50_s.as_micros(), p99_s.as_micros(), tput_stack);
        let (p50_lo, p50_mid, p50_hi) = quartiles(&mut p50_ratios);
        let (tput_lo, tput_mid, tput_hi) = quartiles(&mut tput_ratios);
        let (dl_lo, dl_mid, dl_hi) = quartiles(&mut deadline_ratios);
        println!(
            "median per-round ratio, stack / bare: p50 latency {p50_mid:+.1}% (IQR {p50_lo:+.1}…{p50_hi:+.1}%), throughput {tput_mid:+.1}% (IQR {tput_lo:+.1}…{tput_hi:+.1}%)"
        );
        println!(
            "pooled throughput ratio, stack / bare: {:+.1}% ± {:.1}% (one standard error)",
            (pooled - 1.0) * 100.0,
            pooled_se * 100.0
        );
        println!(
            "of which deadline propagation alone (bare tonic + the same grpc-timeout / bare): p50 {dl_mid:+.1}% (IQR {dl_lo:+.1}…{dl_hi:+.1}%)"
        );
        println!(
            "the layers alone, over a no-op service: {:?} per call",
            layers_alone().await
        );
    });
}
