//! The REST twin: the calculator as HTTP/JSON, an axum router over the
//! same [`Calculator`] service as the gRPC front — same core, same state,
//! same dedup store, same fault plan, same in-flight limit. It exists to
//! compare the two styles honestly (`docs/rpc-vs-rest.md`), so it has the
//! same semantics, limits and error model, spelled the HTTP way.
//!
//! # API
//! | request | answer |
//! |---|---|
//! | `POST /v1/add` (`subtract`, `multiply`, `divide`) `{"a":2,"b":3}` | `{"result":5.0}` |
//! | `POST /v1/registers/{name}:accumulate` `{"delta":5}`, header `Idempotency-Key` optional | `{"value":5.0,"replayed":false}` |
//! | `GET /v1/registers/{name}` | `{"value":5.0}` |
//! | `DELETE /v1/registers/{name}` (writers) | `{"deleted":true,"value":5.0}` |
//! | `GET /v1/stats` | the proto's `Stats` fields |
//! | `GET /healthz` | `{"status":"SERVING"}` (never shed) |
//!
//! Bodies must be `Content-Type: application/json` (else 415), at most
//! [`MESSAGE_BYTES_MAX`] bytes like the gRPC side (else 413), and exactly
//! the fields above (else 400). Every error is a JSON body
//! `{"error":{"code","message","not_applied"}}` whose status comes from the
//! one mapping in [`error`]. `abacus-timeout-ms: N` is the caller's
//! deadline, honoured exactly like `grpc-timeout` (a malformed value is 400
//! rather than ignored).
//!
//! # Idempotency (IETF httpapi `Idempotency-Key` draft)
//! The key is the request ID of the gRPC front: both fronts read and write
//! one dedup store, so a key is a request ID whichever front sent it.
//! - *Replay*: the same key with the same payload (register and delta)
//!   returns the first execution's response — success or recorded error —
//!   with `abacus-replayed: true` (the gRPC front's metadata key, one name
//!   for both) and `"replayed": true` in a success body.
//! - *Mismatch*: the same key with a different payload is refused with
//!   **409** `FAILED_PRECONDITION`. The draft suggests 422; we keep 409
//!   because the status is derived from the gRPC code in one place
//!   ([`crate::error::ServiceError::http_status`]), where
//!   FAILED_PRECONDITION (the request is valid, it conflicts with state the
//!   server holds) is 409. The `code` field tells it apart from the other
//!   409, `ABORTED`.
//! - *Concurrent duplicate*: it waits for the first execution and replays
//!   its outcome, rather than the draft's immediate 409: a duplicate usually
//!   *is* the retry of a caller that timed out because the first was slow,
//!   and refusing it would fail exactly the retries keys exist for (see
//!   [`crate::store::dedup`]). Only if the wait outlives its deadline or the
//!   join limit is it answered 409 `ABORTED`, `not_applied: false`.
//! - No key: applied, not deduplicated (400 with `--require-request-id`).
//!
//! # Layout
//! - [`handlers`]: one function per endpoint, and the shedding middleware.
//! - [`json`]: wire types and the JSON body extractor.
//! - [`headers`]: `Idempotency-Key` and `abacus-timeout-ms`.
//! - [`error`]: [`RestError`] and its one mapping to status + JSON body.
//! - [`serve`]: [`serve_rest`], HTTP/1.1 keep-alive and h2c on one port
//!   (and TLS, with ALPN, when the server has a certificate).
//! - [`edge`]: tokens and metrics, shared with the gRPC front.
//! - [`peer`]: the caller's address, for per-client bounds.
//! - [`openapi`]: the OpenAPI document (`GET /openapi.json`,
//!   `docs/openapi.json`).

pub mod edge;
pub mod error;
pub mod handlers;
pub mod headers;
pub mod json;
pub mod openapi;
pub mod peer;
pub mod serve;

use axum::{
    Router,
    extract::{DefaultBodyLimit, State},
    http::HeaderMap,
    middleware,
    routing::{get, post},
};

pub use error::RestError;
pub use serve::{serve_rest, serve_rest_with};

use crate::{
    core::BinaryOp,
    server::{MESSAGE_BYTES_MAX, service::Calculator},
};
use json::{BinaryBody, JsonBody};

/// The router of the REST twin over `calculator`.
pub fn router(calculator: Calculator) -> Router {
    let mut calls = Router::new();
    for op in BinaryOp::ALL {
        let handler = move |State(calculator): State<Calculator>,
                            headers: HeaderMap,
                            body: Result<JsonBody<BinaryBody>, RestError>| {
            handlers::binary(op, calculator, headers, body)
        };
        calls = calls.route(&format!("/v1/{}", op.name()), post(handler));
    }
    let calls = calls
        .route(
            "/v1/registers/{target}",
            get(handlers::get_register)
                .post(handlers::register_action)
                .delete(handlers::delete_register),
        )
        .route("/v1/stats", get(handlers::stats))
        // Only the routes above are admitted through the shared in-flight
        // limit; health (below) must answer however busy the server is.
        .route_layer(middleware::from_fn_with_state(
            calculator.clone(),
            handlers::admit,
        ))
        // Outside admission: an unauthenticated call never takes a slot.
        .route_layer(middleware::from_fn_with_state(
            calculator.clone(),
            edge::authenticate,
        ));
    let document = std::sync::Arc::<str>::from(openapi::document_json());
    calls
        .route("/healthz", get(handlers::healthz))
        .route(
            openapi::OPENAPI_PATH,
            get(move || {
                let document = std::sync::Arc::clone(&document);
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        document.to_string(),
                    )
                }
            }),
        )
        .fallback(handlers::no_route)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(MESSAGE_BYTES_MAX))
        // Outermost: every request counts, refused and unknown ones too.
        .layer(middleware::from_fn_with_state(
            calculator.clone(),
            edge::record,
        ))
        .with_state(calculator)
}
