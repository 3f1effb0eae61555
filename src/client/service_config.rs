//! The retry policy in gRPC service-config JSON form, so one policy file can
//! be shared with grpc-go, grpcio or grpc-java clients.
//!
//! Accepted: `methodConfig[].name[]` (`{"service": "abacus.v1.Calculator"}`,
//! optionally with `"method"`), `methodConfig[].timeout` (the overall
//! deadline), `methodConfig[].retryPolicy` (`maxAttempts`,
//! `initialBackoff`, `maxBackoff`, `backoffMultiplier`,
//! `retryableStatusCodes`), `methodConfig[].hedgingPolicy` (`maxAttempts`,
//! `hedgingDelay`, `nonFatalStatusCodes`), top-level `retryThrottling`
//! (`maxTokens`, `tokenRatio`) and `loadBalancingConfig` (the first of
//! `round_robin` or `peak_ewma_p2c` listed; others are skipped, as gRPC
//! skips policies it does not know). As in gRPC, `maxAttempts` above 5 is
//! treated as 5. The first method config naming the Calculator service (or
//! with an empty name list, gRPC's default) wins; per-method entries are
//! not distinguished because one client stack serves all methods.
//!
//! Two differences from gRPC, both forced by what a call is here:
//! - `retryPolicy` and `hedgingPolicy` may both be given (gRPC allows one):
//!   hedging applies to the calls that may be repeated, and an `Accumulate`
//!   without a request ID is retried by the retry policy instead.
//! - An abacus extension, top-level `retryBudget` (`retryRatio`,
//!   `minRetriesPerSecond`, `ttl`: Linkerd's names), selects Finagle's
//!   ratio budget instead of the token bucket; giving both is an error.

use std::time::Duration;

use serde::Deserialize;
use tonic::Code;

use crate::{
    client::{
        balance::Balancing,
        breaker::config::parse_code_name,
        hedge::{HEDGE_ATTEMPTS_MAX_LIMIT, HedgeConfig, HedgeConfigError},
        retry::{Backoff, RetryConfig, RetryConfigError, Throttle, ThrottleConfig},
    },
    pb::SERVICE_NAME,
    resilience::ratio_budget::RatioBudgetConfig,
    rpc::duration::{NotADuration, parse_json_duration},
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
    #[error(transparent)]
    Duration(#[from] NotADuration),
    /// An unknown status code name.
    #[error("unknown status code {0:?}")]
    Code(String),
    /// Both throttles given.
    #[error("retryThrottling and retryBudget both given: choose one throttle")]
    TwoThrottles,
    /// The hedging policy is out of range.
    #[error(transparent)]
    Hedge(#[from] HedgeConfigError),
    /// The throttle is out of range.
    #[error("{0}")]
    Throttle(&'static str),
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
    /// Retry policy (`None` when the method config has no `retryPolicy`);
    /// its `throttle` is the config's.
    pub retry: Option<RetryConfig>,
    /// Hedging policy (`None` without `hedgingPolicy`).
    pub hedge: Option<HedgeConfig>,
    /// The throttle (`retryThrottling` or `retryBudget`), `None` when
    /// neither is given: retries and hedges then go unthrottled, as in
    /// gRPC.
    pub throttle: Option<Throttle>,
    /// Overall deadline from `timeout`.
    pub timeout: Option<Duration>,
    /// Balancing from `loadBalancingConfig`.
    pub balancing: Option<Balancing>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    method_config: Vec<RawMethodConfig>,
    retry_throttling: Option<ThrottleConfig>,
    retry_budget: Option<RatioBudgetConfig>,
    #[serde(default)]
    load_balancing_config: Vec<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMethodConfig {
    #[serde(default)]
    name: Vec<RawName>,
    timeout: Option<String>,
    retry_policy: Option<RawRetryPolicy>,
    hedging_policy: Option<RawHedgingPolicy>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHedgingPolicy {
    max_attempts: u32,
    #[serde(default)]
    hedging_delay: Option<String>,
    #[serde(default)]
    non_fatal_status_codes: Vec<serde_json::Value>,
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
    /// assert_eq!(sc.throttle, retry.throttle);
    /// assert!(sc.hedge.is_none());
    /// ```
    pub fn from_json(json: &str) -> Result<Self, ServiceConfigError> {
        let raw: Raw = serde_json::from_str(json)?;
        let throttle = match (raw.retry_throttling, raw.retry_budget) {
            (Some(_), Some(_)) => return Err(ServiceConfigError::TwoThrottles),
            (Some(t), None) => Some(Throttle::TokenBucket(t)),
            (None, Some(b)) => Some(Throttle::Ratio(b)),
            (None, None) => None,
        };
        if let Some(t) = &throttle {
            t.validate().map_err(ServiceConfigError::Throttle)?;
        }
        let balancing = raw
            .load_balancing_config
            .iter()
            .flat_map(|policy| policy.keys())
            .find_map(|name| match name.as_str() {
                "round_robin" => Some(Balancing::RoundRobin),
                "peak_ewma_p2c" => Some(Balancing::PeakEwmaP2c),
                _ => None,
            });
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
            .map(|t| parse_json_duration("timeout", t))
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
                        initial: parse_json_duration("initialBackoff", &p.initial_backoff)?,
                        max: parse_json_duration("maxBackoff", &p.max_backoff)?,
                        multiplier: p.backoff_multiplier,
                    },
                    retryable_codes: codes,
                    throttle,
                };
                config.validate()?;
                Some(config)
            }
        };
        let hedge = match mc.hedging_policy {
            None => None,
            Some(h) => {
                let config = HedgeConfig {
                    attempts_max: h.max_attempts.min(HEDGE_ATTEMPTS_MAX_LIMIT),
                    delay: h
                        .hedging_delay
                        .as_deref()
                        .map(|d| parse_json_duration("hedgingDelay", d))
                        .transpose()?
                        .unwrap_or(Duration::ZERO),
                    non_fatal_codes: h
                        .non_fatal_status_codes
                        .iter()
                        .map(parse_code)
                        .collect::<Result<Vec<_>, _>>()?,
                };
                config.validate()?;
                Some(config)
            }
        };
        Ok(Self {
            retry,
            hedge,
            throttle,
            timeout,
            balancing,
        })
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
    fn every_duration_is_read_alike_whichever_field_holds_it() {
        // The method's timeout and the ratio budget's ttl (each within
        // the ttl's range of 1 to 60 s): the same text is accepted as the
        // same duration, or refused in the same words.
        let check = |text: &str, expect: Option<Duration>| {
            let timeout = ServiceConfig::from_json(&format!(
                r#"{{"methodConfig":[{{"name":[],"timeout":"{text}"}}]}}"#
            ));
            let ttl = ServiceConfig::from_json(&format!(
                r#"{{"methodConfig":[{{"name":[]}}],"retryBudget":{{"retryRatio":0.2,"minRetriesPerSecond":10,"ttl":"{text}"}}}}"#
            ));
            match expect {
                Some(d) => {
                    assert_eq!(timeout.unwrap().timeout, Some(d), "{text}");
                    let Some(Throttle::Ratio(budget)) = ttl.unwrap().throttle else {
                        panic!("{text}: no ratio budget");
                    };
                    assert_eq!(budget.ttl, d, "{text}");
                }
                None => {
                    for (field, result) in [("timeout", timeout), ("ttl", ttl)] {
                        let err = result.expect_err(text).to_string();
                        let words = format!(r#"{field}: "{text}" is not a duration like "0.1s""#);
                        assert!(err.contains(&words), "{err:?} lacks {words:?}");
                    }
                }
            }
        };
        check("7.5s", Some(Duration::from_millis(7500)));
        check("1e1s", Some(Duration::from_secs(10)));
        check("60s", Some(Duration::from_secs(60)));
        for bad in ["10", "10 s", "s", "-5s", "infs", "NaNs", "10ms"] {
            check(bad, None);
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

    #[test]
    fn reads_hedging_the_ratio_budget_and_balancing() {
        let json = r#"{
            "methodConfig": [{"name": [{"service": "abacus.v1.Calculator"}],
              "hedgingPolicy": {"maxAttempts": 7, "hedgingDelay": "0.025s",
                                "nonFatalStatusCodes": ["UNAVAILABLE", 4]}}],
            "retryBudget": {"retryRatio": 0.2, "minRetriesPerSecond": 10, "ttl": "10s"},
            "loadBalancingConfig": [{"weighted_target": {}}, {"round_robin": {}}]
        }"#;
        let sc = ServiceConfig::from_json(json).unwrap();
        assert_eq!(
            sc.hedge,
            Some(HedgeConfig {
                attempts_max: 5,
                delay: Duration::from_millis(25),
                non_fatal_codes: vec![Code::Unavailable, Code::DeadlineExceeded],
            })
        );
        assert_eq!(sc.retry, None);
        assert_eq!(
            sc.throttle,
            Some(Throttle::Ratio(RatioBudgetConfig::default()))
        );
        assert_eq!(sc.balancing, Some(Balancing::RoundRobin));
    }

    #[test]
    fn refuses_contradictions_in_the_new_fields() {
        let cases = [
            (
                r#"{"methodConfig":[{"name":[]}],"retryThrottling":{"maxTokens":10,"tokenRatio":0.1},"retryBudget":{"retryRatio":0.2,"minRetriesPerSecond":10,"ttl":"10s"}}"#,
                "choose one throttle",
            ),
            (
                r#"{"methodConfig":[{"name":[],"hedgingPolicy":{"maxAttempts":1,"hedgingDelay":"0.1s"}}]}"#,
                "hedge attempts must be between 2 and 5",
            ),
            (
                r#"{"methodConfig":[{"name":[],"hedgingPolicy":{"maxAttempts":3,"nonFatalStatusCodes":["INVALID_ARGUMENT"]}}]}"#,
                "cannot be non-fatal",
            ),
            (
                r#"{"methodConfig":[{"name":[]}],"retryBudget":{"retryRatio":0,"minRetriesPerSecond":0,"ttl":"10s"}}"#,
                "no retry could ever be sent",
            ),
        ];
        for (json, expect) in cases {
            let err = ServiceConfig::from_json(json).unwrap_err().to_string();
            assert!(err.contains(expect), "{json}: {err:?} lacks {expect:?}");
        }
    }
}
