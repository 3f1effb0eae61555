//! The server's state: the register map, behind one lock.
//!
//! Every mutation is a synchronous critical section with no `.await` inside,
//! so a cancelled handler (client gone, deadline passed) can never leave a
//! half-applied update: it either ran entirely before the cancellation point
//! or not at all.

use std::sync::Mutex;

use crate::{
    core::Registers,
    error::ServiceError,
    trace::{Event, EventSink},
};

/// Arguments of `Accumulate`, free of any wire format.
#[derive(Debug, Clone, PartialEq)]
pub struct AccumulateArgs {
    /// Register name.
    pub register: String,
    /// Amount to add.
    pub delta: f64,
    /// Identifies the logical call across retries; empty for none.
    pub request_id: String,
}

/// Result of `Accumulate`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accumulated {
    /// The register's value right after this request was applied.
    pub value: f64,
    /// True when answered from the dedup store.
    pub replayed: bool,
}

/// Counters for `GetStats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsView {
    /// Dedup records retained.
    pub dedup_entries: u64,
    /// Repeats answered from the store.
    pub dedup_hits: u64,
    /// Records evicted.
    pub dedup_evictions: u64,
    /// Reused IDs with a different payload.
    pub dedup_mismatches: u64,
    /// Updates applied.
    pub applied: u64,
    /// Registers held.
    pub registers: u64,
}

#[derive(Debug, Default)]
struct Inner {
    registers: Registers,
    applied: u64,
}

/// Registers plus everything that must change together with them.
#[derive(Debug)]
pub struct State {
    // A std Mutex, not tokio's: the critical sections are short, synchronous
    // and never hold the lock across an await (which is what makes them
    // atomic with respect to cancellation).
    inner: Mutex<Inner>,
    events: EventSink,
}

impl State {
    /// Empty state reporting to `events`.
    pub fn new(events: EventSink) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            events,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave Inner inconsistent
        // (every mutation is computed first, then stored), so poisoning is
        // safe to ignore.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `Accumulate`.
    pub fn accumulate(&self, args: &AccumulateArgs) -> Result<Accumulated, ServiceError> {
        let mut inner = self.lock();
        let value = inner.registers.accumulate(&args.register, args.delta)?;
        inner.applied += 1;
        drop(inner);
        self.events.emit(Event::Applied {
            request_id: args.request_id.clone(),
            register: args.register.clone(),
            delta: args.delta,
            value,
        });
        Ok(Accumulated {
            value,
            replayed: false,
        })
    }

    /// Reads a register.
    pub fn get(&self, register: &str) -> Result<f64, ServiceError> {
        Ok(self.lock().registers.get(register)?)
    }

    /// Current counters.
    pub fn stats(&self) -> StatsView {
        let inner = self.lock();
        StatsView {
            applied: inner.applied,
            registers: inner.registers.len() as u64,
            ..StatsView::default()
        }
    }
}
