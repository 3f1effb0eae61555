//! Panics during a run, recorded so that they fail it.
//!
//! A panic in a task a host spawns (`tokio::spawn`: a server's connection
//! task, the store's serving task, the durable server's reload watcher)
//! does not reach the harness: tokio catches it and hands it to a
//! `JoinHandle` nobody awaits, and the host goes on without that task.
//! What follows (a connection reset, a store that stops answering) may or
//! may not break an invariant. So [`record`] runs a whole run with a
//! process-wide panic hook noting every panic on its thread, and the
//! checker turns each into a `no-panic` violation naming the message and
//! where it was raised.
//!
//! Thread-local is exact: turmoil drives every host of a `Sim` (their
//! current-thread runtimes) on the thread that steps it, and a sweep runs
//! each seed's whole world on one thread (`crate::parallel`). Nothing in a
//! run starts threads of its own (no `spawn_blocking` on its path).
//!
//! A panic abacus catches on purpose is not a failure: the redb ledger
//! turns redb's panics on a damaged file into a typed error
//! ([`abacus::store::redb::is_catching`] is true while it does), and the
//! checks judge what the ledger made of it. Whichever of the two hooks is
//! installed first, such a panic is not recorded: redb's hook does not
//! pass it on, and this one skips it.

use std::{
    cell::RefCell,
    fmt,
    panic::{self, PanicHookInfo},
    sync::Once,
    time::Duration,
};

/// One panic during a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panic {
    /// Its message.
    pub message: String,
    /// Where it was raised: `file:line:column`.
    pub location: String,
    /// Simulated time of the host that was running, when one was.
    pub at: Option<Duration>,
}

impl fmt::Display for Panic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "panicked at {}", self.location)?;
        if let Some(at) = self.at {
            write!(f, " ({at:?} into the run)")?;
        }
        write!(f, ": {}", self.message)
    }
}

thread_local! {
    /// The panics of the run on this thread; `None` outside a run.
    static RECORDED: RefCell<Option<Vec<Panic>>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Runs `f` (one run), returning what it returns and every panic raised on
/// this thread meanwhile, but those abacus catches on purpose. A panic that
/// unwinds out of `f` propagates as before.
pub fn record<T>(f: impl FnOnce() -> T) -> (T, Vec<Panic>) {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            note(info);
            previous(info);
        }));
    });
    /// Restores the outer state however `f` ends.
    struct Recording(Option<Vec<Panic>>);
    impl Drop for Recording {
        fn drop(&mut self) {
            let outer = self.0.take();
            let _ = RECORDED.try_with(|r| *r.borrow_mut() = outer);
        }
    }
    let outer = Recording(RECORDED.with(|r| r.replace(Some(Vec::new()))));
    let value = f();
    let panics = RECORDED.with(|r| r.borrow_mut().take()).unwrap_or_default();
    drop(outer);
    (value, panics)
}

/// The hook's part: notes `info` if a run is recording on this thread.
fn note(info: &PanicHookInfo<'_>) {
    if abacus::store::redb::is_catching() {
        return;
    }
    let panic = Panic {
        message: abacus::store::redb::panic_message(info.payload()),
        location: info
            .location()
            .map_or_else(|| "an unknown place".to_owned(), ToString::to_string),
        at: turmoil::sim_elapsed(),
    };
    let _ = RECORDED.try_with(|r| {
        if let Ok(mut r) = r.try_borrow_mut()
            && let Some(panics) = r.as_mut()
        {
            panics.push(panic);
        }
    });
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        path::PathBuf,
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        time::Duration,
    };

    use abacus::{
        error::ServiceError,
        server::DedupConfig,
        store::{
            AccumulateArgs, Caller, WriteFate, accumulate,
            dedup::DigestKey,
            redb::{RedbLedger, StorageBackend, Volume},
        },
        trace::EventSink,
    };

    use super::*;
    use crate::{
        history::History,
        world::disk::{DiskFaultRates, SimDisk, SimVolume},
    };

    /// NEGATIVE CONTROL for the recorder: a task a host spawns panics,
    /// tokio swallows it, the simulation completes, and the panic is still
    /// recorded with its message and place.
    #[test]
    fn a_panic_in_a_spawned_task_is_recorded_though_the_sim_completes() {
        let (result, panics) = record(|| {
            let mut sim = turmoil::Builder::new().build();
            sim.client("host", async {
                let task = tokio::spawn(async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    panic!("the task's own bug");
                });
                let joined = task.await;
                assert!(joined.is_err_and(|e| e.is_panic()), "tokio caught it");
                Ok(())
            });
            sim.run()
        });
        assert!(result.is_ok(), "the run itself goes on: {result:?}");
        assert_eq!(panics.len(), 1, "{panics:?}");
        assert_eq!(panics[0].message, "the task's own bug");
        assert!(
            panics[0].location.starts_with("sims/src/panics.rs:"),
            "{}",
            panics[0].location
        );
        assert!(panics[0].at.is_some_and(|t| t >= Duration::from_millis(5)));
    }

    /// Outside a run nothing is recorded, and a run records only its own
    /// panics (nested runs too).
    #[test]
    fn only_the_running_record_sees_a_panic() {
        let _ = std::panic::catch_unwind(|| panic!("before any run"));
        let (((), inner), outer) = record(|| {
            let inner = record(|| {
                let _ = std::panic::catch_unwind(|| panic!("inner"));
            });
            let _ = std::panic::catch_unwind(|| panic!("outer"));
            inner
        });
        let messages = |p: &[Panic]| p.iter().map(|p| p.message.clone()).collect::<Vec<_>>();
        assert_eq!(messages(&inner), ["inner"]);
        assert_eq!(messages(&outer), ["outer"]);
        let ((), after) = record(|| ());
        assert!(after.is_empty(), "{after:?}");
    }

    /// A panic the redb ledger catches (one inside redb, from the disk
    /// under it) is not recorded, whichever panic hook was installed
    /// first: in this process whatever order the tests made, and in a
    /// fresh process each order for sure (the child test below).
    #[test]
    fn a_panic_the_ledger_catches_is_not_recorded_whichever_hook_came_first() {
        a_caught_panic_is_not_recorded();
        for order in ["redb-first", "sims-first"] {
            let exe = std::env::current_exe().expect("the test binary knows its path");
            let out = std::process::Command::new(exe)
                .args([
                    "panics::tests::hook_order_child",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                ])
                .env(HOOK_ORDER, order)
                .output()
                .expect("the test binary runs again");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "{order}: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    const HOOK_ORDER: &str = "SIMS_TEST_HOOK_ORDER";

    #[test]
    #[ignore = "run in a fresh process by a_panic_the_ledger_catches_is_not_recorded_whichever_hook_came_first"]
    fn hook_order_child() {
        match std::env::var(HOOK_ORDER).as_deref() {
            // Opening a ledger runs redb under its catcher: its hook first.
            Ok("redb-first") => {
                let disk = sim_disk();
                crate::world::disk::provision(&disk).expect("a new disk takes a database");
            }
            Ok("sims-first") => drop(record(|| ())),
            other => panic!("{HOOK_ORDER} is {other:?}"),
        }
        a_caught_panic_is_not_recorded();
    }

    fn sim_disk() -> Arc<SimDisk> {
        SimDisk::new(
            1,
            "server",
            DiskFaultRates::default(),
            None,
            History::default(),
        )
    }

    /// A durable ledger whose disk panics in a sync: the batch fails (its
    /// fate unknown to the caller), nothing is recorded; a panic of the
    /// same run outside the ledger is.
    fn a_caught_panic_is_not_recorded() {
        let disk = sim_disk();
        crate::world::disk::provision(&disk).expect("a new disk takes a database");
        let panics_on_sync = Arc::new(AtomicBool::new(false));
        let volume = PanicsOnSync {
            inner: SimVolume(disk),
            on: Arc::clone(&panics_on_sync),
        };
        let (failed, panics) = record(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let ledger = RedbLedger::open_volume(
                    DedupConfig::default(),
                    EventSink::default(),
                    Arc::new(volume),
                )
                .expect("the database opens");
                let args = |id: &str| AccumulateArgs {
                    register: "total".into(),
                    delta: 1.0,
                    request_id: id.into(),
                    caller: Caller::default(),
                };
                accumulate(&ledger, &args("a"), None)
                    .await
                    .expect("a sync that does not panic");
                panics_on_sync.store(true, Ordering::Relaxed);
                let failed = accumulate(&ledger, &args("b"), None).await;
                let _ = std::panic::catch_unwind(|| panic!("outside the ledger"));
                failed
            })
        });
        assert_eq!(
            failed,
            Err(ServiceError::StoreUnavailable {
                fate: WriteFate::Unknown
            })
        );
        let messages: Vec<&str> = panics.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(messages, ["outside the ledger"]);
    }

    /// A volume whose syncs panic once `on` is set.
    #[derive(Debug)]
    struct PanicsOnSync {
        inner: SimVolume,
        on: Arc<AtomicBool>,
    }

    impl Volume for PanicsOnSync {
        fn name(&self) -> PathBuf {
            self.inner.name()
        }

        fn open(&self) -> io::Result<Box<dyn StorageBackend>> {
            Ok(Box::new(PanickyBackend {
                inner: self.inner.open()?,
                on: Arc::clone(&self.on),
            }))
        }

        fn digest_key(&self) -> DigestKey {
            self.inner.digest_key()
        }
    }

    #[derive(Debug)]
    struct PanickyBackend {
        inner: Box<dyn StorageBackend>,
        on: Arc<AtomicBool>,
    }

    impl StorageBackend for PanickyBackend {
        fn len(&self) -> io::Result<u64> {
            self.inner.len()
        }

        fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
            self.inner.read(offset, len)
        }

        fn set_len(&self, len: u64) -> io::Result<()> {
            self.inner.set_len(len)
        }

        fn sync_data(&self, eventual: bool) -> io::Result<()> {
            assert!(
                !self.on.load(Ordering::Relaxed),
                "the disk panics in a sync"
            );
            self.inner.sync_data(eventual)
        }

        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.inner.write(offset, data)
        }
    }
}
