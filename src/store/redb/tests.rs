//! The durable ledger over a real file, with the disk's fault switch: what
//! a caller, a duplicate and a reader see between a commit's decision and
//! its fsync, and when the disk fails and heals.

use std::{future::Future, pin::pin, time::Duration};

use futures_util::FutureExt;
use tokio::time::Instant;

use super::*;
use crate::store::{Accumulated, Begin, WriteFate, accumulate};

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

fn args(register: &str, delta: f64, request_id: &str) -> AccumulateArgs {
    AccumulateArgs {
        register: register.into(),
        delta,
        request_id: request_id.into(),
        caller: Default::default(),
    }
}

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
async fn concurrent_commits_share_batches_and_all_survive() {
    let tmp = TempDir::new("group");
    let faults = DiskFaults::new();
    {
        let s = open(&tmp.0, &faults);
        let calls: Vec<_> = (0..64)
            .map(|i| {
                let a = args(&format!("r{}", i % 4), 1.0, &format!("id-{i}"));
                let s = &s;
                async move { accumulate(s, &a, None).await }
            })
            .collect();
        for result in futures_util::future::join_all(calls).await {
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

#[tokio::test]
async fn nothing_is_seen_before_it_is_durable() {
    let tmp = TempDir::new("stall");
    let faults = DiskFaults::new();
    let s = open(&tmp.0, &faults);
    accumulate(&s, &args("x", 1.0, "first"), None)
        .await
        .unwrap();

    // The disk stops answering: the next commit is decided, not durable.
    faults.set(DiskFault::Stall);
    let a = args("x", 5.0, "held");
    let Ok(Begin::Execute(claim)) = Ledger::begin(&s, &a, None).await else {
        panic!("a fresh ID executes");
    };
    let mut commit = claim.commit();
    assert!(
        pending(&mut commit),
        "the caller is not answered before its write is durable"
    );
    // A reader of the register waits for that write rather than see it...
    let read = Ledger::get(&s, "x", Some(Instant::now()));
    assert_eq!(read.await, Err(ServiceError::DeadlineExceeded));
    // ...and a duplicate waits on the claim rather than replay it.
    let duplicate = accumulate(&s, &a, None);
    let mut duplicate = Box::pin(duplicate);
    assert!(pending(&mut duplicate));
    // Registers nobody wrote since are read at once.
    assert!(Ledger::get(&s, "y", None).now_or_never().is_some());

    faults.set(DiskFault::None);
    assert_eq!(commit.await, ok(6.0, false));
    assert_eq!(duplicate.await, ok(6.0, true));
    assert_eq!(Ledger::get(&s, "x", None).await, Ok(6.0));
}

#[tokio::test]
async fn a_full_disk_fails_cleanly_and_the_store_heals_by_itself() {
    let tmp = TempDir::new("full");
    let faults = DiskFaults::new();
    let s = open(&tmp.0, &faults);
    accumulate(&s, &args("x", 1.0, "before"), None)
        .await
        .unwrap();

    faults.set(DiskFault::Full);
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
