//! Durations as gRPC's service config writes them (protobuf's JSON mapping
//! of `google.protobuf.Duration`): decimal seconds and an `s`, as `"0.1s"`
//! or `"10s"`. One parser for every such field, whichever module owns the
//! field (the service config's timeouts and backoffs, the ratio budget's
//! `ttl`), so they accept the same text and refuse it in the same words.

use std::time::Duration;

/// The longest duration protobuf's `Duration` holds (10,000 years).
const SECONDS_MAX: f64 = 315_576_000_000.0;

/// A field whose value is not a duration like `"0.1s"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {value:?} is not a duration like \"0.1s\"")]
pub struct NotADuration {
    /// The field's name, as the JSON spells it.
    pub field: &'static str,
    /// The value given.
    pub value: String,
}

/// Parses `value`, the JSON field `field` (named in the error).
///
/// ```
/// use std::time::Duration;
/// use abacus::rpc::duration::parse_json_duration;
/// assert_eq!(parse_json_duration("ttl", "7.5s"), Ok(Duration::from_millis(7500)));
/// let e = parse_json_duration("ttl", "10").unwrap_err();
/// assert_eq!(e.to_string(), r#"ttl: "10" is not a duration like "0.1s""#);
/// assert!(parse_json_duration("timeout", "-1s").is_err());
/// assert!(parse_json_duration("timeout", "infs").is_err());
/// ```
pub fn parse_json_duration(field: &'static str, value: &str) -> Result<Duration, NotADuration> {
    value
        .strip_suffix('s')
        .and_then(|secs| secs.parse::<f64>().ok())
        // Also refuses NaN and infinities.
        .filter(|secs| (0.0..=SECONDS_MAX).contains(secs))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| NotADuration {
            field,
            value: value.to_owned(),
        })
}
