//! The store model is trustworthy: the ledgers' conformance suite — the
//! seeded sequences of operations every backend (memory, redb, real
//! PostgreSQL) must answer identically — run against the model *over the
//! simulated network* (a replica's `RemoteLedger` to the store host)
//! observes exactly what the in-memory ledger observes. And the comparison
//! can fail: a store model without dedup is caught.
//!
//! `CONFORMANCE_SEEDS=N` runs more sequences (as `tests/store` does);
//! `CONFORMANCE_SEED=S` replays one.

use abacus::store::conformance::{self, Seen};
use abacus_sims::world::store::conformance::{observe, reference};

/// Operations per sequence, as in `tests/store`.
const LEN: usize = 80;

fn seeds() -> Vec<u64> {
    let number = |var: &str| {
        let text = std::env::var(var).ok()?;
        Some(
            text.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{var}={text:?} is not a whole number")),
        )
    };
    match number("CONFORMANCE_SEED") {
        Some(seed) => vec![seed],
        None => (0..number("CONFORMANCE_SEEDS").unwrap_or(6)).collect(),
    }
}

#[test]
fn the_store_model_over_the_network_observes_what_memory_observes() {
    let mut reached = [false; 2];
    for seed in seeds() {
        let ops = conformance::generate(seed, LEN);
        let expected = reference(&ops, conformance::limits()).expect("reference runs");
        let got = observe(&ops, conformance::limits(), seed)
            .unwrap_or_else(|e| panic!("seed {seed}: the simulation failed: {e}"));
        // The comparison is exact only while both clocks agree on which
        // side of the TTL every interval falls (see the module doc of
        // `world::store::conformance`).
        if let Err(e) = got.ttl_agrees(conformance::limits().ttl()) {
            panic!("seed {seed}: network time could decide an expiry: {e}");
        }
        eprintln!(
            "seed {seed}: the model ran ahead by up to {:?}",
            got.drift_max()
        );
        assert_eq!(expected.len(), got.seen.len());
        if let Some(d) = conformance::compare(&ops, &expected, &got.seen) {
            panic!(
                "the store model differs from memory, seed {seed}, {d}\n\
                 replay: CONFORMANCE_SEED={seed} cargo test --test sims model -- --nocapture"
            );
        }
        for seen in &got.seen {
            match seen {
                Seen::Overlap { waited: true, .. } => reached[0] = true,
                Seen::Accumulated(Ok(a)) if a.replayed => reached[1] = true,
                _ => {}
            }
        }
    }
    if seeds().len() > 1 {
        assert_eq!(
            reached, [true; 2],
            "the sequences must reach a duplicate waiting for a claim and a replay"
        );
    }
}

/// Negative control: a store that does not deduplicate (its model with
/// dedup off) must be told apart from memory by the same comparison.
#[test]
fn the_comparison_catches_a_store_model_without_dedup() {
    let ops = conformance::generate(3, LEN);
    let expected = reference(&ops, conformance::limits()).expect("reference runs");
    let broken = abacus::server::DedupConfig {
        enabled: false,
        ..conformance::limits()
    };
    let got = observe(&ops, broken, 3).expect("the simulation runs");
    let d = conformance::compare(&ops, &expected, &got.seen).expect("dedup off must differ");
    eprintln!("caught as expected: {d}");
}
