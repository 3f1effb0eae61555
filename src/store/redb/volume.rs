//! A database file that is not a file: a [`Volume`] hands redb a
//! [`StorageBackend`] of the caller's making. The simulation puts durable
//! mode on a simulated disk this way (one that loses unsynced writes at a
//! power cut, tears them, and fails on demand), with the same ledger, file
//! format, writer and recovery as `--data-dir`.
//!
//! A volume is used by [`super::RedbLedger::open_volume`], which writes
//! every commit on the committing task's thread and recovers on a tokio
//! task (no writer thread): on a current-thread runtime whose clock the
//! caller drives, durable mode is then as deterministic as the rest.

use std::{fmt, io, path::PathBuf};

use redb::StorageBackend;

use crate::store::dedup::DigestKey;

/// Where a durable ledger keeps its database, when it is not a directory.
pub trait Volume: Send + Sync + fmt::Debug + 'static {
    /// A name for logs and errors (no file of that name need exist).
    fn name(&self) -> PathBuf;

    /// A new handle on the database's bytes, for one open of the database
    /// (the ledger opens again after a failed write). Empty (length 0)
    /// the first time: the ledger then creates the database in place.
    fn open(&self) -> io::Result<Box<dyn StorageBackend>>;

    /// The key of the request-ID digests, for a database created on this
    /// volume (a file keeps the key it was created with).
    fn digest_key(&self) -> DigestKey;
}

/// A boxed backend is a backend (redb takes it by value, generically).
#[derive(Debug)]
pub(super) struct Boxed(pub(super) Box<dyn StorageBackend>);

impl StorageBackend for Boxed {
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.0.read(offset, len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self, eventual: bool) -> io::Result<()> {
        self.0.sync_data(eventual)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write(offset, data)
    }
}
