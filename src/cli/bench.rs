//! `abacus bench`: load on one RPC through the real resilient client (its
//! balancing, retries, hedging and breakers as the flags set them), and
//! what came of it: throughput, latency percentiles, attempts, hedges,
//! errors by code, and how the attempts spread over the endpoints.
//!
//! Bounded and stoppable: `--calls N` or `--duration`, at most
//! `--concurrency` calls in flight; Ctrl-C stops it and prints what was
//! measured so far. A progress line on a terminal only; `--json` prints one
//! JSON object as the last line of stdout.
//!
//! The measuring part ([`measure`]) takes a client and a stop signal, so
//! the repository's benchmarks drive the same code.

use std::{
    collections::BTreeMap,
    future::Future,
    io::{IsTerminal, Write},
    process::ExitCode,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    cli::client_args::ClientArgs,
    client::{Client, Request, breaker::State as BreakerState},
    core::BinaryOp,
    error::code_name,
    rpc::Method,
};

/// Most calls one run may make.
const CALLS_MAX: u64 = 100_000_000;
/// Longest run.
const DURATION_MAX: Duration = Duration::from_secs(3600);
/// Most callers.
const CONCURRENCY_MAX: u32 = 1024;
/// Histogram range: 1 µs to 1 hour, 3 significant digits.
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// The RPC to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchOp {
    /// `Add(i, 1)`.
    Add,
    /// `Subtract(i, 1)`.
    Subtract,
    /// `Multiply(i, 1)`.
    Multiply,
    /// `Divide(i, 1)`.
    Divide,
    /// `Accumulate(register, 1)`: one fresh request ID per call in
    /// exactly-once mode (the default), so each call is applied once.
    Accumulate,
}

impl BenchOp {
    /// The RPC it calls.
    pub fn method(self) -> Method {
        match self {
            Self::Add => Method::Add,
            Self::Subtract => Method::Subtract,
            Self::Multiply => Method::Multiply,
            Self::Divide => Method::Divide,
            Self::Accumulate => Method::Accumulate,
        }
    }

    /// Call number `i`'s request.
    fn request(self, i: u64, register: &str) -> Request {
        let binary = |op| Request::Binary {
            op,
            a: i as f64,
            b: 1.0,
        };
        match self {
            Self::Add => binary(BinaryOp::Add),
            Self::Subtract => binary(BinaryOp::Subtract),
            Self::Multiply => binary(BinaryOp::Multiply),
            Self::Divide => binary(BinaryOp::Divide),
            // The ID is the request-ID layer's to fill (exactly-once): a
            // fresh one per logical call, kept across its retries.
            Self::Accumulate => Request::Accumulate {
                register: register.to_owned(),
                delta: 1.0,
                request_id: String::new(),
            },
        }
    }
}

/// Arguments of `abacus bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The RPC to load.
    #[arg(value_enum)]
    pub op: BenchOp,
    /// Server address, or several comma-separated replicas (A,B,C).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// Logical calls to make (default 10,000 unless --duration is given).
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    pub calls: Option<u64>,
    /// Run for this long instead: e.g. 10s, 500ms, 2m.
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 16, value_name = "C")]
    pub concurrency: u32,
    /// Register that `accumulate` adds to.
    #[arg(long, default_value = "bench", value_name = "NAME")]
    pub register: String,
    /// Print the result as one JSON object on the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Client policy (balancing, retries, hedging, breakers).
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Parses `10s`, `500ms`, `2m` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: the unit must be ms, s or m")),
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= DURATION_MAX.as_secs_f64()) {
        return Err(format!(
            "{s:?}: a duration must be above 0 and at most 1 hour"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// How long a run lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// This many logical calls.
    Calls(u64),
    /// Until this much time has passed.
    For(Duration),
}

/// One endpoint's share of the attempts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointShare {
    /// Attempts sent there.
    pub attempts: u64,
    /// Attempts it answered.
    pub answered: u64,
    /// Attempts that failed there.
    pub failed: u64,
    /// Attempts cancelled there (hedges that lost).
    pub cancelled: u64,
    /// Its breaker at the end (`closed`, `open`, `half-open`, or `none`).
    pub breaker: &'static str,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// The RPC.
    pub op: &'static str,
    /// Callers.
    pub concurrency: u32,
    /// Logical calls that ended.
    pub calls: u64,
    /// Calls that succeeded.
    pub ok: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Failed calls per status code.
    pub errors_by_code: BTreeMap<&'static str, u64>,
    /// Wall-clock length of the run.
    pub duration_s: f64,
    /// Calls per second.
    pub throughput_per_s: f64,
    /// Latency percentiles of the calls (successes and failures alike), ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest call, ms.
    pub max_ms: f64,
    /// Attempts sent to endpoints (retries and hedges included).
    pub attempts: u64,
    /// Retries sent.
    pub retries: u64,
    /// Hedges sent.
    pub hedges: u64,
    /// Hedged calls a hedge won.
    pub hedges_won: u64,
    /// Attempts per endpoint.
    pub per_endpoint: BTreeMap<String, EndpointShare>,
    /// True when Ctrl-C (or the caller's stop signal) ended the run early.
    pub interrupted: bool,
}

/// One caller's tally.
#[derive(Debug)]
struct Tally {
    latency_us: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            // 3 significant digits over 1 µs .. 1 h: a fixed ~200 KiB.
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .unwrap_or_else(|_| unreachable!("the bounds are constants and valid")),
            ok: 0,
            errors: BTreeMap::new(),
        }
    }
}

/// Counts the progress line shows.
#[derive(Debug, Default)]
struct Progress {
    done: AtomicU64,
    failed: AtomicU64,
}

/// Runs `op` through `client` from `concurrency` callers until `load` is
/// done or `stop` resolves, then reports. `on_tick` is called about every
/// 100 ms with (calls done, failed, elapsed) — the CLI draws its progress
/// line there.
pub async fn measure(
    client: &Client,
    op: BenchOp,
    register: &str,
    load: Load,
    concurrency: u32,
    stop: impl Future<Output = ()>,
    mut on_tick: impl FnMut(u64, u64, Duration),
) -> BenchReport {
    let concurrency = concurrency.clamp(1, CONCURRENCY_MAX);
    let next = Arc::new(AtomicU64::new(0));
    let halt = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let mut tallies = Vec::new();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        // Each caller's own tally: uncontended, read once at the end (also
        // after an abort, which is why it sits behind a lock).
        let tally = Arc::new(Mutex::new(Tally::new()));
        tallies.push(Arc::clone(&tally));
        let (client, next, halt, progress) = (
            client.clone(),
            Arc::clone(&next),
            Arc::clone(&halt),
            Arc::clone(&progress),
        );
        let register = register.to_owned();
        workers.spawn(async move {
            loop {
                if halt.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                match load {
                    Load::Calls(n) if i >= n => return,
                    Load::For(d) if started.elapsed() >= d => return,
                    _ => {}
                }
                let t = Instant::now();
                let result = client.call(op.request(i, &register)).await;
                let us = (t.elapsed().as_micros() as u64).clamp(1, LATENCY_US_MAX);
                let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
                let _ = tally.latency_us.record(us);
                match result {
                    Ok(_) => tally.ok += 1,
                    Err(e) => {
                        *tally.errors.entry(code_name(e.code)).or_default() += 1;
                        progress.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(tally);
                progress.done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let interrupted = loop {
        tokio::select! {
            () = &mut stop => break true,
            joined = workers.join_next() => if joined.is_none() { break false },
            _ = tick.tick() => on_tick(
                progress.done.load(Ordering::Relaxed),
                progress.failed.load(Ordering::Relaxed),
                started.elapsed(),
            ),
        }
    };
    if interrupted {
        // The calls in flight are dropped (cancelled): what ended is what
        // was measured.
        halt.store(true, Ordering::Relaxed);
        workers.abort_all();
        while workers.join_next().await.is_some() {}
    }
    let elapsed = started.elapsed();
    report(client, op, concurrency, &tallies, elapsed, interrupted)
}

/// Merges the callers' tallies and reads the client's counters.
fn report(
    client: &Client,
    op: BenchOp,
    concurrency: u32,
    tallies: &[Arc<Mutex<Tally>>],
    elapsed: Duration,
    interrupted: bool,
) -> BenchReport {
    let mut all = Tally::new();
    for t in tallies {
        let t = t.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = all.latency_us.add(&t.latency_us);
        all.ok += t.ok;
        for (code, n) in &t.errors {
            *all.errors.entry(code).or_default() += n;
        }
    }
    let errors: u64 = all.errors.values().sum();
    let calls = all.ok + errors;
    let ms = |q: f64| {
        if calls == 0 {
            0.0
        } else {
            all.latency_us.value_at_quantile(q) as f64 / 1000.0
        }
    };
    let endpoints = client.endpoints();
    let counters = client.counters().unwrap_or_default();
    let per_endpoint = endpoints
        .iter()
        .map(|e| {
            (
                e.name.clone(),
                EndpointShare {
                    attempts: e.counters.attempts,
                    answered: e.counters.answered,
                    failed: e.counters.failed,
                    cancelled: e.counters.cancelled,
                    breaker: e.breaker.map_or("none", BreakerState::name),
                },
            )
        })
        .collect();
    BenchReport {
        op: op.method().short_name(),
        concurrency,
        calls,
        ok: all.ok,
        errors,
        errors_by_code: all.errors,
        duration_s: elapsed.as_secs_f64(),
        throughput_per_s: calls as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: if calls == 0 {
            0.0
        } else {
            all.latency_us.max() as f64 / 1000.0
        },
        attempts: endpoints.iter().map(|e| e.counters.attempts).sum(),
        retries: counters.retries,
        hedges: counters.hedges,
        hedges_won: counters.hedges_won,
        per_endpoint,
        interrupted,
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "bench {}: {} calls from {} callers in {:.2} s{}",
            self.op,
            self.calls,
            self.concurrency,
            self.duration_s,
            if self.interrupted {
                " (interrupted: what was measured so far)"
            } else {
                ""
            }
        )?;
        writeln!(f, "  throughput  {:.0} calls/s", self.throughput_per_s)?;
        writeln!(
            f,
            "  latency     p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms
        )?;
        writeln!(f, "  calls       {} ok, {} failed", self.ok, self.errors)?;
        writeln!(
            f,
            "  attempts    {} ({} retries, {} hedges, {} won by a hedge)",
            self.attempts, self.retries, self.hedges, self.hedges_won
        )?;
        for (code, n) in &self.errors_by_code {
            writeln!(f, "  error       {code}: {n}")?;
        }
        writeln!(f, "  per endpoint")?;
        for (name, e) in &self.per_endpoint {
            let share = if self.attempts == 0 {
                0.0
            } else {
                100.0 * e.attempts as f64 / self.attempts as f64
            };
            writeln!(
                f,
                "    {name:<22} {:>8} attempts ({share:>5.1} %)  answered {}  failed {}  cancelled {}  breaker {}",
                e.attempts, e.answered, e.failed, e.cancelled, e.breaker
            )?;
        }
        Ok(())
    }
}

/// Draws the progress line on stderr (a terminal only).
fn draw(load: Load, done: u64, failed: u64, elapsed: Duration) {
    let fraction = match load {
        Load::Calls(n) => done as f64 / n.max(1) as f64,
        Load::For(d) => elapsed.as_secs_f64() / d.as_secs_f64(),
    }
    .clamp(0.0, 1.0);
    let width = 30;
    let filled = (fraction * width as f64) as usize;
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r[{}{}] {done} calls  {rate:.0}/s  {failed} failed ",
        "#".repeat(filled),
        "-".repeat(width - filled)
    );
    let _ = err.flush();
}

/// Runs `abacus bench`.
pub async fn run(args: BenchArgs) -> ExitCode {
    super::init_logging("warn");
    if !(1..=CONCURRENCY_MAX).contains(&args.concurrency) {
        eprintln!("error: --concurrency must be between 1 and {CONCURRENCY_MAX}");
        return ExitCode::from(2);
    }
    let load = match (args.calls, args.duration) {
        (Some(n), _) if !(1..=CALLS_MAX).contains(&n) => {
            eprintln!("error: --calls must be between 1 and {CALLS_MAX}");
            return ExitCode::from(2);
        }
        (Some(n), _) => Load::Calls(n),
        (None, Some(d)) => Load::For(d),
        (None, None) => Load::Calls(10_000),
    };
    let client = match args.client.connect(&args.addr).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let terminal = std::io::stderr().is_terminal();
    let stop = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No signal handling here: never stop early.
            std::future::pending::<()>().await;
        }
    };
    let report = measure(
        &client,
        args.op,
        &args.register,
        load,
        args.concurrency,
        stop,
        |done, failed, elapsed| {
            if terminal {
                draw(load, done, failed, elapsed);
            }
        },
    )
    .await;
    if terminal {
        eprint!("\r{}\r", " ".repeat(70));
    }
    print!("{report}");
    if args.json {
        match serde_json::to_string(&report) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: cannot encode the report: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if report.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_bounds() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        for bad in ["0s", "-1s", "soon", "5h", "2d", "99999m", "NaNs"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ops_are_the_method_table_and_accumulate_leaves_the_id_to_the_stack() {
        for op in BenchOp::value_variants() {
            let name = op.to_possible_value().expect("named");
            assert_eq!(name.get_name(), op.method().short_name());
            assert_eq!(op.request(7, "r").method(), op.method());
        }
        assert_eq!(BenchOp::Accumulate.request(1, "r").request_id(), "");
    }
}
