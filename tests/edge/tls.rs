//! TLS and mutual TLS on both fronts, and every way a handshake can fail.

use std::{sync::Arc, time::Duration};

use abacus::{
    client::{Balancing, BearerToken, CallError, Client},
    server::{Edge, Limits, metrics::ServerMetrics, tls::ServerTls},
    tls::PemSource,
    trace::Outcome,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{ClientConfig, RootCertStore, pki_types::ServerName},
};
use tonic::Code;

use crate::{
    certs::Pki,
    support::{
        Fronts, WRITER_TOKEN, authenticator, client, client_tls, http1, quick_config, rest_request,
        server_tls,
    },
};

fn tls_edge(pki: &Pki, mutual: bool) -> Edge {
    Edge {
        tls: Some(server_tls(pki, mutual)),
        metrics: Some(ServerMetrics::new()),
        ..Edge::default()
    }
}

/// The error of a call that must fail at the handshake: UNAVAILABLE.
fn assert_unavailable(result: Result<f64, CallError>, what: &str) -> CallError {
    let err = result.expect_err(what);
    assert_eq!(err.code, Code::Unavailable, "{what}: {err}");
    err
}

#[tokio::test]
async fn grpc_over_tls_and_mutual_tls() {
    let pki = Pki::generate();
    let tls = Fronts::start(tls_edge(&pki, false)).await;
    let trusted = client_tls(&pki.ca, None);
    let c = client(tls.grpc, Some(&trusted), quick_config(None));
    assert_eq!(c.add(2.0, 3.0).await, Ok(5.0));
    assert_eq!(
        c.accumulate_with_id("r", 4.0, "id-1").await,
        Ok((4.0, false))
    );
    assert_eq!(
        c.accumulate_with_id("r", 4.0, "id-1").await,
        Ok((4.0, true))
    );

    let mutual = Fronts::start(tls_edge(&pki, true)).await;
    let with_cert = client_tls(&pki.ca, Some(&pki.client));
    let c = client(mutual.grpc, Some(&with_cert), quick_config(None));
    assert_eq!(c.multiply(6.0, 7.0).await, Ok(42.0));

    // No certificate, or one from another CA: refused.
    let c = client(mutual.grpc, Some(&trusted), quick_config(None));
    assert_unavailable(c.add(1.0, 1.0).await, "mutual TLS without a certificate");
    let stranger = client_tls(&pki.ca, Some(&pki.stranger));
    let c = client(mutual.grpc, Some(&stranger), quick_config(None));
    assert_unavailable(c.add(1.0, 1.0).await, "a certificate of another CA");
}

/// A client over several endpoints dials each with TLS (here mutual,
/// so an endpoint dialled without the client's certificate would fail)
/// and sends the token on every attempt (the servers check it), whichever
/// endpoint the balancer picks.
#[tokio::test]
async fn every_endpoint_of_a_set_gets_tls_and_the_token() {
    let pki = Pki::generate();
    let edge = Edge {
        auth: Some(authenticator(None)),
        ..tls_edge(&pki, true)
    };
    let (a, b) = (Fronts::start(edge.clone()).await, Fronts::start(edge).await);
    let mut config = quick_config(Some(WRITER_TOKEN));
    // Each endpoint in turn, so both are used whatever their latency.
    config.balance.policy = Balancing::RoundRobin;
    let with_cert = client_tls(&pki.ca, Some(&pki.client));
    let c = Client::connect_with(&format!("{},{}", a.grpc, b.grpc), Some(with_cert), config)
        .await
        .expect("two addresses");
    for i in 0..6 {
        let x = f64::from(i);
        assert_eq!(c.add(x, 1.0).await, Ok(x + 1.0));
    }
    let endpoints = c.endpoints();
    assert_eq!(endpoints.len(), 2, "{endpoints:?}");
    for e in &endpoints {
        assert_eq!(e.counters.answered, 3, "{endpoints:?}");
        assert_eq!(e.counters.failed, 0, "{endpoints:?}");
    }
}

#[tokio::test]
async fn a_wrong_ca_an_expired_certificate_and_protocol_mixups_fail_cleanly() {
    let pki = Pki::generate();
    let fronts = Fronts::start(tls_edge(&pki, false)).await;

    let wrong_ca = client_tls(&pki.other_ca, None);
    let c = client(fronts.grpc, Some(&wrong_ca), quick_config(None));
    let err = assert_unavailable(c.add(1.0, 2.0).await, "a server certificate of another CA");
    // The handshake failed before anything was sent.
    assert_eq!(err.outcome, Outcome::NotApplied, "{err}");
    assert!(err.to_string().contains("certificate"), "says why: {err}");

    // Plaintext to the TLS port: a clean failure, and the server goes on.
    let plain = client(fronts.grpc, None, quick_config(None));
    assert_unavailable(plain.add(1.0, 2.0).await, "plaintext to a TLS port");
    let good = client(
        fronts.grpc,
        Some(&client_tls(&pki.ca, None)),
        quick_config(None),
    );
    assert_eq!(good.add(1.0, 2.0).await, Ok(3.0));

    // TLS to a plaintext port.
    let plaintext = Fronts::start(Edge::default()).await;
    let c = client(
        plaintext.grpc,
        Some(&client_tls(&pki.ca, None)),
        quick_config(None),
    );
    assert_unavailable(c.add(1.0, 2.0).await, "TLS to a plaintext port");

    // An expired server certificate.
    let expired = Fronts::start(Edge {
        tls: Some(crate::support::server_tls_with(&pki.expired, None)),
        ..Edge::default()
    })
    .await;
    let c = client(
        expired.grpc,
        Some(&client_tls(&pki.ca, None)),
        quick_config(None),
    );
    let err = assert_unavailable(c.add(1.0, 2.0).await, "an expired server certificate");
    assert!(
        err.to_string().to_lowercase().contains("expired"),
        "says why: {err}"
    );
}

/// A rustls client trusting `ca`, offering `alpn`.
fn rustls_client(ca: &str, alpn: &[u8]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in abacus::tls::certificates(PemSource {
        flag: "--tls-ca",
        path: std::path::Path::new("(test)"),
        pem: ca.as_bytes(),
    })
    .unwrap()
    {
        roots.add(cert).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(abacus::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn rest_over_tls_with_the_same_certificate() {
    let pki = Pki::generate();
    let fronts = Fronts::start(tls_edge(&pki, false)).await;
    let connector = rustls_client(&pki.ca, b"http/1.1");
    let tcp = TcpStream::connect(fronts.rest).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, _, body) = http1(
        tls,
        rest_request("POST", "/v1/add", None, Some(r#"{"a":2,"b":3}"#)),
    )
    .await;
    assert_eq!((status.as_u16(), body.as_str()), (200, r#"{"result":5.0}"#));

    // Plaintext HTTP to the TLS port gets no HTTP answer.
    let mut tcp = TcpStream::connect(fronts.rest).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf).await;
    assert!(
        !buf.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
}

#[tokio::test]
async fn a_handshake_never_finished_is_cut_at_the_first_byte_timeout() {
    let pki = Pki::generate();
    let limits = Limits {
        first_byte_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let fronts = Fronts::with(tls_edge(&pki, false), limits, None).await;
    for addr in [fronts.grpc, fronts.rest] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        // The first bytes of a TLS record: the guard has heard from the
        // peer (its idle timeout is a minute), the handshake has not
        // finished, and never will.
        tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        let started = tokio::time::Instant::now();
        let mut buf = [0u8; 64];
        // Bounded only so a regression fails instead of hanging.
        let read = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut buf))
            .await
            .expect("the server closes the connection");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }
    let text = crate::metrics::scrape(fronts.metrics.unwrap()).await;
    for front in ["grpc", "rest"] {
        let timed_out = crate::metrics::value(
            &text,
            "abacus_tls_handshakes_total",
            &[("front", front), ("result", "timed_out")],
        );
        assert_eq!(timed_out, Some(1.0), "{front}\n{text}");
    }
}

#[test]
fn bad_files_are_refused_at_start_with_the_flag_and_never_the_key() {
    let pki = Pki::generate();
    fn pem<'a>(flag: &'static str, text: &'a str) -> PemSource<'a> {
        PemSource {
            flag,
            path: std::path::Path::new("/etc/abacus/x.pem"),
            pem: text.as_bytes(),
        }
    }
    let (cert, key, other_key) = (
        pki.server.cert.as_str(),
        pki.server.key.as_str(),
        pki.client.key.as_str(),
    );
    let mut errors = Vec::new();
    let mut err = |r: Result<ServerTls, abacus::tls::TlsConfigError>| {
        let e = r.expect_err("refused").to_string();
        errors.push(e.clone());
        e
    };

    let e = err(ServerTls::from_pem(
        pem("--tls-cert", cert),
        pem("--tls-key", other_key),
        None,
    ));
    assert!(e.contains("does the key belong"), "{e}");
    let e = err(ServerTls::from_pem(
        pem("--tls-cert", key),
        pem("--tls-key", key),
        None,
    ));
    assert!(
        e.starts_with("--tls-cert /etc/abacus/x.pem: no certificate"),
        "{e}"
    );
    let e = err(ServerTls::from_pem(
        pem("--tls-cert", cert),
        pem("--tls-key", cert),
        None,
    ));
    assert!(
        e.starts_with("--tls-key /etc/abacus/x.pem: no private key"),
        "{e}"
    );
    let e = err(ServerTls::from_pem(
        pem("--tls-cert", cert),
        pem("--tls-key", key),
        Some(pem("--tls-client-ca", "not a certificate")),
    ));
    assert!(e.starts_with("--tls-client-ca"), "{e}");
    let missing = std::path::Path::new("/nonexistent/abacus.pem");
    let e = err(ServerTls::from_files(missing, missing, None));
    assert!(
        e.starts_with("--tls-cert /nonexistent/abacus.pem: cannot read it"),
        "{e}"
    );
    // No error quotes key material.
    for key in [key, other_key] {
        for line in key.lines().filter(|l| !l.starts_with("-----")) {
            assert!(errors.iter().all(|e| !e.contains(line)), "{errors:?}");
        }
    }
    // Nor does a client's token in debug output.
    let token = BearerToken::new("very-secret-token", "test").unwrap();
    assert!(!format!("{token:?}").contains("very-secret"));
}
