//! The scenarios, one `#[test]` each, grouped by what they prove; and a
//! registry of named scenarios for the `sim` example, which runs one of them
//! for one seed outside the test harness.

mod basic;
mod breaker;
mod controls;
mod dedup;
mod delivery;
mod determinism;
mod recovery;
mod swarm;

use abacus::client::Delivery;

use crate::{
    harness::Scenario,
    plan::{NetFault, Window},
};

/// Names [`by_name`] knows, for `--help` and error messages.
pub const NAMES: [&str; 15] = [
    "standard",
    "happy",
    "plain-tonic",
    "at-least-once",
    "at-most-once",
    "exactly-once",
    "dedup-off",
    "partition",
    "crash",
    "hold",
    "breaker-partition",
    "cascade-protected",
    "cascade-unprotected",
    "swarm",
    "swarm-dedup-off",
];

/// The scenario called `name`, for `seed` (swarm plans depend on it).
pub fn by_name(name: &str, seed: u64) -> Option<Scenario> {
    let s = match name {
        "happy" => basic::happy(),
        "plain-tonic" => basic::plain_tonic(),
        "at-least-once" => delivery::apply_then_drop("at-least-once", Delivery::AtLeastOnce),
        "at-most-once" => delivery::apply_then_drop("at-most-once", Delivery::AtMostOnce),
        "exactly-once" => dedup::exactly_once("exactly-once"),
        "dedup-off" => {
            let mut s = dedup::exactly_once("dedup-off");
            s.dedup = false;
            s
        }
        "partition" => recovery::pure(
            "partition",
            vec![Window::all(NetFault::Partition, 150, 1350)],
        ),
        "crash" => recovery::pure("crash", vec![Window::all(NetFault::Crash, 150, 850)]),
        "hold" => recovery::pure("hold", vec![Window::all(NetFault::Hold, 150, 750)]),
        "breaker-partition" => breaker::scenario(
            "breaker-partition",
            vec![Window::all(NetFault::Partition, 300, 2500)],
        ),
        "cascade-protected" => breaker::cascade("cascade-protected", true),
        "cascade-unprotected" => breaker::cascade("cascade-unprotected", false),
        "swarm" => swarm::swarm("swarm", Delivery::ExactlyOnce, seed),
        "standard" => swarm::standard(seed),
        "swarm-dedup-off" => {
            let mut s = swarm::swarm("swarm-dedup-off", Delivery::ExactlyOnce, seed);
            s.dedup = false;
            s
        }
        _ => return None,
    };
    Some(s)
}

#[test]
fn every_registered_name_builds() {
    for name in NAMES {
        let s = by_name(name, 1).unwrap_or_else(|| panic!("{name} is listed but unknown"));
        assert!(!s.name.is_empty());
    }
    assert!(by_name("no-such-scenario", 1).is_none());
}
