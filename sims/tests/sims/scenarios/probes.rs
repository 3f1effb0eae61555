//! Named probes: a sweep that never reaches a probe its scenario requires
//! fails, and says which probes it did reach; a one-seed replay of the
//! same scenario does not fail for it.

use std::panic::{AssertUnwindSafe, catch_unwind};

use abacus_sims::{
    catalogue::happy,
    probes::Probe,
    sweep::{Seeds, sweep_seeds},
};

/// NEGATIVE CONTROL for reach: the happy path sheds nothing, so a sweep
/// that requires a shed call must fail, naming the probe; the replay of
/// one of its seeds passes (the requirement is the sweep's).
#[test]
fn a_required_probe_never_reached_fails_the_sweep_only() {
    let make = |_| {
        let mut s = happy();
        s.calls_per_client = 2;
        s.probes = vec![Probe::Shed];
        s
    };
    let failed = catch_unwind(AssertUnwindSafe(|| sweep_seeds(Seeds::Sweep(0..2), make)))
        .expect_err("a sweep that never sheds cannot reach the shed probe");
    let message = abacus::store::redb::panic_message(&*failed);
    assert!(
        message.contains("reached the probe shed") && message.contains("0 of"),
        "the failure names the probe and the coverage: {message}"
    );
    let replay = sweep_seeds(Seeds::Replay(1), make);
    assert_eq!(replay.coverage().runs(), 1);
    assert_eq!(replay.coverage().runs_reaching(Probe::Shed), 0);
}
