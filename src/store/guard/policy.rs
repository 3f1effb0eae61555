//! The guard's decisions as a plain struct: no I/O, no locks, no clock of
//! its own. The caller passes the time in, so a test on tokio's paused
//! clock (or the simulator) decides it; `mod.rs` only carries the
//! decisions out.
//!
//! One **operation** is what a caller asks of the store: an `Accumulate`
//! (its claim, then its commit), a register read, a stats call. Each is
//! admitted once — an in-flight slot and one breaker ticket — and judged
//! once when it ends, on the time its calls spent in the store:
//!
//! | how it ended | what the breaker is told |
//! |---|---|
//! | the store answered (any answer: a value, a replay, a rule error, a reused ID) | success, or failure when slower than `slow_ms` |
//! | the store failed (unreachable, refused, a lost connection, the guard's own time limit) | failure |
//! | no answer before the caller's deadline, or a wait for another attempt of the same request ran out | failure when it waited `slow_ms` or more, else nothing |
//! | abandoned by the caller between claim and commit | nothing |
//!
//! So the breaker is fed by the store's failures and slowness, never by a
//! caller's mistakes or impatience: a client sending bad requests, or
//! deadlines of 5 ms, cannot cut a replica off from a healthy store.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tonic::Code;

use super::config::{GuardConfig, GuardConfigError};
use crate::resilience::breaker::{BreakerPolicy, BreakerSnapshot, State, Ticket, Transition};

/// How one operation ended, as far as the store's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEnd {
    /// The store answered, whatever the answer says about the request.
    Answered,
    /// The store failed: unreachable, refused, a connection lost, or no
    /// answer within the guard's own limit.
    Failed,
    /// Not answered before the caller's deadline, or a wait for another
    /// attempt of the same request ran out: evidence against the store only
    /// if it took long.
    Unanswered,
}

/// Why an operation was refused before anything was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The breaker is open (or half-open with its probes out): the store
    /// has been failing.
    CircuitOpen {
        /// Milliseconds until the breaker lets a probe through (0 when
        /// half-open: the probes in flight decide).
        probe_in_ms: u64,
    },
    /// `in_flight_max` store operations are in flight already.
    Busy {
        /// Operations in flight when refused.
        in_flight: usize,
        /// The limit.
        limit: usize,
    },
}

/// Which limit a store call's time bound is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The caller's deadline.
    Caller,
    /// The guard's own `timeout_ms`: a call cut by it is a store failure.
    Guard,
}

/// When a store call must end, and which limit that is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimit {
    /// The instant.
    pub at: Instant,
    /// Whose.
    pub limit: Limit,
}

impl CallLimit {
    /// The earlier of the caller's `deadline` and `timeout` from `now`.
    pub fn new(now: Instant, deadline: Option<Instant>, timeout: Duration) -> Self {
        let guard = now + timeout;
        match deadline {
            Some(at) if at <= guard => Self {
                at,
                limit: Limit::Caller,
            },
            _ => Self {
                at: guard,
                limit: Limit::Guard,
            },
        }
    }
}

/// An admitted operation: its breaker ticket and the store time its calls
/// have used. Hand it back with [`GuardPolicy::finish`] or
/// [`GuardPolicy::abandon`]; either frees its in-flight slot.
#[derive(Debug)]
#[must_use = "finish or abandon the operation, or its in-flight slot is never freed"]
pub struct Op {
    ticket: Ticket,
    store_time: Duration,
}

impl Op {
    /// Adds the duration of one store call.
    pub fn spent(&mut self, took: Duration) {
        self.store_time += took;
    }

    /// Store time so far.
    pub fn store_time(&self) -> Duration {
        self.store_time
    }

    /// True if this operation is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.ticket.is_probe()
    }
}

/// Counts since the guard was built, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuardCounters {
    /// Operations admitted.
    pub admitted: u64,
    /// Refused by the breaker.
    pub refused_open: u64,
    /// Refused by the in-flight bound.
    pub refused_busy: u64,
    /// Operations that counted as failures (slow ones included).
    pub failures: u64,
    /// Of those, answered or unanswered but too slow.
    pub slow: u64,
    /// Ended without evidence either way (cut short quickly, abandoned).
    pub ignored: u64,
}

/// The store guard's decisions: see the module documentation.
///
/// ```
/// use abacus::store::guard::{CallEnd, GuardConfig, GuardPolicy, Refusal};
/// use abacus::client::breaker::State;
/// use rand::SeedableRng;
/// use rand_chacha::ChaCha8Rng;
/// use tokio::time::Instant;
///
/// let config = GuardConfig { in_flight_max: 1, ..GuardConfig::default() };
/// let mut guard = GuardPolicy::new(config, ChaCha8Rng::seed_from_u64(1)).unwrap();
/// let now = Instant::now();
/// let (op, _) = guard.admit(now).unwrap();
/// // The only slot is taken: the next operation is refused before sending.
/// assert_eq!(guard.admit(now).unwrap_err(), Refusal::Busy { in_flight: 1, limit: 1 });
/// guard.finish(op, CallEnd::Answered, now);
/// assert_eq!(guard.state(), State::Closed);
/// assert_eq!(guard.in_flight(), 0);
/// ```
#[derive(Debug)]
pub struct GuardPolicy<R> {
    config: GuardConfig,
    breaker: BreakerPolicy<R>,
    in_flight: usize,
    counters: GuardCounters,
}

impl<R: Rng> GuardPolicy<R> {
    /// A guard with a closed breaker and nothing in flight, if `config` is
    /// valid; `rng` draws the breaker's open-duration jitter.
    pub fn new(config: GuardConfig, rng: R) -> Result<Self, GuardConfigError> {
        config.validate()?;
        let breaker = BreakerPolicy::new(config.effective_breaker(), rng)?;
        Ok(Self {
            config,
            breaker,
            in_flight: 0,
            counters: GuardCounters::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// Asks to start an operation at `now`: a slot and a ticket, or the
    /// refusal. The in-flight bound is checked first, so a refusal for
    /// being busy never spends a half-open probe.
    pub fn admit(&mut self, now: Instant) -> Result<(Op, Option<Transition>), Refusal> {
        if self.in_flight >= self.config.in_flight_max {
            self.counters.refused_busy += 1;
            return Err(Refusal::Busy {
                in_flight: self.in_flight,
                limit: self.config.in_flight_max,
            });
        }
        match self.breaker.try_acquire(now) {
            Ok(admitted) => {
                self.in_flight += 1;
                self.counters.admitted += 1;
                Ok((
                    Op {
                        ticket: admitted.ticket,
                        store_time: Duration::ZERO,
                    },
                    admitted.transition,
                ))
            }
            Err(rejected) => {
                self.counters.refused_open += 1;
                Err(Refusal::CircuitOpen {
                    probe_in_ms: rejected.probe_in_ms,
                })
            }
        }
    }

    /// The time bound of one store call starting at `now` for a caller
    /// whose deadline is `deadline`.
    pub fn limit(&self, now: Instant, deadline: Option<Instant>) -> CallLimit {
        CallLimit::new(now, deadline, self.config.timeout())
    }

    /// The operation ended as `end` says, at `now`: the breaker learns what
    /// it says about the store (see the module table), the slot is freed.
    /// Returns the transition it caused, if any.
    pub fn finish(&mut self, op: Op, end: CallEnd, now: Instant) -> Option<Transition> {
        self.in_flight = self.in_flight.saturating_sub(1);
        let slow = op.store_time > self.config.slow();
        let code = match end {
            CallEnd::Answered if slow => Code::DeadlineExceeded,
            CallEnd::Answered => Code::Ok,
            CallEnd::Failed => Code::Unavailable,
            CallEnd::Unanswered if op.store_time >= self.config.slow() => Code::DeadlineExceeded,
            CallEnd::Unanswered => {
                self.counters.ignored += 1;
                self.breaker.abandon(op.ticket);
                return None;
            }
        };
        if code != Code::Ok {
            self.counters.failures += 1;
            if code == Code::DeadlineExceeded {
                self.counters.slow += 1;
            }
        }
        self.breaker.record(op.ticket, code, now)
    }

    /// The operation ended without telling anything about the store (a
    /// claim dropped before its commit): nothing is recorded, the slot is
    /// freed (and a probe's slot with it).
    pub fn abandon(&mut self, op: Op) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.counters.ignored += 1;
        self.breaker.abandon(op.ticket);
    }

    /// The breaker's state (an open breaker whose time is up reads `Open`
    /// until the next admission probes).
    pub fn state(&self) -> State {
        self.breaker.state()
    }

    /// Operations in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The breaker at `now`: when it will probe, its counters.
    pub fn breaker(&self, now: Instant) -> BreakerSnapshot {
        self.breaker.snapshot(now)
    }

    /// The guard's own counters.
    pub fn counters(&self) -> GuardCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::resilience::breaker::BreakerConfig;

    const MS: Duration = Duration::from_millis(1);

    fn guard(config: GuardConfig) -> GuardPolicy<ChaCha8Rng> {
        GuardPolicy::new(config, ChaCha8Rng::seed_from_u64(7)).unwrap()
    }

    /// Trips after three failures in a row, opens for exactly 1 s.
    fn quick() -> GuardConfig {
        GuardConfig {
            breaker: BreakerConfig {
                consecutive_failures_max: Some(3),
                failure_rate_threshold: None,
                open_ms: 1_000,
                open_ms_max: 4_000,
                open_jitter_ratio: 0.0,
                ..GuardConfig::default_breaker()
            },
            ..GuardConfig::default()
        }
    }

    /// One operation admitted at `at` that spent `took` in the store and
    /// ended as `end` right then.
    fn run(
        g: &mut GuardPolicy<ChaCha8Rng>,
        at: Instant,
        took: Duration,
        end: CallEnd,
    ) -> Option<Transition> {
        let (mut op, _) = g.admit(at).expect("admitted");
        op.spent(took);
        g.finish(op, end, at + took)
    }

    #[tokio::test(start_paused = true)]
    async fn store_failures_trip_the_breaker_and_open_refuses_before_sending() {
        let mut g = guard(quick());
        let t0 = Instant::now();
        assert_eq!(run(&mut g, t0, MS, CallEnd::Failed), None);
        assert_eq!(run(&mut g, t0, MS, CallEnd::Failed), None);
        let opened = run(&mut g, t0, MS, CallEnd::Failed).expect("third failure trips");
        assert_eq!((opened.from, opened.to), (State::Closed, State::Open));
        // Opened at t0 + 1 ms, for 1 s.
        assert_eq!(
            g.admit(t0 + MS).unwrap_err(),
            Refusal::CircuitOpen { probe_in_ms: 1_000 }
        );
        assert_eq!(g.in_flight(), 0, "a refusal holds no slot");
        assert_eq!(g.counters().refused_open, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn caller_errors_and_quick_cuts_never_count_against_the_store() {
        let mut g = guard(quick());
        let t0 = Instant::now();
        for _ in 0..10 {
            // A rule error, a reused ID, a replay: the store answered.
            assert_eq!(run(&mut g, t0, MS, CallEnd::Answered), None);
            // A caller whose 5 ms deadline ran out: no evidence.
            assert_eq!(run(&mut g, t0, 5 * MS, CallEnd::Unanswered), None);
        }
        assert_eq!(g.state(), State::Closed);
        let c = g.counters();
        assert_eq!((c.failures, c.ignored), (0, 10));
    }

    #[tokio::test(start_paused = true)]
    async fn slowness_is_judged_on_store_time_answered_or_not() {
        let mut g = guard(quick());
        let slow = g.config().slow();
        let t0 = Instant::now();
        // At the threshold an answer is fine; a caller cut there is not.
        assert_eq!(run(&mut g, t0, slow, CallEnd::Answered), None);
        assert_eq!(g.counters().failures, 0);
        run(&mut g, t0, slow, CallEnd::Unanswered);
        run(&mut g, t0, slow + MS, CallEnd::Answered);
        let opened = run(&mut g, t0, slow * 2, CallEnd::Unanswered).expect("three slow ones trip");
        assert_eq!(opened.to, State::Open);
        assert_eq!(g.counters().slow, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_recovers_is_probed_and_the_breaker_closes() {
        let mut g = guard(quick());
        let t0 = Instant::now();
        for _ in 0..3 {
            run(&mut g, t0, Duration::ZERO, CallEnd::Failed);
        }
        assert!(g.admit(t0 + 999 * MS).is_err(), "still open");
        // Open time is up: one probe goes out, a second is refused while it
        // is in flight.
        let (probe, moved) = g.admit(t0 + 1_000 * MS).expect("a probe");
        assert!(probe.is_probe());
        assert_eq!(moved.map(|t| t.to), Some(State::HalfOpen));
        assert_eq!(
            g.admit(t0 + 1_000 * MS).unwrap_err(),
            Refusal::CircuitOpen { probe_in_ms: 0 }
        );
        let closed = g.finish(probe, CallEnd::Answered, t0 + 1_001 * MS);
        assert_eq!(closed.map(|t| t.to), Some(State::Closed));
        assert!(g.admit(t0 + 1_001 * MS).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_longer_and_an_abandoned_one_frees_its_slot() {
        let mut g = guard(quick());
        let t0 = Instant::now();
        for _ in 0..3 {
            run(&mut g, t0, Duration::ZERO, CallEnd::Failed);
        }
        let (probe, _) = g.admit(t0 + 1_000 * MS).unwrap();
        g.abandon(probe);
        // The abandoned probe's slot is free again: another probe may go.
        let (probe, _) = g.admit(t0 + 1_000 * MS).expect("slot freed");
        let reopened = g.finish(probe, CallEnd::Failed, t0 + 1_000 * MS).unwrap();
        assert_eq!((reopened.from, reopened.to), (State::HalfOpen, State::Open));
        // Second trip since closing: open twice as long.
        assert!(matches!(
            g.admit(t0 + 1_000 * MS),
            Err(Refusal::CircuitOpen { probe_in_ms: 2_000 })
        ));
        assert_eq!(g.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_in_flight_bound_refuses_without_spending_a_probe() {
        let mut g = guard(GuardConfig {
            in_flight_max: 2,
            ..quick()
        });
        let now = Instant::now();
        let (a, _) = g.admit(now).unwrap();
        let (b, _) = g.admit(now).unwrap();
        assert_eq!(
            g.admit(now).unwrap_err(),
            Refusal::Busy {
                in_flight: 2,
                limit: 2
            }
        );
        g.finish(a, CallEnd::Answered, now);
        let (c, _) = g.admit(now).expect("a slot came free");
        g.abandon(b);
        g.abandon(c);
        assert_eq!(g.in_flight(), 0);
        assert_eq!(g.counters().refused_busy, 1);
        assert_eq!(g.state(), State::Closed, "busy is not a store failure");
    }

    #[tokio::test(start_paused = true)]
    async fn an_outcome_from_before_a_transition_cannot_move_the_breaker() {
        let mut g = guard(quick());
        let now = Instant::now();
        // Admitted while closed, answered after the breaker opened and
        // closed again: it describes the store as it was.
        let (old, _) = g.admit(now).unwrap();
        for _ in 0..3 {
            run(&mut g, now, Duration::ZERO, CallEnd::Failed);
        }
        let (probe, _) = g.admit(now + 1_000 * MS).unwrap();
        g.finish(probe, CallEnd::Answered, now + 1_000 * MS);
        assert_eq!(g.state(), State::Closed);
        assert_eq!(g.finish(old, CallEnd::Failed, now + 1_001 * MS), None);
        assert_eq!(g.breaker(now).counters.stale, 1);
        assert_eq!(g.in_flight(), 0);
    }

    #[test]
    fn call_limits_name_the_earlier_bound() {
        let now = Instant::now();
        let t = Duration::from_secs(2);
        assert_eq!(
            CallLimit::new(now, None, t),
            CallLimit {
                at: now + t,
                limit: Limit::Guard
            }
        );
        assert_eq!(CallLimit::new(now, Some(now + MS), t).limit, Limit::Caller);
        assert_eq!(
            CallLimit::new(now, Some(now + 3 * t), t).limit,
            Limit::Guard
        );
    }
}
