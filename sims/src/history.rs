//! The history of one simulated run: every typed event the real server and
//! client emitted, stamped with simulated time and the host that emitted it,
//! plus the faults the harness injected and the workload's notes, all
//! typed. The checker reads it; snapshots render it.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use abacus::trace::{Event, EventSink};

use crate::{
    faults::SimFault,
    workload::Note,
    world::{disk::DiskNote, store::StoreNote},
};

/// One line of history.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Simulated time since the start of the run.
    pub at: Duration,
    /// Host name (`server`, `replica-1`, `store`, `client-1`,
    /// `client-1/replica-2`, ...) or `sim` for injected faults.
    pub host: String,
    /// What happened.
    pub entry: Entry,
}

/// An event of the code under test, or a fault of the harness.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// Emitted by abacus code.
    Event(Event),
    /// Injected by the harness (partition, crash, ...).
    Fault(SimFault),
    /// A note of the workload (what a client is about to do, what it saw).
    Note(Note),
    /// What the store model did that no library event shows (a rollback,
    /// a lost reply).
    Store(StoreNote),
    /// What the simulated disk did (a power cut, an injected error), and
    /// what the durable server loaded from it.
    Disk(DiskNote),
}

/// Shared, append-only history. A `std::sync::Mutex` is enough: turmoil
/// runs every host on the test's thread, one at a time.
#[derive(Debug, Clone, Default)]
pub struct History {
    records: Arc<Mutex<Vec<Record>>>,
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

impl History {
    /// An event sink for code running on `host`.
    pub fn sink(&self, host: &str) -> EventSink {
        let history = self.clone();
        let host = host.to_owned();
        EventSink::with_hook(move |e| history.push(&host, Entry::Event(e.clone())))
    }

    /// Appends a record stamped with the current simulated time.
    pub fn push(&self, host: &str, entry: Entry) {
        self.push_at(now(), host, entry);
    }

    /// Appends a record at a given time (for the harness, outside any host).
    pub fn push_at(&self, at: Duration, host: &str, entry: Entry) {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Record {
                at,
                host: host.to_owned(),
                entry,
            });
    }

    /// A copy of every record so far.
    pub fn records(&self) -> Vec<Record> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Renders records as a human-readable timeline, one line per record.
pub fn render(records: &[Record]) -> String {
    let mut out = String::new();
    for r in records {
        let what = match &r.entry {
            Entry::Event(e) => e.to_string(),
            Entry::Fault(f) => format!("FAULT {f}"),
            Entry::Note(n) => format!("-- {n}"),
            Entry::Store(n) => format!("model {n}"),
            Entry::Disk(n) => format!("disk {n}"),
        };
        let _ = writeln!(
            out,
            "{:>4}.{:03}s {:<9} {what}",
            r.at.as_secs(),
            r.at.subsec_millis(),
            r.host
        );
    }
    out
}
