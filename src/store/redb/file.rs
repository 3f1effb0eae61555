//! Durable mode (`abacus serve --data-dir DIR`): registers and dedup records
//! in an embedded [redb](https://docs.rs/redb) database, so both survive a
//! restart and a retry of a request applied before the restart is replayed,
//! not applied again.
//!
//! # What is written, and when
//! Each `Accumulate` commit writes, in **one** write transaction with
//! `Durability::Immediate` (on disk when `commit` returns): the register's
//! new value, the dedup record (if the request had an ID), and the deletion
//! of records the in-memory store has evicted since the last commit.
//! [`crate::store::MemoryLedger`] runs that transaction inside the same critical
//! section as the in-memory update, *before* it, and changes memory only if
//! the transaction committed: memory never holds what the disk does not.
//! If the commit fails, the request is answered INTERNAL without the
//! not-applied marker and leaves no record; a retry recomputes the same value
//! from the unchanged memory and writes it again, so even a commit that did
//! reach the disk despite its error converges.
//!
//! Records are keyed by their sequence number, so the disk holds them in
//! commit order and eviction is a range delete below the store's
//! [`front_seq`](crate::store::dedup::DedupStore::front_seq). Deletion lags
//! by at most one commit (records evicted by a lookup's TTL expiry, or by
//! this very insert, go at the next commit); on reload the store re-applies
//! its capacity bound, so the lag is harmless.
//!
//! # What survives, in each mode
//! | | in memory (default) | `--data-dir` |
//! |---|---|---|
//! | register values | lost: registers restart empty | kept |
//! | dedup records | lost: a retry after restart applies again | kept (TTL restarts at load) |
//! | `GetStats` counters | lost | lost (they describe this process) |
//! | in-flight claims | lost (their requests were never applied) | lost, likewise |
//!
//! The cost is one fsync per `Accumulate`, taken under the state lock:
//! durable mode serialises updates at disk speed, a deliberate trade for a
//! demonstration service.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};
use tokio::time::Instant;

use crate::{
    core::Registers,
    store::dedup::{DedupStore, Evicted, RestoreError, StoredOutcome},
};

/// Register name → value.
const REGISTERS: TableDefinition<'_, &str, f64> = TableDefinition::new("registers");

/// Sequence number → (request ID, payload fingerprint, outcome tag, outcome
/// number). See [`encode`].
const DEDUP: TableDefinition<'_, u64, (&str, u64, u8, f64)> = TableDefinition::new("dedup");

/// `format` → on-disk format version.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// Bumped whenever a table's layout or the fingerprint function changes.
pub const FORMAT_VERSION: u64 = 1;

/// The database file inside the data directory.
pub const DB_FILE_NAME: &str = "abacus.redb";

/// A durable store that failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The data directory cannot be created.
    #[error("cannot create data directory {dir}: {source}")]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The database cannot be opened (already open in another process,
    /// damaged, not a redb file).
    #[error("cannot open {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why (boxed: redb's errors are large, and this one is rare).
        #[source]
        source: Box<redb::DatabaseError>,
    },
    /// Written by a different format version.
    #[error("{path} has format version {found}; this build reads version {FORMAT_VERSION}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u64,
    },
    /// A stored record cannot be decoded or restored.
    #[error("damaged dedup record {seq}: {what}")]
    Corrupt {
        /// Its sequence number.
        seq: u64,
        /// What is wrong.
        what: String,
    },
    /// A transaction failed (boxed: redb's errors are large, and every
    /// `Result` of this module would pay for them).
    #[error("storage: {0}")]
    Redb(#[source] Box<redb::Error>),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                Self::Redb(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<StorageError> for crate::error::ServiceError {
    /// A failed commit may or may not have reached the disk. The engine's
    /// message (paths, redb's text) is for the log, not for the caller.
    fn from(_: StorageError) -> Self {
        Self::StoreUnavailable {
            fate: crate::store::WriteFate::Unknown,
        }
    }
}

/// One dedup record to persist.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordRow<'a> {
    /// Its sequence number in the store.
    pub seq: u64,
    /// The request ID.
    pub request_id: &'a str,
    /// The payload fingerprint.
    pub fingerprint: u64,
    /// The first execution's outcome.
    pub outcome: StoredOutcome,
}

/// Everything one `Accumulate` commit writes, in one transaction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Write<'a> {
    /// The register and its new value, if the request applied.
    pub register: Option<(&'a str, f64)>,
    /// The dedup record, if the request had an ID.
    pub record: Option<RecordRow<'a>>,
    /// Delete every record with a smaller sequence number (the store's
    /// `front_seq`).
    pub delete_below: u64,
}

/// What [`Durable::load`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Loaded {
    /// Registers restored.
    pub registers: usize,
    /// Dedup records read (some may have been evicted again at once if the
    /// capacity shrank).
    pub records: usize,
}

/// The open database.
#[derive(Debug)]
pub struct Durable {
    db: Database,
    path: PathBuf,
    /// Records below this sequence number are known deleted from disk.
    deleted_below: u64,
}

fn encode(outcome: StoredOutcome) -> (u8, f64) {
    match outcome {
        StoredOutcome::Applied { value } => (0, value),
        StoredOutcome::RegisterOverflow { current } => (1, current),
        StoredOutcome::TooManyRegisters => (2, 0.0),
    }
}

fn decode(tag: u8, number: f64) -> Option<StoredOutcome> {
    match tag {
        0 => Some(StoredOutcome::Applied { value: number }),
        1 => Some(StoredOutcome::RegisterOverflow { current: number }),
        2 => Some(StoredOutcome::TooManyRegisters),
        _ => None,
    }
}

impl Durable {
    /// Opens (creating if needed) `dir/abacus.redb` and checks its format.
    /// redb locks the file: a second server on the same directory is
    /// refused.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::CreateDir {
            dir: dir.to_owned(),
            source,
        })?;
        let path = dir.join(DB_FILE_NAME);
        let db = Database::create(&path).map_err(|source| StorageError::Open {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let txn = db.begin_write()?;
        {
            txn.open_table(REGISTERS)?;
            txn.open_table(DEDUP)?;
            let mut meta = txn.open_table(META)?;
            let found = meta.get("format")?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("format", FORMAT_VERSION)?;
                }
                Some(FORMAT_VERSION) => {}
                Some(found) => return Err(StorageError::Format { path, found }),
            }
        }
        txn.commit()?;
        Ok(Self {
            db,
            path,
            deleted_below: 0,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads everything back into `registers` and `store` (whose records
    /// get a fresh TTL from `now`), in commit order. Records the store
    /// evicts at once are reported to `on_evict` and deleted from disk at
    /// the next commit.
    pub fn load(
        &mut self,
        registers: &mut Registers,
        store: &mut DedupStore,
        now: Instant,
        mut on_evict: impl FnMut(Evicted<'_>),
    ) -> Result<Loaded, StorageError> {
        let mut loaded = Loaded::default();
        let txn = self.db.begin_read()?;
        for row in txn.open_table(REGISTERS)?.iter()? {
            let (name, value) = row?;
            registers.set(name.value(), value.value());
            loaded.registers += 1;
        }
        let dedup = txn.open_table(DEDUP)?;
        if let Some((first, _)) = dedup.first()? {
            self.deleted_below = first.value();
        }
        for row in dedup.iter()? {
            let (seq, value) = row?;
            let seq = seq.value();
            let (request_id, fingerprint, tag, number) = value.value();
            let outcome = decode(tag, number).ok_or_else(|| StorageError::Corrupt {
                seq,
                what: format!("unknown outcome tag {tag}"),
            })?;
            store
                .restore(seq, request_id, fingerprint, outcome, now, &mut on_evict)
                .map_err(|e: RestoreError| StorageError::Corrupt {
                    seq,
                    what: e.to_string(),
                })?;
            loaded.records += 1;
        }
        Ok(loaded)
    }

    /// Writes one commit's changes in one durable transaction.
    pub fn commit(&mut self, write: &Write<'_>) -> Result<(), StorageError> {
        let delete = write.delete_below > self.deleted_below;
        if write.register.is_none() && write.record.is_none() && !delete {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            if let Some((name, value)) = write.register {
                txn.open_table(REGISTERS)?.insert(name, value)?;
            }
            let mut dedup = txn.open_table(DEDUP)?;
            if delete {
                dedup.retain_in(self.deleted_below..write.delete_below, |_, _| false)?;
            }
            if let Some(r) = write.record {
                let (tag, number) = encode(r.outcome);
                dedup.insert(r.seq, (r.request_id, r.fingerprint, tag, number))?;
            }
        }
        txn.commit()?;
        self.deleted_below = self.deleted_below.max(write.delete_below);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::dedup::{DedupConfig, Lookup};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("abacus-durable-unit-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn reload(dir: &Path, entries_max: usize) -> (Durable, Registers, DedupStore, Loaded) {
        let mut d = Durable::open(dir).unwrap();
        let mut regs = Registers::new();
        let mut store = DedupStore::new(&DedupConfig {
            entries_max,
            ..DedupConfig::default()
        });
        let loaded = d
            .load(&mut regs, &mut store, Instant::now(), |_| {})
            .unwrap();
        (d, regs, store, loaded)
    }

    #[test]
    fn commits_survive_reopen_and_evictions_are_deleted() {
        let tmp = TempDir::new("reopen");
        {
            let mut d = Durable::open(&tmp.0).unwrap();
            for seq in 0..3u64 {
                let id = format!("id-{seq}");
                d.commit(&Write {
                    register: Some(("x", seq as f64 + 1.0)),
                    record: Some(RecordRow {
                        seq,
                        request_id: &id,
                        fingerprint: 7,
                        outcome: StoredOutcome::Applied {
                            value: seq as f64 + 1.0,
                        },
                    }),
                    delete_below: 0,
                })
                .unwrap();
            }
            // A refused execution: recorded, register untouched; and the
            // first record evicted.
            d.commit(&Write {
                register: None,
                record: Some(RecordRow {
                    seq: 3,
                    request_id: "big",
                    fingerprint: 8,
                    outcome: StoredOutcome::RegisterOverflow { current: 3.0 },
                }),
                delete_below: 1,
            })
            .unwrap();
        }
        let (_d, regs, mut store, loaded) = reload(&tmp.0, 100);
        assert_eq!(
            loaded,
            Loaded {
                registers: 1,
                records: 3
            }
        );
        assert_eq!(regs.get("x"), Ok(3.0));
        let now = Instant::now();
        assert_eq!(store.lookup("id-0", 7, now, |_| {}), Lookup::Miss);
        assert_eq!(
            store.lookup("id-2", 7, now, |_| {}),
            Lookup::Hit(StoredOutcome::Applied { value: 3.0 })
        );
        assert_eq!(
            store.lookup("big", 8, now, |_| {}),
            Lookup::Hit(StoredOutcome::RegisterOverflow { current: 3.0 })
        );
        assert_eq!((store.front_seq(), store.next_seq()), (1, 4));
    }

    #[test]
    fn a_smaller_capacity_applies_on_reload() {
        let tmp = TempDir::new("shrink");
        {
            let mut d = Durable::open(&tmp.0).unwrap();
            for seq in 0..5u64 {
                let id = format!("id-{seq}");
                d.commit(&Write {
                    register: None,
                    record: Some(RecordRow {
                        seq,
                        request_id: &id,
                        fingerprint: 0,
                        outcome: StoredOutcome::TooManyRegisters,
                    }),
                    delete_below: 0,
                })
                .unwrap();
            }
        }
        let (mut d, _regs, store, _) = reload(&tmp.0, 2);
        assert_eq!((store.front_seq(), store.len()), (3, 2));
        // The next commit deletes what the reload evicted.
        d.commit(&Write {
            register: None,
            record: None,
            delete_below: store.front_seq(),
        })
        .unwrap();
        drop(d);
        let (_d, _regs, store, loaded) = reload(&tmp.0, 100);
        assert_eq!((loaded.records, store.front_seq()), (2, 3));
    }

    #[test]
    fn a_second_server_on_the_same_dir_is_refused() {
        let tmp = TempDir::new("lock");
        let _first = Durable::open(&tmp.0).unwrap();
        let second = Durable::open(&tmp.0).unwrap_err();
        assert!(matches!(second, StorageError::Open { .. }), "{second}");
    }
}
