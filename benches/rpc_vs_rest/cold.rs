//! Cold connections: every `Add` on a brand-new connection (TCP connect,
//! protocol handshake, one call), one after the other. This is what a
//! client without connection reuse pays — a CLI, a serverless function, a
//! script calling `curl` in a loop.
//!
//! Bytes are counted per connection from the first byte to the end of the
//! response: the HTTP/2 preface and SETTINGS exchange are in, the teardown
//! (GOAWAY, FIN) after the answer is not.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    clients::{self, Front, Target},
    load::Sample,
    wire::Counters,
};

/// One cold call on `front`: its latency and bytes added to `sample`.
pub(crate) async fn once(front: Front, target: Target, i: u64, sample: &mut Sample) {
    let counters = Arc::new(Counters::default());
    let a = (i % 1000) as f64 + 0.25;
    let start = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(5), async {
        let mut client = clients::connect(front, target, &counters).await?;
        client.add(a, 1.0).await
    })
    .await;
    let elapsed = start.elapsed();
    let bytes = counters.read();
    match result {
        Ok(Ok(sum)) if sum == a + 1.0 => {
            sample.latencies_ns.push(elapsed.as_nanos() as u64);
            sample.elapsed += elapsed;
            sample.bytes.sent += bytes.sent;
            sample.bytes.received += bytes.received;
        }
        Ok(Ok(sum)) => sample.fail(format!("wrong sum {sum}")),
        Ok(Err(e)) => sample.fail(e),
        Err(_) => sample.fail("timed out"),
    }
}
