//! The coverage-guided fault search (`abacus_sims::explore`), on a budget
//! a debug build runs in seconds: it reaches every probe plain random
//! swarm reaches on the same runs, it replays exactly whatever the threads,
//! the corpus it writes reaches everything it found, and the corpora
//! committed in `sims/corpus/` still reach what their scenarios require.

use std::collections::BTreeSet;

use abacus_sims::{
    catalogue,
    explore::{Budget, Mode, Report, corpus, search},
    probes::Probe,
};

/// Runs per search: the first batch (32) is fresh swarm on both sides, the
/// rest is where the guided search mutates what it kept.
const RUNS: usize = 64;

fn reached(report: &Report) -> BTreeSet<Probe> {
    Probe::ALL
        .iter()
        .zip(&report.first_reached)
        .filter(|(_, first)| first.is_some())
        .map(|(p, _)| *p)
        .collect()
}

/// What a search's report says, in the form the corpus would write it:
/// the plans kept and the minimal corpus, byte for byte.
fn fingerprint(report: &Report) -> (Vec<String>, Vec<String>, Vec<Option<usize>>) {
    (
        report
            .kept
            .iter()
            .map(|k| k.seed.to_text(&k.note()))
            .collect(),
        report
            .minimal_corpus(usize::MAX)
            .iter()
            .map(|k| k.seed.to_text(&k.note()))
            .collect(),
        report.first_reached.clone(),
    )
}

#[test]
fn guided_search_reaches_what_random_does_replays_exactly_and_writes_a_corpus_that_replays() {
    let name = "replicated-swarm";
    let make = |seed| catalogue::by_name(name, seed).expect("a catalogue scenario");
    let budget = Budget {
        threads: 2,
        ..Budget::new(RUNS)
    };
    let random = search(&make, Mode::Random, budget, &[]);
    let guided = search(&make, Mode::Guided { seed: 1 }, budget, &[]);
    assert_eq!((random.runs, guided.runs), (RUNS, RUNS));

    // Reach: nothing random found in these runs escapes the search.
    let (r, g) = (reached(&random), reached(&guided));
    assert!(
        r.is_subset(&g),
        "{name}: random reached {:?} that the guided search missed in {RUNS} runs",
        r.difference(&g).collect::<Vec<_>>()
    );
    assert!(
        !guided.kept.is_empty() && guided.kept.len() < RUNS,
        "kept {} plans of {RUNS}",
        guided.kept.len()
    );

    // Determinism: one thread or two, the same plans, the same corpus.
    let alone = search(
        &make,
        Mode::Guided { seed: 1 },
        Budget {
            threads: 1,
            ..budget
        },
        &[],
    );
    assert_eq!(fingerprint(&alone), fingerprint(&guided));

    // The corpus it writes, read back and replayed, reaches every probe
    // the search reached: a run is a function of its seed and plan.
    let dir = std::env::temp_dir().join(format!("abacus-corpus-{}", std::process::id()));
    let keep: Vec<_> = guided
        .minimal_corpus(usize::MAX)
        .into_iter()
        .map(|k| (k.seed.clone(), k.note()))
        .collect();
    corpus::save(&dir, &keep).expect("writes the corpus");
    let loaded = corpus::load(&dir).expect("reads it back");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        loaded,
        keep.iter().map(|(s, _)| s.clone()).collect::<Vec<_>>()
    );
    let replay = search(
        &make,
        Mode::Guided { seed: 1 },
        Budget {
            runs: loaded.len(),
            ..budget
        },
        &loaded,
    );
    assert_eq!(
        reached(&replay),
        g,
        "the corpus of {} plans does not replay what the search reached",
        loaded.len()
    );
}

/// The corpora in the repository: each parses, and replaying it alone
/// reaches every probe its scenario requires — in a dozen runs, where a
/// random sweep takes tens of seeds.
#[test]
fn the_committed_corpora_reach_their_scenarios_required_probes() {
    let root = corpus::dir("");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no corpus under {}", root.display());
    for name in names {
        let make = |seed| {
            catalogue::by_name(&name, seed)
                .unwrap_or_else(|| panic!("sims/corpus/{name}: no scenario of that name"))
        };
        let plans = corpus::load(&corpus::dir(&name)).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !plans.is_empty() && plans.len() <= 16,
            "sims/corpus/{name}: {} plans (a small corpus: 1 to 16)",
            plans.len()
        );
        let replay = search(
            &make,
            Mode::Guided { seed: 1 },
            Budget {
                threads: 2,
                ..Budget::new(plans.len())
            },
            &plans,
        );
        let missed: Vec<&str> = make(0)
            .probes
            .iter()
            .filter(|p| !reached(&replay).contains(p))
            .map(|p| p.name())
            .collect();
        assert!(
            missed.is_empty(),
            "sims/corpus/{name} no longer reaches {missed:?}; rewrite it with \
             `cargo run --release -p abacus-sims --example sim -- explore {name} --seeds 2000 --write-corpus`"
        );
    }
}
