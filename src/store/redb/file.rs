//! The database file of durable mode: its tables, its format, and the two
//! things done with it — load everything at start-up, and write one batch
//! of decided commits in one transaction.
//!
//! # What is written, and when
//! Each batch is **one** write transaction with `Durability::Immediate` (on
//! disk when `commit` returns: one fsync): for each commit in it, the
//! register's new value and the dedup record (if the request had an ID);
//! and the deletion of records the in-memory store has evicted. The writer
//! (`super::writer`) reports the batch durable only after `commit`
//! returned, and memory is reloaded from this file after any failure, so
//! memory never serves what the disk does not hold.
//!
//! Records are keyed by their sequence number, so the disk holds them in
//! commit order and eviction is a range delete below the store's
//! [`front_seq`](crate::store::dedup::DedupStore::front_seq). Deletion lags
//! by at most one commit (records evicted by a lookup's TTL expiry, or by
//! an insert, go with the next batch); on reload the store re-applies its
//! capacity bound, so the lag is harmless.
//!
//! # What survives, in each mode
//! | | in memory (default) | `--data-dir` |
//! |---|---|---|
//! | register values | lost: registers restart empty | kept |
//! | dedup records | lost: a retry after restart applies again | kept (TTL restarts at load) |
//! | `GetStats` counters | lost | lost (they describe this process) |
//! | in-flight claims | lost (their requests were never applied) | lost, likewise |

use std::{
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
    sync::Arc,
};

use redb::{Database, ReadableTable, StorageBackend, TableDefinition, backends::FileBackend};
use tokio::time::Instant;

use super::{
    disk::{Disk, DiskFaults},
    fence::{Fence, fenced},
    volume::{Boxed, Volume},
};
use crate::{
    core::Registers,
    store::{
        dedup::{
            DedupStore, DigestKey, Evicted, IdDigest, OwnerKey, RestoreError, StoredOutcome,
            key::checksum,
        },
        journal::Write,
    },
};

/// Register name → (value, checksum). See [`register_check`].
const REGISTERS: TableDefinition<'_, &str, (f64, u64)> = TableDefinition::new("registers");

/// Sequence number → (request digest, payload fingerprint, outcome tag,
/// outcome number, owner, checksum): a dedup record, charged to its owner
/// (an [`OwnerKey`]: a digest of the caller's identity or address, so a
/// restart keeps each client's share). See [`encode`] and
/// [`record_check`]. One row per commit, where format 2 wrote two (one in
/// each of the tables below): a B-tree insert and a page fewer per commit.
const RECORDS: TableDefinition<'_, u64, (u128, u64, u8, f64, u64, u64)> =
    TableDefinition::new("records");

/// Format 2's records: sequence number → (request digest, payload
/// fingerprint, outcome tag, outcome number, checksum). Read only to move a
/// format-2 file to format 3 ([`upgrade_from_2`]).
const V2_DEDUP: TableDefinition<'_, u64, (u128, u64, u8, f64, u64)> = TableDefinition::new("dedup");

/// Format 2's owners: sequence number → owner. A record without a row here
/// (written before owners were kept) is charged to [`OwnerKey::RESTORED`].
const V2_DEDUP_OWNERS: TableDefinition<'_, u64, u64> = TableDefinition::new("dedup_owners");

/// `format` → on-disk format version; `digest_key_0`, `digest_key_1` → the
/// key of the request-ID digests (chosen when the file is created).
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");

/// Bumped whenever a table's layout, the checksums, the digest or the
/// fingerprint function changes. Version 1 kept request IDs and no
/// checksums; version 2 keeps digests, and a checksum per row; version 3
/// keeps each record's owner in the record's row (table `records`). A version-2
/// file is moved to version 3 when opened (`upgrade_from_2`).
pub const FORMAT_VERSION: u64 = 3;

/// The database file inside the data directory.
pub const DB_FILE_NAME: &str = "abacus.redb";

/// A durable store that failed. Every variant met at start-up names the
/// file; these texts go to the operator (stderr, the log), never to
/// clients, who get a stable UNAVAILABLE.
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
    /// The file cannot be created, opened or put in place.
    #[error("cannot open {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another process has the file open (redb locks it).
    #[error(
        "{path} is in use by another process (is another abacus serve running on this data directory?)"
    )]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The file exists but is empty: a database is never empty (it is
    /// created elsewhere and renamed into place), so something truncated
    /// it. Starting afresh over it would silently forget everything.
    #[error(
        "{path} is empty (0 bytes): it was truncated or replaced; refusing to start with an empty store over it (restore it from a backup, or remove it to start afresh)"
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A redb file, but not one this program wrote (no format version).
    #[error("{path} is not an abacus database (it has no format version)")]
    NotAbacus {
        /// The file.
        path: PathBuf,
    },
    /// Written by a different format version.
    #[error(
        "{path} has format version {found}; this build reads version {FORMAT_VERSION} (use the abacus build that wrote it)"
    )]
    Format {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u64,
    },
    /// The file is damaged: redb refuses it, a record fails its checksum
    /// or its sequence, or the engine panicked reading it.
    #[error("{path} is damaged: {what}; refusing to start (restore it from a backup)")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The writer thread cannot be started.
    #[error("cannot start the durable writer thread: {0}")]
    Thread(#[source] std::io::Error),
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
    /// Stops this open's writes: see [`Durable::fence`].
    fence: Fence,
    path: PathBuf,
    /// The key of the request-ID digests stored in this file.
    digest_key: DigestKey,
    /// Records below this sequence number are known deleted from disk.
    deleted_below: u64,
    /// See [`Durable::upgraded`].
    upgraded: Option<u64>,
}

fn encode(outcome: StoredOutcome) -> (u8, f64) {
    match outcome {
        StoredOutcome::Applied { value } => (0, value),
        StoredOutcome::RegisterOverflow { current } => (1, current),
        StoredOutcome::TooManyRegisters => (2, 0.0),
    }
}

/// The checksum of a register row, on top of redb's own page checksums
/// (which redb verifies only while repairing after a crash, not on reads):
/// a flipped bit in a name or a value is caught at load, never served.
fn register_check(name: &str, value: f64) -> u64 {
    checksum(&[b"register", name.as_bytes(), &value.to_bits().to_le_bytes()])
}

/// The checksum of a record's row, key included (a flipped bit in the
/// sequence number would otherwise move a record unnoticed).
fn record_check(
    seq: u64,
    key: IdDigest,
    fingerprint: u64,
    tag: u8,
    number: f64,
    owner: OwnerKey,
) -> u64 {
    checksum(&[
        b"record3",
        &seq.to_le_bytes(),
        &key.0.to_le_bytes(),
        &fingerprint.to_le_bytes(),
        &[tag],
        &number.to_bits().to_le_bytes(),
        &owner.0.to_le_bytes(),
    ])
}

/// Format 2's checksum of a `dedup` row (no owner in it).
fn v2_record_check(seq: u64, key: IdDigest, fingerprint: u64, tag: u8, number: f64) -> u64 {
    checksum(&[
        b"record",
        &seq.to_le_bytes(),
        &key.0.to_le_bytes(),
        &fingerprint.to_le_bytes(),
        &[tag],
        &number.to_bits().to_le_bytes(),
    ])
}

fn decode(tag: u8, number: f64) -> Option<StoredOutcome> {
    match tag {
        0 => Some(StoredOutcome::Applied { value: number }),
        1 => Some(StoredOutcome::RegisterOverflow { current: number }),
        2 => Some(StoredOutcome::TooManyRegisters),
        _ => None,
    }
}

/// Opens redb over `file` (already open), behind the fault switch.
fn open_db(
    path: &Path,
    file: File,
    faults: &Arc<DiskFaults>,
) -> Result<(Database, Fence), StorageError> {
    let file = FileBackend::new(file).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StorageError::Locked {
            path: path.to_owned(),
        },
        e => StorageError::Damaged {
            path: path.to_owned(),
            what: e.to_string(),
        },
    })?;
    open_backend(path, Disk::new(file, Arc::clone(faults)))
}

/// redb, making new files in its v3 file format.
///
/// In v2 (redb 2.6's default) the allocator state, which says which pages
/// are free, lives in the file beside the header, and a header whose
/// "recovery required" flag is clear vouches for it. redb's repair after a
/// crash ends by writing the rebuilt state and such a header, then makes
/// both durable with one fsync, in no order: a power cut inside that fsync
/// can keep the header and lose the state. The next open then trusts a
/// stale allocator state, hands out pages the database still uses, and a
/// later commit overwrites live data (found by the simulation's power
/// cuts: `durable-disk` seed 116 met a table name that was not UTF-8). v3
/// never trusts that state: after any unclean shutdown it rebuilds it from
/// the trees, or loads a copy written inside a committed transaction.
/// redb 3 reads only v3.
fn builder() -> redb::Builder {
    let mut builder = Database::builder();
    builder.create_with_file_format_v3(true);
    builder
}

/// Opens redb over `backend`, refusing to roll back a damaged commit, and
/// moves a file in the v2 format (older builds made those) to v3: see
/// [`builder`]. A v2 file that needs repair is still repaired the v2 way,
/// this once.
fn open_backend(
    path: &Path,
    backend: impl StorageBackend,
) -> Result<(Database, Fence), StorageError> {
    let (backend, fence) = fenced(backend);
    let mut builder = builder();
    // After a crash redb repairs the file on open. If the latest commit
    // fails its checksums, redb "repairs" it by rolling back to the commit
    // before: right for a commit torn by a power cut (it was never
    // acknowledged), silent loss of acknowledged writes if the disk damaged
    // a commit that was. It cannot tell which, so neither can we: refuse,
    // and say why. redb reports that branch, and only it, at progress 0.3
    // (redb 2.6's `do_repair`). Commits are two-phase now (`begin_write`),
    // for which redb reports a damaged latest commit as corruption without
    // asking; this still guards files whose latest commit was written in
    // one phase, by an older build.
    builder.set_repair_callback(|session| {
        if session.progress() > 0.0 && session.progress() < 0.5 {
            session.abort();
        }
    });
    let mut db = builder.create_with_backend(backend).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StorageError::Locked {
            path: path.to_owned(),
        },
        redb::DatabaseError::RepairAborted => StorageError::Damaged {
            path: path.to_owned(),
            what: "its latest commit fails its checksums; redb would roll back to the \
                   commit before and so lose writes that may have been acknowledged"
                .into(),
        },
        // The disk refusing (full, failing) is not the file's fault.
        redb::DatabaseError::Storage(redb::StorageError::Io(source)) => StorageError::Io {
            path: path.to_owned(),
            source,
        },
        e => StorageError::Damaged {
            path: path.to_owned(),
            what: e.to_string(),
        },
    })?;
    // A no-op on a v3 file; on a v2 one, two-phase commits throughout.
    db.upgrade().map_err(|e| match e {
        redb::UpgradeError::Storage(redb::StorageError::Io(source)) => StorageError::Io {
            path: path.to_owned(),
            source,
        },
        e => StorageError::Damaged {
            path: path.to_owned(),
            what: format!("it cannot be moved to redb's v3 file format: {e}"),
        },
    })?;
    Ok((db, fence))
}

/// A write transaction committed in two phases: the data is made durable
/// (one fsync), then the header that points at it (a second). redb's
/// default, one phase with checksums, writes both before one fsync, and a
/// power cut in between can leave the new header on disk without all of
/// its data: redb then rolls back to the commit before, which
/// `open_backend` must refuse (it cannot tell that torn, never-acknowledged
/// commit from an acknowledged one damaged later), so a power cut during a
/// commit would keep the server from starting. With two phases the header
/// never reaches the disk before its data, the latest commit is whole after
/// any power cut, and a latest commit that fails its checksums can only be
/// damage (redb reports it as corruption). Found by the simulation's power
/// cuts (`sims`, `durable-disk`); the cost is one more fsync per batch.
fn begin_write(db: &Database) -> Result<redb::WriteTransaction, StorageError> {
    let mut txn = db.begin_write()?;
    txn.set_two_phase_commit(true);
    Ok(txn)
}

/// Moves a format-2 file to the current format in one transaction
/// (two-phase, like every commit): each `dedup` row, its checksum
/// verified, becomes a [`RECORDS`] row with its owner from `dedup_owners`
/// ([`OwnerKey::RESTORED`] where it has none, as format 2 read it); both
/// old tables go, and `format` becomes [`FORMAT_VERSION`]. A crash before
/// the commit leaves the file in format 2, moved again at the next open;
/// after it, an older build refuses the file (it reads format 2 only)
/// rather than missing records. Returns the number of records moved.
fn upgrade_from_2(db: &Database, path: &Path) -> Result<u64, StorageError> {
    let txn = begin_write(db)?;
    let mut moved = 0;
    {
        let old = txn.open_table(V2_DEDUP)?;
        let owners = txn.open_table(V2_DEDUP_OWNERS)?;
        let mut records = txn.open_table(RECORDS)?;
        for row in old.iter()? {
            let (seq, value) = row?;
            let seq = seq.value();
            let (key, fingerprint, tag, number, check) = value.value();
            let key = IdDigest(key);
            if v2_record_check(seq, key, fingerprint, tag, number) != check {
                return Err(StorageError::Damaged {
                    path: path.to_owned(),
                    what: format!("dedup record {seq} fails its checksum"),
                });
            }
            let owner = owners
                .get(seq)?
                .map_or(OwnerKey::RESTORED, |owner| OwnerKey(owner.value()));
            let check = record_check(seq, key, fingerprint, tag, number, owner);
            records.insert(seq, (key.0, fingerprint, tag, number, owner.0, check))?;
            moved += 1;
        }
        txn.open_table(META)?.insert("format", FORMAT_VERSION)?;
    }
    txn.delete_table(V2_DEDUP)?;
    txn.delete_table(V2_DEDUP_OWNERS)?;
    txn.commit()?;
    Ok(moved)
}

/// Creates the tables and the format version in a new database, with
/// `key` as its digest key, in one commit.
fn initialise(db: &Database, key: DigestKey) -> Result<(), StorageError> {
    let txn = begin_write(db)?;
    {
        txn.open_table(REGISTERS)?;
        txn.open_table(RECORDS)?;
        let mut meta = txn.open_table(META)?;
        meta.insert("format", FORMAT_VERSION)?;
        let DigestKey([k0, k1]) = key;
        meta.insert("digest_key_0", k0)?;
        meta.insert("digest_key_1", k1)?;
    }
    txn.commit()?;
    Ok(())
}

/// Creates an initialised, empty database at `path`: built under a
/// temporary name, synced, then renamed into place (and the directory
/// synced), so a crash leaves either no file or a whole one.
fn create(dir: &Path, path: &Path, faults: &Arc<DiskFaults>) -> Result<(), StorageError> {
    let mut new_name = path.as_os_str().to_owned();
    new_name.push(NEW_FILE_SUFFIX);
    let new_path = PathBuf::from(new_name);
    let io = |source| StorageError::Io {
        path: new_path.clone(),
        source,
    };
    // Not truncated on open: another process starting at the same moment
    // may hold it; redb's lock (taken by `open_db`) decides who builds it.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&new_path)
        .map_err(io)?;
    let leftover = file.metadata().map_err(io)?.len() > 0;
    let db = {
        let file = FileBackend::new(file).map_err(|_| StorageError::Locked {
            path: new_path.clone(),
        })?;
        // A leftover of a crash during an earlier creation: start it over.
        if leftover {
            file.set_len(0).map_err(io)?;
        }
        builder()
            .create_with_backend(Disk::new(file, Arc::clone(faults)))
            .map_err(|e| StorageError::Damaged {
                path: new_path.clone(),
                what: e.to_string(),
            })?
    };
    initialise(&db, DigestKey::random())?;
    drop(db);
    std::fs::rename(&new_path, path).map_err(io)?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StorageError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// The file's name while it is being created: it is renamed to
/// [`DB_FILE_NAME`] only once initialised, so an empty or half-made
/// database never sits under the real name.
const NEW_FILE_SUFFIX: &str = ".new";

impl Durable {
    /// Opens `dir/abacus.redb`, creating it if it does not exist, and
    /// checks its format. redb locks the file: a second server on the same
    /// directory is refused. `faults` is the disk's fault switch (off in
    /// production).
    pub fn open(dir: &Path, faults: &Arc<DiskFaults>) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::CreateDir {
            dir: dir.to_owned(),
            source,
        })?;
        let path = dir.join(DB_FILE_NAME);
        if !path.exists() {
            create(dir, &path, faults)?;
        }
        let io = |source| StorageError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        if file.metadata().map_err(io)?.len() == 0 {
            return Err(StorageError::Empty { path });
        }
        let (db, fence) = open_db(&path, file, faults)?;
        Self::checked(db, fence, path)
    }

    /// Opens the database on `volume`, creating it in place if the volume
    /// is empty (a volume is the caller's: nothing else writes on it, so a
    /// creation cut short by a crash, which leaves redb's empty database
    /// without our tables, is created again rather than refused).
    pub fn open_volume(volume: &dyn Volume) -> Result<Self, StorageError> {
        let path = volume.name();
        let io = |source| StorageError::Io {
            path: path.clone(),
            source,
        };
        let (db, fence) = open_backend(&path, Boxed(volume.open().map_err(io)?))?;
        let created = (|| {
            let txn = db.begin_read()?;
            Ok::<_, StorageError>(match txn.open_table(META) {
                Ok(_) => true,
                Err(redb::TableError::TableDoesNotExist(_)) => false,
                Err(e) => return Err(e.into()),
            })
        })()?;
        if !created {
            initialise(&db, volume.digest_key())?;
        }
        Self::checked(db, fence, path)
    }

    /// An open database, once its format version and digest key are read
    /// and found right.
    fn checked(db: Database, fence: Fence, path: PathBuf) -> Result<Self, StorageError> {
        let damaged = |e: &dyn std::fmt::Display| StorageError::Damaged {
            path: path.clone(),
            what: e.to_string(),
        };
        let (found, key) = (|| {
            let txn = db.begin_read().map_err(|e| damaged(&e))?;
            let meta = match txn.open_table(META) {
                Ok(meta) => meta,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok((None, None)),
                Err(e) => return Err(damaged(&e)),
            };
            let get = |name| {
                meta.get(name)
                    .map(|v| v.map(|v| v.value()))
                    .map_err(|e| damaged(&e))
            };
            let key = match (get("digest_key_0")?, get("digest_key_1")?) {
                (Some(k0), Some(k1)) => Some(DigestKey([k0, k1])),
                _ => None,
            };
            Ok((get("format")?, key))
        })()?;
        let digest_key = match (found, key) {
            (None, _) => return Err(StorageError::NotAbacus { path }),
            (Some(2 | FORMAT_VERSION), Some(key)) => key,
            (Some(2 | FORMAT_VERSION), None) => {
                return Err(StorageError::Damaged {
                    path,
                    what: "its digest key is missing".into(),
                });
            }
            (Some(found), _) => return Err(StorageError::Format { path, found }),
        };
        let upgraded = match found {
            Some(2) => Some(upgrade_from_2(&db, &path)?),
            _ => None,
        };
        Ok(Self {
            db,
            fence,
            path,
            digest_key,
            deleted_below: 0,
            upgraded,
        })
    }

    /// The records moved when this open found a format-2 file and moved it
    /// to the current format; `None` if the file was current.
    pub fn upgraded(&self) -> Option<u64> {
        self.upgraded
    }

    /// Stops every later write of this open, before it is dropped after a
    /// failed batch: redb does not know a commit a panic cut short, and
    /// its `Drop` would otherwise commit again from that half-done state
    /// (see [`super::fence`]). The next open is not fenced.
    pub(super) fn fence(&self) {
        self.fence.raise();
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key of the request-ID digests this file's records are keyed by.
    pub fn digest_key(&self) -> DigestKey {
        self.digest_key
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
        mut on_evict: impl FnMut(Evicted),
    ) -> Result<Loaded, StorageError> {
        let mut loaded = Loaded::default();
        let mut deleted_below = None;
        let mut read = || -> Result<(), String> {
            let e = |e: redb::Error| e.to_string();
            let txn = self.db.begin_read().map_err(|x| e(x.into()))?;
            let table = txn.open_table(REGISTERS).map_err(|x| e(x.into()))?;
            for row in table.iter().map_err(|x| e(x.into()))? {
                let (name, value) = row.map_err(|x| e(x.into()))?;
                let (name, (value, check)) = (name.value(), value.value());
                if register_check(name, value) != check {
                    return Err(format!("register {name:?} fails its checksum"));
                }
                registers.set(name, value);
                loaded.registers += 1;
            }
            let records = txn.open_table(RECORDS).map_err(|x| e(x.into()))?;
            for row in records.iter().map_err(|x| e(x.into()))? {
                let (seq, value) = row.map_err(|x| e(x.into()))?;
                let seq = seq.value();
                deleted_below.get_or_insert(seq);
                let (key, fingerprint, tag, number, owner, check) = value.value();
                let (key, owner) = (IdDigest(key), OwnerKey(owner));
                if record_check(seq, key, fingerprint, tag, number, owner) != check {
                    return Err(format!("dedup record {seq} fails its checksum"));
                }
                let outcome = decode(tag, number)
                    .ok_or_else(|| format!("dedup record {seq}: unknown outcome tag {tag}"))?;
                store
                    .restore(seq, key, fingerprint, outcome, owner, now, &mut on_evict)
                    .map_err(|e: RestoreError| format!("dedup record {seq}: {e}"))?;
                loaded.records += 1;
            }
            Ok(())
        };
        read().map_err(|what| StorageError::Damaged {
            path: self.path.clone(),
            what,
        })?;
        if let Some(first) = deleted_below {
            self.deleted_below = first;
        }
        Ok(loaded)
    }

    /// Commits a write that changes nothing a reader sees: proof that the
    /// disk takes writes again, before a recovered store serves.
    pub fn probe(&mut self) -> Result<(), StorageError> {
        let txn = begin_write(&self.db)?;
        {
            let mut meta = txn.open_table(META)?;
            let n = meta.get("probes")?.map_or(0, |v| v.value());
            meta.insert("probes", n.wrapping_add(1))?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Writes a batch of decided commits, in order, in one durable
    /// transaction: on disk when this returns `Ok`. On `Err` the batch may
    /// or may not be on disk, and this handle must not be used again (redb
    /// refuses further writes after an I/O error): reopen the file.
    pub(crate) fn write_batch(&mut self, batch: &[Write]) -> Result<(), StorageError> {
        let delete_below = batch.iter().map(|w| w.delete_below).max().unwrap_or(0);
        let delete =
            delete_below > self.deleted_below || batch.iter().any(|w| !w.deletes.is_empty());
        if !delete
            && batch
                .iter()
                .all(|w| w.register.is_none() && w.record.is_none() && w.delete.is_none())
        {
            return Ok(());
        }
        let txn = begin_write(&self.db)?;
        {
            let mut registers = txn.open_table(REGISTERS)?;
            let mut records = txn.open_table(RECORDS)?;
            for write in batch {
                if let Some(name) = &write.delete {
                    registers.remove(&**name)?;
                }
                if let Some((name, value)) = &write.register {
                    let check = register_check(name, *value);
                    registers.insert(&**name, (*value, check))?;
                }
                if let Some(r) = &write.record {
                    let (tag, number) = encode(r.outcome);
                    let check = record_check(r.seq, r.key, r.fingerprint, tag, number, r.owner);
                    let row = (r.key.0, r.fingerprint, tag, number, r.owner.0, check);
                    records.insert(r.seq, row)?;
                }
            }
            for seq in batch.iter().flat_map(|w| &w.deletes) {
                records.remove(seq)?;
            }
            // After the inserts: a record inserted and evicted within one
            // batch (a tiny capacity) goes too.
            if delete_below > self.deleted_below {
                records.retain_in(self.deleted_below..delete_below, |_, _| false)?;
            }
        }
        txn.commit()?;
        self.deleted_below = self.deleted_below.max(delete_below);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{
        dedup::{DedupConfig, Lookup},
        journal::RecordRow,
    };

    /// The digest of a test ID (one fixed key, the default scope).
    fn k(id: &str) -> IdDigest {
        DigestKey([3, 5]).digest("", id)
    }

    /// One commit's write: `register = value` (if any), the record
    /// `(seq, id, fingerprint, outcome)` (if any), evictions below
    /// `delete_below`.
    fn write(
        register: Option<(&str, f64)>,
        record: Option<(u64, &str, u64, StoredOutcome)>,
        delete_below: u64,
    ) -> Write {
        Write {
            seq: 0,
            register: register.map(|(name, value)| (name.into(), value)),
            delete: None,
            record: record.map(|(seq, id, fingerprint, outcome)| RecordRow {
                seq,
                key: k(id),
                fingerprint,
                outcome,
                owner: OwnerKey(1),
            }),
            delete_below,
            deletes: Vec::new(),
        }
    }

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
        let mut d = Durable::open(dir, &DiskFaults::new()).unwrap();
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

    /// Every record comes back charged to the client that made it (the
    /// per-client bound and fair share depend on it).
    #[test]
    fn owners_survive_reopen() {
        let tmp = TempDir::new("owners");
        let owners = [1u64, 2, 1, 2, 2, 1];
        {
            let mut d = Durable::open(&tmp.0, &DiskFaults::new()).unwrap();
            assert_eq!(d.upgraded(), None, "a new file is current");
            for (seq, owner) in owners.iter().enumerate() {
                let seq = seq as u64;
                let id = format!("id-{seq}");
                let outcome = StoredOutcome::Applied { value: 1.0 };
                let mut w = write(None, Some((seq, &id, 7, outcome)), 0);
                if let Some(r) = &mut w.record {
                    r.owner = OwnerKey(*owner);
                }
                d.write_batch(&[w]).unwrap();
            }
        }
        let (_d, _regs, store, loaded) = reload(&tmp.0, 100);
        assert_eq!(loaded.records, 6);
        assert_eq!(store.held_by(OwnerKey(1)), 3);
        assert_eq!(store.held_by(OwnerKey(2)), 3);
    }

    /// Writes a format-2 file at `dir`: register `x` = 5, and a `dedup`
    /// row per `(seq, owner)` (an owner row only where `owner` is `Some`),
    /// plus `stray_owners` (owner rows without a record). `bad_check`
    /// gives that record's row a wrong checksum.
    fn write_format_2(
        dir: &Path,
        records: &[(u64, Option<u64>)],
        stray_owners: &[(u64, u64)],
        bad_check: Option<u64>,
    ) {
        std::fs::create_dir_all(dir).unwrap();
        let db = Database::builder().create(dir.join(DB_FILE_NAME)).unwrap();
        let txn = begin_write(&db).unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("format", 2).unwrap();
            meta.insert("digest_key_0", 3).unwrap();
            meta.insert("digest_key_1", 5).unwrap();
            let mut registers = txn.open_table(REGISTERS).unwrap();
            registers
                .insert("x", (5.0, register_check("x", 5.0)))
                .unwrap();
            let mut dedup = txn.open_table(V2_DEDUP).unwrap();
            let mut owner_rows = txn.open_table(V2_DEDUP_OWNERS).unwrap();
            for &(seq, owner) in records {
                let key = k(&format!("id-{seq}"));
                let (tag, number) = encode(StoredOutcome::Applied { value: 1.0 });
                let mut check = v2_record_check(seq, key, 7, tag, number);
                if bad_check == Some(seq) {
                    check ^= 1;
                }
                dedup.insert(seq, (key.0, 7, tag, number, check)).unwrap();
                if let Some(owner) = owner {
                    owner_rows.insert(seq, owner).unwrap();
                }
            }
            for &(seq, owner) in stray_owners {
                owner_rows.insert(seq, owner).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    /// The format stored in the file at `dir`, read with redb alone.
    fn stored_format(dir: &Path) -> u64 {
        let db = Database::builder().create(dir.join(DB_FILE_NAME)).unwrap();
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        meta.get("format").unwrap().unwrap().value()
    }

    /// A format-2 file (records and owners in two tables) is moved to the
    /// current format when opened, in one transaction: every record keeps
    /// its owner, a record without an owner row goes to `RESTORED` (as
    /// format 2 read it), an owner row without a record is dropped, and the
    /// register is untouched. The next open finds the file current.
    #[test]
    fn a_format_2_file_is_moved_with_its_owners() {
        let tmp = TempDir::new("format2");
        let records = [
            (0, Some(1)),
            (1, Some(2)),
            (2, Some(1)),
            (3, None),
            (4, Some(2)),
            (5, None),
        ];
        write_format_2(&tmp.0, &records, &[(100, 9)], None);
        {
            let (d, regs, mut store, loaded) = reload(&tmp.0, 100);
            assert_eq!(d.upgraded(), Some(6));
            assert_eq!((loaded.registers, regs.get("x")), (1, Ok(5.0)));
            assert_eq!(loaded.records, 6);
            assert_eq!(store.held_by(OwnerKey(1)), 2, "records 0 and 2");
            assert_eq!(store.held_by(OwnerKey(2)), 2, "records 1 and 4");
            assert_eq!(store.held_by(OwnerKey::RESTORED), 2, "records 3 and 5");
            assert_eq!(store.held_by(OwnerKey(9)), 0);
            assert_eq!(
                store.lookup(k("id-4"), 7, Instant::now(), |_| {}),
                Lookup::Hit(StoredOutcome::Applied { value: 1.0 })
            );
        }
        assert_eq!(stored_format(&tmp.0), FORMAT_VERSION);
        let (d, _regs, store, loaded) = reload(&tmp.0, 100);
        assert_eq!(d.upgraded(), None);
        assert_eq!(loaded.records, 6);
        assert_eq!(store.held_by(OwnerKey::RESTORED), 2);
    }

    /// A format-2 record that fails its checksum stops the move: the file
    /// is refused as damaged and stays in format 2, untouched.
    #[test]
    fn a_damaged_format_2_file_is_refused_and_left_as_it_was() {
        let tmp = TempDir::new("format2-damaged");
        write_format_2(&tmp.0, &[(0, Some(1)), (1, Some(1))], &[], Some(1));
        let e = Durable::open(&tmp.0, &DiskFaults::new()).unwrap_err();
        assert!(
            matches!(&e, StorageError::Damaged { what, .. } if what.contains("record 1")),
            "{e}"
        );
        assert_eq!(stored_format(&tmp.0), 2);
    }

    /// The owner is under the row's checksum: a row whose owner changed
    /// is refused at load, not charged to someone else.
    #[test]
    fn a_record_whose_owner_changed_fails_its_checksum() {
        let tmp = TempDir::new("owner-flip");
        {
            let mut d = Durable::open(&tmp.0, &DiskFaults::new()).unwrap();
            let outcome = StoredOutcome::Applied { value: 1.0 };
            d.write_batch(&[write(None, Some((0, "id-0", 7, outcome)), 0)])
                .unwrap();
            let txn = begin_write(&d.db).unwrap();
            {
                let mut records = txn.open_table(RECORDS).unwrap();
                let (key, fingerprint, tag, number, owner, check) =
                    records.get(0).unwrap().unwrap().value();
                assert_eq!(owner, 1);
                records
                    .insert(0, (key, fingerprint, tag, number, 2, check))
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let mut d = Durable::open(&tmp.0, &DiskFaults::new()).unwrap();
        let e = d
            .load(
                &mut Registers::new(),
                &mut DedupStore::new(&DedupConfig::default()),
                Instant::now(),
                |_| {},
            )
            .unwrap_err();
        assert!(
            matches!(&e, StorageError::Damaged { what, .. } if what.contains("record 0 fails its checksum")),
            "{e}"
        );
    }

    #[test]
    fn commits_survive_reopen_and_evictions_are_deleted() {
        let tmp = TempDir::new("reopen");
        {
            let mut d = Durable::open(&tmp.0, &DiskFaults::new()).unwrap();
            for seq in 0..3u64 {
                let id = format!("id-{seq}");
                let value = seq as f64 + 1.0;
                let outcome = StoredOutcome::Applied { value };
                d.write_batch(&[write(Some(("x", value)), Some((seq, &id, 7, outcome)), 0)])
                    .unwrap();
            }
            // A refused execution: recorded, register untouched; and the
            // first record evicted.
            let overflow = StoredOutcome::RegisterOverflow { current: 3.0 };
            d.write_batch(&[write(None, Some((3, "big", 8, overflow)), 1)])
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
        assert_eq!(store.lookup(k("id-0"), 7, now, |_| {}), Lookup::Miss);
        assert_eq!(
            store.lookup(k("id-2"), 7, now, |_| {}),
            Lookup::Hit(StoredOutcome::Applied { value: 3.0 })
        );
        assert_eq!(
            store.lookup(k("big"), 8, now, |_| {}),
            Lookup::Hit(StoredOutcome::RegisterOverflow { current: 3.0 })
        );
        assert_eq!((store.front_seq(), store.next_seq()), (1, 4));
    }

    #[test]
    fn a_smaller_capacity_applies_on_reload() {
        let tmp = TempDir::new("shrink");
        {
            let mut d = Durable::open(&tmp.0, &DiskFaults::new()).unwrap();
            for seq in 0..5u64 {
                let id = format!("id-{seq}");
                let full = StoredOutcome::TooManyRegisters;
                d.write_batch(&[write(None, Some((seq, &id, 0, full)), 0)])
                    .unwrap();
            }
        }
        let (mut d, _regs, store, _) = reload(&tmp.0, 2);
        assert_eq!((store.front_seq(), store.len()), (3, 2));
        // The next commit deletes what the reload evicted.
        d.write_batch(&[write(None, None, store.front_seq())])
            .unwrap();
        drop(d);
        let (_d, _regs, store, loaded) = reload(&tmp.0, 100);
        assert_eq!((loaded.records, store.front_seq()), (2, 3));
    }

    /// The format version of both commit slots in the header of the redb
    /// file at `path` (redb 2.6's layout: slots of 128 bytes from byte 64,
    /// each starting with its version).
    fn slot_versions(path: &Path) -> [u8; 2] {
        let bytes = std::fs::read(path).unwrap();
        [bytes[64], bytes[64 + 128]]
    }

    /// A file written by an older build (redb's v2 format, whose repair can
    /// trust a stale allocator state after a power cut: see `builder`)
    /// opens with its data and is moved to v3 for good.
    #[test]
    fn a_v2_file_is_moved_to_v3_with_its_data() {
        let tmp = TempDir::new("v2");
        std::fs::create_dir_all(&tmp.0).unwrap();
        let path = tmp.0.join(DB_FILE_NAME);
        {
            let db = Database::builder().create(&path).unwrap();
            initialise(&db, DigestKey([3, 5])).unwrap();
            let txn = begin_write(&db).unwrap();
            {
                let mut registers = txn.open_table(REGISTERS).unwrap();
                registers
                    .insert("x", (42.0, register_check("x", 42.0)))
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        assert_eq!(
            slot_versions(&path),
            [2, 2],
            "redb 2.6 writes v2 by default"
        );
        {
            let (mut d, regs, _, loaded) = reload(&tmp.0, 100);
            assert_eq!((loaded.registers, regs.get("x")), (1, Ok(42.0)));
            d.write_batch(&[write(Some(("x", 43.0)), None, 0)]).unwrap();
        }
        assert_eq!(slot_versions(&path), [3, 3]);
        let (_d, regs, _, _) = reload(&tmp.0, 100);
        assert_eq!(regs.get("x"), Ok(43.0));
        // A new file is v3 from the start.
        let fresh = TempDir::new("v3");
        drop(Durable::open(&fresh.0, &DiskFaults::new()).unwrap());
        assert_eq!(slot_versions(&fresh.0.join(DB_FILE_NAME)), [3, 3]);
    }

    #[test]
    fn a_second_server_on_the_same_dir_is_refused() {
        let tmp = TempDir::new("lock");
        let _first = Durable::open(&tmp.0, &DiskFaults::new()).unwrap();
        let second = Durable::open(&tmp.0, &DiskFaults::new()).unwrap_err();
        assert!(matches!(second, StorageError::Locked { .. }), "{second}");
    }
}
