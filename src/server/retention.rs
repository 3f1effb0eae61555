//! The warning an operator needs when dedup retention is shorter than the
//! TTL promises: records evicted inside their TTL to make room (the store
//! at `--dedup-entries-max`, or a client at its
//! `--dedup-entries-per-client-max`), each a request whose retry would
//! apply again.
//!
//! The ledger counts them ([`StatsView::dedup_evictions_early`]); a task
//! reads the count every [`REPORT_INTERVAL`] and writes one WARN line when
//! it grew, so the log gets at most one line per interval however fast
//! records go (the metric `abacus_dedup_evictions_early_total` has every
//! one). Reading the count off the request path means no lock, no
//! backend and no front ever logs per eviction.

use std::{sync::Arc, time::Duration};

use crate::{
    server::tally::REPORT_INTERVAL,
    store::{DedupConfig, Ledger, StatsView},
};

/// What the last reading said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EarlyEvictions {
    seen: u64,
}

impl EarlyEvictions {
    /// The records evicted early since the last reading, if any.
    pub fn since_last(&mut self, stats: &StatsView) -> Option<u64> {
        let now = stats.dedup_evictions_early;
        // A count that went down (a reloaded store) restarts the reading.
        let grew = now.checked_sub(self.seen).filter(|&n| n > 0);
        self.seen = now;
        grew
    }
}

/// Reads `ledger`'s counters every interval and warns when records were
/// evicted inside their TTL. Runs until aborted.
pub async fn warn_on_early_evictions(ledger: Arc<dyn Ledger>, dedup: DedupConfig) {
    warn_every(ledger, dedup, REPORT_INTERVAL).await;
}

async fn warn_every(ledger: Arc<dyn Ledger>, dedup: DedupConfig, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut early = EarlyEvictions::default();
    loop {
        tick.tick().await;
        let Ok(stats) = ledger.stats().await else {
            continue;
        };
        if let Some(n) = early.since_last(&stats) {
            tracing::warn!(
                evicted_early = n,
                interval_s = interval.as_secs(),
                dedup_entries_max = dedup.entries_max,
                dedup_entries_per_client_max = dedup.entries_per_client_max(),
                dedup_ttl_ms = dedup.ttl_ms,
                "dedup records evicted before their TTL to make room: a retry of any of them \
                 would apply again. The store is full, or a client holds its share: raise \
                 --dedup-entries-max (or --dedup-entries-per-client-max), or shorten clients' \
                 retry windows"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_growth_is_reported() {
        let at = |n| StatsView {
            dedup_evictions_early: n,
            ..StatsView::default()
        };
        let mut e = EarlyEvictions::default();
        assert_eq!(e.since_last(&at(0)), None);
        assert_eq!(e.since_last(&at(5)), Some(5));
        assert_eq!(e.since_last(&at(5)), None);
        assert_eq!(e.since_last(&at(12)), Some(7));
        assert_eq!(e.since_last(&at(3)), None, "a reloaded store restarts");
        assert_eq!(e.since_last(&at(4)), Some(1));
    }
}
