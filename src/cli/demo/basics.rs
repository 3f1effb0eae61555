//! Sections 1–3, against a healthy server (the embedded one or `--addr`):
//! arithmetic, bad input, and registers.

use super::tally::Tally;
use crate::client::Client;

/// Section 1: the pure RPCs.
pub(super) async fn arithmetic(t: &mut Tally, client: &Client) {
    println!("\n1. Pure arithmetic (NO_SIDE_EFFECTS: always safe to retry)");
    t.expect_ok("add(2, 3)", client.add(2.0, 3.0).await);
    t.expect_ok("subtract(10, 4.5)", client.subtract(10.0, 4.5).await);
    t.expect_ok("multiply(-3, 7)", client.multiply(-3.0, 7.0).await);
    t.expect_ok("divide(1, 8)", client.divide(1.0, 8.0).await);
}

/// Section 2: bad input answered with a status.
pub(super) async fn bad_input(t: &mut Tally, client: &Client) {
    println!("\n2. Bad input gets a clear gRPC status, never a panic");
    t.expect_err("divide(1, 0)", client.divide(1.0, 0.0).await);
    t.expect_err("multiply(1e308, 10)", client.multiply(1e308, 10.0).await);
    t.expect_err("add(NaN, 1)", client.add(f64::NAN, 1.0).await);
    t.expect_err("get(\"never-written\")", client.get("never-written").await);
}

/// Section 3: `Accumulate` on a healthy server.
pub(super) async fn registers(t: &mut Tally, client: &Client) {
    println!("\n3. Registers accumulate: each Accumulate is applied once per call");
    for delta in [5.0, 2.5, -1.0] {
        t.expect_ok(
            &format!("accumulate(demo, {delta})"),
            client.accumulate("demo", delta).await.map(|(v, _)| v),
        );
    }
    t.expect_ok("get(demo)", client.get("demo").await);
}
