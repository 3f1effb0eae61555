//! The client-side circuit breaker: stops sending to an endpoint that keeps
//! failing, so a struggling server gets room to recover and callers fail in
//! microseconds instead of waiting out a timeout per call.
//!
//! # Where it sits
//!
//! Per endpoint, *inside* the retry layer and *outside* the per-attempt
//! timeout: `retry → breaker → attempt timeout → transport`.
//! - Every real attempt, retries included, passes the breaker, so every
//!   attempt feeds its statistics, and an attempt timeout reaches it as a
//!   DEADLINE_EXCEEDED failure rather than as a cancellation.
//! - A refusal is `UNAVAILABLE` with [`Cause::CircuitOpen`] and
//!   [`Outcome::NotApplied`] (nothing was sent). The retry policy treats
//!   that cause as non-retryable, so a retried call stops at the first
//!   refusal: retries never hammer an open breaker.
//!
//! # Decisions
//!
//! - **Window**: count-based, the last `window_calls` calls, judged once it
//!   holds `calls_min`; plus a consecutive-failure rule that reacts to a hard
//!   outage sooner. Caller errors (INVALID_ARGUMENT, NOT_FOUND, …) count as
//!   successes: the server answered.
//! - **Open duration**: `open_ms`, doubling on each failed probe up to
//!   `open_ms_max`, minus a seeded random cut of up to `open_jitter_ratio`,
//!   so clients that tripped together do not probe in lockstep.
//! - **Half-open**: up to `half_open_probes` probes at once; all of them
//!   must succeed to close, the first failure re-opens.
//! - **Cancelled calls**: a dropped response future abandons its ticket:
//!   nothing recorded, probe slot freed (the slot *is* the ticket).
//!
//! See [`BreakerPolicy`] for the state machine itself.
//!
//! # Layout
//! - [`config`], [`policy`]: [`BreakerConfig`] and [`BreakerPolicy`], the
//!   state machine; no I/O, clock and RNG passed in. They live in
//!   [`crate::resilience::breaker`], shared with the server's store guard,
//!   and are re-exported here.
//! - [`layer`]: [`BreakerLayer`], the [`Breaker`] service and
//!   [`BreakerHandle`].
//! - [`future`]: [`ResponseFuture`] and the ticket guard.
//!
//! [`Cause::CircuitOpen`]: crate::client::error::Cause::CircuitOpen
//! [`Outcome::NotApplied`]: crate::trace::Outcome::NotApplied

pub mod future;
pub mod layer;

pub use crate::resilience::breaker::{config, policy};

pub use config::{BreakerConfig, BreakerConfigError, CodeSet};
pub use future::ResponseFuture;
pub use layer::{Breaker, BreakerHandle, BreakerLayer};
pub use policy::{
    Admitted, BreakerPolicy, BreakerSnapshot, Counters, Rejected, State, Ticket, Transition,
    Transitions,
};
