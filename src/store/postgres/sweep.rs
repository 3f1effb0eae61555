//! Retention: deleting dead dedup records in bounded batches, off the
//! request path.
//!
//! Lookups already ignore dead records (the rule is in the claim statement),
//! so the sweeper only keeps the table's size bounded: a late sweep never
//! makes a record live longer than its TTL or its rank allow. Every
//! replica runs one; they may delete the same rows, which costs one of them
//! a short wait, never a wrong answer. Each batch is its own short
//! transaction under a small `lock_timeout`, so a sweep never waits behind
//! a long claim (it skips to the next tick instead) and a request never
//! waits behind a sweep for longer than one batch.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use deadpool_postgres::Pool;

use super::conn::TxConn;

use crate::{
    store::dedup::DedupConfig,
    store::postgres::{PgConfig, RetentionClock, sql},
};

/// Most batches one tick deletes: a backlog is worked off over several
/// ticks instead of one long burst.
const BATCHES_PER_TICK: usize = 16;

/// How long a batch may wait for a row another transaction holds.
const SWEEP_LOCK_TIMEOUT_MS: u64 = 200;

/// What one sweeper needs.
#[derive(Debug, Clone)]
pub(crate) struct Sweeper {
    pub(crate) pool: Pool,
    pub(crate) clock: RetentionClock,
    pub(crate) ttl_ms: i64,
    /// A record is dead once its client committed this many newer ones.
    pub(crate) entries_per_client_max: i64,
    pub(crate) batch: i64,
    pub(crate) interval: Duration,
    /// Bounds each batch, connection wait included.
    pub(crate) op_timeout: Duration,
    /// Records this process deleted (the `dedup_evictions` counter).
    pub(crate) evictions: Arc<AtomicU64>,
    /// Of those, deleted inside their TTL (`dedup_evictions_early`).
    pub(crate) evictions_early: Arc<AtomicU64>,
}

impl Sweeper {
    pub(crate) fn new(
        pool: &Pool,
        config: &PgConfig,
        dedup: &DedupConfig,
        evictions: &Arc<AtomicU64>,
        evictions_early: &Arc<AtomicU64>,
    ) -> Self {
        Self {
            pool: pool.clone(),
            clock: config.clock.clone(),
            ttl_ms: i64::try_from(dedup.ttl().as_millis()).unwrap_or(i64::MAX),
            entries_per_client_max: i64::try_from(dedup.entries_per_client_max())
                .unwrap_or(i64::MAX),
            batch: i64::from(config.sweep_batch.max(1)),
            interval: config.sweep_interval.max(Duration::from_millis(1)),
            op_timeout: config.op_timeout,
            evictions: Arc::clone(evictions),
            evictions_early: Arc::clone(evictions_early),
        }
    }

    /// Sweeps every `interval` until the task is aborted.
    pub(crate) async fn run(self) {
        // The first sweep one interval after start, not at once: a replica
        // starting has nothing of its own to delete yet.
        let first = tokio::time::Instant::now() + self.interval;
        let mut tick = tokio::time::interval_at(first, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.sweep().await {
                tracing::debug!(error = %e, "dedup sweep skipped");
            }
        }
    }

    /// One tick: batches of deletes until one comes back short. Returns the
    /// number of records deleted.
    pub(crate) async fn sweep(&self) -> Result<u64, SweepError> {
        let mut deleted = 0;
        for _ in 0..BATCHES_PER_TICK {
            let n = self.batch_once().await?;
            deleted += n;
            self.evictions.fetch_add(n, Ordering::Relaxed);
            if n < self.batch as u64 {
                break;
            }
        }
        Ok(deleted)
    }

    async fn batch_once(&self) -> Result<u64, SweepError> {
        tokio::time::timeout(self.op_timeout, self.batch_in_transaction())
            .await
            .map_err(|_| SweepError::Timeout)?
    }

    async fn batch_in_transaction(&self) -> Result<u64, SweepError> {
        let conn = TxConn::new(self.pool.get().await?);
        conn.batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = '{SWEEP_LOCK_TIMEOUT_MS}ms'"
        ))
        .await?;
        let deleted = conn
            .query(
                sql::SWEEP,
                &[
                    &self.batch,
                    &self.clock.now_ms(),
                    &self.ttl_ms,
                    &self.entries_per_client_max,
                ],
            )
            .await;
        // On any error or timeout the TxConn is dropped: closed, rolled
        // back, never returned to the pool mid-transaction.
        let rows = deleted?;
        conn.batch_execute("COMMIT").await?;
        conn.release();
        let early = rows
            .iter()
            .filter(|row| row.try_get::<_, bool>(0).unwrap_or(false))
            .count();
        self.evictions_early
            .fetch_add(early as u64, Ordering::Relaxed);
        Ok(rows.len() as u64)
    }
}

/// Why a sweep stopped early (logged at debug: the next tick tries again).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SweepError {
    #[error("no connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("timed out")]
    Timeout,
}
