//! One retained dedup record, packed into 48 bytes whatever the request
//! ID's length (the size is checked at compile time below).
//!
//! | bytes | field |
//! |---:|---|
//! | 16 | the request's [`IdDigest`] (128 bits: see [`super::key`]) |
//! | 8 | the payload fingerprint |
//! | 8 | the outcome's number: the value applied, or the register's value when refused for overflow |
//! | 8 | the commit instant in nanoseconds since the store's epoch (62 bits, ±73 years), and the outcome's kind (2 bits) |
//! | 4 | the low 32 bits of the sequence number |
//! | 4 | the next record of the same owner (newer), or of the free list |
//!
//! Two things a record does *not* hold, because the store derives them:
//! - the full sequence number: every retained record is among the last
//!   2³² numbered (the store evicts any older, see
//!   [`SEQ_HORIZON`]), so its low 32 bits and the next number to give
//!   determine it;
//! - its owner: records leave only from the front of their owner's list
//!   (an owner's oldest is always the one to go, whether to the TTL or to
//!   make room), so the store always reaches a record through its owner.

use super::{IdDigest, StoredOutcome};

/// No record: the end of an owner's list, or of the free list.
pub(super) const NIL: u32 = u32::MAX;

/// A record is retained only while fewer than this many records were
/// numbered after it, so that 32 bits of its sequence number name it.
/// Unreachable in practice (2³² inserts within one TTL of at most a day
/// is 49,710 new IDs per second, all day, with one record pinned); should
/// it happen, the record is evicted early, as if to make room.
pub(super) const SEQ_HORIZON: u64 = 1 << 32;

/// Commit instants are clamped to what 62 bits hold.
const STAMP_MAX: i64 = i64::MAX >> 2;
const STAMP_MIN: i64 = i64::MIN >> 2;

/// The outcome's kind, in the two low bits of `stamp`.
const APPLIED: i64 = 0;
const OVERFLOW: i64 = 1;
const TOO_MANY_REGISTERS: i64 = 2;

/// See the module documentation.
#[derive(Debug, Clone, Copy)]
pub(super) struct Record {
    pub(super) key: IdDigest,
    pub(super) fingerprint: u64,
    /// The outcome's number (0 for an outcome without one).
    number: f64,
    /// `committed_ns << 2 | kind`.
    stamp: i64,
    seq32: u32,
    /// The owner's next (newer) record, or the next free slot.
    pub(super) next: u32,
}

const _: () = assert!(std::mem::size_of::<Record>() == 48);

impl Record {
    pub(super) fn new(
        key: IdDigest,
        fingerprint: u64,
        outcome: StoredOutcome,
        committed_ns: i64,
        seq: u64,
    ) -> Self {
        let (kind, number) = match outcome {
            StoredOutcome::Applied { value } => (APPLIED, value),
            StoredOutcome::RegisterOverflow { current } => (OVERFLOW, current),
            StoredOutcome::TooManyRegisters => (TOO_MANY_REGISTERS, 0.0),
        };
        Self {
            key,
            fingerprint,
            number,
            stamp: (committed_ns.clamp(STAMP_MIN, STAMP_MAX) << 2) | kind,
            seq32: seq as u32,
            next: NIL,
        }
    }

    pub(super) fn outcome(&self) -> StoredOutcome {
        match self.stamp & 3 {
            APPLIED => StoredOutcome::Applied { value: self.number },
            OVERFLOW => StoredOutcome::RegisterOverflow {
                current: self.number,
            },
            // `new` writes no other kind.
            _ => StoredOutcome::TooManyRegisters,
        }
    }

    /// Nanoseconds from the store's epoch to the commit.
    pub(super) fn committed_ns(&self) -> i64 {
        self.stamp >> 2
    }

    /// The full sequence number, given the next one the store will give:
    /// the largest number below `next_seq` with this record's low 32 bits
    /// (exact for a retained record, see [`SEQ_HORIZON`]).
    pub(super) fn seq(&self, next_seq: u64) -> u64 {
        let last = next_seq.wrapping_sub(1);
        last.wrapping_sub(u64::from((last as u32).wrapping_sub(self.seq32)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_at_their_limits() {
        let key = IdDigest(u128::MAX - 7);
        for outcome in [
            StoredOutcome::Applied { value: -0.0 },
            StoredOutcome::Applied { value: f64::MAX },
            StoredOutcome::RegisterOverflow { current: 1e308 },
            StoredOutcome::TooManyRegisters,
        ] {
            for ns in [0, 1, -1, STAMP_MAX, STAMP_MIN, 123_456_789_012] {
                let r = Record::new(key, u64::MAX, outcome, ns, 5);
                assert_eq!(r.outcome(), outcome);
                // Bitwise, so -0.0 stays -0.0.
                if let StoredOutcome::Applied { value } = outcome {
                    assert_eq!(r.number.to_bits(), value.to_bits());
                }
                assert_eq!(r.committed_ns(), ns);
                assert_eq!((r.key, r.fingerprint), (key, u64::MAX));
            }
        }
        // Out of range instants clamp (the far past or future, not a wrap).
        let r = Record::new(key, 0, StoredOutcome::TooManyRegisters, i64::MAX, 0);
        assert_eq!(
            (r.committed_ns(), r.outcome()),
            (STAMP_MAX, StoredOutcome::TooManyRegisters)
        );
        let r = Record::new(key, 0, StoredOutcome::TooManyRegisters, i64::MIN, 0);
        assert_eq!(r.committed_ns(), STAMP_MIN);
    }

    #[test]
    fn sequence_numbers_are_recovered_within_the_horizon() {
        let applied = StoredOutcome::Applied { value: 1.0 };
        for seq in [0, 1, u32::MAX as u64 - 1, u32::MAX as u64, 1 << 32, 5 << 40] {
            let r = Record::new(IdDigest(1), 0, applied, 0, seq);
            for next in [seq + 1, seq + 2, seq + 1_000, seq + SEQ_HORIZON] {
                assert_eq!(r.seq(next), seq, "seq {seq}, next {next}");
            }
            // One past the horizon: the store never lets this happen.
            assert_ne!(r.seq(seq + SEQ_HORIZON + 1), seq);
        }
    }
}
