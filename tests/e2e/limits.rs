//! Messages no well-behaved client sends: too big, or not protobuf at all.
//! Each must get a status, never a crash, and the server must keep serving
//! on the same connection.

use abacus::{pb, server::MESSAGE_BYTES_MAX};
use prost::Message as _;
use tonic::Code;

use crate::harness::{Expect, Rpc, TestServer, acc, get};

const ADD: &str = "/abacus.v1.Calculator/Add";
const ACCUMULATE: &str = "/abacus.v1.Calculator/Accumulate";

#[tokio::test]
async fn oversized_message_is_refused_and_server_keeps_serving() {
    let huge = "x".repeat(20 * 1024);
    assert!(huge.len() > MESSAGE_BYTES_MAX);
    let server = TestServer::healthy().await;
    server
        .conn()
        .await
        .check_all(vec![
            // tonic's decoder refuses a frame longer than
            // `max_decoding_message_size` with OUT_OF_RANGE (not the
            // RESOURCE_EXHAUSTED the gRPC spec suggests), before the
            // handler runs, so there is no not-applied marker.
            (
                acc(huge.clone(), 1.0),
                Expect::Failed(Code::OutOfRange, "decoded message length too large"),
            ),
            (
                get(huge),
                Expect::Failed(Code::OutOfRange, "the limit is: 16384 bytes"),
            ),
            // Same connection, still serving; nothing was applied.
            (Rpc::Add(1.0, 2.0), Expect::Value(3.0)),
            (get("x"), Expect::Refused(Code::NotFound, "does not exist")),
            (
                Rpc::Stats,
                Expect::Stats {
                    applied: 0,
                    registers: 0,
                },
            ),
        ])
        .await;
}

#[tokio::test]
async fn malformed_messages_get_internal_and_server_keeps_serving() {
    let raw = |path, body: &[u8]| Rpc::Raw {
        path,
        body: body.to_vec(),
    };
    let valid_add = pb::BinaryRequest { a: 2.0, b: 3.0 }.encode_to_vec();
    let five = pb::CalcResponse { result: 5.0 }.encode_to_vec();
    let server = TestServer::healthy().await;
    server
        .conn()
        .await
        .check_all(vec![
            // Control: the raw codec itself works, so the failures below are
            // due to the bytes alone.
            (raw(ADD, &valid_add), Expect::Raw(five)),
            // An empty message is a valid proto3 message (all defaults).
            (raw(ADD, &[]), Expect::Raw(Vec::new())),
            // Field 1 as a varint whose continuation bit never ends.
            (
                raw(ADD, &[0x08, 0xff, 0xff, 0xff]),
                Expect::Failed(Code::Internal, "failed to decode Protobuf message"),
            ),
            // Field 1 (a double) declared with wire type 2 and a length that
            // runs past the end.
            (
                raw(ADD, &[0x0a, 0x7f, 0x01]),
                Expect::Failed(Code::Internal, "failed to decode Protobuf message"),
            ),
            // Field number 0 is invalid.
            (
                raw(ADD, &[0x00]),
                Expect::Failed(Code::Internal, "failed to decode Protobuf message"),
            ),
            // The register name (field 1, a string) is not UTF-8.
            (
                raw(ACCUMULATE, &[0x0a, 0x02, 0xc3, 0x28]),
                Expect::Failed(Code::Internal, "failed to decode Protobuf message"),
            ),
            // An unknown method gets UNIMPLEMENTED.
            (
                raw("/abacus.v1.Calculator/Power", &valid_add),
                Expect::Failed(Code::Unimplemented, ""),
            ),
            // Still serving on the same connection, and nothing was applied.
            (Rpc::Add(2.0, 3.0), Expect::Value(5.0)),
            (
                Rpc::Stats,
                Expect::Stats {
                    applied: 0,
                    registers: 0,
                },
            ),
        ])
        .await;
}
