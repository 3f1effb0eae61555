//! The payload-size sweep, at the encoding level. The contract has no batch
//! RPC (every abacus request carries two or three scalars), so instead of
//! inventing one for the benchmark, this measures what a batch of N
//! operands would cost to encode and decode — size and CPU time — with
//! prost and with serde_json, using a local message type:
//! `message Operands { repeated double values = 1; }` (packed, as proto3
//! packs repeated scalars) against `{"values":[...]}`.
//!
//! Two kinds of values, because JSON's size depends on the digits while
//! protobuf's does not: small integers (`17` is 2 characters in JSON, 8
//! bytes as a double) and full-precision doubles (17 significant digits,
//! ~19–24 characters). The sweep also checks that every value survives the
//! round trip bit for bit.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The protobuf batch.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Operands {
    #[prost(double, repeated, tag = "1")]
    pub(crate) values: Vec<f64>,
}

/// The JSON batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OperandsJson {
    pub(crate) values: Vec<f64>,
}

/// What the operands look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Values {
    SmallIntegers,
    FullDoubles,
}

impl Values {
    pub(crate) const ALL: [Values; 2] = [Values::SmallIntegers, Values::FullDoubles];

    pub(crate) fn key(self) -> &'static str {
        match self {
            Values::SmallIntegers => "small_integers",
            Values::FullDoubles => "full_doubles",
        }
    }

    fn generate(self, n: usize) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        (0..n)
            .map(|_| match self {
                Values::SmallIntegers => rng.random_range(0..1000) as f64,
                Values::FullDoubles => rng.random_range(-1e6..1e6),
            })
            .collect()
    }
}

/// One row of the sweep.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) values: &'static str,
    pub(crate) n: usize,
    pub(crate) proto_bytes: usize,
    pub(crate) json_bytes: usize,
    pub(crate) proto_encode_ns: f64,
    pub(crate) proto_decode_ns: f64,
    pub(crate) json_encode_ns: f64,
    pub(crate) json_decode_ns: f64,
    /// Values that did not come back bit-identical through JSON.
    pub(crate) json_roundtrip_mismatches: usize,
}

/// Median over `batches` of the mean time of `f`, each batch lasting
/// about `budget / batches`.
fn time_ns(budget: Duration, mut f: impl FnMut()) -> f64 {
    const BATCHES: usize = 7;
    // Calibrate: how many calls fill one batch.
    let t = Instant::now();
    f();
    let one = t.elapsed().max(Duration::from_nanos(20));
    let per_batch =
        ((budget / BATCHES as u32).as_nanos() / one.as_nanos()).clamp(1, 10_000_000) as usize;
    let mut means: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            t.elapsed().as_nanos() as f64 / per_batch as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    means[BATCHES / 2]
}

/// Measures one (values, n) cell; `budget` is the time per measurement.
pub(crate) fn measure(values: Values, n: usize, budget: Duration) -> Row {
    let data = values.generate(n);
    let proto = Operands {
        values: data.clone(),
    };
    let json = OperandsJson {
        values: data.clone(),
    };
    let proto_bytes = proto.encode_to_vec();
    let json_bytes = serde_json::to_vec(&json).expect("finite values serialise");
    let back: OperandsJson = serde_json::from_slice(&json_bytes).expect("own output parses");
    let json_roundtrip_mismatches = back
        .values
        .iter()
        .zip(&data)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert_eq!(
        Operands::decode(&proto_bytes[..]).expect("own output decodes"),
        proto
    );

    let mut buf = Vec::with_capacity(proto_bytes.len().max(json_bytes.len()));
    let proto_encode_ns = time_ns(budget, || {
        buf.clear();
        black_box(&proto).encode(&mut buf).expect("buffer grows");
        black_box(&buf);
    });
    let proto_decode_ns = time_ns(budget, || {
        black_box(Operands::decode(black_box(&proto_bytes[..])).ok());
    });
    let json_encode_ns = time_ns(budget, || {
        buf.clear();
        serde_json::to_writer(&mut buf, black_box(&json)).expect("finite values serialise");
        black_box(&buf);
    });
    let json_decode_ns = time_ns(budget, || {
        black_box(serde_json::from_slice::<OperandsJson>(black_box(&json_bytes)).ok());
    });
    Row {
        values: values.key(),
        n,
        proto_bytes: proto_bytes.len(),
        json_bytes: json_bytes.len(),
        proto_encode_ns,
        proto_decode_ns,
        json_encode_ns,
        json_decode_ns,
        json_roundtrip_mismatches,
    }
}

/// The real `Add` messages of the load test, body only (no gRPC 5-byte
/// frame prefix, no HTTP framing), with typical operands.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Body {
    pub(crate) message: &'static str,
    pub(crate) proto_bytes: usize,
    pub(crate) json_bytes: usize,
}

pub(crate) fn add_bodies() -> Vec<Body> {
    use abacus::{pb, server::rest::json};
    let (a, b) = (500.25, 7.0);
    vec![
        Body {
            message: "Add request (a=500.25, b=7)",
            proto_bytes: pb::BinaryRequest { a, b }.encoded_len(),
            json_bytes: serde_json::to_vec(&json::BinaryBody { a, b }).map_or(0, |v| v.len()),
        },
        Body {
            message: "Add response (507.25)",
            proto_bytes: pb::CalcResponse { result: a + b }.encoded_len(),
            json_bytes: serde_json::to_vec(&json::ResultBody { result: a + b })
                .map_or(0, |v| v.len()),
        },
    ]
}
