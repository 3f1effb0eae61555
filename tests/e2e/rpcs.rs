//! Every Calculator RPC, happy path and refusals.

use tonic::Code;

use crate::harness::{Expect, Rpc, TestServer, acc, get};

#[tokio::test]
async fn every_rpc_answers() {
    let server = TestServer::healthy().await;
    server
        .conn()
        .await
        .check_all(vec![
            (Rpc::Add(2.0, 3.0), Expect::Value(5.0)),
            (Rpc::Add(-1.5, 0.25), Expect::Value(-1.25)),
            (Rpc::Subtract(10.0, 4.5), Expect::Value(5.5)),
            (Rpc::Multiply(-3.0, 7.0), Expect::Value(-21.0)),
            (Rpc::Divide(1.0, 8.0), Expect::Value(0.125)),
            (Rpc::Divide(-0.0, 5.0), Expect::Value(0.0)),
            (
                Rpc::Stats,
                Expect::Stats {
                    applied: 0,
                    registers: 0,
                },
            ),
            (acc("r", 5.0), Expect::Accumulated(5.0)),
            (acc("r", -2.5), Expect::Accumulated(2.5)),
            (acc("other", 1.0), Expect::Accumulated(1.0)),
            (get("r"), Expect::Value(2.5)),
            (get("other"), Expect::Value(1.0)),
            // Names up to 64 bytes, and non-ASCII ones, are fine.
            (acc("x".repeat(64), 1.0), Expect::Accumulated(1.0)),
            (acc("größe", 2.0), Expect::Accumulated(2.0)),
            (
                Rpc::Stats,
                Expect::Stats {
                    applied: 5,
                    registers: 4,
                },
            ),
        ])
        .await;
}

#[tokio::test]
async fn refusals_carry_code_message_and_marker() {
    use Code::{InvalidArgument, NotFound};
    let server = TestServer::healthy().await;
    server
        .conn()
        .await
        .check_all(vec![
            (
                Rpc::Divide(1.0, 0.0),
                Expect::Refused(InvalidArgument, "division by zero"),
            ),
            (
                Rpc::Divide(1.0, -0.0),
                Expect::Refused(InvalidArgument, "division by zero"),
            ),
            (
                Rpc::Add(f64::NAN, 1.0),
                Expect::Refused(InvalidArgument, "operand a is NaN"),
            ),
            (
                Rpc::Subtract(1.0, f64::INFINITY),
                Expect::Refused(InvalidArgument, "operand b is inf"),
            ),
            (
                Rpc::Multiply(f64::NEG_INFINITY, 1.0),
                Expect::Refused(InvalidArgument, "operand a is -inf"),
            ),
            (
                Rpc::Multiply(f64::MAX, 2.0),
                Expect::Refused(InvalidArgument, "overflow: multiply("),
            ),
            (
                Rpc::Add(f64::MAX, f64::MAX),
                Expect::Refused(InvalidArgument, "overflow: add("),
            ),
            (
                acc("r", f64::NAN),
                Expect::Refused(InvalidArgument, "is NaN"),
            ),
            // Accumulate overflow: the register holds MAX; adding MAX again
            // is refused and the register keeps its value.
            (acc("big", f64::MAX), Expect::Accumulated(f64::MAX)),
            (
                acc("big", f64::MAX),
                Expect::Refused(InvalidArgument, "overflow: register \"big\""),
            ),
            (get("big"), Expect::Value(f64::MAX)),
            (
                get("never-written"),
                Expect::Refused(NotFound, "register \"never-written\" does not exist"),
            ),
            (
                acc("", 1.0),
                Expect::Refused(InvalidArgument, "register name must not be empty"),
            ),
            (
                get(""),
                Expect::Refused(InvalidArgument, "register name must not be empty"),
            ),
            (
                acc("x".repeat(65), 1.0),
                Expect::Refused(
                    InvalidArgument,
                    "register name is 65 bytes; the limit is 64",
                ),
            ),
            (
                acc("bad\nname", 1.0),
                Expect::Refused(
                    InvalidArgument,
                    "U+000A at character 4, a control character",
                ),
            ),
            (
                acc("bell\u{7}", 1.0),
                Expect::Refused(
                    InvalidArgument,
                    "U+0007 at character 5, a control character",
                ),
            ),
            (
                acc("nul\0", 1.0),
                Expect::Refused(
                    InvalidArgument,
                    "U+0000 at character 4, a control character",
                ),
            ),
            // Invisible characters that make one name pass for another.
            (
                acc("txt\u{202E}exe", 1.0),
                Expect::Refused(
                    InvalidArgument,
                    "U+202E at character 4, an invisible format",
                ),
            ),
            (
                acc("to\u{200B}tal", 1.0),
                Expect::Refused(
                    InvalidArgument,
                    "U+200B at character 3, an invisible format",
                ),
            ),
            (
                acc("\u{FEFF}total", 1.0),
                Expect::Refused(
                    InvalidArgument,
                    "U+FEFF at character 1, an invisible format",
                ),
            ),
            (
                get("to\u{200B}tal"),
                Expect::Refused(InvalidArgument, "U+200B at character 3"),
            ),
            // None of the refused calls changed anything: only "big" exists,
            // written once.
            (
                Rpc::Stats,
                Expect::Stats {
                    applied: 1,
                    registers: 1,
                },
            ),
        ])
        .await;
}

#[tokio::test]
async fn composed_and_decomposed_names_are_one_register() {
    let composed = "caf\u{e9}";
    let decomposed = "cafe\u{301}";
    let server = TestServer::healthy().await;
    server
        .conn()
        .await
        .check_all(vec![
            (acc(composed, 1.0), Expect::Accumulated(1.0)),
            (acc(decomposed, 2.0), Expect::Accumulated(3.0)),
            (get(composed), Expect::Value(3.0)),
            (get(decomposed), Expect::Value(3.0)),
            (
                Rpc::Stats,
                Expect::Stats {
                    applied: 2,
                    registers: 1,
                },
            ),
        ])
        .await;
}

// Negative controls: `check` fails on a wrong value and on a missing or
// unexpected not-applied marker, so the tables above can fail.

#[tokio::test]
#[should_panic(expected = "expected: Value(6.0)")]
async fn check_rejects_a_wrong_value() {
    let server = TestServer::healthy().await;
    server
        .conn()
        .await
        .check(Rpc::Add(2.0, 3.0), Expect::Value(6.0))
        .await;
}

#[tokio::test]
#[should_panic(expected = "expected: Failed(InvalidArgument")]
async fn check_rejects_a_marker_where_none_is_expected() {
    let server = TestServer::healthy().await;
    server
        .conn()
        .await
        .check(
            Rpc::Divide(1.0, 0.0),
            Expect::Failed(Code::InvalidArgument, "division by zero"),
        )
        .await;
}
