//! Fault plans: which faults a run injects, how hard and when. A plan is
//! either written by a scenario or generated from the seed (swarm testing:
//! each seed switches a different *mix* of fault kinds on, rather than every
//! run getting the same uniform noise), and it round-trips through a compact
//! one-line text form so a shrunk plan can be replayed from the command line
//! (`SIM_PLAN='...'`).

use std::{fmt, str::FromStr, time::Duration};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::seed::derive_seed;

/// A network or host fault active during a window of simulated time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetFault {
    /// Drop every message between the server and the target.
    Partition,
    /// Queue every message between the server and the target, delivering
    /// them on release.
    Hold,
    /// Crash the server at the window's start, restart it at its end.
    Crash,
}

/// Which clients a network fault cuts off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every client.
    All,
    /// Only `client-N` (1-based).
    Client(usize),
}

/// A fault and when it is active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// What.
    pub fault: NetFault,
    /// Whom (ignored for crashes).
    pub target: Target,
    /// From (simulated time since start).
    pub from: Duration,
    /// For how long.
    pub length: Duration,
}

impl Window {
    /// A window cutting off every client.
    pub fn all(fault: NetFault, from_ms: u64, length_ms: u64) -> Self {
        Self {
            fault,
            target: Target::All,
            from: Duration::from_millis(from_ms),
            length: Duration::from_millis(length_ms),
        }
    }

    /// When the window closes.
    pub fn until(&self) -> Duration {
        self.from + self.length
    }
}

/// Everything a run injects.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// Message latency range (ms).
    pub latency_ms: (u64, u64),
    /// turmoil link fail rate per step (breaks connections).
    pub link_fail_rate: f64,
    /// Server: probability of UNAVAILABLE before applying.
    pub fail_rate: f64,
    /// Server: handling delay range (ms) — a slow server.
    pub delay_ms: (u64, u64),
    /// Server: probability of applying then losing the response.
    pub drop_rate: f64,
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
            windows: Vec::new(),
        }
    }
}

impl FaultPlan {
    /// A swarm plan: each fault kind is switched on with probability ½ and,
    /// when on, gets a random intensity and timing. `clients` bounds the
    /// targets of per-client partitions.
    pub fn generate(seed: u64, clients: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, "plan"));
        let mut p = FaultPlan::default();
        let max_latency = [5, 20, 80, 250][rng.random_range(0..4)];
        p.latency_ms = (1, max_latency);
        if rng.random_bool(0.5) {
            p.link_fail_rate = [0.002, 0.01, 0.03][rng.random_range(0..3)];
        }
        if rng.random_bool(0.5) {
            p.fail_rate = [0.05, 0.2, 0.4][rng.random_range(0..3)];
        }
        if rng.random_bool(0.5) {
            p.delay_ms = (0, [50, 300, 900][rng.random_range(0..3)]);
        }
        if rng.random_bool(0.5) {
            p.drop_rate = [0.05, 0.2, 0.4][rng.random_range(0..3)];
        }
        let windows = rng.random_range(0..=3);
        for _ in 0..windows {
            let fault =
                [NetFault::Partition, NetFault::Hold, NetFault::Crash][rng.random_range(0..3)];
            let target = if fault != NetFault::Crash && rng.random_bool(0.5) {
                Target::Client(rng.random_range(1..=clients))
            } else {
                Target::All
            };
            p.windows.push(Window {
                fault,
                target,
                from: Duration::from_millis(rng.random_range(0..2_500)),
                length: Duration::from_millis(rng.random_range(100..2_000)),
            });
        }
        p.windows.sort_by_key(|w| w.from);
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
            self.latency_ms.1 > 5,
            FaultPlan {
                latency_ms: (1, 5),
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

impl fmt::Display for FaultPlan {
    /// `latency=1..80 link=0.01 fail=0.2 delay=0..300 drop=0.2 windows=partition:all@150+800,crash@1200+400`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "latency={}..{} link={} fail={} delay={}..{} drop={} windows=",
            self.latency_ms.0,
            self.latency_ms.1,
            self.link_fail_rate,
            self.fail_rate,
            self.delay_ms.0,
            self.delay_ms.1,
            self.drop_rate
        )?;
        for (i, w) in self.windows.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let kind = match w.fault {
                NetFault::Partition => "partition",
                NetFault::Hold => "hold",
                NetFault::Crash => "crash",
            };
            let target = match w.target {
                Target::All => "all".to_owned(),
                Target::Client(n) => format!("client-{n}"),
            };
            write!(
                f,
                "{kind}:{target}@{}+{}",
                w.from.as_millis(),
                w.length.as_millis()
            )?;
        }
        Ok(())
    }
}

fn bad_target(target: &str) -> String {
    format!("window target {target:?}: expected all, client-1, client-2, ...")
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
                "windows" => {
                    for w in v.split(',').filter(|w| !w.is_empty()) {
                        let (kind, rest) =
                            w.split_once(':').ok_or_else(|| format!("window {w:?}"))?;
                        let (target, when) = rest
                            .split_once('@')
                            .ok_or_else(|| format!("window {w:?}"))?;
                        let (from, length) = when
                            .split_once('+')
                            .ok_or_else(|| format!("window {w:?}"))?;
                        let fault = match kind {
                            "partition" => NetFault::Partition,
                            "hold" => NetFault::Hold,
                            "crash" => NetFault::Crash,
                            _ => return Err(format!("unknown fault {kind:?}")),
                        };
                        let target = match (target, target.strip_prefix("client-")) {
                            ("all", _) => Target::All,
                            // 1-based, as the host names are.
                            (_, Some(n)) => match n.parse() {
                                Ok(n) if n >= 1 => Target::Client(n),
                                _ => return Err(bad_target(target)),
                            },
                            _ => return Err(bad_target(target)),
                        };
                        let ms = |s: &str| {
                            s.parse::<u64>()
                                .map(Duration::from_millis)
                                .map_err(|_| format!("{s:?}"))
                        };
                        p.windows.push(Window {
                            fault,
                            target,
                            from: ms(from)?,
                            length: ms(length)?,
                        });
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
            let p = FaultPlan::generate(seed, 3);
            let text = p.to_string();
            assert_eq!(text.parse::<FaultPlan>(), Ok(p), "{text}");
        }
    }

    #[test]
    fn bad_plans_are_refused_with_a_reason() {
        for (text, reason) in [
            ("windows=crash:everyone@1+2", "window target"),
            ("windows=partition:client-0@1+2", "window target"),
            ("windows=flood:all@1+2", "unknown fault"),
            ("latency=5", "is not A..B"),
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
}
