//! Section 5: partial failure. A server applies `Accumulate`, then loses
//! half the responses; each delivery mode sends the same five increments,
//! and the register's value shows what the mode did with the unknown
//! outcomes.

use std::{fmt, net::SocketAddr};

use super::{
    embedded::{client, faulty_server, narrated_client},
    tally::{Count, Tally},
};
use crate::{
    client::{ClientConfig, Delivery, IdGenerator, Reply},
    server::{FaultConfig, FaultSwitch},
    trace::{EventSink, Outcome},
};

/// Increments each mode sends, one logical call each.
const CALLS: u32 = 5;

/// Runs the section: every mode, whatever `--mode` says, with the rest of
/// the user's policy and the breaker off.
pub(super) async fn section(
    t: &mut Tally,
    seed: u64,
    policy: &ClientConfig,
) -> std::io::Result<()> {
    println!(
        "\n5. Partial failure: a server that applies Accumulate, then loses 50% of the responses"
    );
    let lossy = faulty_server(
        FaultConfig {
            drop_after_apply_rate: 0.5,
            seed,
            ..FaultConfig::default()
        },
        FaultSwitch::default(),
    )
    .await?;
    for mode in [
        Delivery::AtLeastOnce,
        Delivery::AtMostOnce,
        Delivery::ExactlyOnce,
    ] {
        one_mode(t, lossy.addr, mode, seed, policy).await;
    }
    let quiet = client(
        lossy.addr,
        ClientConfig {
            events: EventSink::default(),
            ..policy.clone()
        },
    );
    match quiet.stats().await {
        Ok(s) => println!("\n   server stats: {}", Reply::Stats(s)),
        Err(e) => t.count(Count::Surprise(format!("stats: {e}"))),
    }
    Ok(())
}

/// Sends the increments in one mode into a register named after it, then
/// reads the register and judges.
async fn one_mode(
    t: &mut Tally,
    addr: SocketAddr,
    mode: Delivery,
    seed: u64,
    policy: &ClientConfig,
) {
    let register = mode.name();
    println!("\n   --mode {mode}: {CALLS} × accumulate({register}, 1)");
    let client = narrated_client(
        addr,
        ClientConfig {
            mode,
            breaker: None,
            ..policy.clone()
        },
    );
    let mut seen = Observed::default();
    let ids = IdGenerator::seeded(seed);
    for _ in 0..CALLS {
        // Exactly-once: one ID per logical call (the client would make one
        // itself; the demo makes it here so that it can re-send the call
        // later under the same ID).
        let id = if mode.attaches_request_ids() {
            ids.next_id()
        } else {
            String::new()
        };
        let mut result = client.accumulate_with_id(register, 1.0, &id).await;
        if let Err(e) = &result
            && e.outcome == Outcome::Unknown
            && !id.is_empty()
        {
            println!("     outcome unknown: {e}");
            println!("     -> safe to re-send later under the same id {id}:");
            result = client.accumulate_with_id(register, 1.0, &id).await;
        }
        match result {
            Ok((v, replayed)) => {
                seen.acked += 1;
                seen.replays += u32::from(replayed);
                println!(
                    "     ok -> {v}{}",
                    if replayed { " (replayed)" } else { "" }
                );
            }
            Err(e) => {
                seen.unknown += u32::from(e.outcome == Outcome::Unknown);
                println!("     error: {e}");
            }
        }
    }
    seen.value = match client.get(register).await {
        Ok(v) => v,
        Err(e) => {
            t.count(Count::Surprise(format!("get({register}): {e}")));
            return;
        }
    };
    println!(
        "   => {} acknowledged, {} with unknown outcome; register {register} = {} ({CALLS} intended)",
        seen.acked, seen.unknown, seen.value
    );
    let verdict = judge(mode, seen);
    println!("   => {verdict}");
    t.count(verdict.count());
}

/// What one mode's calls left behind.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Observed {
    /// Calls acknowledged (first answer or a re-send's).
    pub(super) acked: u32,
    /// Calls that ended with an unknown outcome.
    pub(super) unknown: u32,
    /// Acknowledgements replayed from the dedup store.
    pub(super) replays: u32,
    /// The register's value afterwards; each call adds 1.
    pub(super) value: f64,
}

/// What the register says about a mode's promise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Verdict {
    /// At-least-once applied more than was sent: its retries re-sent
    /// requests that had been applied. What the section exists to show.
    DoubleApplied,
    /// At-least-once, and no retry happened to re-send an applied request
    /// (few or no retries allowed).
    NotDoubleApplied,
    /// At-most-once: never more than sent; the unknown outcomes were
    /// reported, not retried.
    AtMostOnce,
    /// Exactly-once: every call acknowledged, the register holds exactly
    /// what was sent.
    ExactlyOnce {
        /// Acknowledgements replayed from the dedup store.
        replays: u32,
    },
    /// Exactly-once, but some calls were never acknowledged (the policy
    /// gave up); none was applied twice, so re-sending them is safe.
    Unacknowledged {
        /// Calls not acknowledged.
        calls: u32,
    },
    /// The register contradicts the mode's promise: an acknowledged
    /// increment missing, or a double apply where the mode rules it out.
    Broken {
        /// The mode.
        mode: Delivery,
        /// What was seen.
        seen: Observed,
    },
}

/// Judges one mode from what its [`CALLS`] increments left behind.
pub(super) fn judge(mode: Delivery, seen: Observed) -> Verdict {
    let sent = f64::from(CALLS);
    // Every acknowledged increment is in the register.
    let none_lost = seen.value >= f64::from(seen.acked);
    match mode {
        Delivery::AtLeastOnce if seen.value > sent => Verdict::DoubleApplied,
        Delivery::AtLeastOnce if none_lost => Verdict::NotDoubleApplied,
        Delivery::AtMostOnce if seen.value <= sent && none_lost => Verdict::AtMostOnce,
        Delivery::ExactlyOnce if seen.value == sent && seen.acked == CALLS => {
            Verdict::ExactlyOnce {
                replays: seen.replays,
            }
        }
        Delivery::ExactlyOnce if seen.value <= sent && none_lost => Verdict::Unacknowledged {
            calls: CALLS - seen.acked,
        },
        _ => Verdict::Broken { mode, seen },
    }
}

impl Verdict {
    /// How it counts in the summary.
    pub(super) fn count(&self) -> Count {
        match self {
            Self::DoubleApplied => Count::Expected,
            Self::Broken { .. } => Count::Surprise(self.to_string()),
            _ => Count::Ok,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DoubleApplied => f.write_str(
                "DOUBLE-APPLIED: retries re-sent requests the server had already applied.",
            ),
            Self::NotDoubleApplied => f.write_str(
                "not double-applied this time: no retry re-sent a request the server had applied.",
            ),
            Self::AtMostOnce => {
                f.write_str("never applied twice; the unknown outcomes are reported, not retried.")
            }
            Self::ExactlyOnce { replays } => write!(
                f,
                "applied exactly once each: {replays} call(s) got their result replayed from the dedup store instead of applying again."
            ),
            Self::Unacknowledged { calls } => write!(
                f,
                "never applied twice; {calls} call(s) unacknowledged: re-sending them under their IDs is safe."
            ),
            Self::Broken { mode, seen } => write!(
                f,
                "BROKEN PROMISE: {mode}: register = {} after {} of {CALLS} acknowledged.",
                seen.value, seen.acked
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(acked: u32, unknown: u32, replays: u32, value: f64) -> Observed {
        Observed {
            acked,
            unknown,
            replays,
            value,
        }
    }

    /// One row: the mode, what was seen, the verdict, how it counts.
    fn check(mode: Delivery, s: Observed, verdict: Verdict, count: Count) {
        let judged = judge(mode, s);
        assert_eq!(judged, verdict, "{mode} {s:?}");
        assert_eq!(judged.count(), count, "{mode} {s:?}");
    }

    #[test]
    fn at_least_once() {
        use Delivery::AtLeastOnce as M;
        check(
            M,
            seen(5, 0, 0, 10.0),
            Verdict::DoubleApplied,
            Count::Expected,
        );
        check(M, seen(5, 0, 0, 5.0), Verdict::NotDoubleApplied, Count::Ok);
        // Without retries some calls fail; what was acknowledged is there.
        check(M, seen(3, 2, 0, 4.0), Verdict::NotDoubleApplied, Count::Ok);
        let lost = seen(5, 0, 0, 4.0);
        check(
            M,
            lost,
            Verdict::Broken {
                mode: M,
                seen: lost,
            },
            Count::Surprise(
                "BROKEN PROMISE: at-least-once: register = 4 after 5 of 5 acknowledged.".into(),
            ),
        );
    }

    #[test]
    fn at_most_once() {
        use Delivery::AtMostOnce as M;
        check(M, seen(4, 1, 0, 5.0), Verdict::AtMostOnce, Count::Ok);
        check(M, seen(4, 1, 0, 4.0), Verdict::AtMostOnce, Count::Ok);
        for broken in [seen(5, 0, 0, 6.0), seen(4, 1, 0, 3.0)] {
            let count = judge(M, broken).count();
            assert!(matches!(count, Count::Surprise(_)), "{broken:?}: {count:?}");
        }
    }

    #[test]
    fn exactly_once() {
        use Delivery::ExactlyOnce as M;
        check(
            M,
            seen(5, 0, 2, 5.0),
            Verdict::ExactlyOnce { replays: 2 },
            Count::Ok,
        );
        check(
            M,
            seen(3, 2, 0, 5.0),
            Verdict::Unacknowledged { calls: 2 },
            Count::Ok,
        );
        check(
            M,
            seen(3, 2, 0, 3.0),
            Verdict::Unacknowledged { calls: 2 },
            Count::Ok,
        );
        // A double apply, even with every call acknowledged, breaks it.
        for broken in [seen(5, 0, 0, 6.0), seen(5, 0, 0, 4.0)] {
            let count = judge(M, broken).count();
            assert!(matches!(count, Count::Surprise(_)), "{broken:?}: {count:?}");
        }
    }

    #[test]
    fn verdicts_say_what_the_register_shows() {
        let table = [
            (Verdict::DoubleApplied, "DOUBLE-APPLIED"),
            (
                Verdict::AtMostOnce,
                "never applied twice; the unknown outcomes are reported",
            ),
            (
                Verdict::ExactlyOnce { replays: 3 },
                "applied exactly once each: 3 call(s) got their result replayed",
            ),
            (
                Verdict::Unacknowledged { calls: 1 },
                "never applied twice; 1 call(s) unacknowledged",
            ),
        ];
        for (verdict, text) in table {
            assert!(verdict.to_string().starts_with(text), "{verdict}");
        }
    }
}
