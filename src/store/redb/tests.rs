//! The durable ledger over a real file, with the disk's fault switch: what
//! a caller, a duplicate and a reader see between a commit's decision and
//! its fsync, and when the disk fails and heals.

use std::{future::Future, pin::pin, time::Duration};

use futures_util::FutureExt;
use tokio::time::Instant;

use super::*;
use crate::store::{Accumulated, WriteFate, accumulate};

/// A fresh directory under the system temp dir, removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("abacus-redb-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

use crate::store::test_args as args;

fn ok(value: f64, replayed: bool) -> Result<Accumulated, ServiceError> {
    Ok(Accumulated { value, replayed })
}

fn open(dir: &Path, faults: &Arc<DiskFaults>) -> RedbLedger {
    RedbLedger::open_with_faults(
        DedupConfig::default(),
        EventSink::log_only(),
        dir,
        Arc::clone(faults),
    )
    .unwrap()
}

/// True when `future` cannot finish now (polled once: nothing it waits
/// for can happen while the disk is stalled, so this is not a race).
fn pending<F: Future>(future: F) -> bool {
    pin!(future).now_or_never().is_none()
}

/// Waits (bounded, as a failure guard, not as synchronisation) until the
/// ledger reports `health`.
async fn health_becomes(ledger: &RedbLedger, health: StoreHealth) {
    let mut watch = ledger.health();
    tokio::time::timeout(Duration::from_secs(20), watch.wait_for(|h| *h == health))
        .await
        .unwrap_or_else(|_| panic!("the store never became {health:?}"))
        .expect("the ledger is alive");
}

#[tokio::test]
async fn state_survives_reopening() {
    let tmp = TempDir::new("reopen");
    let faults = DiskFaults::new();
    let a = args("x", 2.0, "kept");
    {
        let s = open(&tmp.0, &faults);
        assert_eq!(s.backend(), Backend::Redb);
        assert_eq!(accumulate(&s, &a, None).await, ok(2.0, false));
        accumulate(&s, &args("x", 3.0, ""), None).await.unwrap();
    }
    {
        let s = open(&tmp.0, &faults);
        assert_eq!(Ledger::get(&s, "x", None).await, Ok(5.0));
        assert_eq!(accumulate(&s, &a, None).await, ok(2.0, true));
        assert_eq!(
            accumulate(&s, &args("x", 1.0, "new"), None).await,
            ok(6.0, false)
        );
    }
    let s = open(&tmp.0, &faults);
    assert_eq!(Ledger::get(&s, "x", None).await, Ok(6.0));
    assert_eq!(s.memory().stats().dedup_entries, 2);
}

#[tokio::test]
async fn a_delete_is_durable_and_a_replay_after_it_does_not_recreate_the_register() {
    let tmp = TempDir::new("delete");
    let faults = DiskFaults::new();
    let a = args("x", 2.0, "kept");
    {
        let s = open(&tmp.0, &faults);
        assert_eq!(accumulate(&s, &a, None).await, ok(2.0, false));
        accumulate(&s, &args("y", 1.0, ""), None).await.unwrap();
        assert_eq!(Ledger::delete(&s, "x", None).await, Ok(Some(2.0)));
        assert_eq!(Ledger::delete(&s, "x", None).await, Ok(None));
    }
    let s = open(&tmp.0, &faults);
    assert_eq!(
        Ledger::get(&s, "x", None).await,
        Err(ServiceError::Calc(
            crate::error::CalcError::UnknownRegister("x".into())
        ))
    );
    assert_eq!(Ledger::get(&s, "y", None).await, Ok(1.0));
    // The record outlived the register, and the restart.
    assert_eq!(accumulate(&s, &a, None).await, ok(2.0, true));
    assert_eq!(s.memory().stats().registers, 1);
}

/// On the multi-threaded runtime, where an idle writer lets callers write
/// their commits inline and a busy one batches them: both paths at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_share_batches_and_all_survive() {
    let tmp = TempDir::new("group");
    let faults = DiskFaults::new();
    {
        let s = Arc::new(open(&tmp.0, &faults));
        let calls: Vec<_> = (0..64)
            .map(|i| {
                let a = args(&format!("r{}", i % 4), 1.0, &format!("id-{i}"));
                let s = Arc::clone(&s);
                tokio::spawn(async move { accumulate(&*s, &a, None).await })
            })
            .collect();
        for call in calls {
            let result = call.await.expect("task");
            assert!(result.is_ok(), "{result:?}");
        }
        assert_eq!(s.memory().stats().applied, 64);
    }
    let s = open(&tmp.0, &faults);
    for r in 0..4 {
        assert_eq!(Ledger::get(&s, &format!("r{r}"), None).await, Ok(16.0));
    }
    assert_eq!(s.memory().stats().dedup_entries, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_seen_before_it_is_durable() {
    let tmp = TempDir::new("stall");
    let faults = DiskFaults::new();
    let s = Arc::new(open(&tmp.0, &faults));
    accumulate(&*s, &args("x", 1.0, "first"), None)
        .await
        .unwrap();

    // The disk stops answering. The next commit runs on a thread of its
    // own (it may write inline, and then waits on the disk right there).
    faults.set(DiskFault::Stall);
    let a = args("x", 5.0, "held");
    let committer = {
        let (s, a) = (Arc::clone(&s), a.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async { accumulate(&*s, &a, None).await })
        })
    };
    // Once a write waits on the disk, the commit is decided, not durable.
    let stalled = Arc::clone(&faults);
    tokio::task::spawn_blocking(move || stalled.wait_stalled())
        .await
        .unwrap();
    // A reader of the register waits for that write rather than see it...
    let read = Ledger::get(&*s, "x", Some(Instant::now()));
    assert_eq!(read.await, Err(ServiceError::DeadlineExceeded));
    // ...and a duplicate waits on the claim rather than replay it.
    let mut duplicate = Box::pin(accumulate(&*s, &a, None));
    assert!(pending(&mut duplicate));
    // Registers nobody wrote since are read at once.
    assert!(Ledger::get(&*s, "y", None).now_or_never().is_some());

    faults.set(DiskFault::None);
    assert_eq!(committer.join().unwrap(), ok(6.0, false));
    assert_eq!(duplicate.await, ok(6.0, true));
    assert_eq!(Ledger::get(&*s, "x", None).await, Ok(6.0));
}

#[tokio::test]
async fn a_full_disk_fails_cleanly_and_the_store_heals_by_itself() {
    fails_cleanly_and_heals("full", DiskFault::Full).await;
}

/// The same with callers writing inline (the multi-threaded runtime): the
/// failure is met on a caller's thread, the recovery on the writer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_met_inline_fails_cleanly_and_heals_too() {
    fails_cleanly_and_heals("full-inline", DiskFault::Full).await;
}

/// A panic below the engine while it writes (it leaves redb's own locks
/// poisoned, so closing that database panics too): the batch fails like
/// any other, no panic reaches the caller, and the store heals by itself.
#[tokio::test]
async fn a_panic_while_writing_fails_the_batch_cleanly_and_the_store_heals() {
    fails_cleanly_and_heals("panic", DiskFault::Panic).await;
}

/// `fault` fails a batch: its fate is unknown, the store refuses calls
/// while broken, and heals once the disk does.
async fn fails_cleanly_and_heals(name: &str, fault: DiskFault) {
    let tmp = TempDir::new(name);
    let faults = DiskFaults::new();
    let s = open(&tmp.0, &faults);
    accumulate(&s, &args("x", 1.0, "before"), None)
        .await
        .unwrap();

    faults.set(fault);
    let lost = args("x", 10.0, "during");
    // The batch fails: its fate is unknown to the caller (never a false
    // "not applied"), and the store says it is broken.
    assert_eq!(
        accumulate(&s, &lost, None).await,
        Err(ServiceError::StoreUnavailable {
            fate: WriteFate::Unknown
        })
    );
    health_becomes(&s, StoreHealth::NotServing).await;
    // While broken, nothing is served from memory that may disagree with
    // the disk, and new writes are refused before anything is done.
    let refused = ServiceError::StoreUnavailable {
        fate: WriteFate::NotApplied,
    };
    assert_eq!(Ledger::get(&s, "x", None).await, Err(refused.clone()));
    assert_eq!(
        accumulate(&s, &args("y", 1.0, "refused"), None).await,
        Err(refused)
    );

    faults.set(DiskFault::None);
    health_becomes(&s, StoreHealth::Serving).await;
    // Memory was reloaded from the disk, which never got the failed write.
    assert_eq!(Ledger::get(&s, "x", None).await, Ok(1.0));
    // Retrying under the same ID resolves the unknown fate: not on disk,
    // so it executes, once.
    assert_eq!(accumulate(&s, &lost, None).await, ok(11.0, false));
    assert_eq!(accumulate(&s, &lost, None).await, ok(11.0, true));
    assert_eq!(
        accumulate(&s, &args("x", 1.0, "before"), None).await,
        ok(1.0, true),
        "records written before the failure are still replayed"
    );
    drop(s);
    let s = open(&tmp.0, &faults);
    assert_eq!(Ledger::get(&s, "x", None).await, Ok(11.0));
}

// ------------------------------------------------------- damaged files ----

/// A cleanly closed database holding `x = 141044` (after `x = 1000`), and
/// its file.
async fn pristine(tmp: &TempDir) -> PathBuf {
    let s = open(&tmp.0, &DiskFaults::new());
    accumulate(&s, &args("x", 1000.0, "a"), None).await.unwrap();
    accumulate(&s, &args("x", 140_044.0, "b"), None)
        .await
        .unwrap();
    drop(s);
    tmp.0.join(DB_FILE_NAME)
}

/// Opening must fail with an error that names the file (and no panic
/// escapes: `open` catches the engine's).
fn refused(dir: &Path) -> StorageError {
    let err = RedbLedger::open(DedupConfig::default(), EventSink::log_only(), dir)
        .expect_err("a damaged file must be refused");
    let text = err.to_string();
    assert!(
        text.contains(DB_FILE_NAME),
        "the error names the file: {text}"
    );
    err
}

/// Every offset where `needle` occurs in `hay`.
fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

#[tokio::test]
async fn a_flipped_bit_in_a_stored_value_is_caught_not_served() {
    let tmp = TempDir::new("flip");
    let path = pristine(&tmp).await;
    let mut bytes = std::fs::read(&path).unwrap();
    let at = find_all(&bytes, &141_044.0f64.to_le_bytes());
    assert!(!at.is_empty(), "the value is stored in the file");
    for i in at {
        // One bit of the mantissa: 141044 becomes another plausible number.
        bytes[i + 1] ^= 0x20;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = refused(&tmp.0);
    assert!(err.to_string().contains("fails its checksum"), "{err}");
}

#[tokio::test]
async fn an_empty_file_is_refused_not_taken_for_a_new_store() {
    let tmp = TempDir::new("empty");
    let path = pristine(&tmp).await;
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(refused(&tmp.0), StorageError::Empty { .. }));
    // And the file is left as found, for the operator.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
}

#[tokio::test]
async fn truncated_files_are_refused() {
    for keep in [Keep::Half, Keep::Bytes(4096)] {
        let tmp = TempDir::new("truncated");
        let path = pristine(&tmp).await;
        let len = std::fs::metadata(&path).unwrap().len();
        let keep = match keep {
            Keep::Half => len / 2,
            Keep::Bytes(n) => n,
        };
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(keep)
            .unwrap();
        refused(&tmp.0);
    }
}

#[derive(Clone, Copy)]
enum Keep {
    Half,
    Bytes(u64),
}

#[tokio::test]
async fn a_zeroed_page_is_refused() {
    let tmp = TempDir::new("zeroed");
    let path = pristine(&tmp).await;
    let mut bytes = std::fs::read(&path).unwrap();
    // The pages holding the registers' newest value (redb's pages are 4 KiB).
    for at in find_all(&bytes, &141_044.0f64.to_le_bytes()) {
        let page = at / 4096 * 4096;
        bytes[page..page + 4096].fill(0);
    }
    std::fs::write(&path, &bytes).unwrap();
    refused(&tmp.0);
}

#[tokio::test]
async fn random_byte_flips_are_refused_or_harmless_never_served_wrong() {
    let tmp = TempDir::new("random");
    let path = pristine(&tmp).await;
    let good = std::fs::read(&path).unwrap();
    let used: Vec<usize> = find_all(&good, &141_044.0f64.to_le_bytes())
        .into_iter()
        .map(|at| at / 4096)
        .collect();
    let mut refusals = 0;
    for seed in 1..=32u64 {
        let mut bytes = good.clone();
        // A splitmix stream per seed: reproducible damage.
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        // Flips land in the pages holding the tables' newest rows (a flip
        // anywhere else in this mostly preallocated file is harmless), at
        // random places within them, rows and page headers alike.
        for _ in 0..4 {
            let page = used[(next() % used.len() as u64) as usize];
            let at = page * 4096 + (next() % 4096) as usize;
            bytes[at] ^= (next() % 255 + 1) as u8;
        }
        std::fs::write(&path, &bytes).unwrap();
        match RedbLedger::open(DedupConfig::default(), EventSink::log_only(), &tmp.0) {
            Err(err) => {
                assert!(err.to_string().contains(DB_FILE_NAME), "seed {seed}: {err}");
                refusals += 1;
            }
            // Damage where nothing lives is harmless: then the data must
            // be exactly what was written.
            Ok(s) => {
                assert_eq!(
                    Ledger::get(&s, "x", None).await,
                    Ok(141_044.0),
                    "seed {seed}"
                );
                assert_eq!(
                    accumulate(&s, &args("x", 1000.0, "a"), None).await,
                    ok(1000.0, true),
                    "seed {seed}"
                );
            }
        }
    }
    assert!(
        refusals > 0,
        "no flip hit anything: the test proves nothing"
    );
}
