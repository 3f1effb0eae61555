//! The request IDs this process is executing against PostgreSQL.
//!
//! Across replicas, a duplicate waits on the unique key's row lock. Inside
//! one process that would cost a pooled connection per waiting duplicate and
//! could not tell a reused ID apart until the first execution ends, so
//! duplicates meet here first, exactly as in the in-memory ledger: a
//! duplicate with the same payload waits for the first execution's end, one
//! with another payload is refused at once, and the number of executions in
//! flight is capped.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{Notify, futures::OwnedNotified};

/// `(scope, request ID)`.
type Key = (Box<str>, Box<str>);

#[derive(Debug)]
struct Flight {
    fingerprint: u64,
    /// Woken when the execution ends (committed, released or failed).
    done: Arc<Notify>,
}

/// The table: see the module doc.
#[derive(Debug)]
pub(crate) struct Flights {
    // A std Mutex: every critical section is a map operation, never held
    // across an await. Looked up by key only, never iterated, so hash
    // order reaches nothing.
    map: Mutex<HashMap<Key, Flight>>,
    max: usize,
}

/// What [`Flights::enter`] found.
#[derive(Debug)]
pub(crate) enum Entry<'a> {
    /// This caller executes; the guard ends the flight when dropped.
    Entered(FlightGuard<'a>),
    /// Another task executes the same payload: wait, then look again.
    Join(OwnedNotified),
    /// Another task executes a different payload under the same ID.
    Mismatch { first: u64 },
    /// `max` executions are in flight already.
    Full { in_flight: usize },
}

impl Flights {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Flight>> {
        // Every mutation is a single insert or remove: a panic elsewhere
        // cannot leave the map half-changed, so poisoning is ignored.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn enter(&self, scope: &str, id: &str, fingerprint: u64) -> Entry<'_> {
        let key: Key = (scope.into(), id.into());
        let mut map = self.lock();
        if let Some(flight) = map.get(&key) {
            if flight.fingerprint != fingerprint {
                return Entry::Mismatch {
                    first: flight.fingerprint,
                };
            }
            // Created under the lock, before the holder can finish (that
            // takes the lock too), so its wake-up cannot be missed.
            return Entry::Join(Arc::clone(&flight.done).notified_owned());
        }
        if map.len() >= self.max {
            return Entry::Full {
                in_flight: map.len(),
            };
        }
        map.insert(
            key.clone(),
            Flight {
                fingerprint,
                done: Arc::new(Notify::new()),
            },
        );
        Entry::Entered(FlightGuard {
            flights: self,
            key: Some(key),
        })
    }

    /// Executions in flight.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The most executions allowed at once.
    pub(crate) fn max(&self) -> usize {
        self.max
    }
}

/// One execution in flight; dropping it ends the flight and wakes every
/// duplicate waiting for it.
#[derive(Debug)]
pub(crate) struct FlightGuard<'a> {
    flights: &'a Flights,
    key: Option<Key>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let flight = self.flights.lock().remove(&key);
        // Woken outside the lock: waiters take it again at once.
        if let Some(flight) = flight {
            flight.done.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn duplicates_join_mismatches_are_told_and_the_table_is_capped() {
        let flights = Flights::new(2);
        let Entry::Entered(first) = flights.enter("", "a", 1) else {
            panic!("an empty table admits")
        };
        let Entry::Join(done) = flights.enter("", "a", 1) else {
            panic!("same payload joins")
        };
        assert!(matches!(
            flights.enter("", "a", 2),
            Entry::Mismatch { first: 1 }
        ));
        // Another scope is another request.
        let Entry::Entered(_other) = flights.enter("alice", "a", 2) else {
            panic!("scopes are apart")
        };
        assert!(matches!(
            flights.enter("", "b", 1),
            Entry::Full { in_flight: 2 }
        ));
        drop(first);
        // The join resolves once the first execution ends.
        done.await;
        assert_eq!(flights.len(), 1);
    }
}
