//! Mutations of a fault plan, every choice drawn from the explorer's RNG:
//! the shrinker's edits (drop a window, switch a fault off, halve a
//! window), the swarm generator's draws (a window, or one fault's rate,
//! taken from a freshly generated plan), a window shifted or stretched,
//! and splices of two plans.

use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::faults::FaultPlan;

/// The world a plan is for: which generator draws its faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    /// Client hosts a window may name.
    pub clients: usize,
    /// Replicas, in the replicated world.
    pub replicas: Option<usize>,
}

impl World {
    /// A swarm plan of this world, as the generator draws it for `seed`.
    pub fn generate(self, seed: u64) -> FaultPlan {
        match self.replicas {
            None => FaultPlan::generate(seed, self.clients),
            Some(r) => FaultPlan::generate_replicated(seed, self.clients, r),
        }
    }
}

/// Latest start of a window the generators draw (ms), and so of a shift.
const FROM_MS_MAX: u64 = 2_500;
/// Window lengths a stretch keeps to (ms), the generators' range.
const LENGTH_MS: (u64, u64) = (100, 2_000);

/// One fault of a plan, copied whole from another: what "change a rate"
/// means, drawn from the generator's own values.
fn copy_field(to: &mut FaultPlan, from: &FaultPlan, field: usize) {
    match field {
        0 => to.latency_ms = from.latency_ms,
        1 => to.link_fail_rate = from.link_fail_rate,
        2 => to.fail_rate = from.fail_rate,
        3 => to.delay_ms = from.delay_ms,
        4 => to.drop_rate = from.drop_rate,
        5 => to.store_delay_ms = from.store_delay_ms,
        6 => to.store_lose_rate = from.store_lose_rate,
        _ => to.slow = from.slow,
    }
}

/// The faults [`copy_field`] knows in this world.
fn fields(world: World) -> usize {
    if world.replicas.is_some() { 8 } else { 5 }
}

/// `plan` changed by one to four edits; `other` is another plan of the
/// corpus to splice with, if any.
pub fn mutate(
    rng: &mut ChaCha8Rng,
    world: World,
    plan: &FaultPlan,
    other: Option<&FaultPlan>,
) -> FaultPlan {
    let mut p = plan.clone();
    let mut edits = 1;
    while edits < 4 && rng.random_bool(0.5) {
        edits += 1;
    }
    for _ in 0..edits {
        edit(rng, world, &mut p, other);
    }
    p.windows.sort_by_key(|w| w.from);
    p
}

fn edit(rng: &mut ChaCha8Rng, world: World, p: &mut FaultPlan, other: Option<&FaultPlan>) {
    match rng.random_range(0..6) {
        // The shrinker's edits: one step smaller.
        0 => {
            let smaller = p.smaller();
            if !smaller.is_empty() {
                *p = smaller[rng.random_range(0..smaller.len())].clone();
            }
        }
        // The generator's draws: a window of a fresh swarm plan.
        1 => {
            for _ in 0..8 {
                let fresh = world.generate(rng.random());
                if !fresh.windows.is_empty() {
                    p.windows
                        .push(fresh.windows[rng.random_range(0..fresh.windows.len())]);
                    break;
                }
            }
        }
        // The generator's draws: one fault's rate, on or off.
        2 => {
            let fresh = world.generate(rng.random());
            copy_field(p, &fresh, rng.random_range(0..fields(world)));
        }
        // Shift a window.
        3 if !p.windows.is_empty() => {
            let i = rng.random_range(0..p.windows.len());
            let from = p.windows[i].from.as_millis() as i64 + rng.random_range(-600..=600);
            p.windows[i].from = Duration::from_millis(from.clamp(0, FROM_MS_MAX as i64) as u64);
        }
        // Stretch or shrink a window.
        4 if !p.windows.is_empty() => {
            let i = rng.random_range(0..p.windows.len());
            let ms = p.windows[i].length.as_millis() as u64;
            let ms = if rng.random_bool(0.5) { ms * 2 } else { ms / 2 };
            p.windows[i].length = Duration::from_millis(ms.clamp(LENGTH_MS.0, LENGTH_MS.1));
        }
        // Splice: another plan's windows, or its faults, with these.
        5 => {
            if let Some(o) = other {
                if rng.random_bool(0.5) {
                    for w in &o.windows {
                        if rng.random_bool(0.5) {
                            p.windows.push(*w);
                        }
                    }
                } else {
                    copy_field(p, o, rng.random_range(0..fields(world)));
                }
            }
        }
        _ => {}
    }
    // Keep plans the size the generators draw: at most four windows.
    while p.windows.len() > 4 {
        p.windows.remove(rng.random_range(0..p.windows.len()));
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    /// Mutations are a function of the RNG: the same seed, the same
    /// plans; every plan prints in a form that replays; and they do move.
    #[test]
    fn mutations_are_seeded_bounded_and_replayable() {
        for world in [
            World {
                clients: 3,
                replicas: None,
            },
            World {
                clients: 3,
                replicas: Some(3),
            },
        ] {
            let walk = |seed| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let mut p = world.generate(1);
                let mut out = Vec::new();
                for _ in 0..200 {
                    let other = world.generate(rng.random());
                    p = mutate(&mut rng, world, &p, Some(&other));
                    out.push(p.to_string());
                }
                out
            };
            let plans = walk(7);
            assert_eq!(plans, walk(7));
            let distinct: std::collections::BTreeSet<_> = plans.iter().collect();
            assert!(distinct.len() > 100, "{} distinct plans", distinct.len());
            for text in &plans {
                let p: FaultPlan = text.parse().expect("a plan");
                assert_eq!(&p.to_string(), text);
                assert!(p.windows.len() <= 4, "{text}");
                assert!(p.windows.windows(2).all(|w| w[0].from <= w[1].from));
            }
        }
    }
}
