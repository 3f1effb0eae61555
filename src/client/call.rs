//! The request and response types that flow through the client's tower
//! stack. Working on typed, cloneable calls (rather than HTTP bodies) is what
//! lets the retry layer re-send a request and the policy know whether the
//! method is safe to repeat.

use std::{future::Future, pin::Pin};

use tokio::time::Instant;

use crate::{client::error::CallError, pb};

/// The transport's response future: one attempt on its way. Boxed because
/// tonic's generated calls are `async fn`s, whose futures cannot be named;
/// the layers above have named futures, so this box and the one
/// `BoxCloneSyncService` makes are the only futures the stack allocates.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<Reply, CallError>> + Send>>;

/// An RPC of `abacus.v1.Calculator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// `Add`
    Add,
    /// `Subtract`
    Subtract,
    /// `Multiply`
    Multiply,
    /// `Divide`
    Divide,
    /// `Accumulate` (mutating)
    Accumulate,
    /// `GetRegister`
    GetRegister,
    /// `GetStats`
    GetStats,
}

impl Method {
    /// The RPC's name in the proto.
    pub fn name(self) -> &'static str {
        match self {
            Self::Add => "Add",
            Self::Subtract => "Subtract",
            Self::Multiply => "Multiply",
            Self::Divide => "Divide",
            Self::Accumulate => "Accumulate",
            Self::GetRegister => "GetRegister",
            Self::GetStats => "GetStats",
        }
    }

    /// True for RPCs marked `NO_SIDE_EFFECTS` in the proto: repeating them
    /// is always harmless.
    pub fn is_pure(self) -> bool {
        !matches!(self, Self::Accumulate)
    }
}

/// The request message of a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// Add, Subtract, Multiply, Divide.
    Binary(pb::BinaryRequest),
    /// Accumulate.
    Accumulate(pb::AccumulateRequest),
    /// GetRegister.
    GetRegister(pb::GetRegisterRequest),
    /// GetStats.
    GetStats,
}

/// The response message of a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Result of a binary operation.
    Calc(f64),
    /// Result of Accumulate.
    Accumulated {
        /// Register value after the update.
        value: f64,
        /// True when the server replayed a stored result.
        replayed: bool,
    },
    /// Value of a register.
    Register(f64),
    /// Server counters.
    Stats(pb::Stats),
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Calc(v) | Self::Register(v) => write!(f, "{v}"),
            Self::Accumulated { value, replayed } => {
                write!(f, "{value}{}", if *replayed { " (replayed)" } else { "" })
            }
            Self::Stats(s) => write!(
                f,
                "applied={} registers={} dedup: entries={} hits={} evictions={} mismatches={}",
                s.applied,
                s.registers,
                s.dedup_entries,
                s.dedup_hits,
                s.dedup_evictions,
                s.dedup_mismatches
            ),
        }
    }
}

/// One logical call on its way through the stack. Layers fill in the
/// deadline, request ID and attempt number; the transport sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Client-local sequence number, for traces.
    pub id: u64,
    /// Which RPC.
    pub method: Method,
    /// Its request message.
    pub payload: Payload,
    /// When the caller stops waiting (set by the deadline layer).
    pub deadline: Option<Instant>,
    /// This attempt's own deadline (set by the attempt-timeout layer);
    /// never later than `deadline`.
    pub attempt_deadline: Option<Instant>,
    /// 1-based attempt number (set by the retry layer).
    pub attempt: u32,
}

impl Call {
    /// A first attempt of `method` with `payload`, without deadlines.
    pub fn new(id: u64, method: Method, payload: Payload) -> Self {
        Self {
            id,
            method,
            payload,
            deadline: None,
            attempt_deadline: None,
            attempt: 1,
        }
    }

    /// The request ID carried by a mutating call, or `""`.
    pub fn request_id(&self) -> &str {
        match &self.payload {
            Payload::Accumulate(r) => &r.request_id,
            _ => "",
        }
    }

    /// True when re-sending this call cannot apply it twice: the method is
    /// pure, or it carries a request ID for the server to deduplicate.
    pub fn is_idempotent(&self) -> bool {
        self.method.is_pure() || !self.request_id().is_empty()
    }

    /// The earliest of the call's and the attempt's deadlines.
    pub fn effective_deadline(&self) -> Option<Instant> {
        match (self.deadline, self.attempt_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
