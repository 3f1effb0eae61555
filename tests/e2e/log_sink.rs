//! A stalled log sink must not stop the server: the real `abacus serve`
//! with stdout and stderr going to pipes nobody reads (after its first
//! line), logging at DEBUG, under enough traffic to fill the pipe many
//! times over. Calls and health checks must keep answering, and the lines
//! the sink could not take must be counted and reported once it drains.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, ChildStderr, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use abacus::pb::{BinaryRequest, calculator_client::CalculatorClient};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Calls driven through the stalled sink. At DEBUG each writes about six
/// lines (its event, h2's frames: ~600 bytes), so this is ~12 MB of log:
/// the 64 KiB pipe 180 times, the writer's 4 MiB queue three times.
const CALLS: usize = 20_000;
/// Concurrent callers.
const CALLERS: usize = 16;
/// Upper bound on any one call: on the old synchronous logging every call
/// hung once the pipe was full.
const CALL_BOUND: Duration = Duration::from_secs(10);

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `abacus serve` at DEBUG and reads stderr only until the
/// "listening" line; returns the server, its address and the stderr pipe,
/// which is kept open and unread from then on.
fn start() -> (Server, String, ChildStderr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_abacus"))
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn abacus serve");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let server = Server { child };
    // Byte by byte, so nothing past the line is consumed into a buffer.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let addr = loop {
        match stderr.read(&mut byte) {
            Ok(1) => {}
            _ => panic!("abacus serve ended before logging its address"),
        }
        if byte[0] != b'\n' {
            line.push(byte[0]);
            continue;
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        line.clear();
        if text.contains("listening")
            && let Some(at) = text.find("addr=")
        {
            let rest = &text[at + "addr=".len()..];
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
    };
    (server, addr, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_log_sink_does_not_stop_the_server() {
    let (_server, addr, stderr) = start();
    // The stdout pipe is not read either (it is held by the child struct).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to abacus serve");

    let mut callers = Vec::new();
    for caller in 0..CALLERS {
        let mut client = CalculatorClient::new(channel.clone());
        callers.push(tokio::spawn(async move {
            for i in 0..CALLS / CALLERS {
                let a = (caller * CALLS + i) as f64;
                let call = client.add(BinaryRequest { a, b: 1.0 });
                let reply = tokio::time::timeout(CALL_BOUND, call)
                    .await
                    .unwrap_or_else(|_| panic!("call {i} of caller {caller} hung"))
                    .expect("add succeeds");
                assert_eq!(reply.into_inner().result, a + 1.0);
            }
        }));
    }
    for caller in callers {
        caller.await.unwrap();
    }

    // Health still answers at once, and so do calls.
    let mut health = HealthClient::new(channel.clone());
    let check = health.check(HealthCheckRequest {
        service: String::new(),
    });
    let status = tokio::time::timeout(CALL_BOUND, check)
        .await
        .expect("health check answers while the sink is stalled")
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    // Now drain the pipe: the server reports how many lines it dropped.
    let (found_tx, found) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("log lines dropped") {
                let _ = found_tx.send(line);
                break;
            }
        }
    });
    let report = found
        .recv_timeout(Duration::from_secs(60))
        .expect("the server reports the log lines it dropped");
    let dropped: u64 = report
        .split_whitespace()
        .skip_while(|w| *w != "abacus::log:")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count in {report:?}"));
    assert!(dropped > 0, "{report}");
}
