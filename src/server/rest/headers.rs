//! The request headers the REST front reads: `Idempotency-Key` (the
//! request ID of `Accumulate`) and `abacus-timeout-ms` (the deadline).
//! Both are refused with 400 when present but malformed.

use axum::http::HeaderMap;
use tokio::time::Instant;

use super::error::RestError;
use crate::server::deadline::{REST_TIMEOUT_HEADER, parse_timeout_ms};

/// The header of the IETF httpapi `Idempotency-Key` draft.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// Reads `Idempotency-Key`. The draft defines it as a Structured Field
/// string (`Idempotency-Key: "8e03978e"`); many clients send the bare
/// token instead (`Idempotency-Key: 8e03978e`), so both are accepted and
/// mean the same key. Absent: `None`. Length and character limits are the
/// request ID's, checked by the service like any request ID.
///
/// ```
/// use axum::http::{HeaderMap, HeaderValue};
/// use abacus::server::rest::headers::idempotency_key;
/// let mut h = HeaderMap::new();
/// assert_eq!(idempotency_key(&h), Ok(None));
/// h.insert("idempotency-key", HeaderValue::from_static("\"k-1\""));
/// assert_eq!(idempotency_key(&h), Ok(Some("k-1".to_owned())));
/// h.insert("idempotency-key", HeaderValue::from_static("k-1"));
/// assert_eq!(idempotency_key(&h), Ok(Some("k-1".to_owned())));
/// h.insert("idempotency-key", HeaderValue::from_static("\"k-1"));
/// assert!(idempotency_key(&h).is_err());
/// ```
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, RestError> {
    let invalid = |reason: &str| RestError::InvalidHeader {
        name: "Idempotency-Key",
        reason: reason.to_owned(),
    };
    let mut values = headers.get_all(IDEMPOTENCY_KEY_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid("sent more than once"));
    }
    let text = value
        .to_str()
        .map_err(|_| invalid("not visible ASCII"))?
        .trim();
    let key = match text.strip_prefix('"') {
        Some(rest) => sf_string_body(rest).ok_or_else(|| {
            invalid("a quoted key must be one Structured Field string: \"...\" with \\\" and \\\\ escapes")
        })?,
        None => text.to_owned(),
    };
    if key.is_empty() {
        return Err(invalid("empty"));
    }
    Ok(Some(key))
}

/// Decodes the rest of an sf-string after its opening quote: printable
/// ASCII, `\"` and `\\` escapes, one closing quote at the very end.
fn sf_string_body(rest: &str) -> Option<String> {
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                e @ ('"' | '\\') => out.push(e),
                _ => return None,
            },
            '"' => return chars.next().is_none().then_some(out),
            ' '..='~' => out.push(c),
            _ => return None,
        }
    }
    None
}

/// The caller's deadline from `abacus-timeout-ms`, if sent.
pub fn deadline(headers: &HeaderMap) -> Result<Option<Instant>, RestError> {
    let Some(value) = headers.get(REST_TIMEOUT_HEADER) else {
        return Ok(None);
    };
    let timeout = value
        .to_str()
        .ok()
        .and_then(parse_timeout_ms)
        .ok_or_else(|| RestError::InvalidHeader {
            name: REST_TIMEOUT_HEADER,
            reason: "must be 1 to 8 digits of milliseconds".into(),
        })?;
    Ok(Some(Instant::now() + timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sf_strings() {
        assert_eq!(sf_string_body(r#"a\"b\\c""#).as_deref(), Some(r#"a"b\c"#));
        assert_eq!(sf_string_body(r#"abc"x"#), None, "text after the quote");
        assert_eq!(sf_string_body(r#"a\nb""#), None, "only two escapes exist");
        assert_eq!(sf_string_body("abc"), None, "unterminated");
    }
}
