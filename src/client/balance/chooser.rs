//! The balancer's choice, as a plain struct: given the endpoints' costs,
//! which of them are available, and which this call already tried, pick
//! one. The RNG is passed in at construction, so a seed fixes every pick.
//!
//! **Power of two choices** (Mitzenmacher; tower's `balance::p2c`,
//! Finagle, Linkerd): draw two distinct endpoints at random, take the
//! cheaper. Comparing two, not all, keeps a burst of callers from all
//! piling onto the one endpoint that looked best a moment ago, and costs
//! O(1) comparisons; the cost is peak-EWMA latency × calls in flight
//! ([`super::ewma`]), so a slow or busy replica loses most comparisons.
//!
//! **Round robin** is here as a baseline for benchmarks and the
//! simulation's negative controls, not as advice: it sends a slow replica
//! its full share.
//!
//! Either way the pool is the available endpoints this call has not tried
//! yet; when it has tried them all, every available one (a retry to the
//! same replica beats failing the call). Unavailable endpoints (open
//! breaker, NOT_SERVING for the method) are never picked.

use rand::Rng;

/// How to choose among available endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Balancing {
    /// Power of two choices over peak-EWMA latency × calls in flight.
    #[default]
    #[value(name = "p2c")]
    PeakEwmaP2c,
    /// Each endpoint in turn (a baseline: blind to latency).
    RoundRobin,
}

impl Balancing {
    /// The name the CLI uses: `p2c`, `round-robin`.
    pub fn name(self) -> &'static str {
        match self {
            Self::PeakEwmaP2c => "p2c",
            Self::RoundRobin => "round-robin",
        }
    }
}

/// One endpoint as the chooser sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// May be sent to (breaker admits, health serves the method).
    pub available: bool,
    /// An earlier attempt of this call went there.
    pub tried: bool,
    /// Its cost (lower is better); only compared.
    pub cost: f64,
}

/// Picks endpoints.
#[derive(Debug, Clone)]
pub struct Chooser<R> {
    policy: Balancing,
    rng: R,
    /// Round robin's position: the index after the last pick.
    cursor: usize,
}

impl<R: Rng> Chooser<R> {
    /// A chooser for `policy` drawing from `rng`.
    pub fn new(policy: Balancing, rng: R) -> Self {
        Self {
            policy,
            rng,
            cursor: 0,
        }
    }

    /// The index in `candidates` to send to, or `None` when none is
    /// available.
    ///
    /// ```
    /// use abacus::client::balance::chooser::{Balancing, Candidate, Chooser};
    /// use rand::SeedableRng;
    /// let mut chooser = Chooser::new(Balancing::PeakEwmaP2c, rand_chacha::ChaCha8Rng::seed_from_u64(1));
    /// let c = |cost, available, tried| Candidate { cost, available, tried };
    /// // Of two, p2c always takes the cheaper.
    /// assert_eq!(chooser.choose(&[c(5.0, true, false), c(1.0, true, false)]), Some(1));
    /// // A retry avoids the endpoint that failed, even a cheaper one...
    /// assert_eq!(chooser.choose(&[c(5.0, true, false), c(1.0, true, true)]), Some(0));
    /// // ...and never goes to one that is unavailable.
    /// assert_eq!(chooser.choose(&[c(5.0, false, false), c(1.0, true, true)]), Some(1));
    /// assert_eq!(chooser.choose(&[c(5.0, false, false)]), None);
    /// ```
    pub fn choose(&mut self, candidates: &[Candidate]) -> Option<usize> {
        let fresh = |c: &Candidate| c.available && !c.tried;
        let any = |c: &Candidate| c.available;
        let n_fresh = candidates.iter().filter(|c| fresh(c)).count();
        if n_fresh > 0 {
            Some(self.choose_among(candidates, n_fresh, fresh))
        } else {
            let n_any = candidates.iter().filter(|c| any(c)).count();
            (n_any > 0).then(|| self.choose_among(candidates, n_any, any))
        }
    }

    /// Picks among the `n` (≥ 1) candidates that pass `keep`.
    fn choose_among(
        &mut self,
        candidates: &[Candidate],
        n: usize,
        keep: impl Fn(&Candidate) -> bool,
    ) -> usize {
        // The k-th candidate that passes `keep`, as an index into all.
        let nth = |k: usize| {
            candidates
                .iter()
                .enumerate()
                .filter(|(_, c)| keep(c))
                .nth(k)
                .map_or(0, |(i, _)| i)
        };
        match self.policy {
            Balancing::RoundRobin => {
                // The first kept candidate at or after the cursor, wrapping.
                let len = candidates.len();
                let pick = (0..len)
                    .map(|step| (self.cursor + step) % len)
                    .find(|&i| keep(&candidates[i]))
                    .unwrap_or_else(|| nth(0));
                self.cursor = pick + 1;
                pick
            }
            Balancing::PeakEwmaP2c if n == 1 => nth(0),
            Balancing::PeakEwmaP2c => {
                // Two distinct draws (Floyd's method for k = 2).
                let a = self.rng.random_range(0..n);
                let mut b = self.rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (nth(a), nth(b));
                if candidates[b].cost < candidates[a].cost {
                    b
                } else {
                    a
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn c(cost: f64) -> Candidate {
        Candidate {
            available: true,
            tried: false,
            cost,
        }
    }

    fn p2c(seed: u64) -> Chooser<ChaCha8Rng> {
        Chooser::new(Balancing::PeakEwmaP2c, ChaCha8Rng::seed_from_u64(seed))
    }

    /// Share of 30,000 picks per index.
    fn shares(chooser: &mut Chooser<ChaCha8Rng>, candidates: &[Candidate]) -> Vec<f64> {
        let mut counts = vec![0u32; candidates.len()];
        for _ in 0..30_000 {
            counts[chooser.choose(candidates).expect("available")] += 1;
        }
        counts.iter().map(|&n| f64::from(n) / 30_000.0).collect()
    }

    #[test]
    fn p2c_never_picks_the_most_expensive_of_three() {
        // With three endpoints, the dearest one wins no comparison.
        let s = shares(&mut p2c(7), &[c(1.0), c(100.0), c(1.0)]);
        assert_eq!(s[1], 0.0);
        assert!(
            (s[0] - 0.5).abs() < 0.02 && (s[2] - 0.5).abs() < 0.02,
            "{s:?}"
        );
    }

    #[test]
    fn p2c_favours_cheaper_endpoints_without_starving_the_middle() {
        // Costs 1 < 2 < 3 < 4: the cheapest wins every pair it is in
        // (3 of 6 pairs), the second 2 of 6, the third 1 of 6.
        let s = shares(&mut p2c(3), &[c(1.0), c(2.0), c(3.0), c(4.0)]);
        let expect = [0.5, 1.0 / 3.0, 1.0 / 6.0, 0.0];
        for (got, want) in s.iter().zip(expect) {
            assert!((got - want).abs() < 0.02, "{s:?}");
        }
    }

    #[test]
    fn equal_costs_spread_evenly() {
        let s = shares(&mut p2c(11), &[c(0.0), c(0.0), c(0.0)]);
        for share in s {
            assert!((share - 1.0 / 3.0).abs() < 0.02, "{share}");
        }
    }

    #[test]
    fn the_same_seed_makes_the_same_picks() {
        let candidates = [c(1.0), c(1.0), c(1.0), c(1.0)];
        let picks = |seed| {
            let mut ch = p2c(seed);
            (0..50)
                .map(|_| ch.choose(&candidates).expect("available"))
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(5), picks(5));
        assert_ne!(picks(5), picks(6));
    }

    #[test]
    fn untried_endpoints_come_first_then_any_available() {
        let mut ch = p2c(1);
        let tried = |cost| Candidate {
            tried: true,
            ..c(cost)
        };
        let down = Candidate {
            available: false,
            ..c(0.0)
        };
        for _ in 0..100 {
            assert_eq!(ch.choose(&[tried(0.0), down, c(50.0), tried(0.0)]), Some(2));
        }
        // Everything tried: the cheaper of the available ones.
        let s = shares(&mut ch, &[tried(5.0), down, tried(1.0)]);
        assert_eq!(s, [0.0, 0.0, 1.0]);
        assert_eq!(ch.choose(&[down, down]), None);
        assert_eq!(ch.choose(&[]), None);
    }

    #[test]
    fn round_robin_takes_turns_over_the_available_ones() {
        let mut ch = Chooser::new(Balancing::RoundRobin, ChaCha8Rng::seed_from_u64(0));
        let down = Candidate {
            available: false,
            ..c(0.0)
        };
        let set = [c(9.0), down, c(1.0), c(5.0)];
        let picks: Vec<_> = (0..6).map(|_| ch.choose(&set).expect("some")).collect();
        assert_eq!(picks, [0, 2, 3, 0, 2, 3]);
        // Blind to cost: the slow one gets its share.
        let s = shares(&mut ch, &[c(1.0), c(100.0), c(1.0)]);
        assert!((s[1] - 1.0 / 3.0).abs() < 0.01, "{s:?}");
    }
}
