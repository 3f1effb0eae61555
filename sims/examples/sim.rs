//! Runs one simulation scenario for one seed, outside the test harness, and
//! prints its timeline and any violated invariant — for exploring, not only
//! for failing.
//!
//! ```sh
//! cargo run --release --example sim -- swarm 17
//! cargo run --release --example sim -- replicated-swarm 17
//! cargo run --release --example sim -- dedup-off 3 --plan 'latency=1..5 link=0 fail=0 delay=0..0 drop=0.3 windows='
//! cargo run --release --example sim -- --list
//! ```

use std::process::ExitCode;

use abacus_sims::{catalogue, faults::FaultPlan, history, sweep};

fn usage() -> String {
    format!(
        "usage: sim SCENARIO SEED [--plan 'PLAN']\n       sim --list\nscenarios: {}",
        catalogue::names().collect::<Vec<_>>().join(", ")
    )
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
    println!(
        "scenario {} seed {seed}\nplan: {}\n",
        scenario.name, scenario.plan
    );
    let (run, violations) = sweep::run_checked(&scenario, seed);
    print!("{}", history::render(&run.records));
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
