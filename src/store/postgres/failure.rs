//! Bounding store calls by time, and turning what went wrong into the
//! answer a caller gets: the stable [`ServiceError`] sentence with the
//! write's fate. The engine's own message is logged here, never returned.

use std::{future::Future, time::Duration};

use tokio::time::Instant;
use tokio_postgres::error::SqlState;

use crate::{error::ServiceError, store::WriteFate};

/// Which limit ended a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// The caller's deadline: answered like any server-side deadline.
    Caller,
    /// The ledger's own maximum per call (`PgConfig::op_timeout`): the
    /// store is too slow.
    Store,
}

/// When a store step must end, and which limit that is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub(crate) at: Instant,
    pub(crate) limit: Limit,
}

impl Budget {
    /// The earlier of the caller's deadline and `op_timeout` from now.
    pub(crate) fn new(deadline: Option<Instant>, op_timeout: Duration) -> Self {
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

    /// Runs `fut` until the budget ends. An abandoned future may leave its
    /// connection mid-statement: callers discard that connection.
    pub(crate) async fn run<T>(self, fut: impl Future<Output = T>) -> Result<T, Failure> {
        tokio::time::timeout_at(self.at, fut)
            .await
            .map_err(|_| Failure::Expired(self.limit))
    }

    /// Time left, at least 1 ms (PostgreSQL reads a zero timeout as "none").
    pub(crate) fn remaining_ms(&self) -> u64 {
        let left = self.at.saturating_duration_since(Instant::now());
        (left.as_millis() as u64).max(1)
    }
}

/// What went wrong talking to the store.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No connection could be had.
    Pool(deadpool_postgres::PoolError),
    /// The driver or the server refused a statement, or the connection
    /// broke.
    Db(tokio_postgres::Error),
    /// A [`Budget`] ended first.
    Expired(Limit),
    /// The connection was found closed before the next statement was sent.
    Closed,
    /// The store answered something the schema rules out (a missing row
    /// that must exist): a schema changed under the ledger.
    Unexpected(&'static str),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e)
    }
}

impl From<deadpool_postgres::PoolError> for Failure {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            // The pool wraps connect errors; keep the driver's error so the
            // log names its cause.
            deadpool_postgres::PoolError::Backend(e) => Self::Db(e),
            e => Self::Pool(e),
        }
    }
}

impl Failure {
    /// True for `lock_timeout` firing: another transaction held the row
    /// this one waited for.
    pub(crate) fn is_lock_timeout(&self) -> bool {
        matches!(self, Self::Db(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE))
    }

    /// True when the server answered with an error of its own (as opposed
    /// to a connection that broke or a timer): the statement, and any
    /// COMMIT that follows it, did not take effect.
    pub(crate) fn is_server_refusal(&self) -> bool {
        matches!(self, Self::Db(e) if e.as_db_error().is_some())
    }

    /// Logs the engine's side of the story.
    pub(crate) fn log(&self, op: &'static str) {
        match self {
            Self::Db(e) => match e.as_db_error() {
                Some(db) => tracing::warn!(
                    op,
                    code = db.code().code(),
                    error = %db.message(),
                    "PostgreSQL refused a statement"
                ),
                None => tracing::warn!(op, error = %e, "PostgreSQL connection failed"),
            },
            Self::Pool(e) => tracing::warn!(op, error = %e, "no PostgreSQL connection"),
            Self::Expired(Limit::Caller) => {
                tracing::debug!(op, "caller's deadline reached during a store call")
            }
            Self::Expired(Limit::Store) => {
                tracing::warn!(op, "PostgreSQL call exceeded the ledger's time limit")
            }
            Self::Closed => tracing::warn!(op, "PostgreSQL connection closed"),
            Self::Unexpected(what) => tracing::error!(op, what, "unexpected PostgreSQL answer"),
        }
    }

    /// The answer for a failure that certainly applied nothing: nothing was
    /// sent, or the transaction ends without COMMIT.
    pub(crate) fn not_applied(self, op: &'static str) -> ServiceError {
        self.log(op);
        match self {
            Self::Expired(Limit::Caller) => ServiceError::DeadlineExceeded,
            _ => ServiceError::StoreUnavailable {
                fate: WriteFate::NotApplied,
            },
        }
    }

    /// The answer for a failure after COMMIT may have reached the server.
    pub(crate) fn unknown(self, op: &'static str) -> ServiceError {
        self.log(op);
        ServiceError::StoreUnavailable {
            fate: WriteFate::Unknown,
        }
    }
}

/// A write that must touch exactly one row.
pub(crate) fn expect_one(rows: u64) -> Result<(), Failure> {
    if rows == 1 {
        Ok(())
    } else {
        Err(Failure::Unexpected("a write touched no row or several"))
    }
}
