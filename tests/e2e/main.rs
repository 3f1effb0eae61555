//! End-to-end tests: the real server on a real loopback socket
//! (`127.0.0.1:0`), called through tonic's generated clients.
//!
//! # Scenarios
//! - [`rpcs`]: every Calculator RPC's happy path, and every refusal with its
//!   code, a useful message and the not-applied marker.
//! - [`limits`]: an oversized message and malformed bytes; the server
//!   answers with a status and keeps serving.
//! - [`discovery`]: `grpc.health.v1.Health` and reflection (v1 and v1alpha).
//! - [`faults`]: `fail_rate`, `drop_after_apply_rate` and `delay_ms` as seen
//!   on the wire, including the partial failure.
//! - [`client`]: `abacus::client`'s outcome classification against the real
//!   server.
//! - [`requests`]: every `abacus::client::Request` is sent as the RPC it
//!   names; at-most-once never re-sends one that may have been applied.
//! - [`log_sink`]: the real binary keeps serving with its log pipe unread.
//! - [`flood`]: streams behind a zero window, Watch streams, non-gRPC
//!   content types and extra request messages (over [`raw_h2`] and `h2`).
//! - [`sockets`]: idle sockets on both fronts, and the real binary under a
//!   low open-file limit.
//! - [`peer`]: the caller's address reaches the ledger.
//!
//! Every table runs through [`harness::Conn::check`].

mod client;
#[path = "../support/closed_port.rs"]
mod closed_port;
mod discovery;
mod faults;
mod flood;
mod harness;
mod limits;
mod log_sink;
mod peer;
mod raw_h2;
mod requests;
mod rpcs;
mod sockets;
