//! Determinism self-check: the same seed must give a byte-identical
//! timeline — run twice in this process, run in two fresh processes, and
//! run after or beside other seeds (what a sweep does, and a replay does
//! not). Crashes used to make a seed's trace depend on the process: turmoil
//! drops a crashed host's tasks in an order set by tokio's process-wide task
//! IDs, and each dropped socket's FIN drew latency from the run's RNG. The
//! fault driver now tears hosts down silently (`faults::driver`), and
//! `a_seeds_trace_does_not_depend_on_what_else_the_process_runs` holds it to
//! that.

use std::process::Command;

use abacus_sims::{
    catalogue::{self, happy, plain_tonic},
    history::render,
    sweep::replay_command_for,
    world,
};

/// Seeds checked by default (each is run twice).
const SEEDS: [u64; 4] = [0, 1, 2, 3];

/// The first line where two timelines differ, named for a report.
fn first_divergence(a: &str, b: &str) -> Option<String> {
    if a == b {
        return None;
    }
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let i = la
        .iter()
        .zip(&lb)
        .position(|(x, y)| x != y)
        .unwrap_or(la.len().min(lb.len()));
    Some(format!(
        "line {}:\n  first run:  {}\n  second run: {}",
        i + 1,
        la.get(i).unwrap_or(&"<end of trace>"),
        lb.get(i).unwrap_or(&"<end of trace>")
    ))
}

#[test]
fn same_seed_same_trace_in_process() {
    for s in [happy(), plain_tonic()] {
        for seed in SEEDS {
            let a = render(&world::run(&s, seed).records);
            let b = render(&world::run(&s, seed).records);
            assert!(!a.is_empty());
            if let Some(d) = first_divergence(&a, &b) {
                panic!("{} seed {seed}: the same seed diverged at {d}", s.name);
            }
        }
    }
}

/// Prints one run's timeline: the catalogue's scenario `SIM_DUMP_SCENARIO`
/// at `SIM_DUMP_SEED`. Run by the cross-process checks below (ignored in
/// normal runs: it checks nothing by itself).
#[test]
#[ignore = "helper for the same_seed_same_trace_across_processes checks"]
fn dump_trace() {
    let seed: u64 = std::env::var("SIM_DUMP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("SIM_DUMP_SEED must name a seed");
    let name = std::env::var("SIM_DUMP_SCENARIO").expect("SIM_DUMP_SCENARIO must name a scenario");
    let s = catalogue::by_name(&name, seed).expect("a scenario of the catalogue");
    print!(
        "<<<TRACE\n{}TRACE>>>",
        render(&world::run(&s, seed).records)
    );
}

fn trace_in_fresh_process(scenario: &str, seed: u64) -> String {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let out = Command::new(exe)
        .args([
            "scenarios::determinism::dump_trace",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("SIM_DUMP_SEED", seed.to_string())
        .env("SIM_DUMP_SCENARIO", scenario)
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "seed {seed}: dump failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = stdout.find("<<<TRACE\n").expect("trace start marker") + 9;
    let end = stdout.find("TRACE>>>").expect("trace end marker");
    stdout[start..end].to_owned()
}

/// Runs `scenario` (a catalogue name) at each seed in two fresh processes
/// and compares the timelines; `test` is the test whose replay prints the
/// same timeline.
fn same_trace_across_processes(scenario: &str, test: &str) {
    for seed in SEEDS {
        let a = trace_in_fresh_process(scenario, seed);
        let b = trace_in_fresh_process(scenario, seed);
        assert!(
            a.lines().count() > 10,
            "{scenario} seed {seed}: suspiciously short trace"
        );
        if let Some(d) = first_divergence(&a, &b) {
            panic!(
                "{scenario} seed {seed}: two processes diverged at {d}\nreplay: {}",
                replay_command_for(test, seed, None)
            );
        }
    }
}

#[test]
fn same_seed_same_trace_across_processes() {
    same_trace_across_processes("swarm", "scenarios::swarm::swarm_exactly_once");
}

/// The replicated swarm: replicas and the store crash and restart, so the
/// comparison is across processes too.
#[test]
fn same_seed_same_trace_across_processes_replicated() {
    same_trace_across_processes(
        "replicated-swarm",
        "scenarios::replicated::replicated_swarm_exactly_once",
    );
}

/// The replica-aware client over three replicas, one of which crashes and
/// restarts: health watches, hedges and breakers draw from the seed too.
#[test]
fn same_seed_same_trace_across_processes_aware() {
    same_trace_across_processes(
        "aware-crash",
        "scenarios::aware::aware_client_fails_over_a_crashed_replica",
    );
}

#[test]
fn divergence_is_named() {
    // The checker of this file can fail: two different traces are reported
    // with the first differing line.
    let d = first_divergence("a\nb\nc\n", "a\nx\nc\n").expect("they differ");
    assert!(d.contains("line 2") && d.contains("first run:  b") && d.contains("second run: x"));
    assert_eq!(first_divergence("a\n", "a\n"), None);
}

/// A seed's trace must not depend on what else the process ran before it
/// or runs beside it: a sweep runs a seed after others (and beside other
/// test threads), a replay runs it alone, and both must see the same run.
/// Each seed runs once in order, then again in reverse order on two threads
/// at once; every trace must match. (Crashes used to break this: turmoil
/// drops a crashed host's tasks in an order set by tokio's process-wide
/// task IDs, and each dropped socket's FIN drew from the run's RNG — see
/// `faults::driver`.)
#[test]
fn a_seeds_trace_does_not_depend_on_what_else_the_process_runs() {
    const SEEDS: u64 = 12;
    for scenario in ["swarm", "replicated-swarm"] {
        let trace = |seed: u64| {
            let s = catalogue::by_name(scenario, seed).expect("a scenario of the catalogue");
            render(&world::run(&s, seed).records)
        };
        let in_order: Vec<String> = (0..SEEDS).map(trace).collect();
        let again: Vec<(u64, String)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..2)
                .map(|w| {
                    scope.spawn(move || {
                        (0..SEEDS)
                            .rev()
                            .filter(|seed| seed % 2 == w)
                            .map(|seed| (seed, trace(seed)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("a worker does not panic"))
                .collect()
        });
        assert_eq!(again.len() as u64, SEEDS);
        for (seed, b) in again {
            if let Some(d) = first_divergence(&in_order[seed as usize], &b) {
                panic!(
                    "{scenario} seed {seed}: the trace changed with what else the process ran, at {d}"
                );
            }
        }
    }
}

/// Durable mode on the simulated disk: redb flushes its writes from a hash
/// map whose order changes with every process, power cuts tear them, and
/// the ledger recovers on the host's clock; the trace must not care.
#[test]
fn same_seed_same_trace_across_processes_durable_disk() {
    same_trace_across_processes(
        "durable-disk",
        "scenarios::disk::durable_disk_swarm_loses_nothing_acknowledged",
    );
}

/// Skewed clocks read simulated time only.
#[test]
fn same_seed_same_trace_across_processes_clock_skew() {
    same_trace_across_processes(
        "clock-skew-naive-ttl",
        "scenarios::skew::control_naive_retention_double_applies_under_skew",
    );
}

/// Skewed clocks on the replicated system: every replica, the store host
/// and every client on its own clock, records expiring at the store.
#[test]
fn same_seed_same_trace_across_processes_replicated_clock_skew() {
    same_trace_across_processes(
        "replicated-clock-skew-true-clock-ttl",
        "scenarios::skew::control_replicated_true_clock_retention_double_applies_under_skew",
    );
}
