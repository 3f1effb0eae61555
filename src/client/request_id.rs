//! Request IDs: one per *logical* call, attached before the retry layer so
//! every retry of the call carries the same ID and the server can recognise
//! the repeat.
//!
//! IDs are UUIDv4 strings. Production draws them from the OS; simulations
//! draw them from the seeded RNG so traces stay byte-identical. (Formatting
//! 16 random bytes as a v4 UUID is a few lines; the `uuid` crate would add a
//! dependency for no gain.)

use std::{
    fmt,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use rand::{RngCore, SeedableRng, TryRngCore, rngs::OsRng};
use rand_chacha::ChaCha8Rng;
use tower::{Layer, Service};

use crate::client::call::{Call, Request};

/// Where request IDs come from.
#[derive(Clone)]
pub struct IdGenerator {
    // None: the OS. Some: a seeded stream shared by clones.
    seeded: Option<Arc<Mutex<ChaCha8Rng>>>,
}

impl fmt::Debug for IdGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.seeded.is_some() {
            "IdGenerator(seeded)"
        } else {
            "IdGenerator(os)"
        })
    }
}

impl IdGenerator {
    /// UUIDv4 from the operating system's randomness.
    pub fn os() -> Self {
        Self { seeded: None }
    }

    /// UUIDv4-shaped IDs from a ChaCha8 stream seeded with `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self {
            seeded: Some(Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(seed)))),
        }
    }

    /// The next ID.
    ///
    /// ```
    /// let g = abacus::client::IdGenerator::seeded(3);
    /// let id = g.next_id();
    /// assert_eq!(id.len(), 36);
    /// assert_eq!(&id[14..15], "4");
    /// assert_eq!(abacus::client::IdGenerator::seeded(3).next_id(), id);
    /// ```
    pub fn next_id(&self) -> String {
        let mut b = [0u8; 16];
        match &self.seeded {
            Some(rng) => rng
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .fill_bytes(&mut b),
            None => {
                if OsRng.try_fill_bytes(&mut b).is_err() {
                    // No OS randomness: fall back to a stream seeded from the
                    // address of a local and the time. Uniqueness, not secrecy,
                    // is what a request ID needs.
                    let t = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64);
                    ChaCha8Rng::seed_from_u64(t ^ (&b as *const _ as u64)).fill_bytes(&mut b);
                }
            }
        }
        b[6] = (b[6] & 0x0f) | 0x40; // version 4
        b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

/// A seed from the OS, for production clients that set none.
pub fn os_seed() -> u64 {
    OsRng.try_next_u64().unwrap_or(0x0abac05)
}

/// Attaches a request ID to mutating calls that carry none.
#[derive(Debug, Clone)]
pub struct RequestIdLayer {
    ids: IdGenerator,
}

impl RequestIdLayer {
    /// IDs from `ids`.
    pub fn new(ids: IdGenerator) -> Self {
        Self { ids }
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> RequestId<S> {
        RequestId {
            inner,
            ids: self.ids.clone(),
        }
    }
}

/// The request-ID service.
#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
    ids: IdGenerator,
}

impl<S: Service<Call>> Service<Call> for RequestId<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call) -> S::Future {
        if let Request::Accumulate { request_id, .. } = &mut call.request
            && request_id.is_empty()
        {
            *request_id = self.ids.next_id();
        }
        self.inner.call(call)
    }
}
