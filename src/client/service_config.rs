//! The retry policy in gRPC service-config JSON form, so one policy file can
//! be shared with grpc-go, grpcio or grpc-java clients.
//!
//! Accepted: `methodConfig[].name[]` (`{"service": "abacus.v1.Calculator"}`,
//! optionally with `"method"`), `methodConfig[].timeout` (the overall
//! deadline), `methodConfig[].retryPolicy` (`maxAttempts`,
//! `initialBackoff`, `maxBackoff`, `backoffMultiplier`,
//! `retryableStatusCodes`) and top-level `retryThrottling` (`maxTokens`,
//! `tokenRatio`). As in gRPC, `maxAttempts` above 5 is treated as 5. The
//! first method config naming the Calculator service (or with an empty name
//! list, gRPC's default) wins; per-method entries are not distinguished
//! because one client stack serves all methods.

use std::time::Duration;

use serde::Deserialize;
use tonic::Code;

use crate::{
    client::breaker::config::parse_code_name,
    client::retry::{Backoff, RetryConfig, RetryConfigError, ThrottleConfig},
    pb::SERVICE_NAME,
};

/// gRPC's cap on `maxAttempts`.
const GRPC_ATTEMPTS_MAX: u32 = 5;

/// A service config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ServiceConfigError {
    /// Not JSON, or not the shape of a service config.
    #[error("service config is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// A duration not in `"1.5s"` form.
    #[error("{field}: {value:?} is not a duration like \"0.1s\"")]
    Duration {
        /// Field name.
        field: &'static str,
        /// Value given.
        value: String,
    },
    /// An unknown status code name.
    #[error("retryableStatusCodes: unknown status code {0:?}")]
    Code(String),
    /// No method config applies to abacus.v1.Calculator.
    #[error("no methodConfig names service {SERVICE_NAME:?}")]
    NoMethodConfig,
    /// The resulting policy is out of range.
    #[error(transparent)]
    Invalid(#[from] RetryConfigError),
}

/// What a service config says for this client.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Retry policy (`None` when the method config has no `retryPolicy`).
    pub retry: Option<RetryConfig>,
    /// Overall deadline from `timeout`.
    pub timeout: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    method_config: Vec<RawMethodConfig>,
    retry_throttling: Option<ThrottleConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMethodConfig {
    #[serde(default)]
    name: Vec<RawName>,
    timeout: Option<String>,
    retry_policy: Option<RawRetryPolicy>,
}

#[derive(Deserialize)]
struct RawName {
    #[serde(default)]
    service: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRetryPolicy {
    max_attempts: u32,
    initial_backoff: String,
    max_backoff: String,
    backoff_multiplier: f64,
    retryable_status_codes: Vec<serde_json::Value>,
}

fn duration(field: &'static str, value: &str) -> Result<Duration, ServiceConfigError> {
    let bad = || ServiceConfigError::Duration {
        field,
        value: value.to_owned(),
    };
    let secs: f64 = value
        .strip_suffix('s')
        .ok_or_else(bad)?
        .parse()
        .map_err(|_| bad())?;
    if !(0.0..=315_576_000_000.0).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a code given as `"UNAVAILABLE"` or as its number.
pub fn parse_code(value: &serde_json::Value) -> Result<Code, ServiceConfigError> {
    let text = value.to_string();
    if let Some(n) = value.as_i64() {
        return match i32::try_from(n) {
            Ok(n @ 0..=16) => Ok(Code::from_i32(n)),
            _ => Err(ServiceConfigError::Code(text)),
        };
    }
    let name = value
        .as_str()
        .ok_or_else(|| ServiceConfigError::Code(text.clone()))?;
    parse_code_name(name).ok_or_else(|| ServiceConfigError::Code(name.to_owned()))
}

impl ServiceConfig {
    /// Parses service-config JSON.
    ///
    /// ```
    /// let json = r#"{
    ///   "methodConfig": [{
    ///     "name": [{"service": "abacus.v1.Calculator"}],
    ///     "timeout": "2s",
    ///     "retryPolicy": {
    ///       "maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s",
    ///       "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]
    ///     }
    ///   }],
    ///   "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}
    /// }"#;
    /// let sc = abacus::client::ServiceConfig::from_json(json).unwrap();
    /// let retry = sc.retry.unwrap();
    /// assert_eq!(retry.attempts_max, 4);
    /// assert_eq!(sc.timeout, Some(std::time::Duration::from_secs(2)));
    /// assert_eq!(retry.throttle.unwrap().max_tokens, 10.0);
    /// ```
    pub fn from_json(json: &str) -> Result<Self, ServiceConfigError> {
        let raw: Raw = serde_json::from_str(json)?;
        let mc = raw
            .method_config
            .into_iter()
            .find(|m| {
                m.name.is_empty()
                    || m.name
                        .iter()
                        .any(|n| n.service == SERVICE_NAME || n.service.is_empty())
            })
            .ok_or(ServiceConfigError::NoMethodConfig)?;
        let timeout = mc
            .timeout
            .as_deref()
            .map(|t| duration("timeout", t))
            .transpose()?;
        let retry = match mc.retry_policy {
            None => None,
            Some(p) => {
                let codes = p
                    .retryable_status_codes
                    .iter()
                    .map(parse_code)
                    .collect::<Result<Vec<_>, _>>()?;
                let config = RetryConfig {
                    attempts_max: p.max_attempts.min(GRPC_ATTEMPTS_MAX),
                    backoff: Backoff {
                        initial: duration("initialBackoff", &p.initial_backoff)?,
                        max: duration("maxBackoff", &p.max_backoff)?,
                        multiplier: p.backoff_multiplier,
                    },
                    retryable_codes: codes,
                    throttle: raw.retry_throttling,
                };
                config.validate()?;
                Some(config)
            }
        };
        Ok(Self { retry, timeout })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_configs_with_clear_messages() {
        let cases = [
            ("not json", "not valid"),
            (r#"{"methodConfig": []}"#, "no methodConfig"),
            (
                r#"{"methodConfig":[{"name":[{"service":"other.Svc"}]}]}"#,
                "no methodConfig",
            ),
            (
                r#"{"methodConfig":[{"name":[],"retryPolicy":{"maxAttempts":3,"initialBackoff":"100ms","maxBackoff":"1s","backoffMultiplier":2,"retryableStatusCodes":["UNAVAILABLE"]}}]}"#,
                "initialBackoff",
            ),
            (
                r#"{"methodConfig":[{"name":[],"retryPolicy":{"maxAttempts":3,"initialBackoff":"0.1s","maxBackoff":"1s","backoffMultiplier":2,"retryableStatusCodes":["NOPE"]}}]}"#,
                "NOPE",
            ),
            (
                r#"{"methodConfig":[{"name":[],"retryPolicy":{"maxAttempts":0,"initialBackoff":"0.1s","maxBackoff":"1s","backoffMultiplier":2,"retryableStatusCodes":[14]}}]}"#,
                "attempts",
            ),
        ];
        for (json, expect) in cases {
            let err = ServiceConfig::from_json(json).unwrap_err().to_string();
            assert!(err.contains(expect), "{json}: {err:?} lacks {expect:?}");
        }
    }

    #[test]
    fn caps_attempts_like_grpc_and_accepts_numeric_codes() {
        let json = r#"{"methodConfig":[{"name":[{}],"retryPolicy":{"maxAttempts":9,"initialBackoff":"0.01s","maxBackoff":"0.5s","backoffMultiplier":1.5,"retryableStatusCodes":[14, "deadline_exceeded"]}}]}"#;
        let r = ServiceConfig::from_json(json).unwrap().retry.unwrap();
        assert_eq!(r.attempts_max, 5);
        assert_eq!(
            r.retryable_codes,
            vec![Code::Unavailable, Code::DeadlineExceeded]
        );
        assert_eq!(r.throttle, None);
    }
}
