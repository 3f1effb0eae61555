//! What a dedup record is keyed by and checked against: the request ID
//! (validated, because it is peer input that ends up in memory, on disk and
//! in logs) and the payload fingerprint.
//!
//! # Why a fingerprint and not the payload
//! A record must notice an ID reused for a *different* request, so it needs
//! something of the payload. Storing the payload itself would cost up to 64
//! bytes of register name plus an allocation per record; a 64-bit hash costs
//! 8 bytes, inline, whatever the register name, which keeps the per-record
//! cost small and predictable (see `benches/dedup.rs`). What is lost: the
//! error for a reused ID cannot say what the first payload was, and two
//! different payloads with the same fingerprint (probability 2^-64 for a
//! given pair) would be taken for the same request. Only the client that
//! chose the ID can be confused that way, never another client.
//!
//! # Why this hash
//! The fingerprint is persisted in durable mode and compared after a restart,
//! possibly by another build, so it must be *stable*: defined here byte by
//! byte (FNV-1a, 64-bit), not `std`'s `DefaultHasher`, whose algorithm may
//! change between Rust releases. Changing it requires a new on-disk format
//! version.

use crate::error::ServiceError;

/// Longest request ID accepted, in bytes. Enough for any UUID or ULID with a
/// client prefix; bounds what one record can cost.
pub const REQUEST_ID_BYTES_MAX: usize = 128;

/// Checks a non-empty request ID: at most [`REQUEST_ID_BYTES_MAX`] bytes, no
/// control characters (IDs are printed in logs and traces, one per line).
///
/// ```
/// use abacus::store::dedup::validate_request_id;
/// assert!(validate_request_id("client-7/call-42").is_ok());
/// assert!(validate_request_id("a\nb").is_err());
/// assert!(validate_request_id(&"x".repeat(129)).is_err());
/// ```
pub fn validate_request_id(request_id: &str) -> Result<(), ServiceError> {
    if request_id.len() > REQUEST_ID_BYTES_MAX {
        return Err(ServiceError::InvalidRequestId("longer than 128 bytes"));
    }
    if request_id.chars().any(char::is_control) {
        return Err(ServiceError::InvalidRequestId(
            "contains control characters",
        ));
    }
    Ok(())
}

/// Stable 64-bit fingerprint of an `Accumulate` payload: FNV-1a over a
/// method tag, the register name's length and bytes, and the delta's IEEE
/// bits. Deltas compare bitwise, so `0.0` and `-0.0` are different payloads
/// (they are different requests as far as the client is concerned).
///
/// ```
/// use abacus::store::dedup::fingerprint;
/// assert_eq!(fingerprint("x", 1.0), fingerprint("x", 1.0));
/// assert_ne!(fingerprint("x", 1.0), fingerprint("x", 2.0));
/// assert_ne!(fingerprint("x", 1.0), fingerprint("y", 1.0));
/// ```
pub fn fingerprint(register: &str, delta: f64) -> u64 {
    let mut h = Fnv1a::new();
    // The tag keeps fingerprints of different future mutating RPCs apart;
    // the length prefix keeps ("ab", ..) and ("a", "b"..) apart.
    h.write(b"abacus.v1.Accumulate\0");
    h.write(&(register.len() as u64).to_le_bytes());
    h.write(register.as_bytes());
    h.write(&delta.to_bits().to_le_bytes());
    h.finish()
}

/// FNV-1a, 64-bit: tiny, stable, and good enough to tell payloads apart (it
/// is not asked to resist an adversary: see the module doc).
struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Self(Self::OFFSET)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_across_builds() {
        // Pinned values: these are persisted by durable mode, so a change
        // here is an on-disk format change and must bump its version.
        assert_eq!(fingerprint("x", 1.0), 0x8116_31d4_37b4_719d);
        // FNV-1a's published test vector.
        let mut h = Fnv1a::new();
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fingerprint("", 0.0), fingerprint("", 0.0));
        assert_ne!(fingerprint("x", 0.0), fingerprint("x", -0.0));
        assert_ne!(fingerprint("ab", 1.0), fingerprint("a", 1.0));
    }

    #[test]
    fn request_ids_are_validated() {
        let check = |id: &str, ok: bool| {
            assert_eq!(validate_request_id(id).is_ok(), ok, "{id:?}");
        };
        check("0190b5a4-7c1e-7d3a-9f00-5b1e2c3d4e5f", true);
        check(&"x".repeat(REQUEST_ID_BYTES_MAX), true);
        check(&"x".repeat(REQUEST_ID_BYTES_MAX + 1), false);
        check("tab\there", false);
        check("nul\0", false);
        check("\u{85}next-line", false);
        check("ünïcödé", true);
    }
}
