//! The dedup store proper: a bounded, synchronous map from a request's
//! [`IdDigest`] to the outcome of its first execution. No I/O, no clock
//! (every call takes `now`), no locking: [`crate::store::MemoryLedger`] owns
//! one behind its lock.
//!
//! # Shape
//! Records live in a `VecDeque` in commit order, so the oldest is always at
//! the front: eviction by capacity and expiry by TTL are both "pop the
//! front", O(1), and the store never iterates a hash map. An index
//! (`hashbrown::HashTable<u32>`) maps a digest to the low 32 bits of its
//! record's *sequence number*; the record at sequence `s` sits at position
//! `s - front_seq` (computed in 32 bits: the store never holds 2³² records).
//!
//! A record is 48 bytes whatever the ID's length (a 16-byte digest, the
//! 8-byte fingerprint, the commit instant as 8 bytes of nanoseconds since
//! the store began, the 16-byte outcome), and an index entry 5 (4 + a
//! control byte) at up to 50 % spare capacity: about 60 bytes per retained
//! request, all included (measured by `benches/dedup.rs` for 36- and
//! 128-byte IDs).
//!
//! The index hashes a digest by taking 64 of its bits: a keyed digest is
//! already uniformly distributed, and peers cannot aim at buckets without
//! the key. Bucket placement decides nothing else: lookups give the same
//! answers whatever the key, and nothing ever iterates the index, so
//! behaviour and output stay deterministic.

use std::{collections::VecDeque, fmt, time::Duration};

use hashbrown::HashTable;
use tokio::time::Instant;

use crate::{
    core::REGISTERS_MAX,
    error::CalcError,
    store::dedup::{DedupConfig, IdDigest},
};

/// The outcome of a first execution, as much of it as is needed to answer a
/// repeat identically. A repeat carries the same payload (the fingerprint
/// says so), so the register name and delta come from the repeat itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StoredOutcome {
    /// Applied; the register held `value` right after.
    Applied {
        /// The value answered.
        value: f64,
    },
    /// Refused: the register held `current` and adding the delta would have
    /// overflowed.
    RegisterOverflow {
        /// The register's value when refused.
        current: f64,
    },
    /// Refused: the register did not exist and the server was full.
    TooManyRegisters,
}

impl StoredOutcome {
    /// The outcome worth recording for an execution's result, or `None` for
    /// an error that depends only on the payload (those are refused before a
    /// request ID is claimed, so they never reach here in practice).
    pub fn of(result: &Result<f64, CalcError>) -> Option<Self> {
        match result {
            Ok(value) => Some(Self::Applied { value: *value }),
            Err(CalcError::RegisterOverflow { current, .. }) => {
                Some(Self::RegisterOverflow { current: *current })
            }
            Err(CalcError::TooManyRegisters { .. }) => Some(Self::TooManyRegisters),
            Err(_) => None,
        }
    }

    /// Rebuilds the first execution's answer for a repeat of
    /// `register += delta`.
    ///
    /// ```
    /// use abacus::store::dedup::StoredOutcome;
    /// let o = StoredOutcome::Applied { value: 3.5 };
    /// assert_eq!(StoredOutcome::of(&o.result("x", 1.0)), Some(o));
    /// let o = StoredOutcome::RegisterOverflow { current: f64::MAX };
    /// assert_eq!(StoredOutcome::of(&o.result("x", f64::MAX)), Some(o));
    /// ```
    pub fn result(self, register: &str, delta: f64) -> Result<f64, CalcError> {
        match self {
            Self::Applied { value } => Ok(value),
            Self::RegisterOverflow { current } => Err(CalcError::RegisterOverflow {
                register: register.to_owned(),
                current,
                delta,
            }),
            Self::TooManyRegisters => Err(CalcError::TooManyRegisters { max: REGISTERS_MAX }),
        }
    }

    /// The value replayed, or NaN for a refusal (used in trace lines).
    pub fn value(self) -> f64 {
        match self {
            Self::Applied { value } => value,
            _ => f64::NAN,
        }
    }
}

/// What the store knows about a request ID.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lookup {
    /// Executed before with the same payload: answer this again.
    Hit(StoredOutcome),
    /// Executed before with a *different* payload.
    Mismatch {
        /// Fingerprint of the first payload.
        first_fingerprint: u64,
    },
    /// Not retained (never seen, or evicted).
    Miss,
}

/// Why a record left the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictReason {
    /// Making room: the store held `entries_max` records.
    Capacity,
    /// Older than the TTL.
    Ttl,
}

impl EvictReason {
    /// `capacity` or `ttl`, as in [`crate::trace::Event::DedupEvicted`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Capacity => "capacity",
            Self::Ttl => "ttl",
        }
    }
}

/// A record that was just evicted, reported to the caller's callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// Its request's digest.
    pub key: IdDigest,
    /// Its sequence number.
    pub seq: u64,
    /// Why.
    pub reason: EvictReason,
}

/// Counters of the store's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DedupStats {
    /// Records retained now.
    pub entries: u64,
    /// Lookups answered from a record.
    pub hits: u64,
    /// Records evicted (capacity or TTL).
    pub evictions: u64,
    /// Request IDs seen again with a different payload.
    pub mismatches: u64,
}

/// A record read back from durable storage that the store cannot take: the
/// durable log is damaged (records are only ever appended in sequence and
/// deleted from the front, so neither can happen otherwise).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The record does not continue the sequence.
    #[error("dedup record {got} does not follow record {expected}: the durable log has a gap")]
    Gap {
        /// The sequence number expected.
        expected: u64,
        /// The one given.
        got: u64,
    },
    /// The request ID is already retained under another sequence number.
    #[error("dedup record {seq} repeats request {key}")]
    DuplicateId {
        /// The record's sequence number.
        seq: u64,
        /// The request's digest.
        key: IdDigest,
    },
}

#[derive(Debug)]
struct Record {
    key: IdDigest,
    fingerprint: u64,
    outcome: StoredOutcome,
    /// Nanoseconds from the store's `epoch` to the commit (negative for an
    /// instant before it): 8 bytes where an `Instant` takes 16, ±292 years.
    committed_ns: i64,
}

/// Bounded request-ID → first-outcome store. See the module doc.
pub struct DedupStore {
    entries_max: usize,
    ttl: Duration,
    /// In commit order; `records[i]` has sequence number `front_seq + i`.
    records: VecDeque<Record>,
    /// Low 32 bits of each record's sequence number, hashed by its digest.
    index: HashTable<u32>,
    /// The instant commit times count from.
    epoch: Instant,
    front_seq: u64,
    hits: u64,
    evictions: u64,
    mismatches: u64,
}

impl fmt::Debug for DedupStore {
    // Not derived: a million records are not a debug line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupStore")
            .field("entries_max", &self.entries_max)
            .field("ttl", &self.ttl)
            .field("front_seq", &self.front_seq)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl DedupStore {
    /// An empty store with `config`'s limits (`entries_max` of at least 1).
    pub fn new(config: &DedupConfig) -> Self {
        Self {
            entries_max: config.entries_max.max(1),
            ttl: config.ttl(),
            records: VecDeque::new(),
            index: HashTable::new(),
            epoch: Instant::now(),
            front_seq: 0,
            hits: 0,
            evictions: 0,
            mismatches: 0,
        }
    }

    /// Records retained.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Sequence number of the oldest retained record: every record below it
    /// has been evicted. Durable mode deletes those from disk.
    pub fn front_seq(&self) -> u64 {
        self.front_seq
    }

    /// Sequence number the next insert will get.
    pub fn next_seq(&self) -> u64 {
        self.front_seq + self.records.len() as u64
    }

    /// Counters.
    pub fn stats(&self) -> DedupStats {
        DedupStats {
            entries: self.records.len() as u64,
            hits: self.hits,
            evictions: self.evictions,
            mismatches: self.mismatches,
        }
    }

    /// Counts a reused ID caught elsewhere (while its first execution was
    /// still in flight), so `mismatches` covers both cases.
    pub fn count_mismatch(&mut self) {
        self.mismatches += 1;
    }

    /// Takes over `old`'s hit, eviction and mismatch counters: a store
    /// reloaded from disk replaces one whose counters describe this
    /// process.
    pub fn carry_counters(&mut self, old: &DedupStore) {
        self.hits += old.hits;
        self.evictions += old.evictions;
        self.mismatches += old.mismatches;
    }

    fn hash(key: IdDigest) -> u64 {
        key.0 as u64
    }

    /// Signed nanoseconds from the store's epoch to `now`.
    fn ns(&self, now: Instant) -> i64 {
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        match now.checked_duration_since(self.epoch) {
            Some(after) => nanos(after),
            None => -nanos(self.epoch.saturating_duration_since(now)),
        }
    }

    /// Where the record of sequence number `seq32` (low bits) sits.
    fn offset(front_seq: u64, seq32: u32) -> usize {
        seq32.wrapping_sub(front_seq as u32) as usize
    }

    fn position(&self, key: IdDigest) -> Option<usize> {
        let (records, front) = (&self.records, self.front_seq);
        // Every indexed record is retained (evicted ones leave the index in
        // the same step), so the offset is in range; `get` keeps a broken
        // invariant from panicking.
        self.index
            .find(Self::hash(key), |&seq| {
                records
                    .get(Self::offset(front, seq))
                    .is_some_and(|r| r.key == key)
            })
            .map(|&seq| Self::offset(front, seq))
    }

    /// Looks `key` up, after expiring what `now` makes too old. Counts
    /// hits and mismatches.
    pub fn lookup(
        &mut self,
        key: IdDigest,
        fingerprint: u64,
        now: Instant,
        on_evict: impl FnMut(Evicted),
    ) -> Lookup {
        self.expire(now, on_evict);
        let Some(pos) = self.position(key) else {
            return Lookup::Miss;
        };
        let record = &self.records[pos];
        if record.fingerprint == fingerprint {
            self.hits += 1;
            Lookup::Hit(record.outcome)
        } else {
            self.mismatches += 1;
            Lookup::Mismatch {
                first_fingerprint: record.fingerprint,
            }
        }
    }

    /// Retains the outcome of `key`'s first execution, committed at
    /// `now`, evicting the oldest records if the store is full. Returns the
    /// record's sequence number.
    ///
    /// The caller guarantees the ID is not retained (it looked it up and
    /// holds the only claim on it). Should that be violated, the first
    /// record is kept, as a first outcome must never be overwritten, and its
    /// sequence number returned.
    pub fn insert(
        &mut self,
        key: IdDigest,
        fingerprint: u64,
        outcome: StoredOutcome,
        now: Instant,
        mut on_evict: impl FnMut(Evicted),
    ) -> u64 {
        self.expire(now, &mut on_evict);
        if let Some(pos) = self.position(key) {
            return self.front_seq + pos as u64;
        }
        self.append(key, fingerprint, outcome, now, on_evict)
    }

    /// Makes room (capacity evictions) and appends a record committed at
    /// `now`; returns its sequence number.
    fn append(
        &mut self,
        key: IdDigest,
        fingerprint: u64,
        outcome: StoredOutcome,
        now: Instant,
        mut on_evict: impl FnMut(Evicted),
    ) -> u64 {
        while self.records.len() >= self.entries_max {
            self.pop_front(EvictReason::Capacity, &mut on_evict);
        }
        self.push_back(Record {
            key,
            fingerprint,
            outcome,
            committed_ns: self.ns(now),
        })
    }

    /// Re-inserts a record read back from durable storage with its original
    /// sequence number, which must continue the store's sequence (the first
    /// one restored sets it). Its TTL restarts at `now`: the monotonic clock
    /// of a previous process means nothing to this one, and retaining longer
    /// is the safe side. The capacity bound still holds.
    pub fn restore(
        &mut self,
        seq: u64,
        key: IdDigest,
        fingerprint: u64,
        outcome: StoredOutcome,
        now: Instant,
        on_evict: impl FnMut(Evicted),
    ) -> Result<(), RestoreError> {
        if self.records.is_empty() {
            self.front_seq = seq;
        } else if seq != self.next_seq() {
            return Err(RestoreError::Gap {
                expected: self.next_seq(),
                got: seq,
            });
        }
        if self.position(key).is_some() {
            return Err(RestoreError::DuplicateId { seq, key });
        }
        self.append(key, fingerprint, outcome, now, on_evict);
        Ok(())
    }

    /// Evicts every record committed at least a TTL before `now`. Records
    /// are in commit order, so the expired ones are a prefix. (Should `now`
    /// ever go backwards, expiry is merely delayed.)
    pub fn expire(&mut self, now: Instant, mut on_evict: impl FnMut(Evicted)) {
        let now_ns = self.ns(now);
        let ttl_ns = i64::try_from(self.ttl.as_nanos()).unwrap_or(i64::MAX);
        while let Some(front) = self.records.front() {
            if now_ns.saturating_sub(front.committed_ns) < ttl_ns {
                break;
            }
            self.pop_front(EvictReason::Ttl, &mut on_evict);
        }
    }

    fn push_back(&mut self, record: Record) -> u64 {
        let seq = self.next_seq();
        let hash = Self::hash(record.key);
        self.records.push_back(record);
        let (records, front) = (&self.records, self.front_seq);
        // The rehash closure recomputes a stored entry's hash from its
        // record: the index keeps no hashes, to stay at 4 bytes per entry.
        self.index.insert_unique(hash, seq as u32, |&s| {
            records
                .get(Self::offset(front, s))
                .map_or(0, |r| Self::hash(r.key))
        });
        seq
    }

    fn pop_front(&mut self, reason: EvictReason, on_evict: &mut impl FnMut(Evicted)) {
        let Some(record) = self.records.pop_front() else {
            return;
        };
        let seq = self.front_seq;
        self.front_seq += 1;
        if let Ok(entry) = self
            .index
            .find_entry(Self::hash(record.key), |&s| s == seq as u32)
        {
            entry.remove();
        }
        self.evictions += 1;
        on_evict(Evicted {
            key: record.key,
            seq,
            reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::dedup::DigestKey;

    fn store(entries_max: usize, ttl_ms: u64) -> DedupStore {
        DedupStore::new(&DedupConfig {
            entries_max,
            ttl_ms,
            ..DedupConfig::default()
        })
    }

    fn applied(value: f64) -> StoredOutcome {
        StoredOutcome::Applied { value }
    }

    /// The digest of a test ID (one fixed key, the default scope).
    fn k(id: &str) -> IdDigest {
        DigestKey([7, 11]).digest("", id)
    }

    /// Collects evictions as `id:reason` strings, naming the test's
    /// one-letter IDs back from their digests.
    fn log(into: &mut Vec<String>) -> impl FnMut(Evicted) + '_ {
        |e| {
            let name = ('a'..='z')
                .map(String::from)
                .find(|id| k(id) == e.key)
                .unwrap_or_else(|| e.key.to_string());
            into.push(format!("{name}:{}", e.reason.as_str()))
        }
    }

    #[test]
    fn hit_miss_and_mismatch() {
        let t0 = Instant::now();
        let mut s = store(10, 60_000);
        let mut ev = Vec::new();
        assert_eq!(s.lookup(k("a"), 1, t0, log(&mut ev)), Lookup::Miss);
        assert_eq!(s.insert(k("a"), 1, applied(2.0), t0, log(&mut ev)), 0);
        assert_eq!(
            s.lookup(k("a"), 1, t0, log(&mut ev)),
            Lookup::Hit(applied(2.0))
        );
        assert_eq!(
            s.lookup(k("a"), 9, t0, log(&mut ev)),
            Lookup::Mismatch {
                first_fingerprint: 1
            }
        );
        assert_eq!(s.lookup(k("b"), 1, t0, log(&mut ev)), Lookup::Miss);
        assert_eq!(
            s.stats(),
            DedupStats {
                entries: 1,
                hits: 1,
                evictions: 0,
                mismatches: 1
            }
        );
        assert!(ev.is_empty());
    }

    #[test]
    fn first_outcome_is_never_overwritten() {
        let t0 = Instant::now();
        let mut s = store(10, 60_000);
        s.insert(k("a"), 1, applied(2.0), t0, |_| {});
        assert_eq!(s.insert(k("a"), 1, applied(99.0), t0, |_| {}), 0);
        assert_eq!(s.len(), 1);
        assert_eq!(s.lookup(k("a"), 1, t0, |_| {}), Lookup::Hit(applied(2.0)));
    }

    #[test]
    fn capacity_evicts_oldest_first() {
        let t0 = Instant::now();
        let mut s = store(3, 60_000);
        let mut ev = Vec::new();
        for (i, id) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            let seq = s.insert(k(id), 0, applied(i as f64), t0, log(&mut ev));
            assert_eq!(seq, i as u64);
        }
        assert_eq!(ev, ["a:capacity", "b:capacity"]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.front_seq(), 2);
        assert_eq!(s.lookup(k("a"), 0, t0, |_| {}), Lookup::Miss);
        assert_eq!(s.lookup(k("c"), 0, t0, |_| {}), Lookup::Hit(applied(2.0)));
        assert_eq!(s.lookup(k("e"), 0, t0, |_| {}), Lookup::Hit(applied(4.0)));
        assert_eq!(s.stats().evictions, 2);
    }

    #[test]
    fn ttl_expires_lazily_on_lookup_and_insert() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut s = store(10, 100);
        let mut ev = Vec::new();
        s.insert(k("a"), 0, applied(1.0), t0, log(&mut ev));
        s.insert(k("b"), 0, applied(2.0), t0 + ms(50), log(&mut ev));
        // Just under the TTL: still there.
        assert_eq!(
            s.lookup(k("a"), 0, t0 + ms(99), log(&mut ev)),
            Lookup::Hit(applied(1.0))
        );
        // At the TTL: "a" expires on this lookup (of another ID), "b" stays.
        assert_eq!(
            s.lookup(k("zz"), 0, t0 + ms(100), log(&mut ev)),
            Lookup::Miss
        );
        assert_eq!(ev, ["a:ttl"]);
        assert_eq!(s.lookup(k("a"), 0, t0 + ms(100), |_| {}), Lookup::Miss);
        // An insert expires too, before making room.
        s.insert(k("c"), 0, applied(3.0), t0 + ms(150), log(&mut ev));
        assert_eq!(ev, ["a:ttl", "b:ttl"]);
        assert_eq!(s.len(), 1);
        // An expired ID may be used again: it is a new request.
        s.insert(k("a"), 0, applied(4.0), t0 + ms(160), |_| {});
        assert_eq!(
            s.lookup(k("a"), 0, t0 + ms(160), |_| {}),
            Lookup::Hit(applied(4.0))
        );
    }

    #[test]
    fn time_going_backwards_only_delays_expiry() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut s = store(10, 100);
        s.insert(k("a"), 0, applied(1.0), t0, |_| {});
        s.insert(k("b"), 0, applied(1.0), t0 - Duration::from_secs(5), |_| {});
        s.expire(t0 + Duration::from_millis(100), |_| {});
        assert_eq!(s.len(), 0, "both expire once the front does");
    }

    #[test]
    fn restore_continues_the_sequence_and_restarts_ttl() {
        let t0 = Instant::now();
        let mut s = store(2, 100);
        let mut ev = Vec::new();
        s.restore(40, k("x"), 1, applied(1.0), t0, log(&mut ev))
            .unwrap();
        s.restore(41, k("y"), 1, applied(2.0), t0, log(&mut ev))
            .unwrap();
        // Over capacity after a config change: the oldest goes.
        s.restore(42, k("z"), 1, applied(3.0), t0, log(&mut ev))
            .unwrap();
        assert_eq!(ev, ["x:capacity"]);
        assert_eq!((s.front_seq(), s.next_seq()), (41, 43));
        assert_eq!(
            s.restore(50, k("w"), 1, applied(0.0), t0, |_| {}),
            Err(RestoreError::Gap {
                expected: 43,
                got: 50
            })
        );
        assert!(s.restore(43, k("y"), 1, applied(0.0), t0, |_| {}).is_err());
        assert_eq!(s.insert(k("n"), 1, applied(5.0), t0, |_| {}), 43);
        assert_eq!(s.lookup(k("z"), 1, t0, |_| {}), Lookup::Hit(applied(3.0)));
    }

    #[test]
    fn memory_stays_bounded_under_churn() {
        // Many more distinct IDs than the capacity, with lookups between:
        // the store never holds more than entries_max and every retained ID
        // is still found (the index and the ring agree).
        let t0 = Instant::now();
        let mut s = store(64, 60_000);
        for i in 0..10_000u64 {
            let id = format!("id-{i}");
            s.insert(k(&id), i, applied(i as f64), t0, |_| {});
            assert!(s.len() <= 64);
            if i >= 63 {
                let old = format!("id-{}", i - 63);
                assert_eq!(
                    s.lookup(k(&old), i - 63, t0, |_| {}),
                    Lookup::Hit(applied((i - 63) as f64))
                );
            }
        }
        assert_eq!(s.index.len(), 64);
        assert_eq!(s.stats().evictions, 10_000 - 64);
    }

    #[test]
    fn outcomes_round_trip_and_payload_errors_are_not_recorded() {
        for o in [
            applied(-0.5),
            StoredOutcome::RegisterOverflow { current: 1e308 },
            StoredOutcome::TooManyRegisters,
        ] {
            assert_eq!(StoredOutcome::of(&o.result("r", 1e308)), Some(o));
        }
        assert_eq!(StoredOutcome::of(&Err(CalcError::EmptyRegisterName)), None);
    }
}
