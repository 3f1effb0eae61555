//! Reads the caller's deadline from the `grpc-timeout` header (gRPC front,
//! decoded by [`crate::rpc::timeout`], the codec the client encodes with)
//! or the `abacus-timeout-ms` header (REST front), so handlers can refuse to
//! start work whose result nobody will wait for. Both become the same
//! `Option<Instant>` that [`crate::server::service`] honours.
//!
//! tonic's server also cancels a handler whose `grpc-timeout` has passed (it
//! drops the future); reading the deadline ourselves lets the server *say*
//! so in its trace and skip applying a request that arrives already late.

use std::time::Duration;

use tokio::time::Instant;

use crate::rpc::timeout::{GRPC_TIMEOUT_HEADER, TIMEOUT_MAX, parse_grpc_timeout};

/// Header through which a REST caller sends its timeout, in whole
/// milliseconds (HTTP has no standard request-timeout header; this is the
/// REST spelling of `grpc-timeout`).
pub const REST_TIMEOUT_HEADER: &str = "abacus-timeout-ms";

/// Parses an `abacus-timeout-ms` value: 1 to 8 ASCII digits of
/// milliseconds, capped like `grpc-timeout`. Unlike gRPC, which must treat a
/// bad header as absent, the REST front refuses a malformed one (400): a
/// caller who meant to bound its wait should learn that it did not.
///
/// ```
/// use std::time::Duration;
/// use abacus::server::deadline::parse_timeout_ms;
/// assert_eq!(parse_timeout_ms("250"), Some(Duration::from_millis(250)));
/// assert_eq!(parse_timeout_ms("2.5"), None);
/// ```
pub fn parse_timeout_ms(value: &str) -> Option<Duration> {
    if value.is_empty() || value.len() > 8 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms: u64 = value.parse().ok()?;
    Some(Duration::from_millis(ms).min(TIMEOUT_MAX))
}

/// The instant by which the caller stops waiting, if it sent a deadline.
pub fn deadline_from(metadata: &tonic::metadata::MetadataMap) -> Option<Instant> {
    let value = metadata.get(GRPC_TIMEOUT_HEADER)?.to_str().ok()?;
    Some(Instant::now() + parse_grpc_timeout(value)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_timeouts_are_whole_milliseconds_capped_like_grpc() {
        assert_eq!(parse_timeout_ms("99999999"), Some(TIMEOUT_MAX));
        for bad in ["", "-1", "1.5", "250m", "123456789"] {
            assert_eq!(parse_timeout_ms(bad), None, "{bad:?}");
        }
    }
}
