//! [`RemoteLedger`]: a replica's [`Ledger`] over the store protocol, built
//! the way the PostgreSQL ledger is built over SQL, so that what the
//! simulation proves about replicas over this model transfers to replicas
//! over PostgreSQL:
//! - payload checks and duplicates *within one replica* are settled in
//!   process first (PostgreSQL's ledger: its `flights` table), here by an
//!   in-memory ledger that is never committed — its claim table is exactly
//!   the in-memory ledger's, waits, mismatch errors and limits included;
//! - a keyed `Accumulate` then opens a connection and sends `Begin`: the
//!   store answers the record, or the claim, which the connection holds
//!   until `Commit` (or until it is dropped: a rollback);
//! - every store call is bounded by the caller's deadline and an
//!   operation timeout; waiting for a duplicate elsewhere by the same bound
//!   as a local join;
//! - failures answer as PostgreSQL's ledger does: certainly not applied
//!   before `Commit` was sent (or `DEADLINE_EXCEEDED` when that was the
//!   caller's deadline), an **unknown** fate once it may have arrived, and
//!   ABORTED (still in flight) when a duplicate's wait ran out;
//! - the counters a replica reports are its own (replays, mismatches,
//!   applies), the registers' count the store's.
//!
//! It emits no event of its own: the store host reports every apply and
//! replay once, where it happens, so checks count each exactly once.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use abacus::{
    core,
    error::ServiceError,
    server::DedupConfig,
    store::{
        AccumulateArgs, Accumulated, Backend, Begin, BoxFuture, Claim, Ledger, StatsView, WriteFate,
    },
    trace::EventSink,
};
use futures_util::FutureExt;
use tokio::time::Instant;
use turmoil::net::TcpStream;

use crate::world::store::{
    HOST, MemoryLedger, PORT,
    wire::{Reply, Request, read_frame, write_frame},
};

/// A replica bug, deliberately injected for a negative control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaBug {
    /// Reads are served from a per-replica cache, filled by this replica's
    /// first read of a register and updated only by its own writes: another
    /// replica's acknowledged write stays invisible here.
    StaleReads,
    /// A commit whose reply is lost (the store dropped the connection after
    /// `Commit` was sent) is answered as certainly not applied.
    LostReplyIsNotApplied,
}

/// A replica's store connections open now and at most so far: its store
/// work in flight (a claim holds its connection until its commit). Kept
/// outside the replica's host, so it spans the replica's restarts.
#[derive(Debug, Default)]
pub struct StoreCalls {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl StoreCalls {
    /// The most connections open at once so far.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    fn opened(&self) {
        let now = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn closed(&self) {
        self.now.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a replica talks to the store.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Longest any one store call may take, whatever the caller's deadline
    /// (the PostgreSQL ledger's `op_timeout`).
    pub op_timeout: Duration,
    /// Dedup limits: the local claim table's, and the join bound.
    pub dedup: DedupConfig,
    /// A bug to inject, if any.
    pub bug: Option<ReplicaBug>,
    /// Where to count this replica's open store connections, if anywhere.
    pub calls: Option<Arc<StoreCalls>>,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            // The PostgreSQL ledger's default, which the store guard's
            // per-call bound sets.
            op_timeout: abacus::store::postgres::config::OP_TIMEOUT_DEFAULT,
            dedup: DedupConfig::default(),
            bug: None,
            calls: None,
        }
    }
}

/// Which limit ended a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// The caller's deadline.
    Caller,
    /// The operation timeout, or a duplicate's join bound.
    Store,
}

/// When a store call must end, and which limit that is: the PostgreSQL
/// ledger's rule (its own `Budget` is private to it).
#[derive(Debug, Clone, Copy)]
struct Budget {
    at: Instant,
    limit: Limit,
}

impl Budget {
    /// The earlier of `deadline` and `op_timeout` from now.
    fn new(deadline: Option<Instant>, op_timeout: Duration) -> Self {
        let store = Instant::now() + op_timeout;
        match deadline {
            Some(at) if at <= store => Self {
                at,
                limit: Limit::Caller,
            },
            _ => Self {
                at: store,
                limit: Limit::Store,
            },
        }
    }

    async fn run<T>(self, fut: impl Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
        tokio::time::timeout_at(self.at, fut)
            .await
            .map_err(|_| Failure::Expired(self.limit))?
    }
}

/// What went wrong talking to the store.
#[derive(Debug)]
enum Failure {
    /// The connection could not be made, or broke.
    Io,
    /// The store closed the connection before answering.
    Closed,
    /// The store answered something that is not a reply.
    Malformed,
    /// The store answered a reply that does not fit the request.
    Unexpected,
    /// A budget ended first.
    Expired(Limit),
}

impl Failure {
    /// Nothing was committed: nothing was sent, or the transaction ends
    /// without `Commit`.
    fn not_applied(self) -> ServiceError {
        match self {
            Self::Expired(Limit::Caller) => ServiceError::DeadlineExceeded,
            _ => ServiceError::StoreUnavailable {
                fate: WriteFate::NotApplied,
            },
        }
    }

    /// `Commit` may have reached the store.
    fn unknown(self) -> ServiceError {
        ServiceError::StoreUnavailable {
            fate: WriteFate::Unknown,
        }
    }
}

/// One connection to the store, counted while open.
#[derive(Debug)]
struct Conn(TcpStream, Option<Arc<StoreCalls>>);

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(calls) = &self.1 {
            calls.closed();
        }
    }
}

impl Conn {
    async fn open(calls: &Option<Arc<StoreCalls>>) -> Result<Self, Failure> {
        let stream = TcpStream::connect((HOST, PORT))
            .await
            .map_err(|_| Failure::Io)?;
        if let Some(c) = calls {
            c.opened();
        }
        Ok(Self(stream, calls.clone()))
    }

    async fn call(&mut self, request: &Request) -> Result<Reply, Failure> {
        write_frame(&mut self.0, &request.encode())
            .await
            .map_err(|_| Failure::Io)?;
        let body = read_frame(&mut self.0)
            .await
            .map_err(|_| Failure::Io)?
            .ok_or(Failure::Closed)?;
        Reply::decode(&body).map_err(|_| Failure::Malformed)
    }

    /// True when the store has already closed the connection (or sent
    /// something unasked): PostgreSQL's ledger checks the same before
    /// sending `COMMIT`, since a closed connection cannot commit.
    fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        self.0.peek(&mut byte).now_or_never().is_some()
    }
}

/// A replica's ledger over the store protocol: see the module doc.
#[derive(Debug)]
pub struct RemoteLedger {
    /// Duplicates within this replica meet here; never committed, so it
    /// holds claims only, never a record or a register.
    local: MemoryLedger,
    config: RemoteConfig,
    hits: AtomicU64,
    /// Mismatches the store reported (the local ones are `local`'s).
    mismatches: AtomicU64,
    applied: AtomicU64,
    /// [`ReplicaBug::StaleReads`] only.
    cache: Mutex<BTreeMap<String, f64>>,
}

impl RemoteLedger {
    /// A ledger reaching the store host, reporting its local duplicates to
    /// `events`.
    pub fn new(config: RemoteConfig, events: EventSink) -> Self {
        Self {
            local: MemoryLedger::new(config.dedup.clone(), events),
            config,
            hits: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            cache: Mutex::default(),
        }
    }

    fn has_bug(&self, bug: ReplicaBug) -> bool {
        self.config.bug == Some(bug)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, f64>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A mismatch the store reported is this replica's to count.
    fn seen(&self, e: ServiceError) -> ServiceError {
        if matches!(e, ServiceError::RequestIdReused { .. }) {
            Self::count(&self.mismatches);
        }
        e
    }

    /// `Begin` at the store for a request claimed locally.
    async fn begin_keyed<'a>(
        &'a self,
        args: &'a AccumulateArgs,
        deadline: Option<Instant>,
        local: Box<dyn Claim<'a> + 'a>,
    ) -> Result<Begin<'a>, ServiceError> {
        let now = Instant::now();
        let join_until = {
            let cap = now + self.config.dedup.join_wait_max();
            deadline.map_or(cap, |d| d.min(cap))
        };
        let budget = Budget::new(deadline, self.config.op_timeout);
        let mut conn = budget
            .run(Conn::open(&self.config.calls))
            .await
            .map_err(Failure::not_applied)?;
        // Waiting for a duplicate elsewhere may take as long as a local
        // join would, and never less than an ordinary call.
        let wait = if join_until > budget.at {
            Budget {
                at: join_until,
                limit: Limit::Store,
            }
        } else {
            budget
        };
        let wait_ms = join_until.saturating_duration_since(now).as_millis().max(1) as u64;
        let request = Request::Begin {
            args: args.clone(),
            wait_ms,
        };
        match wait.run(conn.call(&request)).await {
            Ok(Reply::Claimed) => Ok(Begin::Execute(Box::new(RemoteClaim {
                ledger: self,
                args,
                deadline,
                conn: Some(conn),
                local,
            }))),
            // Dropping `local` here wakes local duplicates, which go to the
            // store and replay the record in turn.
            Ok(Reply::Replay(result)) => {
                Self::count(&self.hits);
                Ok(Begin::Replay(result))
            }
            Ok(Reply::Failed(e)) => Err(self.seen(e)),
            Ok(_) => Err(Failure::Unexpected.not_applied()),
            // The wait for a duplicate (or a store too slow to tell) ran
            // out: the execution elsewhere may yet apply.
            Err(Failure::Expired(_)) => Err(ServiceError::StillInFlight {
                request_id: args.request_id.clone(),
            }),
            Err(f) => Err(f.not_applied()),
        }
    }
}

/// The right to execute one `Accumulate` at the store: the local claim,
/// and for a keyed request the connection holding the store's claim.
#[derive(Debug)]
struct RemoteClaim<'a> {
    ledger: &'a RemoteLedger,
    args: &'a AccumulateArgs,
    deadline: Option<Instant>,
    /// `None` until commit for a request without an ID (nothing to hold).
    conn: Option<Conn>,
    /// Released after the store's answer (field order: the connection
    /// closes first, so a local duplicate woken by this finds the store's
    /// claim released or about to be).
    local: Box<dyn Claim<'a> + 'a>,
}

impl<'a> Claim<'a> for RemoteClaim<'a> {
    fn request_id(&self) -> &str {
        &self.args.request_id
    }

    fn commit(self: Box<Self>) -> BoxFuture<'a, Result<Accumulated, ServiceError>> {
        Box::pin(self.run())
    }
}

impl RemoteClaim<'_> {
    async fn run(self) -> Result<Accumulated, ServiceError> {
        let Self {
            ledger,
            args,
            deadline,
            conn,
            local,
        } = self;
        let budget = Budget::new(deadline, ledger.config.op_timeout);
        let mut conn = match conn {
            Some(conn) => conn,
            // No ID: the transaction begins only now.
            None => {
                let mut conn = budget
                    .run(Conn::open(&ledger.config.calls))
                    .await
                    .map_err(Failure::not_applied)?;
                let begin = Request::Begin {
                    args: args.clone(),
                    wait_ms: 1,
                };
                match budget.run(conn.call(&begin)).await {
                    Ok(Reply::Claimed) => conn,
                    Ok(Reply::Failed(e)) => return Err(e),
                    Ok(_) => return Err(Failure::Unexpected.not_applied()),
                    Err(f) => return Err(f.not_applied()),
                }
            }
        };
        // A connection the store already closed cannot commit.
        if conn.is_closed() {
            return Err(Failure::Closed.not_applied());
        }
        let result = match budget.run(conn.call(&Request::Commit)).await {
            Ok(Reply::Committed(result)) => result,
            Ok(_) => Err(Failure::Unexpected.unknown()),
            Err(Failure::Closed | Failure::Io)
                if ledger.has_bug(ReplicaBug::LostReplyIsNotApplied) =>
            {
                // BROKEN: the store may well have committed.
                Err(Failure::Closed.not_applied())
            }
            // Sent, and no answer: it may have committed. A retry under the
            // same request ID finds out.
            Err(f) => Err(f.unknown()),
        };
        drop(conn);
        drop(local);
        if let Ok(a) = &result {
            RemoteLedger::count(&ledger.applied);
            if ledger.has_bug(ReplicaBug::StaleReads) {
                ledger.cache().insert(args.register.clone(), a.value);
            }
        }
        result
    }
}

impl Ledger for RemoteLedger {
    fn begin<'a>(
        &'a self,
        args: &'a AccumulateArgs,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Begin<'a>, ServiceError>> {
        Box::pin(async move {
            // Payload checks, then duplicates within this replica.
            let local = match Ledger::begin(&self.local, args, deadline).await? {
                Begin::Execute(local) => local,
                // Nothing is ever recorded locally; were it, it would be
                // an answer like any other.
                Begin::Replay(result) => return Ok(Begin::Replay(result)),
            };
            if args.request_id.is_empty() || !self.config.dedup.enabled {
                return Ok(Begin::Execute(Box::new(RemoteClaim {
                    ledger: self,
                    args,
                    deadline,
                    conn: None,
                    local,
                })));
            }
            self.begin_keyed(args, deadline, local).await
        })
    }

    fn get<'a>(
        &'a self,
        register: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<f64, ServiceError>> {
        Box::pin(async move {
            core::validate_register_name(register)?;
            let stale = self.has_bug(ReplicaBug::StaleReads);
            if stale && let Some(v) = self.cache().get(register) {
                return Ok(*v);
            }
            let budget = Budget::new(deadline, self.config.op_timeout);
            let reply = budget
                .run(async {
                    let mut conn = Conn::open(&self.config.calls).await?;
                    conn.call(&Request::Get {
                        register: register.to_owned(),
                    })
                    .await
                })
                .await;
            match reply {
                Ok(Reply::Value(v)) => {
                    if stale {
                        self.cache().insert(register.to_owned(), v);
                    }
                    Ok(v)
                }
                Ok(Reply::Failed(e)) => Err(e),
                Ok(_) => Err(Failure::Unexpected.not_applied()),
                Err(f) => Err(f.not_applied()),
            }
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<StatsView, ServiceError>> {
        Box::pin(async move {
            let budget = Budget::new(None, self.config.op_timeout);
            let reply = budget
                .run(async {
                    let mut conn = Conn::open(&self.config.calls).await?;
                    conn.call(&Request::Stats).await
                })
                .await;
            let store = match reply {
                Ok(Reply::Stats(s)) => s,
                Ok(Reply::Failed(e)) => return Err(e),
                Ok(_) => return Err(Failure::Unexpected.not_applied()),
                Err(f) => return Err(f.not_applied()),
            };
            let local = self.local.stats();
            let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
            Ok(StatsView {
                dedup_hits: load(&self.hits),
                dedup_mismatches: local.dedup_mismatches + load(&self.mismatches),
                dedup_in_flight: local.dedup_in_flight,
                applied: load(&self.applied),
                ..store
            })
        })
    }

    fn backend(&self) -> Backend {
        Backend::Model
    }
}
