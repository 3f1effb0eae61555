//! Events decided under a ledger's lock, emitted after it is released, in
//! the order they were decided.
//!
//! Emitting an event logs it (and, in the simulation, calls a hook): I/O
//! that must not run under the ledger's std `Mutex`, or one slow log sink
//! would stall every request. But the trace must still show commits in
//! commit order, and two threads that commit one after the other may reach
//! their emits in the other order. So events are *queued* under the lock
//! (a push into a `VecDeque`, in decision order) and *emitted* after it by
//! whichever thread flushes: one thread at a time drains the queue front to
//! back, and a thread that finds another one draining leaves its events to
//! it (flat combining). No caller ever waits for another's log line.

use std::{
    collections::VecDeque,
    fmt,
    sync::{Mutex, MutexGuard},
};

use crate::trace::{Event, EventSink};

/// See the module documentation.
pub(crate) struct Outbox {
    sink: EventSink,
    /// Decided, not yet emitted, in decision order. Pushed to while the
    /// ledger's lock is held (lock order: ledger, then this), drained
    /// without it.
    queued: Mutex<VecDeque<Event>>,
    /// Held by the one thread emitting. Only ever `try_lock`ed, so nobody
    /// blocks on it.
    emitting: Mutex<()>,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("sink", &self.sink)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding either lock leaves at worst an event unsent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Outbox {
    pub(crate) fn new(sink: EventSink) -> Self {
        Self {
            sink,
            queued: Mutex::new(VecDeque::new()),
            emitting: Mutex::new(()),
        }
    }

    /// True when an event would go anywhere: callers skip building events
    /// nobody listens to (the hot path of a quiet server).
    pub(crate) fn enabled(&self) -> bool {
        self.sink.enabled()
    }

    /// Queues `event` (call it under the ledger's lock, so queue order is
    /// decision order). Dropped at once when nobody listens.
    pub(crate) fn push(&self, event: Event) {
        if self.enabled() {
            lock(&self.queued).push_back(event);
        }
    }

    /// Emits everything queued, in order, unless another thread is doing
    /// so already (it will emit ours too). Call it with no lock held.
    pub(crate) fn flush(&self) {
        loop {
            let Ok(_emitting) = self.emitting.try_lock() else {
                return;
            };
            loop {
                let next = lock(&self.queued).pop_front();
                match next {
                    Some(event) => self.sink.emit(event),
                    None => break,
                }
            }
            drop(_emitting);
            // An event queued after our last look, whose flusher found us
            // still emitting and left: look again, or it would wait for
            // the next flush.
            if lock(&self.queued).is_empty() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;

    fn applied(value: f64) -> Event {
        Event::Applied {
            request_id: String::new(),
            register: "r".into(),
            delta: 1.0,
            value,
        }
    }

    #[test]
    fn events_leave_in_the_order_they_were_queued_whoever_flushes() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let outbox = {
            let seen = Arc::clone(&seen);
            Arc::new(Outbox::new(EventSink::with_hook(move |e| {
                if let Event::Applied { value, .. } = e {
                    seen.lock().unwrap().push(*value as u32);
                }
            })))
        };
        // Four threads queue under one "ledger lock" and flush after it,
        // racing each other: every event is emitted once, in queue order.
        let ledger = Arc::new(Mutex::new(0u32));
        let start = Arc::new(Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (outbox, ledger, start) = (outbox.clone(), ledger.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    for _ in 0..500 {
                        {
                            let mut n = ledger.lock().unwrap();
                            outbox.push(applied(f64::from(*n)));
                            *n += 1;
                        }
                        outbox.flush();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        outbox.flush();
        let seen = seen.lock().unwrap();
        assert_eq!(*seen, (0..2000).collect::<Vec<u32>>());
    }
}
