//! Restart survival on real processes: `abacus serve --data-dir DIR` is
//! started, used, killed with SIGKILL (no graceful shutdown: a crash), and
//! started again on the same directory. Registers must keep their values and
//! a retried request ID must be replayed, not applied again. The in-memory
//! mode is run the same way to show the contrast the docs promise.
//!
//! Talks to the server with the raw generated client, so it does not depend
//! on the resilient client's API. The only waiting is a bounded poll for the
//! port to accept connections (and for a refused server to exit).

use std::{
    fs::File,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use abacus::pb::{
    AccumulateRequest, GetRegisterRequest, GetStatsRequest, calculator_client::CalculatorClient,
};
use tonic::{Code, transport::Channel};

/// Poll interval and count while waiting for a server: 200 × 25 ms = 5 s.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
const POLLS_MAX: u32 = 200;

/// A scratch directory under the system temp dir, unique to this process
/// and test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("abacus-it-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `abacus serve`, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

/// A port that was free a moment ago (the server binds it right after).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

fn spawn(data_dir: Option<&Path>, addr: SocketAddr, log: &Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_abacus"));
    cmd.args(["serve", "--addr", &addr.to_string()]);
    if let Some(dir) = data_dir {
        cmd.arg("--data-dir").arg(dir);
    }
    // Logs go to a file, not a pipe nobody reads (a full pipe would block
    // the server); they are printed if the test fails.
    let log = File::create(log).expect("create log file");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn abacus serve")
}

impl Server {
    /// Starts a server and waits (bounded) until it accepts gRPC calls.
    async fn start(scratch: &Path, data_dir: Option<&Path>, name: &str) -> (Self, Client) {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = scratch.join(format!("{name}.log"));
        let child = spawn(data_dir, addr, &log);
        let mut server = Server { child, addr, log };
        for _ in 0..POLLS_MAX {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("server exited early ({status}):\n{}", server.logs());
            }
            if let Ok(client) = CalculatorClient::connect(format!("http://{}", server.addr)).await {
                return (server, client);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        panic!(
            "server did not accept connections within 5 s:\n{}",
            server.logs()
        );
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown hook runs, as in a crash.
    fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    let tmp = TempDir::new("durable");
    let data = tmp.0.join("data");

    let (first, mut c) = Server::start(&tmp.0, Some(&data), "first").await;
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
    let mut rival = spawn(
        Some(&data),
        ([127, 0, 0, 1], free_port()).into(),
        &tmp.0.join("rival.log"),
    );
    let mut status = None;
    for _ in 0..POLLS_MAX {
        status = rival.try_wait().expect("poll rival");
        if status.is_some() {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let _ = rival.kill();
    assert!(
        status.is_some_and(|s| !s.success()),
        "a second server on the same data dir must exit with an error"
    );

    first.crash();
    drop(c);

    let (second, mut c) = Server::start(&tmp.0, Some(&data), "second").await;
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
    let tmp = TempDir::new("memory");
    let (first, mut c) = Server::start(&tmp.0, None, "first").await;
    assert_eq!(
        accumulate(&mut c, "x", 2.0, "req-1").await.unwrap(),
        (2.0, false, false)
    );
    first.crash();
    drop(c);

    let (second, mut c) = Server::start(&tmp.0, None, "second").await;
    assert_eq!(get(&mut c, "x").await.unwrap_err().code(), Code::NotFound);
    // What durable mode prevents: the retry is applied a second time.
    assert_eq!(
        accumulate(&mut c, "x", 2.0, "req-1").await.unwrap(),
        (2.0, false, false)
    );
    second.crash();
}
