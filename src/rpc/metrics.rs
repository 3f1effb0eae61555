//! What gRFC A66 ("OpenTelemetry metrics") fixes for both sides of a call,
//! as Prometheus spells it: label names and values, and the recommended
//! histogram buckets. The server's ([`crate::server::metrics`]) and the
//! client's ([`crate::client::metrics`]) recorders both use them, so a
//! dashboard reads one vocabulary.

use prometheus_client::metrics::histogram::Histogram;
use tonic::Code;

use super::Method;
use crate::error::code_name;

/// The `grpc_method` value of a method: its full name without the leading
/// slash (`abacus.v1.Calculator/Add`), as A66 spells it.
pub fn method_label(method: Method) -> &'static str {
    let path = method.path();
    path.strip_prefix('/').unwrap_or(path)
}

/// The `grpc_method` value of a call: its method's, or `other` for a call
/// outside the [`Method`] table (A66: unregistered methods are all
/// `other`, so a caller cannot grow the label set).
pub fn call_label(method: Option<Method>) -> &'static str {
    method.map_or("other", method_label)
}

/// The `grpc_status` value: the code's canonical name (`OK`,
/// `UNAVAILABLE`).
pub fn status_label(code: Code) -> &'static str {
    code_name(code)
}

/// A66's latency buckets, in seconds.
pub const LATENCY_BUCKETS_SECONDS: [f64; 41] = [
    0.0, 0.000_01, 0.000_05, 0.000_1, 0.000_3, 0.000_6, 0.000_8, 0.001, 0.002, 0.003, 0.004, 0.005,
    0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16,
    0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
];

/// A66's message-size buckets, in bytes.
pub const SIZE_BUCKETS_BYTES: [f64; 14] = [
    0.0,
    1024.0,
    2048.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
    4_294_967_296.0,
];

/// A histogram with [`LATENCY_BUCKETS_SECONDS`] (a `Family` constructor).
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_SECONDS)
}

/// A histogram with [`SIZE_BUCKETS_BYTES`] (a `Family` constructor).
pub fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS_BYTES)
}

/// The constructor type of histogram families.
pub type HistogramFn = fn() -> Histogram;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(method_label(Method::Add), "abacus.v1.Calculator/Add");
        assert_eq!(
            call_label(Method::from_path("/abacus.v1.Calculator/Accumulate")),
            "abacus.v1.Calculator/Accumulate"
        );
        assert_eq!(
            call_label(Method::from_path("/grpc.health.v1.Health/Check")),
            "other"
        );
        assert_eq!(status_label(Code::Unavailable), "UNAVAILABLE");
        assert!(LATENCY_BUCKETS_SECONDS.is_sorted());
        assert!(SIZE_BUCKETS_BYTES.is_sorted());
    }
}
