//! The seam between the service and its state: the [`Ledger`] trait, which
//! every backend (in memory, redb, PostgreSQL, the simulation's model)
//! implements, and the plain types that cross it.
//!
//! The service ([`crate::server::Calculator`]), both fronts and the client
//! do not know which backend runs: they see one `Arc<dyn Ledger>`.
//!
//! # The contract, per `Accumulate`
//! [`Ledger::begin`] validates the payload and the request ID, then either
//! - answers from the dedup record of an earlier execution
//!   ([`Begin::Replay`]: the first outcome, or a mismatch error when the same
//!   ID came with a different payload), or
//! - waits for an execution of the same ID that is still in flight
//!   anywhere the ledger can see (another task, another replica), then looks
//!   again, or
//! - claims the ID ([`Begin::Execute`]): the caller runs whatever comes
//!   between claim and commit (fault delay, deadline check, injected
//!   failure) and calls [`Claim::commit`], or drops the claim, which
//!   releases the ID *without a record*, so a retry executes.
//!
//! [`Claim::commit`] applies the register update and writes the dedup record
//! **atomically**: both or neither, whatever fails (a cancelled caller, a
//! crash, a lost connection to the store). It returns only once the commit
//! is durable in the backend's sense, and a reader never observes a value
//! before it is.
//!
//! # Failures
//! A backend that cannot do its job answers
//! [`ServiceError::StoreUnavailable`] with a [`WriteFate`]: `NotApplied`
//! when the write certainly did not happen (nothing was sent, or the store
//! refused before writing), `Unknown` when it may have (a connection lost
//! during COMMIT). A retry under the same request ID resolves an unknown
//! fate: replayed if the commit happened, executed if it did not. The error
//! never carries the engine's own message (paths, SQL, driver text): the
//! backend logs that, the caller gets a stable sentence.
//!
//! # Why boxed futures
//! The trait is used as `dyn Ledger` (the backend is chosen at start-up,
//! and the simulation plugs in a model from outside the crate), and `async
//! fn` in traits is not object-safe. One small allocation per call is
//! nothing next to an RPC.
//!
//! # Layout
//! - [`memory`]: [`MemoryLedger`], the default backend and the claim
//!   protocol itself (registers, dedup records and in-flight claims under
//!   one lock).
//! - [`redb`]: `--data-dir` persistence in an embedded redb file.
//! - [`dedup`]: the idempotency design and the bounded dedup store.
//! - [`postgres`]: `--store postgres://…`, shared by replicas.
//! - [`guard`]: [`guard::GuardedLedger`], a time bound, a circuit breaker
//!   and an in-flight bound in front of any backend, so a failing store
//!   cannot take its server down with it.
//! - [`conformance`]: the operation sequences every backend must answer
//!   identically.
//!
//! Nothing here imports `server/`: the store sits wholly below the service.

pub mod clock;
pub mod dedup;
pub(crate) mod journal;
pub mod memory;
mod outbox;
mod owners;
pub mod redb;

pub use clock::Clock;
pub use dedup::DedupConfig;
pub use memory::MemoryLedger;

pub mod conformance;
pub mod guard;
pub mod postgres;

use std::{fmt, future::Future, net::IpAddr, pin::Pin, sync::Arc};

use tokio::{sync::watch, time::Instant};

use crate::error::ServiceError;

/// A boxed, sendable future: what the [`Ledger`] methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who sent a request, as far as the store is concerned.
///
/// Two uses, kept apart on purpose:
/// - [`Caller::scope`] namespaces request IDs: the same ID from two
///   authenticated identities names two requests. Without authentication
///   every caller shares one scope (the peer address is *not* part of it:
///   a retry may arrive over another connection, from another source port,
///   at another replica).
/// - [`Caller::quota_key`] is whom resource bounds are charged to (dedup
///   records retained, registers created), so one caller's traffic cannot
///   evict another's records: the identity when there is one, else the
///   peer's IP address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Caller {
    /// The authenticated identity, when the server checks tokens.
    pub identity: Option<Arc<str>>,
    /// The peer's IP address, when the transport knows it.
    pub peer: Option<IpAddr>,
}

/// Whom a resource bound is charged to: see [`Caller::quota_key`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuotaKey {
    /// An authenticated identity.
    Identity(Arc<str>),
    /// An unauthenticated peer, by IP address.
    Peer(IpAddr),
    /// Neither is known (in-process callers, tests).
    Anonymous,
}

impl fmt::Display for QuotaKey {
    /// `identity:NAME`, `peer:IP` or `anonymous`: the owner column of the
    /// PostgreSQL ledger, and what the owner digest is computed from.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Identity(name) => write!(f, "identity:{name}"),
            Self::Peer(ip) => write!(f, "peer:{ip}"),
            Self::Anonymous => f.write_str("anonymous"),
        }
    }
}

impl Caller {
    /// The request-ID namespace: the identity's name, or `""` when the
    /// server does not authenticate.
    pub fn scope(&self) -> &str {
        self.identity.as_deref().unwrap_or("")
    }

    /// Whom resource bounds are charged to.
    pub fn quota_key(&self) -> QuotaKey {
        match (&self.identity, self.peer) {
            (Some(id), _) => QuotaKey::Identity(Arc::clone(id)),
            (None, Some(ip)) => QuotaKey::Peer(ip),
            (None, None) => QuotaKey::Anonymous,
        }
    }
}

/// Arguments of `Accumulate`, free of any wire format.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AccumulateArgs {
    /// Register name.
    pub register: String,
    /// Amount to add.
    pub delta: f64,
    /// Identifies the logical call across retries; empty for none (accepted
    /// and applied, but not deduplicated, unless the server requires IDs).
    pub request_id: String,
    /// Who sent it.
    pub caller: Caller,
}

/// Result of `Accumulate`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accumulated {
    /// The register's value right after this request was applied.
    pub value: f64,
    /// True when answered from the dedup store.
    pub replayed: bool,
}

/// Counters for `GetStats` and the shutdown log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsView {
    /// Dedup records retained.
    pub dedup_entries: u64,
    /// Repeats answered from the store.
    pub dedup_hits: u64,
    /// Records evicted (capacity or TTL).
    pub dedup_evictions: u64,
    /// Of those, evicted inside their TTL to make room: a retry of one
    /// would apply again. The server warns when this grows.
    pub dedup_evictions_early: u64,
    /// Reused IDs with a different payload.
    pub dedup_mismatches: u64,
    /// Request IDs claimed and not yet committed.
    pub dedup_in_flight: u64,
    /// Updates applied by this process.
    pub applied: u64,
    /// Registers held.
    pub registers: u64,
}

impl fmt::Display for StatsView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "applied={} registers={} dedup_entries={} dedup_hits={} dedup_evictions={} dedup_evictions_early={} dedup_mismatches={} dedup_in_flight={}",
            self.applied,
            self.registers,
            self.dedup_entries,
            self.dedup_hits,
            self.dedup_evictions,
            self.dedup_evictions_early,
            self.dedup_mismatches,
            self.dedup_in_flight
        )
    }
}

/// What a failed store operation says about the write it was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteFate {
    /// Certainly not applied: nothing was sent, or the store refused before
    /// writing. Clients may retry freely.
    NotApplied,
    /// May have been applied (e.g. the connection was lost during COMMIT).
    /// Only a retry under the same request ID is safe.
    Unknown,
}

/// Which backend a ledger is, for logs and `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// In memory: lost on restart.
    Memory,
    /// redb in a data directory: one node, durable.
    Redb,
    /// PostgreSQL: shared by replicas, durable.
    Postgres,
    /// A model of a store (the simulation's).
    Model,
}

impl Backend {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redb => "redb",
            Self::Postgres => "postgres",
            Self::Model => "model",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a ledger can serve the register methods (`Accumulate`,
/// `GetRegister`), as the gRPC health service reports it for
/// `abacus.v1.Registers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreHealth {
    /// Working.
    Serving,
    /// Broken (e.g. the disk refuses writes): register calls are answered
    /// UNAVAILABLE until the backend recovers by itself.
    NotServing,
}

/// How [`Ledger::begin`] ended.
#[derive(Debug)]
pub enum Begin<'a> {
    /// The request ID was executed before with this payload: its first
    /// outcome, to answer as is (`replayed = true` on success; a recorded
    /// rule error is replayed as the same error).
    Replay(Result<Accumulated, ServiceError>),
    /// This request holds the claim and may execute: call
    /// [`Claim::commit`], or drop the claim if it fails before applying.
    Execute(Box<dyn Claim<'a> + 'a>),
}

/// The right to execute one `Accumulate`. While it lives, duplicates of its
/// request ID wait instead of executing; dropping it uncommitted releases
/// the ID without a record, and one waiter takes over.
pub trait Claim<'a>: Send + fmt::Debug {
    /// The request ID claimed (empty for a request without one).
    fn request_id(&self) -> &str;

    /// Applies the update and records its outcome, atomically; resolves
    /// once the commit is durable. State-dependent rule errors (overflow,
    /// too many registers) are recorded and returned; a store failure
    /// records nothing it can vouch for and says so with a [`WriteFate`].
    fn commit(self: Box<Self>) -> BoxFuture<'a, Result<Accumulated, ServiceError>>;
}

/// Registers and dedup records: see the module documentation.
pub trait Ledger: Send + Sync + fmt::Debug {
    /// Starts an `Accumulate`: replay, join an execution in flight, or
    /// claim. Waiting (for a duplicate in flight, for the store) ends at
    /// `deadline` at the latest.
    fn begin<'a>(
        &'a self,
        args: &'a AccumulateArgs,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Begin<'a>, ServiceError>>;

    /// Removes a register, returning its last value (`None` when it did
    /// not exist: deleting is idempotent). Resolves once the removal is
    /// durable. Dedup records are kept: a retry of an `Accumulate` applied
    /// before replays its first outcome and does not re-create the
    /// register. The register's creator gets its quota back. The default
    /// is a backend that cannot delete (the simulation's model).
    fn delete<'a>(
        &'a self,
        register: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Option<f64>, ServiceError>> {
        let _ = (register, deadline);
        Box::pin(std::future::ready(Err(ServiceError::DeleteUnsupported)))
    }

    /// Reads a register (`NotFound` if it was never written).
    fn get<'a>(
        &'a self,
        register: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<f64, ServiceError>>;

    /// Current counters.
    fn stats(&self) -> BoxFuture<'_, Result<StatsView, ServiceError>>;

    /// Whether the ledger can serve registers now, and every change after.
    /// The default is a backend that never breaks: always `Serving` (the
    /// channel's sender is gone, so a watcher sees no change, ever).
    fn health(&self) -> watch::Receiver<StoreHealth> {
        watch::channel(StoreHealth::Serving).1
    }

    /// Which backend this is.
    fn backend(&self) -> Backend;
}

/// `begin` then `commit`, with nothing in between: `Accumulate` without
/// fault injection, for adapters and tests that need no more.
pub async fn accumulate(
    ledger: &dyn Ledger,
    args: &AccumulateArgs,
    deadline: Option<Instant>,
) -> Result<Accumulated, ServiceError> {
    match ledger.begin(args, deadline).await? {
        Begin::Replay(result) => result,
        Begin::Execute(claim) => claim.commit().await,
    }
}

/// `Accumulate` arguments from an anonymous caller, for the backends' tests.
#[cfg(test)]
pub(crate) fn test_args(register: &str, delta: f64, request_id: &str) -> AccumulateArgs {
    AccumulateArgs {
        register: register.into(),
        delta,
        request_id: request_id.into(),
        caller: Caller::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_scope_ids_by_identity_and_charge_quotas_to_identity_or_peer() {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let anonymous = Caller::default();
        let peer = Caller {
            identity: None,
            peer: Some(ip),
        };
        let alice = Caller {
            identity: Some("alice".into()),
            peer: Some(ip),
        };
        // Without authentication every caller shares one ID scope, whatever
        // its address: a retry may come from another connection.
        assert_eq!(anonymous.scope(), peer.scope());
        assert_ne!(alice.scope(), peer.scope());
        assert_eq!(anonymous.quota_key(), QuotaKey::Anonymous);
        assert_eq!(peer.quota_key(), QuotaKey::Peer(ip));
        assert_eq!(alice.quota_key(), QuotaKey::Identity("alice".into()));
    }
}
