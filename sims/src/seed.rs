//! Every random stream of a run comes from its one seed, through
//! [`derive_seed`].
//!
//! A run draws from several streams: turmoil's (message latency, link
//! failures, host order), the fault plan's, the server's fault RNG, each
//! client's (jitter, breaker, request IDs) and each workload's. Each gets
//! its own seed, derived from the run's seed and a label naming the stream,
//! so two streams never share a seed by accident (as `seed ^ CONSTANT` and
//! `seed * 31 + i` could, between neighbouring seeds), and adding a stream
//! leaves the others' draws unchanged.

/// The seed of the stream called `label` in the run of `seed`.
///
/// A pure function: the same `(seed, label)` always gives the same value,
/// on every platform, in every process.
///
/// ```
/// use abacus_sims::seed::derive_seed;
/// assert_eq!(derive_seed(17, "plan"), derive_seed(17, "plan"));
/// assert_ne!(derive_seed(17, "plan"), derive_seed(17, "network"));
/// assert_ne!(derive_seed(17, "plan"), derive_seed(18, "plan"));
/// ```
pub fn derive_seed(seed: u64, label: &str) -> u64 {
    // FNV-1a names the label; SplitMix64's finaliser spreads the seed, so
    // that seeds differing in one bit give unrelated streams. Mixing the
    // seed before combining keeps (seed, label) pairs from colliding
    // through a simple XOR of the two.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in label.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(mix(seed) ^ h)
}

/// The key of `host`'s request-ID digests in the run of `seed` (digests
/// appear in eviction events: a random key would make runs differ).
pub fn digest_key(seed: u64, host: &str) -> abacus::store::dedup::DigestKey {
    abacus::store::dedup::DigestKey([
        derive_seed(seed, &format!("digest-key-0-{host}")),
        derive_seed(seed, &format!("digest-key-1-{host}")),
    ])
}

/// SplitMix64's output function (Steele, Lea and Flood, 2014).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The streams of the first thousand seeds, under the labels a run
    /// uses, are all distinct: no two streams of any run, or of
    /// neighbouring runs, draw the same numbers.
    #[test]
    fn streams_do_not_collide() {
        let labels = [
            "network",
            "plan",
            "server-faults",
            "client-1",
            "client-2",
            "client-3",
            "workload-client-1",
            "workload-client-2",
            "hedge-ids-client-1",
            "store-faults",
            "replica-1-faults",
            "replica-2-faults",
            "route-client-1",
            "client-1/replica-1",
            "client-1/replica-2",
        ];
        let mut seen = BTreeSet::new();
        for seed in 0..1_000 {
            for label in labels {
                assert!(
                    seen.insert(derive_seed(seed, label)),
                    "{seed} {label} collides"
                );
            }
        }
    }

    /// Pinned values: a change here changes every run's streams (and so
    /// every snapshot and every swarm plan); make it on purpose.
    #[test]
    fn derivation_is_stable() {
        assert_eq!(derive_seed(0, ""), mix(mix(0) ^ 0xcbf2_9ce4_8422_2325));
        assert_eq!(mix(0), 0xe220_a839_7b1d_cdaf);
    }
}
