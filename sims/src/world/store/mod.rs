//! The store host of the replicated world: a deterministic model of the
//! shared store (PostgreSQL in production, which cannot run inside
//! turmoil), behind a small test-only protocol over turmoil's TCP, and the
//! [`RemoteLedger`] each replica uses to reach it.
//!
//! # What the model mimics, and why it transfers
//! The model is the in-memory ledger — the reference every backend,
//! PostgreSQL included, answers identically to in the conformance suite
//! (`src/store/conformance.rs`; `tests/sims/scenarios/model.rs` runs the same
//! suite against this model *over the network*). The protocol gives it the
//! engine's shape where the engine's shape matters for exactly-once:
//! - **a claim is held by an open connection**, as PostgreSQL's row lock is
//!   held by an open transaction: `Begin` answers `Replay` or `Claimed`,
//!   and a claimed connection then sends `Commit`, which commits the
//!   register update and the dedup record together;
//! - **a duplicate from another replica waits on the store side** while the
//!   claim is held (PostgreSQL: the second insert blocks on the row lock),
//!   bounded by the wait the replica sends (its `lock_timeout`);
//! - **a connection that closes without `Commit` rolls back**: the claim is
//!   released without a record, and a waiting duplicate takes over;
//! - **commit ambiguity**: the store may commit and lose the reply (the
//!   connection drops before the answer), and the replica must then answer
//!   an unknown fate, never not-applied;
//! - **durability**: the model's state lives in an `Arc` outside the store
//!   host, so a crash and restart of the host keeps every committed update
//!   and record (PostgreSQL is durable), while its connections — and the
//!   claims they hold — die with it (PostgreSQL rolls back open
//!   transactions on restart).
//!
//! A claim whose connection was cut silently (a partition, a failed link)
//! is never noticed by the store through the connection, which turmoil's
//! TCP never closes: PostgreSQL too would hold such a transaction until
//! TCP keepalive gives up (hours by default). The PostgreSQL ledger sets
//! `idle_in_transaction_session_timeout` (twice its per-call bound), and the
//! model does the same: a claim whose connection stays silent that long
//! is released without a record (`released … idle` in traces), so a retry
//! of that request ID through any replica waits on it at most that long.
//!
//! # Layout
//! - [`wire`]: the protocol's messages and frames.
//! - [`conformance`]: the ledgers' conformance suite, run against the
//!   model over the network.
//! - [`host`]: the store host's side of the protocol, its slowness and
//!   lost replies.
//! - [`remote`]: [`RemoteLedger`], a `Ledger` over the protocol, as the
//!   PostgreSQL ledger is one over SQL; and [`ReplicaBug`], the deliberately
//!   broken replicas of the negative controls.
//! - [`split`]: [`SplitLedger`], a deliberately broken store (update and
//!   record in two transactions), for a negative control.

pub mod conformance;
pub mod host;
pub mod remote;
pub mod split;
pub mod wire;

use std::fmt;

/// The library's in-memory ledger: the store model, and each replica's
/// table of local claims. (Named once here, so the simulation follows the
/// library wherever the type lives.)
pub use abacus::store::MemoryLedger;
pub use host::{Store, StoreConfig, StoreModel, idle_claim_default};
pub use remote::{RemoteConfig, RemoteLedger, ReplicaBug, StoreCalls};
pub use split::SplitLedger;

/// The store's host name.
pub const HOST: &str = "store";

/// The port the store listens on (PostgreSQL's, for the reader's sake).
pub const PORT: u16 = 5432;

/// What the store host did that no event of the library shows: the
/// model's side of a transaction that did not end in an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreNote {
    /// A claim was released without a record: its connection closed
    /// before `Commit` (a rollback).
    RolledBack {
        /// The request ID.
        request_id: String,
    },
    /// A commit was made and its reply lost: the store dropped the
    /// connection before answering (an injected fault).
    ReplyLost {
        /// The request ID.
        request_id: String,
    },
    /// A commit was abandoned part-way because its connection closed (only
    /// a store whose commit is not one step can be interrupted: the split
    /// control's).
    CommitAbandoned {
        /// The request ID.
        request_id: String,
    },
    /// A claim was released without a record because its connection stayed
    /// silent for the idle bound (PostgreSQL ending a transaction idle for
    /// `idle_in_transaction_session_timeout`).
    IdleReleased {
        /// The request ID.
        request_id: String,
        /// The bound.
        idle_ms: u64,
    },
}

fn id(request_id: &str) -> &str {
    if request_id.is_empty() {
        "-"
    } else {
        request_id
    }
}

impl fmt::Display for StoreNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RolledBack { request_id } => write!(
                f,
                "rolled back id={}: connection closed before commit",
                id(request_id)
            ),
            Self::ReplyLost { request_id } => write!(
                f,
                "committed id={}, reply lost: connection dropped before the answer",
                id(request_id)
            ),
            Self::CommitAbandoned { request_id } => write!(
                f,
                "commit of id={} abandoned part-way: connection closed",
                id(request_id)
            ),
            Self::IdleReleased {
                request_id,
                idle_ms,
            } => write!(
                f,
                "released id={}: its connection was silent for {idle_ms} ms (idle in transaction)",
                id(request_id)
            ),
        }
    }
}
