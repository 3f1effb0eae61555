//! [`Edge`]: what a deployment adds in front of the service on both
//! fronts — TLS, tokens and metrics — carried by the shared
//! [`Calculator`](super::Calculator) so the gRPC front and the REST twin
//! apply the same ones.

use std::{net::SocketAddr, sync::Arc};

use super::{auth::Authenticator, metrics::ServerMetrics, tls::ServerTls};

/// TLS, authentication and metrics of a server. All off by default: a
/// plaintext, open server without metrics, as in tests and the
/// simulation.
#[derive(Debug, Clone, Default)]
pub struct Edge {
    /// TLS on both fronts (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
    pub tls: Option<ServerTls>,
    /// Tokens, roles and rate limits (`--auth-tokens`).
    pub auth: Option<Arc<Authenticator>>,
    /// Metrics both fronts record into (`--metrics-addr`).
    pub metrics: Option<ServerMetrics>,
}

/// Serving tokens in the clear to other machines would hand them to
/// anyone on the path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{flag} {addr} is not a loopback address, and tokens (--auth-tokens) would cross the network in the clear: add --tls-cert and --tls-key, or listen on 127.0.0.1"
)]
pub struct PlaintextTokens {
    /// The flag naming the address.
    pub flag: &'static str,
    /// The address.
    pub addr: SocketAddr,
}

impl Edge {
    /// Refuses to serve tokens without TLS on any non-loopback address
    /// (grpc-go likewise refuses per-RPC credentials on an insecure
    /// transport). Plaintext without tokens stays allowed anywhere, and
    /// anything on loopback.
    pub fn check_exposure(
        &self,
        addrs: &[(&'static str, SocketAddr)],
    ) -> Result<(), PlaintextTokens> {
        if self.auth.is_none() || self.tls.is_some() {
            return Ok(());
        }
        match addrs.iter().find(|(_, addr)| !addr.ip().is_loopback()) {
            Some(&(flag, addr)) => Err(PlaintextTokens { flag, addr }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::auth::{Authenticator, tokens};

    #[test]
    fn tokens_in_the_clear_beyond_loopback_are_refused() {
        let entries = tokens::parse("ci write 0123456789abcdefXYZ").unwrap();
        let with_tokens = Edge {
            auth: Some(Arc::new(Authenticator::new(entries, None))),
            ..Edge::default()
        };
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let lo6: SocketAddr = "[::1]:1".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:1".parse().unwrap();
        assert_eq!(
            with_tokens.check_exposure(&[("--addr", lo), ("--rest-addr", lo6)]),
            Ok(())
        );
        let refused = with_tokens
            .check_exposure(&[("--addr", lo), ("--rest-addr", any)])
            .unwrap_err();
        assert_eq!(refused.flag, "--rest-addr");
        assert!(refused.to_string().contains("add --tls-cert and --tls-key"));
        // Without tokens, plaintext anywhere is the operator's choice.
        assert_eq!(Edge::default().check_exposure(&[("--addr", any)]), Ok(()));
    }
}
