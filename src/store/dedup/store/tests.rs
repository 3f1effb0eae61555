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
