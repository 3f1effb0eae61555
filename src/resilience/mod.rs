//! Decisions about failure, shared by both sides of the wire: plain
//! structs with no I/O, their clock and randomness passed in, so the same
//! implementation (and the same unit tests) serve the client's tower layers
//! and the server's guard in front of its store.
//!
//! # Layout
//! - [`breaker`]: the circuit breaker's configuration and state machine.
//! - [`backoff`]: exponential backoff with full jitter.
//! - [`budget`]: gRPC's token-bucket retry throttling.
//! - [`ratio_budget`]: Finagle's and Linkerd's retry budget, a ratio of
//!   the requests over a sliding window plus a floor per second.

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod ratio_budget;
