//! Runs one simulation scenario for one seed, outside the test harness, and
//! prints its timeline and any violated invariant — for exploring, not only
//! for failing.
//!
//! ```sh
//! cargo run --release --example sim -- swarm 17
//! cargo run --release --example sim -- replicated-swarm 17
//! cargo run --release --example sim -- dedup-off 3 --plan 'latency=1..5 link=0 fail=0 delay=0..0 drop=0.3 windows='
//! cargo run --release --example sim -- swarm 17 --html out.html    # and a picture of it
//! cargo run --release --example sim -- --list
//! ```
//!
//! `--html FILE` writes a self-contained page with an SVG timeline of the
//! run (a lane per host, calls coloured by outcome, faults shaded, the
//! violation outlined); `--svg FILE` writes the SVG alone.

use std::process::ExitCode;

use abacus_sims::{catalogue, faults::FaultPlan, history, picture, sweep};

fn usage() -> String {
    format!(
        "usage: sim SCENARIO SEED [--plan 'PLAN'] [--html FILE] [--svg FILE]\n       sim --list\nscenarios: {}",
        catalogue::names().collect::<Vec<_>>().join(", ")
    )
}

/// The value after `flag`, if the flag is given: `Err` when it has none.
fn value<'a>(args: &'a [String], flag: &str) -> Result<Option<&'a str>, String> {
    match args.iter().position(|a| a == flag) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .filter(|v| !v.starts_with("--"))
            .map(|v| Some(v.as_str()))
            .ok_or_else(|| format!("{flag} needs a value")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for name in catalogue::names() {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "-h" || a == "--help") || args.len() < 2 {
        eprintln!("{}", usage());
        return ExitCode::from(2);
    }
    let Ok(seed) = args[1].parse::<u64>() else {
        eprintln!(
            "error: seed {:?} is not a whole number\n{}",
            args[1],
            usage()
        );
        return ExitCode::from(2);
    };
    let Some(mut scenario) = catalogue::by_name(&args[0], seed) else {
        eprintln!("error: unknown scenario {:?}\n{}", args[0], usage());
        return ExitCode::from(2);
    };
    if let Some(i) = args.iter().position(|a| a == "--plan") {
        match args.get(i + 1).map(|p| p.parse::<FaultPlan>()) {
            Some(Ok(p)) => scenario.plan = p,
            Some(Err(e)) => {
                eprintln!("error: --plan: {e}");
                return ExitCode::from(2);
            }
            None => {
                eprintln!("error: --plan needs a plan\n{}", usage());
                return ExitCode::from(2);
            }
        }
    }
    let (html, svg) = match (value(&args, "--html"), value(&args, "--svg")) {
        (Ok(h), Ok(s)) => (h, s),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}\n{}", usage());
            return ExitCode::from(2);
        }
    };
    println!(
        "scenario {} seed {seed}\nplan: {}\n",
        scenario.name, scenario.plan
    );
    let (run, violations) = sweep::run_checked(&scenario, seed);
    print!("{}", history::render(&run.records));
    for (path, text) in [
        (
            html,
            html.map(|_| picture::html(&scenario, &run, &violations)),
        ),
        (svg, svg.map(|_| picture::svg(&scenario, &run, &violations))),
    ] {
        if let (Some(path), Some(text)) = (path, text) {
            if let Err(e) = std::fs::write(path, text) {
                eprintln!("error: cannot write {path}: {e}");
                return ExitCode::FAILURE;
            }
            println!("wrote {path}");
        }
    }
    if violations.is_empty() {
        println!("\nall invariants hold");
        ExitCode::SUCCESS
    } else {
        for v in &violations {
            println!("\nVIOLATED [{}] {}", v.invariant, v.detail);
        }
        ExitCode::FAILURE
    }
}
