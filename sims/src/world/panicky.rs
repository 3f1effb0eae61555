//! BROKEN on purpose, for a negative control: a server ledger whose first
//! register read panics. The panic is raised in the server's handler, on
//! the connection task tonic spawned for it, so tokio swallows it: the
//! client sees its connection reset and retries, the next read is
//! answered, and without the `no-panic` check ([`crate::panics`]) the run
//! would pass.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use abacus::{
    error::ServiceError,
    store::{AccumulateArgs, Backend, Begin, BoxFuture, Ledger, StatsView, StoreHealth},
};
use tokio::{sync::watch, time::Instant};

/// The message of the injected panic.
pub const MESSAGE: &str = "injected bug: the server's first register read panics";

/// A server's bug, for a negative control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerBug {
    /// The first register read of the run panics (once, whichever
    /// incarnation of the server serves it).
    PanicOnFirstRead,
}

/// `inner`, with the first `get` panicking ([`ServerBug::PanicOnFirstRead`]).
#[derive(Debug)]
pub struct PanickyLedger {
    inner: Arc<dyn Ledger>,
    /// Shared by every incarnation of the host: set once it panicked.
    panicked: Arc<AtomicBool>,
}

impl PanickyLedger {
    /// Wraps `inner`; `panicked` is the run's one flag.
    pub fn new(inner: Arc<dyn Ledger>, panicked: Arc<AtomicBool>) -> Self {
        Self { inner, panicked }
    }
}

impl Ledger for PanickyLedger {
    fn begin<'a>(
        &'a self,
        args: &'a AccumulateArgs,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Begin<'a>, ServiceError>> {
        self.inner.begin(args, deadline)
    }

    fn delete<'a>(
        &'a self,
        register: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Option<f64>, ServiceError>> {
        self.inner.delete(register, deadline)
    }

    fn get<'a>(
        &'a self,
        register: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<f64, ServiceError>> {
        assert!(self.panicked.swap(true, Ordering::Relaxed), "{MESSAGE}");
        self.inner.get(register, deadline)
    }

    fn stats(&self) -> BoxFuture<'_, Result<StatsView, ServiceError>> {
        self.inner.stats()
    }

    fn health(&self) -> watch::Receiver<StoreHealth> {
        self.inner.health()
    }

    fn backend(&self) -> Backend {
        self.inner.backend()
    }
}
