//! The simulated disk under the durable server: redb's file is a
//! [`SimDisk`], owned by the harness (it outlives every incarnation of the
//! host), driven by the run's seed.
//!
//! # The model
//! - **What reads see, what survives.** The disk keeps two images: the
//!   *volatile* one (every write, as the page cache holds it) and the
//!   *durable* one (what a power cut leaves). `sync_data` makes the
//!   volatile image durable. Writes since the last sync are tracked by
//!   512-byte sector.
//! - **A power cut** (a host crash, or an injected cut at a sync) keeps a
//!   random subset of the unsynced sectors, each with probability ½: writes
//!   are lost, reordered and torn (part of a write survives) — everything
//!   but a torn sector, which real disks do not do below their sector size.
//!   The crash draws per sector in offset order, so the outcome does not
//!   depend on the order redb issued its writes in (it flushes from a hash
//!   map, whose order changes with every process).
//! - **Power cuts inside a commit**: with probability `disk_cut_rate`, a
//!   sync with unsynced writes does not happen: the power fails just
//!   before it (the sync returns an error; the disk is dead until the
//!   host restarts, which the driver does at once). That is the one point
//!   a crash can fall between a commit's writes and its fsync, since a
//!   commit runs synchronously within one simulation step.
//! - **I/O errors**: with probability `disk_error_rate`, a read fails, a
//!   sync fails, or the writes between two syncs fail (drawn at the
//!   first). A failed write or sync drops every write since the last sync
//!   from both images — they reached neither the file nor the disk — so a
//!   failed commit was certainly not applied, and the ledger is right to
//!   call it unknown. (Linux may instead keep such pages readable but
//!   never write them: fsyncgate. Not modelled.)
//! - **The negative control** ([`DiskBug::AckBeforeFsync`]): `sync_data`
//!   returns at once and the data reaches the disk one sync later, as with
//!   a disk that acknowledges a flush from its volatile cache: the ledger
//!   answers a commit before it is durable.
//!
//! Each stream of draws (reads; writes and syncs; power cuts and their
//! sectors) is its own, so the count of reads — which redb's cache decides
//! — never shifts the other draws.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, io,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
};

use abacus::store::{
    dedup::DigestKey,
    redb::{StorageBackend, Volume},
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{
    history::{Entry, History},
    seed::{derive_seed, digest_key},
};

/// The sector: the unit a power cut keeps or loses.
const SECTOR: u64 = 512;

/// A bug of the disk, for a negative control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBug {
    /// `sync_data` returns before the data is durable (it becomes durable
    /// at the next sync): the ledger acknowledges before the fsync.
    AckBeforeFsync,
    /// Where a sync would fail with an injected I/O error, the disk panics
    /// instead (its state left exactly as by the error): a panic inside
    /// redb, which the ledger catches and turns into a failed batch. Not
    /// a bug the checks must find: a run on this disk must pass, which
    /// shows that a panic abacus catches on purpose fails no run.
    PanicsForSyncErrors,
}

/// The message of [`DiskBug::PanicsForSyncErrors`]'s panics.
pub const SYNC_PANIC: &str = "injected: the disk panics in a sync";

/// What the disk did that the history should show.
#[derive(Debug, Clone, PartialEq)]
pub enum DiskNote {
    /// The power failed just before a sync; of the unsynced sectors, `kept`
    /// survived and `lost` did not.
    PowerCut {
        /// Sectors that survived.
        kept: usize,
        /// Sectors lost.
        lost: usize,
    },
    /// An injected I/O error.
    Error(DiskOp),
    /// The server could not open its database (it tries again). For
    /// people only: no check reads `why`.
    OpenFailed {
        /// The error, as the ledger says it.
        why: String,
    },
    /// The server opened its database and loaded these register values
    /// (`None`: absent); `final` for the harness's own look at the disk
    /// after the run (after a last power cut).
    Loaded {
        /// Each of the scenario's registers.
        registers: Vec<(String, Option<f64>)>,
    },
}

/// The operation an injected error struck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskOp {
    /// A read.
    Read,
    /// A write (the writes since the last sync are dropped).
    Write,
    /// A sync (the writes since the last sync are dropped).
    Sync,
}

impl fmt::Display for DiskNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PowerCut { kept, lost } => write!(
                f,
                "power cut before a sync: {kept} unsynced sector(s) kept, {lost} lost"
            ),
            Self::Error(op) => write!(f, "injected I/O error on {op:?}"),
            Self::OpenFailed { why } => write!(f, "open failed: {why}"),
            Self::Loaded { registers } => {
                f.write_str("loaded")?;
                for (name, value) in registers {
                    match value {
                        Some(v) => write!(f, " {name}={v}")?,
                        None => write!(f, " {name}=absent")?,
                    }
                }
                Ok(())
            }
        }
    }
}

/// How the disk misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DiskFaultRates {
    /// Probability of an injected I/O error (per read, per sync, per run
    /// of writes between syncs).
    pub error_rate: f64,
    /// Probability of a power cut just before a sync that has writes to
    /// make durable.
    pub cut_rate: f64,
}

struct State {
    reads: ChaCha8Rng,
    writes: ChaCha8Rng,
    cuts: ChaCha8Rng,
    volatile: Vec<u8>,
    durable: Vec<u8>,
    /// Sectors written since the last sync.
    dirty: BTreeSet<u64>,
    /// [`DiskBug::AckBeforeFsync`]: sectors "synced" by the last sync and
    /// not durable yet, with their contents then, and the length then.
    lagging: BTreeMap<u64, Vec<u8>>,
    lagging_len: Option<usize>,
    /// Whether the writes since the last sync fail (drawn at the first).
    epoch_fails: Option<bool>,
    /// Bumped by every crash: handles of older incarnations are dead.
    incarnation: u64,
    /// The power failed in this incarnation: every operation fails.
    dead: bool,
    /// A power cut the driver has not turned into a host crash yet.
    cut_pending: bool,
    /// Faults stop (the liveness phase).
    quiet: bool,
    /// The disk's bug (off while the harness itself opens the disk).
    bug: Option<DiskBug>,
}

/// The simulated disk of one host: see the module documentation.
pub struct SimDisk {
    state: Mutex<State>,
    rates: DiskFaultRates,
    digest_key: DigestKey,
    host: String,
    history: History,
}

impl fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDisk")
            .field("host", &self.host)
            .field("rates", &self.rates)
            .finish_non_exhaustive()
    }
}

fn dead() -> io::Error {
    io::Error::other("the disk lost power")
}

fn injected() -> io::Error {
    io::Error::other("injected I/O error")
}

fn sectors(offset: u64, len: usize) -> std::ops::Range<u64> {
    let end = offset + len as u64;
    offset / SECTOR..end.div_ceil(SECTOR)
}

/// Copies sector `s` of `from` into `to` (as far as `from` reaches),
/// growing `to` if needed.
fn copy_sector(s: u64, from: &[u8], to: &mut Vec<u8>) {
    let start = (s * SECTOR) as usize;
    if start >= from.len() {
        return;
    }
    let end = (start + SECTOR as usize).min(from.len());
    put_sector(s, &from[start..end], to);
}

/// Writes `bytes` (a sector's contents, or the start of them) at sector
/// `s` of `to`, growing `to` if needed.
fn put_sector(s: u64, bytes: &[u8], to: &mut Vec<u8>) {
    let start = (s * SECTOR) as usize;
    if to.len() < start + bytes.len() {
        to.resize(start + bytes.len(), 0);
    }
    to[start..start + bytes.len()].copy_from_slice(bytes);
}

impl SimDisk {
    /// An empty disk for `host`, its draws from `seed`'s streams.
    pub fn new(
        seed: u64,
        host: &str,
        rates: DiskFaultRates,
        bug: Option<DiskBug>,
        history: History,
    ) -> Arc<Self> {
        let rng = |what: &str| {
            ChaCha8Rng::seed_from_u64(derive_seed(seed, &format!("disk-{what}-{host}")))
        };
        Arc::new(Self {
            state: Mutex::new(State {
                reads: rng("reads"),
                writes: rng("writes"),
                cuts: rng("cuts"),
                volatile: Vec::new(),
                durable: Vec::new(),
                dirty: BTreeSet::new(),
                lagging: BTreeMap::new(),
                lagging_len: None,
                epoch_fails: None,
                incarnation: 0,
                dead: false,
                cut_pending: false,
                quiet: false,
                bug,
            }),
            rates,
            digest_key: digest_key(seed, host),
            host: host.to_owned(),
            history,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note(&self, note: DiskNote) {
        self.history.push(&self.host, Entry::Disk(note));
    }

    /// The host crashed (or restarts): the power fails, if it has not
    /// already, and the next open sees what the disk kept. Returns what
    /// the cut did to unsynced writes, if there were any (for the caller
    /// to note: it runs outside the host).
    pub fn crash(&self) -> Option<DiskNote> {
        let mut s = self.lock();
        let mut cut = None;
        if !s.dead {
            let (kept, lost) = Self::lose_power(&mut s);
            cut = (kept + lost > 0).then_some(DiskNote::PowerCut { kept, lost });
        }
        s.incarnation += 1;
        s.dead = false;
        s.volatile = s.durable.clone();
        s.dirty.clear();
        s.lagging.clear();
        s.lagging_len = None;
        s.epoch_fails = None;
        cut
    }

    /// True once after an injected power cut: the driver crashes the host.
    pub fn take_cut(&self) -> bool {
        std::mem::take(&mut self.lock().cut_pending)
    }

    /// No more injected faults (a bug stays).
    pub fn quiet(&self) {
        self.lock().quiet = true;
    }

    /// Resolves every unsynced sector as a power cut does; returns
    /// (kept, lost).
    fn lose_power(s: &mut State) -> (usize, usize) {
        let (mut kept, mut lost) = (0, 0);
        let lagging = std::mem::take(&mut s.lagging);
        for (sector, bytes) in lagging {
            if s.cuts.random_bool(0.5) {
                put_sector(sector, &bytes, &mut s.durable);
                kept += 1;
            } else {
                lost += 1;
            }
        }
        if let Some(len) = s.lagging_len.take()
            && s.cuts.random_bool(0.5)
        {
            s.durable.resize(len, 0);
        }
        let dirty = std::mem::take(&mut s.dirty);
        for sector in dirty {
            if s.cuts.random_bool(0.5) {
                let State {
                    volatile, durable, ..
                } = &mut *s;
                copy_sector(sector, volatile, durable);
                kept += 1;
            } else {
                lost += 1;
            }
        }
        if s.volatile.len() != s.durable.len() && s.cuts.random_bool(0.5) {
            let len = s.volatile.len();
            s.durable.resize(len, 0);
        }
        s.dead = true;
        (kept, lost)
    }

    /// Drops the writes since the last sync from the volatile image (back
    /// to what the last sync left: the durable image, and the bug's
    /// lagging sectors over it).
    fn revert(s: &mut State) {
        // The length first: sectors a shrink cut off since the last sync
        // are dirty, and come back below with their synced bytes (not as
        // the zeroes a regrowth would leave).
        let len = s.lagging_len.unwrap_or(s.durable.len());
        s.volatile.resize(len, 0);
        for sector in std::mem::take(&mut s.dirty) {
            let State {
                volatile,
                durable,
                lagging,
                ..
            } = &mut *s;
            let start = (sector * SECTOR) as usize;
            if start < volatile.len() {
                let end = (start + SECTOR as usize).min(volatile.len());
                let synced = lagging.get(&sector);
                for (i, b) in volatile[start..end].iter_mut().enumerate() {
                    *b = match synced {
                        Some(bytes) => bytes.get(i).copied().unwrap_or(0),
                        None => durable.get(start + i).copied().unwrap_or(0),
                    };
                }
            }
        }
        s.epoch_fails = None;
    }

    /// Whether the writes since the last sync fail (drawn once per run of
    /// writes); on failure they are dropped.
    fn write_admitted(&self, s: &mut State) -> io::Result<()> {
        let rate = if s.quiet { 0.0 } else { self.rates.error_rate };
        let fails = *s
            .epoch_fails
            .get_or_insert_with(|| rate > 0.0 && s.writes.random_bool(rate));
        if fails {
            Self::revert(s);
            return Err(injected());
        }
        Ok(())
    }
}

/// One open of the database on the disk; dead once the host crashes.
#[derive(Debug)]
struct Handle {
    disk: Arc<SimDisk>,
    incarnation: u64,
}

impl Handle {
    fn state(&self) -> io::Result<MutexGuard<'_, State>> {
        let s = self.disk.lock();
        if s.dead || s.incarnation != self.incarnation {
            return Err(dead());
        }
        Ok(s)
    }
}

impl StorageBackend for Handle {
    fn len(&self) -> io::Result<u64> {
        Ok(self.state()?.volatile.len() as u64)
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut s = self.state()?;
        let rate = if s.quiet {
            0.0
        } else {
            self.disk.rates.error_rate
        };
        if rate > 0.0 && s.reads.random_bool(rate) {
            drop(s);
            self.disk.note(DiskNote::Error(DiskOp::Read));
            return Err(injected());
        }
        let start = offset as usize;
        s.volatile
            .get(start..start + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.state()?;
        if let Err(e) = self.disk.write_admitted(&mut s) {
            drop(s);
            self.disk.note(DiskNote::Error(DiskOp::Write));
            return Err(e);
        }
        let old = s.volatile.len() as u64;
        s.volatile.resize(len as usize, 0);
        // Grown: the new sectors are unsynced zeroes.
        s.dirty.extend(sectors(
            old.min(len),
            (len.max(old) - old.min(len)) as usize,
        ));
        Ok(())
    }

    fn sync_data(&self, _eventual: bool) -> io::Result<()> {
        let mut s = self.state()?;
        let disk = &self.disk;
        let quiet = s.quiet;
        if !quiet && !s.dirty.is_empty() && s.cuts.random_bool(disk.rates.cut_rate) {
            let (kept, lost) = SimDisk::lose_power(&mut s);
            s.cut_pending = true;
            drop(s);
            disk.note(DiskNote::PowerCut { kept, lost });
            return Err(dead());
        }
        if !quiet && disk.rates.error_rate > 0.0 && s.writes.random_bool(disk.rates.error_rate) {
            let bug = s.bug;
            SimDisk::revert(&mut s);
            drop(s);
            disk.note(DiskNote::Error(DiskOp::Sync));
            if bug == Some(DiskBug::PanicsForSyncErrors) {
                panic!("{SYNC_PANIC}");
            }
            return Err(injected());
        }
        s.epoch_fails = None;
        let dirty = std::mem::take(&mut s.dirty);
        match s.bug {
            None | Some(DiskBug::PanicsForSyncErrors) => {
                let State {
                    volatile, durable, ..
                } = &mut *s;
                for sector in dirty {
                    copy_sector(sector, volatile, durable);
                }
                let len = volatile.len();
                durable.resize(len, 0);
            }
            Some(DiskBug::AckBeforeFsync) => {
                // The previous sync's data lands now; this one's later.
                let lagging = std::mem::take(&mut s.lagging);
                for (sector, bytes) in lagging {
                    put_sector(sector, &bytes, &mut s.durable);
                }
                if let Some(len) = s.lagging_len.take() {
                    s.durable.resize(len, 0);
                }
                let State {
                    volatile, lagging, ..
                } = &mut *s;
                for sector in dirty {
                    let start = (sector * SECTOR) as usize;
                    if start < volatile.len() {
                        let end = (start + SECTOR as usize).min(volatile.len());
                        lagging.insert(sector, volatile[start..end].to_vec());
                    }
                }
                s.lagging_len = Some(s.volatile.len());
            }
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.state()?;
        if let Err(e) = self.disk.write_admitted(&mut s) {
            drop(s);
            self.disk.note(DiskNote::Error(DiskOp::Write));
            return Err(e);
        }
        let start = offset as usize;
        let end = start + data.len();
        if s.volatile.len() < end {
            s.volatile.resize(end, 0);
        }
        s.volatile[start..end].copy_from_slice(data);
        s.dirty.extend(sectors(offset, data.len()));
        Ok(())
    }
}

/// The disk as the ledger's volume.
#[derive(Debug, Clone)]
pub struct SimVolume(pub Arc<SimDisk>);

impl Volume for SimVolume {
    fn name(&self) -> PathBuf {
        PathBuf::from(format!("sim:{}/abacus.redb", self.0.host))
    }

    fn open(&self) -> io::Result<Box<dyn StorageBackend>> {
        let incarnation = {
            let s = self.0.lock();
            if s.dead {
                return Err(dead());
            }
            s.incarnation
        };
        Ok(Box::new(Handle {
            disk: Arc::clone(&self.0),
            incarnation,
        }))
    }

    fn digest_key(&self) -> DigestKey {
        self.0.digest_key
    }
}

/// Opens the durable ledger on `disk` outside the simulation (on a
/// runtime of its own, with faults off) and returns the registers it
/// loaded, or why it would not open.
fn open_outside(disk: &Arc<SimDisk>, registers: &[String]) -> DiskNote {
    let (quiet, bug) = {
        let mut s = disk.lock();
        (std::mem::replace(&mut s.quiet, true), s.bug.take())
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build();
    let note = match runtime {
        Err(e) => DiskNote::OpenFailed {
            why: format!("no runtime to open the disk on: {e}"),
        },
        Ok(runtime) => runtime.block_on(async {
            match abacus::store::redb::RedbLedger::open_volume(
                abacus::server::DedupConfig::default(),
                abacus::trace::EventSink::default(),
                Arc::new(SimVolume(Arc::clone(disk))),
            ) {
                Ok(ledger) => match super::server::loaded(&ledger, registers).await {
                    Some(registers) => DiskNote::Loaded { registers },
                    None => DiskNote::OpenFailed {
                        why: "the ledger stopped serving as it opened".into(),
                    },
                },
                Err(e) => DiskNote::OpenFailed { why: e.to_string() },
            }
        }),
    };
    let _ = disk.crash();
    let mut s = disk.lock();
    (s.quiet, s.bug) = (quiet, bug);
    drop(s);
    note
}

/// Creates the database on a new disk before the run, as an operator's
/// first start would, so that the run begins from a whole database (in
/// production it is built under another name and renamed into place: a
/// crash cannot leave half of one; a volume has no rename).
pub fn provision(disk: &Arc<SimDisk>) -> Result<(), String> {
    match open_outside(disk, &[]) {
        DiskNote::OpenFailed { why } => Err(why),
        _ => Ok(()),
    }
}

/// What `disk` holds, read by the harness after the run (after a last
/// power cut): the registers the durable server would load, or why it
/// could not.
pub fn read_back(disk: &Arc<SimDisk>, scenario: &crate::Scenario) -> DiskNote {
    let _ = disk.crash();
    open_outside(disk, &scenario.register_names())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every read, sync and run of writes fails (unless the disk is quiet).
    const EVERY_OP_FAILS: DiskFaultRates = DiskFaultRates {
        error_rate: 1.0,
        cut_rate: 0.0,
    };

    fn new_disk(
        rates: DiskFaultRates,
        bug: Option<DiskBug>,
    ) -> (Arc<SimDisk>, Box<dyn StorageBackend>) {
        let disk = SimDisk::new(7, "server", rates, bug, History::default());
        let handle = SimVolume(Arc::clone(&disk)).open().expect("a live disk");
        (disk, handle)
    }

    fn reopen(disk: &Arc<SimDisk>) -> Box<dyn StorageBackend> {
        SimVolume(Arc::clone(disk)).open().expect("a live disk")
    }

    /// Synced writes survive a crash; of unsynced ones, some sectors do
    /// and some do not (torn); the old handle is dead.
    #[test]
    fn a_crash_keeps_synced_writes_and_tears_the_rest() {
        let (disk, h) = new_disk(DiskFaultRates::default(), None);
        h.write(0, &[1; 1024]).unwrap();
        h.sync_data(false).unwrap();
        h.write(0, &[2; 512 * 64]).unwrap();
        assert_eq!(h.read(0, 4).unwrap(), [2; 4], "reads see unsynced writes");
        let Some(DiskNote::PowerCut { kept, lost }) = disk.crash() else {
            panic!("unsynced writes were pending");
        };
        assert!(kept > 0 && lost > 0, "kept {kept}, lost {lost}");
        assert!(
            h.read(0, 1).is_err(),
            "the crashed incarnation's handle is dead"
        );
        let after = reopen(&disk).read(0, 1024).unwrap();
        // Each sector is the old or the new contents, never a mix.
        for sector in after.chunks(512) {
            assert!(sector.iter().all(|&b| b == sector[0]) && [1, 2].contains(&sector[0]));
        }
    }

    /// An injected error on a sync drops the writes since the last sync
    /// from what reads see, and from what a crash could keep.
    #[test]
    fn a_failed_sync_drops_the_unsynced_writes() {
        let (disk, h) = new_disk(EVERY_OP_FAILS, None);
        disk.lock().quiet = true;
        h.write(0, &[1; 512]).unwrap();
        h.sync_data(false).unwrap();
        disk.lock().quiet = false;
        assert!(h.write(0, &[2; 512]).is_err(), "every run of writes fails");
        disk.lock().quiet = true;
        h.write(0, &[3; 512]).unwrap();
        disk.lock().quiet = false;
        assert!(h.sync_data(false).is_err());
        assert!(h.read(0, 512).is_err(), "every read fails too");
        disk.lock().quiet = true;
        assert_eq!(h.read(0, 512).unwrap(), [1; 512]);
        assert_eq!(disk.crash(), None, "nothing unsynced is left");
    }

    /// A failed sync after a shrink gives back the synced bytes the shrink
    /// cut off: the file is as the last sync left it, not zero-filled.
    #[test]
    fn a_failed_sync_undoes_a_shrink_with_the_synced_bytes() {
        let (disk, h) = new_disk(EVERY_OP_FAILS, None);
        disk.lock().quiet = true;
        h.write(0, &[1; 1024]).unwrap();
        h.sync_data(false).unwrap();
        h.set_len(300).unwrap();
        disk.lock().quiet = false;
        assert!(h.sync_data(false).is_err());
        disk.lock().quiet = true;
        assert_eq!(h.len().unwrap(), 1024);
        assert_eq!(h.read(0, 1024).unwrap(), [1; 1024]);
        assert_eq!(disk.crash(), None, "nothing unsynced is left");
    }

    /// The control's bug: a sync returns before the data is durable, so a
    /// crash right after it can lose what it acknowledged.
    #[test]
    fn acknowledging_before_the_fsync_loses_synced_writes() {
        let (disk, h) = new_disk(DiskFaultRates::default(), Some(DiskBug::AckBeforeFsync));
        h.write(0, &[1; 512 * 64]).unwrap();
        h.sync_data(false).unwrap();
        let Some(DiskNote::PowerCut { lost, .. }) = disk.crash() else {
            panic!("the synced writes were not durable yet");
        };
        assert!(lost > 0);
        let (correct, h) = new_disk(DiskFaultRates::default(), None);
        h.write(0, &[1; 512 * 64]).unwrap();
        h.sync_data(false).unwrap();
        assert_eq!(correct.crash(), None);
    }
}
