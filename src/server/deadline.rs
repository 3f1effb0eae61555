//! Reads the caller's deadline from the `grpc-timeout` header (gRPC front)
//! or the `abacus-timeout-ms` header (REST front), so handlers can refuse to
//! start work whose result nobody will wait for. Both become the same
//! `Option<Instant>` that [`crate::server::service`] honours.
//!
//! tonic's server also cancels a handler whose `grpc-timeout` has passed (it
//! drops the future); reading the deadline ourselves lets the server *say*
//! so in its trace and skip applying a request that arrives already late.

use std::time::Duration;

use tokio::time::Instant;

/// Longest timeout a `grpc-timeout` header can express is 8 digits of hours;
/// we cap at a day so `Instant` arithmetic can never overflow.
const TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`). `None` when malformed, as the gRPC spec
/// says to treat a bad header as absent.
///
/// ```
/// use std::time::Duration;
/// use abacus::server::deadline::parse_grpc_timeout;
/// assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
/// assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
/// assert_eq!(parse_grpc_timeout("12x"), None);
/// ```
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(d.min(TIMEOUT_MAX))
}

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
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    Some(Instant::now() + parse_grpc_timeout(value)?)
}

/// Encodes a timeout for the `grpc-timeout` header, in the smallest unit that
/// keeps the value within 8 digits.
pub fn encode_grpc_timeout(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", d.as_secs().min(99_999_999))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_junk() {
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(parse_grpc_timeout("99999999H"), Some(TIMEOUT_MAX));
        for bad in ["", "m", "123456789m", "-1m", "1.5S", "10"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn encodes_round_trip() {
        for ms in [0u64, 1, 250, 86_400_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_grpc_timeout(&encode_grpc_timeout(d)), Some(d));
        }
        let long = Duration::from_secs(200_000);
        assert_eq!(encode_grpc_timeout(long), "200000S");
    }
}
