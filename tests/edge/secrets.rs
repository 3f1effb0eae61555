//! No token or key in the binary's logs or errors, at DEBUG, across the
//! paths that handle them: a token file with a bad line, calls with
//! unknown, malformed and valid tokens on both fronts, TLS handshakes that
//! fail, and `abacus call` with a wrong token.

use std::{
    ffi::OsStr,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use abacus::client::ClientTls;
use tokio::net::TcpStream;

use crate::{
    certs::Pki,
    listening::{Seen, Served, listening_addr},
    support::{READER_TOKEN, WRITER_TOKEN, client, quick_config, rest_request},
    temp_dir::TempDir,
};

const BIN: &str = env!("CARGO_BIN_EXE_abacus");

/// A token no identity has, sent by the test.
const UNKNOWN_TOKEN: &str = "unknown-token-9f8e7d6c5b4a";

/// Asserts `text` holds none of `secrets`.
fn assert_clean(text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "a secret leaked:\n{text}");
    }
}

#[tokio::test]
async fn no_secret_in_logs_or_errors() {
    let pki = Pki::generate();
    let scratch = TempDir::new("secrets");
    let dir = pki.write_to(scratch.path()).unwrap();
    let tokens = dir.join("tokens");
    // The writer's token appears only as a digest; the reader's in clear.
    let digest: String = abacus::server::auth::tokens::digest(WRITER_TOKEN.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(
        &tokens,
        format!("writer write sha256:{digest}\nreader read {READER_TOKEN}\n"),
    )
    .unwrap();
    let key_lines: Vec<String> = pki
        .server
        .key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_owned)
        .collect();
    let mut secrets: Vec<&str> = vec![WRITER_TOKEN, READER_TOKEN, UNKNOWN_TOKEN, &digest];
    secrets.extend(key_lines.iter().map(String::as_str));

    // A token file with a bad line: the error names the line, not the token.
    let bad = dir.join("bad-tokens");
    std::fs::write(
        &bad,
        format!("ok write {WRITER_TOKEN}\nbroken admin {READER_TOKEN}\n"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--addr", "127.0.0.1:0", "--auth-tokens"])
        .arg(&bad)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 2: role \"admin\""), "{stderr}");
    assert_clean(&stderr, &secrets);

    // Tokens without TLS beyond loopback: refused, naming the flag.
    let out = Command::new(BIN)
        .args(["serve", "--addr", "0.0.0.0:0", "--auth-tokens"])
        .arg(&tokens)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");

    // A server at DEBUG, every line kept.
    let (server_pem, server_key) = (dir.join("server.pem"), dir.join("server.key"));
    let extra: Vec<&OsStr> = vec![
        "--rest-addr".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--auth-tokens".as_ref(),
        tokens.as_os_str(),
        "--tls-cert".as_ref(),
        server_pem.as_os_str(),
        "--tls-key".as_ref(),
        server_key.as_os_str(),
    ];
    let mut served = Served::spawn(Path::new(BIN), &extra, "debug");
    // The gRPC front logs its address first, then the REST twin.
    let grpc: SocketAddr = served.addr().parse().unwrap();
    let rest: SocketAddr = loop {
        // A hang guard: the line comes right after binding.
        let line = served
            .lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no REST address logged:\n{}", served.logs()));
        if line.contains("REST twin listening")
            && let Some(addr) = listening_addr(&line)
        {
            break addr.parse().unwrap();
        }
    };
    let tls = ClientTls::from_pem(
        abacus::tls::PemSource {
            flag: "--tls-ca",
            path: &dir.join("ca.pem"),
            pem: pki.ca.as_bytes(),
        },
        None,
    )
    .unwrap();
    let mut errors = String::new();
    for token in [UNKNOWN_TOKEN, READER_TOKEN, WRITER_TOKEN] {
        let c = client(grpc, Some(&tls), quick_config(Some(token)));
        if let Err(e) = c.accumulate_with_id("r", 1.0, "id").await {
            errors.push_str(&format!("{e}\n"));
        }
    }
    assert!(errors.contains("UNAUTHENTICATED"), "{errors}");
    assert!(errors.contains("PERMISSION_DENIED"), "{errors}");
    // Plaintext to the TLS port: a failed handshake in the log.
    let plain = client(grpc, None, quick_config(Some(WRITER_TOKEN)));
    errors.push_str(&format!("{:?}\n", plain.add(1.0, 1.0).await));
    // REST with a token over plaintext to the TLS port: no HTTP answer,
    // and nothing it sent may show up in the log.
    let tcp = TcpStream::connect(rest).await.unwrap();
    let req = rest_request("GET", "/v1/stats", Some(UNKNOWN_TOKEN), None);
    let handshake = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Full<hyper::body::Bytes>,
    >(hyper_util::rt::TokioIo::new(tcp))
    .await;
    if let Ok((mut sender, conn)) = handshake {
        tokio::spawn(conn);
        let _ = sender.send_request(req).await;
    }
    assert_clean(&errors, &secrets);

    // `abacus call` with a wrong token in the environment.
    let out = Command::new(BIN)
        .args(["call", "--addr", &grpc.to_string(), "--tls-ca"])
        .arg(dir.join("ca.pem"))
        .args(["--attempts", "1", "add", "1", "2"])
        .env("ABACUS_TOKEN", UNKNOWN_TOKEN)
        .env("RUST_LOG", "debug")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let call_stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{call_stderr}");
    assert!(
        call_stderr.contains("UNAUTHENTICATED: unknown token"),
        "{call_stderr}"
    );
    assert_clean(&call_stderr, &secrets);

    // Stop it gracefully, so every queued line is written, then read all.
    let stopped = Command::new("kill")
        .args(["-INT", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let _ = served.child.wait();
    assert!(
        matches!(
            served.seen.recv_timeout(Duration::from_secs(60)),
            Ok(Seen::Closed)
        ),
        "the log did not end with the process"
    );
    let log = served.logs();
    assert!(log.contains("TLS handshake failed"), "{log}");
    assert!(log.contains("DEBUG"), "the log ran at DEBUG:\n{log}");
    assert_clean(&log, &secrets);
}

/// Runs the binary with `args`; its exit code and stderr.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("ABACUS_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_and_incomplete_tls_files_are_refused_at_start() {
    let missing = "/nonexistent/abacus/cert.pem";
    for (args, fragment) in [
        (
            vec![
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--tls-cert",
                missing,
                "--tls-key",
                missing,
            ],
            "--tls-cert /nonexistent/abacus/cert.pem: cannot read it",
        ),
        (
            vec!["serve", "--addr", "127.0.0.1:0", "--tls-cert", missing],
            "--tls-key",
        ),
        (
            vec!["serve", "--addr", "127.0.0.1:0", "--auth-tokens", missing],
            "--auth-tokens /nonexistent/abacus/cert.pem: cannot read it",
        ),
        (
            vec!["call", "--tls-ca", missing, "add", "1", "2"],
            "--tls-ca /nonexistent/abacus/cert.pem: cannot read it",
        ),
        (
            vec!["call", "--token-file", missing, "add", "1", "2"],
            "--token-file /nonexistent/abacus/cert.pem: cannot read it",
        ),
    ] {
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(fragment), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
