//! The PostgreSQL ledger (`abacus serve --store postgres://…`): registers
//! and dedup records in one database that any number of replicas share.
//!
//! # Exactly once across replicas
//! One transaction per `Accumulate` holds both halves:
//! 1. `begin` sends `BEGIN` and inserts the request's row into
//!    `abacus_requests` (primary key `(scope, id)`). That row, uncommitted,
//!    *is* the claim: a duplicate arriving at another replica inserts the
//!    same key and PostgreSQL makes it wait on the row lock until the first
//!    transaction ends — then it finds the record and replays it (first
//!    committed) or inserts and executes (first rolled back). Its wait is
//!    bounded by `SET LOCAL lock_timeout`; when that fires, it answers
//!    [`ServiceError::StillInFlight`] as the in-memory ledger does.
//! 2. `commit` locks the register's row, plans the update with the same
//!    rule as every backend ([`crate::core::plan_accumulate`]), writes the
//!    register and turns the claim row into the record of the outcome, then
//!    sends `COMMIT`. Both halves commit, or neither.
//! 3. Dropping the claim closes its connection: PostgreSQL rolls back and
//!    the waiting duplicate takes over.
//!
//! Inside one process duplicates meet in a small table first
//! (`flights`), exactly as in the in-memory ledger, so they neither hold
//! connections while waiting nor behave differently from it.
//!
//! # Commit ambiguity
//! A failure before `COMMIT` is sent answers
//! `StoreUnavailable { fate: NotApplied }` (or `DeadlineExceeded` when it
//! was the caller's deadline). Once `COMMIT` may have reached the server, a
//! lost connection or a timer answers `StoreUnavailable { fate: Unknown }`,
//! without the not-applied marker: a retry under the same request ID
//! resolves it, replayed if the commit happened, executed if not.
//!
//! # Time bounds
//! Every call is bounded by the earlier of the caller's deadline and
//! [`PgConfig::op_timeout`], on both sides of the wire: tokio timers here
//! (the connection is then discarded, never returned to the pool
//! mid-statement), and `lock_timeout` on the server, so a statement
//! waiting for a row lock stops by itself even if the client is gone.
//! `lock_timeout` rather than `statement_timeout` because row locks are the
//! only unbounded server-side waits in these statements, and because it
//! tells a lock wait (a duplicate executing elsewhere) from a slow server.
//! Waiting for a duplicate elsewhere is bounded like the in-memory join:
//! the caller's deadline and `DedupConfig::join_wait_ms_max`.
//!
//! # Retention
//! The same [`DedupConfig`] limits as in memory, with the same rule: a
//! record is dead once older than the TTL or beyond the newest
//! `entries_max`. Lookups apply the rule in the claim statement, so answers
//! never depend on when the sweeper last ran; the sweeper (`sweep`)
//! deletes dead rows in bounded batches off the request path. As
//! everywhere, a client's whole retry window must be shorter than the
//! retention. "Now" is the database server's clock, shared by all replicas.
//!
//! # Portability
//! Tested: PostgreSQL 15. Not tested: CockroachDB and YugabyteDB, which the
//! SQL is written for (see [`sql`]: no advisory locks, no LISTEN/NOTIFY, no
//! PostgreSQL-only types, an `IF NOT EXISTS` schema with a version table);
//! on those, serialization failures at COMMIT answer not-applied and the
//! retry re-executes.
//!
//! # Why deadpool-postgres
//! A pool is needed (a claim holds its connection across the caller's work,
//! so connections cannot be shared per statement). deadpool-postgres over
//! bb8: it can take a connection *out* of the pool (`conn::TxConn` relies
//! on that to never return one mid-transaction), it caches prepared
//! statements per connection, and it is small (deadpool, with default
//! features off: its timeouts are ours, bounded by each caller's deadline).
//!
//! # Layout
//! - [`config`]: [`PgConfig`], the URL and bounds; [`RetentionClock`].
//! - [`sql`]: every statement, and the schema.
//! - [`schema`]: versioned, idempotent migration at start-up.
//! - `claim`: the claim and its commit.
//! - `delete`: removing a register (`DeleteRegister`).
//! - `conn`: a pooled connection that never returns mid-transaction.
//! - `flights`: duplicates within this process.
//! - `failure`: time budgets; store failures to service errors.
//! - `sweep`: retention in bounded batches.

pub mod config;
pub mod schema;

mod claim;
mod conn;
mod delete;
mod failure;
mod flights;
pub mod sql;
mod sweep;

pub use config::{ManualClock, PgConfig, PgUrlError, RetentionClock};
pub use schema::{SCHEMA_VERSION, SchemaError};

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::future::join;
use tokio::time::Instant;
use tokio_postgres::{NoTls, error::SqlState};

use crate::{
    core,
    error::{CalcError, ServiceError},
    store::dedup::{DedupConfig, StoredOutcome, fingerprint, reused, validate_request_id},
    store::{AccumulateArgs, Accumulated, Backend, Begin, BoxFuture, Ledger, StatsView},
    trace::{Event, EventSink},
};

use self::{
    claim::{Keyed, PgClaim},
    conn::TxConn,
    failure::{Budget, Failure, Limit},
    flights::{Entry, FlightGuard, Flights},
    sweep::Sweeper,
};

/// Pushback suggested when this process's executions in flight are at
/// their cap, as the in-memory ledger does.
const IN_FLIGHT_PUSHBACK_MS: u64 = 100;

/// Why the ledger could not start. Every message names what to fix and
/// the target as `user@host:port/database`, never the password.
#[derive(Debug, thiserror::Error)]
pub enum PgStartError {
    /// No connection: wrong host or port, server down, network.
    #[error(
        "cannot connect to PostgreSQL at {target}: {cause}; check the host and port in --store and that the server is running"
    )]
    Unreachable {
        /// Where.
        target: String,
        /// The driver's description.
        cause: String,
    },
    /// The server refused the login.
    #[error(
        "PostgreSQL at {target} refused the login: {message}; check the user name and password in --store"
    )]
    Login {
        /// Where.
        target: String,
        /// The server's message.
        message: String,
    },
    /// The database named in the URL does not exist.
    #[error(
        "database {db:?} does not exist on PostgreSQL at {target}: create it (e.g. createdb {db}) or fix the database name in --store"
    )]
    NoDatabase {
        /// Where.
        target: String,
        /// The missing database.
        db: String,
    },
    /// Connected, then refused (permissions, a read-only server, …).
    #[error("PostgreSQL at {target} refused: {message}")]
    Refused {
        /// Where.
        target: String,
        /// The server's message.
        message: String,
    },
    /// No answer in time.
    #[error("PostgreSQL at {target} did not answer within {ms} ms ({what})")]
    Timeout {
        /// Where.
        target: String,
        /// What was being done.
        what: &'static str,
        /// The limit.
        ms: u64,
    },
    /// The schema could not be brought up to date.
    #[error("PostgreSQL at {target}: {source}")]
    Schema {
        /// Where.
        target: String,
        /// Why.
        source: SchemaError,
    },
}

impl PgStartError {
    fn from_driver(target: String, e: &tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            // The driver's top line is generic ("error connecting to
            // server"); the cause underneath says what happened.
            let mut cause = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                cause.push_str(": ");
                cause.push_str(&s.to_string());
                source = s.source();
            }
            return Self::Unreachable { target, cause };
        };
        let message = db.message().to_owned();
        match db.code() {
            c if *c == SqlState::INVALID_PASSWORD
                || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION =>
            {
                Self::Login { target, message }
            }
            c if *c == SqlState::INVALID_CATALOG_NAME => Self::NoDatabase {
                db: target.rsplit('/').next().unwrap_or_default().to_owned(),
                target,
            },
            _ => Self::Refused { target, message },
        }
    }
}

/// Counters of this process (see [`StatsView`] for which are whose).
#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    mismatches: AtomicU64,
    applied: AtomicU64,
    /// Shared with the sweeper, which does the evicting.
    evictions: Arc<AtomicU64>,
    /// Of those, records deleted inside their TTL (beyond their client's
    /// newest `entries_per_client_max`).
    evictions_early: Arc<AtomicU64>,
}

/// Registers and dedup records in PostgreSQL: see the module doc.
pub struct PgLedger {
    pool: Pool,
    config: PgConfig,
    dedup: DedupConfig,
    flights: Flights,
    events: EventSink,
    counters: Counters,
    /// Set once the TTL warning was logged (it is about configuration).
    ttl_warned: AtomicBool,
    /// Aborted on drop: the sweeper lives exactly as long as the ledger.
    sweeper: tokio::task::AbortHandle,
}

impl fmt::Debug for PgLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLedger")
            .field("target", &self.config.target())
            .field("in_flight", &self.flights.len())
            .finish_non_exhaustive()
    }
}

impl Drop for PgLedger {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}

impl PgLedger {
    /// Connects, brings the schema up to date (safe while other replicas
    /// do the same) and starts the retention sweeper. Fails with a message
    /// naming what to fix when the server cannot be reached, refuses the
    /// login or lacks the database. Must run inside a tokio runtime.
    pub async fn connect(
        config: PgConfig,
        dedup: DedupConfig,
        events: EventSink,
    ) -> Result<Self, PgStartError> {
        let target = config.target();
        let manager = Manager::from_config(
            config.session(),
            NoTls,
            ManagerConfig {
                // Only is_closed(): connections come back only after a
                // clean COMMIT or ROLLBACK (conn::TxConn), never dirty.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_max.max(1))
            .build()
            // Only a timeout without a runtime feature can fail to build,
            // and none is configured.
            .map_err(|e| PgStartError::Refused {
                target: target.clone(),
                message: e.to_string(),
            })?;
        let limit = config.connect_timeout;
        let timeout = |what| PgStartError::Timeout {
            target: target.clone(),
            what,
            ms: limit.as_millis() as u64,
        };
        let conn = match tokio::time::timeout(limit, pool.get()).await {
            Err(_) => return Err(timeout("connecting")),
            Ok(Ok(conn)) => conn,
            Ok(Err(deadpool_postgres::PoolError::Backend(e))) => {
                return Err(PgStartError::from_driver(target, &e));
            }
            Ok(Err(e)) => {
                return Err(PgStartError::Unreachable {
                    target,
                    cause: e.to_string(),
                });
            }
        };
        let found = match tokio::time::timeout(limit, schema::migrate(&conn)).await {
            Err(_) => return Err(timeout("migrating the schema")),
            Ok(result) => result.map_err(|source| PgStartError::Schema {
                target: target.clone(),
                source,
            })?,
        };
        drop(conn);
        tracing::info!(
            target = %target,
            schema_version = SCHEMA_VERSION,
            schema_version_found = found,
            pool_max = config.pool_max,
            "PostgreSQL ledger ready: registers and dedup records shared by every replica on this database"
        );
        let counters = Counters::default();
        let sweeper = Sweeper::new(
            &pool,
            &config,
            &dedup,
            &counters.evictions,
            &counters.evictions_early,
        );
        let sweeper = tokio::spawn(sweeper.run()).abort_handle();
        Ok(Self {
            pool,
            flights: Flights::new(dedup.in_flight_max),
            config,
            dedup,
            events,
            counters,
            ttl_warned: AtomicBool::new(false),
            sweeper,
        })
    }

    /// Runs one retention pass now (the sweeper's job, for tests and
    /// tools); returns the number of records deleted.
    pub async fn sweep_now(&self) -> Result<u64, ServiceError> {
        Sweeper::new(
            &self.pool,
            &self.config,
            &self.dedup,
            &self.counters.evictions,
            &self.counters.evictions_early,
        )
        .sweep()
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "dedup sweep failed");
            ServiceError::StoreUnavailable {
                fate: crate::store::WriteFate::NotApplied,
            }
        })
    }

    /// A pooled connection within `budget`.
    async fn connection(&self, budget: Budget) -> Result<TxConn, Failure> {
        let conn = budget.run(self.pool.get()).await??;
        Ok(TxConn::new(conn))
    }

    /// One read-only statement outside any transaction: at most one row.
    async fn read(
        &self,
        op: &'static str,
        budget: Budget,
        statement: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, ServiceError> {
        let conn = self
            .connection(budget)
            .await
            .map_err(|f| f.not_applied(op))?;
        let row = budget
            .run(async {
                let st = conn.prepare_cached(statement).await?;
                Ok::<_, Failure>(conn.query_opt(&st, params).await?)
            })
            .await
            .and_then(|row| row)
            .map_err(|f| f.not_applied(op))?;
        // Only once the statement completed: an abandoned one closes it.
        conn.release();
        Ok(row)
    }

    /// Bookkeeping after a successful COMMIT.
    fn committed(&self, args: &AccumulateArgs, result: &Result<f64, CalcError>) {
        if let Ok(value) = result {
            self.counters.applied.fetch_add(1, Ordering::Relaxed);
            self.events.emit(Event::Applied {
                request_id: args.request_id.clone(),
                register: args.register.clone(),
                delta: args.delta,
                value: *value,
            });
        }
    }

    /// A retry arriving after its record expired applies again: say so
    /// once when a caller's deadline is longer than the TTL (as the
    /// in-memory ledger does).
    fn warn_if_deadline_outlives_records(&self, deadline: Option<Instant>) {
        let Some(deadline) = deadline else { return };
        let wait = deadline.saturating_duration_since(Instant::now());
        let ttl = self.dedup.ttl();
        if wait > ttl && !self.ttl_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                caller_deadline_ms = wait.as_millis() as u64,
                dedup_ttl_ms = ttl.as_millis() as u64,
                "a caller's deadline is longer than the dedup TTL: a retry arriving after its \
                 record expires would be applied again; shorten client deadlines or raise --dedup-ttl-ms"
            );
        }
    }

    fn mismatch(&self, args: &AccumulateArgs, first: u64, this: u64) -> ServiceError {
        self.counters.mismatches.fetch_add(1, Ordering::Relaxed);
        self.events.emit(Event::DedupMismatch {
            request_id: args.request_id.clone(),
        });
        reused(args, first, this)
    }

    async fn begin_keyed<'a>(
        &'a self,
        args: &'a AccumulateArgs,
        deadline: Option<Instant>,
    ) -> Result<Begin<'a>, ServiceError> {
        self.warn_if_deadline_outlives_records(deadline);
        let fingerprint = fingerprint(&args.register, args.delta);
        let join_until = {
            let cap = Instant::now() + self.dedup.join_wait_max();
            deadline.map_or(cap, |d| d.min(cap))
        };
        let still_in_flight = || ServiceError::StillInFlight {
            request_id: args.request_id.clone(),
        };
        let mut joined = false;
        let flight = loop {
            match self
                .flights
                .enter(args.caller.scope(), &args.request_id, fingerprint)
            {
                Entry::Entered(flight) => break flight,
                Entry::Mismatch { first } => return Err(self.mismatch(args, first, fingerprint)),
                Entry::Full { in_flight } => {
                    return Err(ServiceError::Overloaded {
                        in_flight,
                        limit: self.flights.max(),
                        pushback_ms: IN_FLIGHT_PUSHBACK_MS,
                    });
                }
                Entry::Join(done) => {
                    if !joined {
                        self.events.emit(Event::DedupJoined {
                            request_id: args.request_id.clone(),
                        });
                    }
                    joined = true;
                    if tokio::time::timeout_at(join_until, done).await.is_err() {
                        return Err(still_in_flight());
                    }
                    // Ended: look again (here, then in the database).
                }
            }
        };
        let budget = Budget::new(deadline, self.config.op_timeout);
        let conn = self
            .connection(budget)
            .await
            .map_err(|f| f.not_applied("begin"))?;
        // The claim may wait for another replica's execution of the same
        // ID: as long as a local duplicate would (join_until), and never
        // less than an ordinary call.
        let wait = if join_until > budget.at {
            Budget {
                at: join_until,
                limit: if Some(join_until) == deadline {
                    Limit::Caller
                } else {
                    Limit::Store
                },
            }
        } else {
            budget
        };
        let lock_ms = join_until
            .saturating_duration_since(Instant::now())
            .as_millis()
            .max(1);
        let begin = format!("BEGIN; SET LOCAL lock_timeout = '{lock_ms}ms'");
        let scope = args.caller.scope();
        let fp = fingerprint as i64;
        let now = self.config.clock.now_ms();
        let ttl = i64::try_from(self.dedup.ttl().as_millis()).unwrap_or(i64::MAX);
        let entries = self.dedup.entries_per_client_max() as i64;
        let owner = args.caller.quota_key().to_string();
        let claimed = wait
            .run(async {
                let (begun, row) = join(conn.batch_execute(&begin), async {
                    let st = conn.prepare_cached(sql::CLAIM).await?;
                    conn.query_opt(
                        &st,
                        &[&scope, &args.request_id, &fp, &now, &ttl, &entries, &owner],
                    )
                    .await
                })
                .await;
                begun?;
                Ok::<_, Failure>(row?.is_some())
            })
            .await
            .and_then(|claimed| claimed);
        match claimed {
            Ok(true) => Ok(Begin::Execute(Box::new(PgClaim {
                ledger: self,
                args,
                deadline,
                keyed: Some(Keyed { conn, flight }),
            }))),
            Ok(false) => self.replay(conn, flight, args, fingerprint, budget).await,
            // Waited for the row lock of an execution elsewhere (or for a
            // store too slow to tell): it may yet apply.
            Err(f) if f.is_lock_timeout() || matches!(f, Failure::Expired(_)) => {
                f.log("begin (waiting for a duplicate)");
                Err(still_in_flight())
            }
            Err(f) => Err(f.not_applied("begin")),
        }
    }

    /// A live record exists (its row is locked by this transaction): read
    /// it, roll back, answer from it.
    async fn replay<'a>(
        &'a self,
        conn: TxConn,
        flight: FlightGuard<'a>,
        args: &'a AccumulateArgs,
        fingerprint: u64,
        budget: Budget,
    ) -> Result<Begin<'a>, ServiceError> {
        let scope = args.caller.scope();
        let read = budget
            .run(async {
                // Prepared first, so the SELECT is sent before the ROLLBACK.
                let st = conn.prepare_cached(sql::RECORD).await?;
                let (row, rolled_back) = join(
                    conn.query_opt(&st, &[&scope, &args.request_id]),
                    conn.batch_execute("ROLLBACK"),
                )
                .await;
                Ok::<_, Failure>((row?, rolled_back.is_ok()))
            })
            .await
            .and_then(|read| read);
        let (row, rolled_back) = read.map_err(|f| f.not_applied("begin (reading a record)"))?;
        if rolled_back {
            conn.release();
        }
        drop(flight);
        let row = row.ok_or_else(|| {
            Failure::Unexpected("a locked live record vanished").not_applied("begin")
        })?;
        let (first, outcome, value): (i64, Option<i16>, Option<f64>) = (
            row.try_get(0)
                .map_err(|e| Failure::Db(e).not_applied("begin"))?,
            row.try_get(1)
                .map_err(|e| Failure::Db(e).not_applied("begin"))?,
            row.try_get(2)
                .map_err(|e| Failure::Db(e).not_applied("begin"))?,
        );
        let first = first as u64;
        if first != fingerprint {
            return Err(self.mismatch(args, first, fingerprint));
        }
        let outcome = match (outcome, value) {
            (Some(o), Some(v)) => claim::decode(o, v).map_err(|f| f.not_applied("begin"))?,
            _ => {
                return Err(
                    Failure::Unexpected("a committed record without its outcome")
                        .not_applied("begin"),
                );
            }
        };
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        self.events.emit(Event::DedupHit {
            request_id: args.request_id.clone(),
            value: outcome.value(),
        });
        Ok(Begin::Replay(replayed(outcome, args)))
    }
}

/// The answer a replay gives: the first outcome, for this (identical)
/// payload.
fn replayed(outcome: StoredOutcome, args: &AccumulateArgs) -> Result<Accumulated, ServiceError> {
    outcome
        .result(&args.register, args.delta)
        .map(|value| Accumulated {
            value,
            replayed: true,
        })
        .map_err(ServiceError::from)
}

impl Ledger for PgLedger {
    fn begin<'a>(
        &'a self,
        args: &'a AccumulateArgs,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Begin<'a>, ServiceError>> {
        Box::pin(async move {
            // Payload errors first, before any claim, as everywhere.
            core::validate_accumulate(&args.register, args.delta)?;
            if !args.request_id.is_empty() {
                validate_request_id(&args.request_id)?;
            }
            if args.request_id.is_empty() || !self.dedup.enabled {
                return Ok(Begin::Execute(Box::new(PgClaim {
                    ledger: self,
                    args,
                    deadline,
                    keyed: None,
                })));
            }
            self.begin_keyed(args, deadline).await
        })
    }

    fn get<'a>(
        &'a self,
        register: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<f64, ServiceError>> {
        Box::pin(async move {
            core::validate_register_name(register)?;
            let budget = Budget::new(deadline, self.config.op_timeout);
            let row = self.read("get", budget, sql::GET, &[&register]).await?;
            match row {
                Some(row) => row
                    .try_get::<_, f64>(0)
                    .map_err(|e| Failure::Db(e).not_applied("get")),
                None => Err(CalcError::UnknownRegister(register.to_owned()).into()),
            }
        })
    }

    fn delete<'a>(
        &'a self,
        register: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Option<f64>, ServiceError>> {
        Box::pin(async move {
            core::validate_register_name(register)?;
            self.delete_register(register, deadline).await
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<StatsView, ServiceError>> {
        Box::pin(async move {
            let budget = Budget::new(None, self.config.op_timeout);
            let row = self
                .read("stats", budget, sql::STATS, &[])
                .await?
                .ok_or_else(|| Failure::Unexpected("no stats row").not_applied("stats"))?;
            let cell = |i| {
                row.try_get::<_, Option<i64>>(i)
                    .map_err(|e| Failure::Db(e).not_applied("stats"))
            };
            let (registers, lowest, highest) = (cell(0)?, cell(1)?, cell(2)?);
            // Approximate, to stay two index reads: the span of record
            // numbers, capped at entries_max. It counts numbers lost to
            // rolled-back commits and records the sweeper has yet to delete.
            let entries = match (lowest, highest) {
                (Some(lo), Some(hi)) if hi >= lo => {
                    ((hi - lo + 1) as u64).min(self.dedup.entries_max as u64)
                }
                _ => 0,
            };
            let c = &self.counters;
            Ok(StatsView {
                dedup_entries: entries,
                dedup_hits: c.hits.load(Ordering::Relaxed),
                dedup_evictions: c.evictions.load(Ordering::Relaxed),
                dedup_evictions_early: c.evictions_early.load(Ordering::Relaxed),
                dedup_mismatches: c.mismatches.load(Ordering::Relaxed),
                dedup_in_flight: self.flights.len() as u64,
                applied: c.applied.load(Ordering::Relaxed),
                registers: registers.unwrap_or(0).max(0) as u64,
            })
        })
    }

    fn backend(&self) -> Backend {
        Backend::Postgres
    }
}
