//! Results: rows, the machine they came from, and every output — CSV and
//! JSON under `bench-results/`, Markdown tables on stdout, and (full runs
//! only) the SVG figures under `docs/img/` and the results section of
//! `docs/rpc-vs-rest.md`, so the report always shows the last full run.

use std::{fmt::Write as _, fs, path::Path};

use serde::Serialize;

use crate::{
    Ratios,
    clients::Front,
    encoding::{Body, Row},
    load::{Sample, percentile_us},
    median, plot,
};

/// The machine a run came from.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    pub(crate) cpu: String,
    pub(crate) cores: usize,
    pub(crate) kernel: String,
    pub(crate) date_utc: String,
}

impl Machine {
    pub(crate) fn here() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned());
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel,
            date_utc: today_utc(),
        }
    }

    fn label(&self) -> String {
        format!(
            "{} cores of {} (Linux {}), shared with other work; {}",
            self.cores, self.cpu, self.kernel, self.date_utc
        )
    }
}

/// `YYYY-MM-DD` from the system clock (civil-from-days, proleptic
/// Gregorian), to avoid a date crate for one line.
fn today_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// One front at one concurrency, warm connections.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LoadRow {
    pub(crate) front: &'static str,
    pub(crate) label: &'static str,
    pub(crate) concurrency: usize,
    pub(crate) calls: u64,
    pub(crate) errors: u64,
    pub(crate) seconds: f64,
    pub(crate) throughput_per_s: f64,
    pub(crate) p50_us: f64,
    pub(crate) p90_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) max_us: f64,
    pub(crate) request_bytes_per_call: f64,
    pub(crate) response_bytes_per_call: f64,
    /// Median over rounds of (this front / gRPC) in the same round.
    pub(crate) throughput_vs_grpc: f64,
    pub(crate) p50_vs_grpc: f64,
    pub(crate) p99_vs_grpc: f64,
}

impl LoadRow {
    pub(crate) fn new(front: Front, concurrency: usize, sample: &Sample, ratios: &Ratios) -> Self {
        let mut s = sample.latencies_ns.clone();
        s.sort_unstable();
        let calls = sample.completed().max(1) as f64;
        Self {
            front: front.key(),
            label: front.label(),
            concurrency,
            calls: sample.completed(),
            errors: sample.errors,
            seconds: sample.elapsed.as_secs_f64(),
            throughput_per_s: sample.throughput(),
            p50_us: percentile_us(&s, 0.5),
            p90_us: percentile_us(&s, 0.9),
            p99_us: percentile_us(&s, 0.99),
            max_us: percentile_us(&s, 1.0),
            request_bytes_per_call: sample.bytes.sent as f64 / calls,
            response_bytes_per_call: sample.bytes.received as f64 / calls,
            throughput_vs_grpc: median(&ratios.throughput),
            p50_vs_grpc: median(&ratios.p50),
            p99_vs_grpc: median(&ratios.p99),
        }
    }
}

/// One front, one call per new connection.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ColdRow {
    pub(crate) front: &'static str,
    pub(crate) label: &'static str,
    pub(crate) calls: u64,
    pub(crate) errors: u64,
    pub(crate) p50_us: f64,
    pub(crate) p90_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) max_us: f64,
    pub(crate) request_bytes_per_call: f64,
    pub(crate) response_bytes_per_call: f64,
    pub(crate) p50_vs_grpc: f64,
}

impl ColdRow {
    pub(crate) fn new(front: Front, sample: &Sample, p50_vs_grpc: f64) -> Self {
        let mut s = sample.latencies_ns.clone();
        s.sort_unstable();
        let calls = sample.completed().max(1) as f64;
        Self {
            front: front.key(),
            label: front.label(),
            calls: sample.completed(),
            errors: sample.errors,
            p50_us: percentile_us(&s, 0.5),
            p90_us: percentile_us(&s, 0.9),
            p99_us: percentile_us(&s, 0.99),
            max_us: percentile_us(&s, 1.0),
            request_bytes_per_call: sample.bytes.sent as f64 / calls,
            response_bytes_per_call: sample.bytes.received as f64 / calls,
            p50_vs_grpc,
        }
    }
}

/// Everything one run produced.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Results {
    pub(crate) machine: Machine,
    pub(crate) mode: &'static str,
    pub(crate) cell_seconds: f64,
    pub(crate) rounds: usize,
    pub(crate) load: Vec<LoadRow>,
    pub(crate) cold: Vec<ColdRow>,
    pub(crate) encoding: Vec<Row>,
    pub(crate) bodies: Vec<Body>,
}

const COMMAND: &str = "cargo bench --bench rpc_vs_rest";
const BEGIN: &str =
    "<!-- rpc_vs_rest:begin (generated by `cargo bench --bench rpc_vs_rest`; do not edit) -->";
const END: &str = "<!-- rpc_vs_rest:end -->";

fn csv<T: Serialize>(rows: &[T]) -> String {
    // Flat structs of numbers and strings: the JSON object's keys are the
    // header, its values the cells (strings never contain commas here).
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let Ok(serde_json::Value::Object(map)) = serde_json::to_value(row) else {
            continue;
        };
        if i == 0 {
            out += &map.keys().cloned().collect::<Vec<_>>().join(",");
            out.push('\n');
        }
        let cells: Vec<String> = map
            .values()
            .map(|v| match v {
                serde_json::Value::String(s) => format!("\"{s}\""),
                other => other.to_string(),
            })
            .collect();
        out += &cells.join(",");
        out.push('\n');
    }
    out
}

/// The Markdown tables of a run.
pub(crate) fn tables(r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Run: `{COMMAND}`{} — {} mode, {} s per front per concurrency in {} alternating rounds.  \nMachine: {}.\n",
        if r.mode == "quick" { " -- --quick" } else { "" },
        r.mode,
        r.cell_seconds,
        r.rounds,
        r.machine.label()
    );
    let _ = writeln!(
        md,
        "**Warm connections: unary `Add`, closed loop.** Ratios are medians of per-round ratios against gRPC in the same round (throughput: higher is better; latency: lower is better).\n"
    );
    let _ = writeln!(
        md,
        "| callers | front | calls/s | p50 µs | p90 µs | p99 µs | max µs | request B/call | response B/call | calls/s ÷ gRPC | p50 ÷ gRPC | p99 ÷ gRPC |"
    );
    let _ = writeln!(
        md,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for l in &r.load {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} |{}",
            l.concurrency,
            l.label,
            l.throughput_per_s,
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.max_us,
            l.request_bytes_per_call,
            l.response_bytes_per_call,
            l.throughput_vs_grpc,
            l.p50_vs_grpc,
            l.p99_vs_grpc,
            if l.errors > 0 {
                format!(" **{} errors**", l.errors)
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(
        md,
        "\n**Cold connections: one `Add` per new connection, sequential.** Bytes from the first byte to the end of the response (handshakes in, teardown out).\n"
    );
    let _ = writeln!(
        md,
        "| front | calls | p50 µs | p90 µs | p99 µs | max µs | request B/call | response B/call | p50 ÷ gRPC |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in &r.cold {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |{}",
            c.label,
            c.calls,
            c.p50_us,
            c.p90_us,
            c.p99_us,
            c.max_us,
            c.request_bytes_per_call,
            c.response_bytes_per_call,
            c.p50_vs_grpc,
            if c.errors > 0 {
                format!(" **{} errors**", c.errors)
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(
        md,
        "\n**Message bodies alone** (no gRPC 5-byte prefix, no HTTP framing).\n"
    );
    let _ = writeln!(md, "| message | protobuf B | JSON B |");
    let _ = writeln!(md, "|---|---:|---:|");
    for b in &r.bodies {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            b.message, b.proto_bytes, b.json_bytes
        );
    }
    let _ = writeln!(
        md,
        "\n**Payload-size sweep at the encoding level** (no batch RPC exists; a local `repeated double` message vs `{{\"values\":[…]}}`). Times are encode + decode of one message, median of 7 batches.\n"
    );
    let _ = writeln!(
        md,
        "| values | N | protobuf B | JSON B | JSON ÷ protobuf size | protobuf µs | JSON µs | JSON ÷ protobuf time | JSON round-trip mismatches |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for e in &r.encoding {
        let p = (e.proto_encode_ns + e.proto_decode_ns) / 1000.0;
        let j = (e.json_encode_ns + e.json_decode_ns) / 1000.0;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.1} | {} |",
            e.values.replace('_', " "),
            e.n,
            e.proto_bytes,
            e.json_bytes,
            e.json_bytes as f64 / e.proto_bytes.max(1) as f64,
            p,
            j,
            j / p,
            e.json_roundtrip_mismatches
        );
    }
    md
}

/// Writes every output; on a full run also the figures and the docs.
pub(crate) fn write(r: &Results, quick: bool) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("bench-results");
    let md = tables(r);
    let files: [(&str, String); 5] = [
        ("rpc_vs_rest_load.csv", csv(&r.load)),
        ("rpc_vs_rest_cold.csv", csv(&r.cold)),
        ("rpc_vs_rest_encoding.csv", csv(&r.encoding)),
        (
            "rpc_vs_rest.json",
            serde_json::to_string_pretty(r).unwrap_or_default(),
        ),
        ("rpc_vs_rest_tables.md", md.clone()),
    ];
    if let Err(e) = fs::create_dir_all(&out) {
        eprintln!("cannot create {}: {e}", out.display());
    }
    for (name, text) in files {
        let path = out.join(name);
        match fs::write(&path, text) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
    println!("{md}");
    // A quick run's figures go next to its numbers, never into docs/.
    let img = if quick {
        out.join("img")
    } else {
        root.join("docs/img")
    };
    if let Err(e) = fs::create_dir_all(&img) {
        eprintln!("cannot create {}: {e}", img.display());
    }
    for (name, result) in plot::all(r, &img) {
        match result {
            Ok(()) => eprintln!("wrote {}", img.join(name).display()),
            Err(e) => eprintln!("cannot draw {}: {e}", img.join(name).display()),
        }
    }
    if quick {
        eprintln!("quick run: docs/ left as they are (a full run rewrites the figures and tables)");
        return;
    }
    splice(&root.join("docs/rpc-vs-rest.md"), &md);
}

/// Replaces the generated section of the report, between its markers.
fn splice(report: &Path, md: &str) {
    let Ok(text) = fs::read_to_string(report) else {
        eprintln!(
            "{} not found: tables only in bench-results/",
            report.display()
        );
        return;
    };
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        eprintln!("{}: markers not found; not updated", report.display());
        return;
    };
    let updated = format!("{}{BEGIN}\n\n{md}\n{}", &text[..b], &text[e..]);
    match fs::write(report, updated) {
        Ok(()) => eprintln!("updated the results section of {}", report.display()),
        Err(e) => eprintln!("cannot write {}: {e}", report.display()),
    }
}
