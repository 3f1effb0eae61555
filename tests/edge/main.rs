//! End-to-end tests of the edge a deployment adds — TLS, tokens and
//! metrics — on both fronts of a real server on loopback sockets, with
//! certificates generated at run time (`support/certs.rs`, rcgen).
//!
//! # Scenarios
//! - [`tls`]: gRPC and REST over TLS and mutual TLS; a wrong CA, an expired
//!   certificate, a client without a certificate, plaintext to a TLS port
//!   and TLS to a plaintext port all fail cleanly (UNAVAILABLE, never a
//!   hang or a panic); a handshake never finished is cut at the first-byte
//!   timeout; bad files are refused at start with the flag's name.
//! - [`auth`]: tokens of each role on both fronts, health open, identities
//!   scoping request IDs, the per-identity rate limit and the client
//!   honouring its pushback.
//! - [`metrics`]: `/metrics` scraped and parsed, its values those of the
//!   calls made; the client's recorder.
//! - [`secrets`]: no token or key in the binary's logs or errors.
//! - [`openapi`]: the REST twin's OpenAPI document.

#[path = "../support/certs.rs"]
mod certs;
#[path = "../support/listening.rs"]
mod listening;
mod support;
#[path = "../support/temp_dir.rs"]
mod temp_dir;

mod auth;
mod metrics;
mod openapi;
mod secrets;
mod tls;
