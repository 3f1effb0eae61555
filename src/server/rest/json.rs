//! JSON in and out: the wire types of the REST twin, the body extractor
//! that turns every malformed request into a [`RestError`] (never a panic,
//! never axum's plain-text rejection), and the response builder.
//!
//! axum's own `Json` extractor is not used: its rejections are plain text
//! with statuses of its choosing, and the REST front promises one JSON error
//! shape for everything. This extractor is small enough to own.

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{
    Deserialize, Deserializer, Serialize,
    de::{DeserializeOwned, Visitor},
};

use utoipa::ToSchema;

use super::error::RestError;
use crate::{server::MESSAGE_BYTES_MAX, store::StatsView};

/// `POST /v1/{op}` body. Unknown fields are refused, as proto3's JSON
/// mapping does by default: a typo (`"bb": 3`) must not silently become 0.
/// Only a JSON object is accepted (see [`from_json_object`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(
    deny_unknown_fields,
    expecting = r#"a JSON object {"a": number, "b": number}"#
)]
pub struct BinaryBody {
    /// First operand.
    pub a: f64,
    /// Second operand.
    pub b: f64,
}

/// `POST /v1/{op}` answer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResultBody {
    /// The result.
    pub result: f64,
}

/// `POST /v1/registers/{name}:accumulate` body (a JSON object only).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, expecting = r#"a JSON object {"delta": number}"#)]
pub struct AccumulateBody {
    /// Amount to add.
    pub delta: f64,
}

/// `POST /v1/registers/{name}:accumulate` answer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccumulatedBody {
    /// The register's value right after this request was applied.
    pub value: f64,
    /// True when answered from the dedup store (also in the
    /// `abacus-replayed: true` header).
    pub replayed: bool,
}

/// `GET /v1/registers/{name}` answer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegisterBody {
    /// The register's value.
    pub value: f64,
}

/// `DELETE /v1/registers/{name}` answer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeletedBody {
    /// False when the register did not exist (deleting is idempotent).
    pub deleted: bool,
    /// Its last value, when deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

/// `GET /v1/stats` answer: the fields of the proto's `Stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StatsBody {
    /// Dedup records retained.
    pub dedup_entries: u64,
    /// Repeats answered from the store.
    pub dedup_hits: u64,
    /// Records evicted (capacity or TTL).
    pub dedup_evictions: u64,
    /// Reused keys with a different payload.
    pub dedup_mismatches: u64,
    /// Updates applied.
    pub applied: u64,
    /// Registers held.
    pub registers: u64,
}

impl From<StatsView> for StatsBody {
    fn from(s: StatsView) -> Self {
        Self {
            dedup_entries: s.dedup_entries,
            dedup_hits: s.dedup_hits,
            dedup_evictions: s.dedup_evictions,
            dedup_mismatches: s.dedup_mismatches,
            applied: s.applied,
            registers: s.registers,
        }
    }
}

/// A JSON request body, checked in order: media type (415), size (413,
/// [`MESSAGE_BYTES_MAX`] like the gRPC front), syntax and shape (400).
#[derive(Debug, Clone, Copy)]
pub struct JsonBody<T>(pub T);

/// True for `application/json`, with or without parameters
/// (`; charset=utf-8`), in any letter case.
fn is_json(content_type: &HeaderValue) -> bool {
    let Ok(value) = content_type.to_str() else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = RestError;

    async fn from_request(req: Request, state: &S) -> Result<Self, RestError> {
        match req.headers().get(header::CONTENT_TYPE) {
            Some(ct) if is_json(ct) => {}
            Some(ct) => {
                return Err(RestError::UnsupportedMediaType(format!(
                    "{:?}",
                    ct.to_str().unwrap_or("(not text)")
                )));
            }
            None => return Err(RestError::UnsupportedMediaType("no Content-Type".into())),
        }
        // The router's `DefaultBodyLimit` caps what `Bytes` buffers, so an
        // oversized body is refused without being read whole.
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                RestError::BodyTooLarge {
                    limit: MESSAGE_BYTES_MAX,
                }
            } else {
                RestError::BodyUnreadable(rejection.body_text())
            }
        })?;
        from_json_object(&bytes)
            .map(JsonBody)
            .map_err(|e| RestError::MalformedJson(e.to_string()))
    }
}

/// Parses `bytes` as a `T` written as a JSON **object**. serde's derived
/// struct impls also take a JSON array of the fields in order, so plain
/// `serde_json::from_slice` read `[3]` as `{"delta": 3}`; a body type is an
/// object here, as in proto3's JSON mapping, and anything else is 400.
pub fn from_json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = T::deserialize(ObjectOnly(&mut de))?;
    de.end()?;
    Ok(value)
}

/// A deserializer that reads a struct only as a map (a JSON object), and
/// everything else as the wrapped one does. It applies to the top level
/// only, which is where our bodies' structs are.
struct ObjectOnly<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for ObjectOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// A response with `value` as its JSON body.
pub fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        // Our bodies are plain structs of numbers and strings: this cannot
        // fail, but if it ever did the client gets a 500, not a panic.
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        for (ct, ok) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("text/plain", false),
            ("application/jsonx", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            assert_eq!(is_json(&HeaderValue::from_static(ct)), ok, "{ct}");
        }
    }

    #[test]
    fn full_precision_operands_arrive_bit_for_bit() {
        // Without serde_json's `float_roundtrip` feature about one in ten
        // of these parses to a neighbouring double: the REST twin would
        // add other numbers than the caller sent.
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let wrong = (0..2000)
            .filter(|_| {
                let a: f64 = rng.random_range(-1e6..1e6);
                let text = serde_json::to_string(&BinaryBody { a, b: 0.0 }).unwrap();
                serde_json::from_str::<BinaryBody>(&text)
                    .unwrap()
                    .a
                    .to_bits()
                    != a.to_bits()
            })
            .count();
        assert_eq!(wrong, 0);
    }

    #[test]
    fn bodies_are_json_objects_only() {
        // serde's derive alone takes these arrays as the structs' fields.
        assert!(serde_json::from_str::<AccumulateBody>("[3]").is_ok());
        for (body, expected) in [
            ("[3]", r#"expected a JSON object {"delta": number}"#),
            ("3", "expected a JSON object"),
            (r#""delta""#, "expected a JSON object"),
            ("null", "expected a JSON object"),
            (r#"{"delta": 3} {}"#, "trailing characters"),
        ] {
            let err = from_json_object::<AccumulateBody>(body.as_bytes()).unwrap_err();
            assert!(err.to_string().contains(expected), "{body}: {err}");
        }
        let err = from_json_object::<BinaryBody>(b"[1, 2]").unwrap_err();
        assert!(err.to_string().contains("invalid type: sequence"), "{err}");
        assert_eq!(
            from_json_object::<AccumulateBody>(br#" {"delta": 3} "#).unwrap(),
            AccumulateBody { delta: 3.0 }
        );
        assert_eq!(
            from_json_object::<BinaryBody>(br#"{"b": 2, "a": 1}"#).unwrap(),
            BinaryBody { a: 1.0, b: 2.0 }
        );
    }

    #[test]
    fn numbers_json_cannot_carry_are_refused_by_the_parser() {
        // JSON has no NaN or infinity, and serde_json refuses a literal
        // that overflows f64 instead of rounding it to infinity: the core's
        // finiteness check is never the one that catches them here.
        for body in [
            r#"{"a": 1e999, "b": 1}"#,
            r#"{"a": NaN, "b": 1}"#,
            r#"{"a": "2", "b": 1}"#,
            r#"{"a": 2}"#,
            r#"{"a": 2, "b": 1, "c": 0}"#,
        ] {
            assert!(serde_json::from_str::<BinaryBody>(body).is_err(), "{body}");
        }
    }
}
