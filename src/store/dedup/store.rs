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
mod tests;
