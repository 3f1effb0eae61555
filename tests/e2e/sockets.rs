//! Connection exhaustion: sockets opened and left idle must neither lock
//! new clients out nor stay open for ever, on both fronts — and under a low
//! open-file limit the real binary keeps serving instead of spinning on
//! failed accepts.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{Arc, mpsc},
    time::Duration,
};

use abacus::{
    pb::{self, calculator_client::CalculatorClient},
    server::{self, Calculator, DedupConfig, Limits, ServerConfig},
    store::MemoryLedger,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Idle sockets per front: more than the REST front's old cap (1,024).
const IDLE: usize = 1_100;
/// Upper bound on any wait.
const BOUND: Duration = Duration::from_secs(20);

/// Both fronts over one calculator with `limits`; stopped when the sender
/// is dropped.
async fn fronts(limits: Limits) -> (SocketAddr, SocketAddr, oneshot::Sender<()>) {
    let config = ServerConfig::default();
    let state = Arc::new(MemoryLedger::new(
        DedupConfig::default(),
        config.events.clone(),
    ));
    let calculator = Calculator::from_config(&config, state);
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rest = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addrs = (grpc.local_addr().unwrap(), rest.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let stopped = futures_util::future::FutureExt::shared(async {
        let _ = stopped.await;
    });
    let rest_limits = limits.clone();
    let (rest_calculator, rest_stopped) = (calculator.clone(), stopped.clone());
    tokio::spawn(async move {
        server::serve_rest_with(
            rest_calculator,
            &rest_limits,
            server::tcp_incoming(rest),
            rest_stopped,
        )
        .await;
    });
    tokio::spawn(async move {
        server::serve_calculator_with(calculator, &limits, server::tcp_incoming(grpc), stopped)
            .await
    });
    (addrs.0, addrs.1, stop)
}

/// A gRPC health check and an `Add` on a new connection.
async fn grpc_serves(addr: SocketAddr) {
    let served = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("a new client connects");
        HealthClient::new(channel.clone())
            .check(HealthCheckRequest::default())
            .await
            .expect("health answers");
        CalculatorClient::new(channel)
            .add(pb::BinaryRequest { a: 2.0, b: 2.0 })
            .await
            .expect("add answers")
            .into_inner()
            .result
    };
    let sum = tokio::time::timeout(BOUND, served)
        .await
        .expect("a new gRPC client is served while idle sockets are held");
    assert_eq!(sum, 4.0);
}

/// `GET /healthz` over HTTP/1.1 on a new connection.
async fn rest_serves(addr: SocketAddr) {
    let served = async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: abacus\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        tcp.read_to_string(&mut response).await.unwrap();
        response
    };
    let response = tokio::time::timeout(BOUND, served)
        .await
        .expect("a new REST client is served while idle sockets are held");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_neither_lock_out_new_clients_nor_stay_open() {
    let limits = Limits {
        // Short, so that the test sees them closed; the default is 10 s.
        first_byte_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let (grpc, rest, _stop) = fronts(limits).await;
    let mut idle = Vec::with_capacity(2 * IDLE);
    for addr in [grpc, rest] {
        for _ in 0..IDLE {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
    }
    grpc_serves(grpc).await;
    rest_serves(rest).await;
    // And the server closes every one of them: reads end (EOF or reset)
    // instead of waiting for ever. (The gRPC front greets each connection
    // with its SETTINGS frame first.)
    let closed = async {
        for socket in &mut idle {
            let mut buf = [0u8; 256];
            while let Ok(1..) = socket.read(&mut buf).await {}
        }
    };
    tokio::time::timeout(BOUND, closed)
        .await
        .expect("the server closes sockets that send nothing");
}

/// `abacus serve` under `ulimit -n 256`, both fronts; stopped when dropped.
struct LowFdServer {
    child: Child,
}

impl Drop for LowFdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_low_open_file_limit_new_clients_are_served_past_idle_sockets() {
    let child = Command::new("sh")
        .args([
            "-c",
            r#"ulimit -n 256 && exec "$0" serve --addr 127.0.0.1:0 --rest-addr 127.0.0.1:0"#,
            env!("CARGO_BIN_EXE_abacus"),
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn abacus serve under ulimit -n 256");
    let mut server = LowFdServer { child };
    let stderr = server.child.stderr.take().unwrap();
    // Every line, read as it comes (the test waits on them as events).
    let (lines_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let wait_for = |what: &str| -> String {
        loop {
            let line = lines
                .recv_timeout(BOUND)
                .unwrap_or_else(|_| panic!("abacus serve logs {what:?}"));
            if line.contains(what) {
                return line;
            }
        }
    };
    let addr_of = |line: &str| -> SocketAddr {
        let rest = &line[line.find("addr=").expect("an address") + "addr=".len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    // In the order they are logged.
    let grpc = addr_of(&wait_for("abacus listening"));
    let cap = wait_for("connection cap lowered");
    assert!(cap.contains("connections_max=96"), "{cap}");
    let rest = addr_of(&wait_for("REST twin listening"));

    // 300 idle sockets on each front: three times the cap.
    let mut idle = Vec::new();
    for addr in [grpc, rest] {
        for _ in 0..300 {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
    }
    wait_for("connection cap reached");
    // New clients take the place of sockets that never sent a byte.
    grpc_serves(grpc).await;
    rest_serves(rest).await;
    drop(idle);
}
