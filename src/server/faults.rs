//! Seeded fault injection, off by default: the same faults on a real socket
//! (`abacus serve --fail-rate ...`) and inside the simulation.
//!
//! Each request draws its whole fault plan up front, always the same number
//! of draws in the same order, so a seed fixes the sequence of plans no
//! matter which faults are switched on.

use std::{
    fmt,
    ops::RangeInclusive,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Which faults to inject, with what probability.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// Probability of answering UNAVAILABLE before applying.
    pub fail_rate: f64,
    /// Extra handling delay, drawn uniformly from this range (ms).
    pub delay_ms: RangeInclusive<u64>,
    /// Probability of applying the request and then failing the response,
    /// the partial failure that makes blind retries dangerous.
    pub drop_after_apply_rate: f64,
    /// Seed of the fault RNG.
    pub seed: u64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            fail_rate: 0.0,
            delay_ms: 0..=0,
            drop_after_apply_rate: 0.0,
            seed: 0,
        }
    }
}

/// A fault configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultConfigError {
    /// A rate outside `[0, 1]`.
    #[error("{name} must be a probability between 0 and 1, got {value}")]
    Rate {
        /// Flag name.
        name: &'static str,
        /// Value given.
        value: f64,
    },
    /// A delay range whose start is after its end.
    #[error("delay range {start}..{end} is empty: the first number must not exceed the second")]
    DelayRange {
        /// Start (ms).
        start: u64,
        /// End (ms).
        end: u64,
    },
    /// A delay above the cap.
    #[error("delay of {0} ms is above the limit of 600000 ms")]
    DelayTooLong(u64),
}

/// Upper bound on an injected delay: a fault must not hold a request forever.
pub const DELAY_MS_MAX: u64 = 600_000;

// A duplicate may wait for a first execution as long as its injected delay
// can last: the store's join limit must cover the longest delay.
const _: () = assert!(crate::store::dedup::config::JOIN_WAIT_MS_LIMIT >= DELAY_MS_MAX);

impl FaultConfig {
    /// Checks rates and ranges.
    pub fn validate(&self) -> Result<(), FaultConfigError> {
        for (name, value) in [
            ("fail-rate", self.fail_rate),
            ("drop-after-apply-rate", self.drop_after_apply_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(FaultConfigError::Rate { name, value });
            }
        }
        let (start, end) = (*self.delay_ms.start(), *self.delay_ms.end());
        if start > end {
            return Err(FaultConfigError::DelayRange { start, end });
        }
        if end > DELAY_MS_MAX {
            return Err(FaultConfigError::DelayTooLong(end));
        }
        Ok(())
    }

    /// True when no fault can ever fire.
    pub fn is_off(&self) -> bool {
        self.fail_rate == 0.0 && *self.delay_ms.end() == 0 && self.drop_after_apply_rate == 0.0
    }
}

impl fmt::Display for FaultConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "fail-rate={} delay-ms={}..={} drop-after-apply-rate={} seed={}",
            self.fail_rate,
            self.delay_ms.start(),
            self.delay_ms.end(),
            self.drop_after_apply_rate,
            self.seed
        )
    }
}

/// Parses `D` or `A..B` (milliseconds) for `--delay-ms`.
pub fn parse_delay_range(s: &str) -> Result<RangeInclusive<u64>, String> {
    let num = |t: &str| {
        t.trim()
            .parse::<u64>()
            .map_err(|_| format!("{t:?} is not a whole number of milliseconds"))
    };
    match s.split_once("..") {
        Some((a, b)) => Ok(num(a)?..=num(b.trim_start_matches('='))?),
        None => {
            let d = num(s)?;
            Ok(d..=d)
        }
    }
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultPlan {
    /// Wait this long before handling.
    pub delay: Duration,
    /// Answer UNAVAILABLE without applying.
    pub fail: bool,
    /// Apply, then fail the response.
    pub drop_after_apply: bool,
}

/// Turns fault injection off at run time, e.g. when a simulation enters its
/// liveness phase ("faults have stopped; now every client must progress").
/// Clones share one switch. On by default.
#[derive(Debug, Clone)]
pub struct FaultSwitch(Arc<AtomicBool>);

impl Default for FaultSwitch {
    fn default() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
}

impl FaultSwitch {
    /// Stops every fault from now on.
    pub fn turn_off(&self) {
        self.0.store(false, Ordering::Relaxed);
    }

    /// True while faults may fire.
    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The seeded source of fault plans.
#[derive(Debug)]
pub struct Faults {
    config: FaultConfig,
    switch: FaultSwitch,
    // A std Mutex: held only for three RNG draws, never across an await.
    rng: Mutex<ChaCha8Rng>,
}

impl Faults {
    /// Faults drawn from `config.seed`, until `switch` is turned off.
    pub fn new(config: FaultConfig, switch: FaultSwitch) -> Self {
        let rng = Mutex::new(ChaCha8Rng::seed_from_u64(config.seed));
        Self {
            config,
            switch,
            rng,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &FaultConfig {
        &self.config
    }

    /// Draws the next request's plan. Always three draws, whatever is on.
    pub fn plan(&self) -> FaultPlan {
        if self.config.is_off() || !self.switch.is_on() {
            return FaultPlan::default();
        }
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let fail_draw: f64 = rng.random();
        let delay_ms = rng.random_range(self.config.delay_ms.clone());
        let drop_draw: f64 = rng.random();
        FaultPlan {
            delay: Duration::from_millis(delay_ms),
            fail: fail_draw < self.config.fail_rate,
            drop_after_apply: drop_draw < self.config.drop_after_apply_rate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_follow_the_seed_and_the_rates() {
        let cfg = FaultConfig {
            fail_rate: 0.3,
            delay_ms: 5..=10,
            drop_after_apply_rate: 0.2,
            seed: 7,
        };
        let a: Vec<_> = (0..200)
            .map({
                let f = Faults::new(cfg.clone(), FaultSwitch::default());
                move |_| f.plan()
            })
            .collect();
        let b: Vec<_> = (0..200)
            .map({
                let f = Faults::new(cfg.clone(), FaultSwitch::default());
                move |_| f.plan()
            })
            .collect();
        assert_eq!(a, b, "same seed, same plans");
        let fails = a.iter().filter(|p| p.fail).count();
        assert!(
            (30..=90).contains(&fails),
            "fail count {fails} far from 30%"
        );
        assert!(
            a.iter()
                .all(|p| (5..=10).contains(&(p.delay.as_millis() as u64)))
        );
        assert!(a.iter().any(|p| p.drop_after_apply));
        let switch = FaultSwitch::default();
        let f = Faults::new(cfg, switch.clone());
        switch.turn_off();
        assert!((0..50).all(|_| f.plan() == FaultPlan::default()));
    }

    #[test]
    fn off_by_default_and_validated() {
        let f = Faults::new(FaultConfig::default(), FaultSwitch::default());
        assert_eq!(f.plan(), FaultPlan::default());
        let bad = FaultConfig {
            fail_rate: 1.5,
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("fail-rate")
        );
        let bad = FaultConfig {
            #[allow(clippy::reversed_empty_ranges)]
            delay_ms: 9..=3,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn delay_ranges_parse() {
        assert_eq!(parse_delay_range("50"), Ok(50..=50));
        assert_eq!(parse_delay_range("10..200"), Ok(10..=200));
        assert_eq!(parse_delay_range("10..=200"), Ok(10..=200));
        assert!(parse_delay_range("ten").is_err());
    }
}
