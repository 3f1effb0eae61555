//! Snapshots of fixed seeds' timelines, in `sims/snapshots/`: a change to
//! what the client, server or workload does shows up as a reviewed diff.

use abacus_sims::{Scenario, history::render, sweep::replay_command, world};

/// Seed used for snapshots.
pub(crate) const SNAPSHOT_SEED: u64 = 7;

/// Snapshots `scenario`'s timeline at [`SNAPSHOT_SEED`]. Skipped when
/// `SIM_SEED`/`SIM_PLAN` select something else.
pub(crate) fn snapshot_fixed_seed(scenario: &Scenario) {
    if std::env::var("SIM_SEED").is_ok() || std::env::var("SIM_PLAN").is_ok() {
        return;
    }
    let run = world::run(scenario, SNAPSHOT_SEED);
    insta::with_settings!({
        snapshot_path => "../../snapshots",
        prepend_module_to_snapshot => false,
        omit_expression => true,
        description => format!(
            "seed {}; replay: {}",
            run.seed,
            replay_command(scenario.name, run.seed, None)
        ),
    }, {
        insta::assert_snapshot!(scenario.name, render(&run.records));
    });
}
