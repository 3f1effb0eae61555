//! TLS material both sides load: PEM files read and checked at start, with
//! errors that name the flag and the file and never quote a key; and the
//! crypto provider (ring), passed explicitly rather than installed
//! process-wide, since several servers and clients may share a process.
//! The server's use is [`crate::server::tls`], the client's
//! [`crate::client::tls`].

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio_rustls::rustls::{
    self,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// A TLS configuration that cannot be used. Names the flag and the file;
/// never prints a key's bytes.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A file could not be read.
    #[error("{flag} {}: cannot read it: {source}", path.display())]
    Read {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no PEM section of the kind expected, or a broken one.
    #[error("{flag} {}: {what}", path.display())]
    Pem {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong, in words.
        what: String,
    },
    /// rustls refused the combination: a key that does not match the
    /// certificate, an unsupported key type, an unusable client CA.
    #[error("{what}: {source}")]
    Rustls {
        /// What was being set up.
        what: &'static str,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
    /// A CA file gave no usable trust anchor.
    #[error("{flag} {}: no usable CA certificate in it ({reason})", path.display())]
    Ca {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// rustls' reason.
        reason: String,
    },
}

/// PEM input for [`ServerTls::from_pem`](crate::server::tls::ServerTls::from_pem): the bytes and where they came
/// from, for error messages.
#[derive(Debug, Clone, Copy)]
pub struct PemSource<'a> {
    /// The flag that named the file (`--tls-cert`).
    pub flag: &'static str,
    /// The file (or a description, for PEM held in memory).
    pub path: &'a Path,
    /// Its contents.
    pub pem: &'a [u8],
}

/// Reads a PEM file for `flag`.
pub fn read_pem(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in `source`, at least one.
pub fn certificates(source: PemSource<'_>) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem_error = |what: String| TlsConfigError::Pem {
        flag: source.flag,
        path: source.path.to_owned(),
        what,
    };
    let certs = CertificateDer::pem_slice_iter(source.pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(format!("not a valid PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(pem_error(
            "no certificate in it (expected a PEM \"BEGIN CERTIFICATE\" section)".into(),
        ));
    }
    Ok(certs)
}

/// The private key in `source`. The error never quotes the file.
pub fn private_key(source: PemSource<'_>) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    PrivateKeyDer::from_pem_slice(source.pem).map_err(|e| TlsConfigError::Pem {
        flag: source.flag,
        path: source.path.to_owned(),
        what: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no private key in it (expected a PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" section)".into()
            }
            // The variants name positions and section labels, never key
            // material.
            other => format!("not a valid PEM private key ({other})"),
        },
    })
}

/// The crypto provider of both sides: ring, never a process-wide default
/// (several servers and clients may share a process).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
