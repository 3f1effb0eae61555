//! Section 6: a server that fails everything trips the breaker; calls then
//! fail fast without touching the network; when the server recovers, the
//! demo waits for the breaker's open period to end (on the breaker's own
//! clock, through its handle) and one probe closes it again.

use std::{fmt, time::Duration};

use super::{
    embedded::{faulty_server, narrated_client},
    tally::{Count, Tally},
};
use crate::{
    client::{BreakerConfig, CallError, Cause, ClientConfig, breaker::State},
    server::{FaultConfig, FaultSwitch},
};

/// The breaker's open period in this section (before its jitter cut).
const OPEN_MS: u64 = 500;

/// A hang guard on the wait for the probe, far beyond [`OPEN_MS`]: the wait
/// ends when the breaker says so, this only turns a breaker that never
/// comes due into a surprise instead of a hung demo.
const PROBE_WAIT_MAX: Duration = Duration::from_secs(30);

/// Runs the section with the user's policy and the section's own breaker.
pub(super) async fn section(
    t: &mut Tally,
    seed: u64,
    policy: &ClientConfig,
) -> std::io::Result<()> {
    println!("\n6. Circuit breaker: a server that fails every request, then recovers");
    let switch = FaultSwitch::default();
    let down = faulty_server(
        FaultConfig {
            fail_rate: 1.0,
            seed,
            ..FaultConfig::default()
        },
        switch.clone(),
    )
    .await?;
    let config = ClientConfig {
        endpoint: down.addr.to_string(),
        // Trips after four failures in a row, whatever the retry policy:
        // with the default 4 attempts the first call trips it, with
        // `--attempts 1` the fourth does, and the fifth fails fast.
        breaker: Some(BreakerConfig {
            consecutive_failures_max: Some(4),
            open_ms: OPEN_MS,
            ..BreakerConfig::default()
        }),
        ..policy.clone()
    };
    let client = narrated_client(down.addr, config);
    let Some(breaker) = client.breaker() else {
        t.count(Count::Surprise(
            "breaker: the client was built without one".into(),
        ));
        return Ok(());
    };
    let (mut succeeded_while_down, mut failed_fast) = (0, 0);
    for i in 0..5 {
        let started = std::time::Instant::now();
        match client.add(f64::from(i), 1.0).await {
            Ok(v) => {
                succeeded_while_down += 1;
                println!("     add({i}, 1) = {v}, against a server failing everything?");
            }
            Err(e) if matches!(e.cause, Cause::CircuitOpen { .. }) => {
                failed_fast += 1;
                println!("     failed fast in {:?}: {e}", started.elapsed());
            }
            Err(e) => println!("     error: {e}"),
        }
    }
    println!("   ... the server recovers (faults switched off); waiting for the breaker to probe");
    switch.turn_off();
    let probe_due = tokio::time::timeout(PROBE_WAIT_MAX, breaker.probe_due())
        .await
        .is_ok();
    let recovery = client.add(40.0, 2.0).await;
    let seen = Observed {
        succeeded_while_down,
        failed_fast,
        probe_due,
        recovery,
        state: breaker.state(),
    };
    if let Ok(v) = &seen.recovery {
        println!("     add(40, 2) = {v}; breaker is {}", seen.state);
    }
    let verdict = judge(&seen);
    println!("   => {verdict}");
    t.count(verdict.count());
    println!("   breaker: {}", breaker.snapshot());
    Ok(())
}

/// What the section saw.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Observed {
    /// Calls that succeeded against the failing server (none should).
    pub(super) succeeded_while_down: u32,
    /// Calls refused by the open breaker without being sent.
    pub(super) failed_fast: u32,
    /// True when the breaker came due for a probe within the hang guard.
    pub(super) probe_due: bool,
    /// The call made once the server recovered.
    pub(super) recovery: Result<f64, CallError>,
    /// The breaker's state after it.
    pub(super) state: State,
}

/// Whether the breaker did its job.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Verdict {
    /// It failed calls fast while open, and one probe closed it once the
    /// server recovered.
    Recovered {
        /// Calls refused without being sent.
        failed_fast: u32,
    },
    /// A call succeeded against a server that fails everything.
    SucceededWhileDown(u32),
    /// No call failed fast: the breaker never opened.
    NeverOpened,
    /// The open period did not end within the hang guard.
    NeverDue,
    /// The call after the recovery failed.
    NotRecovered(CallError),
    /// The call succeeded but the breaker is not closed.
    NotClosed(State),
}

/// Judges the section from what it saw.
pub(super) fn judge(seen: &Observed) -> Verdict {
    if seen.succeeded_while_down > 0 {
        return Verdict::SucceededWhileDown(seen.succeeded_while_down);
    }
    if seen.failed_fast == 0 {
        return Verdict::NeverOpened;
    }
    if !seen.probe_due {
        return Verdict::NeverDue;
    }
    match (&seen.recovery, seen.state) {
        (Err(e), _) => Verdict::NotRecovered(e.clone()),
        (Ok(_), State::Closed) => Verdict::Recovered {
            failed_fast: seen.failed_fast,
        },
        (Ok(_), state) => Verdict::NotClosed(state),
    }
}

impl Verdict {
    /// How it counts in the summary.
    pub(super) fn count(&self) -> Count {
        match self {
            Self::Recovered { .. } => Count::Ok,
            _ => Count::Surprise(format!("breaker: {self}")),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Recovered { failed_fast } => write!(
                f,
                "{failed_fast} call(s) failed fast while the breaker was open; one probe closed it once the server recovered."
            ),
            Self::SucceededWhileDown(n) => {
                write!(
                    f,
                    "{n} call(s) succeeded against a server failing everything"
                )
            }
            Self::NeverOpened => f.write_str("no call failed fast: the breaker never opened"),
            Self::NeverDue => write!(
                f,
                "the breaker did not come due for a probe within {} s",
                PROBE_WAIT_MAX.as_secs()
            ),
            Self::NotRecovered(e) => write!(f, "did not recover: {e}"),
            Self::NotClosed(state) => write!(f, "the probe succeeded but the breaker is {state}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::trace::Outcome;

    fn recovered() -> Observed {
        Observed {
            succeeded_while_down: 0,
            failed_fast: 4,
            probe_due: true,
            recovery: Ok(42.0),
            state: State::Closed,
        }
    }

    #[test]
    fn a_breaker_that_failed_fast_and_closed_recovered() {
        let verdict = judge(&recovered());
        assert_eq!(verdict, Verdict::Recovered { failed_fast: 4 });
        assert_eq!(verdict.count(), Count::Ok);
        assert!(verdict.to_string().starts_with("4 call(s) failed fast"));
    }

    #[test]
    fn every_other_ending_is_a_surprise() {
        let open = CallError::new(
            Code::Unavailable,
            "circuit open",
            Cause::CircuitOpen { probe_in_ms: 10 },
            Outcome::NotApplied,
        );
        let table = [
            (
                Observed {
                    succeeded_while_down: 1,
                    ..recovered()
                },
                Verdict::SucceededWhileDown(1),
            ),
            (
                Observed {
                    failed_fast: 0,
                    ..recovered()
                },
                Verdict::NeverOpened,
            ),
            (
                Observed {
                    probe_due: false,
                    ..recovered()
                },
                Verdict::NeverDue,
            ),
            (
                Observed {
                    recovery: Err(open.clone()),
                    state: State::Open,
                    ..recovered()
                },
                Verdict::NotRecovered(open),
            ),
            (
                Observed {
                    state: State::HalfOpen,
                    ..recovered()
                },
                Verdict::NotClosed(State::HalfOpen),
            ),
        ];
        for (seen, verdict) in table {
            let judged = judge(&seen);
            assert_eq!(judged, verdict, "{seen:?}");
            assert_eq!(
                judged.count(),
                Count::Surprise(format!("breaker: {verdict}")),
                "{seen:?}"
            );
        }
    }
}
