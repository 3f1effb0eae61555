//! What server-side deduplication costs, in memory and in time.
//!
//! A plain binary (`harness = false`, no criterion, to keep compiling lean)
//! that prints three measurements and stops by itself:
//!
//! 1. **Memory per retained record**: the resident-set growth (from
//!    `/proc/self/statm`) of a `DedupStore` holding 1,000,000 records, with
//!    36-byte UUID-shaped IDs and with 128-byte IDs (the longest allowed).
//!    Target: at most 64 bytes per record, whatever the ID's length.
//! 2. **Store operations**, ns/op: lookup (hit and miss) in the full store,
//!    and insert at capacity (every insert evicts the oldest record), from
//!    one client and from 1,000 clients in turn.
//! 3. **`Accumulate` throughput over loopback gRPC**, with a fresh request ID
//!    per call versus without, measured side by side in alternating rounds
//!    (ABBA order, so drift hits both alike). Target: with ≥ 80% of without.
//!
//! Run: `cargo bench --bench dedup` (release). `-- --quick` shrinks every
//! size for a smoke run (`cargo bench --profile dev --bench dedup -- --quick`);
//! `-- --memory 36` (or `128`) measures only the memory for that ID length,
//! and `-- --store` skips the gRPC measurement.

use std::{
    fmt::Write as _,
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant as StdInstant},
};

use abacus::{
    pb::{AccumulateRequest, calculator_client::CalculatorClient},
    server::{self, ServerConfig},
    store::dedup::{
        DedupConfig, DedupStore, DigestKey, Lookup, OwnerKey, REQUEST_ID_BYTES_MAX, StoredOutcome,
        fingerprint,
    },
};
use tokio::{sync::oneshot, time::Instant};
use tokio_stream::wrappers::TcpListenerStream;

/// Sizes of one run.
struct Sizes {
    entries: usize,
    rounds: usize,
    round: Duration,
    concurrency: usize,
}

const FULL: Sizes = Sizes {
    entries: 1_000_000,
    rounds: 8,
    round: Duration::from_millis(1_500),
    concurrency: 16,
};

const QUICK: Sizes = Sizes {
    entries: 100_000,
    rounds: 4,
    round: Duration::from_millis(300),
    concurrency: 8,
};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes = if quick { QUICK } else { FULL };
    // `--memory N`: only the memory measurement for N-byte IDs (run by the
    // bench itself, in a fresh process per length).
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--memory") {
        let id_bytes = args.get(at + 1).and_then(|n| n.parse().ok()).unwrap_or(36);
        // `--clients C`: records charged to C clients in turn (default 1),
        // to measure what each client holding records adds.
        let clients = args
            .iter()
            .position(|a| a == "--clients")
            .and_then(|at| args.get(at + 1))
            .and_then(|n| n.parse().ok())
            .unwrap_or(1u64)
            .max(1);
        drop(memory_bench(&sizes, id_bytes, clients, DigestKey::random()));
        return;
    }
    println!(
        "abacus dedup bench ({}; {} CPUs available)",
        if quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    store_bench(&sizes, quick);
    // `--store`: the store's measurements only (to alternate two builds).
    if !args.iter().any(|a| a == "--store") {
        grpc_bench(&sizes);
    }
}

// ---------------------------------------------------------------- store ----

/// A deterministic, UUID-shaped (36-byte) request ID for `i`.
fn request_id(i: u64, salt: u64, buf: &mut String) {
    let a = splitmix(i ^ salt);
    let b = splitmix(a);
    buf.clear();
    let _ = write!(
        buf,
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    );
}

/// Salt for IDs that must differ from every retained one (`i ^ salt` stays
/// outside `0..entries` for every `i < entries`).
const FRESH_SALT: u64 = 1 << 40;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Resident set size in bytes, from `/proc/self/statm` (pages) and the
/// kernel page size read from `/proc/self/smaps` (4 KiB if unreadable).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    std::fs::read_to_string("/proc/self/smaps")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("KernelPageSize:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(4096, |kb| kb * 1024)
}

fn ns_per_op(elapsed: Duration, ops: usize) -> f64 {
    elapsed.as_nanos() as f64 / ops as f64
}

fn store_bench(sizes: &Sizes, quick: bool) {
    // Memory is measured in a fresh process per ID length: once big buffers
    // have been freed (a growing store reallocates), glibc raises its mmap
    // threshold and keeps later freed memory in the heap, so a second
    // measurement in the same process reads the allocator, not the store.
    for id_bytes in [36, REQUEST_ID_BYTES_MAX] {
        let mut child = std::process::Command::new(std::env::current_exe().expect("own path"));
        child.args(["--memory", &id_bytes.to_string()]);
        if quick {
            child.arg("--quick");
        }
        match child.output() {
            Ok(out) => print!("{}", String::from_utf8_lossy(&out.stdout)),
            Err(e) => println!("\n(a) memory for {id_bytes}-byte IDs not measured: {e}"),
        }
    }
    for id_bytes in [36, REQUEST_ID_BYTES_MAX] {
        store_bench_with(sizes, id_bytes);
    }
}

/// Inserts records `0..n` of `id_bytes`-byte IDs (digested with `key`).
fn fill(
    store: &mut DedupStore,
    n: usize,
    id_bytes: usize,
    clients: u64,
    key: DigestKey,
    id: &mut String,
) {
    let now = Instant::now();
    let outcome = StoredOutcome::Applied { value: 1.0 };
    for i in 0..n as u64 {
        long_request_id(i, 0, id_bytes, id);
        store.insert(
            key.digest("", id),
            fingerprint("r", 1.0),
            outcome,
            OwnerKey(1 + i % clients),
            now,
            |_| {},
        );
    }
}

/// Fills a store with `sizes.entries` records of `id_bytes`-byte IDs and
/// prints its resident-set growth; returns the store, to keep it alive.
fn memory_bench(sizes: &Sizes, id_bytes: usize, clients: u64, key: DigestKey) -> DedupStore {
    let n = sizes.entries;
    let config = DedupConfig {
        entries_max: n,
        ..DedupConfig::default()
    };
    let mut id = String::with_capacity(REQUEST_ID_BYTES_MAX);
    long_request_id(0, 0, id_bytes, &mut id);
    assert_eq!(id.len(), id_bytes);
    println!(
        "\n(a) memory per retained record ({n} records, {id_bytes}-byte IDs, {clients} client(s))"
    );
    let before = rss_bytes();
    let mut store = DedupStore::new(&config);
    fill(&mut store, n, id_bytes, clients, key, &mut id);
    match (before, rss_bytes()) {
        (Some(b), Some(a)) => {
            let delta = a.saturating_sub(b);
            println!(
                "    RSS delta {:.1} MiB = {:.0} bytes/record (target <= 64 bytes/record, whatever the ID's length)",
                delta as f64 / (1024.0 * 1024.0),
                delta as f64 / n as f64
            );
        }
        _ => println!("    /proc/self/statm unreadable: memory not measured"),
    }
    assert_eq!(store.len(), n);
    store
}

/// A deterministic request ID of `len` bytes for `i`: the UUID-shaped one,
/// padded with more hex digits (a client prefix, a longer token).
fn long_request_id(i: u64, salt: u64, len: usize, buf: &mut String) {
    request_id(i, salt, buf);
    let mut x = splitmix(i ^ salt ^ 0x5eed);
    while buf.len() < len {
        let _ = write!(buf, "{:x}", x & 0xf);
        x = x.rotate_right(4) ^ splitmix(x);
    }
    buf.truncate(len);
}

fn store_bench_with(sizes: &Sizes, id_bytes: usize) {
    let n = sizes.entries;
    let config = DedupConfig {
        entries_max: n,
        ..DedupConfig::default()
    };
    let now = Instant::now();
    let outcome = StoredOutcome::Applied { value: 1.0 };
    // The store keeps digests: every timed operation below includes
    // digesting the ID, as the ledger does per request.
    let key = DigestKey::random();
    let mut id = String::with_capacity(REQUEST_ID_BYTES_MAX);
    // Warm the allocator so the measured growth is the store's.
    long_request_id(0, 0, id_bytes, &mut id);
    assert_eq!(id.len(), id_bytes);

    let mut store = DedupStore::new(&config);
    let t = StdInstant::now();
    fill(&mut store, n, id_bytes, 1, key, &mut id);
    let fill = t.elapsed();
    assert_eq!(store.len(), n);

    println!("\n(b) store operations, digesting included ({n} records, {id_bytes}-byte IDs)");
    println!(
        "    insert while filling (incl. ID formatting, growth): {:>6.0} ns/op",
        ns_per_op(fill, n)
    );
    // Keys prepared outside the timed loops: retained IDs in scattered
    // order, absent IDs, and fresh IDs for inserts that evict.
    let fp = fingerprint("r", 1.0);
    let stride = 7_919u64; // prime, so i * stride mod n visits every index
    let ids = |salt: u64, index: &dyn Fn(u64) -> u64| -> Vec<String> {
        (0..n as u64)
            .map(|i| {
                let mut s = String::new();
                long_request_id(index(i), salt, id_bytes, &mut s);
                s
            })
            .collect()
    };
    let hits = ids(0, &|i| i * stride % n as u64);
    let fresh = ids(FRESH_SALT, &|i| i);
    // Inserts of `ids` at capacity, the i-th charged to `owner(i)`
    // (generic, so the owner is inlined in the timed loop as it was
    // written out before, not called through a pointer).
    fn inserts(
        store: &mut DedupStore,
        ids: &[String],
        key: DigestKey,
        fp: u64,
        outcome: StoredOutcome,
        now: Instant,
        owner: impl Fn(usize) -> OwnerKey,
    ) -> Duration {
        let t = StdInstant::now();
        for (i, id) in ids.iter().enumerate() {
            store.insert(
                key.digest("", black_box(id)),
                fp,
                outcome,
                owner(i),
                now,
                |_| {},
            );
        }
        t.elapsed()
    }

    let t = StdInstant::now();
    for id in &hits {
        let found = store.lookup(key.digest("", black_box(id)), fp, now, |_| {});
        debug_assert!(matches!(found, Lookup::Hit(_)));
        black_box(found);
    }
    println!(
        "    lookup, hit:                                        {:>6.0} ns/op",
        ns_per_op(t.elapsed(), n)
    );

    let t = StdInstant::now();
    for id in &fresh {
        black_box(store.lookup(key.digest("", black_box(id)), fp, now, |_| {}));
    }
    println!(
        "    lookup, miss:                                       {:>6.0} ns/op",
        ns_per_op(t.elapsed(), n)
    );

    let took = inserts(&mut store, &fresh, key, fp, outcome, now, |_| OwnerKey(1));
    println!(
        "    insert at capacity (evicts the oldest):             {:>6.0} ns/op",
        ns_per_op(took, n)
    );
    assert_eq!(store.len(), n);
    assert_eq!(store.stats().evictions, n as u64);

    // The same IDs again, from 1,000 clients in turn: every insert makes
    // room from the heaviest client (the one that filled the store, then
    // each in turn), which exercises the per-client bookkeeping.
    let again = ids(FRESH_SALT << 1, &|i| i);
    let took = inserts(&mut store, &again, key, fp, outcome, now, |i| {
        OwnerKey(2 + (i % 1_000) as u64)
    });
    println!(
        "    insert at capacity, 1,000 clients in turn:          {:>6.0} ns/op",
        ns_per_op(took, n)
    );
    assert_eq!(store.len(), n);
    assert_eq!(store.stats().evictions, 2 * n as u64);
}

// ----------------------------------------------------------------- gRPC ----

fn grpc_bench(sizes: &Sizes) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(server::serve(
            ServerConfig::default(),
            TcpListenerStream::new(listener),
            async {
                let _ = stopped.await;
            },
        ));
        let client = CalculatorClient::connect(format!("http://{addr}"))
            .await
            .expect("connect to the bench server");

        println!(
            "\n(c) Accumulate over loopback gRPC: {} concurrent callers on one HTTP/2 connection, {} rounds of {} ms",
            sizes.concurrency,
            sizes.rounds,
            sizes.round.as_millis()
        );
        // Warm-up: connections, allocator, branch predictors.
        round(&client, sizes, false, u64::MAX).await;
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for r in 0..sizes.rounds {
            // ABBA: with, without, without, with, ...
            let with_id = matches!(r % 4, 0 | 3);
            let rate = round(&client, sizes, with_id, r as u64).await;
            println!(
                "    round {r}: {:<18} {:>8.0} calls/s",
                if with_id { "with request_id" } else { "without" },
                rate
            );
            if with_id { &mut with } else { &mut without }.push(rate);
        }
        let (w, wo) = (median(&mut with), median(&mut without));
        println!(
            "    median with request_id {w:.0} calls/s, without {wo:.0} calls/s: ratio {:.1}% (target >= 80%)",
            100.0 * w / wo
        );
        let _ = stop.send(());
        let _ = server.await;
    });
}

/// One timed round; returns completed calls per second.
async fn round(
    client: &CalculatorClient<tonic::transport::Channel>,
    sizes: &Sizes,
    with_id: bool,
    round: u64,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = StdInstant::now();
    let mut tasks = Vec::new();
    for task in 0..sizes.concurrency {
        let (mut client, done, stop) = (client.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let register = format!("r{task}");
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let request_id = if with_id {
                    format!("bench-{round}-{task}-{n}")
                } else {
                    String::new()
                };
                let r = client
                    .accumulate(AccumulateRequest {
                        register: register.clone(),
                        delta: 1.0,
                        request_id,
                    })
                    .await;
                if r.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(sizes.round).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
