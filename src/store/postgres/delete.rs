//! `DeleteRegister` against PostgreSQL: one short transaction that takes
//! the register count's lock (as creating a register does, so the count
//! and the per-client quota stay exact across replicas), deletes the row
//! and lowers the count.
//!
//! Dedup records are left alone: a retry of an `Accumulate` applied before
//! the removal replays its first outcome and does not re-create the
//! register (the same rule as every backend).

use tokio::time::Instant;

use crate::{
    error::ServiceError,
    store::postgres::{
        PgLedger,
        conn::TxConn,
        failure::{Budget, Failure, expect_one},
        sql,
    },
};

impl PgLedger {
    /// Removes `register`, answering its last value (`None`: it did not
    /// exist). A failure before COMMIT is sent is not-applied; a lost
    /// COMMIT is unknown, which a retry resolves (deleting is idempotent).
    pub(crate) async fn delete_register(
        &self,
        register: &str,
        deadline: Option<Instant>,
    ) -> Result<Option<f64>, ServiceError> {
        let budget = Budget::new(deadline, self.config.op_timeout);
        let conn = self
            .connection(budget)
            .await
            .map_err(|f| f.not_applied("delete"))?;
        let removed = budget
            .run(remove(&conn, register, budget))
            .await
            .and_then(|removed| removed)
            .map_err(|f| f.not_applied("delete"))?;
        conn.commit(budget, "delete").await?;
        Ok(removed)
    }
}

/// Everything before COMMIT, in a transaction begun here.
async fn remove(conn: &TxConn, register: &str, budget: Budget) -> Result<Option<f64>, Failure> {
    conn.batch_execute(&format!(
        "BEGIN; SET LOCAL lock_timeout = '{}ms'",
        budget.remaining_ms()
    ))
    .await?;
    let count = conn.prepare_cached(sql::COUNT_FOR_UPDATE).await?;
    conn.query_opt(&count, &[])
        .await?
        .ok_or(Failure::Unexpected("the register count row is missing"))?;
    let st = conn.prepare_cached(sql::REGISTER_DELETE).await?;
    let Some(row) = conn.query_opt(&st, &[&register]).await? else {
        return Ok(None);
    };
    let value: f64 = row.try_get(0)?;
    let drop = conn.prepare_cached(sql::COUNT_DROP).await?;
    expect_one(conn.execute(&drop, &[]).await?)?;
    Ok(Some(value))
}
