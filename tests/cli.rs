//! The real `abacus` binary, as a person at a terminal would use it.
//!
//! - `--help` of each subcommand names its flags.
//! - Bad flags exit with code 2 and say what is wrong.
//! - `abacus call` against a real `abacus serve`: results on stdout, errors
//!   on stderr with a non-zero exit, negative operands, and a refused
//!   connection reported as not applied.
//! - `abacus demo` runs to its summary, showing what each section is about,
//!   and takes the client policy flags.
//! - Replicas: `abacus call --addr DEAD,LIVE` fails over after one
//!   backoff pause, without waiting out the dead endpoint's timeout;
//!   `abacus bench` over three `abacus serve` processes, one SIGKILLed
//!   mid-run, fails no pure call.
//!
//! Every run goes through [`check`]. Servers are started on
//! `127.0.0.1:0`; the test reads the bound address from the server's log
//! line, so there is no port race and no polling.

use std::{
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

#[path = "support/listening.rs"]
mod listening;

use listening::Served;

#[path = "support/closed_port.rs"]
mod closed_port;

use closed_port::ClosedPort;

const BIN: &str = env!("CARGO_BIN_EXE_abacus");

/// What a run must produce.
#[derive(Debug, Clone, Copy)]
struct Expect {
    /// Exit code.
    code: i32,
    /// Fragments stdout must contain.
    stdout: &'static [&'static str],
    /// Fragments stderr must contain.
    stderr: &'static [&'static str],
}

/// Exit 0, these fragments on stdout.
const fn ok(stdout: &'static [&'static str]) -> Expect {
    Expect {
        code: 0,
        stdout,
        stderr: &[],
    }
}

/// Exit `code`, these fragments on stderr, nothing on stdout.
const fn fails(code: i32, stderr: &'static [&'static str]) -> Expect {
    Expect {
        code,
        stdout: &[],
        stderr,
    }
}

/// Runs `abacus args...` to completion and asserts `expect`.
fn check(args: &[&str], expect: Expect) {
    let out = Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run abacus");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!(
        "abacus {}\n  expected: {expect:?}\n  exit: {:?}\n  stdout: {stdout}\n  stderr: {stderr}",
        args.join(" "),
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(expect.code), "{context}");
    for want in expect.stdout {
        assert!(stdout.contains(want), "stdout lacks {want:?}: {context}");
    }
    for want in expect.stderr {
        assert!(stderr.contains(want), "stderr lacks {want:?}: {context}");
    }
    if expect.code != 0 {
        assert!(stdout.is_empty(), "a failure printed a result: {context}");
    }
}

/// An `abacus serve` child process, killed when dropped ([`Served`]).
struct Server {
    served: Served,
    addr: String,
}

impl Server {
    /// Starts `abacus serve --addr 127.0.0.1:0 extra...` and waits for the
    /// log line that carries the bound address (it is printed after bind,
    /// so the port accepts connections from then on).
    fn start(extra: &[&str]) -> Self {
        Self::start_logging(extra, "info")
    }

    /// [`Server::start`] with `RUST_LOG=log`.
    fn start_logging(extra: &[&str], log: &str) -> Self {
        let extra: Vec<&std::ffi::OsStr> = extra.iter().map(std::ffi::OsStr::new).collect();
        let served = Served::spawn(std::path::Path::new(BIN), &extra, log);
        let addr = served.addr();
        Self { served, addr }
    }
}

#[test]
fn help_names_every_flag() {
    let table: [(&[&str], Expect); 6] = [
        (&["--help"], ok(&["serve", "call", "demo", "bench"])),
        (
            &["bench", "--help"],
            ok(&[
                "--addr",
                "--calls",
                "--duration",
                "--concurrency",
                "--json",
                "--hedge-delay-ms",
                "--balance",
                "accumulate",
            ]),
        ),
        (
            &["serve", "--help"],
            ok(&[
                "--addr",
                "--rest-addr",
                "--fail-rate",
                "--delay-ms",
                "--drop-after-apply-rate",
                "--fault-seed",
            ]),
        ),
        (
            &["call", "--help"],
            ok(&[
                "--addr",
                "add",
                "subtract",
                "multiply",
                "divide",
                "accumulate",
                "get",
                "stats",
            ]),
        ),
        (
            &["call", "accumulate", "--help"],
            ok(&["--register", "--request-id", "<DELTA>"]),
        ),
        (
            &["demo", "--help"],
            ok(&["--addr", "--seed", "--mode", "--deadline-ms", "--attempts"]),
        ),
    ];
    for (args, expect) in table {
        check(args, expect);
    }
}

#[test]
fn bad_flags_exit_2_with_a_clear_message() {
    let table: [(&[&str], Expect); 11] = [
        (
            &["serve", "--fail-rate", "2"],
            fails(
                2,
                &["fail-rate must be a probability between 0 and 1, got 2"],
            ),
        ),
        (
            &["serve", "--drop-after-apply-rate=-0.5"],
            fails(2, &["drop-after-apply-rate must be a probability"]),
        ),
        (
            &["serve", "--delay-ms", "9..3"],
            fails(2, &["delay range 9..3 is empty"]),
        ),
        (
            &["serve", "--delay-ms", "soon"],
            fails(2, &["\"soon\" is not a whole number of milliseconds"]),
        ),
        (
            &["call", "add", "two", "3"],
            fails(2, &["invalid value 'two'"]),
        ),
        (
            &["call", "--addr", "not an addr", "add", "1", "1"],
            fails(2, &["\"not an addr\" is not a server address"]),
        ),
        (
            &["demo", "--attempts", "0"],
            fails(2, &["attempts must be between 1 and 10, got 0"]),
        ),
        (
            &["call", "--addr", "127.0.0.1:1,nope", "add", "1", "1"],
            fails(2, &["\"nope\" is not a server address"]),
        ),
        (
            &[
                "bench",
                "add",
                "--hedge-delay-ms",
                "5",
                "--hedge-attempts",
                "9",
            ],
            fails(2, &["hedge attempts must be between 2 and 5, got 9"]),
        ),
        (
            &["bench", "add", "--duration", "5h"],
            fails(2, &["the unit must be ms, s or m"]),
        ),
        (
            &["bench", "add", "--concurrency", "0"],
            fails(2, &["--concurrency must be between 1 and 1024"]),
        ),
    ];
    for (args, expect) in table {
        check(args, expect);
    }
}

#[test]
fn call_against_a_running_server() {
    let server = Server::start(&[]);
    let addr = server.addr.as_str();
    let table: Vec<(Vec<&str>, Expect)> = vec![
        (vec!["add", "2", "3"], ok(&["2 + 3 = 5"])),
        (vec!["subtract", "10", "4.5"], ok(&["10 - 4.5 = 5.5"])),
        (vec!["multiply", "-3", "7"], ok(&["-3 * 7 = -21"])),
        (vec!["div", "1", "8"], ok(&["1 / 8 = 0.125"])),
        (
            vec!["divide", "1", "0"],
            fails(1, &["division by zero", "NOT applied"]),
        ),
        (
            vec!["get", "r"],
            fails(1, &["NOT_FOUND", "register \"r\" does not exist"]),
        ),
        (
            vec!["accumulate", "--register", "r", "--", "-2"],
            ok(&["r += -2 -> -2"]),
        ),
        (
            vec!["accumulate", "--register", "r", "-0.5"],
            ok(&["r += -0.5 -> -2.5"]),
        ),
        (vec!["acc", "-r", "r", "10"], ok(&["r += 10 -> 7.5"])),
        (vec!["get", "r"], ok(&["r = 7.5"])),
        (vec!["stats"], ok(&["applied=3", "registers=1"])),
        (vec!["delete", "r"], ok(&["r deleted (it held 7.5)"])),
        (
            vec!["del", "r"],
            ok(&["r does not exist: nothing to delete"]),
        ),
        (vec!["stats"], ok(&["applied=3", "registers=0"])),
        (
            vec!["get", "a\u{202E}b"],
            fails(1, &["INVALID_ARGUMENT", "U+202E at character 2"]),
        ),
    ];
    for (rpc, expect) in table {
        let mut args = vec!["call", "--addr", addr];
        args.extend(rpc);
        check(&args, expect);
    }
}

#[test]
fn the_register_quota_names_its_flag_and_a_delete_makes_room() {
    let server = Server::start(&["--registers-per-client-max", "1"]);
    let addr = server.addr.as_str();
    let table: Vec<(Vec<&str>, Expect)> = vec![
        (vec!["acc", "-r", "a", "1"], ok(&["a += 1 -> 1"])),
        (
            vec!["acc", "-r", "b", "1"],
            fails(
                1,
                &[
                    "RESOURCE_EXHAUSTED",
                    "--registers-per-client-max 1",
                    "abacus call delete NAME",
                    "NOT applied",
                ],
            ),
        ),
        (vec!["acc", "-r", "a", "1"], ok(&["a += 1 -> 2"])),
        (vec!["delete", "a"], ok(&["a deleted (it held 2)"])),
        (vec!["acc", "-r", "b", "1"], ok(&["b += 1 -> 1"])),
    ];
    for (rpc, expect) in table {
        let mut args = vec!["call", "--addr", addr];
        args.extend(rpc);
        check(&args, expect);
    }
}

#[test]
fn call_with_faults_reports_the_outcome() {
    let failing = Server::start(&["--fail-rate", "1"]);
    let dropping = Server::start(&["--drop-after-apply-rate", "1"]);
    let table = [
        (
            failing.addr.as_str(),
            fails(1, &["UNAVAILABLE", "injected fault", "NOT applied"]),
        ),
        (
            dropping.addr.as_str(),
            fails(1, &["UNAVAILABLE", "OUTCOME UNKNOWN"]),
        ),
    ];
    // At-most-once, so the unknown outcome is reported rather than retried.
    for (addr, expect) in table {
        check(
            &[
                "call",
                "--addr",
                addr,
                "--mode",
                "at-most-once",
                "acc",
                "-r",
                "r",
                "1",
            ],
            expect,
        );
    }
    // The dropped response was applied all the same, exactly once.
    check(
        &["call", "--addr", dropping.addr.as_str(), "get", "r"],
        ok(&["r = 1"]),
    );
}

#[test]
fn call_without_a_server_says_not_applied() {
    // Port 1 is privileged and unused on a test machine: connection refused.
    check(
        &["call", "--addr", "127.0.0.1:1", "add", "1", "1"],
        fails(1, &["cannot connect to 127.0.0.1:1", "NOT applied"]),
    );
}

#[test]
fn demo_runs_to_its_summary() {
    // With the default policy every fault section shows what it is about:
    // the retries win (5 + 6 needed three attempts), at-least-once
    // double-applies and the other modes don't, and the breaker fails fast,
    // then closes after one probe (the demo waits for the breaker's open
    // period to end, not for a guess at it).
    check(
        &["demo"],
        ok(&[
            "add(5, 6) = 11",
            "=> DOUBLE-APPLIED",
            "=> never applied twice; the unknown outcomes are reported",
            "=> applied exactly once each",
            "failed fast while the breaker was open; one probe closed it",
            "hedge(s) won over the slow replica, the stopped one was ejected and readmitted by its probe",
            "each Accumulate applied once across replicas",
            "replayed: the record replica A committed to the shared store",
            "=> applied once across two replicas",
            "Summary",
            "0 surprise(s)",
        ]),
    );
}

#[test]
fn demo_takes_the_client_policy_flags() {
    // Without retries the flaky server's refusals reach the caller and
    // at-least-once has nothing to re-send: the demo says so, and it is not
    // a surprise. Exactly-once still holds (the demo re-sends an unknown
    // outcome under its ID), and the breaker trips on the fourth call.
    check(
        &["demo", "--attempts", "1"],
        ok(&[
            "add(5, 6): the retry policy gave up",
            "(the request was NOT applied; 1 attempt(s))",
            "=> not double-applied this time",
            "=> never applied twice; the unknown outcomes are reported",
            "=> applied exactly once each",
            "=> 1 call(s) failed fast while the breaker was open; one probe closed it",
            // Section 7 hedges: a failed attempt is followed by a hedge to
            // another replica, whatever --attempts says.
            "each Accumulate applied once across replicas",
            "=> applied once across two replicas",
            "0 surprise(s)",
        ]),
    );
}

#[test]
#[should_panic(expected = "abacus call --addr 127.0.0.1:1 add 1 1")]
fn check_fails_on_a_wrong_exit_code() {
    // Negative control: `check` notices a failure expected to succeed.
    check(
        &["call", "--addr", "127.0.0.1:1", "add", "1", "1"],
        ok(&["1 + 1 = 2"]),
    );
}

#[test]
fn call_fails_over_from_a_dead_first_address_within_one_backoff_pause() {
    let live = Server::start(&[]);
    let closed = ClosedPort::new();
    let dead = closed.addr().to_string();
    let addrs = format!("{dead},{}", live.addr);
    // Timeouts far above anything this call needs: a client that waited
    // out the dead endpoint's attempt timeout before failing over would
    // take 20 s and say DEADLINE_EXCEEDED. The bound below is half that, a
    // margin no busy machine's process start comes near; what is asserted
    // exactly is the trace.
    let attempt_timeout = Duration::from_secs(20);
    let attempt_timeout_ms = attempt_timeout.as_millis().to_string();
    let backoff_ms: u64 = 50;
    // The pick is seeded: over a few seeds, some try the dead address
    // first. Each call must succeed on the live one.
    let mut failed_over = 0;
    for seed in 1..=6 {
        let started = std::time::Instant::now();
        let out = Command::new(BIN)
            .args(["call", "--addr", &addrs, "--client-seed", &seed.to_string()])
            .args(["--attempt-timeout-ms", &attempt_timeout_ms])
            .args(["--deadline-ms", "60000"])
            .args(["--backoff-ms", &backoff_ms.to_string()])
            .args(["-v", "add", "1", "2"])
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output()
            .expect("run abacus call");
        let elapsed = started.elapsed();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success() && stdout.contains("1 + 2 = 3"),
            "seed {seed}: {stdout} {stderr}"
        );
        assert!(
            elapsed < attempt_timeout / 2,
            "seed {seed}: took {elapsed:?}, as if waiting for the dead endpoint's timeout: {stderr}"
        );
        assert!(
            !stderr.contains("DEADLINE_EXCEEDED"),
            "seed {seed}: an attempt timed out: {stderr}"
        );
        if stderr.contains(&format!("attempt #1.1 -> {dead}")) {
            failed_over += 1;
            // Refused at once, certainly not applied: one pause of the
            // first retry's backoff, then the live replica.
            assert!(
                stderr.contains("attempt-failed #1.1 UNAVAILABLE not-applied"),
                "seed {seed}: the dead address did not fail as refused: {stderr}"
            );
            let pause_ms: u64 = stderr
                .split("backoff #1 ")
                .nth(1)
                .and_then(|rest| rest.split("ms before attempt 2").next())
                .and_then(|ms| ms.parse().ok())
                .unwrap_or_else(|| panic!("seed {seed}: no pause before attempt 2: {stderr}"));
            assert!(
                pause_ms <= backoff_ms,
                "seed {seed}: paused {pause_ms} ms, more than one first backoff: {stderr}"
            );
            assert!(
                stderr.contains(&format!("attempt #1.2 -> {}", live.addr)),
                "seed {seed}: the retry did not go to the live replica: {stderr}"
            );
            assert!(
                !stderr.contains("attempt #1.3"),
                "seed {seed}: more than one failover: {stderr}"
            );
        }
    }
    assert!(failed_over > 0, "no seed tried the dead address first");
}

#[test]
fn a_replica_killed_during_a_bench_fails_no_pure_call() {
    // Per-request events in the log: the kill waits for the doomed replica
    // to have served calls of this bench, not for a guess at the time.
    let log = "info,abacus::event=debug";
    let a = Server::start_logging(&[], log);
    let mut b = Server::start_logging(&[], log);
    let c = Server::start_logging(&[], log);
    let addrs = format!("{},{},{}", a.addr, b.addr, c.addr);
    let calls = 40_000;
    let bench = Command::new(BIN)
        .args([
            "bench",
            "add",
            "--addr",
            &addrs,
            "--calls",
            &calls.to_string(),
        ])
        .args(["--concurrency", "16", "--json", "--client-seed", "5"])
        // A ratio budget: the token bucket's 10 tokens are sized for one
        // server, and a replica dying with ~5 calls in flight spends half
        // of them at once (docs/client.md).
        .args(["--retry-budget-ratio", "0.2"])
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn abacus bench");
    let mut served = 0;
    while served < 200 {
        // A hang guard, not a timing assertion.
        let line = b
            .served
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the replica serves the bench");
        if line.contains("evaluated Add") {
            served += 1;
        }
    }
    b.served.child.kill().expect("SIGKILL the replica");
    let _ = b.served.child.wait();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(bench.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the bench ends by itself")
        .expect("bench output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("a JSON line");
    let report: serde_json::Value = serde_json::from_str(last).expect("JSON");
    assert_eq!(report["calls"], calls, "{stdout}");
    assert_eq!(report["ok"], calls, "{stdout}");
    assert_eq!(report["errors"], 0, "{stdout}");
    let killed = &report["per_endpoint"][b.addr.as_str()];
    assert!(killed["answered"].as_u64() > Some(0), "{stdout}");
    // The kill was felt: attempts there failed, and were retried elsewhere.
    assert!(killed["failed"].as_u64() > Some(0), "{stdout}");
    assert!(report["retries"].as_u64() > Some(0), "{stdout}");
    drop((a, c));
}
