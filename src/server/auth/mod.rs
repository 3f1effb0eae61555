//! Who may call what (`--auth-tokens`): bearer tokens mapped to identities
//! and roles, and a rate limit per identity.
//!
//! # The rules
//! With tokens configured, every call to `abacus.v1.Calculator` (gRPC) and
//! every calculator route of the REST twin must carry
//! `authorization: Bearer <token>`:
//! - no header, a malformed one, or an unknown token → UNAUTHENTICATED
//!   (REST: 401 with `WWW-Authenticate: Bearer …`);
//! - a `read` identity calling a method that is not pure (`Accumulate`; the
//!   [`Method`] table decides) → PERMISSION_DENIED (403);
//! - over the identity's rate limit → RESOURCE_EXHAUSTED with
//!   `grpc-retry-pushback-ms` (429 with `Retry-After`).
//!
//! Health (`grpc.health.v1`, `/healthz`), reflection and the OpenAPI
//! document stay open: they say whether the server runs and what its
//! contract is, nothing more. Every refusal happens before the call is
//! counted against the in-flight limit, and is marked not applied.
//!
//! # Identity scopes request IDs
//! The identity a token names becomes [`Caller::identity`](crate::store::Caller),
//! which every ledger uses as the request ID's scope: the same ID sent by
//! two identities names two requests, so one client can neither replay
//! another's outcome nor poison its record with another payload.
//!
//! # Comparing tokens
//! A presented token is hashed (SHA-256) and its digest compared with every
//! identity's digest in constant time, without stopping at a match: the
//! time taken says nothing about how close a guess was, nor which entry
//! matched. The file may hold only digests (`sha256:HEX`).
//!
//! # Layout
//! - [`tokens`]: the token file and [`Role`].
//! - [`limit`]: per-identity rate limits (governor, on tokio's clock).
//! - [`layer`]: the gRPC front's tower layer.

pub mod layer;
pub mod limit;
pub mod tokens;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use subtle::ConstantTimeEq;

pub use layer::AuthLayer;
pub use limit::RateLimit;
pub use tokens::{Entry, Role};

use crate::{error::AuthError, rpc::Method};
use limit::Limiter;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its name in the token file.
    pub name: Arc<str>,
    /// What it may call.
    pub role: Role,
}

/// Checks tokens, roles and rate limits. Shared by both fronts (one
/// limiter per identity whichever front a call arrives on).
#[derive(Debug)]
pub struct Authenticator {
    entries: Vec<Entry>,
    /// One limiter per identity, by name; empty without a rate limit. Built
    /// once: never grows.
    limiters: HashMap<Arc<str>, Limiter>,
    refused: Refused,
}

/// Refusals so far, by reason, for metrics.
#[derive(Debug, Default)]
struct Refused {
    unauthenticated: AtomicU64,
    forbidden: AtomicU64,
    rate_limited: AtomicU64,
}

/// Counts of refused calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuthStats {
    /// No, malformed or unknown token.
    pub unauthenticated: u64,
    /// A role that does not allow the method.
    pub forbidden: u64,
    /// Over an identity's rate limit.
    pub rate_limited: u64,
}

impl Authenticator {
    /// An authenticator over `entries` (at least one), with `rate` per
    /// identity if given.
    pub fn new(entries: Vec<Entry>, rate: Option<RateLimit>) -> Self {
        let limiters = match rate {
            Some(rate) => entries
                .iter()
                .map(|e| (Arc::clone(&e.name), Limiter::new(rate)))
                .collect(),
            None => HashMap::new(),
        };
        Self {
            entries,
            limiters,
            refused: Refused::default(),
        }
    }

    /// The identities configured.
    pub fn identities(&self) -> impl Iterator<Item = Identity> + '_ {
        self.entries.iter().map(|e| Identity {
            name: Arc::clone(&e.name),
            role: e.role,
        })
    }

    /// Checks a call to `method` (`None`: a path of the Calculator service
    /// that names no method, which tonic answers UNIMPLEMENTED once
    /// authenticated) carrying the `authorization` header value
    /// `authorization`.
    pub fn check(
        &self,
        authorization: Option<&[u8]>,
        method: Option<Method>,
    ) -> Result<Identity, AuthError> {
        let result = self.decide(authorization, method);
        if let Err(e) = &result {
            let counter = match e {
                AuthError::Missing | AuthError::Malformed | AuthError::UnknownToken => {
                    &self.refused.unauthenticated
                }
                AuthError::Forbidden { .. } => &self.refused.forbidden,
                AuthError::RateLimited { .. } => &self.refused.rate_limited,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn decide(
        &self,
        authorization: Option<&[u8]>,
        method: Option<Method>,
    ) -> Result<Identity, AuthError> {
        let token = bearer_token(authorization.ok_or(AuthError::Missing)?)?;
        let presented = tokens::digest(token);
        let mut found = None;
        // Every entry is compared, in constant time: see the module docs.
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&presented)) {
                found = Some(entry);
            }
        }
        let entry = found.ok_or(AuthError::UnknownToken)?;
        if let Some(method) = method
            && !entry.role.allows(method)
        {
            return Err(AuthError::Forbidden {
                identity: Arc::clone(&entry.name),
                method,
            });
        }
        if let Some(limiter) = self.limiters.get(&entry.name) {
            limiter
                .check()
                .map_err(|pushback_ms| AuthError::RateLimited {
                    identity: Arc::clone(&entry.name),
                    pushback_ms,
                })?;
        }
        Ok(Identity {
            name: Arc::clone(&entry.name),
            role: entry.role,
        })
    }

    /// Refusals so far.
    pub fn stats(&self) -> AuthStats {
        AuthStats {
            unauthenticated: self.refused.unauthenticated.load(Ordering::Relaxed),
            forbidden: self.refused.forbidden.load(Ordering::Relaxed),
            rate_limited: self.refused.rate_limited.load(Ordering::Relaxed),
        }
    }
}

/// The token of an `authorization: Bearer <token>` value. The scheme is
/// case-insensitive (RFC 9110); the token must be non-empty and the only
/// thing after it.
fn bearer_token(value: &[u8]) -> Result<&[u8], AuthError> {
    let (scheme, rest) = value.split_at_checked(6).ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(AuthError::Malformed);
    }
    let token = rest.trim_ascii();
    if !rest.starts_with(b" ") || token.is_empty() || token.contains(&b' ') {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    const WRITER: &str = "writer-token-0123456789";
    const READER: &str = "reader-token-0123456789";

    fn authenticator(rate: Option<RateLimit>) -> Authenticator {
        let entries =
            tokens::parse(&format!("w write {WRITER}\nr read {READER}\n")).expect("valid file");
        Authenticator::new(entries, rate)
    }

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn tokens_roles_and_headers() {
        let auth = authenticator(None);
        let acc = Some(Method::Accumulate);
        let add = Some(Method::Add);
        let name = |r: Result<Identity, AuthError>| r.map(|i| i.name.to_string());
        assert_eq!(name(auth.check(Some(&bearer(WRITER)), acc)), Ok("w".into()));
        assert_eq!(name(auth.check(Some(&bearer(READER)), add)), Ok("r".into()));
        assert_eq!(
            auth.check(Some(&bearer(READER)), acc),
            Err(AuthError::Forbidden {
                identity: "r".into(),
                method: Method::Accumulate
            })
        );
        assert_eq!(auth.check(None, add), Err(AuthError::Missing));
        assert_eq!(
            auth.check(Some(&bearer("not-a-token-0123456789")), add),
            Err(AuthError::UnknownToken)
        );
        for malformed in [
            format!("Basic {WRITER}"),
            WRITER.to_owned(),
            "Bearer".into(),
            "Bearer ".into(),
            format!("Bearer{WRITER}"),
            format!("Bearer {WRITER} x"),
        ] {
            assert_eq!(
                auth.check(Some(malformed.as_bytes()), add),
                Err(AuthError::Malformed),
                "{malformed:?}"
            );
        }
        // Scheme in any case, as HTTP says.
        assert!(
            auth.check(Some(format!("bEaReR {WRITER}").as_bytes()), add)
                .is_ok()
        );
        assert_eq!(
            auth.stats(),
            AuthStats {
                unauthenticated: 8,
                forbidden: 1,
                rate_limited: 0
            }
        );
        // No message quotes a token.
        let messages = [
            AuthError::Missing,
            AuthError::Malformed,
            AuthError::UnknownToken,
        ]
        .map(|e| e.to_string());
        assert!(messages.iter().all(|m| !m.contains(WRITER)));
    }

    #[tokio::test(start_paused = true)]
    async fn each_identity_has_its_own_rate_limit() {
        let one = NonZeroU32::new(1).unwrap();
        let auth = authenticator(Some(RateLimit {
            per_second: NonZeroU32::new(4).unwrap(),
            burst: one,
        }));
        let add = Some(Method::Add);
        assert!(auth.check(Some(&bearer(WRITER)), add).is_ok());
        assert_eq!(
            auth.check(Some(&bearer(WRITER)), add),
            Err(AuthError::RateLimited {
                identity: "w".into(),
                pushback_ms: 250
            })
        );
        // The other identity is not charged for the first one's calls.
        assert!(auth.check(Some(&bearer(READER)), add).is_ok());
        tokio::time::advance(std::time::Duration::from_millis(250)).await;
        assert!(auth.check(Some(&bearer(WRITER)), add).is_ok());
        assert_eq!(auth.stats().rate_limited, 1);
    }
}
