//! [`BearerToken`]: the token a client sends as `authorization: Bearer …`
//! on every attempt (`ABACUS_TOKEN`, `--token-file`). The header value is
//! marked sensitive (HTTP/2's HPACK then never indexes it) and no `Debug`
//! or error shows it.

use std::path::Path;

use tonic::metadata::{Ascii, MetadataMap, MetadataValue};

/// The metadata key tokens travel under.
pub const AUTHORIZATION_KEY: &str = "authorization";

/// A bearer token, ready to send.
#[derive(Clone)]
pub struct BearerToken {
    header: MetadataValue<Ascii>,
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

/// A token that cannot be sent. Never quotes it.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Empty, or with characters a header cannot carry.
    #[error("{source_name}: the token must be non-empty visible ASCII without spaces")]
    Invalid {
        /// Where it came from (`ABACUS_TOKEN`, `--token-file FILE`).
        source_name: String,
    },
    /// The token file could not be read.
    #[error("--token-file {path}: cannot read it: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
}

impl BearerToken {
    /// A token from its text; `source_name` says where it came from, for
    /// errors. Surrounding whitespace (a file's final newline) is ignored.
    pub fn new(token: &str, source_name: &str) -> Result<Self, TokenError> {
        let token = token.trim();
        let invalid = || TokenError::Invalid {
            source_name: source_name.to_owned(),
        };
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid());
        }
        let mut header =
            MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| invalid())?;
        header.set_sensitive(true);
        Ok(Self { header })
    }

    /// The token in the file at `path` (its only content).
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| TokenError::Read {
            path: shown.clone(),
            error,
        })?;
        Self::new(&text, &format!("--token-file {shown}"))
    }

    /// Adds the `authorization` header to `metadata`.
    pub fn apply(&self, metadata: &mut MetadataMap) {
        metadata.insert(AUTHORIZATION_KEY, self.header.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_never_shown() {
        let token = BearerToken::new("  s3cret-token\n", "test").unwrap();
        assert_eq!(format!("{token:?}"), "BearerToken(..)");
        let mut md = MetadataMap::new();
        token.apply(&mut md);
        assert_eq!(md.get(AUTHORIZATION_KEY).unwrap(), "Bearer s3cret-token");
        assert!(md.get(AUTHORIZATION_KEY).unwrap().is_sensitive());
        for bad in ["", "two words", "caf\u{e9}"] {
            let e = BearerToken::new(bad, "ABACUS_TOKEN").unwrap_err();
            assert!(e.to_string().starts_with("ABACUS_TOKEN:"), "{e}");
            assert!(bad.is_empty() || !e.to_string().contains(bad), "{e}");
        }
    }
}
