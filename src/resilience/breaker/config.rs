//! What a breaker is told: when to trip, how long to stay open, how many
//! probes to trust. Kept apart from the state machine so it can be read from
//! JSON and checked once, before any breaker exists.

use std::fmt;

use serde::Deserialize;
use tonic::Code;

/// Largest `window_calls` accepted: the window is a ring buffer held in
/// memory per endpoint.
pub const WINDOW_CALLS_LIMIT: usize = 10_000;

/// Largest `open_ms` / `open_ms_max` accepted (one hour): a breaker that
/// stays open longer than that is an outage, not a pause.
pub const OPEN_MS_LIMIT: u64 = 3_600_000;

/// Largest `half_open_probes` accepted.
pub const HALF_OPEN_PROBES_LIMIT: u32 = 1_000;

/// Codes that mean "the server answered and the caller was wrong". They
/// say nothing about the endpoint's health, so they may never count as
/// failures: a client sending bad requests must not cut itself off from a
/// healthy server.
pub const CALLER_CODES: [Code; 8] = [
    Code::Ok,
    Code::InvalidArgument,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::FailedPrecondition,
    Code::OutOfRange,
    Code::Unauthenticated,
];

/// How a circuit breaker behaves. Every field has a default
/// ([`BreakerConfig::default`]); read from JSON, missing fields take theirs.
///
/// ```
/// use abacus::client::breaker::BreakerConfig;
/// let config: BreakerConfig =
///     serde_json::from_str(r#"{"consecutive_failures_max": 3, "failure_codes": ["UNAVAILABLE"]}"#)
///         .unwrap();
/// assert_eq!(config.consecutive_failures_max, Some(3));
/// assert_eq!(config.window_calls, 20);
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Size of the count-based sliding window: the failure rate is computed
    /// over the last `window_calls` recorded calls. Default 20.
    pub window_calls: usize,
    /// Calls the window must hold before the failure rate may trip the
    /// breaker, so two failures out of two do not read as "100 % failing".
    /// Default 10; at most `window_calls`.
    pub calls_min: usize,
    /// Trip when the window's failure rate is at or above this fraction
    /// (0 < x ≤ 1). `None` disables the rate rule. Default 0.5.
    pub failure_rate_threshold: Option<f64>,
    /// Trip after this many failures in a row, whatever the window says: it
    /// reacts to a hard outage before `calls_min` calls have piled up.
    /// `None` disables the rule. Default 5.
    pub consecutive_failures_max: Option<u32>,
    /// A call that took longer than this counts as a failure even if it
    /// succeeded (the caller still gets its reply). `None` disables it.
    /// Default `None`: the per-attempt timeout below the breaker already
    /// turns hung calls into DEADLINE_EXCEEDED.
    pub slow_call_ms: Option<u64>,
    /// Codes that count as failures. Anything else, including every code in
    /// [`CALLER_CODES`], counts as a success: the server answered. Default
    /// UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL.
    pub failure_codes: CodeSet,
    /// How long the breaker stays open after its first trip. Default 1000.
    pub open_ms: u64,
    /// Cap on the open duration, which doubles on every trip that follows a
    /// failed probe. Default 30 000.
    pub open_ms_max: u64,
    /// Jitter: each open duration is shortened by a random fraction in
    /// `[0, open_jitter_ratio)` of itself, so clients that tripped together
    /// do not probe together. 0 ≤ x < 1. Default 0.2.
    pub open_jitter_ratio: f64,
    /// Probes admitted concurrently while half-open; this many probe
    /// successes close the breaker, the first probe failure re-opens it.
    /// Default 1.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window_calls: 20,
            calls_min: 10,
            failure_rate_threshold: Some(0.5),
            consecutive_failures_max: Some(5),
            slow_call_ms: None,
            failure_codes: CodeSet::default(),
            open_ms: 1_000,
            open_ms_max: 30_000,
            open_jitter_ratio: 0.2,
            half_open_probes: 1,
        }
    }
}

/// A breaker configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BreakerConfigError {
    /// `window_calls` out of range.
    #[error("window_calls must be between 1 and {WINDOW_CALLS_LIMIT}, got {0}")]
    WindowCalls(usize),
    /// `calls_min` out of range.
    #[error("calls_min must be between 1 and window_calls ({window_calls}), got {calls_min}")]
    CallsMin {
        /// The value given.
        calls_min: usize,
        /// The window size.
        window_calls: usize,
    },
    /// `failure_rate_threshold` out of range.
    #[error("failure_rate_threshold must be in (0, 1], got {0}")]
    FailureRateThreshold(f64),
    /// `consecutive_failures_max` of zero.
    #[error("consecutive_failures_max must be at least 1 (omit it to disable the rule)")]
    ConsecutiveFailuresMax,
    /// Neither rule can ever trip the breaker.
    #[error(
        "failure_rate_threshold and consecutive_failures_max are both disabled: the breaker could never open"
    )]
    NoTripRule,
    /// `slow_call_ms` of zero.
    #[error("slow_call_ms must be at least 1 (omit it to disable the rule)")]
    SlowCallMs,
    /// `open_ms` / `open_ms_max` out of range or inverted.
    #[error(
        "open_ms must be between 1 and open_ms_max, and open_ms_max at most {OPEN_MS_LIMIT}; got open_ms={open_ms}, open_ms_max={open_ms_max}"
    )]
    OpenMs {
        /// The base duration given.
        open_ms: u64,
        /// The cap given.
        open_ms_max: u64,
    },
    /// `open_jitter_ratio` out of range.
    #[error("open_jitter_ratio must be in [0, 1), got {0}")]
    OpenJitterRatio(f64),
    /// `half_open_probes` out of range.
    #[error("half_open_probes must be between 1 and {HALF_OPEN_PROBES_LIMIT}, got {0}")]
    HalfOpenProbes(u32),
    /// A caller-error code in `failure_codes`.
    #[error(
        "{} is the caller's error, not the server's, and cannot count as a breaker failure",
        code_name(*.0)
    )]
    CallerCode(Code),
    /// No failure code at all.
    #[error("failure_codes must name at least one code")]
    NoFailureCode,
}

impl BreakerConfig {
    /// Checks every field; a breaker is only built from a valid config.
    ///
    /// ```
    /// use abacus::client::breaker::{BreakerConfig, BreakerConfigError};
    /// let config = BreakerConfig { calls_min: 30, ..BreakerConfig::default() };
    /// assert_eq!(
    ///     config.validate(),
    ///     Err(BreakerConfigError::CallsMin { calls_min: 30, window_calls: 20 })
    /// );
    /// ```
    pub fn validate(&self) -> Result<(), BreakerConfigError> {
        if !(1..=WINDOW_CALLS_LIMIT).contains(&self.window_calls) {
            return Err(BreakerConfigError::WindowCalls(self.window_calls));
        }
        if !(1..=self.window_calls).contains(&self.calls_min) {
            return Err(BreakerConfigError::CallsMin {
                calls_min: self.calls_min,
                window_calls: self.window_calls,
            });
        }
        if let Some(t) = self.failure_rate_threshold {
            // Written so that NaN fails too.
            if !(t > 0.0 && t <= 1.0) {
                return Err(BreakerConfigError::FailureRateThreshold(t));
            }
        }
        if self.consecutive_failures_max == Some(0) {
            return Err(BreakerConfigError::ConsecutiveFailuresMax);
        }
        if self.failure_rate_threshold.is_none() && self.consecutive_failures_max.is_none() {
            return Err(BreakerConfigError::NoTripRule);
        }
        if self.slow_call_ms == Some(0) {
            return Err(BreakerConfigError::SlowCallMs);
        }
        if self.open_ms == 0 || self.open_ms > self.open_ms_max || self.open_ms_max > OPEN_MS_LIMIT
        {
            return Err(BreakerConfigError::OpenMs {
                open_ms: self.open_ms,
                open_ms_max: self.open_ms_max,
            });
        }
        if !(self.open_jitter_ratio >= 0.0 && self.open_jitter_ratio < 1.0) {
            return Err(BreakerConfigError::OpenJitterRatio(self.open_jitter_ratio));
        }
        if !(1..=HALF_OPEN_PROBES_LIMIT).contains(&self.half_open_probes) {
            return Err(BreakerConfigError::HalfOpenProbes(self.half_open_probes));
        }
        if let Some(code) = CALLER_CODES
            .iter()
            .copied()
            .find(|c| self.failure_codes.contains(*c))
        {
            return Err(BreakerConfigError::CallerCode(code));
        }
        if self.failure_codes.is_empty() {
            return Err(BreakerConfigError::NoFailureCode);
        }
        Ok(())
    }
}

/// A set of gRPC status codes, as a bit mask: `Copy`, allocation-free and
/// iterated in code order, so it never makes behaviour depend on hash order.
/// Read from JSON as a list of canonical names (`["UNAVAILABLE",
/// "INTERNAL"]`, case-insensitive).
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct CodeSet {
    bits: u32,
}

impl CodeSet {
    /// No code.
    pub const fn empty() -> Self {
        Self { bits: 0 }
    }

    /// Exactly `codes`.
    pub fn of(codes: &[Code]) -> Self {
        codes.iter().fold(Self::empty(), |set, c| set.with(*c))
    }

    /// This set plus `code`.
    pub fn with(self, code: Code) -> Self {
        Self {
            bits: self.bits | bit(code),
        }
    }

    /// True if `code` is in the set.
    pub fn contains(self, code: Code) -> bool {
        self.bits & bit(code) != 0
    }

    /// True if the set holds no code.
    pub fn is_empty(self) -> bool {
        self.bits == 0
    }

    /// The codes in the set, in code-number order.
    pub fn iter(self) -> impl Iterator<Item = Code> {
        (0..=16)
            .map(Code::from_i32)
            .filter(move |c| self.contains(*c))
    }
}

impl Default for CodeSet {
    /// The codes that say the endpoint, not the request, is in trouble.
    fn default() -> Self {
        Self::of(&[
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Internal,
        ])
    }
}

impl fmt::Debug for CodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(code_name)).finish()
    }
}

impl TryFrom<Vec<String>> for CodeSet {
    type Error = String;

    fn try_from(names: Vec<String>) -> Result<Self, String> {
        names.iter().try_fold(Self::empty(), |set, name| {
            parse_code_name(name)
                .map(|c| set.with(c))
                .ok_or_else(|| format!("unknown gRPC status code {name:?}"))
        })
    }
}

fn bit(code: Code) -> u32 {
    // `Code` has 17 variants numbered 0..=16, so the shift never overflows.
    1 << (code as i32 as u32)
}

pub use crate::error::{code_name, parse_code_name};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        BreakerConfig::default().validate().unwrap();
    }

    #[test]
    fn code_sets_parse_and_reject_unknown_names() {
        let set: CodeSet = serde_json::from_str(r#"["unavailable", "INTERNAL"]"#).unwrap();
        assert_eq!(set, CodeSet::of(&[Code::Internal, Code::Unavailable]));
        assert_eq!(format!("{set:?}"), r#"{"INTERNAL", "UNAVAILABLE"}"#);
        let err = serde_json::from_str::<CodeSet>(r#"["NOPE"]"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown gRPC status code"),
            "{err}"
        );
    }

    #[test]
    fn rejects_unknown_fields() {
        let err = serde_json::from_str::<BreakerConfig>(r#"{"window": 3}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn validate_rejects_each_bad_field() {
        let d = BreakerConfig::default;
        let cases = [
            (
                BreakerConfig {
                    window_calls: 0,
                    ..d()
                },
                BreakerConfigError::WindowCalls(0),
            ),
            (
                BreakerConfig {
                    calls_min: 0,
                    ..d()
                },
                BreakerConfigError::CallsMin {
                    calls_min: 0,
                    window_calls: 20,
                },
            ),
            (
                BreakerConfig {
                    failure_rate_threshold: Some(1.5),
                    ..d()
                },
                BreakerConfigError::FailureRateThreshold(1.5),
            ),
            (
                BreakerConfig {
                    consecutive_failures_max: Some(0),
                    ..d()
                },
                BreakerConfigError::ConsecutiveFailuresMax,
            ),
            (
                BreakerConfig {
                    failure_rate_threshold: None,
                    consecutive_failures_max: None,
                    ..d()
                },
                BreakerConfigError::NoTripRule,
            ),
            (
                BreakerConfig {
                    slow_call_ms: Some(0),
                    ..d()
                },
                BreakerConfigError::SlowCallMs,
            ),
            (
                BreakerConfig {
                    open_ms: 50_000,
                    ..d()
                },
                BreakerConfigError::OpenMs {
                    open_ms: 50_000,
                    open_ms_max: 30_000,
                },
            ),
            (
                BreakerConfig {
                    open_jitter_ratio: 1.0,
                    ..d()
                },
                BreakerConfigError::OpenJitterRatio(1.0),
            ),
            (
                BreakerConfig {
                    half_open_probes: 0,
                    ..d()
                },
                BreakerConfigError::HalfOpenProbes(0),
            ),
            (
                BreakerConfig {
                    failure_codes: CodeSet::default().with(Code::InvalidArgument),
                    ..d()
                },
                BreakerConfigError::CallerCode(Code::InvalidArgument),
            ),
            (
                BreakerConfig {
                    failure_codes: CodeSet::empty(),
                    ..d()
                },
                BreakerConfigError::NoFailureCode,
            ),
        ];
        for (config, expect) in cases {
            assert_eq!(config.validate(), Err(expect));
        }
        let nan = BreakerConfig {
            failure_rate_threshold: Some(f64::NAN),
            ..d()
        };
        assert!(matches!(
            nan.validate(),
            Err(BreakerConfigError::FailureRateThreshold(_))
        ));
    }
}
