//! Restart survival on real processes: `abacus serve --data-dir DIR` is
//! started, used, killed with SIGKILL (no graceful shutdown: a crash), and
//! started again on the same directory. Registers must keep their values and
//! a retried request ID must be replayed, not applied again. The in-memory
//! mode is run the same way to show the contrast the docs promise.
//!
//! Talks to the server with the raw generated client, so it does not depend
//! on the resilient client's API. Servers listen on `127.0.0.1:0` and the
//! test reads the bound address from the server's log line; a server that
//! must refuse to start is waited for until it exits. Nothing polls a clock.

#[path = "support/listening.rs"]
mod listening;
#[path = "support/temp_dir.rs"]
mod temp_dir;

use std::{
    path::Path,
    process::ExitStatus,
    sync::{Arc, Mutex},
    time::Duration,
};

use abacus::pb::{
    AccumulateRequest, GetRegisterRequest, GetStatsRequest, calculator_client::CalculatorClient,
};
use listening::{Seen, Served};
use temp_dir::TempDir;
use tonic::{Code, transport::Channel};

/// A hang guard, not a timing assertion: a healthy server logs its address
/// or exits within a second.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// A spawned `abacus serve`, killed on drop ([`Served`]), its log collected.
struct Process(Served);

impl Process {
    /// Starts `abacus serve --addr 127.0.0.1:0 [--data-dir DIR]`.
    fn spawn(data_dir: Option<&Path>) -> Self {
        let mut extra = Vec::new();
        if let Some(dir) = data_dir {
            extra.extend([std::ffi::OsStr::new("--data-dir"), dir.as_os_str()]);
        }
        Self(Served::spawn(
            Path::new(env!("CARGO_BIN_EXE_abacus")),
            &extra,
            "info",
        ))
    }

    fn logs(&self) -> String {
        self.0.logs()
    }

    /// Waits for the process to exit (it must: it is refusing to start);
    /// returns its status and its whole log.
    fn exit(mut self) -> (ExitStatus, String) {
        match self.0.seen.recv_timeout(HANG_GUARD) {
            Ok(Seen::Closed) => {}
            Ok(Seen::Listening(addr)) => {
                panic!(
                    "expected a refusal, but it listens on {addr}:\n{}",
                    self.logs()
                )
            }
            Err(_) => panic!("the server neither exited nor listened:\n{}", self.logs()),
        }
        let status = self.0.child.wait().expect("wait for the server");
        (status, self.logs())
    }
}

/// A running server and its address.
struct Server {
    process: Process,
}

impl Server {
    /// Starts a server and connects once it logs its address (it is
    /// printed after bind, so the port accepts connections from then on).
    async fn start(data_dir: Option<&Path>) -> (Self, Client) {
        let process = Process::spawn(data_dir);
        let addr = process.0.addr();
        let client = CalculatorClient::connect(format!("http://{addr}"))
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}\n{}", process.logs()));
        (Self { process }, client)
    }

    /// SIGKILL: no shutdown hook runs, as in a crash.
    fn crash(self) {
        drop(self.process);
    }
}

type Client = CalculatorClient<Channel>;

/// `Accumulate`; returns (value, replayed field, `abacus-replayed` header).
async fn accumulate(
    client: &mut Client,
    register: &str,
    delta: f64,
    request_id: &str,
) -> Result<(f64, bool, bool), tonic::Status> {
    let response = client
        .accumulate(AccumulateRequest {
            register: register.into(),
            delta,
            request_id: request_id.into(),
        })
        .await?;
    let header = response
        .metadata()
        .get("abacus-replayed")
        .is_some_and(|v| v == "true");
    let body = response.into_inner();
    Ok((body.value, body.replayed, header))
}

async fn get(client: &mut Client, register: &str) -> Result<f64, tonic::Status> {
    let r = client
        .get_register(GetRegisterRequest {
            register: register.into(),
        })
        .await?;
    Ok(r.into_inner().value)
}

#[tokio::test]
async fn registers_and_dedup_records_survive_a_crash() {
    let tmp = TempDir::new("it-durable");
    let data = tmp.path().join("data");
    let rival_dir = data.clone();

    let (first, mut c) = Server::start(Some(&data)).await;
    assert_eq!(
        accumulate(&mut c, "x", 2.5, "req-1").await.unwrap(),
        (2.5, false, false)
    );
    assert_eq!(
        accumulate(&mut c, "x", 1.0, "req-2").await.unwrap(),
        (3.5, false, false)
    );
    assert_eq!(
        accumulate(&mut c, "x", 2.5, "req-1").await.unwrap(),
        (2.5, true, true)
    );

    // A second server on the same directory is refused (redb's file lock),
    // so two processes can never commit into one store.
    let (status, log) =
        tokio::task::spawn_blocking(move || Process::spawn(Some(&rival_dir)).exit())
            .await
            .expect("rival");
    assert!(
        !status.success(),
        "a second server on the same data dir must fail:\n{log}"
    );
    assert!(log.contains("in use by another process"), "{log}");

    first.crash();
    drop(c);

    let (second, mut c) = Server::start(Some(&data)).await;
    assert_eq!(get(&mut c, "x").await.unwrap(), 3.5, "register survived");
    assert_eq!(
        accumulate(&mut c, "x", 2.5, "req-1").await.unwrap(),
        (2.5, true, true),
        "a retry after the crash is replayed with the first value"
    );
    assert_eq!(
        get(&mut c, "x").await.unwrap(),
        3.5,
        "and not applied again"
    );
    let reused = accumulate(&mut c, "x", 9.0, "req-2").await.unwrap_err();
    assert_eq!(reused.code(), Code::FailedPrecondition, "{reused:?}");
    assert_eq!(
        accumulate(&mut c, "x", 1.0, "req-3").await.unwrap(),
        (4.5, false, false)
    );

    let stats = c.get_stats(GetStatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.applied, 1, "only req-3 was applied by this process");
    assert_eq!(stats.dedup_entries, 3);
    assert_eq!(stats.dedup_hits, 1);
    assert_eq!(stats.dedup_mismatches, 1);
    assert_eq!(stats.registers, 1);
    second.crash();
}

#[tokio::test]
async fn in_memory_state_is_lost_on_restart() {
    let (first, mut c) = Server::start(None).await;
    assert_eq!(
        accumulate(&mut c, "x", 2.0, "req-1").await.unwrap(),
        (2.0, false, false)
    );
    first.crash();
    drop(c);

    let (second, mut c) = Server::start(None).await;
    assert_eq!(get(&mut c, "x").await.unwrap_err().code(), Code::NotFound);
    // What durable mode prevents: the retry is applied a second time.
    assert_eq!(
        accumulate(&mut c, "x", 2.0, "req-1").await.unwrap(),
        (2.0, false, false)
    );
    second.crash();
}

#[tokio::test]
async fn a_crash_under_concurrent_load_loses_nothing_acknowledged_and_applies_nothing_twice() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const CALLERS: usize = 16;
    const ACKED_BEFORE_CRASH: usize = 300;
    let tmp = TempDir::new("it-load");
    let data = tmp.path().join("data");
    let (server, c) = Server::start(Some(&data)).await;

    let sent = Arc::new(Mutex::new(Vec::new()));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (mut c, sent, acked) = (c.clone(), sent.clone(), acked.clone());
            let (acked_count, enough, stop) = (acked_count.clone(), enough.clone(), stop.clone());
            tokio::spawn(async move {
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("c{caller}-{n}");
                    sent.lock().unwrap().push(id.clone());
                    // Until the crash cuts the connection.
                    if accumulate(&mut c, "load", 1.0, &id).await.is_err() {
                        break;
                    }
                    acked.lock().unwrap().push(id);
                    if acked_count.fetch_add(1, Ordering::Relaxed) + 1 == ACKED_BEFORE_CRASH {
                        enough.notify_one();
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(HANG_GUARD, enough.notified())
        .await
        .expect("the load makes progress");
    // SIGKILL with calls in flight: some decided, some mid-fsync, some not
    // yet read by the server.
    server.crash();
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await.expect("caller task");
    }
    drop(c);

    let (second, mut c) = Server::start(Some(&data)).await;
    let acked = acked.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    assert!(acked.len() >= ACKED_BEFORE_CRASH);
    for id in &acked {
        let (_, replayed, _) = accumulate(&mut c, "load", 1.0, id).await.unwrap();
        assert!(replayed, "acknowledged {id} was lost in the crash");
    }
    // Whatever was in flight is resolved by its retry: replayed if it
    // reached the disk, applied now if not; either way once.
    for id in sent.iter().filter(|id| !acked.contains(id)) {
        accumulate(&mut c, "load", 1.0, id).await.unwrap();
    }
    assert_eq!(
        get(&mut c, "load").await.unwrap(),
        sent.len() as f64,
        "every request ID sent is applied exactly once"
    );
    second.crash();
}

/// Every offset where `needle` occurs in `hay`.
fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// Damage done to a database file.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Truncated to nothing (a zero-length file is not a fresh database).
    Empty,
    /// Truncated to its first 4 KiB.
    Truncated4k,
    /// Truncated to half its length.
    TruncatedHalf,
    /// One bit flipped in every stored copy of the newest value.
    FlippedValue,
    /// The page holding the newest value zeroed.
    ZeroedPage,
}

fn damage(path: &Path, how: Damage) {
    let mut bytes = std::fs::read(path).expect("read the database");
    let newest = find_all(&bytes, &141_044.0f64.to_le_bytes());
    assert!(!newest.is_empty(), "the value is stored in the file");
    match how {
        Damage::Empty => bytes.clear(),
        Damage::Truncated4k => bytes.truncate(4096),
        Damage::TruncatedHalf => bytes.truncate(bytes.len() / 2),
        Damage::FlippedValue => newest.iter().for_each(|&at| bytes[at + 1] ^= 0x20),
        Damage::ZeroedPage => newest
            .iter()
            .for_each(|&at| bytes[at / 4096 * 4096..][..4096].fill(0)),
    }
    std::fs::write(path, &bytes).expect("write the damaged database");
}

#[tokio::test]
async fn a_damaged_file_stops_abacus_serve_with_a_clear_error_not_a_panic() {
    let tmp = TempDir::new("it-damaged");
    let data = tmp.path().join("data");
    // x = 1000, then x = 141044, then a crash: the file is left as a
    // SIGKILL leaves it (redb repairs such a file when it opens it).
    let (server, mut c) = Server::start(Some(&data)).await;
    accumulate(&mut c, "x", 1000.0, "a").await.unwrap();
    accumulate(&mut c, "x", 140_044.0, "b").await.unwrap();
    server.crash();
    let file = data.join(abacus::store::redb::DB_FILE_NAME);
    let pristine = std::fs::read(&file).unwrap();

    for how in [
        Damage::Empty,
        Damage::Truncated4k,
        Damage::TruncatedHalf,
        Damage::FlippedValue,
        Damage::ZeroedPage,
    ] {
        std::fs::write(&file, &pristine).unwrap();
        damage(&file, how);
        let dir = data.clone();
        let (status, log) = tokio::task::spawn_blocking(move || Process::spawn(Some(&dir)).exit())
            .await
            .expect("server");
        assert!(
            !status.success(),
            "{how:?}: a damaged file must stop the server:\n{log}"
        );
        assert_ne!(
            status.code(),
            Some(101),
            "{how:?}: a panic is not an error message:\n{log}"
        );
        assert!(
            !log.contains("panicked at"),
            "{how:?}: no panic message or backtrace:\n{log}"
        );
        assert!(
            log.contains(&file.display().to_string()),
            "{how:?}: the error names the file:\n{log}"
        );
        let len = std::fs::metadata(&file).unwrap().len();
        if matches!(how, Damage::Empty) {
            assert_eq!(len, 0, "an empty file is left as found, not initialised");
        }
    }

    // The undamaged file still serves the newest value: the damage, not
    // the crash, is what was refused.
    std::fs::write(&file, &pristine).unwrap();
    let (server, mut c) = Server::start(Some(&data)).await;
    assert_eq!(get(&mut c, "x").await.unwrap(), 141_044.0);
    server.crash();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_unavailable_reports_not_serving_and_heals_by_itself() {
    use abacus::{
        error::NOT_APPLIED_KEY,
        pb::BinaryRequest,
        server::{self, REGISTERS_HEALTH_SERVICE, ServerConfig},
        store::redb::{DiskFault, DiskFaults, RedbLedger},
        trace::EventSink,
    };
    use tokio_stream::StreamExt;
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };

    let tmp = TempDir::new("it-full");
    let faults = DiskFaults::new();
    let ledger = RedbLedger::open_with_faults(
        Default::default(),
        EventSink::log_only(),
        tmp.path(),
        Arc::clone(&faults),
    )
    .expect("open");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve_with_ledger(
        ServerConfig::default(),
        Arc::new(ledger),
        server::tcp_incoming(listener),
        async {
            let _ = stopped.await;
        },
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = CalculatorClient::new(channel.clone());
    let health = HealthClient::new(channel);
    let status = |service: &str| {
        let mut health = health.clone();
        let service = service.to_owned();
        async move {
            health
                .check(HealthCheckRequest { service })
                .await
                .unwrap()
                .into_inner()
                .status()
        }
    };
    // Health changes are pushed (Watch): the test waits on them, bounded.
    let mut registers = health
        .clone()
        .watch(HealthCheckRequest {
            service: REGISTERS_HEALTH_SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut becomes = async |want: ServingStatus| loop {
        let next = tokio::time::timeout(HANG_GUARD, registers.next())
            .await
            .expect("the health status changes")
            .expect("the watch goes on")
            .expect("a status");
        if next.status() == want {
            return;
        }
    };
    becomes(ServingStatus::Serving).await;
    assert_eq!(accumulate(&mut c, "x", 1.0, "a").await.unwrap().0, 1.0);

    faults.set(DiskFault::Full);
    let failed = accumulate(&mut c, "x", 1.0, "b").await.unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert!(
        failed.metadata().get(NOT_APPLIED_KEY).is_none(),
        "the failed batch's fate is unknown, never a false not-applied"
    );
    let text = failed.message().to_lowercase();
    for internal in ["space", "redb", "/tmp", "i/o", "abacus.redb"] {
        assert!(
            !text.contains(internal),
            "{internal:?} leaks to clients: {text}"
        );
    }
    becomes(ServingStatus::NotServing).await;
    // Pure RPCs keep working, and the overall status says so.
    assert_eq!(status("").await, ServingStatus::Serving);
    assert_eq!(status("abacus.v1.Calculator").await, ServingStatus::Serving);
    let sum = c.add(BinaryRequest { a: 2.0, b: 3.0 }).await.unwrap();
    assert_eq!(sum.into_inner().result, 5.0);
    // Register calls are refused while broken: certainly not applied.
    let refused = accumulate(&mut c, "x", 1.0, "c").await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(refused.metadata().get(NOT_APPLIED_KEY).unwrap(), "true");
    assert_eq!(
        get(&mut c, "x").await.unwrap_err().code(),
        Code::Unavailable
    );

    // Space comes back: the store recovers by itself.
    faults.set(DiskFault::None);
    becomes(ServingStatus::Serving).await;
    assert_eq!(get(&mut c, "x").await.unwrap(), 1.0, "reloaded from disk");
    assert_eq!(
        accumulate(&mut c, "x", 1.0, "b").await.unwrap(),
        (2.0, false, false),
        "the retry of the failed request applies once"
    );
    // A graceful stop waits for open calls: the health watch is one.
    drop((becomes, status, c));
    drop(registers);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
