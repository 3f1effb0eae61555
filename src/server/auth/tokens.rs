//! The token file (`--auth-tokens FILE`): one identity per line,
//! `NAME ROLE TOKEN`, where ROLE is `read` or `write` and TOKEN is the
//! token itself or `sha256:HEX`, its SHA-256 digest, so that the file need
//! not hold secrets. Blank lines and lines starting with `#` are ignored.
//!
//! ```text
//! # name      role   token
//! ci          write  sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! dashboard   read   4c0e1b0f6e0b4d7e9a1f3c2d5e6f7a8b
//! ```
//!
//! Every error names the line and what is wrong with it, and never quotes
//! a token (nor a whole line, which holds one).

use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::rpc::Method;

/// Shortest token accepted in clear: 16 characters (e.g. 96 random bits
/// in base64). A digest line has no such check: its token is not in the
/// file.
pub const TOKEN_CHARS_MIN: usize = 16;

/// Longest identity name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;

/// Largest token file read, in bytes: room for thousands of identities,
/// and a bound on what a wrong path (a log file, `/dev/zero`) makes the
/// server read before it refuses to start.
pub const FILE_BYTES_MAX: u64 = 1024 * 1024;

/// What an identity may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Pure methods only (`NO_SIDE_EFFECTS` in the proto).
    Read,
    /// Every method.
    Write,
}

impl Role {
    /// True when this role may call `method`: anything for `write`, pure
    /// methods for `read`. Decided by [`Method::is_pure`], the one table,
    /// so a new mutating RPC is refused to readers without a change here.
    pub fn allows(self, method: Method) -> bool {
        match self {
            Self::Write => true,
            Self::Read => method.is_pure(),
        }
    }

    /// As the file spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// A SHA-256 digest of a token.
pub type TokenDigest = [u8; 32];

/// The digest a presented token is compared by.
pub fn digest(token: &[u8]) -> TokenDigest {
    Sha256::digest(token).into()
}

/// One line of the file.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// The identity's name: its request-ID scope and its rate-limit key.
    pub name: Arc<str>,
    /// What it may call.
    pub role: Role,
    /// Its token's digest.
    pub digest: TokenDigest,
}

impl std::fmt::Debug for Entry {
    // The digest stays out of debug output: it is as good as a password
    // against a fast hash.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// Not three fields.
    #[error("expected three fields `NAME ROLE TOKEN`, found {0}")]
    Fields(usize),
    /// A name with characters other than letters, digits and `-_.@:`, or
    /// too long.
    #[error("identity name {0:?} must be 1 to 64 letters, digits or the characters - _ . @ :")]
    Name(String),
    /// A role other than `read` or `write`.
    #[error("role {0:?} must be `read` or `write`")]
    Role(String),
    /// A clear token too short to resist guessing.
    #[error("the token is {0} characters; at least 16 are required (or give its sha256:HEX)")]
    TooShort(usize),
    /// A clear token with characters a header cannot carry.
    #[error("the token must be visible ASCII characters without spaces")]
    TokenChars,
    /// `sha256:` followed by something else than 64 hex digits.
    #[error("after `sha256:` the token must be 64 hexadecimal digits (a SHA-256 digest)")]
    Digest,
    /// A name given twice.
    #[error("identity {name:?} is already defined on line {first}")]
    DuplicateName {
        /// The name.
        name: String,
        /// Where it was first defined.
        first: usize,
    },
    /// A token given twice (two identities would share it).
    #[error("the same token is already given on line {first}: each identity needs its own")]
    DuplicateToken {
        /// Where it was first given.
        first: usize,
    },
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file could not be read.
    #[error("--auth-tokens {path}: cannot read it: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line is wrong.
    #[error("--auth-tokens {path}, line {line}: {error}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        error: LineError,
    },
    /// Larger than [`FILE_BYTES_MAX`]: not a token file.
    #[error("--auth-tokens {path}: larger than {max} bytes; is it the token file?")]
    TooLarge {
        /// The file.
        path: String,
        /// [`FILE_BYTES_MAX`].
        max: u64,
    },
    /// No identity at all: every call would be refused.
    #[error("--auth-tokens {path}: no identity in it (lines are `NAME ROLE TOKEN`)")]
    Empty {
        /// The file.
        path: String,
    },
}

/// Reads and parses the token file at `path`.
pub fn read_file(path: &std::path::Path) -> Result<Vec<Entry>, TokenFileError> {
    use std::io::Read as _;

    let shown = path.display().to_string();
    let read_error = |source| TokenFileError::Read {
        path: shown.clone(),
        source,
    };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(FILE_BYTES_MAX + 1).read_to_string(&mut text))
        .map_err(read_error)?;
    if text.len() as u64 > FILE_BYTES_MAX {
        return Err(TokenFileError::TooLarge {
            path: shown,
            max: FILE_BYTES_MAX,
        });
    }
    parse(&text).map_err(|e| match e {
        ParseError::Line { line, error } => TokenFileError::Line {
            path: shown,
            line,
            error,
        },
        ParseError::Empty => TokenFileError::Empty { path: shown },
    })
}

/// A parse failure, before the file's name is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// A line is wrong.
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        error: LineError,
    },
    /// No identity.
    Empty,
}

/// Parses a token file's text.
///
/// ```
/// use abacus::server::auth::tokens::{parse, Role};
/// let entries = parse("# who role token\nci write 0123456789abcdefXYZ\n").unwrap();
/// assert_eq!((&*entries[0].name, entries[0].role), ("ci", Role::Write));
/// assert!(parse("ci write short").is_err());
/// ```
pub fn parse(text: &str) -> Result<Vec<Entry>, ParseError> {
    let mut entries: Vec<(usize, Entry)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let content = line.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let entry = parse_line(content).map_err(|error| ParseError::Line {
            line: number,
            error,
        })?;
        for (first, seen) in &entries {
            let error = if seen.name == entry.name {
                LineError::DuplicateName {
                    name: entry.name.to_string(),
                    first: *first,
                }
            } else if seen.digest == entry.digest {
                LineError::DuplicateToken { first: *first }
            } else {
                continue;
            };
            return Err(ParseError::Line {
                line: number,
                error,
            });
        }
        entries.push((number, entry));
    }
    if entries.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(entries.into_iter().map(|(_, e)| e).collect())
}

fn parse_line(line: &str) -> Result<Entry, LineError> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [name, role, token] = fields[..] else {
        return Err(LineError::Fields(fields.len()));
    };
    let name_ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b));
    if !name_ok {
        return Err(LineError::Name(name.to_owned()));
    }
    let role = match role {
        "read" => Role::Read,
        "write" => Role::Write,
        other => return Err(LineError::Role(other.to_owned())),
    };
    let digest = match token.strip_prefix("sha256:") {
        Some(hex) => parse_hex_digest(hex).ok_or(LineError::Digest)?,
        None => {
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(LineError::TokenChars);
            }
            if token.len() < TOKEN_CHARS_MIN {
                return Err(LineError::TooShort(token.len()));
            }
            digest(token.as_bytes())
        }
    };
    Ok(Entry {
        name: name.into(),
        role,
        digest,
    })
}

/// 64 hex digits, either case, as 32 bytes.
fn parse_hex_digest(hex: &str) -> Option<TokenDigest> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "an-ok-token-0123456789";

    /// One line against what parsing it must give.
    fn check(line: &str, expect: Result<Role, LineError>) {
        match (parse(line), expect) {
            (Ok(entries), Ok(role)) => assert_eq!(entries[0].role, role, "{line}"),
            (Err(ParseError::Line { line: 1, error }), Err(want)) => {
                assert_eq!(error, want, "{line}");
                // The message never quotes the token.
                assert!(!error.to_string().contains(TOKEN), "{error}");
            }
            (got, want) => panic!("{line:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn lines() {
        check(&format!("ci write {TOKEN}"), Ok(Role::Write));
        check(&format!("  dash\tread   {TOKEN}  "), Ok(Role::Read));
        check(
            &format!("a@b.c:1 read sha256:{}", "Ab".repeat(32)),
            Ok(Role::Read),
        );
        check(
            &format!("ci admin {TOKEN}"),
            Err(LineError::Role("admin".into())),
        );
        check(
            &format!("ci write {TOKEN} extra"),
            Err(LineError::Fields(4)),
        );
        check("ci write", Err(LineError::Fields(2)));
        check(
            &format!("c/i write {TOKEN}"),
            Err(LineError::Name("c/i".into())),
        );
        check("ci write 123456789012345", Err(LineError::TooShort(15)));
        check("ci write sha256:abc", Err(LineError::Digest));
        check(
            &format!("ci write sha256:{}", "g".repeat(64)),
            Err(LineError::Digest),
        );
        check(
            "ci write tok\u{e9}n-tok\u{e9}n-tok\u{e9}n",
            Err(LineError::TokenChars),
        );
    }

    #[test]
    fn a_digest_line_matches_its_token_and_duplicates_are_refused() {
        let hex: String = digest(TOKEN.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let entries = parse(&format!("# comment\n\nci write sha256:{hex}\n")).unwrap();
        assert_eq!(entries[0].digest, digest(TOKEN.as_bytes()));

        let same_token = format!("a write {TOKEN}\nb read sha256:{hex}\n");
        assert_eq!(
            parse(&same_token),
            Err(ParseError::Line {
                line: 2,
                error: LineError::DuplicateToken { first: 1 }
            })
        );
        let same_name = format!("a write {TOKEN}\n#\na read {TOKEN}x\n");
        assert_eq!(
            parse(&same_name),
            Err(ParseError::Line {
                line: 3,
                error: LineError::DuplicateName {
                    name: "a".into(),
                    first: 1
                }
            })
        );
        assert_eq!(parse("# nobody\n\n"), Err(ParseError::Empty));
    }

    #[test]
    fn a_file_past_the_size_bound_is_refused_without_reading_it_all() {
        let dir = std::env::temp_dir().join(format!("abacus-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let line = format!("ci write {TOKEN}\n");
        let at_bound = dir.join("at-bound");
        let padding = "#".repeat(FILE_BYTES_MAX as usize - line.len() - 1) + "\n";
        std::fs::write(&at_bound, format!("{line}{padding}")).unwrap();
        assert_eq!(read_file(&at_bound).map(|e| e.len()).ok(), Some(1));
        let over = dir.join("over");
        std::fs::write(&over, format!("{line}{padding}#")).unwrap();
        let refused = read_file(&over).unwrap_err();
        assert!(
            matches!(
                refused,
                TokenFileError::TooLarge {
                    max: FILE_BYTES_MAX,
                    ..
                }
            ),
            "{refused}"
        );
        // A device that never ends is refused too, not read forever.
        assert!(matches!(
            read_file(std::path::Path::new("/dev/zero")),
            Err(TokenFileError::TooLarge { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_output_holds_no_digest() {
        let entries = parse(&format!("ci write {TOKEN}")).unwrap();
        let shown = format!("{entries:?}");
        assert!(shown.contains("ci"), "{shown}");
        assert!(!shown.contains("digest"), "{shown}");
    }
}
