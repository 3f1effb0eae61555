//! The limits of the dedup store and of in-flight joining, with their
//! defaults and validation. Separate from the store so the CLI and the
//! simulation can build and check a configuration without touching it.

use std::time::Duration;

use crate::core::REGISTERS_MAX;

/// Hard ceiling on [`DedupConfig::entries_max`]: ten million records is
/// roughly 540 MiB (48 bytes a record and 5 an index entry, see
/// [`crate::store::dedup::store`]), past what this service should ever
/// hold in memory.
pub const DEDUP_ENTRIES_LIMIT: usize = 10_000_000;

/// Hard ceiling on [`DedupConfig::ttl_ms`]: one day. Retention is measured on
/// the monotonic clock, and a day keeps every `Instant` sum far from
/// overflow.
pub const DEDUP_TTL_MS_LIMIT: u64 = 24 * 3600 * 1000;

/// Hard ceiling on [`DedupConfig::join_wait_ms_max`]: ten minutes, the
/// longest a first execution can legitimately take (the server's longest
/// injected delay is no longer; its tests check that, since the store does
/// not look at the server).
pub const JOIN_WAIT_MS_LIMIT: u64 = 600_000;

/// Hard ceiling on [`DedupConfig::in_flight_max`].
pub const IN_FLIGHT_LIMIT: usize = 1_000_000;

/// Default of [`DedupConfig::registers_per_client_max`].
pub const REGISTERS_PER_CLIENT_DEFAULT: usize = 1_000;

/// How much the server remembers, for how long, and how long a duplicate
/// waits for an execution already in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupConfig {
    /// Most dedup records retained in all. To make room, the client holding
    /// the most gives up its oldest (see [`crate::store::dedup::store`]).
    /// The default, 1,000,000, takes about 56 MiB (`benches/dedup.rs`), plus
    /// about 150 bytes per client holding records.
    pub entries_max: usize,
    /// Most dedup records one client (an identity, or a peer IP address
    /// without tokens) retains; its own oldest is evicted beyond. `None`:
    /// as `entries_max` (only the fair share of a full store binds). The
    /// bound PostgreSQL applies, per client (see
    /// [`crate::store::postgres`]).
    pub entries_per_client_max: Option<usize>,
    /// How long a record is retained after its commit, in milliseconds. A
    /// retry arriving later executes again, so this must exceed every
    /// client's whole retry window (its overall deadline). Default 10 min.
    pub ttl_ms: u64,
    /// Longest a duplicate waits for an in-flight first execution before it
    /// is answered ABORTED (its own deadline, when shorter, ends the wait
    /// first). Default 30 s.
    pub join_wait_ms_max: u64,
    /// Most request IDs executing (claimed, not yet committed) at once;
    /// beyond that new IDs are refused RESOURCE_EXHAUSTED with pushback.
    /// Bounds the in-flight table whatever clients do. Default 10,000.
    pub in_flight_max: usize,
    /// False switches deduplication off: request IDs are validated but
    /// ignored, so a retried `Accumulate` applies again. Only for showing
    /// what dedup prevents (`abacus serve --no-dedup`, the negative controls
    /// of the simulation). Default true.
    pub enabled: bool,
    /// Most registers one client (see [`crate::store::Caller::quota_key`])
    /// may create; beyond that its `Accumulate` into a new register is
    /// refused RESOURCE_EXHAUSTED until it deletes one. Kept here, with the
    /// store's other per-client bound, because every backend is built from
    /// this configuration. Default 1,000 (a tenth of the server's
    /// [`REGISTERS_MAX`]), at most `REGISTERS_MAX`.
    pub registers_per_client_max: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            entries_max: 1_000_000,
            entries_per_client_max: None,
            ttl_ms: 10 * 60 * 1000,
            join_wait_ms_max: 30_000,
            in_flight_max: 10_000,
            enabled: true,
            registers_per_client_max: REGISTERS_PER_CLIENT_DEFAULT,
        }
    }
}

/// A dedup configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DedupConfigError {
    /// A limit outside its allowed range.
    #[error("{name} must be between {min} and {max}, got {value}")]
    OutOfRange {
        /// Flag name.
        name: &'static str,
        /// Value given.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
}

impl DedupConfig {
    /// Checks every limit against its ceiling. Zero is refused everywhere: a
    /// store that retains nothing would silently turn every retry into a
    /// second execution.
    ///
    /// ```
    /// use abacus::store::dedup::DedupConfig;
    /// assert!(DedupConfig::default().validate().is_ok());
    /// let none = DedupConfig { entries_max: 0, ..DedupConfig::default() };
    /// assert!(none.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), DedupConfigError> {
        let checks = [
            (
                "dedup-entries-max",
                self.entries_max as u64,
                DEDUP_ENTRIES_LIMIT as u64,
            ),
            ("dedup-ttl-ms", self.ttl_ms, DEDUP_TTL_MS_LIMIT),
            (
                "dedup-join-wait-ms-max",
                self.join_wait_ms_max,
                JOIN_WAIT_MS_LIMIT,
            ),
            (
                "dedup-in-flight-max",
                self.in_flight_max as u64,
                IN_FLIGHT_LIMIT as u64,
            ),
            (
                "dedup-entries-per-client-max",
                self.entries_per_client_max.unwrap_or(1) as u64,
                DEDUP_ENTRIES_LIMIT as u64,
            ),
            (
                "registers-per-client-max",
                self.registers_per_client_max as u64,
                REGISTERS_MAX as u64,
            ),
        ];
        for (name, value, max) in checks {
            if !(1..=max).contains(&value) {
                return Err(DedupConfigError::OutOfRange {
                    name,
                    value,
                    min: 1,
                    max,
                });
            }
        }
        Ok(())
    }

    /// [`DedupConfig::ttl_ms`] as a duration, clamped to its ceiling so an
    /// unvalidated config cannot overflow `Instant` arithmetic.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.min(DEDUP_TTL_MS_LIMIT))
    }

    /// The per-client bound in effect: [`DedupConfig::entries_per_client_max`],
    /// at most `entries_max`.
    pub fn entries_per_client_max(&self) -> usize {
        self.entries_per_client_max
            .unwrap_or(self.entries_max)
            .min(self.entries_max)
    }

    /// [`DedupConfig::join_wait_ms_max`] as a duration, clamped likewise.
    pub fn join_wait_max(&self) -> Duration {
        Duration::from_millis(self.join_wait_ms_max.min(JOIN_WAIT_MS_LIMIT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_by_name() {
        let check = |c: DedupConfig, expect: Option<&str>| match (c.validate(), expect) {
            (Ok(()), None) => {}
            (Err(e), Some(name)) => assert!(e.to_string().contains(name), "{e}"),
            (got, want) => panic!("{c:?}: got {got:?}, expected error on {want:?}"),
        };
        let d = DedupConfig::default;
        check(d(), None);
        check(
            DedupConfig {
                entries_max: DEDUP_ENTRIES_LIMIT,
                ..d()
            },
            None,
        );
        check(
            DedupConfig {
                entries_max: DEDUP_ENTRIES_LIMIT + 1,
                ..d()
            },
            Some("dedup-entries-max"),
        );
        check(DedupConfig { ttl_ms: 0, ..d() }, Some("dedup-ttl-ms"));
        check(
            DedupConfig {
                join_wait_ms_max: JOIN_WAIT_MS_LIMIT + 1,
                ..d()
            },
            Some("dedup-join-wait-ms-max"),
        );
        check(
            DedupConfig {
                in_flight_max: 0,
                ..d()
            },
            Some("dedup-in-flight-max"),
        );
    }
}
