//! Logical calls as the clients' trace shows them, for what judges or
//! measures a call as a whole (`replicas`' bounds, `cascade`'s pure calls,
//! the figures the scenario tests print): one reading of the trace, one
//! notion of an answered call, one percentile.

use std::{collections::BTreeMap, time::Duration};

use abacus::{client::breaker::config::CALLER_CODES, rpc::Method, trace::Event};
use tonic::Code;

use crate::history::{Entry, Record};

/// One logical call as its client's trace shows it.
#[derive(Debug)]
pub struct CallTrace<'a> {
    /// The method called.
    pub method: Method,
    /// Its request ID (empty: none).
    pub request_id: &'a str,
    /// When it started.
    pub started: Duration,
    /// When it finished, and how (`Err` carries the code).
    pub finished: Option<(Duration, Result<(), Code>)>,
    /// Each attempt's endpoint, in order.
    pub endpoints: Vec<&'a str>,
    /// Attempt numbers of the hedges sent.
    pub hedges: Vec<u32>,
}

impl CallTrace<'_> {
    /// How long it took, once finished (answered or not).
    pub fn took(&self) -> Option<Duration> {
        self.finished.map(|(at, _)| at.saturating_sub(self.started))
    }

    /// How long it took to be [`answered`]; `Duration::MAX` for a call
    /// that failed or never finished: it never ended well.
    pub fn latency(&self) -> Duration {
        match self.finished {
            Some((at, result)) if answered(&result) => at.saturating_sub(self.started),
            _ => Duration::MAX,
        }
    }
}

/// True when a call's result is an answer: a reply, or the caller's own
/// error (the library's one table of them) — not a failure of the service.
pub fn answered<T>(result: &Result<T, Code>) -> bool {
    match result {
        Ok(_) => true,
        Err(code) => CALLER_CODES.contains(code),
    }
}

/// Every logical call in `records`, by (client host, call number).
pub fn calls(records: &[Record]) -> BTreeMap<(&str, u64), CallTrace<'_>> {
    let mut calls: BTreeMap<(&str, u64), CallTrace<'_>> = BTreeMap::new();
    for r in records {
        let Entry::Event(e) = &r.entry else { continue };
        let host = r.host.as_str();
        match e {
            Event::CallStarted {
                call,
                method,
                request_id,
                ..
            } => {
                calls.insert(
                    (host, *call),
                    CallTrace {
                        method: *method,
                        request_id,
                        started: r.at,
                        finished: None,
                        endpoints: Vec::new(),
                        hedges: Vec::new(),
                    },
                );
            }
            Event::AttemptStarted { call, endpoint, .. } => {
                if let Some(c) = calls.get_mut(&(host, *call)) {
                    c.endpoints.push(endpoint);
                }
            }
            Event::HedgeSent { call, attempt, .. } => {
                if let Some(c) = calls.get_mut(&(host, *call)) {
                    c.hedges.push(*attempt);
                }
            }
            Event::CallFinished { call, result, .. } => {
                if let Some(c) = calls.get_mut(&(host, *call)) {
                    c.finished = Some((r.at, result.as_ref().map(drop).map_err(|code| *code)));
                }
            }
            _ => {}
        }
    }
    calls
}

/// The `percent`th percentile of `sorted` (ascending) by nearest rank:
/// the smallest value at or above `percent` % of them; `None` when empty.
pub fn nearest_rank<T>(sorted: &[T], percent: usize) -> Option<&T> {
    let rank = (sorted.len() * percent).div_ceil(100);
    rank.checked_sub(1).and_then(|i| sorted.get(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_is_the_smallest_value_at_or_above_the_share() {
        let hundred: Vec<u32> = (1..=100).collect();
        assert_eq!(nearest_rank(&hundred, 99), Some(&99));
        assert_eq!(nearest_rank(&hundred, 100), Some(&100));
        assert_eq!(nearest_rank(&[7, 8], 99), Some(&8));
        assert_eq!(nearest_rank(&[7], 50), Some(&7));
        assert_eq!(nearest_rank::<u32>(&[], 99), None);
    }

    #[test]
    fn an_answer_is_a_reply_or_the_callers_own_error() {
        assert!(answered(&Ok::<(), Code>(())));
        assert!(answered(&Err::<(), _>(Code::InvalidArgument)));
        assert!(!answered(&Err::<(), _>(Code::Unavailable)));
    }
}
