//! The dedup store proper: a bounded, synchronous map from a request's
//! [`IdDigest`] to the outcome of its first execution. No I/O, no clock
//! (every call takes `now`), no locking: [`crate::store::MemoryLedger`] owns
//! one behind its lock.
//!
//! # Shape
//! Records live in a `VecDeque` ring in commit order, so the oldest is
//! always at the front: expiry by TTL is "pop the front", O(1), and the
//! store never iterates a hash map. An index (`hashbrown::HashTable<u32>`)
//! maps a digest to the low 32 bits of its record's *slot number*; slot `n`
//! sits at position `n - base` (computed in 32 bits: the store never holds
//! 2³² slots).
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
//! A record evicted out of commit order leaves a dead slot in the ring
//! until the front passes it; when dead slots outnumber live records (and
//! [`COMPACT_MIN`]), the ring is compacted, O(n) once per as many
//! evictions, so memory stays bounded by `entries_max`. Sequence numbers
//! (the durable file's keys) then have gaps: each record keeps its own.
//!
//! A record is 64 bytes whatever the ID's length (a 16-byte digest, the
//! 8-byte fingerprint, the commit instant as 8 bytes of nanoseconds since
//! the store began, the 16-byte outcome, the sequence number, the owner's
//! index), an index entry 5 (4 + a control byte) and an owner's list entry
//! 4, with spare capacity: 79 bytes per record in all, measured by
//! `benches/dedup.rs` for 36- and 128-byte IDs alike.
//!
//! The index hashes a digest by taking 64 of its bits: a keyed digest is
//! already uniformly distributed, and peers cannot aim at buckets without
//! the key. Bucket placement decides nothing else: lookups give the same
//! answers whatever the key, and nothing ever iterates the index, so
//! behaviour and output stay deterministic.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    fmt,
    time::Duration,
};

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

/// Marks a slot whose record was evicted out of commit order (see the
/// module documentation): it stays in the ring until the front passes it
/// or the ring is compacted.
const DEAD: u32 = u32::MAX;

#[derive(Debug)]
struct Record {
    key: IdDigest,
    fingerprint: u64,
    outcome: StoredOutcome,
    /// Nanoseconds from the store's `epoch` to the commit (negative for an
    /// instant before it): 8 bytes where an `Instant` takes 16, ±292 years.
    committed_ns: i64,
    /// Its sequence number (the durable file's key).
    seq: u64,
    /// Index of its owner in `owners`, or [`DEAD`].
    owner: u32,
}

/// One client's records, oldest first, as slot numbers (low 32 bits, like
/// the index).
#[derive(Debug)]
struct Owner {
    key: OwnerKey,
    slots: VecDeque<u32>,
}

/// Bounded request-ID → first-outcome store. See the module doc.
pub struct DedupStore {
    entries_max: usize,
    per_client_max: usize,
    ttl: Duration,
    /// In commit order, dead slots included; `records[i]` is slot
    /// `base + i`.
    records: VecDeque<Record>,
    /// Slot number of `records[0]`.
    base: u64,
    /// Records retained (not dead).
    live: usize,
    /// Low 32 bits of each live record's slot number, hashed by its digest.
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
            records: VecDeque::new(),
            base: 0,
            live: 0,
            index: HashTable::new(),
            owners: Vec::new(),
            free: Vec::new(),
            by_owner: HashMap::new(),
            weights: BTreeSet::new(),
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
        self.live
    }

    /// True when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Sequence number of the oldest retained record: every record below it
    /// has been evicted. Durable mode deletes those from disk (and, one by
    /// one, the records above it evicted out of order: see
    /// [`Evicted::seq`]).
    pub fn front_seq(&self) -> u64 {
        self.records.front().map_or(self.next_seq, |r| r.seq)
    }

    /// Sequence number the next insert will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Records retained for `owner`.
    pub fn held_by(&self, owner: OwnerKey) -> usize {
        self.by_owner
            .get(&owner)
            .and_then(|&o| self.owners.get(o as usize))
            .and_then(Option::as_ref)
            .map_or(0, |o| o.slots.len())
    }

    /// Counters.
    pub fn stats(&self) -> DedupStats {
        DedupStats {
            entries: self.live as u64,
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

    /// Where slot `slot32` (low bits) sits in the ring.
    fn offset(base: u64, slot32: u32) -> usize {
        slot32.wrapping_sub(base as u32) as usize
    }

    fn position(&self, key: IdDigest) -> Option<usize> {
        let (records, base) = (&self.records, self.base);
        // Every indexed record is retained (evicted ones leave the index in
        // the same step), so the offset is in range; `get` keeps a broken
        // invariant from panicking.
        self.index
            .find(Self::hash(key), |&slot| {
                records
                    .get(Self::offset(base, slot))
                    .is_some_and(|r| r.key == key && r.owner != DEAD)
            })
            .map(|&slot| Self::offset(base, slot))
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
        if let Some(pos) = self.position(key) {
            return self.records[pos].seq;
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
        let held = |s: &Self| s.by_owner.get(&owner).map_or(0, |&o| s.held(o));
        if owner != OwnerKey::RESTORED && held(self) >= self.per_client_max {
            let o = self.owner_index(owner);
            self.evict_oldest_of(o, &mut on_evict);
        }
        while self.live >= self.entries_max {
            // The client holding the most gives a record up; the one
            // inserting does on a tie, so it never takes a record from a
            // client holding as many as itself.
            let own = self.by_owner.get(&owner).copied();
            let victim = match (self.weights.last(), own) {
                (Some(&(most, h)), Some(o)) if most > self.held(o) => h,
                (_, Some(o)) => o,
                (Some(&(_, h)), None) => h,
                (None, None) => break,
            };
            if !self.evict_oldest_of(victim, &mut on_evict) {
                // Nothing to take from (cannot happen while live > 0).
                break;
            }
        }
        // Looked up only now: making room may have emptied, and so freed,
        // the owner's entry.
        let o = self.owner_index(owner);
        self.next_seq = seq + 1;
        let slot = self.base + self.records.len() as u64;
        let hash = Self::hash(key);
        self.records.push_back(Record {
            key,
            fingerprint,
            outcome,
            committed_ns: self.ns(now),
            seq,
            owner: o,
        });
        self.live += 1;
        self.reweigh(o, |slots| slots.push_back(slot as u32));
        let (records, base) = (&self.records, self.base);
        // The rehash closure recomputes a stored entry's hash from its
        // record: the index keeps no hashes, to stay at 4 bytes per entry.
        self.index.insert_unique(hash, slot as u32, |&s| {
            records
                .get(Self::offset(base, s))
                .map_or(0, |r| Self::hash(r.key))
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
            let o = front.owner;
            self.reweigh(o, |slots| {
                slots.pop_front();
            });
            self.kill(0, EvictReason::Ttl, &mut on_evict);
        }
    }

    fn held(&self, o: u32) -> usize {
        self.owners
            .get(o as usize)
            .and_then(Option::as_ref)
            .map_or(0, |o| o.slots.len())
    }

    /// The index of `owner`'s entry, created if it holds nothing yet.
    fn owner_index(&mut self, owner: OwnerKey) -> u32 {
        if let Some(&o) = self.by_owner.get(&owner) {
            return o;
        }
        let entry = Owner {
            key: owner,
            slots: VecDeque::new(),
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

    /// Changes owner `o`'s slots with `change`, keeping `weights` in step;
    /// an owner left with nothing is forgotten.
    fn reweigh(&mut self, o: u32, change: impl FnOnce(&mut VecDeque<u32>)) {
        let Some(Some(owner)) = self.owners.get_mut(o as usize) else {
            return;
        };
        let before = owner.slots.len();
        change(&mut owner.slots);
        let after = owner.slots.len();
        let key = owner.key;
        if before != after {
            self.weights.remove(&(before, o));
            if after > 0 {
                self.weights.insert((after, o));
            }
        }
        if after == 0 {
            self.owners[o as usize] = None;
            self.free.push(o);
            self.by_owner.remove(&key);
        }
    }

    /// Evicts owner `o`'s oldest record (a capacity eviction, inside its
    /// TTL); false if it holds none.
    fn evict_oldest_of(&mut self, o: u32, on_evict: &mut impl FnMut(Evicted)) -> bool {
        let mut oldest = None;
        self.reweigh(o, |slots| oldest = slots.pop_front());
        let Some(slot) = oldest else {
            return false;
        };
        let pos = Self::offset(self.base, slot);
        if pos >= self.records.len() {
            return false;
        }
        self.evictions_early += 1;
        self.kill(pos, EvictReason::Capacity, on_evict);
        true
    }

    /// Evicts the live record at `pos` (its owner's slots are updated by
    /// the caller), then drops dead slots from the front, and compacts the
    /// ring when dead slots outnumber live ones.
    fn kill(&mut self, pos: usize, reason: EvictReason, on_evict: &mut impl FnMut(Evicted)) {
        let slot = self.base + pos as u64;
        let Some(record) = self.records.get_mut(pos) else {
            return;
        };
        record.owner = DEAD;
        let (key, seq) = (record.key, record.seq);
        if let Ok(entry) = self
            .index
            .find_entry(Self::hash(key), |&s| s == slot as u32)
        {
            entry.remove();
        }
        self.live -= 1;
        self.evictions += 1;
        on_evict(Evicted { key, seq, reason });
        while self.records.front().is_some_and(|r| r.owner == DEAD) {
            self.records.pop_front();
            self.base += 1;
        }
        let dead = self.records.len() - self.live;
        if dead > self.live.max(COMPACT_MIN) {
            self.compact();
        }
    }

    /// Drops every dead slot and renumbers: O(records), once per as many
    /// out-of-order evictions as records retained, so O(1) amortised.
    fn compact(&mut self) {
        self.records.retain(|r| r.owner != DEAD);
        self.base = 0;
        self.index.clear();
        for owner in self.owners.iter_mut().flatten() {
            owner.slots.clear();
        }
        for (slot, record) in self.records.iter().enumerate() {
            if let Some(Some(owner)) = self.owners.get_mut(record.owner as usize) {
                owner.slots.push_back(slot as u32);
            }
        }
        let records = &self.records;
        for (slot, record) in records.iter().enumerate() {
            self.index
                .insert_unique(Self::hash(record.key), slot as u32, |&s| {
                    records.get(s as usize).map_or(0, |r| Self::hash(r.key))
                });
        }
    }
}

/// Dead slots tolerated before compacting, whatever the store holds, so a
/// small store does not compact on every eviction.
const COMPACT_MIN: usize = 1024;

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
        // is still found (the index and the ring agree).
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
    fn out_of_order_evictions_compact_and_keep_every_retained_id_found() {
        // One long-lived record pins the front while another client churns
        // through many times the store's size: the ring compacts, and the
        // index, the ring and the owners' lists keep agreeing.
        let t0 = Instant::now();
        let (pinned, churn) = (OwnerKey(1), OwnerKey(2));
        let mut s = per_client(64, 64);
        s.insert(k("pin"), 5, applied(5.0), pinned, t0, |_| {});
        for i in 0..20_000u64 {
            let id = format!("id-{i}");
            s.insert(k(&id), i, applied(i as f64), churn, t0, |_| {});
            assert!(s.len() <= 64);
            assert!(
                s.records.len() <= 2 * 64 + COMPACT_MIN + 1,
                "dead slots are bounded"
            );
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
}
