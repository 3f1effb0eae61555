//! What a dedup record is keyed by and checked against: a digest of the
//! caller's scope and request ID (the ID is validated first, because it is
//! peer input that ends up in logs), and the payload fingerprint.
//!
//! # Why a digest and not the ID
//! IDs are up to 128 bytes, chosen by clients; storing them made a record
//! cost ~120 bytes with a 36-byte UUID and ~240 with a 128-byte ID. A record
//! keeps a fixed 16-byte [`IdDigest`] instead, whatever the ID's length.
//!
//! The digest is **SipHash-1-3 with a 128-bit output, keyed** with a random
//! key ([`DigestKey`]; a durable store keeps its key in its file, so digests
//! survive restarts). 128 bits because two different requests must never
//! share a record: among the 10 million records a store may hold, the
//! chance that any two honest IDs collide is about n²/2¹²⁹ ≈ 10⁻²⁵. Keyed,
//! because IDs come from peers: without the key nobody can craft an ID
//! whose digest collides with another caller's (across scopes, that would
//! let one identity replay or block another's requests). Within one scope
//! a collision would buy an attacker nothing more than reusing the other
//! ID, which the scope already allows. SipHash is the standard keyed hash
//! for exactly this (hash-flooding resistance), small and fast (~20 ns for
//! a UUID); the 1-3 variant is what `std`'s `HashMap` uses.
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

use std::{fmt, hash::Hasher};

use siphasher::sip128::{Hasher128, SipHasher13};

use crate::{
    error::ServiceError,
    store::{AccumulateArgs, dedup::OwnerKey},
};

/// The 128-bit key of the request-ID digest.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DigestKey(pub [u64; 2]);

impl fmt::Debug for DigestKey {
    // A key in a debug line is a key in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DigestKey(..)")
    }
}

impl DigestKey {
    /// A fresh key from the operating system's random source (the same
    /// source `std`'s `HashMap` seeds its keys from; the key decides only
    /// which digests a record gets, never an answer, so a simulation stays
    /// deterministic).
    pub fn random() -> Self {
        use rand::{TryRngCore, rngs::OsRng};
        let word = || {
            OsRng
                .try_next_u64()
                // Without an OS random source, fall back on std's own
                // per-process random hasher keys.
                .unwrap_or_else(|_| {
                    use std::hash::BuildHasher;
                    std::hash::RandomState::new().hash_one(0u8)
                })
        };
        Self([word(), word()])
    }

    /// The digest of a request ID within a caller scope (see the module
    /// documentation). Scope and ID are length-prefixed, so `("a", "bc")`
    /// and `("ab", "c")` differ.
    ///
    /// ```
    /// use abacus::store::dedup::DigestKey;
    /// let key = DigestKey([1, 2]);
    /// assert_eq!(key.digest("", "id-1"), key.digest("", "id-1"));
    /// assert_ne!(key.digest("", "id-1"), key.digest("alice", "id-1"));
    /// assert_ne!(key.digest("", "id-1"), DigestKey([1, 3]).digest("", "id-1"));
    /// ```
    pub fn digest(&self, scope: &str, request_id: &str) -> IdDigest {
        let mut h = SipHasher13::new_with_keys(self.0[0], self.0[1]);
        h.write(&(scope.len() as u64).to_le_bytes());
        h.write(scope.as_bytes());
        h.write(&(request_id.len() as u64).to_le_bytes());
        h.write(request_id.as_bytes());
        IdDigest(h.finish128().as_u128())
    }
}

impl DigestKey {
    /// Whom a record is charged to: a digest of the caller's quota key,
    /// never [`OwnerKey::RESTORED`].
    pub fn owner(&self, key: &crate::store::QuotaKey) -> OwnerKey {
        let digest = self.digest("\u{0}owner", &key.to_string());
        OwnerKey((digest.0 as u64).max(1))
    }
}

/// What a dedup record is keyed by: see [`DigestKey::digest`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdDigest(pub u128);

impl fmt::Debug for IdDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdDigest({self})")
    }
}

impl fmt::Display for IdDigest {
    /// `#` and the first 16 hex digits: enough to tell records apart in a
    /// log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{:016x}", (self.0 >> 64) as u64)
    }
}

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

/// A stable 64-bit checksum of `parts` (FNV-1a, length-prefixed), for
/// records on disk: FNV-1a changes its output for *any* change of one input
/// byte (each step is a bijection of the state), so a flipped bit in a
/// stored value is always caught.
///
/// ```
/// use abacus::store::dedup::key::checksum;
/// assert_ne!(checksum(&[b"x", &1.0f64.to_le_bytes()]), checksum(&[b"x", &1.5f64.to_le_bytes()]));
/// ```
pub fn checksum(parts: &[&[u8]]) -> u64 {
    let mut h = Fnv1a::new();
    h.write(b"abacus.record\0");
    for part in parts {
        h.write(&(part.len() as u64).to_le_bytes());
        h.write(part);
    }
    h.finish()
}

/// The error for a request ID reused with another payload, the same word
/// for word in every backend (the conformance test compares them). Only
/// the fingerprint of the first payload is kept, so that is all the message
/// can say about it.
pub fn reused(args: &AccumulateArgs, first: u64, this: u64) -> ServiceError {
    ServiceError::RequestIdReused {
        request_id: args.request_id.clone(),
        first: format!("a request with payload fingerprint {first:016x}"),
        this: format!(
            "Accumulate(register={:?}, delta={}) with fingerprint {this:016x}",
            args.register, args.delta
        ),
    }
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
    fn digests_are_stable_for_a_key_and_scoped() {
        let key = DigestKey([0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210]);
        // Pinned: a durable store compares digests written by an earlier
        // process, so a change here is an on-disk format change.
        assert_eq!(
            key.digest("", "0190b5a4-7c1e-7d3a-9f00-5b1e2c3d4e5f").0,
            0x48f1_a879_937d_12b0_07ce_b68c_474c_95db
        );
        assert_ne!(key.digest("a", "bc"), key.digest("ab", "c"));
        assert_ne!(key.digest("", "x"), key.digest("", "y"));
        assert_ne!(DigestKey::random(), DigestKey::random());
        // Any one flipped bit of a stored value changes its checksum.
        let value = 141_044.0f64.to_bits();
        let base = checksum(&[b"r", &value.to_le_bytes()]);
        for bit in 0..64 {
            let flipped = (value ^ (1 << bit)).to_le_bytes();
            assert_ne!(checksum(&[b"r", &flipped]), base, "bit {bit}");
        }
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
