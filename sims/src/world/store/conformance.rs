//! The conformance suite of the ledgers (`abacus::store::conformance`),
//! run against the store model *over the simulated network*: a
//! [`RemoteLedger`] on one host, the store host on another. Compared with
//! the in-memory ledger (the suite's reference, which PostgreSQL and redb
//! also match), it shows that the protocol and the replica's ledger keep
//! the model's semantics — what makes the model trustworthy.
//!
//! # Time
//! The suite moves the ledgers' retention clock with `Advance` steps
//! (sums of 400 and 1100 ms against a 1000 ms TTL, so no record's age is
//! ever near the TTL). The reference runs on tokio's paused clock, where
//! the other steps take no time; over the network each step takes a few
//! simulated milliseconds. The model's clock therefore advances *to* the
//! reference's time — the sum of the advances so far — rather than by each
//! step, so the two clocks agree after every `Advance` and the model's runs
//! ahead in between by the network time spent since. [`Observed`] records
//! both clocks around every step, and [`Observed::ttl_agrees`] checks the
//! condition under which the comparison is exact: for every two steps, the
//! time between them is on the same side of the TTL on both clocks, so
//! every expiry decision the model makes is the reference's.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use abacus::{
    server::DedupConfig,
    store::{
        BoxFuture,
        conformance::{self, Clock, Op, Seen},
    },
    trace::EventSink,
};
use tokio::time::Instant;

use crate::{
    history::History,
    seed::{derive_seed, digest_key},
    world::store::{
        HOST, MemoryLedger, RemoteConfig, RemoteLedger, Store, StoreConfig, StoreModel,
    },
};

/// The simulation's step.
const TICK: Duration = Duration::from_millis(1);

/// One step of the sequence, on both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The reference's time during the step (it does not move within a
    /// step, but for an `Advance`).
    pub reference: Duration,
    /// The model's time when the step began.
    pub start: Duration,
    /// The model's time when it ended.
    pub end: Duration,
    /// True for an `Advance`.
    pub advance: bool,
}

/// What the model observed, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// One observation per operation.
    pub seen: Vec<Seen>,
    /// One span per operation.
    pub spans: Vec<Span>,
}

impl Observed {
    /// `Ok` when no two steps are apart by less than `ttl` on one clock and
    /// more on the other (the model's time between them is an interval: a
    /// step reads the clock somewhere within its span); otherwise the first
    /// such pair, named.
    pub fn ttl_agrees(&self, ttl: Duration) -> Result<(), String> {
        let steps: Vec<(usize, &Span)> = self
            .spans
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.advance)
            .collect();
        for (a, (i, x)) in steps.iter().enumerate() {
            for (j, y) in &steps[a + 1..] {
                let reference = y.reference - x.reference;
                let (lo, hi) = (y.start.saturating_sub(x.end), y.end - x.start);
                // Strictly on one side: at exactly the TTL, `>` and `>=`
                // would disagree, and the check assumes neither.
                let side = |d: Duration| d.cmp(&ttl);
                let sides = [side(reference), side(lo), side(hi)];
                if sides.contains(&std::cmp::Ordering::Equal)
                    || sides.iter().any(|s| *s != sides[0])
                {
                    return Err(format!(
                        "steps #{i} and #{j} are {reference:?} apart on the reference's clock and \
                         {lo:?}..{hi:?} on the model's, across the {ttl:?} TTL"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The most the model's clock ran ahead of the reference's.
    pub fn drift_max(&self) -> Duration {
        self.spans
            .iter()
            .filter(|s| !s.advance)
            .map(|s| s.end.saturating_sub(s.reference))
            .max()
            .unwrap_or_default()
    }
}

/// The in-memory ledger on tokio's paused clock: the suite's reference.
pub fn reference(ops: &[Op], dedup: DedupConfig) -> Result<Vec<Seen>, String> {
    struct Paused;
    impl Clock for Paused {
        fn advance(&self, by: Duration) -> BoxFuture<'_, ()> {
            Box::pin(tokio::time::advance(by))
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| format!("no runtime for the reference: {e}"))?;
    Ok(runtime.block_on(async {
        let ledger = MemoryLedger::new(dedup, EventSink::default());
        conformance::run(&ledger, &Paused, ops).await
    }))
}

/// Advances the simulation's clock to the reference's (see the module
/// doc).
#[derive(Debug)]
struct SimClock {
    start: Instant,
    /// The reference's time: the sum of the advances so far.
    reference: Mutex<Duration>,
}

impl SimClock {
    fn reference(&self) -> Duration {
        *self.reference.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Clock for SimClock {
    fn advance(&self, by: Duration) -> BoxFuture<'_, ()> {
        let target = {
            let mut reference = self.reference.lock().unwrap_or_else(|p| p.into_inner());
            *reference += by;
            *reference
        };
        Box::pin(tokio::time::sleep_until(self.start + target))
    }
}

/// The suite's `ops` against the store model with `dedup`, over the
/// network of a turmoil simulation seeded with `seed`: a `replica` host's
/// [`RemoteLedger`] to the store host. Messages take no simulated time of
/// their own (zero latency: delivered within a step or the next), so each
/// step costs a few milliseconds and the messages of consecutive steps
/// arrive in the order they were sent (a dropped claim's connection closes
/// before the next step's request arrives), as calls on one machine would.
pub fn observe(ops: &[Op], dedup: DedupConfig, seed: u64) -> Result<Observed, String> {
    let history = History::default();
    let mut sim = turmoil::Builder::new()
        .rng_seed(derive_seed(seed, "network"))
        .simulation_duration(Duration::from_secs(3_600))
        .tick_duration(TICK)
        .min_message_latency(Duration::ZERO)
        .max_message_latency(Duration::ZERO)
        .build();
    let store = Store::new(
        StoreConfig {
            model: StoreModel::Atomic,
            dedup: dedup.clone(),
            delay_ms: (0, 0),
            lose_rate: 0.0,
            seed: derive_seed(seed, "store-faults"),
            // The reference has no idle bound, and the sequences hold
            // claims across advances of the clock: a bound would release
            // them and tell the two apart on something the suite does not
            // compare. (The idle bound has tests of its own.)
            idle_claim: Duration::from_secs(24 * 3_600),
            skew: None,
            key: digest_key(seed, HOST),
        },
        &history,
    );
    store.serve_on(&mut sim);
    let out: Arc<Mutex<Option<Observed>>> = Arc::default();
    let result = Arc::clone(&out);
    let ops = ops.to_vec();
    sim.client("replica", async move {
        let ledger = RemoteLedger::new(
            RemoteConfig {
                dedup,
                ..RemoteConfig::default()
            },
            EventSink::default(),
        );
        let clock = SimClock {
            start: Instant::now(),
            reference: Mutex::default(),
        };
        let (mut seen, mut spans) = (Vec::new(), Vec::new());
        for op in &ops {
            let (reference, start) = (clock.reference(), clock.start.elapsed());
            seen.extend(conformance::run(&ledger, &clock, std::slice::from_ref(op)).await);
            spans.push(Span {
                reference,
                start,
                end: clock.start.elapsed(),
                advance: matches!(op, Op::Advance(_)),
            });
        }
        *result.lock().unwrap_or_else(|p| p.into_inner()) = Some(Observed { seen, spans });
        Ok(())
    });
    sim.run().map_err(|e| e.to_string())?;
    let observed = out.lock().unwrap_or_else(|p| p.into_inner()).take();
    observed.ok_or_else(|| "the replica host did not finish the sequence".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(reference: u64, start: u64, end: u64) -> Span {
        let ms = Duration::from_millis;
        Span {
            reference: ms(reference),
            start: ms(start),
            end: ms(end),
            advance: false,
        }
    }

    #[test]
    fn clocks_that_disagree_about_an_expiry_are_named() {
        let ttl = Duration::from_secs(1);
        let observed = |spans| Observed {
            seen: Vec::new(),
            spans,
        };
        // Network time never brings an interval to the TTL's other side.
        let fine = observed(vec![
            span(0, 0, 5),
            span(800, 830, 840),
            span(1_900, 1_900, 1_910),
        ]);
        assert_eq!(fine.ttl_agrees(ttl), Ok(()));
        // 800 ms apart on the reference's clock, more than 1 s on the
        // model's: an expiry only the model sees.
        let late = observed(vec![span(0, 0, 5), span(800, 990, 1_010)]);
        let e = late.ttl_agrees(ttl).expect_err("disagrees");
        assert!(e.contains("steps #0 and #1"), "{e}");
        // 1.1 s apart on the reference's clock, less on the model's (the
        // first step ran late, the advance caught up).
        let early = observed(vec![span(0, 120, 130), span(1_100, 1_100, 1_105)]);
        assert!(early.ttl_agrees(ttl).is_err());
        assert_eq!(early.drift_max(), Duration::from_millis(130));
    }
}
