//! The history of one simulated run: every typed event the real server and
//! client emitted, stamped with simulated time and the host that emitted it,
//! plus the faults the harness injected. The checker reads it; snapshots
//! render it.

use std::{
    fmt::{self, Write as _},
    sync::{Arc, Mutex},
    time::Duration,
};

use abacus::{
    client::CallError,
    trace::{Event, EventSink},
};

use crate::{harness::LIVENESS_BOUND, plan::Target};

/// One line of history.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Simulated time since the start of the run.
    pub at: Duration,
    /// Host name (`server`, `client-1`, ...) or `sim` for injected faults.
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
}

/// A fault the harness injected (or stopped) at a point in simulated time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    /// Messages between the server and the target are dropped from now on.
    Partition(Target),
    /// The partition is lifted.
    Repair(Target),
    /// Messages between the server and the target are queued from now on.
    Hold(Target),
    /// The queued messages are delivered.
    Release(Target),
    /// The server host crashes.
    Crash,
    /// The server host starts again.
    Restart,
    /// Link failures and server faults stop; the liveness phase follows.
    AllStop,
}

impl fmt::Display for SimFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let link = |f: &mut fmt::Formatter<'_>, verb: &str, target: &Target| match target {
            Target::All => write!(f, "{verb} server <-> clients"),
            Target::Client(n) => write!(f, "{verb} server <-> client-{n}"),
        };
        match self {
            Self::Partition(t) => link(f, "partition", t),
            Self::Repair(t) => link(f, "repair", t),
            Self::Hold(t) => link(f, "hold", t),
            Self::Release(t) => link(f, "release", t),
            Self::Crash => f.write_str("crash server"),
            Self::Restart => f.write_str("restart server"),
            Self::AllStop => f.write_str("all faults stop"),
        }
    }
}

/// What a client's workload noted: a wrong answer it caught, or where it
/// is.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// A successful call answered something impossible.
    Wrong(Wrong),
    /// The client made all its workload calls.
    WorkloadDone,
    /// The client starts its liveness calls: every fault has stopped.
    LivenessPhase,
    /// Too few liveness calls succeeded within [`LIVENESS_BOUND`].
    LivenessFailed {
        /// Calls that succeeded.
        done: usize,
        /// Calls that had to.
        wanted: usize,
        /// The last failure, if any.
        last_error: Option<CallError>,
    },
}

/// A wrong answer the workload caught.
#[derive(Debug, Clone, PartialEq)]
pub enum Wrong {
    /// Two hedged copies of one Accumulate (same request ID) saw different
    /// values, or both saw a fresh execution.
    Hedged {
        /// The shared request ID.
        id: String,
        /// Value and replayed flag seen by the first copy.
        first: (f64, bool),
        /// Value and replayed flag seen by the second copy.
        second: (f64, bool),
    },
    /// `divide(1, 0)` succeeded.
    DivisionByZeroSucceeded,
    /// `add(a, b)` answered another number.
    Add {
        /// First operand.
        a: f64,
        /// Second operand.
        b: f64,
        /// What came back.
        got: f64,
    },
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Wrong(Wrong::Hedged { id, first, second }) => write!(
                f,
                "WRONG: hedged id={id}: ({}, replayed={}) vs ({}, replayed={}); both copies must see one execution",
                first.0, first.1, second.0, second.1
            ),
            Self::Wrong(Wrong::DivisionByZeroSucceeded) => {
                f.write_str("WRONG: divide(1, 0) succeeded")
            }
            Self::Wrong(Wrong::Add { a, b, got }) => write!(f, "WRONG: add({a}, {b}) = {got}"),
            Self::WorkloadDone => f.write_str("workload done"),
            Self::LivenessPhase => f.write_str("liveness phase: faults stopped"),
            Self::LivenessFailed {
                done,
                wanted,
                last_error,
            } => {
                write!(
                    f,
                    "LIVENESS FAILED: {done} of {wanted} calls succeeded within {LIVENESS_BOUND:?} after faults stopped; last error: "
                )?;
                match last_error {
                    Some(e) => write!(f, "{e}"),
                    None => Ok(()),
                }
            }
        }
    }
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
