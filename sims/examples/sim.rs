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
//!
//! `explore` runs the coverage-guided fault search against plain random
//! swarm on the same number of runs, and prints both side by side
//! (`sim explore --help`; figures in `docs/simulation.md`):
//!
//! ```sh
//! cargo run --release --example sim -- explore replicated-swarm --seeds 1000 --trials 5 --cold
//! cargo run --release --example sim -- explore swarm-dedup-off --seeds 300 --trials 20 --cold --until-violation
//! cargo run --release --example sim -- explore replicated-swarm --seeds 2000 --write-corpus
//! ```

use std::{path::PathBuf, process::ExitCode, time::Instant};

use abacus_sims::{
    catalogue,
    explore::{self, corpus, measure},
    faults::FaultPlan,
    history, picture, sweep,
};

fn usage() -> String {
    format!(
        "usage: sim SCENARIO SEED [--plan 'PLAN'] [--html FILE] [--svg FILE]\n       \
         sim explore SCENARIO [--seeds N] [--trials T] [--first-seed F] [--explorer-seed S]\n                \
         [--invariant NAME] [--until-violation] [--cold | --corpus DIR] [--write-corpus] [--corpus-max K]\n       \
         sim --list\n\n\
         explore: the coverage-guided search against plain random swarm, N runs each (default 1000), side by side.\n\
         \x20 The guided search first replays the corpus (sims/corpus/SCENARIO, or DIR; none with --cold), then\n\
         \x20 mutates the plans that reached probes (or hit counts) no run had reached; every choice it makes comes\n\
         \x20 from the explorer seed (default 1), so the same command prints the same figures.\n\
         \x20 --trials T repeats both T times (default 1): trial t runs fresh seeds F+t*N.. (F default 0) with\n\
         \x20 explorer seed S+t, and every figure shows median [min-max] over the trials.\n\
         \x20 --invariant NAME counts violations of that invariant only; --until-violation stops each search\n\
         \x20 after its first violation (runs to first violation, cheaply).\n\
         \x20 --write-corpus replaces the corpus with trial 0's smallest set of kept plans that covers everything\n\
         \x20 it reached (at most K plans, default 12).\n\n\
         scenarios: {}",
        catalogue::names().collect::<Vec<_>>().join(", ")
    )
}

/// A number after `flag`, or `default`.
fn number(args: &[String], flag: &str, default: u64) -> Result<u64, String> {
    match value(args, flag)? {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| format!("{flag} {v:?}: not a whole number")),
    }
}

/// `sim explore …`.
fn explore(args: &[String]) -> Result<(), String> {
    let name = args
        .first()
        .filter(|a| !a.starts_with("--"))
        .ok_or("explore needs a scenario")?;
    if catalogue::by_name(name, 0).is_none() {
        return Err(format!("unknown scenario {name:?}"));
    }
    let whole = |flag, default| {
        number(args, flag, default).and_then(|n| usize::try_from(n).map_err(|e| e.to_string()))
    };
    let runs = whole("--seeds", 1_000)?;
    let trials = whole("--trials", 1)?;
    if runs == 0 || trials == 0 {
        return Err("--seeds and --trials must be at least 1".to_owned());
    }
    let explorer_seed = number(args, "--explorer-seed", 1)?;
    let corpus_max = whole("--corpus-max", 12)?;
    // Leaked once: an invariant name lives as long as the process.
    let invariant: Option<&'static str> =
        value(args, "--invariant")?.map(|v| &*Box::leak(v.to_owned().into_boxed_str()));
    let cold = args.iter().any(|a| a == "--cold");
    let dir: PathBuf = value(args, "--corpus")?.map_or_else(|| corpus::dir(name), PathBuf::from);
    let seeds = if cold {
        Vec::new()
    } else {
        corpus::load(&dir)?
    };
    let make = |seed| catalogue::by_name(name, seed).expect("checked above");
    let budget = explore::Budget {
        first_seed: number(args, "--first-seed", 0)?,
        invariant,
        stop_at_violation: args.iter().any(|a| a == "--until-violation"),
        ..explore::Budget::new(runs)
    };
    println!(
        "explore {name}: {trials} trial(s) of {runs} runs per side from fresh seed {}; guided from explorer seed {explorer_seed}, {} corpus plan(s) from {}",
        budget.first_seed,
        seeds.len(),
        if cold {
            "nowhere (--cold)".to_owned()
        } else {
            dir.display().to_string()
        }
    );
    let started = Instant::now();
    let results = measure::trials(
        &make,
        measure::Setup {
            budget,
            explorer_seed,
            corpus: &seeds,
            trials,
        },
    );
    let required = make(0).probes;
    println!(
        "{}",
        measure::Comparison {
            name,
            required: &required,
            trials: &results,
        }
    );
    println!("  wall time: {:.1} s", started.elapsed().as_secs_f64());
    if let Some(first) = results.first() {
        for (label, report) in [("random", &first.random), ("guided", &first.guided)] {
            if let Some((i, s)) = &report.first_violation {
                println!(
                    "  {label}'s first violation (trial 0, run #{i}): sim {name} {} --plan '{}'",
                    s.seed, s.plan
                );
            }
        }
    }
    if args.iter().any(|a| a == "--write-corpus") {
        let guided = &results.first().ok_or("no trial")?.guided;
        let keep: Vec<(corpus::Seed, String)> = guided
            .minimal_corpus(corpus_max)
            .into_iter()
            .map(|k| (k.seed.clone(), k.note()))
            .collect();
        corpus::save(&dir, &keep)?;
        println!("  wrote {} plan(s) to {}", keep.len(), dir.display());
    }
    Ok(())
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
    if args.first().is_some_and(|a| a == "explore") {
        if args.iter().any(|a| a == "-h" || a == "--help") {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        return match explore(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}\n{}", usage());
                ExitCode::from(2)
            }
        };
    }
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
