//! [`Gated`]: a backend whose writes, resizes and syncs pass a [`Gate`]
//! first, reads never. The disk-fault switch (`disk.rs`, shared by every
//! open of the file) and the fence (`fence.rs`, one per open) are two
//! gates over the same pass-through.

use std::{fmt, io};

use redb::StorageBackend;

/// What a write, resize or sync meets before it reaches the backend.
pub(super) trait Gate: fmt::Debug + Send + Sync + 'static {
    /// `Ok` to go ahead; an error is the operation's result.
    fn admit(&self) -> io::Result<()>;
}

/// `B` behind the gate `G`.
pub(super) struct Gated<B, G> {
    inner: B,
    gate: G,
}

impl<B, G> Gated<B, G> {
    pub(super) fn new(inner: B, gate: G) -> Self {
        Self { inner, gate }
    }
}

impl<B, G: fmt::Debug> fmt::Debug for Gated<B, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gated")
            .field("gate", &self.gate)
            .finish_non_exhaustive()
    }
}

impl<B: StorageBackend, G: Gate> StorageBackend for Gated<B, G> {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.inner.read(offset, len)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.gate.admit()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self, eventual: bool) -> io::Result<()> {
        self.gate.admit()?;
        self.inner.sync_data(eventual)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.gate.admit()?;
        self.inner.write(offset, data)
    }
}
