//! The breaker's decision as a plain state machine: no I/O, no clock, no
//! locks. The caller passes in the time ([`Instant`]) and the RNG, so a test
//! or the simulator decides both; the layer in `layer.rs` only carries the
//! decisions out and announces them.
//!
//! ```text
//!            trip rule met                    open duration over
//!  Closed ─────────────────▶ Open ──────────────────────────────▶ HalfOpen
//!    ▲                        ▲          (on the next call)          │
//!    │                        └──────── a probe fails ───────────────┤
//!    └──────────────── half_open_probes probes succeed ──────────────┘
//! ```

use std::{collections::VecDeque, fmt, sync::Arc, time::Duration};

use rand::Rng;
use tokio::time::Instant;
use tonic::Code;

use super::config::{BreakerConfig, BreakerConfigError};

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// Calls flow; outcomes are counted.
    Closed,
    /// Calls are refused without being sent.
    Open,
    /// A few probe calls test whether the endpoint recovered.
    HalfOpen,
}

impl State {
    /// Lower-case name used in events and CLI output: `closed`, `open`,
    /// `half-open`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A change of state, returned to the caller so it can announce it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
}

impl Transition {
    /// True for the four edges of the state diagram; the policy never
    /// returns anything else.
    pub fn is_legal(self) -> bool {
        use State::*;
        matches!(
            (self.from, self.to),
            (Closed, Open) | (Open, HalfOpen) | (HalfOpen, Closed) | (HalfOpen, Open)
        )
    }
}

/// Proof that a call was admitted. Hand it back with
/// [`BreakerPolicy::record`] when the call ends, or with
/// [`BreakerPolicy::abandon`] if it was cancelled.
///
/// A half-open probe's slot is held by the ticket itself: dropping the ticket
/// in any way (reported, abandoned or simply dropped) frees the slot, so a
/// cancelled probe can never wedge the breaker half-open.
#[derive(Debug)]
#[must_use = "report the call's outcome with BreakerPolicy::record"]
pub struct Ticket {
    /// The policy's generation when the call was admitted. Every transition
    /// starts a new generation; a report from an older one is stale (the
    /// call straddled a transition) and cannot move the state.
    generation: u64,
    /// When the call was admitted, for the slow-call rule.
    started: Instant,
    /// For half-open probes: a clone of the generation's slot token. The
    /// policy counts probes in flight as the token's clones still alive.
    probe: Option<Arc<()>>,
}

impl Ticket {
    /// True if this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }
}

/// An admitted call.
#[derive(Debug)]
pub struct Admitted {
    /// To be reported when the call ends.
    pub ticket: Ticket,
    /// Set when admitting the call moved the breaker (open → half-open).
    pub transition: Option<Transition>,
}

/// A refused call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// `Open`, or `HalfOpen` when every probe slot is taken.
    pub state: State,
    /// Milliseconds until the breaker admits a probe (rounded up); 0 when
    /// half-open, where the probes in flight decide.
    pub probe_in_ms: u64,
}

/// How many times each transition happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transitions {
    /// Closed → open: a trip rule fired.
    pub closed_to_open: u64,
    /// Open → half-open: the open duration ran out and a probe went out.
    pub open_to_half_open: u64,
    /// Half-open → closed: the probes succeeded.
    pub half_open_to_closed: u64,
    /// Half-open → open: a probe failed.
    pub half_open_to_open: u64,
}

impl Transitions {
    fn count(&mut self, t: Transition) {
        use State::*;
        let counter = match (t.from, t.to) {
            (Closed, Open) => &mut self.closed_to_open,
            (Open, HalfOpen) => &mut self.open_to_half_open,
            (HalfOpen, Closed) => &mut self.half_open_to_closed,
            (HalfOpen, Open) => &mut self.half_open_to_open,
            _ => unreachable!("the policy only makes legal transitions, not {t:?}"),
        };
        *counter += 1;
    }

    /// All transitions.
    pub fn total(&self) -> u64 {
        self.closed_to_open
            + self.open_to_half_open
            + self.half_open_to_closed
            + self.half_open_to_open
    }
}

/// Everything a breaker counts, from the moment it was built: kept in one
/// place in the policy and copied whole into each [`BreakerSnapshot`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Transitions so far, per kind.
    pub transitions: Transitions,
    /// Calls admitted.
    pub admitted: u64,
    /// Calls refused.
    pub rejected: u64,
    /// Reported calls that counted as successes.
    pub successes: u64,
    /// Reported calls that counted as failures (slow calls included).
    pub failures: u64,
    /// Failures that were successes, only too slow.
    pub slow_calls: u64,
    /// Calls cancelled before they reported (their tickets abandoned).
    pub abandoned: u64,
    /// Reports ignored because the call straddled a transition.
    pub stale: u64,
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.transitions;
        write!(
            f,
            "transitions closed->open={} open->half-open={} half-open->closed={} half-open->open={}; \
             admitted={} rejected={} successes={} failures={} (slow {}) abandoned={} stale={}",
            t.closed_to_open,
            t.open_to_half_open,
            t.half_open_to_closed,
            t.half_open_to_open,
            self.admitted,
            self.rejected,
            self.successes,
            self.failures,
            self.slow_calls,
            self.abandoned,
            self.stale
        )
    }
}

/// A breaker's state and counters at one instant, for the CLI and demos.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerSnapshot {
    /// Current state. An open breaker whose duration ran out still reads
    /// `Open` (with `probe_in_ms` 0) until the next call probes.
    pub state: State,
    /// Milliseconds until a probe may go out; 0 unless open.
    pub probe_in_ms: u64,
    /// Duration of the current open period (jitter included); 0 unless
    /// open.
    pub open_ms: u64,
    /// Trips since the breaker last closed; drives the open duration's
    /// growth.
    pub trips: u32,
    /// Calls in the sliding window (closed state).
    pub window_calls: usize,
    /// Failures among them.
    pub window_failures: usize,
    /// Failures in a row (closed state).
    pub consecutive_failures: u32,
    /// Probes in flight (half-open state).
    pub probes_in_flight: u32,
    /// Counters since the breaker was built.
    pub counters: Counters,
}

impl fmt::Display for BreakerSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state {
            State::Closed => write!(
                f,
                "closed: window {}/{} failed, {} in a row",
                self.window_failures, self.window_calls, self.consecutive_failures
            )?,
            State::Open => write!(
                f,
                "open for {} ms (trip {}): next probe in {} ms",
                self.open_ms, self.trips, self.probe_in_ms
            )?,
            State::HalfOpen => {
                write!(f, "half-open: {} probe(s) in flight", self.probes_in_flight)?
            }
        }
        write!(f, "; {}", self.counters)
    }
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open {
        until: Instant,
        open_ms: u64,
    },
    HalfOpen {
        /// The slot token; every probe ticket of this generation holds a
        /// clone, so `strong_count - 1` is the number of probes in flight.
        slots: Arc<()>,
        successes: u32,
    },
}

/// A circuit breaker's decisions.
///
/// * **Closed**: every call is admitted and its outcome recorded in a
///   count-based sliding window of the last `window_calls` calls. The
///   breaker trips when the window holds at least `calls_min` calls and its
///   failure rate is at or above `failure_rate_threshold`, or after
///   `consecutive_failures_max` failures in a row.
/// * **Open**: calls are refused with the time until the next probe. The
///   open duration is `open_ms × 2^(trips−1)`, capped at `open_ms_max`, where
///   `trips` counts openings since the breaker last closed; then shortened by
///   a random fraction below `open_jitter_ratio` (see
///   [`BreakerConfig::open_jitter_ratio`]).
/// * **HalfOpen**: entered by the first call after the open duration; at
///   most `half_open_probes` probes in flight. The breaker closes after
///   `half_open_probes` probe successes (all of them, not one: more evidence
///   before full traffic returns), and re-opens, with a doubled duration, on
///   the first probe failure.
///
/// A call counts as a failure when its code is in `failure_codes`, or it
/// took longer than `slow_call_ms`; anything else, caller errors included,
/// counts as a success.
///
/// ```
/// use std::time::Duration;
/// use abacus::client::breaker::{BreakerConfig, BreakerPolicy, State};
/// use rand::SeedableRng;
/// use rand_chacha::ChaCha8Rng;
/// use tokio::time::Instant;
/// use tonic::Code;
///
/// let config = BreakerConfig {
///     consecutive_failures_max: Some(2),
///     open_ms: 1_000,
///     open_jitter_ratio: 0.0,
///     ..BreakerConfig::default()
/// };
/// let mut breaker = BreakerPolicy::new(config, ChaCha8Rng::seed_from_u64(7)).unwrap();
/// let t0 = Instant::now();
///
/// for _ in 0..2 {
///     let ticket = breaker.try_acquire(t0).unwrap().ticket;
///     breaker.record(ticket, Code::Unavailable, t0);
/// }
/// assert_eq!(breaker.state(), State::Open);
/// assert_eq!(breaker.try_acquire(t0).unwrap_err().probe_in_ms, 1_000);
///
/// // After the open duration, the next call is a probe; its success closes.
/// let probe = breaker.try_acquire(t0 + Duration::from_secs(1)).unwrap();
/// assert_eq!(breaker.state(), State::HalfOpen);
/// let closed = breaker.record(probe.ticket, Code::Ok, t0 + Duration::from_secs(1));
/// assert_eq!(closed.map(|t| t.to), Some(State::Closed));
/// ```
#[derive(Debug)]
pub struct BreakerPolicy<R> {
    config: BreakerConfig,
    rng: R,
    phase: Phase,
    /// Bumped on every transition; see [`Ticket`].
    generation: u64,
    /// Closed-state outcomes, oldest first; `true` is a failure. Bounded by
    /// `window_calls`.
    window: VecDeque<bool>,
    window_failures: usize,
    consecutive_failures: u32,
    trips: u32,
    counters: Counters,
}

impl<R: Rng> BreakerPolicy<R> {
    /// A closed breaker, if `config` is valid. `rng` draws the open-duration
    /// jitter; pass a seeded one for reproducible runs.
    pub fn new(config: BreakerConfig, rng: R) -> Result<Self, BreakerConfigError> {
        config.validate()?;
        Ok(Self {
            window: VecDeque::with_capacity(config.window_calls),
            config,
            rng,
            phase: Phase::Closed,
            generation: 0,
            window_failures: 0,
            consecutive_failures: 0,
            trips: 0,
            counters: Counters::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Current state (see [`BreakerSnapshot::state`] about an expired open
    /// period).
    pub fn state(&self) -> State {
        match self.phase {
            Phase::Closed => State::Closed,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// Asks to send a call at `now`: a ticket, or the refusal and when to
    /// come back.
    pub fn try_acquire(&mut self, now: Instant) -> Result<Admitted, Rejected> {
        let mut transition = None;
        if let Phase::Open { until, .. } = self.phase {
            if now < until {
                self.counters.rejected += 1;
                return Err(Rejected {
                    state: State::Open,
                    probe_in_ms: ceil_ms(until - now),
                });
            }
            transition = Some(self.enter(
                Phase::HalfOpen {
                    slots: Arc::new(()),
                    successes: 0,
                },
                State::HalfOpen,
            ));
        }
        let probe = match &self.phase {
            Phase::Closed => None,
            Phase::HalfOpen { slots, .. } => {
                if in_flight(slots) >= self.config.half_open_probes {
                    self.counters.rejected += 1;
                    return Err(Rejected {
                        state: State::HalfOpen,
                        probe_in_ms: 0,
                    });
                }
                Some(Arc::clone(slots))
            }
            Phase::Open { .. } => unreachable!("an expired open phase was left above"),
        };
        self.counters.admitted += 1;
        Ok(Admitted {
            ticket: Ticket {
                generation: self.generation,
                started: now,
                probe,
            },
            transition,
        })
    }

    /// True when [`BreakerPolicy::try_acquire`] at `now` would admit a call:
    /// closed, open with its period over (the call would be the probe), or
    /// half-open with a probe slot free. Changes nothing, so a balancer can
    /// ask every endpoint before choosing one.
    pub fn admits(&self, now: Instant) -> bool {
        match &self.phase {
            Phase::Closed => true,
            Phase::Open { until, .. } => now >= *until,
            Phase::HalfOpen { slots, .. } => in_flight(slots) < self.config.half_open_probes,
        }
    }

    /// Reports how an admitted call ended at `now`: `code` is its gRPC code
    /// (`Code::Ok` for a reply). Returns the transition it caused, if any.
    pub fn record(&mut self, ticket: Ticket, code: Code, now: Instant) -> Option<Transition> {
        if ticket.generation != self.generation {
            // The call started before a transition: in a closed breaker that
            // has since opened, or as a probe of an earlier half-open round.
            // Its outcome describes the endpoint as it was, not as it is.
            self.counters.stale += 1;
            return None;
        }
        let slow = self
            .config
            .slow_call_ms
            .is_some_and(|max| now.saturating_duration_since(ticket.started) > ms(max));
        let failed = self.config.failure_codes.contains(code) || slow;
        if failed {
            self.counters.failures += 1;
            if slow && !self.config.failure_codes.contains(code) {
                self.counters.slow_calls += 1;
            }
        } else {
            self.counters.successes += 1;
        }
        // Release a probe's slot before deciding, so the count is exact.
        drop(ticket);
        match &mut self.phase {
            Phase::Closed => {
                self.remember(failed);
                self.should_trip().then(|| self.open(now))
            }
            Phase::HalfOpen { successes, .. } => {
                if failed {
                    return Some(self.open(now));
                }
                *successes += 1;
                (*successes >= self.config.half_open_probes).then(|| self.close())
            }
            // Tickets are only issued closed or half-open, and leaving either
            // starts a new generation, so a current ticket never meets Open.
            Phase::Open { .. } => unreachable!("current-generation ticket while open"),
        }
    }

    /// Gives back the ticket of a call that was cancelled before it ended.
    /// Nothing is recorded: a cancellation is the caller's doing and says
    /// nothing about the endpoint. A probe's slot is freed (as it would be by
    /// dropping the ticket); this only counts the abandonment.
    pub fn abandon(&mut self, ticket: Ticket) {
        self.counters.abandoned += 1;
        drop(ticket);
    }

    /// The breaker's state and counters at `now`.
    pub fn snapshot(&self, now: Instant) -> BreakerSnapshot {
        let (probe_in_ms, open_ms) = match self.phase {
            Phase::Open { until, open_ms } => {
                (ceil_ms(until.saturating_duration_since(now)), open_ms)
            }
            _ => (0, 0),
        };
        let probes_in_flight = match &self.phase {
            Phase::HalfOpen { slots, .. } => in_flight(slots),
            _ => 0,
        };
        BreakerSnapshot {
            state: self.state(),
            probe_in_ms,
            open_ms,
            trips: self.trips,
            window_calls: self.window.len(),
            window_failures: self.window_failures,
            consecutive_failures: self.consecutive_failures,
            probes_in_flight,
            counters: self.counters,
        }
    }

    /// Adds a closed-state outcome to the window and the run of failures.
    fn remember(&mut self, failed: bool) {
        if self.window.len() == self.config.window_calls
            && let Some(true) = self.window.pop_front()
        {
            self.window_failures -= 1;
        }
        self.window.push_back(failed);
        if failed {
            self.window_failures += 1;
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        } else {
            self.consecutive_failures = 0;
        }
    }

    fn should_trip(&self) -> bool {
        let by_rate = self.config.failure_rate_threshold.is_some_and(|threshold| {
            self.window.len() >= self.config.calls_min
                && self.window_failures as f64 >= threshold * self.window.len() as f64
        });
        let by_run = self
            .config
            .consecutive_failures_max
            .is_some_and(|max| self.consecutive_failures >= max);
        by_rate || by_run
    }

    /// Opens for the next duration: base × 2^(trips−1), capped, minus jitter.
    fn open(&mut self, now: Instant) -> Transition {
        self.trips = self.trips.saturating_add(1);
        let growth = 2u64.checked_pow(self.trips - 1).unwrap_or(u64::MAX);
        let nominal_ms = self
            .config
            .open_ms
            .saturating_mul(growth)
            .min(self.config.open_ms_max);
        // Subtractive jitter: never longer than the nominal (so the cap holds)
        // and never shorter than (1 − ratio) of it (so the endpoint always
        // gets most of its pause). Full jitter would let some clients probe
        // almost at once, which is what the pause is meant to prevent.
        let cut: f64 = self.rng.random::<f64>() * self.config.open_jitter_ratio;
        let open_ms = ((nominal_ms as f64 * (1.0 - cut)).round() as u64).max(1);
        self.enter(
            Phase::Open {
                until: now + ms(open_ms),
                open_ms,
            },
            State::Open,
        )
    }

    fn close(&mut self) -> Transition {
        self.trips = 0;
        self.enter(Phase::Closed, State::Closed)
    }

    /// Moves to `phase`, starting a new generation with empty statistics.
    fn enter(&mut self, phase: Phase, to: State) -> Transition {
        let transition = Transition {
            from: self.state(),
            to,
        };
        debug_assert!(transition.is_legal(), "{transition:?}");
        self.counters.transitions.count(transition);
        self.generation += 1;
        self.phase = phase;
        // Each closed period judges the endpoint afresh: failures from before
        // an outage must not re-trip a breaker the probes just closed.
        self.window.clear();
        self.window_failures = 0;
        self.consecutive_failures = 0;
        transition
    }
}

fn in_flight(slots: &Arc<()>) -> u32 {
    // One reference is the policy's own.
    u32::try_from(Arc::strong_count(slots) - 1).unwrap_or(u32::MAX)
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Whole milliseconds, rounded up so that "0 ms" only ever means "now".
fn ceil_ms(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
