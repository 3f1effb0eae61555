//! Where the endpoints come from: a [`Resolve`] turns a target into the
//! current list of endpoint names (addresses), and the balancer asks it
//! again every so often, adding what appeared and dropping what left.
//!
//! The resolver is injected, so tests and the simulation drive the set
//! without DNS: [`StaticResolver`] (a fixed list), [`ManualResolver`] (a
//! list a test or a scenario changes at will), and [`DnsResolver`] for
//! real names (`host:port`, several comma-separated, each resolving to any
//! number of addresses).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
};

/// A boxed, sendable future: what [`Resolve::resolve`] returns (the
/// resolver is used as `dyn Resolve`).
pub type ResolveFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<String>, ResolveError>> + Send + 'a>>;

/// Turns a target into endpoint names, each one a `host:port` the
/// client's connector can dial.
pub trait Resolve: Send + Sync + fmt::Debug + 'static {
    /// The endpoints now, in a stable order (the order seeds are derived
    /// in, so the same list gives the same run).
    fn resolve(&self) -> ResolveFuture<'_>;
}

/// A target that could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Not `host:port`.
    #[error("{0:?} is not a server address: expected host:port, e.g. 127.0.0.1:50051")]
    Invalid(String),
    /// The name did not resolve.
    #[error("cannot resolve {name}: {reason}")]
    Lookup {
        /// The name.
        name: String,
        /// What the system resolver said.
        reason: String,
    },
    /// The target names no endpoint at all.
    #[error("no endpoint: the target resolved to an empty list")]
    Empty,
}

/// Always the same endpoints.
#[derive(Debug, Clone)]
pub struct StaticResolver(Vec<String>);

impl StaticResolver {
    /// Resolves to `endpoints`.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self(endpoints.into_iter().map(Into::into).collect())
    }
}

impl Resolve for StaticResolver {
    fn resolve(&self) -> ResolveFuture<'_> {
        let list = self.0.clone();
        Box::pin(async move { Ok(list) })
    }
}

/// Endpoints a test or a simulated scenario sets as it goes: clones share
/// one list; the client sees a change at its next refresh.
#[derive(Debug, Clone)]
pub struct ManualResolver(Arc<Mutex<Result<Vec<String>, ResolveError>>>);

impl Default for ManualResolver {
    /// Resolves to nothing until [`ManualResolver::set`].
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Ok(Vec::new()))))
    }
}

impl ManualResolver {
    /// Resolves to `endpoints` until told otherwise.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let this = Self::default();
        this.set(endpoints);
        this
    }

    /// From the next refresh on, resolves to `endpoints`.
    pub fn set(&self, endpoints: impl IntoIterator<Item = impl Into<String>>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) =
            Ok(endpoints.into_iter().map(Into::into).collect());
    }

    /// From the next refresh on, fails with `error` (the client keeps the
    /// endpoints it has, as gRPC clients do when their resolver fails).
    pub fn fail(&self, error: ResolveError) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Err(error);
    }
}

impl Resolve for ManualResolver {
    fn resolve(&self) -> ResolveFuture<'_> {
        let now = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Box::pin(async move { now })
    }
}

/// Real names through the system resolver: a comma-separated list of
/// `host:port`, each resolving to every address the name has (an IP
/// literal to itself, without a lookup). Re-resolved at every refresh, so
/// replicas added to or removed from a DNS name come and go.
#[derive(Debug, Clone)]
pub struct DnsResolver {
    targets: Vec<String>,
}

impl DnsResolver {
    /// Parses `targets` (`A,B,C`, each `host:port`).
    ///
    /// ```
    /// use abacus::client::balance::resolve::DnsResolver;
    /// assert!(DnsResolver::parse("127.0.0.1:1, 127.0.0.1:2").is_ok());
    /// assert!(DnsResolver::parse("127.0.0.1").is_err());
    /// assert!(DnsResolver::parse("").is_err());
    /// ```
    pub fn parse(targets: &str) -> Result<Self, ResolveError> {
        let targets: Vec<String> = targets
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        if targets.is_empty() {
            return Err(ResolveError::Invalid(String::new()));
        }
        for t in &targets {
            let (host, port) = t
                .rsplit_once(':')
                .ok_or_else(|| ResolveError::Invalid(t.clone()))?;
            if host.is_empty() || port.parse::<u16>().is_err() || t.contains('/') {
                return Err(ResolveError::Invalid(t.clone()));
            }
        }
        Ok(Self { targets })
    }
}

impl Resolve for DnsResolver {
    fn resolve(&self) -> ResolveFuture<'_> {
        Box::pin(async move {
            let mut found = Vec::new();
            for target in &self.targets {
                if let Ok(addr) = target.parse::<std::net::SocketAddr>() {
                    found.push(addr.to_string());
                    continue;
                }
                let addrs = tokio::net::lookup_host(target.as_str())
                    .await
                    .map_err(|e| ResolveError::Lookup {
                        name: target.clone(),
                        reason: e.to_string(),
                    })?;
                let mut addrs: Vec<String> = addrs.map(|a| a.to_string()).collect();
                // The system resolver's order may rotate between lookups;
                // sorted, the same answer gives the same set and seeds.
                addrs.sort();
                found.extend(addrs);
            }
            // A name listed twice, or two names sharing an address: one
            // endpoint each.
            let mut seen = std::collections::BTreeSet::new();
            found.retain(|a| seen.insert(a.clone()));
            Ok(found)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dns_resolves_literals_without_lookup_and_dedups() {
        let r = DnsResolver::parse("127.0.0.1:5,127.0.0.1:6,127.0.0.1:5").unwrap();
        assert_eq!(r.resolve().await.unwrap(), ["127.0.0.1:5", "127.0.0.1:6"]);
        let r = DnsResolver::parse("localhost:7").unwrap();
        let found = r.resolve().await.unwrap();
        assert!(
            !found.is_empty() && found.iter().all(|a| a.ends_with(":7")),
            "{found:?}"
        );
    }

    #[test]
    fn dns_targets_must_be_host_port() {
        for bad in [
            "nope",
            "host:",
            ":80",
            "host:99999",
            "http://host:80",
            " , ",
        ] {
            assert!(DnsResolver::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_manual_resolver_answers_what_it_was_last_told() {
        let r = ManualResolver::new(["a:1"]);
        let clone = r.clone();
        assert_eq!(r.resolve().await.unwrap(), ["a:1"]);
        clone.set(["a:1", "b:1"]);
        assert_eq!(r.resolve().await.unwrap(), ["a:1", "b:1"]);
        clone.fail(ResolveError::Empty);
        assert_eq!(r.resolve().await, Err(ResolveError::Empty));
    }
}
