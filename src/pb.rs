//! Code generated from `proto/abacus/v1/calculator.proto` by `build.rs`, and
//! the encoded descriptor set that gRPC reflection serves.

#![allow(missing_docs, unreachable_pub, missing_debug_implementations)]
#![allow(clippy::all)]

tonic::include_proto!("abacus.v1");

/// The compiled contract, for `grpc.reflection.v1` / `v1alpha`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("abacus_descriptor");

/// Fully-qualified service name, as health checks and service configs name it.
pub const SERVICE_NAME: &str = "abacus.v1.Calculator";
