//! [`Tally`]: counts something that can happen a million times a second
//! (a shed call, a refused connection, a failed accept) and says when to
//! write a line about it, so the log gets one line per interval with a
//! count instead of one line per occurrence. A log that grows with the
//! attack is itself an attack: it fills disks, and a slow log sink stalls
//! whoever writes to it.
//!
//! A plain struct with the clock passed in, so its decisions are tested
//! without time passing; callers hold it behind a short-lived lock.

use std::time::Duration;

use tokio::time::Instant;

/// How often a tallied event is reported at most.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Counts occurrences; reports the first at once and then at most once per
/// interval, with the count since the last report.
#[derive(Debug, Clone)]
pub struct Tally {
    interval: Duration,
    last_report: Option<Instant>,
    pending: u64,
    total: u64,
}

/// What a report says: `count` occurrences over `window` (`None` for the
/// first report, which opens the first window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Occurrences since the previous report, this one included.
    pub count: u64,
    /// Time since the previous report.
    pub window: Option<Duration>,
}

impl Tally {
    /// A tally reporting at most once per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_report: None,
            pending: 0,
            total: 0,
        }
    }

    /// Counts one occurrence at `now`; returns a report when a line is due.
    pub fn record(&mut self, now: Instant) -> Option<Report> {
        self.pending += 1;
        self.total += 1;
        let window = match self.last_report {
            Some(last) if now.saturating_duration_since(last) < self.interval => return None,
            Some(last) => Some(now.saturating_duration_since(last)),
            None => None,
        };
        self.last_report = Some(now);
        Some(Report {
            count: std::mem::take(&mut self.pending),
            window,
        })
    }

    /// Occurrences not reported yet (e.g. for a last line at shutdown);
    /// they count as reported afterwards.
    pub fn take_pending(&mut self) -> u64 {
        std::mem::take(&mut self.pending)
    }

    /// Occurrences ever counted.
    pub fn total(&self) -> u64 {
        self.total
    }
}

impl Default for Tally {
    fn default() -> Self {
        Self::new(REPORT_INTERVAL)
    }
}

impl std::fmt::Display for Report {
    /// `12345 in the last 10 s`, or `1` for the first of a burst.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.window {
            Some(w) => write!(f, "{} in the last {} s", self.count, w.as_secs()),
            None => write!(f, "{}", self.count),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_at_once_then_one_report_per_interval_with_the_count() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut tally = Tally::new(s(10));
        assert_eq!(
            tally.record(t0),
            Some(Report {
                count: 1,
                window: None
            })
        );
        for i in 1..=999 {
            assert_eq!(tally.record(t0 + Duration::from_millis(i * 9)), None);
        }
        assert_eq!(
            tally.record(t0 + s(10)),
            Some(Report {
                count: 1000,
                window: Some(s(10))
            })
        );
        // Quiet for a minute: the next one is reported at once.
        let later = tally.record(t0 + s(70)).unwrap();
        assert_eq!(
            (later.count, later.to_string()),
            (1, "1 in the last 60 s".into())
        );
        tally.record(t0 + s(71));
        assert_eq!((tally.take_pending(), tally.take_pending()), (1, 0));
        assert_eq!(tally.total(), 1003);
    }
}
