//! The fault driver: steps the simulation, starting and ending each timed
//! fault of the plan at its moment, and at the quiet point stops every
//! other fault so the liveness phase runs on a quiet network. Each step is
//! recorded in the history as a typed [`SimFault`].

use std::{collections::BTreeMap, fmt, sync::Arc, time::Duration};

use abacus::server::FaultSwitch;

use crate::{
    faults::plan::{Fault, Link, Node, Peer, Side, Window},
    history::{Entry, History},
    world::disk::SimDisk,
};

/// How long a host whose disk lost power stays down before it restarts.
pub const POWER_CUT_DOWN: Duration = Duration::from_millis(300);

/// A fault the harness injected (or stopped) at a point in simulated time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    /// Messages on the links are dropped from now on.
    Partition(Link),
    /// The partition is lifted.
    Repair(Link),
    /// Messages on the links are queued from now on.
    Hold(Link),
    /// The queued messages are delivered.
    Release(Link),
    /// The host crashes.
    Crash(Node),
    /// The host starts again.
    Restart(Node),
    /// Link failures, server and store faults stop; the liveness phase
    /// follows.
    AllStop,
}

impl SimFault {
    /// The step that starts (`start`) or ends window `w`'s fault.
    fn of(w: &Window, start: bool) -> Self {
        match (w.fault, start) {
            (Fault::Partition(l), true) => Self::Partition(l),
            (Fault::Partition(l), false) => Self::Repair(l),
            (Fault::Hold(l), true) => Self::Hold(l),
            (Fault::Hold(l), false) => Self::Release(l),
            (Fault::Crash(n), true) => Self::Crash(n),
            (Fault::Crash(n), false) => Self::Restart(n),
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Server => f.write_str("server"),
            Self::Replica(n) => write!(f, "replica-{n}"),
            Self::Store => f.write_str("store"),
        }
    }
}

impl fmt::Display for Link {
    /// `server <-> clients`, `replica-2 <-> client-1`, `replica-1 <-> store`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.side {
            Side::Server => f.write_str("server")?,
            Side::Replica(n) => write!(f, "replica-{n}")?,
        }
        match self.peer {
            Peer::Clients => f.write_str(" <-> clients"),
            Peer::Client(n) => write!(f, " <-> client-{n}"),
            Peer::Store => f.write_str(" <-> store"),
        }
    }
}

impl fmt::Display for SimFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Partition(l) => write!(f, "partition {l}"),
            Self::Repair(l) => write!(f, "repair {l}"),
            Self::Hold(l) => write!(f, "hold {l}"),
            Self::Release(l) => write!(f, "release {l}"),
            Self::Crash(n) => write!(f, "crash {n}"),
            Self::Restart(n) => write!(f, "restart {n}"),
            Self::AllStop => f.write_str("all faults stop"),
        }
    }
}

/// The hosts of a world, as faults name them.
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    /// Server hosts: `server`, or `replica-1` upwards.
    pub servers: Vec<String>,
    /// The store host, in the replicated world.
    pub store: Option<String>,
    /// Client hosts, `client-1` upwards.
    pub clients: Vec<String>,
    /// Simulated disks, by host (the durable server's).
    pub disks: BTreeMap<String, Arc<SimDisk>>,
}

/// The `n`th (1-based) of `hosts`, if there is one.
fn nth(hosts: &[String], n: usize) -> Vec<&str> {
    n.checked_sub(1)
        .and_then(|i| hosts.get(i))
        .map(String::as_str)
        .into_iter()
        .collect()
}

impl Hosts {
    /// The node that names `host` alone (or every server, for the single
    /// server).
    fn node_of(&self, host: &str) -> Node {
        if self.store.as_deref() == Some(host) {
            return Node::Store;
        }
        match self.servers.iter().position(|s| s == host) {
            Some(i) if self.servers.len() > 1 => Node::Replica(i + 1),
            _ => Node::Server,
        }
    }

    /// The hosts `node` names (none when this world has no such host).
    pub fn node(&self, node: Node) -> Vec<&str> {
        match node {
            Node::Server => self.servers.iter().map(String::as_str).collect(),
            Node::Replica(n) => nth(&self.servers, n),
            Node::Store => self.store.iter().map(String::as_str).collect(),
        }
    }

    /// The host pairs `link` names.
    pub fn pairs(&self, link: Link) -> Vec<(&str, &str)> {
        let sides = match link.side {
            Side::Server => self.node(Node::Server),
            Side::Replica(n) => self.node(Node::Replica(n)),
        };
        let peers = match link.peer {
            Peer::Clients => self.clients.iter().map(String::as_str).collect(),
            Peer::Client(n) => nth(&self.clients, n),
            Peer::Store => self.node(Node::Store),
        };
        sides
            .iter()
            .flat_map(|s| peers.iter().map(move |p| (*s, *p)))
            .collect()
    }

    /// Every pair of hosts that talk to each other: servers with clients,
    /// servers with the store.
    fn every_link(&self) -> Vec<(&str, &str)> {
        let mut pairs = self.pairs(Link::SERVER_CLIENTS);
        pairs.extend(self.pairs(Link {
            side: Side::Server,
            peer: Peer::Store,
        }));
        pairs
    }
}

/// Steps the simulation, applying timed faults, until every client is done.
/// At `quiet.0` link failures stop, every link is repaired and every
/// switch in `quiet.1` (servers' and store's faults) is turned off, so the
/// liveness phase runs on a quiet network.
pub fn drive(
    sim: &mut turmoil::Sim<'_>,
    windows: &[Window],
    quiet: Option<(Duration, Vec<FaultSwitch>)>,
    hosts: &Hosts,
    history: &History,
) -> Result<(), String> {
    let mut started = vec![false; windows.len()];
    let mut ended = vec![false; windows.len()];
    let mut quieted = false;
    let mut links = LinkStates::default();
    // Hosts down after a power cut, and when they come back.
    let mut cut: Vec<(Duration, Node)> = Vec::new();
    loop {
        let now = sim.elapsed();
        for (host, disk) in &hosts.disks {
            if disk.take_cut() {
                let node = hosts.node_of(host);
                step(sim, SimFault::Crash(node), hosts, &mut links, history, now);
                cut.push((now + POWER_CUT_DOWN, node));
            }
        }
        cut.retain(|&(at, node)| {
            let due = now >= at;
            if due {
                step(
                    sim,
                    SimFault::Restart(node),
                    hosts,
                    &mut links,
                    history,
                    now,
                );
            }
            !due
        });
        for (i, w) in windows.iter().enumerate() {
            if !started[i] && now >= w.from {
                started[i] = true;
                step(sim, SimFault::of(w, true), hosts, &mut links, history, now);
            }
            if started[i] && !ended[i] && now >= w.until() {
                ended[i] = true;
                step(sim, SimFault::of(w, false), hosts, &mut links, history, now);
            }
        }
        if let Some((at, switches)) = &quiet
            && !quieted
            && now >= *at
        {
            quieted = true;
            history.push_at(now, "sim", Entry::Fault(SimFault::AllStop));
            sim.set_fail_rate(0.0);
            // turmoil repairs a randomly failed link only when a message
            // crosses it, and only by chance: repair them all explicitly.
            for (a, b) in hosts.every_link() {
                sim.repair(a, b);
            }
            switches.iter().for_each(FaultSwitch::turn_off);
            hosts.disks.values().for_each(|d| d.quiet());
        }
        match sim.step() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// What the plan's windows have done to a link, as far as the driver
/// knows (turmoil's random link failures aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Partitioned,
    Held,
}

/// The links the plan has partitioned or held, by host pair.
#[derive(Debug, Default)]
struct LinkStates(BTreeMap<(String, String), LinkState>);

impl LinkStates {
    fn set(&mut self, (a, b): (&str, &str), state: Option<LinkState>) {
        let key = (a.to_owned(), b.to_owned());
        match state {
            Some(state) => self.0.insert(key, state),
            None => self.0.remove(&key),
        };
    }

    fn get(&self, (a, b): (&str, &str)) -> Option<LinkState> {
        self.0.get(&(a.to_owned(), b.to_owned())).copied()
    }
}

/// Crashes or restarts `host` **silently**: nothing the host sends while
/// its software is torn down leaves it, and what was in flight on its links
/// (either way) is lost.
///
/// Why: turmoil tears a host down by dropping its tokio runtime, whose
/// tasks are dropped in an order set by tokio's *process-wide* task-ID
/// counter (tasks are sharded by ID), and every socket dropped sends a FIN
/// or RST that draws its latency from the simulation's one RNG. So the
/// run's trace depended on how many tasks earlier runs in the same process
/// had spawned: a seed in a sweep (after other seeds, beside other test
/// threads) could differ from the same seed replayed alone. Silenced, the
/// teardown sends nothing and draws nothing the order could change, and a
/// seed's trace is the same wherever it runs — which is also what lets
/// sweeps run seeds on several threads.
///
/// It is also the truer model of a crash: a machine that loses power
/// sends no FIN. Peers find out when they next write to it (its network
/// stack answers RST for a connection it no longer has, once restarted or
/// not) or by keepalive.
///
/// The cut is a partition both ways, not one way: a link healthy in one
/// direction lets each message draw turmoil's random link failure, and
/// which link a draw fails would again depend on the teardown's order. A
/// random link failure on the host's links ends with the crash (the links
/// come back healthy, or held if a hold window is open); that is
/// deterministic too.
fn silently(
    sim: &mut turmoil::Sim<'_>,
    host: &str,
    hosts: &Hosts,
    links: &LinkStates,
    teardown: impl FnOnce(&mut turmoil::Sim<'_>),
) {
    // A partitioned link is silent already; the others are cut for the
    // teardown only.
    let cut: Vec<((&str, &str), Option<LinkState>)> = hosts
        .every_link()
        .into_iter()
        .filter(|(a, b)| *a == host || *b == host)
        .map(|pair| (pair, links.get(pair)))
        .filter(|(_, state)| *state != Some(LinkState::Partitioned))
        .collect();
    for ((a, b), _) in &cut {
        sim.partition(*a, *b);
    }
    teardown(sim);
    for ((a, b), state) in &cut {
        sim.repair(*a, *b);
        if *state == Some(LinkState::Held) {
            sim.hold(*a, *b);
        }
    }
}

/// Applies `fault` now, and records it.
fn step(
    sim: &mut turmoil::Sim<'_>,
    fault: SimFault,
    hosts: &Hosts,
    links: &mut LinkStates,
    history: &History,
    now: Duration,
) {
    history.push_at(now, "sim", Entry::Fault(fault));
    match fault {
        // A crash is a power cut: the host's disk keeps what it synced
        // (and, of the rest, what the cut lets through) before the
        // software is torn down, so the teardown writes nothing. A restart
        // of a host that is still running tears it down first: the same
        // power cut, as silent.
        SimFault::Crash(n) | SimFault::Restart(n) => {
            let restart = matches!(fault, SimFault::Restart(_));
            for h in hosts.node(n) {
                if let Some(note) = hosts.disks.get(h).and_then(|d| d.crash()) {
                    history.push_at(now, h, Entry::Disk(note));
                }
                silently(sim, h, hosts, links, |sim| {
                    if restart { sim.bounce(h) } else { sim.crash(h) }
                });
            }
        }
        SimFault::Partition(l) => hosts.pairs(l).into_iter().for_each(|pair| {
            sim.partition(pair.0, pair.1);
            links.set(pair, Some(LinkState::Partitioned));
        }),
        SimFault::Repair(l) => hosts.pairs(l).into_iter().for_each(|pair| {
            sim.repair(pair.0, pair.1);
            links.set(pair, None);
        }),
        SimFault::Hold(l) => hosts.pairs(l).into_iter().for_each(|pair| {
            sim.hold(pair.0, pair.1);
            links.set(pair, Some(LinkState::Held));
        }),
        SimFault::Release(l) => hosts.pairs(l).into_iter().for_each(|pair| {
            sim.release(pair.0, pair.1);
            links.set(pair, None);
        }),
        SimFault::AllStop => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Hosts {
        Hosts {
            servers: vec!["replica-1".into(), "replica-2".into()],
            store: Some("store".into()),
            clients: vec!["client-1".into(), "client-2".into()],
            disks: BTreeMap::new(),
        }
    }

    #[test]
    fn faults_resolve_to_the_hosts_they_name() {
        let h = hosts();
        assert_eq!(h.node(Node::Server), ["replica-1", "replica-2"]);
        assert_eq!(h.node(Node::Replica(2)), ["replica-2"]);
        assert!(h.node(Node::Replica(3)).is_empty());
        assert_eq!(h.node(Node::Store), ["store"]);
        assert_eq!(
            h.pairs(Link {
                side: Side::Replica(1),
                peer: Peer::Clients
            }),
            [("replica-1", "client-1"), ("replica-1", "client-2")]
        );
        assert_eq!(
            h.pairs(Link {
                side: Side::Server,
                peer: Peer::Store
            }),
            [("replica-1", "store"), ("replica-2", "store")]
        );
        assert_eq!(
            h.pairs(Link {
                side: Side::Replica(2),
                peer: Peer::Client(2)
            }),
            [("replica-2", "client-2")]
        );
        assert_eq!(h.every_link().len(), 6);
        // The single-server world has no store: a store fault cuts nothing.
        let single = Hosts {
            store: None,
            servers: vec!["server".into()],
            ..hosts()
        };
        assert!(
            single
                .pairs(Link {
                    side: Side::Server,
                    peer: Peer::Store
                })
                .is_empty()
        );
    }

    #[test]
    fn single_server_faults_print_as_before() {
        let l = Link::SERVER_CLIENTS;
        assert_eq!(
            SimFault::Partition(l).to_string(),
            "partition server <-> clients"
        );
        assert_eq!(
            SimFault::Hold(Link {
                side: Side::Server,
                peer: Peer::Client(2)
            })
            .to_string(),
            "hold server <-> client-2"
        );
        assert_eq!(SimFault::Crash(Node::Server).to_string(), "crash server");
        assert_eq!(
            SimFault::Restart(Node::Replica(3)).to_string(),
            "restart replica-3"
        );
        assert_eq!(
            SimFault::Repair(Link {
                side: Side::Replica(1),
                peer: Peer::Store
            })
            .to_string(),
            "repair replica-1 <-> store"
        );
    }
}
