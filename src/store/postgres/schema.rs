//! Creating and migrating the schema at start-up, safely when several
//! replicas start at once.
//!
//! No advisory lock (CockroachDB has none): every statement of a version is
//! idempotent (`IF NOT EXISTS`, `ON CONFLICT DO NOTHING`), so replicas may
//! all run it; `abacus_schema_version` records which versions were applied,
//! by whichever replica got there first. Two sessions creating the same
//! table at the same instant can still collide inside PostgreSQL's catalog
//! (a unique violation on `pg_type`, or "already exists"): the statement is
//! then simply run again, and its `IF NOT EXISTS` now sees the winner's
//! table.

use tokio_postgres::{Client, error::SqlState};

use crate::store::postgres::sql;

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i32 = sql::MIGRATIONS.len() as i32;

/// How often one DDL statement is retried after losing a creation race. One
/// retry suffices in practice (the winner has committed by the time the
/// loser's error arrives); a few more cost nothing.
const RACE_RETRIES: usize = 5;

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database was migrated by a newer build.
    #[error(
        "the database's abacus schema is version {found}, newer than this build's {SCHEMA_VERSION}: upgrade abacus, or point --store at another database"
    )]
    TooNew {
        /// The version found.
        found: i32,
    },
    /// A statement failed.
    #[error("schema migration failed: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// Brings the schema to [`SCHEMA_VERSION`]; returns the version found
/// before.
pub(crate) async fn migrate(client: &Client) -> Result<i32, SchemaError> {
    run_idempotent(client, sql::VERSION_TABLE).await?;
    let found: Option<i32> = client.query_one(sql::VERSION_READ, &[]).await?.get(0);
    let found = found.unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(SchemaError::TooNew { found });
    }
    for (version, statements) in (1..).zip(sql::MIGRATIONS) {
        if version <= found {
            continue;
        }
        for statement in *statements {
            run_idempotent(client, statement).await?;
        }
        client.execute(sql::VERSION_MARK, &[&version]).await?;
        tracing::info!(version, "abacus schema version applied");
    }
    Ok(found)
}

/// Runs an idempotent statement, again if it lost a creation race.
async fn run_idempotent(client: &Client, statement: &str) -> Result<(), tokio_postgres::Error> {
    let mut attempt = 0;
    loop {
        match client.batch_execute(statement).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < RACE_RETRIES && lost_race(&e) => {
                attempt += 1;
                tracing::debug!(error = %e, "schema statement lost a creation race; running it again");
            }
            Err(e) => return Err(e),
        }
    }
}

/// Errors that two sessions creating the same object at once can get.
fn lost_race(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        [
            SqlState::UNIQUE_VIOLATION,
            SqlState::DUPLICATE_TABLE,
            SqlState::DUPLICATE_OBJECT,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
        ]
        .contains(c)
    })
}
