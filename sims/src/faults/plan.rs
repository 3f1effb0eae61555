//! Fault plans: which faults a run injects, how hard and when. A plan is
//! either written by a scenario or generated from the seed (swarm testing:
//! each seed switches a different *mix* of fault kinds on, rather than every
//! run getting the same uniform noise), and it round-trips through a compact
//! one-line text form so a shrunk plan can be replayed from the command line
//! (`SIM_PLAN='...'`).
//!
//! One plan type serves both worlds. In the single-server world the only
//! server host is `server`; in the replicated world [`Side::Server`] and
//! [`Node::Server`] mean every replica, and the plan can also name one
//! replica or the store host.

use std::{fmt, str::FromStr, time::Duration};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::seed::derive_seed;

/// The kind of a timed fault, for [`Window::all`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetFault {
    /// Drop every message between the server and the clients.
    Partition,
    /// Queue every message between the server and the clients, delivering
    /// them on release.
    Hold,
    /// Crash the server at the window's start, restart it at its end.
    Crash,
}

/// A host a crash strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// The server (single-server world), or every replica.
    Server,
    /// `replica-N` (1-based).
    Replica(usize),
    /// The store host (replicated world).
    Store,
}

/// The server side of a cut link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The server (single-server world), or every replica.
    Server,
    /// `replica-N` (1-based).
    Replica(usize),
}

/// Whom a network fault cuts the server side off from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Every client.
    Clients,
    /// Only `client-N` (1-based).
    Client(usize),
    /// The store host (replicated world).
    Store,
}

/// A set of links: between `side` and `peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// The server side.
    pub side: Side,
    /// Whom it is cut off from.
    pub peer: Peer,
}

impl Link {
    /// The server (or every replica) and every client.
    pub const SERVER_CLIENTS: Link = Link {
        side: Side::Server,
        peer: Peer::Clients,
    };
}

/// A timed fault: what it does while its window is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Drop every message on the links.
    Partition(Link),
    /// Queue every message on the links, delivering them on release.
    Hold(Link),
    /// Crash the host at the window's start, restart it at its end.
    Crash(Node),
}

/// A fault and when it is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// What.
    pub fault: Fault,
    /// From (simulated time since start).
    pub from: Duration,
    /// For how long.
    pub length: Duration,
}

impl Window {
    /// A window of `fault` from `from_ms`, `length_ms` long.
    pub fn new(fault: Fault, from_ms: u64, length_ms: u64) -> Self {
        Self {
            fault,
            from: Duration::from_millis(from_ms),
            length: Duration::from_millis(length_ms),
        }
    }

    /// A window cutting off every client from the server (or crashing it).
    pub fn all(kind: NetFault, from_ms: u64, length_ms: u64) -> Self {
        let fault = match kind {
            NetFault::Partition => Fault::Partition(Link::SERVER_CLIENTS),
            NetFault::Hold => Fault::Hold(Link::SERVER_CLIENTS),
            NetFault::Crash => Fault::Crash(Node::Server),
        };
        Self::new(fault, from_ms, length_ms)
    }

    /// When the window closes.
    pub fn until(&self) -> Duration {
        self.from + self.length
    }
}

/// One replica much slower than the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slow {
    /// Which replica (1-based).
    pub replica: usize,
    /// Its handling delay range (ms), replacing the plan's `delay_ms` there.
    pub delay_ms: (u64, u64),
}

/// Everything a run injects.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// Message latency range (ms).
    pub latency_ms: (u64, u64),
    /// turmoil link fail rate per step (breaks connections).
    pub link_fail_rate: f64,
    /// Server (every replica): probability of UNAVAILABLE before applying.
    pub fail_rate: f64,
    /// Server (every replica): handling delay range (ms) — a slow server.
    pub delay_ms: (u64, u64),
    /// Server (every replica): probability of applying then losing the
    /// response.
    pub drop_rate: f64,
    /// Store: delay range (ms) of every operation — a slow store.
    pub store_delay_ms: (u64, u64),
    /// Store: probability that a commit is made and its reply lost (the
    /// store drops the connection before answering).
    pub store_lose_rate: f64,
    /// One slow replica, if any.
    pub slow: Option<Slow>,
    /// Simulated disk (durable server): probability of an injected I/O
    /// error per read, per sync, per run of writes between syncs.
    pub disk_error_rate: f64,
    /// Simulated disk: probability of a power cut just before a sync
    /// (the host crashes and restarts at once).
    pub disk_cut_rate: f64,
    /// Timed faults.
    pub windows: Vec<Window>,
}

impl Default for FaultPlan {
    /// No faults, small latency.
    fn default() -> Self {
        Self {
            latency_ms: (1, 5),
            link_fail_rate: 0.0,
            fail_rate: 0.0,
            delay_ms: (0, 0),
            drop_rate: 0.0,
            store_delay_ms: (0, 0),
            store_lose_rate: 0.0,
            slow: None,
            disk_error_rate: 0.0,
            disk_cut_rate: 0.0,
            windows: Vec::new(),
        }
    }
}

/// A random element of `items` (never empty).
fn one_of<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

impl FaultPlan {
    /// A swarm plan for the single-server world: each fault kind is
    /// switched on with probability ½ and, when on, gets a random intensity
    /// and timing. `clients` bounds the targets of per-client partitions.
    pub fn generate(seed: u64, clients: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, "plan"));
        let mut p = FaultPlan::default();
        p.server_faults(&mut rng);
        let windows = rng.random_range(0..=3);
        for _ in 0..windows {
            let kind = one_of(
                &mut rng,
                &[NetFault::Partition, NetFault::Hold, NetFault::Crash],
            );
            let peer = if kind != NetFault::Crash && rng.random_bool(0.5) {
                Peer::Client(rng.random_range(1..=clients))
            } else {
                Peer::Clients
            };
            let link = Link {
                side: Side::Server,
                peer,
            };
            let fault = match kind {
                NetFault::Partition => Fault::Partition(link),
                NetFault::Hold => Fault::Hold(link),
                NetFault::Crash => Fault::Crash(Node::Server),
            };
            p.windows.push(Window {
                fault,
                from: Duration::from_millis(rng.random_range(0..2_500)),
                length: Duration::from_millis(rng.random_range(100..2_000)),
            });
        }
        p.windows.sort_by_key(|w| w.from);
        p
    }

    /// Latency, link failures and the servers' own faults, each on with
    /// probability ½ (the first draws of both generators).
    fn server_faults(&mut self, rng: &mut ChaCha8Rng) {
        self.latency_ms = (1, one_of(rng, &[5, 20, 80, 250]));
        if rng.random_bool(0.5) {
            self.link_fail_rate = one_of(rng, &[0.002, 0.01, 0.03]);
        }
        if rng.random_bool(0.5) {
            self.fail_rate = one_of(rng, &[0.05, 0.2, 0.4]);
        }
        if rng.random_bool(0.5) {
            self.delay_ms = (0, one_of(rng, &[50, 300, 900]));
        }
        if rng.random_bool(0.5) {
            self.drop_rate = one_of(rng, &[0.05, 0.2, 0.4]);
        }
    }

    /// A swarm plan for the replicated world: the servers' faults as in
    /// [`FaultPlan::generate`], plus a slow store, lost commit replies and
    /// one slow replica (each on with probability ½, ½ and ⅓), and up to
    /// four windows: a replica or the store crashing, one replica cut off
    /// from the clients (all or one) or from the store, or every replica
    /// cut off from the store.
    pub fn generate_replicated(seed: u64, clients: usize, replicas: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, "plan"));
        let mut p = FaultPlan::default();
        p.server_faults(&mut rng);
        if rng.random_bool(0.5) {
            p.store_delay_ms = (0, one_of(&mut rng, &[20, 100, 400]));
        }
        if rng.random_bool(0.5) {
            p.store_lose_rate = one_of(&mut rng, &[0.05, 0.2, 0.4]);
        }
        if rng.random_bool(1.0 / 3.0) {
            p.slow = Some(Slow {
                replica: rng.random_range(1..=replicas),
                delay_ms: (100, one_of(&mut rng, &[300, 1_000])),
            });
        }
        let windows = rng.random_range(0..=4);
        for _ in 0..windows {
            let replica = Side::Replica(rng.random_range(1..=replicas));
            let peer = match rng.random_range(0..3) {
                0 => Peer::Clients,
                1 => Peer::Client(rng.random_range(1..=clients)),
                _ => Peer::Store,
            };
            let fault = match rng.random_range(0..8) {
                0 | 1 => Fault::Crash(Node::Replica(rng.random_range(1..=replicas))),
                2 | 3 => Fault::Crash(Node::Store),
                4 | 5 => Fault::Partition(Link {
                    side: replica,
                    peer,
                }),
                6 => Fault::Hold(Link {
                    side: replica,
                    peer,
                }),
                _ => Fault::Partition(Link {
                    side: Side::Server,
                    peer: Peer::Store,
                }),
            };
            p.windows.push(Window {
                fault,
                from: Duration::from_millis(rng.random_range(0..2_500)),
                length: Duration::from_millis(rng.random_range(100..2_000)),
            });
        }
        p.windows.sort_by_key(|w| w.from);
        p
    }

    /// A swarm plan for the durable server on a simulated disk: the
    /// single-server plan of [`FaultPlan::generate`] (the same seed draws
    /// the same plan there), plus I/O errors and power cuts, each on with
    /// probability ½, drawn from a stream of their own.
    pub fn generate_disk(seed: u64, clients: usize) -> Self {
        let mut p = Self::generate(seed, clients);
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, "disk-plan"));
        if rng.random_bool(0.5) {
            p.disk_error_rate = one_of(&mut rng, &[0.005, 0.02, 0.05]);
        }
        if rng.random_bool(0.5) {
            p.disk_cut_rate = one_of(&mut rng, &[0.01, 0.05, 0.15]);
        }
        p
    }

    /// When the last timed fault ends.
    pub fn last_fault_end(&self) -> Duration {
        self.windows
            .iter()
            .map(Window::until)
            .max()
            .unwrap_or_default()
    }

    /// True when the plan injects nothing: no fault, and no latency beyond
    /// the default's few milliseconds. Latency counts: a round trip longer
    /// than an attempt's timeout makes the client retry as surely as a
    /// lost response does.
    pub fn is_quiet(&self) -> bool {
        self.latency_ms.1 <= FaultPlan::default().latency_ms.1
            && self.link_fail_rate == 0.0
            && self.fail_rate == 0.0
            && self.delay_ms.1 == 0
            && self.drop_rate == 0.0
            && self.store_delay_ms.1 == 0
            && self.store_lose_rate == 0.0
            && self.slow.is_none()
            && self.disk_error_rate == 0.0
            && self.disk_cut_rate == 0.0
            && self.windows.is_empty()
    }

    /// Candidate plans one step smaller than this one, for shrinking: each
    /// drops or weakens one thing.
    pub fn smaller(&self) -> Vec<FaultPlan> {
        let mut out = Vec::new();
        for i in 0..self.windows.len() {
            let mut p = self.clone();
            p.windows.remove(i);
            out.push(p);
        }
        let mut push_if = |changed: bool, p: FaultPlan| {
            if changed {
                out.push(p);
            }
        };
        let quiet = FaultPlan::default();
        push_if(
            self.link_fail_rate > 0.0,
            FaultPlan {
                link_fail_rate: 0.0,
                ..self.clone()
            },
        );
        push_if(
            self.fail_rate > 0.0,
            FaultPlan {
                fail_rate: 0.0,
                ..self.clone()
            },
        );
        push_if(
            self.drop_rate > 0.0,
            FaultPlan {
                drop_rate: 0.0,
                ..self.clone()
            },
        );
        push_if(
            self.delay_ms.1 > 0,
            FaultPlan {
                delay_ms: (0, 0),
                ..self.clone()
            },
        );
        push_if(
            self.store_lose_rate > 0.0,
            FaultPlan {
                store_lose_rate: 0.0,
                ..self.clone()
            },
        );
        push_if(
            self.store_delay_ms.1 > 0,
            FaultPlan {
                store_delay_ms: (0, 0),
                ..self.clone()
            },
        );
        push_if(
            self.disk_error_rate > 0.0,
            FaultPlan {
                disk_error_rate: 0.0,
                ..self.clone()
            },
        );
        push_if(
            self.disk_cut_rate > 0.0,
            FaultPlan {
                disk_cut_rate: 0.0,
                ..self.clone()
            },
        );
        push_if(
            self.slow.is_some(),
            FaultPlan {
                slow: None,
                ..self.clone()
            },
        );
        push_if(
            self.latency_ms.1 > quiet.latency_ms.1,
            FaultPlan {
                latency_ms: quiet.latency_ms,
                ..self.clone()
            },
        );
        for i in 0..self.windows.len() {
            if self.windows[i].length > Duration::from_millis(100) {
                let mut p = self.clone();
                p.windows[i].length /= 2;
                out.push(p);
            }
        }
        out
    }
}

impl fmt::Display for Side {
    /// As in a window's text form: `replica-N/` or nothing for the server.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Server => Ok(()),
            Self::Replica(n) => write!(f, "replica-{n}/"),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Clients => f.write_str("all"),
            Self::Client(n) => write!(f, "client-{n}"),
            Self::Store => f.write_str("store"),
        }
    }
}

impl fmt::Display for Window {
    /// `partition:all@150+800`, `hold:replica-2/store@10+300`,
    /// `crash:replica-1@0+500`, `crash:store@900+200`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.fault {
            Fault::Partition(l) => write!(f, "partition:{}{}", l.side, l.peer)?,
            Fault::Hold(l) => write!(f, "hold:{}{}", l.side, l.peer)?,
            Fault::Crash(Node::Server) => f.write_str("crash:all")?,
            Fault::Crash(Node::Replica(n)) => write!(f, "crash:replica-{n}")?,
            Fault::Crash(Node::Store) => f.write_str("crash:store")?,
        }
        write!(f, "@{}+{}", self.from.as_millis(), self.length.as_millis())
    }
}

impl fmt::Display for FaultPlan {
    /// `latency=1..80 link=0.01 fail=0.2 delay=0..300 drop=0.2 windows=partition:all@150+800,crash:all@1200+400`;
    /// the store's faults and a slow replica follow `drop` only when set
    /// (`store-delay=0..100 store-lose=0.2 slow=replica-2:100..300`), so a
    /// single-server plan reads as it always did.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "latency={}..{} link={} fail={} delay={}..{} drop={} ",
            self.latency_ms.0,
            self.latency_ms.1,
            self.link_fail_rate,
            self.fail_rate,
            self.delay_ms.0,
            self.delay_ms.1,
            self.drop_rate
        )?;
        if self.store_delay_ms != (0, 0) {
            let (a, b) = self.store_delay_ms;
            write!(f, "store-delay={a}..{b} ")?;
        }
        if self.store_lose_rate > 0.0 {
            write!(f, "store-lose={} ", self.store_lose_rate)?;
        }
        if let Some(s) = self.slow {
            let (a, b) = s.delay_ms;
            write!(f, "slow=replica-{}:{a}..{b} ", s.replica)?;
        }
        if self.disk_error_rate > 0.0 {
            write!(f, "disk-error={} ", self.disk_error_rate)?;
        }
        if self.disk_cut_rate > 0.0 {
            write!(f, "disk-cut={} ", self.disk_cut_rate)?;
        }
        f.write_str("windows=")?;
        for (i, w) in self.windows.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{w}")?;
        }
        Ok(())
    }
}

/// `N` of `{prefix}N`, 1-based.
fn numbered(text: &str, prefix: &str) -> Option<usize> {
    text.strip_prefix(prefix)?
        .parse()
        .ok()
        .filter(|n: &usize| *n >= 1)
}

fn bad_target(target: &str) -> String {
    format!(
        "window target {target:?}: expected all, client-N or store, optionally after replica-N/ \
         (crash: all, replica-N or store)"
    )
}

fn range(v: &str) -> Result<(u64, u64), String> {
    let (a, b) = v
        .split_once("..")
        .ok_or_else(|| format!("{v:?} is not A..B"))?;
    let n = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| format!("{s:?} is not a number"))
    };
    Ok((n(a)?, n(b)?))
}

/// The links of a window's target: `[replica-N/](all|client-N|store)`.
fn link(target: &str) -> Result<Link, String> {
    let (side, peer) = match target.split_once('/') {
        Some((side, peer)) => (
            Side::Replica(numbered(side, "replica-").ok_or_else(|| bad_target(target))?),
            peer,
        ),
        None => (Side::Server, target),
    };
    let peer = match peer {
        "all" => Peer::Clients,
        "store" => Peer::Store,
        _ => Peer::Client(numbered(peer, "client-").ok_or_else(|| bad_target(target))?),
    };
    Ok(Link { side, peer })
}

/// The host of a crash window: `all|replica-N|store`.
fn node(target: &str) -> Result<Node, String> {
    match target {
        "all" => Ok(Node::Server),
        "store" => Ok(Node::Store),
        _ => numbered(target, "replica-")
            .map(Node::Replica)
            .ok_or_else(|| bad_target(target)),
    }
}

impl FromStr for Window {
    type Err = String;

    fn from_str(w: &str) -> Result<Self, String> {
        let (kind, rest) = w.split_once(':').ok_or_else(|| format!("window {w:?}"))?;
        let (target, when) = rest
            .split_once('@')
            .ok_or_else(|| format!("window {w:?}"))?;
        let (from, length) = when
            .split_once('+')
            .ok_or_else(|| format!("window {w:?}"))?;
        let fault = match kind {
            "partition" => Fault::Partition(link(target)?),
            "hold" => Fault::Hold(link(target)?),
            "crash" => Fault::Crash(node(target)?),
            _ => return Err(format!("unknown fault {kind:?}")),
        };
        let ms = |s: &str| {
            s.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("{s:?}"))
        };
        Ok(Window {
            fault,
            from: ms(from)?,
            length: ms(length)?,
        })
    }
}

/// `replica-N:A..B`.
fn slow(v: &str) -> Result<Slow, String> {
    let bad = || format!("slow={v:?}: expected replica-N:A..B");
    let (replica, delay) = v.split_once(':').ok_or_else(bad)?;
    Ok(Slow {
        replica: numbered(replica, "replica-").ok_or_else(bad)?,
        delay_ms: range(delay)?,
    })
}

impl FromStr for FaultPlan {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut p = FaultPlan::default();
        for part in s.split_whitespace() {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not key=value"))?;
            let rate = || {
                v.parse::<f64>()
                    .map_err(|_| format!("{k}: {v:?} is not a number"))
            };
            match k {
                "latency" => p.latency_ms = range(v)?,
                "link" => p.link_fail_rate = rate()?,
                "fail" => p.fail_rate = rate()?,
                "delay" => p.delay_ms = range(v)?,
                "drop" => p.drop_rate = rate()?,
                "store-delay" => p.store_delay_ms = range(v)?,
                "store-lose" => p.store_lose_rate = rate()?,
                "slow" => p.slow = Some(slow(v)?),
                "disk-error" => p.disk_error_rate = rate()?,
                "disk-cut" => p.disk_cut_rate = rate()?,
                "windows" => {
                    for w in v.split(',').filter(|w| !w.is_empty()) {
                        p.windows.push(w.parse()?);
                    }
                }
                _ => return Err(format!("unknown plan key {k:?}")),
            }
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_round_trip_through_text() {
        for seed in 0..200 {
            for p in [
                FaultPlan::generate(seed, 3),
                FaultPlan::generate_replicated(seed, 3, 3),
                FaultPlan::generate_disk(seed, 3),
            ] {
                let text = p.to_string();
                assert_eq!(text.parse::<FaultPlan>(), Ok(p), "{text}");
            }
        }
    }

    /// A single-server plan prints as it did before the replicated world
    /// existed, so replay commands in old reports still read the same.
    #[test]
    fn single_server_plans_keep_their_text() {
        let p: FaultPlan = "latency=1..80 link=0.01 fail=0.2 delay=0..300 drop=0.2 \
                            windows=partition:all@150+800,hold:client-2@5+10,crash:all@1200+400"
            .parse()
            .expect("a plan");
        assert_eq!(
            p.to_string(),
            "latency=1..80 link=0.01 fail=0.2 delay=0..300 drop=0.2 \
             windows=partition:all@150+800,hold:client-2@5+10,crash:all@1200+400"
        );
        assert_eq!(p.windows[0].fault, Fault::Partition(Link::SERVER_CLIENTS));
        assert_eq!(p.windows[2].fault, Fault::Crash(Node::Server));
    }

    #[test]
    fn replicated_windows_name_their_hosts() {
        let p: FaultPlan = "store-delay=0..100 store-lose=0.2 slow=replica-2:100..300 \
                            windows=partition:replica-2/store@1+2,hold:replica-1/client-3@3+4,\
                            crash:replica-3@5+6,crash:store@7+8,partition:store@9+10"
            .parse()
            .expect("a plan");
        let faults: Vec<Fault> = p.windows.iter().map(|w| w.fault).collect();
        assert_eq!(
            faults,
            [
                Fault::Partition(Link {
                    side: Side::Replica(2),
                    peer: Peer::Store
                }),
                Fault::Hold(Link {
                    side: Side::Replica(1),
                    peer: Peer::Client(3)
                }),
                Fault::Crash(Node::Replica(3)),
                Fault::Crash(Node::Store),
                Fault::Partition(Link {
                    side: Side::Server,
                    peer: Peer::Store
                }),
            ]
        );
        assert_eq!(
            p.slow,
            Some(Slow {
                replica: 2,
                delay_ms: (100, 300)
            })
        );
        assert_eq!((p.store_delay_ms, p.store_lose_rate), ((0, 100), 0.2));
    }

    #[test]
    fn bad_plans_are_refused_with_a_reason() {
        for (text, reason) in [
            ("windows=crash:everyone@1+2", "window target"),
            ("windows=crash:client-1@1+2", "window target"),
            ("windows=partition:client-0@1+2", "window target"),
            ("windows=partition:replica-0/all@1+2", "window target"),
            ("windows=hold:replica-1/replica-2@1+2", "window target"),
            ("windows=flood:all@1+2", "unknown fault"),
            ("latency=5", "is not A..B"),
            ("slow=2:1..5", "expected replica-N:A..B"),
            ("speed=3", "unknown plan key"),
        ] {
            let err = text.parse::<FaultPlan>().expect_err(text);
            assert!(err.contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn swarm_plans_differ_in_their_mix() {
        let mixes: std::collections::BTreeSet<_> = (0..64)
            .map(|s| {
                let p = FaultPlan::generate(s, 2);
                (
                    p.link_fail_rate > 0.0,
                    p.fail_rate > 0.0,
                    p.delay_ms.1 > 0,
                    p.drop_rate > 0.0,
                    p.windows.len(),
                )
            })
            .collect();
        assert!(
            mixes.len() > 20,
            "only {} distinct mixes in 64 seeds",
            mixes.len()
        );
    }

    /// The replicated swarm draws every fault the replicated world has:
    /// in 64 seeds, each kind appears.
    #[test]
    fn replicated_swarm_plans_reach_every_fault() {
        let plans: Vec<FaultPlan> = (0..64)
            .map(|s| FaultPlan::generate_replicated(s, 3, 3))
            .collect();
        let any = |f: &dyn Fn(&FaultPlan) -> bool| plans.iter().any(f);
        let window =
            |f: &dyn Fn(Fault) -> bool| plans.iter().any(|p| p.windows.iter().any(|w| f(w.fault)));
        assert!(any(&|p| p.store_delay_ms.1 > 0));
        assert!(any(&|p| p.store_lose_rate > 0.0));
        assert!(any(&|p| p.slow.is_some()));
        assert!(window(&|f| matches!(f, Fault::Crash(Node::Replica(_)))));
        assert!(window(&|f| matches!(f, Fault::Crash(Node::Store))));
        assert!(window(&|f| matches!(
            f,
            Fault::Partition(Link {
                side: Side::Replica(_),
                peer: Peer::Store
            })
        )));
        assert!(window(&|f| matches!(
            f,
            Fault::Partition(Link {
                side: Side::Replica(_),
                peer: Peer::Client(_) | Peer::Clients
            })
        )));
        assert!(window(&|f| matches!(f, Fault::Hold(_))));
    }

    /// The single-server generator draws what it always drew: the same
    /// seeds give the same plans (pinned by text, which covers every
    /// field), so old swarm seeds replay as they did.
    #[test]
    fn single_server_swarm_plans_are_unchanged() {
        // Printed by the swarm before the replicated world was added
        // (`sim swarm SEED`, 2 + SEED % 2 clients).
        for (seed, text) in [
            (
                0,
                "latency=1..250 link=0.002 fail=0 delay=0..300 drop=0.2 windows=partition:client-1@1686+1056",
            ),
            (
                1,
                "latency=1..5 link=0 fail=0.05 delay=0..0 drop=0 windows=hold:client-3@945+478,crash:all@1676+569",
            ),
            (
                5,
                "latency=1..250 link=0.01 fail=0 delay=0..0 drop=0 windows=crash:all@689+1991,crash:all@1103+946,hold:client-2@1176+316",
            ),
        ] {
            let clients = 2 + (seed % 2) as usize;
            assert_eq!(FaultPlan::generate(seed, clients).to_string(), text);
        }
        for seed in 0..64 {
            let p = FaultPlan::generate(seed, 3);
            assert_eq!(p.store_delay_ms, (0, 0));
            assert_eq!(p.store_lose_rate, 0.0);
            assert!(p.slow.is_none());
            assert!(p.windows.iter().all(|w| match w.fault {
                Fault::Crash(n) => n == Node::Server,
                Fault::Partition(l) | Fault::Hold(l) =>
                    l.side == Side::Server && l.peer != Peer::Store,
            }));
        }
    }
}
