//! The `grpc-timeout` header: how a caller tells the server how long it
//! will wait. The client writes it on every attempt; the server reads it to
//! skip work nobody will collect. One codec for both sides, so they cannot
//! disagree on units or limits.

use std::time::Duration;

/// The header's name.
pub const GRPC_TIMEOUT_HEADER: &str = "grpc-timeout";

/// Longest timeout accepted. The header can express 8 digits of hours; a
/// day is far beyond any call's deadline and keeps `Instant` arithmetic
/// from overflowing.
pub const TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`), capped at [`TIMEOUT_MAX`]. `None` when
/// malformed, as the gRPC spec says to treat a bad header as absent.
///
/// ```
/// use std::time::Duration;
/// use abacus::rpc::timeout::parse_grpc_timeout;
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

/// Encodes a timeout for the `grpc-timeout` header, in the smallest unit that
/// keeps the value within 8 digits.
///
/// ```
/// use std::time::Duration;
/// use abacus::rpc::timeout::encode_grpc_timeout;
/// assert_eq!(encode_grpc_timeout(Duration::from_millis(1500)), "1500m");
/// ```
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
