//! What durability costs: `Accumulate` over loopback gRPC against the
//! in-memory ledger and the durable (redb, group-commit) ledger, served by
//! the same process, measured side by side in alternating rounds of one
//! run (these machines are shared and noisy: only same-run ratios mean
//! anything).
//!
//! 1. **Throughput at 64 concurrent callers**, a fresh request ID per call
//!    (so every call is a real commit with a dedup record). Target: durable
//!    ≥ 0.7 × in memory.
//! 2. **Latency of one caller** (c = 1), p50 and p99.
//! 3. The same two measurements against two `abacus serve` *processes*,
//!    one in memory, one with `--data-dir`: the server as deployed, in its
//!    own process, with the callers in this one.
//! 4. With `ABACUS_BASELINE_BIN=/path/to/an/older/abacus`: the same two
//!    measurements against two `abacus serve --data-dir` *processes*, that
//!    binary and this build's, alternating: how the durable path compares
//!    with an older strategy (e.g. main's commit-under-the-lock), same run.
//!
//! Each throughput round also prints the process's CPU use (in cores: a
//! round that leaves CPU idle is waiting, not computing) and, for the
//! durable ledger, how many commits shared a batch, and the share of the
//! time and the time per batch the writer spent writing.
//!
//! Run: `cargo bench --bench durable` (release); `-- --quick` for a smoke
//! run. The data directories live under the system temp dir (put `TMPDIR`
//! on the disk you want to measure) and are removed at the end.

#[path = "../tests/support/listening.rs"]
mod listening;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use abacus::{
    pb::{AccumulateRequest, calculator_client::CalculatorClient},
    server::{self, ServerConfig},
    store::{
        Ledger, MemoryLedger,
        redb::{RedbLedger, WRITER_THREAD_NAME, WriteStats},
    },
    trace::EventSink,
};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// Sizes of one run.
struct Sizes {
    /// Throughput rounds per target.
    rounds: usize,
    /// Length of one throughput round.
    round: Duration,
    /// Latency rounds per target: many short ones, so that both targets
    /// meet the same disk (fsync latency here swings tenfold within
    /// minutes, with other work on the machine).
    latency_rounds: usize,
    /// Calls of one latency round.
    calls: usize,
}

const FULL: Sizes = Sizes {
    rounds: 10,
    round: Duration::from_millis(1_500),
    latency_rounds: 30,
    calls: 100,
};

const QUICK: Sizes = Sizes {
    rounds: 2,
    round: Duration::from_millis(300),
    latency_rounds: 2,
    calls: 50,
};

/// Concurrent callers of the throughput measurement.
const CALLERS: usize = 64;

/// HTTP/2 connections the callers are spread over (a real deployment's
/// callers do not share one connection).
const CONNECTIONS: usize = 8;

/// One server under test: a name and a client per connection.
struct Target {
    name: String,
    channels: Vec<CalculatorClient<Channel>>,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes = if quick { QUICK } else { FULL };
    println!(
        "abacus durable bench ({}; {} CPUs available; data under {})",
        if quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::temp_dir().display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let scratch = Scratch::new("in-process");
        let memory: Arc<dyn Ledger> =
            Arc::new(MemoryLedger::new(Default::default(), EventSink::log_only()));
        let redb = Arc::new(
            RedbLedger::open(Default::default(), EventSink::log_only(), &scratch.0)
                .expect("open the durable ledger"),
        );
        let durable: Arc<dyn Ledger> = Arc::clone(&redb) as Arc<dyn Ledger>;
        let (memory, stop_memory) = in_process("in memory", memory).await;
        let (durable, stop_durable) = in_process("durable (redb)", durable).await;
        println!("\nIn-process servers, same process as the callers:");
        let stats = || Some(redb.write_stats());
        compare(&memory, &durable, &sizes, "durable / in memory", stats).await;
        let _ = stop_memory.send(());
        let _ = stop_durable.send(());

        {
            // As deployed: each server its own process, the callers in
            // this one (the first figures were taken so).
            let this = Path::new(env!("CARGO_BIN_EXE_abacus"));
            let dir = Scratch::new("process");
            let (memory, _memory_process) = spawned("in memory", this, None).await;
            let (durable, _durable_process) = spawned("durable (redb)", this, Some(&dir.0)).await;
            println!("\n`abacus serve` processes, in memory vs `--data-dir` (this build):");
            compare(&memory, &durable, &sizes, "durable / in memory", || None).await;
        }

        if let Ok(baseline) = std::env::var("ABACUS_BASELINE_BIN") {
            let old_dir = Scratch::new("baseline");
            let new_dir = Scratch::new("this-build");
            let (old, _old_process) =
                spawned("baseline", Path::new(&baseline), Some(&old_dir.0)).await;
            let (new, _new_process) = spawned(
                "this build",
                Path::new(env!("CARGO_BIN_EXE_abacus")),
                Some(&new_dir.0),
            )
            .await;
            println!("\n`abacus serve --data-dir` processes: {baseline} vs this build:");
            compare(&old, &new, &sizes, "this build / baseline", || None).await;
        } else {
            println!(
                "\n(set ABACUS_BASELINE_BIN to an older abacus binary to compare durable processes)"
            );
        }
    });
}

/// A scratch directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "abacus-bench-durable-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn connect(name: &str, addr: std::net::SocketAddr) -> Target {
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        // `connect_lazy` would share nothing either, but connecting now
        // keeps the handshake out of the first round.
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect to the bench server");
        channels.push(CalculatorClient::new(channel));
    }
    Target {
        name: name.to_owned(),
        channels,
    }
}

/// A server over `ledger` in this process; stopped by the returned sender.
async fn in_process(name: &str, ledger: Arc<dyn Ledger>) -> (Target, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server::serve_with_ledger(
        ServerConfig::default(),
        ledger,
        // TCP_NODELAY, as `abacus serve` sets it: without it a response
        // written in two pieces can wait 40 ms for a delayed ACK.
        server::tcp_incoming(listener),
        async {
            let _ = stopped.await;
        },
    ));
    (connect(name, addr).await, stop)
}

/// A child process, killed on drop.
struct Process(listening::Served);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

/// `bin serve --addr 127.0.0.1:0` (with `--data-dir dir` if given),
/// logging only warnings and its listening line (read for the bound
/// address).
async fn spawned(name: &str, bin: &Path, dir: Option<&Path>) -> (Target, Process) {
    let data_dir = dir.map(|dir| [std::ffi::OsStr::new("--data-dir"), dir.as_os_str()]);
    let served = listening::Served::spawn(
        bin,
        data_dir.as_ref().map_or(&[][..], |flags| &flags[..]),
        "warn,abacus::cli::serve=info",
    );
    let addr = served.addr().parse().expect("a socket address");
    (connect(name, addr).await, Process(served))
}

/// The disk's own fsync latency where the data lives, measured between
/// rounds: the ratios above depend on it, and it is not this program's.
fn fsync_probe(samples: &mut Vec<Duration>) {
    use std::{io::Write as _, os::unix::fs::FileExt as _};
    let path = std::env::temp_dir().join(format!("abacus-bench-fsync-{}", std::process::id()));
    let Ok(mut file) = std::fs::File::create(&path) else {
        return;
    };
    let _ = file.write_all(&[0; 16 * 1024]);
    for i in 0..20u64 {
        let _ = file.write_at(&[i as u8; 4096], (i % 4) * 4096);
        let t = Instant::now();
        if file.sync_data().is_ok() {
            samples.push(t.elapsed());
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Both measurements, `a` and `b` alternating (ABBA), and the ratios b / a.
/// `write_stats` reads the writer's counters of `b`'s durable ledger when
/// it runs in this process.
async fn compare(
    a: &Target,
    b: &Target,
    sizes: &Sizes,
    ratio_name: &str,
    write_stats: impl Fn() -> Option<WriteStats>,
) {
    let mut fsyncs = Vec::new();
    // Warm-up: connections, allocator, the file's first pages.
    for t in [a, b] {
        throughput_round(t, sizes.round / 2, u64::MAX - 1).await;
        latency_round(t, sizes.calls / 4, u64::MAX - 2).await;
    }
    let order = |r: usize| {
        if matches!(r % 4, 0 | 3) {
            [a, b]
        } else {
            [b, a]
        }
    };

    println!(
        "  throughput at {CALLERS} callers over {CONNECTIONS} connections, fresh request ID per call, {} rounds of {} ms each:",
        sizes.rounds,
        sizes.round.as_millis()
    );
    let (mut rates_a, mut rates_b) = (Vec::new(), Vec::new());
    let first = write_stats();
    for r in 0..sizes.rounds {
        for t in order(r) {
            let (threads, writes) = (Threads::now(), write_stats());
            let started = Instant::now();
            let rate = throughput_round(t, sizes.round, r as u64).await;
            let wall = started.elapsed();
            let cpu = Threads::now().since(&threads, wall, writes.is_some());
            let writes = match (std::ptr::eq(t, b), writes, write_stats()) {
                (true, Some(w0), Some(w1)) => {
                    let n = (w1.batches - w0.batches).max(1) as f64;
                    let busy = (w1.busy_nanos - w0.busy_nanos) as f64;
                    format!(
                        "; {:.1} commits/batch, writing {:.0}% of the time, {:.0} µs/batch",
                        (w1.commits - w0.commits) as f64 / n,
                        100.0 * busy / wall.as_nanos() as f64,
                        busy / 1e3 / n,
                    )
                }
                _ => String::new(),
            };
            println!(
                "    round {r:>2}: {:<16} {rate:>8.0} calls/s  [{cpu}{writes}]",
                t.name
            );
            if std::ptr::eq(t, a) {
                &mut rates_a
            } else {
                &mut rates_b
            }
            .push(rate);
        }
        fsync_probe(&mut fsyncs);
    }
    let ratios: Vec<f64> = rates_b.iter().zip(&rates_a).map(|(b, a)| b / a).collect();
    let (lo, mid, hi) = quartiles(&ratios);
    println!(
        "  => {}: median {:.0} calls/s (IQR {:.0}..{:.0}); {}: median {:.0} calls/s (IQR {:.0}..{:.0})",
        a.name,
        quartiles(&rates_a).1,
        quartiles(&rates_a).0,
        quartiles(&rates_a).2,
        b.name,
        quartiles(&rates_b).1,
        quartiles(&rates_b).0,
        quartiles(&rates_b).2,
    );
    println!(
        "  => {ratio_name}, per-round ratio: median {mid:.2}x (IQR {lo:.2}..{hi:.2}, min {:.2}, max {:.2})",
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    fsyncs.sort();
    if !fsyncs.is_empty() {
        println!(
            "  (this disk's own fdatasync of 4 KiB during the throughput rounds: p50 {:.0} µs, p90 {:.0} µs)",
            us(percentile(&fsyncs, 0.5)),
            us(percentile(&fsyncs, 0.9))
        );
    }
    fsyncs.clear();
    if let (Some(w0), Some(w1)) = (first, write_stats()) {
        // How well group commit batched under load, over all the rounds.
        let (batches, commits) = (w1.batches - w0.batches, w1.commits - w0.commits);
        println!(
            "  (durable: {commits} commits in {batches} transactions, {:.1} per transaction)",
            commits as f64 / batches.max(1) as f64
        );
    }

    println!(
        "  latency of one caller, {} rounds of {} sequential calls:",
        sizes.latency_rounds, sizes.calls
    );
    let (mut p50_a, mut p50_b, mut p99_a, mut p99_b) = (vec![], vec![], vec![], vec![]);
    for r in 0..sizes.latency_rounds {
        for t in order(r) {
            let mut lat = latency_round(t, sizes.calls, r as u64).await;
            lat.sort();
            let (p50, p99) = (percentile(&lat, 0.50), percentile(&lat, 0.99));
            println!(
                "    round {r:>2}: {:<16} p50 {:>6.0} µs  p99 {:>6.0} µs",
                t.name,
                us(p50),
                us(p99)
            );
            let (p50s, p99s) = if std::ptr::eq(t, a) {
                (&mut p50_a, &mut p99_a)
            } else {
                (&mut p50_b, &mut p99_b)
            };
            p50s.push(us(p50));
            p99s.push(us(p99));
        }
        fsync_probe(&mut fsyncs);
    }
    for (what, xs, ys) in [("p50", &p50_a, &p50_b), ("p99", &p99_a, &p99_b)] {
        let ratios: Vec<f64> = ys.iter().zip(xs.iter()).map(|(y, x)| y / x).collect();
        let (lo, mid, hi) = quartiles(&ratios);
        println!(
            "  => {what}: {} median {:.0} µs (IQR {:.0}..{:.0}); {} median {:.0} µs (IQR {:.0}..{:.0}); {ratio_name} {mid:.2}x (IQR {lo:.2}..{hi:.2})",
            a.name,
            quartiles(xs).1,
            quartiles(xs).0,
            quartiles(xs).2,
            b.name,
            quartiles(ys).1,
            quartiles(ys).0,
            quartiles(ys).2,
        );
    }
    fsyncs.sort();
    if !fsyncs.is_empty() {
        println!(
            "  (this disk's own fdatasync of 4 KiB during the latency rounds: p50 {:.0} µs, p90 {:.0} µs)",
            us(percentile(&fsyncs, 0.5)),
            us(percentile(&fsyncs, 0.9))
        );
    }
}

/// One timed round at [`CALLERS`] concurrent callers; calls per second.
async fn throughput_round(target: &Target, length: Duration, round: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let mut client = target.channels[caller % CONNECTIONS].clone();
            let (done, stop) = (done.clone(), stop.clone());
            tokio::spawn(async move {
                let register = format!("r{caller}");
                for n in 0u64.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = client
                        .accumulate(AccumulateRequest {
                            register: register.clone(),
                            delta: 1.0,
                            request_id: format!("t{round}-{caller}-{n}"),
                        })
                        .await;
                    if r.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// `calls` sequential calls; the latency of each.
async fn latency_round(target: &Target, calls: usize, round: u64) -> Vec<Duration> {
    let mut client = target.channels[0].clone();
    let mut out = Vec::with_capacity(calls);
    for n in 0..calls {
        let t = Instant::now();
        client
            .accumulate(AccumulateRequest {
                register: "latency".into(),
                delta: 1.0,
                request_id: format!("l{round}-{n}"),
            })
            .await
            .expect("accumulate");
        out.push(t.elapsed());
    }
    out
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Lower quartile, median and upper quartile.
fn quartiles(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (at(0.25), at(0.5), at(0.75))
}

/// Per-thread CPU time and time spent runnable but waiting for a CPU, of
/// this process (`/proc/self/task/*/schedstat`, nanoseconds): whether a
/// round was bound by CPU or by waiting (Linux only; empty elsewhere).
struct Threads(Vec<(u64, String, u64, u64)>);

impl Threads {
    fn now() -> Self {
        let mut out = Vec::new();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return Self(out);
        };
        for task in tasks.flatten() {
            let path = task.path();
            let Some(tid) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok())
            else {
                continue;
            };
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
            let mut fields = stat.split_whitespace().map(|x| x.parse().unwrap_or(0));
            let (cpu, queued) = (fields.next().unwrap_or(0), fields.next().unwrap_or(0));
            out.push((tid, comm.trim().to_owned(), cpu, queued));
        }
        Self(out)
    }

    /// CPU used since `before`, in cores: the whole process (callers and
    /// servers), and, `with_writer` (a durable ledger of the comparison
    /// runs in this process), its writer thread, with the share of the
    /// time it was ready to run but waited for a CPU.
    fn since(&self, before: &Self, wall: Duration, with_writer: bool) -> String {
        let (mut all, mut writer, mut writer_queued) = (0, 0, 0);
        for (tid, comm, cpu, queued) in &self.0 {
            let (cpu0, queued0) = before
                .0
                .iter()
                .find(|(t, ..)| t == tid)
                .map_or((0, 0), |(_, _, c, q)| (*c, *q));
            let d = cpu.saturating_sub(cpu0);
            all += d;
            // The kernel keeps the first 15 bytes of a thread's name.
            if WRITER_THREAD_NAME.as_bytes().get(..comm.len()) == Some(comm.as_bytes())
                && !comm.is_empty()
            {
                writer += d;
                writer_queued += queued.saturating_sub(queued0);
            }
        }
        let w = wall.as_nanos() as f64;
        let mut text = format!("cpu {:.2} cores", all as f64 / w);
        if with_writer {
            let _ = write!(
                text,
                ", writer thread {:.2} (waiting for a CPU {:.0}% of the time)",
                writer as f64 / w,
                100.0 * writer_queued as f64 / w,
            );
        }
        text
    }
}
