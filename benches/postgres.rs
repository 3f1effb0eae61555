//! The store is the ceiling: `Accumulate` throughput through three
//! `abacus serve --store postgres://…` replicas, against `pgbench` running
//! the ledger's own transaction on the same PostgreSQL, in alternating
//! rounds of one run (these machines are shared and noisy: only same-run
//! ratios mean anything). Goal: ≥ 0.8 × pgbench's tps at 16 callers; also
//! measured at 1 and 64.
//!
//! - PostgreSQL: a throwaway cluster of the benchmark's own, started with
//!   the tests' support (`tests/store/support/pg.rs`), stopped and deleted
//!   at the end. By default configured as the tests' (fsync and
//!   synchronous commit off, like `pg_virtualenv`'s, where the issue's
//!   reference figures come from): the ceiling is CPU, which the replicas
//!   and the callers share with PostgreSQL on this machine — the hard case
//!   for abacus. `--durable`: PostgreSQL's defaults (fsync, synchronous
//!   commit), where a real commit is the ceiling.
//! - abacus: three replica processes of this build (release), each with
//!   the default pool (16) and store guard; the callers live in this
//!   process, spread round-robin over the replicas, four HTTP/2
//!   connections per replica, a fresh request ID per call (every call is a
//!   real commit with its dedup record), 8 registers picked at random.
//! - pgbench: the same statements (`abacus::store::postgres::sql`: the
//!   claim `INSERT … ON CONFLICT`, the register's `SELECT … FOR UPDATE`, its
//!   `UPDATE`, the record's `UPDATE`), prepared, in one transaction per
//!   call, on the same 8 registers, `-c N` clients. Two differences: the
//!   ledger's `SET LOCAL lock_timeout` runs once per transaction here
//!   instead of twice (pgbench's favour), and pgbench sends each statement
//!   in its own round trip where the ledger pipelines two pairs (the
//!   ledger's: the register's row lock is held a round trip less).
//! - CPU: each round also reports the CPU time (from `/proc`) the replicas,
//!   this process and the database's server processes spent per call, which
//!   says where the time goes when the ratio is missed (pgbench's own
//!   client is not counted: it is not this process).
//!
//! Run: `cargo bench --bench postgres` (release; about 4 minutes);
//! `-- --durable` for synced commits, `-- --quick` for a smoke run. Needs PostgreSQL's server binaries and
//! pgbench (Debian: `apt-get install postgresql`); as root the cluster runs
//! as the `postgres` user.

#[allow(dead_code)]
#[path = "../tests/support/listening.rs"]
mod listening;

#[allow(dead_code)]
#[path = "../tests/store/support/pg.rs"]
mod pg;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use abacus::{
    pb::{AccumulateRequest, calculator_client::CalculatorClient},
    store::postgres::sql,
};
use tonic::transport::Channel;

/// Sizes of one run.
struct Sizes {
    /// Rounds per target and caller count.
    rounds: usize,
    /// Seconds per round (pgbench's `-T` takes whole seconds).
    round_s: u64,
}

const FULL: Sizes = Sizes {
    rounds: 6,
    round_s: 4,
};

const QUICK: Sizes = Sizes {
    rounds: 1,
    // pgbench's 64 connections (SCRAM logins) take most of a second.
    round_s: 2,
};

/// Caller counts measured; the goal is stated at 16.
const CALLERS: [usize; 3] = [1, 16, 64];

/// Replicas, as the README runs them.
const REPLICAS: usize = 3;

/// HTTP/2 connections per replica.
const CONNECTIONS: usize = 4;

/// Registers written (the reference measurement's 8).
const REGISTERS: u64 = 8;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let durable = std::env::args().any(|a| a == "--durable");
    let sizes = if quick { QUICK } else { FULL };
    let pgbench = pg::Cluster::bin_dir()
        .map(|dir| dir.join("pgbench"))
        .expect("PostgreSQL's binaries (apt-get install postgresql)");
    println!(
        "abacus PostgreSQL bench ({}, {}; {} CPUs available): Accumulate through {REPLICAS} replicas vs pgbench, same transaction, same database",
        if quick { "quick" } else { "full" },
        if durable {
            "durable commits (fsync on)"
        } else {
            "commits not synced (the tests' cluster: fsync and synchronous_commit off)"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let cluster = pg::Cluster::new(
            "bench",
            if durable {
                pg::Durability::Durable
            } else {
                pg::Durability::Fast
            },
        );
        let db = cluster.database("bench").await;
        let replicas: Vec<Replica> = (0..REPLICAS).map(|_| Replica::spawn(&db.url)).collect();
        let mut clients = Vec::new();
        for r in &replicas {
            clients.push(r.connect().await);
        }
        // The registers exist before any round: both sides update rows.
        for reg in 1..=REGISTERS {
            clients[0][0]
                .clone()
                .accumulate(AccumulateRequest {
                    register: reg.to_string(),
                    delta: 0.0,
                    request_id: format!("init-{reg}"),
                })
                .await
                .expect("create the registers");
        }
        let script = Script::write();
        let pids: Vec<u32> = replicas.iter().map(|r| r.0.child.id()).collect();
        let mut summary = Vec::new();
        for callers in CALLERS {
            println!(
                "\n{callers} caller(s), {} rounds of {} s each, alternating (ABBA):",
                sizes.rounds, sizes.round_s
            );
            // Warm-up: connections, prepared statements, caches.
            abacus_round(&clients, callers, 2, u64::MAX).await;
            pgbench_round(&pgbench, &script.0, &db.url, callers, 2);
            let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for r in 0..sizes.rounds {
                let order = if matches!(r % 4, 0 | 3) { [true, false] } else { [false, true] };
                let mut pair = [0.0; 2];
                for is_abacus in order {
                    let before = Cpu::sample(&pids);
                    let database = DatabaseCpu::watch(&db.name);
                    let (name, tps, failures) = if is_abacus {
                        let round = abacus_round(&clients, callers, sizes.round_s, r as u64).await;
                        let failures = match round.first_failure {
                            Some(first) => format!(
                                "   FAILED {} (first: {:?} {})",
                                round.failed,
                                first.code(),
                                first.message()
                            ),
                            None => String::new(),
                        };
                        ("abacus", round.tps, failures)
                    } else {
                        // pgbench exits non-zero on a failed transaction.
                        let tps = pgbench_round(&pgbench, &script.0, &db.url, callers, sizes.round_s);
                        ("pgbench", tps, String::new())
                    };
                    let database = database.finish();
                    let after = Cpu::sample(&pids);
                    // CPU milliseconds per call.
                    let per_call = |s: f64| s * 1e3 / (tps * sizes.round_s as f64);
                    println!(
                        "    round {r}: {name:<8} {tps:>7.0} tx/s   CPU ms per tx: replicas {:.2}, bench process {:.2}, PostgreSQL {:.2}{failures}",
                        per_call(after.replicas - before.replicas),
                        per_call(after.this - before.this),
                        per_call(database),
                    );
                    pair[usize::from(!is_abacus)] = tps;
                }
                ours.push(pair[0]);
                theirs.push(pair[1]);
                ratios.push(pair[0] / pair[1]);
            }
            let (lo, mid, hi) = quartiles(&ratios);
            println!(
                "  => abacus median {:.0} tx/s (IQR {:.0}..{:.0}), pgbench median {:.0} tx/s (IQR {:.0}..{:.0}); abacus / pgbench per round: median {mid:.2} (IQR {lo:.2}..{hi:.2}, min {:.2}, max {:.2})",
                quartiles(&ours).1,
                quartiles(&ours).0,
                quartiles(&ours).2,
                quartiles(&theirs).1,
                quartiles(&theirs).0,
                quartiles(&theirs).2,
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(0.0, f64::max),
            );
            summary.push((callers, quartiles(&ours).1, quartiles(&theirs).1, lo, mid, hi));
        }
        println!("\n| callers | abacus tx/s | pgbench tx/s | abacus / pgbench (median, IQR) |");
        println!("|---:|---:|---:|---|");
        for (callers, ours, theirs, lo, mid, hi) in summary {
            println!("| {callers} | {ours:.0} | {theirs:.0} | {mid:.2} ({lo:.2}..{hi:.2}) |");
        }
        drop(clients);
        drop(replicas);
        drop(cluster);
    });
}

/// One replica process, killed on drop.
struct Replica(listening::Served);

impl Replica {
    fn spawn(url: &str) -> Self {
        Self(listening::Served::spawn(
            Path::new(env!("CARGO_BIN_EXE_abacus")),
            &["--store".as_ref(), url.as_ref()],
            "warn,abacus::cli::serve=info",
        ))
    }

    async fn connect(&self) -> Vec<CalculatorClient<Channel>> {
        let addr = self.0.addr();
        let mut out = Vec::new();
        for _ in 0..CONNECTIONS {
            let channel = Channel::from_shared(format!("http://{addr}"))
                .expect("uri")
                .connect()
                .await
                .expect("connect to a replica");
            out.push(CalculatorClient::new(channel));
        }
        out
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

/// The pgbench script: the ledger's statements, `$n` parameters turned
/// into pgbench variables, deleted when dropped.
struct Script(PathBuf);

impl Script {
    fn write() -> Self {
        // $1 scope, $2 id, $3 fingerprint, $4 now (NULL: the server's
        // clock), $5 TTL, $6 entries per client, $7 owner: the defaults.
        let claim = params(
            sql::CLAIM,
            &[
                ":scope",
                ":id",
                ":fp",
                "NULL",
                "600000",
                "1000000",
                "'anonymous'",
            ],
        );
        let lock = params(sql::REGISTER_FOR_UPDATE, &[":reg"]);
        let update = params(sql::REGISTER_UPDATE, &[":reg", ":next"]);
        let record = params(sql::RECORD_COMMIT, &[":scope", ":id", "NULL", "0", ":next"]);
        let text = format!(
            "\\set reg random(1, {REGISTERS})\n\
             \\set id random(1, 9223372036854775806)\n\
             \\set fp 1\n\
             BEGIN;\n\
             SET LOCAL lock_timeout = '2000ms';\n\
             {claim};\n\
             {lock} \\gset\n\
             \\set next :value + 1\n\
             {update};\n\
             {record};\n\
             COMMIT;\n"
        );
        let path =
            std::env::temp_dir().join(format!("abacus-bench-pgbench-{}.sql", std::process::id()));
        std::fs::write(&path, text).expect("write the pgbench script");
        Self(path)
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `statement` with `$1`, `$2`, … replaced by `values` (highest first, so
/// `$1` does not eat `$10`).
fn params(statement: &str, values: &[&str]) -> String {
    let mut s = statement.to_owned();
    for (i, v) in values.iter().enumerate().rev() {
        s = s.replace(&format!("${}", i + 1), v);
    }
    assert!(!s.contains('$'), "a parameter is left in {s}");
    s
}

/// One pgbench round; its tps (initial connections excluded).
fn pgbench_round(pgbench: &Path, script: &Path, url: &str, clients: usize, secs: u64) -> f64 {
    let out = Command::new(pgbench)
        .args(["-n", "-M", "prepared", "-D", "scope=pgbench"])
        .arg("-c")
        .arg(clients.to_string())
        .arg("-j")
        .arg(clients.min(2).to_string())
        .arg("-T")
        .arg(secs.to_string())
        .arg("-f")
        .arg(script)
        .arg(url)
        .output()
        .expect("run pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
        .unwrap_or_else(|| {
            panic!("pgbench measured no rate in {secs} s (no transaction finished?):\n{stdout}")
        })
}

/// What one abacus round did.
struct Round {
    /// Successful calls per second.
    tps: f64,
    /// Calls that failed, and the first failure.
    failed: u64,
    first_failure: Option<tonic::Status>,
}

/// One round of `callers` concurrent callers for `secs`.
async fn abacus_round(
    clients: &[Vec<CalculatorClient<Channel>>],
    callers: usize,
    secs: u64,
    round: u64,
) -> Round {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_failure = Arc::new(std::sync::Mutex::new(None));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let replica = &clients[caller % clients.len()];
            let mut client = replica[(caller / clients.len()) % replica.len()].clone();
            let (done, stop) = (done.clone(), stop.clone());
            let (failed, first_failure) = (failed.clone(), first_failure.clone());
            tokio::spawn(async move {
                // A per-caller xorshift: 8 registers at random, as pgbench.
                let mut x = (caller as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for n in 0u64.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let r = client
                        .accumulate(AccumulateRequest {
                            register: (x % REGISTERS + 1).to_string(),
                            delta: 1.0,
                            request_id: format!("b{round}-{callers}-{caller}-{n}"),
                        })
                        .await;
                    match r {
                        Ok(_) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(status) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut first) = first_failure.lock() {
                                first.get_or_insert(status);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Round {
        tps: done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64(),
        failed: failed.load(Ordering::Relaxed),
        first_failure: first_failure.lock().ok().and_then(|mut f| f.take()),
    }
}

/// CPU seconds used so far by the replicas and by this process (both
/// live through every round).
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    replicas: f64,
    this: f64,
}

impl Cpu {
    fn sample(replicas: &[u32]) -> Self {
        Self {
            replicas: replicas.iter().map(|pid| cpu_s(&pid.to_string())).sum(),
            this: cpu_s("self"),
        }
    }
}

/// The CPU time of the database's server processes during a round: their
/// counters sampled every 100 ms from a thread of its own, since pgbench's
/// backends exit with their round and take their counters with them.
struct DatabaseCpu {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<f64>,
}

impl DatabaseCpu {
    /// Starts watching the processes whose title names `database`.
    fn watch(database: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (database, stopped) = (database.to_owned(), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            // pid -> (CPU when first seen, CPU when last seen); processes
            // started during the round count from zero.
            let mut seen: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
            let mut first = true;
            loop {
                let done = stopped.load(Ordering::Relaxed);
                for pid in backends(&database) {
                    let now = cpu_s(&pid);
                    let start = if first { now } else { 0.0 };
                    seen.entry(pid).or_insert((start, now)).1 = now;
                }
                first = false;
                if done {
                    return seen.values().map(|(a, b)| (b - a).max(0.0)).sum();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { stop, thread }
    }

    /// CPU seconds used since [`DatabaseCpu::watch`].
    fn finish(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0.0)
    }
}

/// PostgreSQL processes serving `database` (their title names it).
fn backends(database: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(database))
        })
        .collect()
}

/// User + system CPU seconds of `/proc/<pid>`.
fn cpu_s(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces), from field 3.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// Lower quartile, median and upper quartile.
fn quartiles(v: &[f64]) -> (f64, f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (at(0.25), at(0.5), at(0.75))
}
