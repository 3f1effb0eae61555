//! The claim: an open transaction holding the request's row, and its
//! commit — the register update and the dedup record in that one
//! transaction.

use std::fmt;

use futures_util::future::join;
use tokio::time::Instant;

use crate::{
    core::{self, Quota},
    error::{CalcError, ServiceError},
    store::dedup::StoredOutcome,
    store::{
        AccumulateArgs, Accumulated, BoxFuture, Claim,
        postgres::{
            PgLedger,
            conn::TxConn,
            failure::{Budget, Failure, expect_one},
            flights::FlightGuard,
            sql,
        },
    },
};

/// The right to execute one `Accumulate` against PostgreSQL.
pub(crate) struct PgClaim<'a> {
    pub(crate) ledger: &'a PgLedger,
    pub(crate) args: &'a AccumulateArgs,
    /// The caller's, from `begin`: the commit is bounded by it too.
    pub(crate) deadline: Option<Instant>,
    /// `None` for a request without an ID: nothing is held until commit.
    pub(crate) keyed: Option<Keyed<'a>>,
}

/// What a claim on a request ID holds.
pub(crate) struct Keyed<'a> {
    // Field order is drop order: the connection (and with it the
    // transaction) goes first, then the local flight, so a waiter woken by
    // the flight's end finds the row lock released or about to be.
    pub(crate) conn: TxConn,
    pub(crate) flight: FlightGuard<'a>,
}

impl fmt::Debug for PgClaim<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgClaim")
            .field("request_id", &self.args.request_id)
            .field("keyed", &self.keyed.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a> Claim<'a> for PgClaim<'a> {
    fn request_id(&self) -> &str {
        &self.args.request_id
    }

    fn commit(self: Box<Self>) -> BoxFuture<'a, Result<Accumulated, ServiceError>> {
        Box::pin(self.run())
    }
}

/// How an outcome is stored: `(outcome, value)` columns.
fn encode(outcome: StoredOutcome) -> (i16, f64) {
    match outcome {
        StoredOutcome::Applied { value } => (0, value),
        StoredOutcome::RegisterOverflow { current } => (1, current),
        StoredOutcome::TooManyRegisters => (2, 0.0),
    }
}

/// The inverse of [`encode`].
pub(crate) fn decode(outcome: i16, value: f64) -> Result<StoredOutcome, Failure> {
    match outcome {
        0 => Ok(StoredOutcome::Applied { value }),
        1 => Ok(StoredOutcome::RegisterOverflow { current: value }),
        2 => Ok(StoredOutcome::TooManyRegisters),
        _ => Err(Failure::Unexpected(
            "unknown outcome code in a dedup record",
        )),
    }
}

impl PgClaim<'_> {
    async fn run(self) -> Result<Accumulated, ServiceError> {
        let Self {
            ledger,
            args,
            deadline,
            keyed,
        } = self;
        let budget = Budget::new(deadline, ledger.config.op_timeout);
        let (conn, flight) = match keyed {
            Some(Keyed { conn, flight }) => (conn, Some(flight)),
            None => (
                ledger
                    .connection(budget)
                    .await
                    .map_err(|f| f.not_applied("commit"))?,
                None,
            ),
        };
        let keyed = flight.is_some();
        // Everything before COMMIT: on any failure the connection is
        // dropped (closed), the transaction dies with it, nothing applied.
        let result = match budget.run(write(ledger, &conn, args, keyed, budget)).await {
            Ok(Ok(Err(refused @ CalcError::RegisterQuota { .. }))) => {
                // Dropping the connection rolls the claim back.
                drop(conn);
                return Err(refused.into());
            }
            Ok(Ok(result)) => result,
            Ok(Err(f)) | Err(f) => return Err(f.not_applied("commit")),
        };
        conn.commit(budget, "commit").await?;
        ledger.committed(args, &result);
        // The flight ends only now: local duplicates wake to find the record.
        drop(flight);
        result
            .map(|value| Accumulated {
                value,
                replayed: false,
            })
            .map_err(ServiceError::from)
    }
}

/// Plans the update from the register's locked row, writes it and (keyed)
/// the record, in the open transaction (begun here for a request without
/// an ID). Returns the execution's outcome, rule errors included.
async fn write(
    ledger: &PgLedger,
    conn: &TxConn,
    args: &AccumulateArgs,
    keyed: bool,
    budget: Budget,
) -> Result<Result<f64, CalcError>, Failure> {
    let name = &args.register;
    // Row locks taken from here on (the register's, the count's) wait at
    // most what is left of the budget.
    let set = format!(
        "{}SET LOCAL lock_timeout = '{}ms'",
        if keyed { "" } else { "BEGIN; " },
        budget.remaining_ms()
    );
    let (set, row) = join(conn.batch_execute(&set), async {
        let st = conn.prepare_cached(sql::REGISTER_FOR_UPDATE).await?;
        conn.query_opt(&st, &[name]).await
    })
    .await;
    set?;
    let owner = args.caller.quota_key().to_string();
    let mut quota = Quota::UNLIMITED;
    let (current, held) = match row? {
        Some(row) => (Some(row.try_get::<_, f64>(0)?), 0),
        None => {
            // Creating a register: take the count's lock, under which every
            // earlier creator has committed, then look again.
            let count = conn.prepare_cached(sql::COUNT_FOR_UPDATE).await?;
            let row = conn
                .query_opt(&count, &[])
                .await?
                .ok_or(Failure::Unexpected("the register count row is missing"))?;
            let held: i64 = row.try_get(0)?;
            let st = conn.prepare_cached(sql::REGISTER_FOR_UPDATE).await?;
            match conn.query_opt(&st, &[name]).await? {
                Some(row) => (Some(row.try_get::<_, f64>(0)?), 0),
                None => {
                    let st = conn.prepare_cached(sql::OWNER_COUNT).await?;
                    let mine: i64 = conn.query_one(&st, &[&owner]).await?.try_get(0)?;
                    quota = Quota {
                        held: usize::try_from(mine).unwrap_or(usize::MAX),
                        max: ledger.dedup.registers_per_client_max,
                    };
                    (None, usize::try_from(held).unwrap_or(usize::MAX))
                }
            }
        }
    };
    let result = core::plan_accumulate(current, held, quota, name, args.delta);
    if let Err(CalcError::RegisterQuota { .. }) = result {
        // A refusal, not an outcome: nothing is written, and the caller
        // rolls back (the claim row goes with it), so the ID executes once
        // the client has made room.
        return Ok(result);
    }
    let register = async {
        let Ok(value) = result else {
            return Ok::<_, Failure>(());
        };
        if current.is_some() {
            let st = conn.prepare_cached(sql::REGISTER_UPDATE).await?;
            expect_one(conn.execute(&st, &[name, &value]).await?)?;
        } else {
            let insert = conn.prepare_cached(sql::REGISTER_INSERT).await?;
            let bump = conn.prepare_cached(sql::COUNT_BUMP).await?;
            let (inserted, bumped) = join(
                conn.execute(&insert, &[name, &value, &owner]),
                conn.execute(&bump, &[]),
            )
            .await;
            expect_one(inserted?)?;
            expect_one(bumped?)?;
        }
        Ok(())
    };
    let record = async {
        if !keyed {
            return Ok::<_, Failure>(());
        }
        // Payload errors never get here (begin refuses them), so every
        // outcome is recordable; were one not, committing would publish a
        // half-written row.
        let (outcome, value) =
            StoredOutcome::of(&result)
                .map(encode)
                .ok_or(Failure::Unexpected(
                    "an unrecordable outcome reached commit",
                ))?;
        let st = conn.prepare_cached(sql::RECORD_COMMIT).await?;
        let scope = args.caller.scope();
        let now = ledger.config.clock.now_ms();
        expect_one(
            conn.execute(&st, &[&scope, &args.request_id, &now, &outcome, &value])
                .await?,
        )
    };
    let (register, record) = join(register, record).await;
    register?;
    record?;
    Ok(result)
}
