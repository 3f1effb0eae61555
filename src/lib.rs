//! abacus: a distributed calculator over gRPC, built to show how an RPC
//! system survives timeouts, retries, duplicate requests, partial failures and
//! cascading outages — and to prove it by deterministic simulation.
//!
//! # Layout
//! - [`core`]: pure arithmetic and register rules; no I/O, never awaits.
//! - [`error`]: typed errors and their one mapping to `tonic::Status` and
//!   HTTP statuses.
//! - [`pb`]: code generated from `proto/abacus/v1/calculator.proto`.
//! - [`rpc`]: the RPCs' names and properties ([`rpc::Method`]) and the
//!   `grpc-timeout` codec, shared by client and server.
//! - [`server`]: one calculator service, served over gRPC (tonic) and, as
//!   its REST twin, HTTP/JSON (axum), over any connection stream.
//! - [`store`]: the seam between the service and its state, the
//!   [`store::Ledger`] every backend implements.
//! - [`client`]: the resilient client, a stack of tower layers.
//! - [`resilience`]: decisions about failure (breaker, backoff, retry
//!   budget) shared by the client and the server's store guard.
//! - [`trace`]: typed events shared by logs, the sim checker and snapshots.
//! - [`tls`]: TLS material (PEM files, the crypto provider) both sides load.
//! - [`cli`]: the `abacus` command line (serve, call, demo).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod core;
pub mod error;
pub mod pb;
pub mod resilience;
pub mod rpc;
pub mod server;
pub mod store;
pub mod tls;
pub mod trace;
