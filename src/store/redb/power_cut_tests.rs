//! The durable ledger across power cuts that fall inside redb's own
//! recovery, on a disk whose every crash state is chosen by the test (the
//! simulation draws them at random: `sims`, `durable-disk`).

use std::sync::{Arc, Mutex, MutexGuard};

use super::*;
use crate::store::{accumulate, dedup::DigestKey, test_args as args};

/// The sector a power cut keeps or loses whole; the header of a redb file
/// (its first 320 bytes) lies within the first one.
const SECTOR: usize = 512;

/// redb's "god byte" in the file header, and its "recovery required" flag
/// (redb 2.6's layout, `tree_store/page_store/header.rs`): clear only in a
/// header that vouches for the allocator state stored beside it.
const GOD_BYTE: usize = 9;
const RECOVERY_REQUIRED: u8 = 2;

#[derive(Debug, Default)]
struct State {
    /// What reads see (the page cache).
    volatile: Vec<u8>,
    /// What a power cut leaves.
    durable: Vec<u8>,
    /// The power failed: every operation fails until the restart.
    dead: bool,
    /// Bumped by each restart: older handles are dead.
    incarnation: u64,
    /// The next sync whose header clears "recovery required" is cut short
    /// by a power failure that keeps the header's sector and nothing else
    /// written since the last sync.
    cut_when_recovery_clears: bool,
    /// Power cuts so far.
    cuts: usize,
}

/// A disk whose power cuts the test places (see [`State`]).
#[derive(Debug, Default)]
struct CutDisk(Mutex<State>);

impl CutDisk {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The power fails now: everything since the last sync is lost.
    fn cut(&self) {
        let mut s = self.lock();
        s.dead = true;
        s.cuts += 1;
    }

    /// Power comes back: the next open sees what the disk kept.
    fn restart(&self) {
        let mut s = self.lock();
        s.volatile = s.durable.clone();
        s.dead = false;
        s.incarnation += 1;
    }
}

#[derive(Debug)]
struct Handle {
    disk: Arc<CutDisk>,
    incarnation: u64,
}

impl Handle {
    fn state(&self) -> std::io::Result<MutexGuard<'_, State>> {
        let s = self.disk.lock();
        if s.dead || s.incarnation != self.incarnation {
            return Err(std::io::Error::other("the disk lost power"));
        }
        Ok(s)
    }
}

impl StorageBackend for Handle {
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.state()?.volatile.len() as u64)
    }

    fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let s = self.state()?;
        let start = offset as usize;
        s.volatile
            .get(start..start + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.state()?.volatile.resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self, _eventual: bool) -> std::io::Result<()> {
        let mut s = self.state()?;
        let clears = s
            .volatile
            .get(GOD_BYTE)
            .is_some_and(|god| god & RECOVERY_REQUIRED == 0);
        if s.cut_when_recovery_clears && clears {
            // The device wrote the header's sector first, then lost power:
            // legal, since nothing orders writes between two syncs.
            let State {
                volatile, durable, ..
            } = &mut *s;
            durable[..SECTOR].copy_from_slice(&volatile[..SECTOR]);
            s.cut_when_recovery_clears = false;
            s.dead = true;
            s.cuts += 1;
            return Err(std::io::Error::other("the disk lost power"));
        }
        s.durable = s.volatile.clone();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut s = self.state()?;
        let (start, end) = (offset as usize, offset as usize + data.len());
        if s.volatile.len() < end {
            s.volatile.resize(end, 0);
        }
        s.volatile[start..end].copy_from_slice(data);
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct CutVolume(Arc<CutDisk>);

impl Volume for CutVolume {
    fn name(&self) -> PathBuf {
        PathBuf::from("cut:abacus.redb")
    }

    fn open(&self) -> std::io::Result<Box<dyn StorageBackend>> {
        let incarnation = self.0.lock().incarnation;
        Ok(Box::new(Handle {
            disk: Arc::clone(&self.0),
            incarnation,
        }))
    }

    fn digest_key(&self) -> DigestKey {
        DigestKey([3, 5])
    }
}

fn open(disk: &Arc<CutDisk>) -> Result<RedbLedger, StorageError> {
    RedbLedger::open_volume(
        DedupConfig::default(),
        EventSink::log_only(),
        Arc::new(CutVolume(Arc::clone(disk))),
    )
}

/// Adds 1 to `x` `n` times (a commit each), from `from`; every one must be
/// acknowledged with the right sum.
async fn add_ones(ledger: &RedbLedger, from: u32, n: u32) {
    for i in from..from + n {
        let id = format!("one-{i}");
        let done = accumulate(ledger, &args("x", 1.0, &id), None).await;
        assert_eq!(
            done.map(|a| a.value),
            Ok(f64::from(i + 1)),
            "commit {i} of x += 1"
        );
    }
}

/// redb 2.6's repair after a crash (its file format v2) ends by writing the
/// rebuilt allocator state and a header that says no repair is needed, and
/// makes both durable with one fsync. A power cut within it may keep the
/// header and lose the allocator state; the next open then trusts the
/// allocator state of the last clean shutdown, hands out pages the
/// database still uses, and a later commit overwrites live data (seen as
/// "Attempted to free page …, which is not allocated", or a table name
/// that is not UTF-8: `durable-disk` seed 116). The ledger keeps its file
/// in redb's v3 format, whose recovery never trusts that state.
#[tokio::test]
async fn a_power_cut_inside_redbs_repair_loses_nothing_and_corrupts_nothing() {
    let disk = Arc::new(CutDisk::default());
    {
        let ledger = open(&disk).expect("a new database");
        add_ones(&ledger, 0, 40).await;
        // The power fails between commits: the file needs repair.
        disk.cut();
    }
    disk.restart();
    disk.lock().cut_when_recovery_clears = true;
    let refused = open(&disk).expect_err("the power fails during the repair");
    assert!(refused.to_string().contains("lost power"), "{refused}");
    assert_eq!(disk.lock().cuts, 2, "the power cut fell inside the repair");
    disk.restart();
    {
        let ledger = open(&disk).expect("the database opens after the cut");
        assert_eq!(Ledger::get(&ledger, "x", None).await, Ok(40.0));
        // Enough commits to reuse every page the repair found free.
        add_ones(&ledger, 40, 60).await;
        accumulate(&ledger, &args("y", 7.0, "y"), None)
            .await
            .expect("a new register");
    }
    disk.restart();
    let ledger = open(&disk).expect("the database opens after a clean close");
    assert_eq!(Ledger::get(&ledger, "x", None).await, Ok(100.0));
    assert_eq!(Ledger::get(&ledger, "y", None).await, Ok(7.0));
    // And a retry of an acknowledged request is replayed, not applied again.
    let retry = accumulate(&ledger, &args("x", 1.0, "one-99"), None).await;
    assert_eq!(retry.map(|a| (a.value, a.replayed)), Ok((100.0, true)));
}
