//! Every error the REST front answers with, and the one place where each
//! becomes an HTTP response: status, JSON body and headers.
//!
//! Service errors keep the status [`ServiceError::http_status`] gives them
//! (so the two fronts can never disagree: a gRPC code and an HTTP status are
//! derived from the same variant); only errors that exist because of HTTP
//! itself — a body that is not JSON, the wrong media type, an unknown path
//! — are given a status here. The body always has the same shape:
//!
//! ```json
//! {"error": {"code": "INVALID_ARGUMENT", "message": "...", "not_applied": true}}
//! ```
//!
//! `code` is the gRPC code name, so a client of either front reads the same
//! vocabulary; `not_applied` is the REST twin of the `abacus-not-applied`
//! trailer: true only when the server *knows* the request was not applied.

use axum::{
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use tonic::Code;
use utoipa::ToSchema;

use crate::error::{AuthError, REPLAYED_KEY, ServiceError};

/// The gRPC code a REST response stands for, left in the response's
/// extensions for the metrics middleware (which labels REST calls with
/// `grpc_status` like gRPC ones). Absent on successes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnsweredCode(pub Code);

/// Everything the REST front may answer instead of a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RestError {
    /// The service refused or failed the request.
    #[error(transparent)]
    Service(ServiceError),
    /// Refused by authentication (`--auth-tokens`): 401, 403 or 429.
    #[error(transparent)]
    Auth(AuthError),
    /// A recorded outcome replayed from the dedup store (an error the first
    /// execution of this idempotency key got): answered again, marked
    /// replayed.
    #[error(transparent)]
    Replayed(ServiceError),
    /// The body is not the JSON the endpoint expects (syntax, types,
    /// missing or unknown fields, a number out of `f64` range).
    #[error("request body is not valid JSON for this endpoint: {0}")]
    MalformedJson(String),
    /// The body could not be read (connection error mid-body).
    #[error("request body could not be read: {0}")]
    BodyUnreadable(String),
    /// The body is above the limit.
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// `Content-Type` missing or not `application/json`.
    #[error("Content-Type must be application/json, got {0}")]
    UnsupportedMediaType(String),
    /// A header we read is malformed.
    #[error("header {name} is invalid: {reason}")]
    InvalidHeader {
        /// Header name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A path parameter could not be decoded (e.g. not UTF-8).
    #[error("invalid path: {0}")]
    InvalidPath(String),
    /// No endpoint at this path.
    #[error("no endpoint {method} {path}; see docs/rpc-vs-rest.md for the API")]
    NoRoute {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// The path exists, the method does not.
    #[error("method {method} is not allowed on this path (allowed: {allow})")]
    MethodNotAllowed {
        /// Request method.
        method: String,
        /// The methods the path takes, for the `Allow` header.
        allow: &'static str,
    },
}

impl From<ServiceError> for RestError {
    fn from(err: ServiceError) -> Self {
        Self::Service(err)
    }
}

/// The JSON error body of every REST error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody<'a> {
    /// What went wrong.
    pub error: ErrorDetail<'a>,
}

/// The fields of [`ErrorBody`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail<'a> {
    /// gRPC code name (`INVALID_ARGUMENT`, ...).
    pub code: &'a str,
    /// What went wrong, for a person.
    pub message: String,
    /// True only when the request is known not to have been applied.
    pub not_applied: bool,
    /// Pushback in ms, when the server asks the client to wait (also sent
    /// as `Retry-After`, rounded up to whole seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// gRPC's canonical name of a code, as the `code` field carries it.
pub use crate::error::code_name;

impl RestError {
    /// The HTTP status and the gRPC code this error is answered with.
    ///
    /// Transport errors take the code the gRPC front gives the same
    /// mistake: an oversized message is OUT_OF_RANGE there (tonic's
    /// "decoded message length too large"), an unknown method UNIMPLEMENTED.
    pub fn status_and_code(&self) -> (StatusCode, Code) {
        match self {
            Self::Service(e) | Self::Replayed(e) => (
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                e.code(),
            ),
            Self::Auth(e) => (
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::UNAUTHORIZED),
                e.code(),
            ),
            Self::MalformedJson(_)
            | Self::BodyUnreadable(_)
            | Self::InvalidHeader { .. }
            | Self::InvalidPath(_) => (StatusCode::BAD_REQUEST, Code::InvalidArgument),
            Self::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, Code::OutOfRange),
            Self::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, Code::InvalidArgument)
            }
            Self::NoRoute { .. } => (StatusCode::NOT_FOUND, Code::Unimplemented),
            Self::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, Code::Unimplemented),
        }
    }

    /// False only when the server may have applied the request. Transport
    /// errors are all found before the service is called.
    pub fn known_not_applied(&self) -> bool {
        match self {
            Self::Service(e) | Self::Replayed(e) => e.known_not_applied(),
            _ => true,
        }
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let pushback_ms = match &self {
            Self::Service(e) | Self::Replayed(e) => e.pushback_ms(),
            Self::Auth(e) => e.pushback_ms().and_then(|ms| i64::try_from(ms).ok()),
            _ => None,
        };
        // A negative pushback means "never retry this": HTTP has no header
        // for that, the 4xx status already says it.
        let retry_after_ms = pushback_ms.and_then(|ms| u64::try_from(ms).ok());
        let body = ErrorBody {
            error: ErrorDetail {
                code: code_name(code),
                message: self.to_string(),
                not_applied: self.known_not_applied(),
                retry_after_ms,
            },
        };
        let mut response = super::json::json_response(status, &body);
        let headers = response.headers_mut();
        if let Some(ms) = retry_after_ms {
            // Retry-After counts whole seconds; round up so a client that
            // honours it never comes back early.
            headers.insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000)));
        }
        if matches!(self, Self::Replayed(_)) {
            headers.insert(
                HeaderName::from_static(REPLAYED_KEY),
                HeaderValue::from_static("true"),
            );
        }
        if let Self::MethodNotAllowed { allow, .. } = &self {
            // RFC 9110: a 405 must say what the path does take.
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if let Self::Auth(e) = &self
            && let Some(challenge) = e.www_authenticate()
        {
            // RFC 6750: every 401 (and the 403 of a role too weak) says
            // which scheme the server takes.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response.extensions_mut().insert(AnsweredCode(code));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CalcError;

    #[test]
    fn service_errors_keep_their_one_mapping() {
        for (err, status) in [
            (ServiceError::Calc(CalcError::DivisionByZero), 400),
            (
                ServiceError::Calc(CalcError::UnknownRegister("r".into())),
                404,
            ),
            (
                ServiceError::RequestIdReused {
                    request_id: "k".into(),
                    first: "a".into(),
                    this: "b".into(),
                },
                409,
            ),
            (ServiceError::DeadlineExceeded, 504),
            (ServiceError::ResponseDropped, 503),
        ] {
            let rest = RestError::from(err.clone());
            assert_eq!(rest.status_and_code().0.as_u16(), status, "{err:?}");
            assert_eq!(rest.status_and_code().1, err.code());
            assert_eq!(rest.known_not_applied(), err.known_not_applied());
        }
    }

    #[test]
    fn overload_answers_429_with_retry_after_rounded_up() {
        let response = RestError::from(ServiceError::Overloaded {
            in_flight: 3,
            limit: 3,
            pushback_ms: 100,
        })
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn replayed_errors_are_marked_and_reuse_is_never_retry_after() {
        let reused = ServiceError::RequestIdReused {
            request_id: "k".into(),
            first: "a".into(),
            this: "b".into(),
        };
        let response = RestError::Service(reused).into_response();
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        let response =
            RestError::Replayed(ServiceError::Calc(CalcError::TooManyRegisters { max: 1 }))
                .into_response();
        assert_eq!(response.headers()[REPLAYED_KEY], "true");
    }
}
