//! Certificates for the TLS tests and the interop script, generated at run
//! time with rcgen (no certificate file is committed): a CA, a server
//! certificate for `localhost` and `127.0.0.1`, a client certificate, an
//! expired server certificate, and a second, unrelated CA.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, date_time_ymd,
};

/// A certificate and its key, in PEM.
#[derive(Debug, Clone)]
pub(crate) struct Pair {
    /// The certificate.
    pub(crate) cert: String,
    /// Its private key.
    pub(crate) key: String,
}

/// Everything a TLS test needs.
#[derive(Debug, Clone)]
pub(crate) struct Pki {
    /// The CA that signed the server and client certificates.
    pub(crate) ca: String,
    /// A CA that signed nothing here: trusting it alone must fail.
    pub(crate) other_ca: String,
    /// The server's certificate (SANs `localhost`, `127.0.0.1`) and key.
    pub(crate) server: Pair,
    /// A client certificate for mutual TLS.
    pub(crate) client: Pair,
    /// A client certificate signed by the other CA.
    pub(crate) stranger: Pair,
    /// A server certificate that expired in 2001.
    pub(crate) expired: Pair,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA")
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    name: &str,
    usage: ExtendedKeyUsagePurpose,
    expired: bool,
) -> Pair {
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    if expired {
        params.not_before = date_time_ymd(2000, 1, 1);
        params.not_after = date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("sign");
    Pair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

impl Pki {
    /// Fresh keys and certificates.
    pub(crate) fn generate() -> Self {
        let ca_issuer = ca("abacus test CA");
        let other = ca("unrelated CA");
        Self {
            ca: ca_issuer.pem(),
            other_ca: other.pem(),
            server: leaf(
                &ca_issuer,
                "abacus server",
                ExtendedKeyUsagePurpose::ServerAuth,
                false,
            ),
            client: leaf(
                &ca_issuer,
                "abacus client",
                ExtendedKeyUsagePurpose::ClientAuth,
                false,
            ),
            stranger: leaf(
                &other,
                "stranger",
                ExtendedKeyUsagePurpose::ClientAuth,
                false,
            ),
            expired: leaf(
                &ca_issuer,
                "expired server",
                ExtendedKeyUsagePurpose::ServerAuth,
                true,
            ),
        }
    }

    /// Writes every file into `dir` (`ca.pem`, `server.pem`,
    /// `server.key`, …) and returns `dir`.
    #[allow(dead_code)]
    pub(crate) fn write_to(&self, dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        for (name, text) in [
            ("ca.pem", &self.ca),
            ("other-ca.pem", &self.other_ca),
            ("server.pem", &self.server.cert),
            ("server.key", &self.server.key),
            ("client.pem", &self.client.cert),
            ("client.key", &self.client.key),
            ("stranger.pem", &self.stranger.cert),
            ("stranger.key", &self.stranger.key),
            ("expired.pem", &self.expired.cert),
            ("expired.key", &self.expired.key),
        ] {
            std::fs::write(dir.join(name), text)?;
        }
        Ok(dir.to_owned())
    }
}
