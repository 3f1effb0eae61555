//! The request and response types that flow through the client's tower
//! stack. Working on typed, cloneable calls (rather than HTTP bodies) is what
//! lets the retry layer re-send a request and the policy know whether the
//! request is safe to repeat.
//!
//! A call is one [`Request`]: which RPC it is, whether it mutates and
//! whether it may be repeated all follow from it, so no combination of
//! separately chosen method and payload can disagree with what is sent.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::time::Instant;

use crate::{client::error::CallError, core::BinaryOp, pb, rpc::Method};

/// The transport's response future: one attempt on its way. Boxed because
/// tonic's generated calls are `async fn`s, whose futures cannot be named;
/// the layers above have named futures, so this box and the one
/// `BoxCloneSyncService` makes are the only futures the stack allocates.
pub type CallFuture = Pin<Box<dyn Future<Output = Result<Reply, CallError>> + Send>>;

/// What a call asks the server to do: one variant per kind of request
/// message, each carrying exactly that message's fields.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `Add`, `Subtract`, `Multiply` or `Divide`.
    Binary {
        /// Which operation.
        op: BinaryOp,
        /// First operand.
        a: f64,
        /// Second operand.
        b: f64,
    },
    /// `Accumulate`: adds `delta` to `register`.
    Accumulate {
        /// Register name.
        register: String,
        /// Amount added.
        delta: f64,
        /// The server deduplicates repeats of a non-empty ID; `""` for none
        /// (the request-ID layer fills it in exactly-once mode).
        request_id: String,
    },
    /// `GetRegister`: reads `register`.
    GetRegister {
        /// Register name.
        register: String,
    },
    /// `DeleteRegister`: removes `register` (idempotent).
    DeleteRegister {
        /// Register name.
        register: String,
    },
    /// `GetStats`: the server's counters.
    GetStats,
}

impl Request {
    /// The RPC this request is sent as.
    pub fn method(&self) -> Method {
        match self {
            Self::Binary { op, .. } => Method::from(*op),
            Self::Accumulate { .. } => Method::Accumulate,
            Self::GetRegister { .. } => Method::GetRegister,
            Self::DeleteRegister { .. } => Method::DeleteRegister,
            Self::GetStats => Method::GetStats,
        }
    }

    /// The request ID of an `Accumulate`, or `""`.
    pub fn request_id(&self) -> &str {
        match self {
            Self::Accumulate { request_id, .. } => request_id,
            _ => "",
        }
    }

    /// True when sending this request twice cannot apply it twice: the RPC
    /// is idempotent (pure, or `DeleteRegister`), or it carries a request
    /// ID for the server to deduplicate.
    ///
    /// ```
    /// use abacus::client::Request;
    /// let acc = |id: &str| Request::Accumulate {
    ///     register: "r".into(), delta: 1.0, request_id: id.into() };
    /// assert!(!acc("").is_idempotent());
    /// assert!(acc("0f9c").is_idempotent());
    /// assert!(Request::GetStats.is_idempotent());
    /// ```
    pub fn is_idempotent(&self) -> bool {
        self.method().is_idempotent() || !self.request_id().is_empty()
    }
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
    /// Result of DeleteRegister.
    Deleted {
        /// False when the register did not exist.
        deleted: bool,
        /// Its last value, when deleted.
        value: f64,
    },
    /// Server counters.
    Stats(pb::Stats),
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Calc(v) | Self::Register(v) => write!(f, "{v}"),
            Self::Accumulated { value, replayed } => {
                write!(f, "{value}{}", if *replayed { " (replayed)" } else { "" })
            }
            Self::Deleted {
                deleted: true,
                value,
            } => write!(f, "deleted (it held {value})"),
            Self::Deleted { deleted: false, .. } => f.write_str("nothing to delete"),
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
    /// What is asked.
    pub request: Request,
    /// When the caller stops waiting (set by the deadline layer).
    pub deadline: Option<Instant>,
    /// This attempt's own deadline (set by the attempt-timeout layer);
    /// never later than `deadline`.
    pub attempt_deadline: Option<Instant>,
    /// 1-based attempt number (set by the retry layer).
    pub attempt: u32,
    /// Where this logical call's attempts went (set by the retry layer,
    /// filled in by the balancer), so a retry or a hedge can be sent to
    /// another endpoint than the attempts before it.
    pub route: Route,
}

impl Call {
    /// A first attempt of `request`, without deadlines.
    pub fn new(id: u64, request: Request) -> Self {
        Self {
            id,
            request,
            deadline: None,
            attempt_deadline: None,
            attempt: 1,
            route: Route::default(),
        }
    }

    /// `1 + 2` as call `id`: the plain call the layers' unit tests send.
    #[cfg(test)]
    pub(crate) fn test_add(id: u64) -> Self {
        Self::new(
            id,
            Request::Binary {
                op: BinaryOp::Add,
                a: 1.0,
                b: 2.0,
            },
        )
    }

    /// The RPC this call is sent as.
    pub fn method(&self) -> Method {
        self.request.method()
    }

    /// The request ID carried by a mutating call, or `""`.
    pub fn request_id(&self) -> &str {
        self.request.request_id()
    }

    /// See [`Request::is_idempotent`].
    pub fn is_idempotent(&self) -> bool {
        self.request.is_idempotent()
    }

    /// The earliest of the call's and the attempt's deadlines.
    pub fn effective_deadline(&self) -> Option<Instant> {
        match (self.deadline, self.attempt_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Attempts a route remembers: every attempt a retry policy or a hedging
/// policy may make ([`crate::client::retry::policy::ATTEMPTS_MAX_LIMIT`]).
const ROUTE_SLOTS: usize = crate::client::retry::policy::ATTEMPTS_MAX_LIMIT as usize;

/// The endpoints the attempts of one logical call went to, shared by all
/// of them: the retry (or hedging) layer gives each call one, the balancer
/// writes the endpoint each attempt goes to and avoids the ones already
/// written. Empty ([`Route::default`]) in stacks without a balancer, or
/// before the retry layer, where it costs nothing.
///
/// Lock-free: one slot per attempt number, each written by that attempt
/// alone, read by the next ones (hedges run concurrently).
#[derive(Clone, Default)]
pub struct Route(Option<Arc<[AtomicU64; ROUTE_SLOTS]>>);

impl Route {
    /// A fresh, empty route for one logical call.
    pub fn new() -> Self {
        Self(Some(Arc::new(std::array::from_fn(|_| AtomicU64::new(0)))))
    }

    /// Records that attempt `attempt` (1-based) goes to `endpoint` (an
    /// endpoint id, never 0). Attempts past the last slot are not recorded.
    pub fn record(&self, attempt: u32, endpoint: u64) {
        if let Some(slots) = &self.0
            && let Some(slot) = slots.get((attempt as usize).wrapping_sub(1))
        {
            slot.store(endpoint, Ordering::Relaxed);
        }
    }

    /// True when an earlier attempt of this call went to `endpoint`.
    pub fn contains(&self, endpoint: u64) -> bool {
        self.endpoints().any(|e| e == endpoint)
    }

    /// The endpoints recorded so far, in attempt order.
    pub fn endpoints(&self) -> impl Iterator<Item = u64> + '_ {
        self.0
            .iter()
            .flat_map(|slots| slots.iter())
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|&e| e != 0)
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.endpoints()).finish()
    }
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.endpoints().eq(other.endpoints())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_is_shared_by_the_clones_of_a_call() {
        let route = Route::new();
        let clone = route.clone();
        route.record(1, 7);
        clone.record(2, 9);
        assert!(route.contains(9) && clone.contains(7));
        assert!(!route.contains(3));
        assert_eq!(route.endpoints().collect::<Vec<_>>(), [7, 9]);
        // Out-of-range attempts are ignored, not a panic.
        route.record(0, 5);
        route.record(u32::MAX, 5);
        assert!(!route.contains(5));
        // Stacks without a retry layer carry an empty route.
        let none = Route::default();
        none.record(1, 7);
        assert!(!none.contains(7));
    }

    fn acc(request_id: &str) -> Request {
        Request::Accumulate {
            register: "r".into(),
            delta: 1.0,
            request_id: request_id.into(),
        }
    }

    /// The RPC, its path and whether it may be repeated, for every shape of
    /// request: all follow from what is sent. (When method and payload were
    /// chosen apart, `Add` with an Accumulate payload without ID counted as
    /// idempotent, and was retried at-most-once.)
    #[test]
    fn method_and_idempotency_follow_from_the_request() {
        let binary = |op| Request::Binary { op, a: 6.0, b: 3.0 };
        let table = [
            (binary(BinaryOp::Add), Method::Add, true),
            (binary(BinaryOp::Subtract), Method::Subtract, true),
            (binary(BinaryOp::Multiply), Method::Multiply, true),
            (binary(BinaryOp::Divide), Method::Divide, true),
            (acc(""), Method::Accumulate, false),
            (acc("id-1"), Method::Accumulate, true),
            (
                Request::GetRegister {
                    register: "r".into(),
                },
                Method::GetRegister,
                true,
            ),
            (
                Request::DeleteRegister {
                    register: "r".into(),
                },
                Method::DeleteRegister,
                true,
            ),
            (Request::GetStats, Method::GetStats, true),
        ];
        for (request, method, idempotent) in table {
            let call = Call::new(1, request.clone());
            assert_eq!(call.method(), method, "{request:?}");
            assert_eq!(call.is_idempotent(), idempotent, "{request:?}");
            assert_eq!(
                call.request_id().is_empty(),
                !matches!(&request, Request::Accumulate { request_id, .. } if !request_id.is_empty()),
            );
        }
    }
}
