//! The dedup store proper: a bounded, synchronous map from a request's
//! [`IdDigest`] to the outcome of its first execution. No I/O, no clock
//! (every call takes `now`), no locking: [`crate::store::MemoryLedger`] owns
//! one behind its lock.
//!
//! # One client cannot flush another's records
//! Every record is charged to its owner (an [`OwnerKey`]: the caller's
//! identity, or its IP address without tokens). Making room never takes a
//! record from a client holding fewer than the client inserting:
//! - a client holding [`DedupConfig::entries_per_client_max`] records
//!   gives up its own oldest for each new one;
//! - when the store holds [`DedupConfig::entries_max`], the client holding
//!   the most gives up its oldest, the inserting client on a tie.
//!
//! So a client holding no more than `entries_max / clients` records keeps
//! each of them for the whole TTL, whatever others send. Such evictions
//! happen inside the record's TTL and are counted apart
//! ([`DedupStats::evictions_early`]): the server warns about them.
//!
//! # Shape
//! Every way a record leaves takes the *oldest record of one owner*: the
//! TTL expires the oldest record of all (which is its owner's oldest), and
//! making room takes the oldest of the inserting or the heaviest client.
//! So the store keeps, per owner, a singly linked list of its records in
//! commit order, linked through the records themselves, and never removes
//! from the middle of one:
//! - records live in a slab (`Vec<Record>`), a freed slot reused by the
//!   next insert, so the slab never holds more than `entries_max` slots
//!   and no slot is ever dead;
//! - an index (`hashbrown::HashTable<u32>`) maps a digest to its record's
//!   slot;
//! - each owner knows its oldest record (and that record's full sequence
//!   number), its newest, and how many it holds;
//! - `fronts` orders the owners by the sequence number of their oldest
//!   record, so its first entry is the oldest record of all (what the TTL
//!   looks at), and `weights` orders them by records held (the heaviest is
//!   the last).
//!
//! Sequence numbers (the durable file's keys) follow commit order and have
//! gaps where records left out of commit order.
//!
//! # Memory
//! A record is 48 bytes whatever the ID's length (see `super::record` for
//! the layout), an index entry 5 (4 + a control byte) at a load between
//! 7/16 and 7/8, so at most about 60 bytes per record: 59 measured at
//! 1,000,000 records by `benches/dedup.rs`, for 36- and 128-byte IDs
//! alike. Each client holding records costs about 150 bytes more (its
//! entry, its key in a hash map, its two ordered-set entries): 209 bytes
//! per record when every record has a client of its own.
//!
//! The index hashes a digest by taking 64 of its bits: a keyed digest is
//! already uniformly distributed, and peers cannot aim at buckets without
//! the key. Bucket placement decides nothing else: lookups give the same
//! answers whatever the key, and nothing ever iterates the index, so
//! behaviour and output stay deterministic.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    time::Duration,
};

use hashbrown::HashTable;
use tokio::time::Instant;

use super::record::{NIL, Record, SEQ_HORIZON};
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
    /// Of those, evicted before their TTL to make room (capacity).
    pub evictions_early: u64,
    /// Request IDs seen again with a different payload.
    pub mismatches: u64,
}

/// A record read back from durable storage that the store cannot take: the
/// durable log is damaged (records are only ever appended in sequence and
/// deleted from the front, so neither can happen otherwise).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The record's sequence number does not follow the last one's.
    #[error("dedup record {got} comes after record {after}: the durable log is out of order")]
    OutOfOrder {
        /// The sequence number of the record before.
        after: u64,
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

/// Whom a record is charged to: a keyed digest of the caller's
/// [`QuotaKey`](crate::store::QuotaKey), so a record costs the same
/// whoever sent it and the durable file can keep it (see
/// [`DigestKey::owner`](crate::store::dedup::DigestKey::owner)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerKey(pub u64);

impl OwnerKey {
    /// Records read back from a file that did not keep their owner: they
    /// count as one client of their own, exempt from the per-client bound,
    /// and the first to give way when the store is full while they are
    /// the most.
    pub const RESTORED: OwnerKey = OwnerKey(0);
}
/// One client's records: a list through the records' `next` links, oldest
/// first.
#[derive(Debug)]
struct Owner {
    key: OwnerKey,
    /// Slot of its oldest record.
    head: u32,
    /// That record's sequence number (the key of `fronts`).
    head_seq: u64,
    /// Slot of its newest record.
    tail: u32,
    /// Records it holds (at least 1: an owner with none is forgotten).
    held: usize,
}

/// Bounded request-ID → first-outcome store. See the module doc.
pub struct DedupStore {
    entries_max: usize,
    per_client_max: usize,
    ttl: Duration,
    /// Every record, live or free; never longer than `entries_max`.
    slab: Vec<Record>,
    /// First free slot of `slab` (a list through `next`), or [`NIL`].
    free_slot: u32,
    /// The slot of each retained record, hashed by its digest (so its
    /// length is the number of records retained).
    index: HashTable<u32>,
    /// Clients holding records, by index; `None` for a free entry.
    owners: Vec<Option<Owner>>,
    /// Free entries of `owners`.
    free: Vec<u32>,
    /// Owner key → index in `owners`. Only looked up, never iterated.
    by_owner: HashMap<OwnerKey, u32>,
    /// (records held, owner index) for every owner: the heaviest is the
    /// last.
    weights: BTreeSet<(usize, u32)>,
    /// (sequence number of its oldest record, owner index) for every
    /// owner: the oldest record of all is the first's.
    fronts: BTreeSet<(u64, u32)>,
    /// The instant commit times count from.
    epoch: Instant,
    next_seq: u64,
    hits: u64,
    evictions: u64,
    evictions_early: u64,
    mismatches: u64,
}

impl fmt::Debug for DedupStore {
    // Not derived: that would print every record.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupStore")
            .field("entries_max", &self.entries_max)
            .field("per_client_max", &self.per_client_max)
            .field("ttl", &self.ttl)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl DedupStore {
    /// An empty store with `config`'s bounds (an `entries_max` of at least
    /// 1).
    pub fn new(config: &DedupConfig) -> Self {
        Self {
            entries_max: config.entries_max.max(1),
            per_client_max: config.entries_per_client_max().max(1),
            ttl: config.ttl(),
            slab: Vec::new(),
            free_slot: NIL,
            index: HashTable::new(),
            owners: Vec::new(),
            free: Vec::new(),
            by_owner: HashMap::new(),
            weights: BTreeSet::new(),
            fronts: BTreeSet::new(),
            epoch: Instant::now(),
            next_seq: 0,
            hits: 0,
            evictions: 0,
            evictions_early: 0,
            mismatches: 0,
        }
    }

    /// Records retained.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Sequence number of the oldest retained record: every record below it
    /// has been evicted. Durable mode deletes those from disk (and, one by
    /// one, the records above it evicted out of order: see
    /// [`Evicted::seq`]).
    pub fn front_seq(&self) -> u64 {
        self.fronts.first().map_or(self.next_seq, |&(seq, _)| seq)
    }

    /// Sequence number the next insert will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Records retained for `owner`.
    pub fn held_by(&self, owner: OwnerKey) -> usize {
        self.by_owner.get(&owner).map_or(0, |&o| self.held(o))
    }

    /// Counters.
    pub fn stats(&self) -> DedupStats {
        DedupStats {
            entries: self.len() as u64,
            hits: self.hits,
            evictions: self.evictions,
            evictions_early: self.evictions_early,
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
        self.evictions_early += old.evictions_early;
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

    /// The slot of `key`'s record, if retained.
    fn position(&self, key: IdDigest) -> Option<u32> {
        let slab = &self.slab;
        // Every indexed slot holds a retained record (an evicted one leaves
        // the index in the same step); `get` keeps a broken invariant from
        // panicking.
        self.index
            .find(Self::hash(key), |&slot| {
                slab.get(slot as usize).is_some_and(|r| r.key == key)
            })
            .copied()
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
        let Some(record) = self
            .position(key)
            .and_then(|slot| self.slab.get(slot as usize))
        else {
            return Lookup::Miss;
        };
        if record.fingerprint == fingerprint {
            self.hits += 1;
            Lookup::Hit(record.outcome())
        } else {
            self.mismatches += 1;
            Lookup::Mismatch {
                first_fingerprint: record.fingerprint,
            }
        }
    }

    /// Retains the outcome of `key`'s first execution, committed at `now`
    /// by `owner`, making room first (see the module documentation: the
    /// owner's own oldest record when it holds its share, else the oldest
    /// record of the client holding the most). Returns the record's
    /// sequence number.
    ///
    /// The caller guarantees the ID is not retained (it looked it up and
    /// holds the only claim on it). Should that be violated, the first
    /// record is kept, as a first outcome must never be overwritten, and its
    /// sequence number returned.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &mut self,
        key: IdDigest,
        fingerprint: u64,
        outcome: StoredOutcome,
        owner: OwnerKey,
        now: Instant,
        mut on_evict: impl FnMut(Evicted),
    ) -> u64 {
        self.expire(now, &mut on_evict);
        if let Some(record) = self
            .position(key)
            .and_then(|slot| self.slab.get(slot as usize))
        {
            return record.seq(self.next_seq);
        }
        let seq = self.next_seq;
        self.append(seq, key, fingerprint, outcome, owner, now, on_evict);
        seq
    }

    /// Makes room and appends record `seq`, committed at `now`.
    #[allow(clippy::too_many_arguments)]
    fn append(
        &mut self,
        seq: u64,
        key: IdDigest,
        fingerprint: u64,
        outcome: StoredOutcome,
        owner: OwnerKey,
        now: Instant,
        mut on_evict: impl FnMut(Evicted),
    ) {
        // Records numbered 2³² or more before this one can no longer be
        // told apart by 32 bits (see `SEQ_HORIZON`).
        while let Some(&(oldest, o)) = self.fronts.first() {
            if oldest.saturating_add(SEQ_HORIZON) > seq {
                break;
            }
            self.evict_oldest_of(o, EvictReason::Capacity, &mut on_evict);
        }
        let own = |s: &Self| s.by_owner.get(&owner).copied();
        if owner != OwnerKey::RESTORED
            && let Some(o) = own(self)
            && self.held(o) >= self.per_client_max
        {
            self.evict_oldest_of(o, EvictReason::Capacity, &mut on_evict);
        }
        while self.len() >= self.entries_max {
            // The client holding the most gives a record up; the one
            // inserting does on a tie, so it never takes a record from a
            // client holding as many as itself.
            let victim = match (self.weights.last(), own(self)) {
                (Some(&(most, h)), Some(o)) if most > self.held(o) => h,
                (_, Some(o)) => o,
                (Some(&(_, h)), None) => h,
                (None, None) => break,
            };
            if !self.evict_oldest_of(victim, EvictReason::Capacity, &mut on_evict) {
                // Nothing to take from (cannot happen while records are held).
                break;
            }
        }
        // Looked up only now: making room may have emptied, and so freed,
        // the owner's entry.
        let o = self.owner_index(owner);
        self.next_seq = seq + 1;
        let record = Record::new(key, fingerprint, outcome, self.ns(now), seq);
        let slot = match self.free_slot {
            NIL => {
                self.slab.push(record);
                (self.slab.len() - 1) as u32
            }
            slot => {
                let free = &mut self.slab[slot as usize];
                self.free_slot = free.next;
                *free = record;
                slot
            }
        };
        let Some(Some(entry)) = self.owners.get_mut(o as usize) else {
            return;
        };
        let before = entry.held;
        if before == 0 {
            (entry.head, entry.head_seq) = (slot, seq);
            self.fronts.insert((seq, o));
        } else if let Some(newest) = self.slab.get_mut(entry.tail as usize) {
            newest.next = slot;
        }
        entry.tail = slot;
        entry.held += 1;
        self.weights.remove(&(before, o));
        self.weights.insert((before + 1, o));
        let slab = &self.slab;
        // The rehash closure recomputes a stored entry's hash from its
        // record: the index keeps no hashes, to stay at 4 bytes per entry.
        self.index.insert_unique(Self::hash(key), slot, |&s| {
            slab.get(s as usize).map_or(0, |r| Self::hash(r.key))
        });
    }

    /// Re-inserts a record read back from durable storage with its original
    /// sequence number and owner; sequence numbers must increase (records
    /// evicted out of order leave gaps). Its TTL restarts at `now`: the
    /// monotonic clock of a previous process means nothing to this one,
    /// and retaining longer is the safe side. The bounds still hold.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        &mut self,
        seq: u64,
        key: IdDigest,
        fingerprint: u64,
        outcome: StoredOutcome,
        owner: OwnerKey,
        now: Instant,
        on_evict: impl FnMut(Evicted),
    ) -> Result<(), RestoreError> {
        if seq < self.next_seq {
            return Err(RestoreError::OutOfOrder {
                after: self.next_seq - 1,
                got: seq,
            });
        }
        if self.position(key).is_some() {
            return Err(RestoreError::DuplicateId { seq, key });
        }
        self.append(seq, key, fingerprint, outcome, owner, now, on_evict);
        Ok(())
    }

    /// Evicts every record committed at least a TTL before `now`, oldest
    /// first. (Should `now` ever go backwards, so that a record is older
    /// than one committed before it, expiry is merely delayed: the oldest
    /// record decides.)
    pub fn expire(&mut self, now: Instant, mut on_evict: impl FnMut(Evicted)) {
        let now_ns = self.ns(now);
        let ttl_ns = i64::try_from(self.ttl.as_nanos()).unwrap_or(i64::MAX);
        while let Some(&(_, o)) = self.fronts.first() {
            let committed = self
                .owners
                .get(o as usize)
                .and_then(Option::as_ref)
                .and_then(|owner| self.slab.get(owner.head as usize))
                .map(Record::committed_ns);
            // `None` only for a broken invariant: evicting mends it.
            if committed.is_some_and(|c| now_ns.saturating_sub(c) < ttl_ns) {
                break;
            }
            self.evict_oldest_of(o, EvictReason::Ttl, &mut on_evict);
        }
    }

    fn held(&self, o: u32) -> usize {
        self.owners
            .get(o as usize)
            .and_then(Option::as_ref)
            .map_or(0, |o| o.held)
    }

    /// The index of `owner`'s entry, created if it holds nothing yet.
    fn owner_index(&mut self, owner: OwnerKey) -> u32 {
        if let Some(&o) = self.by_owner.get(&owner) {
            return o;
        }
        let entry = Owner {
            key: owner,
            head: NIL,
            head_seq: 0,
            tail: NIL,
            held: 0,
        };
        let o = match self.free.pop() {
            Some(o) => {
                self.owners[o as usize] = Some(entry);
                o
            }
            None => {
                self.owners.push(Some(entry));
                (self.owners.len() - 1) as u32
            }
        };
        self.by_owner.insert(owner, o);
        o
    }

    /// Evicts owner `o`'s oldest record (a `Capacity` eviction is inside
    /// the record's TTL, and counted early); false if it holds none. An
    /// owner left with nothing is forgotten.
    fn evict_oldest_of(
        &mut self,
        o: u32,
        reason: EvictReason,
        on_evict: &mut impl FnMut(Evicted),
    ) -> bool {
        let next_seq = self.next_seq;
        let Some(Some(owner)) = self.owners.get_mut(o as usize) else {
            // Cannot happen (`fronts` and `weights` name live owners);
            // forget the name so no loop spins on it.
            self.fronts.retain(|&(_, x)| x != o);
            self.weights.retain(|&(_, x)| x != o);
            return false;
        };
        let (slot, seq, held) = (owner.head, owner.head_seq, owner.held);
        let Some(record) = self.slab.get_mut(slot as usize) else {
            return false;
        };
        let (key, next) = (record.key, record.next);
        record.next = self.free_slot;
        self.free_slot = slot;
        self.fronts.remove(&(seq, o));
        self.weights.remove(&(held, o));
        if held > 1 {
            let next_seq_of = self
                .slab
                .get(next as usize)
                .map_or(next_seq, |r| r.seq(next_seq));
            (owner.head, owner.head_seq, owner.held) = (next, next_seq_of, held - 1);
            self.fronts.insert((next_seq_of, o));
            self.weights.insert((held - 1, o));
        } else {
            let key = owner.key;
            self.owners[o as usize] = None;
            self.free.push(o);
            self.by_owner.remove(&key);
        }
        if let Ok(entry) = self.index.find_entry(Self::hash(key), |&s| s == slot) {
            entry.remove();
        }
        self.evictions += 1;
        if reason == EvictReason::Capacity {
            self.evictions_early += 1;
        }
        on_evict(Evicted { key, seq, reason });
        true
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

    /// The one client of the tests that do not care who sends.
    const A: OwnerKey = OwnerKey(1);

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
        assert_eq!(s.insert(k("a"), 1, applied(2.0), A, t0, log(&mut ev)), 0);
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
                evictions_early: 0,
                mismatches: 1
            }
        );
        assert!(ev.is_empty());
    }

    #[test]
    fn first_outcome_is_never_overwritten() {
        let t0 = Instant::now();
        let mut s = store(10, 60_000);
        s.insert(k("a"), 1, applied(2.0), A, t0, |_| {});
        assert_eq!(s.insert(k("a"), 1, applied(99.0), A, t0, |_| {}), 0);
        assert_eq!(s.len(), 1);
        assert_eq!(s.lookup(k("a"), 1, t0, |_| {}), Lookup::Hit(applied(2.0)));
    }

    #[test]
    fn capacity_evicts_oldest_first() {
        let t0 = Instant::now();
        let mut s = store(3, 60_000);
        let mut ev = Vec::new();
        for (i, id) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
            let seq = s.insert(k(id), 0, applied(i as f64), A, t0, log(&mut ev));
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
        s.insert(k("a"), 0, applied(1.0), A, t0, log(&mut ev));
        s.insert(k("b"), 0, applied(2.0), A, t0 + ms(50), log(&mut ev));
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
        s.insert(k("c"), 0, applied(3.0), A, t0 + ms(150), log(&mut ev));
        assert_eq!(ev, ["a:ttl", "b:ttl"]);
        assert_eq!(s.len(), 1);
        // An expired ID may be used again: it is a new request.
        s.insert(k("a"), 0, applied(4.0), A, t0 + ms(160), |_| {});
        assert_eq!(
            s.lookup(k("a"), 0, t0 + ms(160), |_| {}),
            Lookup::Hit(applied(4.0))
        );
    }

    #[test]
    fn time_going_backwards_only_delays_expiry() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut s = store(10, 100);
        s.insert(k("a"), 0, applied(1.0), A, t0, |_| {});
        s.insert(
            k("b"),
            0,
            applied(1.0),
            A,
            t0 - Duration::from_secs(5),
            |_| {},
        );
        s.expire(t0 + Duration::from_millis(100), |_| {});
        assert_eq!(s.len(), 0, "both expire once the front does");
    }

    #[test]
    fn restore_continues_the_sequence_and_restarts_ttl() {
        let t0 = Instant::now();
        let mut s = store(2, 100);
        let mut ev = Vec::new();
        s.restore(40, k("x"), 1, applied(1.0), A, t0, log(&mut ev))
            .unwrap();
        s.restore(41, k("y"), 1, applied(2.0), A, t0, log(&mut ev))
            .unwrap();
        // Over capacity after a config change: the oldest goes.
        s.restore(42, k("z"), 1, applied(3.0), A, t0, log(&mut ev))
            .unwrap();
        assert_eq!(ev, ["x:capacity"]);
        assert_eq!((s.front_seq(), s.next_seq()), (41, 43));
        assert_eq!(
            s.restore(42, k("w"), 1, applied(0.0), A, t0, |_| {}),
            Err(RestoreError::OutOfOrder { after: 42, got: 42 })
        );
        assert!(
            s.restore(43, k("y"), 1, applied(0.0), A, t0, |_| {})
                .is_err()
        );
        // A gap is a record evicted out of commit order: allowed.
        s.restore(50, k("w"), 1, applied(0.0), A, t0, |_| {})
            .unwrap();
        assert_eq!(s.insert(k("n"), 1, applied(5.0), A, t0, |_| {}), 51);
        assert_eq!(s.lookup(k("w"), 1, t0, |_| {}), Lookup::Hit(applied(0.0)));
    }

    #[test]
    fn memory_stays_bounded_under_churn() {
        // Many more distinct IDs than the capacity, with lookups between:
        // the store never holds more than entries_max and every retained ID
        // is still found (the index and the slab agree).
        let t0 = Instant::now();
        let mut s = store(64, 60_000);
        for i in 0..10_000u64 {
            let id = format!("id-{i}");
            s.insert(k(&id), i, applied(i as f64), A, t0, |_| {});
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

    fn per_client(entries_max: usize, per_client_max: usize) -> DedupStore {
        DedupStore::new(&DedupConfig {
            entries_max,
            entries_per_client_max: Some(per_client_max),
            ttl_ms: 60_000,
            ..DedupConfig::default()
        })
    }

    #[test]
    fn one_clients_fresh_ids_evict_its_own_records_not_anothers() {
        // The flush: a victim's record, then an attacker's fresh IDs, more
        // than the whole store holds.
        let t0 = Instant::now();
        let (victim, attacker) = (OwnerKey(7), OwnerKey(9));
        let mut s = per_client(10, 10);
        s.insert(k("v"), 1, applied(100.0), victim, t0, |_| {});
        let mut evicted = Vec::new();
        for i in 0..11u64 {
            let id = format!("attack-{i}");
            s.insert(k(&id), 0, applied(0.0), attacker, t0, |e| evicted.push(e));
        }
        assert_eq!(s.lookup(k("v"), 1, t0, |_| {}), Lookup::Hit(applied(100.0)));
        assert_eq!(
            (s.held_by(victim), s.held_by(attacker), s.len()),
            (1, 9, 10)
        );
        assert_eq!(evicted.len(), 2);
        assert!(evicted.iter().all(|e| e.reason == EvictReason::Capacity));
        assert_eq!(s.lookup(k("attack-0"), 0, t0, |_| {}), Lookup::Miss);
        assert_eq!(
            s.lookup(k("attack-10"), 0, t0, |_| {}),
            Lookup::Hit(applied(0.0))
        );
        assert_eq!(s.stats().evictions_early, 2);
        // The victim's record went out of commit order: the front is still
        // its record, and the evicted ones are named by sequence number.
        assert_eq!(s.front_seq(), 0);
        assert_eq!(evicted.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn negative_control_a_single_owner_is_flushed_as_before() {
        // The same traffic charged to one owner flushes the victim's
        // record: the test above can fail.
        let t0 = Instant::now();
        let mut s = per_client(10, 10);
        s.insert(k("v"), 1, applied(100.0), A, t0, |_| {});
        for i in 0..11u64 {
            s.insert(k(&format!("attack-{i}")), 0, applied(0.0), A, t0, |_| {});
        }
        assert_eq!(s.lookup(k("v"), 1, t0, |_| {}), Lookup::Miss);
    }

    #[test]
    fn the_heaviest_client_gives_way_and_the_inserting_one_on_a_tie() {
        let t0 = Instant::now();
        let (a, b, c) = (OwnerKey(1), OwnerKey(2), OwnerKey(3));
        let mut s = per_client(6, 6);
        for (i, owner) in [a, a, a, b, b, c].into_iter().enumerate() {
            s.insert(k(&format!("r{i}")), 0, applied(0.0), owner, t0, |_| {});
        }
        // Full. c (1 record) inserts: a, the heaviest, loses its oldest.
        s.insert(k("c1"), 0, applied(0.0), c, t0, |_| {});
        assert_eq!(s.lookup(k("r0"), 0, t0, |_| {}), Lookup::Miss);
        assert_eq!((s.held_by(a), s.held_by(b), s.held_by(c)), (2, 2, 2));
        // A three-way tie: b, inserting, gives its own oldest.
        s.insert(k("b1"), 0, applied(0.0), b, t0, |_| {});
        assert_eq!(s.lookup(k("r3"), 0, t0, |_| {}), Lookup::Miss);
        assert_eq!((s.held_by(a), s.held_by(b), s.held_by(c)), (2, 2, 2));
    }

    #[test]
    fn a_client_at_its_own_bound_evicts_its_oldest() {
        let t0 = Instant::now();
        let (a, b) = (OwnerKey(1), OwnerKey(2));
        let mut s = per_client(100, 3);
        s.insert(k("b"), 0, applied(0.0), b, t0, |_| {});
        for id in ["p", "q", "r", "s"] {
            s.insert(k(id), 0, applied(0.0), a, t0, |_| {});
        }
        assert_eq!(s.lookup(k("p"), 0, t0, |_| {}), Lookup::Miss);
        assert_eq!((s.held_by(a), s.held_by(b), s.len()), (3, 1, 4));
    }

    #[test]
    fn out_of_order_evictions_reuse_slots_and_keep_every_retained_id_found() {
        // One long-lived record pins the front while another client churns
        // through many times the store's size: freed slots are reused, and
        // the index, the slab and the owners' lists keep agreeing.
        let t0 = Instant::now();
        let (pinned, churn) = (OwnerKey(1), OwnerKey(2));
        let mut s = per_client(64, 64);
        s.insert(k("pin"), 5, applied(5.0), pinned, t0, |_| {});
        for i in 0..20_000u64 {
            let id = format!("id-{i}");
            s.insert(k(&id), i, applied(i as f64), churn, t0, |_| {});
            assert!(s.len() <= 64);
            assert!(s.slab.len() <= 64, "the slab never outgrows entries_max");
            if i >= 62 {
                let old = format!("id-{}", i - 62);
                assert_eq!(
                    s.lookup(k(&old), i - 62, t0, |_| {}),
                    Lookup::Hit(applied((i - 62) as f64)),
                    "{old}"
                );
            }
        }
        assert_eq!(s.lookup(k("pin"), 5, t0, |_| {}), Lookup::Hit(applied(5.0)));
        assert_eq!(s.index.len(), 64);
        assert_eq!(s.held_by(churn), 63);
        // The TTL still expires the pinned record first.
        s.expire(t0 + Duration::from_secs(60), |_| {});
        assert!(s.is_empty());
        assert_eq!(s.held_by(pinned), 0);
    }

    #[test]
    fn restored_records_are_exempt_from_the_client_bound_and_give_way_first() {
        let t0 = Instant::now();
        let mut s = per_client(4, 1);
        for seq in 0..3u64 {
            let id = format!("old-{seq}");
            s.restore(seq, k(&id), 0, applied(0.0), OwnerKey::RESTORED, t0, |_| {})
                .unwrap();
        }
        assert_eq!(s.held_by(OwnerKey::RESTORED), 3);
        s.insert(k("a"), 0, applied(0.0), A, t0, |_| {});
        // Full: the restored records, the most, give way to a new client.
        s.insert(k("b"), 0, applied(0.0), OwnerKey(2), t0, |_| {});
        assert_eq!((s.held_by(OwnerKey::RESTORED), s.len()), (2, 4));
        assert_eq!(s.lookup(k("old-0"), 0, t0, |_| {}), Lookup::Miss);
    }

    #[test]
    fn an_owners_records_leave_in_its_order_while_others_stay_interleaved() {
        // Two clients' records interleaved in commit order; the heavy one
        // gives way record after record from the middle of the global
        // order, always its own oldest, and the other keeps all of its.
        let t0 = Instant::now();
        let (heavy, light) = (OwnerKey(1), OwnerKey(2));
        let mut s = per_client(8, 8);
        // Commit order (and sequence numbers): h0 l0 h1 h2 h3 h4 h5 h6.
        for (id, owner) in [
            ("h0", heavy),
            ("l0", light),
            ("h1", heavy),
            ("h2", heavy),
            ("h3", heavy),
            ("h4", heavy),
            ("h5", heavy),
            ("h6", heavy),
        ] {
            s.insert(k(id), 0, applied(0.0), owner, t0, |_| {});
        }
        let mut evicted = Vec::new();
        for i in 0..4 {
            let id = format!("n{i}");
            s.insert(k(&id), 0, applied(0.0), light, t0, |e| {
                evicted.push((e.seq, e.reason))
            });
        }
        // h0, h1, h2 went (seq 0, 2, 3): heavy held 7, 6, 5 against
        // light's 1, 2, 3; then light, as heavy as heavy (4 each), gave its
        // own oldest, l0 (seq 1), out of commit order.
        let capacity = EvictReason::Capacity;
        assert_eq!(
            evicted,
            [(0, capacity), (2, capacity), (3, capacity), (1, capacity)]
        );
        assert_eq!((s.held_by(heavy), s.held_by(light)), (4, 4));
        assert_eq!(s.front_seq(), 4, "h3 is now the oldest of all");
        for id in ["h3", "h4", "h5", "h6", "n0", "n1", "n2", "n3"] {
            assert_eq!(
                s.lookup(k(id), 0, t0, |_| {}),
                Lookup::Hit(applied(0.0)),
                "{id}"
            );
        }
        for id in ["h0", "h1", "h2", "l0"] {
            assert_eq!(s.lookup(k(id), 0, t0, |_| {}), Lookup::Miss, "{id}");
        }
        // The TTL then takes what is left in commit order, across owners.
        let mut ev = Vec::new();
        s.expire(t0 + Duration::from_secs(60), |e| ev.push(e.seq));
        assert_eq!(ev, [4, 5, 6, 7, 8, 9, 10, 11]);
        assert!(s.is_empty());
        assert_eq!(s.stats().evictions_early, 4);
    }

    #[test]
    fn ttl_expiry_and_per_client_eviction_interleave() {
        // Records of one client expire by TTL while it is also at its own
        // bound: the TTL goes first (no early eviction needed), and what
        // the bound evicts afterwards is the oldest still retained.
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let (a, b) = (OwnerKey(1), OwnerKey(2));
        let mut s = DedupStore::new(&DedupConfig {
            entries_max: 100,
            entries_per_client_max: Some(3),
            ttl_ms: 100,
            ..DedupConfig::default()
        });
        let mut ev = Vec::new();
        s.insert(k("a"), 0, applied(0.0), a, t0, log(&mut ev));
        s.insert(k("b"), 0, applied(0.0), b, t0 + ms(10), log(&mut ev));
        s.insert(k("c"), 0, applied(0.0), a, t0 + ms(20), log(&mut ev));
        s.insert(k("d"), 0, applied(0.0), a, t0 + ms(30), log(&mut ev));
        // a holds 3 (a, c, d): its next evicts its own oldest, early.
        s.insert(k("e"), 0, applied(0.0), a, t0 + ms(40), log(&mut ev));
        assert_eq!(ev, ["a:capacity"]);
        // At 110 ms b (committed at 10) expires; a holds c, d, e, still at
        // its bound: c goes early.
        s.insert(k("f"), 0, applied(0.0), a, t0 + ms(110), log(&mut ev));
        assert_eq!(ev, ["a:capacity", "b:ttl", "c:capacity"]);
        // At 135 ms d (30) expires, leaving a with e, f: room for g.
        s.insert(k("g"), 0, applied(0.0), a, t0 + ms(135), log(&mut ev));
        assert_eq!(ev, ["a:capacity", "b:ttl", "c:capacity", "d:ttl"]);
        assert_eq!((s.held_by(a), s.held_by(b), s.front_seq()), (3, 0, 4));
        assert_eq!(s.stats().evictions_early, 2);
        // And the TTL keeps its order after the early evictions.
        s.expire(t0 + ms(210), log(&mut ev));
        assert_eq!(&ev[4..], ["e:ttl", "f:ttl"]);
        assert_eq!(
            s.lookup(k("g"), 0, t0 + ms(210), |_| {}),
            Lookup::Hit(applied(0.0))
        );
        assert_eq!(s.front_seq(), 6);
    }

    #[test]
    fn a_record_older_than_the_sequence_horizon_is_evicted_early() {
        // 2³² numbers after a record, 32 bits no longer name it: reached
        // here through a restore's gap (no test inserts 2³² records).
        let t0 = Instant::now();
        let mut s = store(10, 60_000);
        let mut ev = Vec::new();
        s.restore(7, k("a"), 0, applied(1.0), A, t0, log(&mut ev))
            .unwrap();
        s.restore(8, k("b"), 0, applied(2.0), OwnerKey(2), t0, log(&mut ev))
            .unwrap();
        // 7 + 2³² - 1: both still within the horizon.
        s.restore(
            SEQ_HORIZON + 6,
            k("c"),
            0,
            applied(3.0),
            A,
            t0,
            log(&mut ev),
        )
        .unwrap();
        assert!(ev.is_empty());
        assert_eq!(s.front_seq(), 7);
        s.restore(
            SEQ_HORIZON + 7,
            k("d"),
            0,
            applied(4.0),
            A,
            t0,
            log(&mut ev),
        )
        .unwrap();
        assert_eq!(ev, ["a:capacity"]);
        assert_eq!(s.front_seq(), 8);
        // The survivors' numbers are still exact, past 2³².
        let mut seqs = Vec::new();
        s.expire(t0 + Duration::from_secs(60), |e| seqs.push(e.seq));
        assert_eq!(seqs, [8, SEQ_HORIZON + 6, SEQ_HORIZON + 7]);
        assert_eq!(
            s.insert(k("e"), 0, applied(5.0), A, t0, |_| {}),
            SEQ_HORIZON + 8
        );
    }

    /// A tiny deterministic generator for the model test.
    struct SplitMix(u64);

    impl SplitMix {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = self.0;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (x ^ (x >> 31)) % n
        }
    }

    /// The documented behaviour, written the plain way: every record in
    /// one list in commit order, each with its owner, searched linearly.
    struct Model {
        entries_max: usize,
        per_client_max: usize,
        ttl: Duration,
        /// (digest, fingerprint, outcome, owner, committed, seq).
        records: Vec<(IdDigest, u64, StoredOutcome, OwnerKey, Instant, u64)>,
        evictions: u64,
        early: u64,
    }

    impl Model {
        fn held(&self, owner: OwnerKey) -> usize {
            self.records.iter().filter(|r| r.3 == owner).count()
        }

        /// Checks that the store's eviction `e`, reported while `inserting`
        /// (or `None`: while expiring) commits at `now`, is one the rules
        /// allow at this point, and applies it.
        fn evicted(&mut self, e: Evicted, inserting: Option<OwnerKey>, now: Instant) {
            let at = self
                .records
                .iter()
                .position(|r| r.0 == e.key)
                .unwrap_or_else(|| panic!("{e:?} evicts a record the model does not hold"));
            let (_, _, _, owner, committed, seq) = self.records[at];
            assert_eq!(e.seq, seq, "{e:?}");
            match e.reason {
                EvictReason::Ttl => {
                    assert_eq!(at, 0, "{e:?}: the TTL takes the oldest of all");
                    assert!(
                        now.saturating_duration_since(committed) >= self.ttl,
                        "{e:?}"
                    );
                }
                EvictReason::Capacity => {
                    let front = &self.records[0];
                    assert!(
                        now.saturating_duration_since(front.4) < self.ttl,
                        "{e:?}: expiry comes before making room"
                    );
                    let oldest_of_owner = self.records.iter().position(|r| r.3 == owner);
                    assert_eq!(oldest_of_owner, Some(at), "{e:?}: an owner's oldest goes");
                    let inserting = inserting.expect("only inserts make room");
                    let held = self.held(owner);
                    let own_bound = owner == inserting
                        && owner != OwnerKey::RESTORED
                        && held >= self.per_client_max;
                    let most = self
                        .records
                        .iter()
                        .map(|r| self.held(r.3))
                        .max()
                        .unwrap_or(0);
                    let full = self.records.len() >= self.entries_max
                        && held == most
                        && (owner == inserting || self.held(inserting) < most);
                    assert!(own_bound || full, "{e:?} was not needed");
                    self.early += 1;
                }
            }
            self.evictions += 1;
            self.records.remove(at);
        }
    }

    #[test]
    fn the_store_agrees_with_a_plain_model_under_random_traffic() {
        // Random inserts, lookups and clock steps from a handful of
        // clients (restored records too), on small bounds so every rule
        // fires often; every eviction is checked against the rules and
        // every answer against the model.
        let (mut ttl_total, mut early_total) = (0, 0);
        for seed in 0..40u64 {
            let mut rng = SplitMix(seed);
            let entries_max = 1 + rng.below(24) as usize;
            let per_client_max = 1 + rng.below(entries_max as u64 + 2) as usize;
            let ttl = Duration::from_millis(20 + rng.below(200));
            let mut s = DedupStore::new(&DedupConfig {
                entries_max,
                entries_per_client_max: Some(per_client_max),
                ttl_ms: ttl.as_millis() as u64,
                ..DedupConfig::default()
            });
            let per_client_max = per_client_max.min(entries_max);
            let model = std::cell::RefCell::new(Model {
                entries_max,
                per_client_max,
                ttl,
                records: Vec::new(),
                evictions: 0,
                early: 0,
            });
            let owners = [
                OwnerKey::RESTORED,
                OwnerKey(1),
                OwnerKey(2),
                OwnerKey(3),
                OwnerKey(4),
            ];
            let mut now = Instant::now();
            let mut ids = 0u64;
            for step in 0..600 {
                now += Duration::from_millis(rng.below(12));
                let what = rng.below(10);
                if what < 6 {
                    // Insert a fresh ID (or, rarely, a retained one).
                    let owner = owners[rng.below(owners.len() as u64) as usize];
                    let reuse = what == 0 && !model.borrow().records.is_empty();
                    let key = if reuse {
                        let m = model.borrow();
                        m.records[rng.below(m.records.len() as u64) as usize].0
                    } else {
                        ids += 1;
                        k(&format!("s{seed}-{ids}"))
                    };
                    let outcome = match rng.below(3) {
                        0 => applied(step as f64),
                        1 => StoredOutcome::RegisterOverflow {
                            current: -(step as f64),
                        },
                        _ => StoredOutcome::TooManyRegisters,
                    };
                    let fp = rng.below(3);
                    let seq = s.insert(key, fp, outcome, owner, now, |e| {
                        model.borrow_mut().evicted(e, Some(owner), now)
                    });
                    let mut m = model.borrow_mut();
                    if let Some(r) = m.records.iter().find(|r| r.0 == key) {
                        assert_eq!(seq, r.5, "seed {seed} step {step}: the first is kept");
                    } else {
                        assert!(!reuse || m.records.iter().all(|r| r.0 != key));
                        m.records.push((key, fp, outcome, owner, now, seq));
                        assert!(m.records.len() <= entries_max);
                        if owner != OwnerKey::RESTORED {
                            assert!(m.held(owner) <= per_client_max);
                        }
                    }
                } else if what < 9 {
                    // Look up a retained ID or a never-seen one.
                    let (key, fp) = {
                        let m = model.borrow();
                        match m.records.len() as u64 {
                            0 => (k("never"), 0),
                            n => {
                                let r = m.records[rng.below(n) as usize];
                                (r.0, rng.below(3))
                            }
                        }
                    };
                    let got = s.lookup(key, fp, now, |e| model.borrow_mut().evicted(e, None, now));
                    let m = model.borrow();
                    let want = match m.records.iter().find(|r| r.0 == key) {
                        None => Lookup::Miss,
                        Some(r) if r.1 == fp => Lookup::Hit(r.2),
                        Some(r) => Lookup::Mismatch {
                            first_fingerprint: r.1,
                        },
                    };
                    assert_eq!(got, want, "seed {seed} step {step}");
                } else {
                    s.expire(now, |e| model.borrow_mut().evicted(e, None, now));
                }
                let m = model.borrow();
                // Nothing expired is left behind by the operation.
                if let Some(front) = m.records.first() {
                    assert!(
                        now.saturating_duration_since(front.4) < ttl,
                        "seed {seed} step {step}"
                    );
                }
                assert_eq!(s.len(), m.records.len(), "seed {seed} step {step}");
                assert_eq!(
                    s.front_seq(),
                    m.records.first().map_or(s.next_seq(), |r| r.5)
                );
                for owner in owners {
                    assert_eq!(s.held_by(owner), m.held(owner), "seed {seed} step {step}");
                }
                assert_eq!(
                    (s.stats().evictions, s.stats().evictions_early),
                    (m.evictions, m.early)
                );
                // Every indexed record is some owner's, and every slot of
                // the slab is indexed or free.
                let held: usize = s.owners.iter().flatten().map(|o| o.held).sum();
                assert_eq!(held, s.len(), "seed {seed} step {step}");
                let mut free = 0;
                let mut slot = s.free_slot;
                while slot != NIL {
                    free += 1;
                    slot = s.slab[slot as usize].next;
                }
                assert_eq!(s.len() + free, s.slab.len(), "seed {seed} step {step}");
                assert!(s.slab.len() <= entries_max);
            }
            let m = model.borrow();
            (ttl_total, early_total) = (ttl_total + m.evictions - m.early, early_total + m.early);
        }
        // Both kinds of eviction happened, many times.
        assert!(
            ttl_total > 1_000 && early_total > 1_000,
            "{ttl_total} {early_total}"
        );
    }

    fn model_with(owners: &[OwnerKey], t0: Instant) -> Model {
        Model {
            entries_max: 3,
            per_client_max: 3,
            ttl: Duration::from_millis(100),
            records: owners
                .iter()
                .enumerate()
                .map(|(i, &o)| (k(&i.to_string()), 0, applied(0.0), o, t0, i as u64))
                .collect(),
            evictions: 0,
            early: 0,
        }
    }

    #[test]
    #[should_panic(expected = "was not needed")]
    fn negative_control_the_model_refuses_an_eviction_from_a_lighter_client() {
        // Full (3 of 3): A holds 2, B holds 1, B inserting. Taking B's
        // record would break the rule; the checker must say so.
        let t0 = Instant::now();
        let (a, b) = (OwnerKey(1), OwnerKey(2));
        let mut m = model_with(&[a, b, a], t0);
        let e = Evicted {
            key: k("1"),
            seq: 1,
            reason: EvictReason::Capacity,
        };
        m.evicted(e, Some(b), t0);
    }

    #[test]
    #[should_panic(expected = "the TTL takes the oldest of all")]
    fn negative_control_the_model_refuses_expiry_out_of_commit_order() {
        let t0 = Instant::now();
        let mut m = model_with(&[A, A, A], t0);
        let e = Evicted {
            key: k("1"),
            seq: 1,
            reason: EvictReason::Ttl,
        };
        m.evicted(e, None, t0 + Duration::from_secs(1));
    }
}
