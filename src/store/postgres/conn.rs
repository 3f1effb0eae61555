//! A pooled connection that may be inside a transaction.
//!
//! tokio-postgres' own `Transaction` borrows its `Client`, so it cannot be
//! kept in a claim that outlives the `begin` call; the ledger sends BEGIN,
//! COMMIT and ROLLBACK itself and this guard makes the one rule hold: a
//! connection goes back to the pool only after its transaction was closed
//! cleanly. Dropped any other way (a claim released, a caller cancelled, a
//! timer fired mid-statement), the connection is taken out of the pool and
//! closed, and PostgreSQL rolls its transaction back when it sees the socket
//! close. Closing costs a reconnect later; it only happens on failures.

use std::ops::Deref;

use deadpool_postgres::{ClientWrapper, Object};

use crate::{
    error::ServiceError,
    store::postgres::failure::{Budget, Failure},
};

/// See the module doc.
#[derive(Debug)]
pub(crate) struct TxConn(Option<Object>);

impl TxConn {
    pub(crate) fn new(conn: Object) -> Self {
        Self(Some(conn))
    }

    /// Returns the connection to the pool: only once its transaction has
    /// been committed or rolled back (or none was begun).
    pub(crate) fn release(mut self) {
        drop(self.0.take());
    }

    /// Commits the open transaction within `budget`, then returns the
    /// connection to the pool; `op` names the operation in the log. A
    /// failure is answered with what it says about the write: not applied
    /// when COMMIT was never sent or the server refused it, unknown when
    /// it was sent and no answer came.
    pub(crate) async fn commit(self, budget: Budget, op: &'static str) -> Result<(), ServiceError> {
        // A connection that broke before COMMIT was sent cannot have
        // committed; past this check, it may have.
        if self.is_closed() {
            return Err(Failure::Closed.not_applied(op));
        }
        match budget.run(self.batch_execute("COMMIT")).await {
            Ok(Ok(())) => {
                self.release();
                Ok(())
            }
            Ok(Err(e)) => {
                let f = Failure::Db(e);
                Err(if f.is_server_refusal() {
                    // The server answered COMMIT with an error (e.g. a
                    // serialization failure on a distributed engine):
                    // rolled back.
                    f.not_applied(op)
                } else {
                    // Sent, and the connection broke: it may have
                    // committed. A retry under the same request ID finds
                    // out (replayed, or executed); a delete, idempotent,
                    // is simply sent again.
                    f.unknown(op)
                })
            }
            // No answer in time: the same.
            Err(f) => Err(f.unknown(op)),
        }
    }
}

impl Deref for TxConn {
    type Target = ClientWrapper;

    fn deref(&self) -> &ClientWrapper {
        // Some until release or drop, both of which consume or end self.
        self.0
            .as_deref()
            .expect("a TxConn holds its connection until released")
    }
}

impl Drop for TxConn {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            // Out of the pool and closed: the server aborts the transaction.
            drop(Object::take(conn));
        }
    }
}
