//! What the balancer knows about one endpoint, and what it shows of it:
//! the health a watch last reported, the attempts it routed there, and a
//! snapshot for the CLI, the benchmark and tests.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::{
    client::breaker::State,
    rpc::{HealthScope, Serving},
};

/// The health a watch last reported, per scope. Written by the endpoint's
/// watch task, read by every pick: atomics, so a pick takes no extra lock.
#[derive(Debug, Default)]
pub struct HealthCell([AtomicU8; 2]);

impl HealthCell {
    /// The last status for `scope` (`Unknown` until a watch reports).
    pub fn get(&self, scope: HealthScope) -> Serving {
        match self.0[scope.index()].load(Ordering::Relaxed) {
            1 => Serving::Serving,
            2 => Serving::NotServing,
            _ => Serving::Unknown,
        }
    }

    /// Sets the status for `scope`; returns the previous one.
    pub fn set(&self, scope: HealthScope, status: Serving) -> Serving {
        let v = match status {
            Serving::Unknown => 0,
            Serving::Serving => 1,
            Serving::NotServing => 2,
        };
        match self.0[scope.index()].swap(v, Ordering::Relaxed) {
            1 => Serving::Serving,
            2 => Serving::NotServing,
            _ => Serving::Unknown,
        }
    }
}

/// How the attempts the balancer routed to an endpoint ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointCounters {
    /// Attempts sent (a refusal by its open breaker is not one).
    pub attempts: u64,
    /// Attempts the endpoint answered (a reply, or a caller error such as
    /// INVALID_ARGUMENT: it was up and said so).
    pub answered: u64,
    /// Attempts that failed otherwise (connection refused or lost,
    /// UNAVAILABLE, timeouts…).
    pub failed: u64,
    /// Attempts cancelled before they ended (a hedge that lost, a caller
    /// that went away).
    pub cancelled: u64,
}

/// One endpoint, as the balancer sees it at an instant.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSnapshot {
    /// Its name (the address it was configured or resolved as).
    pub name: String,
    /// Its breaker's state (`None` without a breaker).
    pub breaker: Option<State>,
    /// Health per scope, in [`HealthScope::ALL`] order.
    pub health: [Serving; 2],
    /// Peak-EWMA latency estimate in ms (`None` before its first reply).
    pub latency_ms: Option<f64>,
    /// Attempts in flight.
    pub pending: u32,
    /// What happened to the attempts sent there.
    pub counters: EndpointCounters,
}

impl EndpointSnapshot {
    /// True when it takes calls needing `scope`: its breaker is not open
    /// and its health does not say NOT_SERVING. (An open breaker whose
    /// probe is due still reads open here until the probe goes out.)
    pub fn in_rotation(&self, scope: HealthScope) -> bool {
        self.breaker != Some(State::Open) && self.health[scope.index()].admits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_cells_start_unknown_and_report_changes() {
        let cell = HealthCell::default();
        assert_eq!(cell.get(HealthScope::Registers), Serving::Unknown);
        assert_eq!(
            cell.set(HealthScope::Registers, Serving::NotServing),
            Serving::Unknown
        );
        assert_eq!(cell.get(HealthScope::Registers), Serving::NotServing);
        assert_eq!(cell.get(HealthScope::Calculator), Serving::Unknown);
        assert_eq!(
            cell.set(HealthScope::Registers, Serving::Serving),
            Serving::NotServing
        );
    }
}
