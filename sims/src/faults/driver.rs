//! The fault driver: steps the simulation, starting and ending each timed
//! fault of the plan at its moment, and at the quiet point stops every
//! other fault so the liveness phase runs on a quiet network. Each step is
//! recorded in the history as a typed [`SimFault`].

use std::{fmt, time::Duration};

use abacus::server::FaultSwitch;

use crate::{
    faults::plan::{NetFault, Target, Window},
    history::{Entry, History},
    world::server,
};

/// A fault the harness injected (or stopped) at a point in simulated time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    /// Messages between the server and the target are dropped from now on.
    Partition(Target),
    /// The partition is lifted.
    Repair(Target),
    /// Messages between the server and the target are queued from now on.
    Hold(Target),
    /// The queued messages are delivered.
    Release(Target),
    /// The server host crashes.
    Crash,
    /// The server host starts again.
    Restart,
    /// Link failures and server faults stop; the liveness phase follows.
    AllStop,
}

impl SimFault {
    /// The step that starts (`start`) or ends window `w`'s fault.
    fn of(w: &Window, start: bool) -> Self {
        match (w.fault, start) {
            (NetFault::Partition, true) => Self::Partition(w.target),
            (NetFault::Partition, false) => Self::Repair(w.target),
            (NetFault::Hold, true) => Self::Hold(w.target),
            (NetFault::Hold, false) => Self::Release(w.target),
            (NetFault::Crash, true) => Self::Crash,
            (NetFault::Crash, false) => Self::Restart,
        }
    }
}

impl fmt::Display for SimFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let link = |f: &mut fmt::Formatter<'_>, verb: &str, target: &Target| match target {
            Target::All => write!(f, "{verb} server <-> clients"),
            Target::Client(n) => write!(f, "{verb} server <-> client-{n}"),
        };
        match self {
            Self::Partition(t) => link(f, "partition", t),
            Self::Repair(t) => link(f, "repair", t),
            Self::Hold(t) => link(f, "hold", t),
            Self::Release(t) => link(f, "release", t),
            Self::Crash => f.write_str("crash server"),
            Self::Restart => f.write_str("restart server"),
            Self::AllStop => f.write_str("all faults stop"),
        }
    }
}

/// Steps the simulation, applying timed faults, until every client is done.
/// At `quiet.0` link failures and server faults stop, so the liveness phase
/// runs on a quiet network.
pub fn drive(
    sim: &mut turmoil::Sim<'_>,
    windows: &[Window],
    quiet: Option<(Duration, FaultSwitch)>,
    clients: &[String],
    history: &History,
) -> Result<(), String> {
    let mut started = vec![false; windows.len()];
    let mut ended = vec![false; windows.len()];
    let mut quieted = false;
    loop {
        let now = sim.elapsed();
        for (i, w) in windows.iter().enumerate() {
            if !started[i] && now >= w.from {
                started[i] = true;
                step(sim, w, true, clients, history, now);
            }
            if started[i] && !ended[i] && now >= w.until() {
                ended[i] = true;
                step(sim, w, false, clients, history, now);
            }
        }
        if let Some((at, switch)) = &quiet
            && !quieted
            && now >= *at
        {
            quieted = true;
            history.push_at(now, "sim", Entry::Fault(SimFault::AllStop));
            sim.set_fail_rate(0.0);
            // turmoil repairs a randomly failed link only when a message
            // crosses it, and only by chance: repair them all explicitly.
            for c in clients {
                sim.repair(server::HOST, c.as_str());
            }
            switch.turn_off();
        }
        match sim.step() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Starts or ends window `w`'s fault now, and records it.
fn step(
    sim: &mut turmoil::Sim<'_>,
    w: &Window,
    start: bool,
    clients: &[String],
    history: &History,
    now: Duration,
) {
    let fault = SimFault::of(w, start);
    history.push_at(now, "sim", Entry::Fault(fault));
    let targets: Vec<&str> = match w.target {
        Target::All => clients.iter().map(String::as_str).collect(),
        Target::Client(n) => n
            .checked_sub(1)
            .and_then(|i| clients.get(i))
            .map(String::as_str)
            .into_iter()
            .collect(),
    };
    let host = server::HOST;
    match fault {
        SimFault::Crash => sim.crash(host),
        SimFault::Restart => sim.bounce(host),
        SimFault::Partition(_) => targets.iter().for_each(|c| sim.partition(host, *c)),
        SimFault::Repair(_) => targets.iter().for_each(|c| sim.repair(host, *c)),
        SimFault::Hold(_) => targets.iter().for_each(|c| sim.hold(host, *c)),
        SimFault::Release(_) => targets.iter().for_each(|c| sim.release(host, *c)),
        SimFault::AllStop => {}
    }
}
