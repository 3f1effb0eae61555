//! [`Fence`]: a gate (see `gate.rs`) that stops a backend's writes for good, so a
//! database whose commit was cut short by a panic cannot write again.
//!
//! redb 2.6 marks its database as needing recovery when a commit returns
//! an error, but not when a panic unwinds out of it: the in-memory state
//! then holds half a commit (pages of the commit before already freed),
//! and dropping the `Database` writes one more commit from that state and
//! a header that says the file was closed cleanly. In a release build that
//! commit records pages in use as free; later commits are placed over live
//! data, and the file is found damaged after the next crash (the
//! simulation's `durable-disk`, seed 138, disk panicking inside a sync).
//! Fencing the backend before the drop makes those writes fail, so redb
//! leaves the file as the crash it is, and the reopen repairs it from
//! what is on disk. Reads stay allowed; the file descriptor closes as
//! usual, releasing redb's lock for the reopen.

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use redb::StorageBackend;

use super::gate::{Gate, Gated};

/// The switch of one open's fenced backend ([`fenced`]).
#[derive(Debug, Clone, Default)]
pub(super) struct Fence(Arc<AtomicBool>);

impl Fence {
    /// Stops every later write, resize and sync of the backend.
    pub(super) fn raise(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Gate for Fence {
    fn admit(&self) -> io::Result<()> {
        if self.0.load(Ordering::Acquire) {
            Err(io::Error::other(
                "the database was closed after a failed commit",
            ))
        } else {
            Ok(())
        }
    }
}

/// `inner` behind a new [`Fence`]: one per open of the database (a fence
/// raised on a broken open must not stop the next).
pub(super) fn fenced<B: StorageBackend>(inner: B) -> (Gated<B, Fence>, Fence) {
    let fence = Fence::default();
    (Gated::new(inner, fence.clone()), fence)
}

#[cfg(test)]
mod tests {
    use redb::backends::InMemoryBackend;

    use super::*;

    #[test]
    fn a_raised_fence_stops_writes_resizes_and_syncs_but_not_reads() {
        let (backend, fence) = fenced(InMemoryBackend::new());
        backend.set_len(8).unwrap();
        backend.write(0, b"abacus!!").unwrap();
        backend.sync_data(false).unwrap();
        fence.raise();
        assert!(backend.write(0, b"damaged!").is_err());
        assert!(backend.set_len(0).is_err());
        assert!(backend.sync_data(false).is_err());
        assert_eq!(backend.read(0, 8).unwrap(), b"abacus!!");
        assert_eq!(backend.len().unwrap(), 8);
        // Each open has its own fence.
        let (next, _) = fenced(InMemoryBackend::new());
        next.set_len(1).unwrap();
    }
}
