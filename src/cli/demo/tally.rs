//! What the demo saw: a running count of successes, expected failures and
//! surprises, printed as the summary. A surprise makes `abacus demo` exit
//! non-zero.

use std::fmt::Display;

use crate::client::CallError;

/// How one observation counts in the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Count {
    /// The call succeeded, or the section showed what it promises.
    Ok,
    /// A failure the demo means to show (a refusal, a double apply).
    Expected,
    /// Something the section's promise rules out.
    Surprise(String),
}

/// The running count.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) ok: u32,
    pub(super) expected_errors: u32,
    pub(super) surprises: Vec<String>,
}

impl Tally {
    /// Adds one observation.
    pub(super) fn count(&mut self, count: Count) {
        match count {
            Count::Ok => self.ok += 1,
            Count::Expected => self.expected_errors += 1,
            Count::Surprise(what) => self.surprises.push(what),
        }
    }

    /// A call that must succeed.
    pub(super) fn expect_ok<T: Display>(&mut self, what: &str, r: Result<T, CallError>) {
        match r {
            Ok(v) => {
                println!("  {what} = {v}");
                self.count(Count::Ok);
            }
            Err(e) => {
                println!("  {what} FAILED: {e}");
                self.count(Count::Surprise(format!("{what}: {e}")));
            }
        }
    }

    /// A call that must fail.
    pub(super) fn expect_err<T: std::fmt::Debug>(&mut self, what: &str, r: Result<T, CallError>) {
        match r {
            Err(e) => {
                println!("  {what} -> error, as expected: {e}");
                self.count(Count::Expected);
            }
            Ok(v) => {
                println!("  {what} unexpectedly succeeded: {v:?}");
                self.count(Count::Surprise(format!("{what} should have failed")));
            }
        }
    }
}
