//! The client's TLS: [`ClientTls`] is the CA to trust (`--tls-ca`) and,
//! for mutual TLS, the client's certificate and key (`--tls-cert`,
//! `--tls-key`), read and checked once; [`ClientTls::apply`] puts them on a
//! tonic [`Endpoint`], whose connector then runs the handshake over
//! whatever stream our own connector returns.
//!
//! # Where a client calls it
//! On every `Endpoint` it builds, before connecting, with the endpoint's
//! URI in the `https` scheme ([`SCHEME`]): tonic runs TLS only for `https`
//! URIs, and would otherwise send plaintext with TLS configured.
//! `transport::tcp_channel_with` does both; a client over several replicas
//! calls `tls.apply(endpoint)` once per replica's endpoint.
//!
//! # Failures
//! A wrong CA, an expired or otherwise unacceptable server certificate, a
//! server refusing our certificate, or a plaintext server: the handshake
//! fails, the attempt fails with UNAVAILABLE, nothing was sent (the request
//! goes out only over a finished handshake).

use std::{path::Path, time::Duration};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::tls::{PemSource, TlsConfigError, certificates, private_key, read_pem};

/// The URI scheme an endpoint must have for tonic to run TLS.
pub const SCHEME: &str = "https";

/// Longest a handshake may take before the attempt fails.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS settings of a client. Cheap to clone (PEM bytes, checked).
#[derive(Clone)]
pub struct ClientTls {
    ca: Certificate,
    identity: Option<Identity>,
    server_name: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    // The key stays out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("mutual", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads `--tls-ca` and, for mutual TLS, `--tls-cert` and `--tls-key`.
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, TlsConfigError> {
        let ca_pem = read_pem("--tls-ca", ca)?;
        let identity_pem = identity
            .map(|(cert, key)| -> Result<_, TlsConfigError> {
                Ok((
                    cert,
                    read_pem("--tls-cert", cert)?,
                    key,
                    read_pem("--tls-key", key)?,
                ))
            })
            .transpose()?;
        Self::from_pem(
            PemSource {
                flag: "--tls-ca",
                path: ca,
                pem: &ca_pem,
            },
            identity_pem.as_ref().map(|(cert, cert_pem, key, key_pem)| {
                (
                    PemSource {
                        flag: "--tls-cert",
                        path: cert,
                        pem: cert_pem,
                    },
                    PemSource {
                        flag: "--tls-key",
                        path: key,
                        pem: key_pem,
                    },
                )
            }),
        )
    }

    /// Settings from PEM: the CA certificates to trust and an optional
    /// client certificate chain and key. Each is parsed here, so a bad file
    /// is an error now rather than at the first call.
    pub fn from_pem(
        ca: PemSource<'_>,
        identity: Option<(PemSource<'_>, PemSource<'_>)>,
    ) -> Result<Self, TlsConfigError> {
        certificates(ca)?;
        let identity = identity
            .map(|(cert, key)| -> Result<_, TlsConfigError> {
                certificates(cert)?;
                private_key(key)?;
                Ok(Identity::from_pem(cert.pem, key.pem))
            })
            .transpose()?;
        Ok(Self {
            ca: Certificate::from_pem(ca.pem),
            identity,
            server_name: None,
        })
    }

    /// Verifies the server's certificate for `name` instead of the host in
    /// the address (e.g. connecting by IP to a certificate issued for a
    /// DNS name).
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// `endpoint` with these settings. Its URI must be `https://…`
    /// ([`SCHEME`]).
    pub fn apply(&self, endpoint: Endpoint) -> Result<Endpoint, ClientTlsError> {
        if endpoint.uri().scheme_str() != Some(SCHEME) {
            return Err(ClientTlsError::Scheme(endpoint.uri().to_string()));
        }
        let mut config = ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(identity) = &self.identity {
            config = config.identity(identity.clone());
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        endpoint
            .tls_config(config)
            .map_err(|e| ClientTlsError::Endpoint(tonic_error_chain(&e)))
    }
}

/// TLS settings that cannot be put on an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientTlsError {
    /// The endpoint's URI is not `https`: tonic would not run TLS.
    #[error("TLS needs an https:// endpoint, got {0}")]
    Scheme(String),
    /// tonic refused the settings (e.g. a server name that is not a valid
    /// DNS name or IP address).
    #[error("TLS settings refused: {0}")]
    Endpoint(String),
}

/// An error and its sources, as one line.
fn tonic_error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
