//! Section 4: retries against a server that refuses half the requests
//! before applying them.

use std::fmt;

use super::{
    embedded::{faulty_server, narrated_client},
    tally::{Count, Tally},
};
use crate::{
    client::{CallError, ClientConfig},
    server::{FaultConfig, FaultSwitch},
};

/// Runs the section: three additions through the user's retry policy, with
/// the breaker off (section 6 shows it).
pub(super) async fn section(
    t: &mut Tally,
    seed: u64,
    policy: &ClientConfig,
) -> std::io::Result<()> {
    println!("\n4. Retries: a server that refuses 50% of requests (before applying them)");
    let flaky = faulty_server(
        FaultConfig {
            fail_rate: 0.5,
            seed,
            ..FaultConfig::default()
        },
        FaultSwitch::default(),
    )
    .await?;
    let client = narrated_client(
        flaky.addr,
        ClientConfig {
            breaker: None,
            ..policy.clone()
        },
    );
    for (a, b) in [(1.0, 2.0), (3.0, 4.0), (5.0, 6.0)] {
        println!("   add({a}, {b}):");
        let verdict = judge(a + b, client.add(a, b).await);
        println!("    add({a}, {b}){verdict}");
        t.count(verdict.count());
    }
    Ok(())
}

/// How one addition against the flaky server ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Verdict {
    /// It succeeded, after as many retries as it took, with the right sum.
    Won(f64),
    /// The retry policy gave up (its attempts or budget ran out): the
    /// refusals reached the caller, as `--attempts 1` makes likely. Not a
    /// surprise: the policy allowed it.
    GaveUp(CallError),
    /// It succeeded with a wrong sum.
    Wrong {
        /// The sum the server returned.
        got: f64,
        /// The right one.
        expected: f64,
    },
}

/// Judges one addition whose right sum is `expected`.
pub(super) fn judge(expected: f64, result: Result<f64, CallError>) -> Verdict {
    match result {
        Ok(got) if got == expected => Verdict::Won(got),
        Ok(got) => Verdict::Wrong { got, expected },
        Err(e) => Verdict::GaveUp(e),
    }
}

impl Verdict {
    /// How it counts in the summary.
    pub(super) fn count(&self) -> Count {
        match self {
            Self::Won(_) => Count::Ok,
            Self::GaveUp(_) => Count::Expected,
            Self::Wrong { got, expected } => {
                Count::Surprise(format!("retries: a sum of {expected} came back as {got}"))
            }
        }
    }
}

/// Follows the call's text: `add(1, 2)` + ` = 3`.
impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Won(v) => write!(f, " = {v}"),
            Self::GaveUp(e) => write!(f, ": the retry policy gave up: {e}"),
            Self::Wrong { got, expected } => write!(f, " = {got}, WRONG: expected {expected}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::{client::Cause, trace::Outcome};

    fn refused() -> CallError {
        CallError::new(
            Code::Unavailable,
            "injected fault",
            Cause::Status,
            Outcome::NotApplied,
        )
    }

    #[test]
    fn each_ending_has_its_verdict_and_count() {
        let table = [
            (Ok(11.0), Verdict::Won(11.0), Count::Ok, " = 11"),
            (
                Err(refused()),
                Verdict::GaveUp(refused()),
                Count::Expected,
                ": the retry policy gave up: ",
            ),
            (
                Ok(12.0),
                Verdict::Wrong {
                    got: 12.0,
                    expected: 11.0,
                },
                Count::Surprise("retries: a sum of 11 came back as 12".into()),
                " = 12, WRONG",
            ),
        ];
        for (result, verdict, count, text) in table {
            let judged = judge(11.0, result);
            assert_eq!(judged, verdict);
            assert_eq!(judged.count(), count);
            assert!(judged.to_string().starts_with(text), "{judged}");
        }
    }
}
