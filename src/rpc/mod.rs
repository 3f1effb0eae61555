//! The wire contract beyond what the proto's generated code gives: which
//! RPCs `abacus.v1.Calculator` has and how each side names them
//! ([`Method`]), the `grpc-timeout` header both sides read or write
//! ([`timeout`]), and the service config's durations ([`duration`]).
//!
//! Client, server, REST twin, load shedder and traces all name methods
//! through [`Method`], so one table says what `Accumulate` is called on the
//! wire, on the command line and in a metrics label, and whether it is safe
//! to repeat.
//!
//! # Layout
//! - [`method`]: [`Method`], the one table of RPC names and properties.
//! - [`timeout`]: the `grpc-timeout` header codec.
//! - [`metrics`]: gRFC A66's names, labels and buckets, shared by the
//!   server's and the client's metrics.
//! - [`health`]: which `grpc.health.v1` name answers for which RPC.
//! - [`duration`]: durations as gRPC's service config writes them.

pub mod duration;
pub mod health;
pub mod method;
pub mod metrics;
pub mod timeout;

pub use health::{HealthScope, REGISTERS_HEALTH_SERVICE, Serving};
pub use method::Method;
