//! Every error the service can answer with, as typed enums, and the one place
//! where they become a `tonic::Status` (and an HTTP status for the REST twin).
//!
//! Keeping the mapping here means a newcomer can read, in one screen, which
//! gRPC code each failure gets and whether the client may assume the request
//! was *not* applied.

use tonic::{Code, Status, metadata::MetadataValue};

use crate::{
    core::{BinaryOp, CodePoint, forbidden},
    store::{WriteFate, guard::Refusal},
    trace::num,
};

/// Metadata key the server sets on every error it answers *without having
/// applied the request*. Clients use it to tell "definitely not applied" from
/// "outcome unknown": a status without it (a proxy's, a transport's, or the
/// injected apply-then-drop fault's) proves nothing about the request.
pub const NOT_APPLIED_KEY: &str = "abacus-not-applied";

/// Response metadata key set to `true` on every answer replayed from the
/// dedup store (success or recorded error), in addition to the response's
/// `replayed` field, so a replayed *error* is recognisable too.
pub const REPLAYED_KEY: &str = "abacus-replayed";

/// Metadata key carrying gRPC's retry pushback, in milliseconds. A negative
/// value asks the client not to retry at all.
pub const PUSHBACK_KEY: &str = "grpc-retry-pushback-ms";

/// Errors of the calculator rules themselves (the caller's fault).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalcError {
    /// `Divide` with `b == 0`.
    #[error("division by zero: the divisor b must be non-zero")]
    DivisionByZero,
    /// NaN or an infinity was sent.
    #[error("operand {operand} is {value}: operands must be finite numbers")]
    NonFiniteOperand {
        /// Which operand (`a`, `b` or `delta`).
        operand: &'static str,
        /// The value received.
        value: f64,
    },
    /// The result does not fit in a finite `f64`.
    #[error("overflow: {op}({}, {}) is not a finite number", num(*.a), num(*.b))]
    Overflow {
        /// The operation.
        op: BinaryOp,
        /// First operand.
        a: f64,
        /// Second operand.
        b: f64,
    },
    /// Accumulating would make the register non-finite.
    #[error("overflow: register {register:?} holds {}; adding {} is not a finite number", num(*.current), num(*.delta))]
    RegisterOverflow {
        /// Register name.
        register: String,
        /// Its value before.
        current: f64,
        /// The refused delta.
        delta: f64,
    },
    /// Register name missing.
    #[error("register name must not be empty")]
    EmptyRegisterName,
    /// Register name above [`crate::core::REGISTER_NAME_BYTES_MAX`].
    #[error("register name is {len} bytes; the limit is 64")]
    RegisterNameTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Register name with a control, format or other invisible character
    /// (see [`crate::core::forbidden`]).
    #[error(
        "register name has {} at character {position}, {}: control, format and other invisible characters are not allowed in register names",
        CodePoint(*ch),
        forbidden(*ch).unwrap_or("a forbidden character")
    )]
    RegisterNameForbiddenChar {
        /// The character.
        ch: char,
        /// Its position in the name as sent, counting characters from 1.
        position: usize,
    },
    /// Register name not in Unicode NFC (only a caller of the store itself
    /// can send one: the service normalises names first).
    #[error("register name is not in Unicode normalization form C")]
    RegisterNameNotNormalized,
    /// Reading a register that was never written.
    #[error("register {0:?} does not exist (accumulate into it to create it)")]
    UnknownRegister(String),
    /// Creating a register beyond the client's quota
    /// (`--registers-per-client-max`). Not recorded in the dedup store (a
    /// refusal before applying, like shedding): the same request ID
    /// executes once the client has made room.
    #[error(
        "this client already holds {held} registers, its limit (--registers-per-client-max {max}); delete registers it no longer needs (DeleteRegister; `abacus call delete NAME`; REST: DELETE /v1/registers/NAME) or accumulate into one it has, then retry"
    )]
    RegisterQuota {
        /// Registers the client holds.
        held: usize,
        /// Its limit.
        max: usize,
    },
    /// Creating a register beyond [`crate::core::REGISTERS_MAX`].
    #[error("the server already holds {max} registers, its limit; use an existing one")]
    TooManyRegisters {
        /// The limit.
        max: usize,
    },
}

/// Everything the server may answer with instead of a response.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceError {
    /// The request broke the calculator's rules.
    #[error(transparent)]
    Calc(#[from] CalcError),
    /// `--fail-rate` fault: refused before applying.
    #[error("injected fault: server unavailable (request not applied)")]
    InjectedUnavailable,
    /// `--drop-after-apply-rate` fault: applied, then the response is lost.
    /// Deliberately indistinguishable from a lost connection: no
    /// not-applied marker.
    #[error("connection lost before the response was sent")]
    ResponseDropped,
    /// The caller's deadline passed before the server applied the request.
    #[error("deadline exceeded before the request was applied")]
    DeadlineExceeded,
    /// Load shedding: too many requests in flight.
    #[error(
        "server overloaded: {in_flight} requests in flight (limit {limit}); retry after {pushback_ms} ms"
    )]
    Overloaded {
        /// Requests in flight when refused.
        in_flight: usize,
        /// The configured limit.
        limit: usize,
        /// Suggested wait before retrying.
        pushback_ms: u64,
    },
    /// Load shedding on queueing delay: calls wait too long for a thread
    /// before their handlers run (see `server::queue_delay`).
    #[error(
        "server saturated: calls wait more than {target_ms} ms before they run; retry after {pushback_ms} ms"
    )]
    Saturated {
        /// The queueing-delay target.
        target_ms: u64,
        /// Suggested wait before retrying.
        pushback_ms: u64,
    },
    /// `--require-request-id` and a mutating request without one.
    #[error(
        "a request ID (gRPC: the request_id field; REST: the Idempotency-Key header) is required for Accumulate on this server (started with --require-request-id)"
    )]
    RequestIdRequired,
    /// Request ID malformed (too long or control characters).
    #[error("request ID is invalid: {0}")]
    InvalidRequestId(&'static str),
    /// Same request ID, different payload.
    #[error(
        "request ID {request_id:?} was first used for {first}; this request is {this}: a request ID must not be reused for a different request"
    )]
    RequestIdReused {
        /// The ID.
        request_id: String,
        /// What the first request with this ID was.
        first: String,
        /// What this request is.
        this: String,
    },
    /// A duplicate waited for the first execution of its request ID, still
    /// in flight, until its deadline or the server's join limit. Not marked
    /// not-applied: that first execution may still apply.
    #[error(
        "request ID {request_id:?} is still being executed by an earlier attempt, which may yet apply; retry with the same request ID"
    )]
    StillInFlight {
        /// The ID.
        request_id: String,
    },
    /// A backend that cannot delete registers (the simulation's model of a
    /// store) was asked to.
    #[error("this server's register store cannot delete registers")]
    DeleteUnsupported,
    /// The store (redb, PostgreSQL) failed or cannot be reached. The
    /// engine's own message is logged, never sent: it may name files,
    /// tables or hosts.
    #[error("{}", match fate {
        WriteFate::NotApplied => "the register store is unavailable; the request was not applied",
        WriteFate::Unknown => "the register store failed while committing; the request may or may not have been applied: retry with the same request ID",
    })]
    StoreUnavailable {
        /// Whether the write certainly did not happen.
        fate: WriteFate,
    },
    /// The guard in front of the store refused before sending anything
    /// (`store::guard`): the store has been failing (circuit open), or too
    /// much store work is in flight on this server. Certainly not applied.
    #[error("{}", refusal_message(.0))]
    StoreRefused(Refusal),
}

fn refusal_message(refusal: &Refusal) -> String {
    match refusal {
        Refusal::CircuitOpen { probe_in_ms: 0 } => "the register store has been failing and this \
            server is testing whether it recovered; the request was not applied"
            .to_owned(),
        Refusal::CircuitOpen { probe_in_ms } => format!(
            "the register store has been failing; this server sends it nothing for {probe_in_ms} ms \
             (circuit open); the request was not applied"
        ),
        Refusal::Busy { in_flight, limit } => format!(
            "too many register-store operations in flight on this server ({in_flight}, limit \
             {limit}); the request was not applied"
        ),
    }
}

impl ServiceError {
    /// The gRPC code for this error.
    pub fn code(&self) -> Code {
        match self {
            Self::Calc(CalcError::UnknownRegister(_)) => Code::NotFound,
            // FAILED_PRECONDITION rather than RESOURCE_EXHAUSTED: the fix is
            // the caller's (use an existing register), and RESOURCE_EXHAUSTED
            // is what load shedding answers — a server-health signal that
            // retry policies and circuit breakers react to.
            Self::Calc(CalcError::TooManyRegisters { .. }) => Code::FailedPrecondition,
            // RESOURCE_EXHAUSTED: gRPC's code for "a per-user quota", with
            // pushback -1 below, so no retry policy repeats it unchanged.
            Self::Calc(CalcError::RegisterQuota { .. }) => Code::ResourceExhausted,
            Self::Calc(_) => Code::InvalidArgument,
            Self::InjectedUnavailable | Self::ResponseDropped => Code::Unavailable,
            Self::DeadlineExceeded => Code::DeadlineExceeded,
            Self::Overloaded { .. } | Self::Saturated { .. } => Code::ResourceExhausted,
            Self::RequestIdRequired | Self::InvalidRequestId(_) => Code::InvalidArgument,
            // FAILED_PRECONDITION, not INVALID_ARGUMENT: the request is valid on
            // its own; it conflicts with state the server holds (an earlier
            // request under the same ID). Retrying it unchanged can never
            // succeed, and no default retry policy retries this code.
            Self::RequestIdReused { .. } => Code::FailedPrecondition,
            // ABORTED: a concurrency conflict with another attempt of the same
            // call, to be retried at the level of the whole call (same ID).
            Self::StillInFlight { .. } => Code::Aborted,
            Self::DeleteUnsupported => Code::Unimplemented,
            // UNAVAILABLE: transient, and what retry policies and balancers
            // act on (another replica, or the same one later).
            Self::StoreUnavailable { .. } => Code::Unavailable,
            // UNAVAILABLE too: the same condition seen sooner, and what
            // clients retry and balancers route around.
            Self::StoreRefused(_) => Code::Unavailable,
        }
    }

    /// HTTP status for the REST twin, consistent with [`ServiceError::code`]
    /// (gRPC's own HTTP mapping).
    pub fn http_status(&self) -> u16 {
        match self.code() {
            Code::InvalidArgument => 400,
            Code::NotFound => 404,
            Code::FailedPrecondition | Code::Aborted => 409,
            Code::ResourceExhausted => 429,
            Code::Unavailable => 503,
            Code::DeadlineExceeded => 504,
            Code::Unimplemented => 501,
            _ => 500,
        }
    }

    /// False only when the server may have applied the request: the client
    /// must then treat the outcome as unknown.
    pub fn known_not_applied(&self) -> bool {
        !matches!(
            self,
            Self::ResponseDropped
                | Self::StillInFlight { .. }
                | Self::StoreUnavailable {
                    fate: WriteFate::Unknown
                }
        )
    }

    /// Pushback the server asks the client to honour, if any.
    pub fn pushback_ms(&self) -> Option<i64> {
        match self {
            Self::Overloaded { pushback_ms, .. } | Self::Saturated { pushback_ms, .. } => {
                Some(*pushback_ms as i64)
            }
            // Retrying the same reused ID can never succeed, nor can a
            // call over its quota before it deletes something: tell gRPC
            // clients not to retry at all.
            Self::RequestIdReused { .. } | Self::Calc(CalcError::RegisterQuota { .. }) => Some(-1),
            // No point in coming back before the breaker probes.
            Self::StoreRefused(Refusal::CircuitOpen { probe_in_ms }) if *probe_in_ms > 0 => {
                Some(i64::try_from(*probe_in_ms).unwrap_or(i64::MAX))
            }
            _ => None,
        }
    }
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Status {
        let mut status = Status::new(err.code(), err.to_string());
        let md = status.metadata_mut();
        if err.known_not_applied() {
            md.insert(NOT_APPLIED_KEY, MetadataValue::from_static("true"));
        }
        if let Some(ms) = err.pushback_ms() {
            md.insert(PUSHBACK_KEY, MetadataValue::from(ms));
        }
        status
    }
}

/// Requests the gRPC front refuses before any handler runs, because they
/// break the gRPC protocol rather than a calculator rule. Never applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// `content-type` is not gRPC's. Answered with HTTP 415 (the gRPC
    /// HTTP/2 spec's "SHOULD", so a plain HTTP client does not read the
    /// usual 200 as success) and INVALID_ARGUMENT, as grpc-go does.
    #[error(
        "invalid gRPC request content-type {0:?}: this port speaks gRPC (application/grpc or application/grpc+proto); the REST twin takes JSON"
    )]
    ContentType(String),
    /// A second request message on a method that takes exactly one (unary
    /// and server-streaming). INTERNAL, as grpc-go and grpc-java answer
    /// it, and as tonic answers the other cardinality violation (no
    /// message at all); the status-code table says UNIMPLEMENTED, which
    /// gRPC core and Connect use.
    #[error("more than one request message for a method that takes exactly one")]
    ExtraRequestMessage,
    /// Too many long-lived streams (`Health/Watch`, reflection) open on the
    /// server.
    #[error(
        "too many long-lived streams open on this server (limit {limit}); close one or retry later"
    )]
    TooManyStreams {
        /// The configured limit.
        limit: usize,
    },
}

impl ProtocolError {
    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            Self::ContentType(_) => Code::InvalidArgument,
            Self::ExtraRequestMessage => Code::Internal,
            Self::TooManyStreams { .. } => Code::ResourceExhausted,
        }
    }

    /// The HTTP status of the response carrying the gRPC status: 415 for a
    /// request that is not gRPC at all, else gRPC's usual 200.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::ContentType(_) => 415,
            _ => 200,
        }
    }
}

impl From<ProtocolError> for Status {
    fn from(err: ProtocolError) -> Status {
        let mut status = Status::new(err.code(), err.to_string());
        // Refused before any handler: certainly not applied.
        status
            .metadata_mut()
            .insert(NOT_APPLIED_KEY, MetadataValue::from_static("true"));
        status
    }
}

/// Calls refused by the server's authentication (`--auth-tokens`), before
/// anything else looks at them: never applied. Messages name the identity
/// at most, never a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` header.
    #[error("this server requires a token: send `authorization: Bearer <token>`")]
    Missing,
    /// An `authorization` header that is not `Bearer <token>`.
    #[error("the authorization header must be `Bearer <token>`")]
    Malformed,
    /// A token no identity of the server has.
    #[error("unknown token")]
    UnknownToken,
    /// A known identity whose role does not allow the method.
    #[error("identity {identity:?} has the read role: {method} needs a write token")]
    Forbidden {
        /// The identity's name.
        identity: std::sync::Arc<str>,
        /// The method refused.
        method: crate::rpc::Method,
    },
    /// A known identity over its rate limit.
    #[error("identity {identity:?} is over its rate limit; retry after {pushback_ms} ms")]
    RateLimited {
        /// The identity's name.
        identity: std::sync::Arc<str>,
        /// When a call would be admitted again.
        pushback_ms: u64,
    },
}

impl AuthError {
    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            Self::Missing | Self::Malformed | Self::UnknownToken => Code::Unauthenticated,
            Self::Forbidden { .. } => Code::PermissionDenied,
            // What load shedding answers too: retryable, with a pushback.
            Self::RateLimited { .. } => Code::ResourceExhausted,
        }
    }

    /// The REST twin's HTTP status.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Missing | Self::Malformed | Self::UnknownToken => 401,
            Self::Forbidden { .. } => 403,
            Self::RateLimited { .. } => 429,
        }
    }

    /// The pushback a rate-limited caller must honour.
    pub fn pushback_ms(&self) -> Option<u64> {
        match self {
            Self::RateLimited { pushback_ms, .. } => Some(*pushback_ms),
            _ => None,
        }
    }

    /// The REST twin's `WWW-Authenticate` challenge (RFC 6750), for 401
    /// and 403.
    pub fn www_authenticate(&self) -> Option<&'static str> {
        match self {
            Self::Missing => Some(r#"Bearer realm="abacus""#),
            Self::Malformed => Some(r#"Bearer realm="abacus", error="invalid_request""#),
            Self::UnknownToken => Some(r#"Bearer realm="abacus", error="invalid_token""#),
            Self::Forbidden { .. } => Some(r#"Bearer realm="abacus", error="insufficient_scope""#),
            Self::RateLimited { .. } => None,
        }
    }
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Status {
        let mut status = Status::new(err.code(), err.to_string());
        let md = status.metadata_mut();
        // Refused before the service saw it.
        md.insert(NOT_APPLIED_KEY, MetadataValue::from_static("true"));
        if let Some(ms) = err.pushback_ms() {
            md.insert(PUSHBACK_KEY, MetadataValue::from(ms));
        }
        status
    }
}

/// The canonical upper-case name of a code, as gRPC service configs spell
/// it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Parses a canonical code name (`"UNAVAILABLE"`), case-insensitively.
pub fn parse_code_name(name: &str) -> Option<Code> {
    (0..=16)
        .map(Code::from_i32)
        .find(|c| code_name(*c).eq_ignore_ascii_case(name.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_code_message_and_markers() {
        let s: Status = ServiceError::Calc(CalcError::DivisionByZero).into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("division by zero"));
        assert_eq!(s.metadata().get(NOT_APPLIED_KEY).unwrap(), "true");

        let s: Status = ServiceError::ResponseDropped.into();
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.metadata().get(NOT_APPLIED_KEY).is_none());

        let s: Status = ServiceError::Overloaded {
            in_flight: 9,
            limit: 8,
            pushback_ms: 50,
        }
        .into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.metadata().get(PUSHBACK_KEY).unwrap(), "50");

        let s: Status = ServiceError::Calc(CalcError::UnknownRegister("r".into())).into();
        assert_eq!(s.code(), Code::NotFound);

        // A store failure is transient (UNAVAILABLE); only a certain one
        // says not-applied.
        let s: Status = ServiceError::StoreUnavailable {
            fate: WriteFate::NotApplied,
        }
        .into();
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.metadata().get(NOT_APPLIED_KEY).unwrap(), "true");
        let s: Status = ServiceError::StoreUnavailable {
            fate: WriteFate::Unknown,
        }
        .into();
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.metadata().get(NOT_APPLIED_KEY).is_none());
        assert!(s.message().contains("retry with the same request ID"));

        // Refused by the store guard: nothing was sent.
        let s: Status =
            ServiceError::StoreRefused(Refusal::CircuitOpen { probe_in_ms: 800 }).into();
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.metadata().get(NOT_APPLIED_KEY).unwrap(), "true");
        assert_eq!(s.metadata().get(PUSHBACK_KEY).unwrap(), "800");
        let s: Status = ServiceError::StoreRefused(Refusal::Busy {
            in_flight: 64,
            limit: 64,
        })
        .into();
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.metadata().get(NOT_APPLIED_KEY).unwrap(), "true");
        assert!(s.metadata().get(PUSHBACK_KEY).is_none());
    }
}
