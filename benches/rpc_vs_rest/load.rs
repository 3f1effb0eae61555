//! Closed-loop load: `concurrency` callers, each sending `Add` back to back
//! for a fixed time, every latency recorded (no histogram bucketing: at
//! these rates a sorted vector is small enough and exact).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    clients::Client,
    wire::{Bytes, Counters},
};

/// Longest one call may take before it counts as an error; keeps a stuck
/// run bounded.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What one timed run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    /// Latency of every successful call, in nanoseconds.
    pub(crate) latencies_ns: Vec<u64>,
    /// Failed or timed-out calls (a correct run has none).
    pub(crate) errors: u64,
    /// Wall time from the first call to the last answer.
    pub(crate) elapsed: Duration,
    /// Wire bytes during the run, both directions.
    pub(crate) bytes: Bytes,
    /// First error message, if any, for the progress output.
    pub(crate) first_error: Option<String>,
}

impl Sample {
    /// Counts a failed call, keeping the first reason for the progress line.
    pub(crate) fn fail(&mut self, why: impl Into<String>) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| why.into());
    }

    pub(crate) fn completed(&self) -> u64 {
        self.latencies_ns.len() as u64
    }

    /// Successful calls per second.
    pub(crate) fn throughput(&self) -> f64 {
        self.completed() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Merges another run of the same front and concurrency.
    pub(crate) fn absorb(&mut self, other: Sample) {
        self.latencies_ns.extend(other.latencies_ns);
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.bytes = Bytes {
            sent: self.bytes.sent + other.bytes.sent,
            received: self.bytes.received + other.bytes.received,
        };
        self.first_error = self.first_error.take().or(other.first_error);
    }
}

/// Nearest-rank percentile of sorted nanoseconds, in microseconds.
pub(crate) fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted_ns.len() as f64).ceil() as usize).clamp(1, sorted_ns.len());
    sorted_ns[rank - 1] as f64 / 1000.0
}

/// Runs every client in its own task for `duration`; returns the clients
/// (connections stay open for the next round) and the sample.
pub(crate) async fn run(
    clients: Vec<Client>,
    duration: Duration,
    counters: &Arc<Counters>,
) -> (Vec<Client>, Sample) {
    let before = counters.read();
    let start = Instant::now();
    let end = start + duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(caller, mut client)| {
            tokio::spawn(async move {
                let mut sample = Sample::default();
                let mut i: u64 = 0;
                while Instant::now() < end {
                    // Operands vary per call (so no layer can cache an
                    // answer) but stay short in both encodings.
                    let a = (i % 1000) as f64 + 0.25;
                    let b = caller as f64;
                    i += 1;
                    let t = Instant::now();
                    match tokio::time::timeout(CALL_TIMEOUT, client.add(a, b)).await {
                        Ok(Ok(sum)) if sum == a + b => {
                            sample.latencies_ns.push(t.elapsed().as_nanos() as u64)
                        }
                        Ok(Ok(sum)) => sample.fail(format!("wrong sum {sum}")),
                        Ok(Err(e)) => sample.fail(e),
                        Err(_) => sample.fail("timed out"),
                    }
                }
                (client, sample)
            })
        })
        .collect();
    let mut clients = Vec::with_capacity(tasks.len());
    let mut total = Sample::default();
    for task in tasks {
        match task.await {
            Ok((client, sample)) => {
                clients.push(client);
                total.absorb(sample);
            }
            Err(e) => {
                total.errors += 1;
                total
                    .first_error
                    .get_or_insert(format!("caller task failed: {e}"));
            }
        }
    }
    total.elapsed = start.elapsed();
    total.bytes = counters.read() - before;
    (clients, total)
}
