//! The file under the database, as redb's [`StorageBackend`](redb::StorageBackend): redb's own
//! [`FileBackend`] (which also takes the file lock), with a switch that
//! makes the disk misbehave on demand.
//!
//! Production runs with the switch off: one atomic read per write, the
//! same code path. Tests (and, later, the simulation) turn it on to see
//! what the ledger does when the disk is full or slow, without needing a
//! small filesystem or root.

use std::{
    io,
    sync::{Arc, Condvar, Mutex, MutexGuard},
};

use redb::backends::FileBackend;

use super::gate::{Gate, Gated};

/// What the disk does to writes and syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskFault {
    /// Works.
    #[default]
    None,
    /// Every write, resize and sync fails with "no space left on device"
    /// (`ErrorKind::StorageFull`); reads work.
    Full,
    /// Every write, resize and sync panics: a bug below the engine, met
    /// while redb holds its own locks (which it leaves poisoned).
    Panic,
    /// Every write, resize and sync blocks until the fault is changed: a
    /// disk that has not answered yet. For tests that need a commit held
    /// between decided and durable.
    Stall,
}

/// A run-time switch for [`DiskFault`], shared by a ledger's every
/// incarnation of the file (it survives reopening).
#[derive(Debug, Default)]
pub struct DiskFaults {
    fault: Mutex<DiskFault>,
    /// Writes waiting in [`DiskFault::Stall`] right now.
    stalled: Mutex<usize>,
    changed: Condvar,
}

impl DiskFaults {
    /// A switch in the off position.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn lock(&self) -> MutexGuard<'_, DiskFault> {
        self.fault.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the fault for every later write (and releases stalled ones).
    pub fn set(&self, fault: DiskFault) {
        *self.lock() = fault;
        self.changed.notify_all();
    }

    /// The fault now.
    pub fn get(&self) -> DiskFault {
        *self.lock()
    }

    /// Blocks until some write is held by [`DiskFault::Stall`]: from then
    /// on, a commit has been decided and is not durable (for tests that
    /// look at that window without guessing when it opens).
    pub fn wait_stalled(&self) {
        let mut fault = self.lock();
        while *self.stalled.lock().unwrap_or_else(|p| p.into_inner()) == 0 {
            fault = self.changed.wait(fault).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// What a write, resize or sync meets: `Ok` to go ahead.
impl Gate for Arc<DiskFaults> {
    fn admit(&self) -> io::Result<()> {
        let mut fault = self.lock();
        let mut counted = false;
        let admitted = loop {
            match *fault {
                DiskFault::None => break Ok(()),
                DiskFault::Full => {
                    break Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "no space left on device (injected)",
                    ));
                }
                DiskFault::Panic => {
                    drop(fault);
                    panic!("injected panic in the disk layer");
                }
                DiskFault::Stall => {
                    if !counted {
                        counted = true;
                        *self.stalled.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                        self.changed.notify_all();
                    }
                    fault = self.changed.wait(fault).unwrap_or_else(|p| p.into_inner());
                }
            }
        };
        if counted {
            *self.stalled.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        }
        admitted
    }
}

/// redb's file backend behind a [`DiskFaults`] switch.
pub(super) type Disk = Gated<FileBackend, Arc<DiskFaults>>;
