//! Server-side idempotency: why a retried `Accumulate` is applied at most
//! once, and the bounded store that remembers first outcomes.
//!
//! `Accumulate` is deliberately not idempotent. A client that lost a response
//! cannot know whether its request was applied, so it retries with the same
//! `request_id`; the server must then answer with the *first* execution's
//! outcome instead of applying again. This module holds the pieces with no
//! I/O and no locking; [`crate::store::MemoryLedger`] combines them with the
//! registers under one lock, and the adapters only call `State`.
//!
//! # Layout
//! - [`config`]: [`DedupConfig`], the limits and their defaults.
//! - [`key`]: request-ID validation, the [`IdDigest`] a record is keyed
//!   by (the caller's scope and request ID, hashed to 16 bytes), and the
//!   payload [`fingerprint`].
//! - [`store`]: [`DedupStore`], the bounded digest → first-outcome map.
//! - `record`: one retained record, packed into 48 bytes.
//!
//! # The protocol, per request ID
//! 1. *Lookup*: a retained record with the same fingerprint is replayed
//!    (`replayed = true`, header `abacus-replayed: true`); a different
//!    fingerprint is `RequestIdReused` (FAILED_PRECONDITION, pushback -1:
//!    the request is valid on its own but conflicts with the server's state,
//!    and repeating it unchanged can never succeed).
//! 2. *Claim*: otherwise the request claims the ID (an in-flight marker) and
//!    executes: fault delay, deadline check, injected failure.
//! 3. *Commit*: the register update and the record are stored in one
//!    critical section with no `.await` inside (and, in durable mode, in one
//!    write transaction), so no cancellation and no crash can separate
//!    them. A claim dropped without committing (cancelled, failed before
//!    applying, deadline passed) leaves no record, so a retry executes.
//!
//! # What is recorded
//! Only executions. A *transient* failure before applying (injected
//! UNAVAILABLE, deadline passed, cancellation, storage error) records
//! nothing, so the retry it invites can execute. Errors that depend on the
//! payload alone (empty register name, NaN delta) are refused before the
//! claim and never recorded: re-checking them is free and gives the same
//! answer. Rule errors that depend on *state* (`RegisterOverflow`,
//! `TooManyRegisters`) are outcomes of a real execution and *are* recorded
//! and replayed: one request ID gets one answer, so a client never sees
//! "overflow" on one attempt and "applied" on the next, which would mean its
//! one logical call both failed and took effect.
//! A response dropped after the commit (the apply-then-drop fault) is the
//! case the store exists for: the retry finds the record and replays it.
//!
//! # Duplicates in flight: wait, not ABORTED
//! A retry often arrives while the first attempt is still executing: the
//! client timed out *because* the server was slow (the injected delay sits
//! between claim and commit). Such a duplicate joins: it waits (a
//! `tokio::sync::Notify` per claim) until the claim is committed, then
//! replays the record; if the claim is dropped instead, one waiter takes the
//! claim over and executes. Answering ABORTED with pushback instead would
//! fail precisely the retries this feature exists for, cost another round
//! trip each, and turn a slow request into a retry storm; waiting costs one
//! parked task, bounded by the duplicate's own deadline and by
//! [`DedupConfig::join_wait_ms_max`], after which it is answered ABORTED
//! *without* the not-applied marker (the first execution may still apply).
//! A duplicate with a different payload is refused at once, not joined.
//!
//! # Retention, and what it means for clients
//! Records are evicted oldest first (FIFO by commit, which is also the order
//! in which a record stops being useful) when the store holds
//! [`DedupConfig::entries_max`], and expire [`DedupConfig::ttl_ms`] after
//! their commit, lazily, on the next lookup or insert. Memory is therefore
//! bounded under any load; the price is that the guarantee is bounded too:
//! a retry that arrives after its record left executes *again*. Effective
//! retention is `min(ttl, entries_max / rate of new IDs)`: with the defaults
//! (1,000,000 records, 10 min) the TTL binds up to about 1,666 new IDs per
//! second. A client's whole retry window (its overall deadline, backoff
//! included) must stay well below that; `dedup_evictions` in `GetStats` and
//! `dedup-evicted ... (capacity)` trace lines tell an operator when capacity,
//! not the TTL, is binding. An ID may be reused once its record expired: it
//! is then a new request.
//!
//! # Durability
//! In-memory mode (the default) loses registers and records on restart:
//! registers reset to nothing, and a retry of a request applied before the
//! restart applies again. With `--data-dir` both are persisted (see
//! [`crate::store::redb::file`]) and a restart keeps the guarantee; the TTL of
//! reloaded records restarts at load time.

pub mod config;
pub mod key;
mod record;
pub mod store;

pub use config::{DedupConfig, DedupConfigError};
pub use key::{
    DigestKey, IdDigest, REQUEST_ID_BYTES_MAX, fingerprint, reused, validate_request_id,
};
pub use store::{
    DedupStats, DedupStore, EvictReason, Evicted, Lookup, OwnerKey, RestoreError, StoredOutcome,
};
