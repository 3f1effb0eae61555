//! Durable mode (`abacus serve --data-dir DIR`): registers and dedup
//! records in an embedded [redb](https://docs.rs/redb) file, so both
//! survive a restart and a retry of a request applied before the restart
//! is replayed, not applied again.
//!
//! # Shape
//! [`RedbLedger`] is a [`MemoryLedger`] with a journal attached (see
//! `super::journal`): every commit is decided in memory under the
//! ledger's lock, exactly as without a disk, and queued; a writer thread
//! takes whatever is queued as a batch, writes it in one redb transaction
//! (two-phase: two fsyncs, see [`file`](mod@file)), and reports back (a lone caller finding the
//! writer idle writes its own commit the same way: see `writer.rs`). So the
//! lock is never held while the disk works, and under concurrency many
//! commits share one fsync (group commit). A caller is answered only once
//! its commit is durable; so is a duplicate of it, and so is a read of a
//! register it wrote.
//!
//! # Failures
//! If a batch fails (disk full, an I/O error, a panic inside the engine),
//! its callers are answered UNAVAILABLE with an unknown fate, the ledger
//! refuses every register call (UNAVAILABLE, certainly not applied) and
//! reports [`StoreHealth::NotServing`], and the writer reopens the file and
//! reloads memory from it, retrying with backoff until a probe write
//! succeeds. Then it serves again, by itself.
//!
//! # Layout
//! - [`file`](mod@file): the database file: tables, format, load, batch write.
//! - `writer`: the writer thread: batches, failure, recovery.
//! - `gate.rs`: redb's backend behind a gate, for the two below.
//! - `disk.rs`: the disk-fault switch (tests, simulation), kept across
//!   reopens; `fence.rs`: the fence raised on a broken open.
//! - `panics.rs`: redb's panics caught and reported as errors.

mod disk;
mod fence;
pub mod file;
mod gate;
mod panics;
mod volume;
mod writer;

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
};

use tokio::{sync::watch, time::Instant};

use crate::{
    core::Registers,
    error::ServiceError,
    store::{
        self, AccumulateArgs, Backend, BoxFuture, Ledger, MemoryLedger, StatsView, StoreHealth,
        dedup::{DedupConfig, DedupStore},
        journal::{Lead, Queue},
    },
    trace::{Event, EventSink},
};

/// What a [`Volume`] hands redb (re-exported: a volume's maker needs no
/// redb dependency of its own).
pub use ::redb::StorageBackend;
pub use disk::{DiskFault, DiskFaults};
pub use file::{DB_FILE_NAME, FORMAT_VERSION, StorageError};
pub use panics::{is_catching, panic_message};
pub use volume::Volume;
pub use writer::WriteStats;

/// The writer thread's name (as `ps -L` and `/proc/PID/task/*/comm` show
/// it, cut to 15 bytes there: `abacus-redb-wri`).
pub const WRITER_THREAD_NAME: &str = "abacus-redb-writer";

use file::Durable;

/// Where the database is: a directory (behind the fault switch), or a
/// volume.
struct Place {
    /// The directory, or the volume's name (for the log).
    dir: PathBuf,
    faults: Arc<DiskFaults>,
    volume: Option<Arc<dyn Volume>>,
}

impl Place {
    /// Opens (or creates) the database here: at start and on each reopen.
    fn open(&self) -> Result<Durable, StorageError> {
        match &self.volume {
            Some(volume) => Durable::open_volume(&**volume),
            None => Durable::open(&self.dir, &self.faults),
        }
    }

    /// The database file, for a message.
    fn file(&self) -> PathBuf {
        match &self.volume {
            Some(volume) => volume.name(),
            None => self.dir.join(DB_FILE_NAME),
        }
    }
}

/// What [`RedbLedger::start`] gives: memory, the queue, the writer, the
/// database's path.
type Started = (Arc<MemoryLedger>, Arc<Queue>, Arc<writer::Writer>, PathBuf);

/// A volume's ledger's recovery (see [`RedbLedger::open_volume`]): after
/// each failure, reopens the file with backoff until it serves again.
/// Ends with the ledger (its health sender gone).
async fn recover_inline(writer: Arc<writer::Writer>, mut health: watch::Receiver<StoreHealth>) {
    while health.changed().await.is_ok() {
        if *health.borrow_and_update() == StoreHealth::Serving {
            continue;
        }
        let mut pause = writer::RECOVERY_PAUSE_MIN;
        loop {
            tokio::time::sleep(pause).await;
            if writer.recover_inline(pause) {
                break;
            }
            pause = writer::next_pause(pause);
        }
    }
}

/// The durable ledger: see the module documentation.
pub struct RedbLedger {
    memory: Arc<MemoryLedger>,
    queue: Arc<Queue>,
    stats: Arc<writer::Writer>,
    writer: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl fmt::Debug for RedbLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbLedger")
            .field("path", &self.path)
            .field("memory", &self.memory)
            .finish_non_exhaustive()
    }
}

/// The file opened and read back: what start-up and each recovery attempt
/// need.
struct Opened {
    durable: Durable,
    registers: Registers,
    store: DedupStore,
    /// For the log, written by the caller once it holds no lock.
    report: LoadReport,
}

/// What an open and load found.
#[derive(Debug)]
struct LoadReport {
    path: PathBuf,
    loaded: file::Loaded,
    /// Records moved from format 2 by this open ([`Durable::upgraded`]).
    upgraded: Option<u64>,
}

impl LoadReport {
    fn log(&self) {
        if let Some(records) = self.upgraded {
            tracing::info!(
                path = %self.path.display(),
                records,
                from = 2,
                to = FORMAT_VERSION,
                "durable file moved to the current format (older builds now refuse it)"
            );
        }
        tracing::info!(
            path = %self.path.display(),
            registers = self.loaded.registers,
            dedup_records = self.loaded.records,
            "durable state loaded"
        );
    }
}

impl Place {
    /// Opens the database here and reads registers and dedup records back.
    /// redb may panic on a damaged file instead of returning an error:
    /// that is a damaged file too, and must not take the process down with
    /// a backtrace instead of a sentence naming the file.
    fn open_and_load(
        &self,
        dedup: &DedupConfig,
        events: &EventSink,
    ) -> Result<Opened, StorageError> {
        let opened = panics::catch(|| {
            let mut durable = self.open()?;
            let mut registers = Registers::new();
            let mut store = DedupStore::new(dedup);
            let loaded = durable.load(&mut registers, &mut store, Instant::now(), |e| {
                // Only when the capacity shrank since the records were
                // written; no ledger lock is held here (on recovery, only
                // the disk's, which no caller waits on: they `try_lock`
                // it), so the event may be emitted at once.
                events.emit(Event::DedupEvicted {
                    request_id: e.key.to_string(),
                    reason: e.reason,
                });
            })?;
            let report = LoadReport {
                path: durable.path().to_owned(),
                loaded,
                upgraded: durable.upgraded(),
            };
            Ok::<_, StorageError>(Opened {
                durable,
                registers,
                store,
                report,
            })
        });
        opened.unwrap_or_else(|panic| {
            Err(StorageError::Damaged {
                path: self.file(),
                what: format!("the storage engine panicked reading it ({panic})"),
            })
        })
    }
}

impl RedbLedger {
    /// Opens (creating if needed) the database in `data_dir`, reloads the
    /// registers and dedup records an earlier process wrote, and starts the
    /// writer thread. Fails if the file cannot be opened, is held by
    /// another process, or is damaged.
    pub fn open(
        dedup: DedupConfig,
        events: EventSink,
        data_dir: &Path,
    ) -> Result<Self, StorageError> {
        Self::open_with_faults(dedup, events, data_dir, DiskFaults::new())
    }

    /// [`RedbLedger::open`] over a disk whose behaviour `faults` switches
    /// at run time (tests; the simulation).
    pub fn open_with_faults(
        dedup: DedupConfig,
        events: EventSink,
        data_dir: &Path,
        faults: Arc<DiskFaults>,
    ) -> Result<Self, StorageError> {
        let place = Place {
            dir: data_dir.to_owned(),
            faults,
            volume: None,
        };
        let (memory, queue, writer, path) = Self::start(dedup, events, place)?;
        let stats = Arc::clone(&writer);
        let writer = std::thread::Builder::new()
            .name(WRITER_THREAD_NAME.into())
            .spawn(move || writer.run())
            .map_err(StorageError::Thread)?;
        Ok(Self {
            memory,
            queue,
            stats,
            writer: Some(writer),
            path,
        })
    }

    /// A durable ledger on `volume` instead of a directory, for a
    /// current-thread runtime: no writer thread; every commit is written on
    /// the committing task's thread (which a current-thread runtime does
    /// anyway), and after a failure a task of this runtime reopens the
    /// file, pausing on tokio's clock. So a simulation driving that clock
    /// sees durable mode run as deterministically as everything else.
    /// Refused on a multi-threaded runtime, where commits would queue for
    /// a writer thread that does not exist.
    pub fn open_volume(
        dedup: DedupConfig,
        events: EventSink,
        volume: Arc<dyn Volume>,
    ) -> Result<Self, StorageError> {
        use tokio::runtime::{Handle, RuntimeFlavor};
        let path = volume.name();
        let handle = Handle::try_current()
            .ok()
            .filter(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread)
            .ok_or_else(|| StorageError::Io {
                path: path.clone(),
                source: std::io::Error::other(
                    "a durable ledger on a volume runs on a current-thread tokio runtime only",
                ),
            })?;
        let place = Place {
            dir: path.clone(),
            faults: DiskFaults::new(),
            volume: Some(volume),
        };
        let (memory, queue, writer, _) = Self::start(dedup, events, place)?;
        let health = memory.health();
        handle.spawn(recover_inline(Arc::clone(&writer), health));
        Ok(Self {
            memory,
            queue,
            stats: writer,
            writer: None,
            path,
        })
    }

    /// Opens the database, loads it, and connects memory and writer.
    fn start(dedup: DedupConfig, events: EventSink, place: Place) -> Result<Started, StorageError> {
        let Opened {
            durable,
            registers,
            store,
            report,
        } = place.open_and_load(&dedup, &events)?;
        report.log();
        let digest_key = durable.digest_key();
        let path = durable.path().to_owned();
        let queue = Arc::new(Queue::default());
        let writer = Arc::new(writer::Writer::new(
            writer::Disk {
                durable: Some(durable),
                place,
                dedup: dedup.clone(),
                events: events.clone(),
            },
            Arc::clone(&queue),
        ));
        let memory = Arc::new(MemoryLedger::with_journal(
            &dedup,
            events,
            digest_key,
            registers,
            store,
            Arc::clone(&queue),
            Arc::clone(&writer) as Arc<dyn Lead>,
        ));
        writer.report_to(&memory);
        Ok((memory, queue, writer, path))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The in-memory side (for tests and tools).
    pub fn memory(&self) -> &MemoryLedger {
        &self.memory
    }

    /// How many commits shared each transaction (and fsync) so far.
    pub fn write_stats(&self) -> WriteStats {
        self.stats.stats()
    }
}

impl Drop for RedbLedger {
    /// Lets the writer persist what is queued, then waits for it to close
    /// the file (so the same process can open it again at once).
    fn drop(&mut self) {
        self.queue.close();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "the durable writer thread panicked");
        }
    }
}

#[cfg(test)]
mod power_cut_tests;
#[cfg(test)]
mod tests;

impl Ledger for RedbLedger {
    fn begin<'a>(
        &'a self,
        args: &'a AccumulateArgs,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<store::Begin<'a>, ServiceError>> {
        Ledger::begin(&*self.memory, args, deadline)
    }

    fn get<'a>(
        &'a self,
        register: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<f64, ServiceError>> {
        Ledger::get(&*self.memory, register, deadline)
    }

    fn delete<'a>(
        &'a self,
        register: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Option<f64>, ServiceError>> {
        Ledger::delete(&*self.memory, register, deadline)
    }

    fn stats(&self) -> BoxFuture<'_, Result<StatsView, ServiceError>> {
        Ledger::stats(&*self.memory)
    }

    fn health(&self) -> watch::Receiver<StoreHealth> {
        self.memory.health()
    }

    fn backend(&self) -> Backend {
        Backend::Redb
    }
}
