//! Tokens and roles on both fronts, identities scoping request IDs, and
//! the per-identity rate limit with the client honouring its pushback.

use std::{
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

use abacus::{
    error::{NOT_APPLIED_KEY, PUSHBACK_KEY},
    pb::{self, calculator_client::CalculatorClient},
    server::{Edge, Limits, auth::RateLimit},
    store::{DedupConfig, Ledger, MemoryLedger, redb::RedbLedger},
    trace::{Event, EventSink},
};
use tokio::net::TcpStream;
use tonic::{Code, Request, metadata::MetadataValue};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    support::{
        Fronts, OTHER_WRITER_TOKEN, READER_TOKEN, WRITER_TOKEN, authenticator, client, http1,
        quick_config, rest_request,
    },
    temp_dir::TempDir,
};

fn auth_edge(rate: Option<RateLimit>) -> Edge {
    Edge {
        auth: Some(authenticator(rate)),
        ..Edge::default()
    }
}

/// An Add or Accumulate with `token` (if any) through tonic's own client:
/// the status as the wire carries it.
async fn raw_call(
    addr: std::net::SocketAddr,
    token: Option<&str>,
    accumulate: bool,
) -> Result<(), tonic::Status> {
    let mut c = CalculatorClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    fn with_token<T>(msg: T, token: Option<&str>) -> Request<T> {
        let mut req = Request::new(msg);
        if let Some(t) = token {
            req.metadata_mut().insert(
                "authorization",
                MetadataValue::try_from(format!("Bearer {t}")).unwrap(),
            );
        }
        req
    }
    if accumulate {
        let msg = pb::AccumulateRequest {
            register: "r".into(),
            delta: 1.0,
            request_id: String::new(),
        };
        c.accumulate(with_token(msg, token)).await.map(drop)
    } else {
        let msg = pb::BinaryRequest { a: 1.0, b: 2.0 };
        c.add(with_token(msg, token)).await.map(drop)
    }
}

#[tokio::test]
async fn each_role_on_the_grpc_front_and_health_stays_open() {
    let fronts = Fronts::start(auth_edge(None)).await;
    let code = |r: Result<(), tonic::Status>| r.map_err(|s| s.code());
    for (token, accumulate, want) in [
        (None, false, Err(Code::Unauthenticated)),
        (
            Some("guessed-token-0123456789"),
            false,
            Err(Code::Unauthenticated),
        ),
        (Some(READER_TOKEN), false, Ok(())),
        (Some(READER_TOKEN), true, Err(Code::PermissionDenied)),
        (Some(WRITER_TOKEN), true, Ok(())),
        (Some(WRITER_TOKEN), false, Ok(())),
    ] {
        let got = raw_call(fronts.grpc, token, accumulate).await;
        if let Err(status) = &got {
            assert_eq!(status.metadata().get(NOT_APPLIED_KEY).unwrap(), "true");
            assert!(
                !status.message().contains(token.unwrap_or("-")),
                "{status:?}"
            );
        }
        assert_eq!(code(got), want, "token {token:?}, accumulate {accumulate}");
    }
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", fronts.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let serving = health
        .check(HealthCheckRequest::default())
        .await
        .expect("health needs no token");
    assert_eq!(serving.into_inner().status, 1);

    // The abacus client sends its token on every attempt.
    let reader = client(fronts.grpc, None, quick_config(Some(READER_TOKEN)));
    assert_eq!(reader.add(2.0, 2.0).await, Ok(4.0));
    let err = reader.accumulate("r", 1.0).await.unwrap_err();
    assert_eq!(err.code, Code::PermissionDenied, "{err}");
    assert!(err.to_string().contains("read role"), "{err}");
}

#[tokio::test]
async fn each_role_on_the_rest_front_with_challenges() {
    let fronts = Fronts::start(auth_edge(None)).await;
    let call = |token: Option<&'static str>, path: &'static str, body: Option<&'static str>| async move {
        let tcp = TcpStream::connect(fronts.rest).await.unwrap();
        let method = if body.is_some() { "POST" } else { "GET" };
        http1(tcp, rest_request(method, path, token, body)).await
    };
    let (status, headers, body) = call(None, "/v1/add", Some(r#"{"a":1,"b":2}"#)).await;
    assert_eq!(status.as_u16(), 401, "{body}");
    assert_eq!(headers["www-authenticate"], r#"Bearer realm="abacus""#);
    assert!(body.contains(r#""code":"UNAUTHENTICATED""#), "{body}");
    let (status, headers, _) = call(Some("nope-nope-nope-nope"), "/v1/stats", None).await;
    assert_eq!(status.as_u16(), 401);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    let acc = "/v1/registers/r:accumulate";
    let (status, headers, body) = call(Some(READER_TOKEN), acc, Some(r#"{"delta":1}"#)).await;
    assert_eq!(status.as_u16(), 403, "{body}");
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );
    assert!(body.contains(r#""not_applied":true"#), "{body}");
    let (status, _, body) = call(Some(WRITER_TOKEN), acc, Some(r#"{"delta":1}"#)).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, r#"{"value":1.0,"replayed":false}"#)
    );
    let (status, _, _) = call(Some(READER_TOKEN), "/v1/registers/r", None).await;
    assert_eq!(status.as_u16(), 200);
    // Health stays open.
    let (status, _, _) = call(None, "/healthz", None).await;
    assert_eq!(status.as_u16(), 200);
}

/// The same request ID from two identities names two requests on both
/// fronts: neither replays the other's outcome, nor is refused as reusing
/// it with another payload; each identity's own repeats still replay.
async fn request_ids_are_scoped_by_identity(ledger: Arc<dyn Ledger>) {
    let fronts = Fronts::with(auth_edge(None), Limits::default(), Some(ledger)).await;
    let writer = client(fronts.grpc, None, quick_config(Some(WRITER_TOKEN)));
    let other = client(fronts.grpc, None, quick_config(Some(OTHER_WRITER_TOKEN)));
    assert_eq!(
        writer.accumulate_with_id("shared", 1.0, "id-1").await,
        Ok((1.0, false))
    );
    // Same ID, same payload, another identity: executed, not replayed.
    assert_eq!(
        other.accumulate_with_id("shared", 1.0, "id-1").await,
        Ok((2.0, false))
    );
    // Same ID, another payload, another identity: executed, not refused.
    assert_eq!(
        other.accumulate_with_id("shared", 5.0, "id-2").await,
        Ok((7.0, false))
    );
    assert_eq!(
        writer.accumulate_with_id("shared", 3.0, "id-2").await,
        Ok((10.0, false))
    );
    assert_eq!(
        writer.accumulate_with_id("shared", 1.0, "id-1").await,
        Ok((1.0, true))
    );
    assert_eq!(
        other.accumulate_with_id("shared", 5.0, "id-2").await,
        Ok((7.0, true))
    );
    // The REST twin scopes the same way: an Idempotency-Key is the gRPC
    // request ID of the same identity, and only of it.
    let rest = |token: &'static str| {
        let mut req = rest_request(
            "POST",
            "/v1/registers/shared:accumulate",
            Some(token),
            Some(r#"{"delta":3}"#),
        );
        req.headers_mut()
            .insert("idempotency-key", "id-2".parse().unwrap());
        async move { http1(TcpStream::connect(fronts.rest).await.unwrap(), req).await }
    };
    let (status, _, body) = rest(OTHER_WRITER_TOKEN).await;
    assert_eq!(status.as_u16(), 409, "other's id-2 carried delta 5: {body}");
    let (status, _, body) = rest(WRITER_TOKEN).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (200, r#"{"value":10.0,"replayed":true}"#)
    );
    assert_eq!(writer.get("shared").await, Ok(10.0));
}

#[tokio::test]
async fn request_ids_are_scoped_by_identity_in_memory() {
    let ledger = MemoryLedger::new(DedupConfig::default(), EventSink::log_only());
    request_ids_are_scoped_by_identity(Arc::new(ledger)).await;
}

#[tokio::test]
async fn request_ids_are_scoped_by_identity_in_redb() {
    let dir = TempDir::new("scope");
    let ledger = RedbLedger::open(DedupConfig::default(), EventSink::log_only(), dir.path())
        .expect("a fresh data directory");
    request_ids_are_scoped_by_identity(Arc::new(ledger)).await;
}

#[tokio::test]
async fn over_the_rate_limit_the_client_waits_the_pushback_it_is_given() {
    let rate = RateLimit {
        per_second: NonZeroU32::new(4).unwrap(),
        burst: NonZeroU32::new(1).unwrap(),
    };
    let fronts = Fronts::start(auth_edge(Some(rate))).await;

    // The wire: RESOURCE_EXHAUSTED with a pushback, not applied.
    raw_call(fronts.grpc, Some(WRITER_TOKEN), false)
        .await
        .unwrap();
    let limited = raw_call(fronts.grpc, Some(WRITER_TOKEN), false)
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    let pushback: u64 = limited
        .metadata()
        .get(PUSHBACK_KEY)
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=250).contains(&pushback), "{pushback}");
    // Another identity has its own budget.
    raw_call(fronts.grpc, Some(OTHER_WRITER_TOKEN), false)
        .await
        .unwrap();

    // The resilient client retrying RESOURCE_EXHAUSTED pauses for the
    // pushback, not its own backoff, and then succeeds.
    let backoffs = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&backoffs);
    let mut config = quick_config(Some(READER_TOKEN));
    config.retry.attempts_max = 4;
    config.retry.retryable_codes = vec![Code::Unavailable, Code::ResourceExhausted];
    // A backoff far longer than any pushback: a pause that short can only
    // be the server's.
    config.retry.backoff.initial = Duration::from_secs(5);
    config.retry.backoff.max = Duration::from_secs(5);
    config.deadline = Duration::from_secs(10);
    config.events = EventSink::with_hook(move |e| {
        if let Event::Backoff {
            delay_ms, pushback, ..
        } = e
        {
            seen.lock().unwrap().push((*delay_ms, *pushback));
        }
    });
    let reader = client(fronts.grpc, None, config);
    let started = tokio::time::Instant::now();
    assert_eq!(reader.add(1.0, 1.0).await, Ok(2.0));
    assert_eq!(reader.add(2.0, 2.0).await, Ok(4.0));
    let backoffs = backoffs.lock().unwrap().clone();
    assert!(!backoffs.is_empty(), "the second call was limited");
    for (delay_ms, pushback) in &backoffs {
        assert!(*pushback, "{backoffs:?}");
        assert!((1..=250).contains(delay_ms), "{backoffs:?}");
    }
    let waited: u64 = backoffs.iter().map(|(d, _)| d).sum();
    assert!(
        started.elapsed() >= Duration::from_millis(waited),
        "{backoffs:?}"
    );

    // REST: 429 with Retry-After.
    let mut answers = Vec::new();
    for _ in 0..2 {
        let tcp = TcpStream::connect(fronts.rest).await.unwrap();
        let req = rest_request("GET", "/v1/stats", Some(READER_TOKEN), None);
        answers.push(http1(tcp, req).await);
    }
    let limited: Vec<_> = answers
        .iter()
        .filter(|(status, _, _)| status.as_u16() == 429)
        .collect();
    assert!(
        !limited.is_empty(),
        "two calls at once over a 4/s limit with no burst: {answers:?}"
    );
    for (_, headers, body) in limited {
        assert_eq!(headers["retry-after"], "1", "{body}");
    }
}
