//! `/metrics` scraped and parsed after known calls on both fronts; the
//! client's recorder after known retries.

use std::net::SocketAddr;

use abacus::{
    client::metrics::ClientMetrics,
    server::{Edge, metrics::ServerMetrics},
    trace::EventSink,
};
use tokio::net::TcpStream;

use crate::support::{
    Fronts, WRITER_TOKEN, authenticator, client, http1, quick_config, rest_request,
};

/// `GET /metrics` on `addr`: the body, after checking status and type.
pub(crate) async fn scrape(addr: SocketAddr) -> String {
    let tcp = TcpStream::connect(addr).await.expect("connect metrics");
    let (status, headers, body) = http1(tcp, rest_request("GET", "/metrics", None, None)).await;
    assert_eq!(status.as_u16(), 200, "{body}");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{headers:?}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    body
}

/// One parsed sample: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Parses the text format's sample lines (`name{k="v",…} value`).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a value");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("number in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), Vec::new()),
                Some((name, rest)) => {
                    let rest = rest.strip_suffix('}').expect("closing brace");
                    let labels = rest
                        .split(',')
                        .filter(|kv| !kv.is_empty())
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').expect("k=v");
                            (k.to_owned(), v.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            (name, labels, value)
        })
        .collect()
}

/// The value of `name` whose labels include every one of `labels`
/// (summed over the series that match, e.g. across `grpc_status`).
pub(crate) fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples(text)
        .into_iter()
        .filter(|(n, ls, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

#[tokio::test]
async fn the_endpoint_counts_the_calls_made_on_both_fronts() {
    let fronts = Fronts::start(Edge {
        metrics: Some(ServerMetrics::new()),
        auth: Some(authenticator(None)),
        ..Edge::default()
    })
    .await;
    let metrics = fronts.metrics.expect("metrics endpoint");
    let c = client(fronts.grpc, None, quick_config(Some(WRITER_TOKEN)));
    for i in 0..3 {
        c.add(f64::from(i), 1.0).await.unwrap();
    }
    c.divide(1.0, 0.0).await.unwrap_err();
    c.accumulate_with_id("r", 2.0, "k").await.unwrap();
    c.accumulate_with_id("r", 2.0, "k").await.unwrap();
    c.accumulate_with_id("r", 3.0, "k").await.unwrap_err();
    let anonymous = client(fronts.grpc, None, quick_config(None));
    anonymous.add(1.0, 1.0).await.unwrap_err();
    for _ in 0..2 {
        let tcp = TcpStream::connect(fronts.rest).await.unwrap();
        let req = rest_request(
            "POST",
            "/v1/subtract",
            Some(WRITER_TOKEN),
            Some(r#"{"a":5,"b":1}"#),
        );
        assert_eq!(http1(tcp, req).await.0.as_u16(), 200);
    }
    let tcp = TcpStream::connect(fronts.rest).await.unwrap();
    let req = rest_request("POST", "/v1/subtract", None, Some(r#"{"a":5,"b":1}"#));
    assert_eq!(http1(tcp, req).await.0.as_u16(), 401);

    let text = scrape(metrics).await;
    let v = |name: &str, labels: &[(&str, &str)]| value(&text, name, labels);
    let add = ("grpc_method", "abacus.v1.Calculator/Add");
    let acc = ("grpc_method", "abacus.v1.Calculator/Accumulate");
    let sub = ("grpc_method", "abacus.v1.Calculator/Subtract");
    let grpc = ("front", "grpc");
    let rest = ("front", "rest");
    assert_eq!(
        v("grpc_server_call_started_total", &[add, grpc]),
        Some(4.0),
        "{text}"
    );
    let add_ok = [add, grpc, ("grpc_status", "OK")];
    assert_eq!(
        v("grpc_server_call_duration_seconds_count", &add_ok),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        v(
            "grpc_server_call_duration_seconds_count",
            &[add, grpc, ("grpc_status", "UNAUTHENTICATED")]
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            "grpc_server_call_duration_seconds_count",
            &[
                ("grpc_method", "abacus.v1.Calculator/Divide"),
                ("grpc_status", "INVALID_ARGUMENT")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(v("grpc_server_call_started_total", &[acc]), Some(3.0));
    assert_eq!(
        v(
            "grpc_server_call_duration_seconds_count",
            &[acc, ("grpc_status", "FAILED_PRECONDITION")]
        ),
        Some(1.0)
    );
    // Message sizes: an AddRequest of two doubles is 18 bytes (two tags,
    // two 8-byte values), its response 9; the histogram sums them.
    let rcvd = "grpc_server_call_rcvd_total_compressed_message_size_bytes_sum";
    let sent = "grpc_server_call_sent_total_compressed_message_size_bytes_sum";
    assert_eq!(
        v(rcvd, &add_ok),
        Some(3.0 * 18.0 - 9.0),
        "a = 0 is not encoded\n{text}"
    );
    assert_eq!(v(sent, &add_ok), Some(27.0), "{text}");
    // The REST twin: same series, its own front label.
    assert_eq!(v("grpc_server_call_started_total", &[sub, rest]), Some(3.0));
    assert_eq!(
        v(
            "grpc_server_call_duration_seconds_count",
            &[sub, rest, ("grpc_status", "OK")]
        ),
        Some(2.0)
    );
    assert_eq!(
        v(
            "grpc_server_call_duration_seconds_count",
            &[sub, rest, ("grpc_status", "UNAUTHENTICATED")]
        ),
        Some(1.0)
    );
    assert_eq!(
        v(rcvd, &[sub, rest, ("grpc_status", "OK")]),
        Some(2.0 * 13.0),
        "{text}"
    );
    // abacus' own.
    assert_eq!(v("abacus_applied_total", &[]), Some(1.0));
    assert_eq!(v("abacus_dedup_hits_total", &[]), Some(1.0));
    assert_eq!(v("abacus_dedup_mismatches_total", &[]), Some(1.0));
    assert_eq!(v("abacus_dedup_entries", &[]), Some(1.0));
    assert_eq!(v("abacus_registers", &[]), Some(1.0));
    assert_eq!(v("abacus_store_up", &[]), Some(1.0));
    assert_eq!(v("abacus_store_serving", &[]), Some(1.0));
    assert_eq!(
        v(
            "abacus_auth_refused_total",
            &[("reason", "unauthenticated")]
        ),
        Some(2.0)
    );
    assert!(
        v(
            "abacus_store_operation_duration_seconds_count",
            &[("operation", "commit"), ("result", "ok")]
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(v("abacus_connections_open", &[grpc]).is_some());

    // Another path: 404, not a scrape.
    let tcp = TcpStream::connect(metrics).await.unwrap();
    let (status, _, _) = http1(tcp, rest_request("GET", "/", None, None)).await;
    assert_eq!(status.as_u16(), 404);
}

#[tokio::test]
async fn the_client_recorder_counts_attempts_retries_and_give_ups() {
    // A server that refuses everything before applying: every attempt
    // fails with UNAVAILABLE and is retried.
    let flaky = crate::support::Fronts::with_faults(1.0).await;
    let recorder = ClientMetrics::new(flaky.grpc.to_string());
    let mut config = quick_config(None);
    config.retry.attempts_max = 3;
    config.retry.throttle = None;
    config.events = recorder.hook_into(EventSink::log_only());
    let c = client(flaky.grpc, None, config);
    c.add(1.0, 2.0).await.unwrap_err();
    let text = recorder.encode();
    let v = |name: &str, labels: &[(&str, &str)]| value(&text, name, labels);
    let add = ("grpc_method", "abacus.v1.Calculator/Add");
    let target = flaky.grpc.to_string();
    let target = ("grpc_target", target.as_str());
    assert_eq!(
        v("grpc_client_attempt_started_total", &[add, target]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        v(
            "grpc_client_attempt_duration_seconds_count",
            &[add, ("grpc_status", "UNAVAILABLE")]
        ),
        Some(3.0)
    );
    assert_eq!(
        v("abacus_client_retries_total", &[add, ("pushback", "false")]),
        Some(2.0)
    );
    assert_eq!(
        v(
            "abacus_client_gave_up_total",
            &[add, ("reason", "attempts_exhausted")]
        ),
        Some(1.0)
    );
    assert_eq!(
        v(
            "grpc_client_call_duration_seconds_count",
            &[add, ("grpc_status", "UNAVAILABLE")]
        ),
        Some(1.0)
    );
}
