//! The search: is there one order of the operations, consistent with real
//! time, in which every answer a client saw is what a single register
//! would have answered? Pure: no simulation types, so it can be tested on
//! hand-made histories.
//!
//! # What is checked
//! Each register is checked on its own (linearizability is compositional:
//! a history is linearizable iff each object's sub-history is — Herlihy &
//! Wing's locality), against the model of one register: `Add(delta)`
//! creates it at 0 if absent, adds, and answers the new value; `Read`
//! answers the value or "absent".
//!
//! An operation whose outcome the client does not know (a timeout, a lost
//! connection — Jepsen's `:info`) may have taken effect at any point after
//! it was invoked, or never: it is *optional* and never returns, so it
//! constrains nothing by itself, but the search may use it to explain a
//! later answer. Operations known not to have been applied are left out by
//! the caller.
//!
//! # How
//! Wing & Gong's search with Lowe's memoisation, as in Porcupine: from the
//! operations that may come next (every call not yet linearized that
//! precedes the first return not yet linearized), try one — apply it to the
//! model, its answer must match — and go on from there; when none fits,
//! backtrack. A set of (linearized operations, model state) pairs already
//! explored prunes the search. It succeeds once every operation *with an
//! answer* is linearized.
//!
//! Cost: at most one node per reachable (set of linearized operations,
//! state) pair; the state is a function of the set, and the reachable sets
//! are those consistent with real time, so `O(n · 2^c)` model steps for `n`
//! operations with at most `c` of them pending at once, `O(n)` each to list
//! the candidates. An unknown-outcome operation stays pending from its
//! call to the end, so each one adds to `c` for the rest of the history —
//! deciding whether some subset of unknown adds explains an answer is
//! subset-sum. Two things keep that in check: operations with an answer are
//! tried before unknown ones (an unknown is rarely what explains the next
//! answer), so a *passing* history costs about one step per operation
//! whatever its unknowns; and every search has a step budget
//! ([`STEPS_MAX`]), beyond which the verdict is [`Verdict::Undecided`] —
//! reported, never taken for a pass.
//!
//! # Witness
//! A failing history is shrunk to a minimal contradiction: relaxing an
//! operation (dropping a read, or turning an acknowledged `Add` into an
//! unknown-outcome one) only widens what is allowed, so every relaxation
//! that keeps the history non-linearizable is kept. What remains are the
//! operations whose answers cannot all be true together, whatever the
//! relaxed ones did; relaxing any single one of them makes the rest
//! linearizable.

use std::collections::{BTreeMap, HashSet};

/// One operation on one register, as a client saw it. Times are in any
/// monotonic unit (the simulation uses simulated nanoseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    /// When the client invoked it.
    pub call: u64,
    /// What it was and what came back.
    pub kind: Kind,
}

/// An operation and its answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// An add whose answer arrived at `ret`: it took effect once, between
    /// `call` and `ret`, and the register held `value` right after.
    Add {
        /// Amount added.
        delta: f64,
        /// When the answer arrived.
        ret: u64,
        /// The value answered.
        value: f64,
    },
    /// An add whose outcome is unknown: it took effect at most once, at
    /// some point after its call, or never.
    AddUnknown {
        /// Amount added.
        delta: f64,
    },
    /// A read answered at `ret`: the value, or `None` for "absent".
    Read {
        /// When the answer arrived.
        ret: u64,
        /// The value answered.
        value: Option<f64>,
    },
}

impl Kind {
    fn ret(self) -> Option<u64> {
        match self {
            Self::Add { ret, .. } | Self::Read { ret, .. } => Some(ret),
            Self::AddUnknown { .. } => None,
        }
    }

    /// Applies the operation to a register holding `state`: the state
    /// after, if the answer is consistent.
    fn step(self, state: Option<f64>) -> Option<Option<f64>> {
        match self {
            Self::Add { delta, value, .. } => {
                let next = state.unwrap_or(0.0) + delta;
                // Bitwise: the simulation's deltas are integers, whose sums
                // are exact, and `==` would take 0.0 for -0.0.
                (next.to_bits() == value.to_bits()).then_some(Some(next))
            }
            Self::AddUnknown { delta } => Some(Some(state.unwrap_or(0.0) + delta)),
            Self::Read { value, .. } => {
                (state.map(f64::to_bits) == value.map(f64::to_bits)).then_some(state)
            }
        }
    }

    /// The weaker operation: a read dropped (`None`), an acknowledged add
    /// turned unknown. `None` for an unknown add too, which is already as
    /// weak as an add gets (it is kept, not dropped: it may explain others).
    fn relaxed(self) -> Option<Option<Kind>> {
        match self {
            Self::Add { delta, .. } => Some(Some(Self::AddUnknown { delta })),
            Self::Read { .. } => Some(None),
            Self::AddUnknown { .. } => None,
        }
    }
}

/// What [`check`] concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every register's history is linearizable.
    Linearizable,
    /// This register's is not.
    Violation {
        /// The register.
        register: String,
        /// Indices (into that register's operations as given) of a minimal
        /// set of operations whose answers contradict each other, in call
        /// order.
        witness: Vec<usize>,
    },
    /// The search for this register ran out of its step budget before
    /// deciding (see the module documentation: unknown outcomes make the
    /// problem a subset-sum search). Not a pass.
    Undecided {
        /// The register.
        register: String,
    },
}

/// Search effort, to report the checker's cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Effort {
    /// Operations checked.
    pub ops: usize,
    /// Model steps taken by the search (all registers, witnesses included).
    pub steps: u64,
}

/// Model steps one register's search may take before it is [`Verdict::Undecided`].
pub const STEPS_MAX: u64 = 2_000_000;

/// Checks every register's history; the first register (in name order)
/// that is not linearizable is reported with a minimal witness.
pub fn check(histories: &BTreeMap<String, Vec<Op>>) -> (Verdict, Effort) {
    check_within(histories, STEPS_MAX)
}

/// [`check`] with `steps_max` model steps per register search.
pub fn check_within(histories: &BTreeMap<String, Vec<Op>>, steps_max: u64) -> (Verdict, Effort) {
    let mut effort = Effort::default();
    for (register, ops) in histories {
        effort.ops += ops.len();
        let mut budget = Budget::new(steps_max);
        let verdict = linearizable(ops, &mut budget);
        effort.steps += budget.used;
        match verdict {
            Some(true) => continue,
            None => {
                return (
                    Verdict::Undecided {
                        register: register.clone(),
                    },
                    effort,
                );
            }
            Some(false) => {}
        }
        // The witness search gets a budget of its own: a failing history
        // is worth explaining, and a partly shrunk witness is still one.
        let mut budget = Budget::new(steps_max);
        let witness = minimal_witness(ops, &mut budget);
        effort.steps += budget.used;
        return (
            Verdict::Violation {
                register: register.clone(),
                witness,
            },
            effort,
        );
    }
    (Verdict::Linearizable, effort)
}

/// Model steps left to a search.
#[derive(Debug)]
pub struct Budget {
    left: u64,
    used: u64,
}

impl Budget {
    /// A budget of `steps` model steps.
    pub fn new(steps: u64) -> Self {
        Self {
            left: steps,
            used: 0,
        }
    }

    /// Steps taken so far.
    pub fn used(&self) -> u64 {
        self.used
    }

    fn take(&mut self) -> bool {
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        self.used += 1;
        true
    }
}

/// A set of operation indices.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Self(vec![0; n.div_ceil(64)])
    }
    fn has(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
    fn with(&self, i: usize) -> Self {
        let mut b = self.clone();
        b.0[i / 64] |= 1 << (i % 64);
        b
    }
}

/// Whether `ops` (one register's) is linearizable; `None` when `budget`
/// ran out first.
pub fn linearizable(ops: &[Op], budget: &mut Budget) -> Option<bool> {
    // Entries in time order: (time, is_return, op). At equal times calls
    // come first, so operations that merely touch in time count as
    // concurrent (the weaker claim).
    let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
    for (i, op) in ops.iter().enumerate() {
        entries.push((op.call, false, i));
        if let Some(ret) = op.kind.ret() {
            entries.push((ret.max(op.call), true, i));
        }
    }
    entries.sort_unstable_by_key(|&(t, is_return, i)| (t, is_return, i));
    let required = ops.iter().filter(|o| o.kind.ret().is_some()).count();

    // The operations that may be linearized next: every call not yet
    // linearized that comes before the first return of an operation not yet
    // linearized. Operations with an answer are tried before those with an
    // unknown outcome: either order is complete (every candidate is tried
    // before backtracking), but an unknown outcome is usually *not* needed
    // to explain the next answer, and trying it first would walk every
    // subset of the unknowns before finding that out.
    let candidates = |done: &Bits| -> Vec<usize> {
        let (mut known, mut unknown) = (Vec::new(), Vec::new());
        for &(_, is_return, op) in &entries {
            if done.has(op) {
                continue;
            }
            if is_return {
                break;
            }
            match ops[op].kind {
                Kind::AddUnknown { .. } => unknown.push(op),
                _ => known.push(op),
            }
        }
        known.extend(unknown);
        known
    };

    struct Frame {
        done: Bits,
        linearized: usize,
        state: Option<f64>,
        candidates: Vec<usize>,
        next: usize,
    }
    let root = Bits::new(ops.len());
    let mut seen: HashSet<(Bits, Option<u64>)> = HashSet::new();
    let mut stack = vec![Frame {
        candidates: candidates(&root),
        done: root,
        linearized: 0,
        state: None,
        next: 0,
    }];
    while let Some(frame) = stack.last_mut() {
        if frame.linearized == required {
            return Some(true);
        }
        let Some(&op) = frame.candidates.get(frame.next) else {
            stack.pop();
            continue;
        };
        frame.next += 1;
        if !budget.take() {
            return None;
        }
        let Some(after) = ops[op].kind.step(frame.state) else {
            continue;
        };
        let done = frame.done.with(op);
        if !seen.insert((done.clone(), after.map(f64::to_bits))) {
            continue;
        }
        let linearized = frame.linearized + usize::from(ops[op].kind.ret().is_some());
        stack.push(Frame {
            candidates: candidates(&done),
            done,
            linearized,
            state: after,
            next: 0,
        });
    }
    Some(false)
}

/// Shrinks a non-linearizable history to the operations whose answers
/// contradict each other (see the module documentation).
fn minimal_witness(ops: &[Op], budget: &mut Budget) -> Vec<usize> {
    // `current[i]`: the operation as it stands (`None`: dropped).
    let mut current: Vec<Option<Kind>> = ops.iter().map(|o| Some(o.kind)).collect();
    let as_ops = |current: &[Option<Kind>]| -> Vec<Op> {
        ops.iter()
            .zip(current)
            .filter_map(|(o, k)| k.map(|kind| Op { call: o.call, kind }))
            .collect()
    };
    // One pass suffices: relaxing only widens what is allowed, so an
    // operation that could not be relaxed before cannot be once others
    // have been.
    for i in 0..ops.len() {
        let Some(weaker) = current[i].and_then(Kind::relaxed) else {
            continue;
        };
        let kept = current[i];
        current[i] = weaker;
        // Out of budget: keep the operation (the witness stays a true one,
        // only less small).
        if linearizable(&as_ops(&current), budget) != Some(false) {
            current[i] = kept;
        }
    }
    let mut witness: Vec<usize> = (0..ops.len())
        .filter(|&i| matches!(current[i], Some(Kind::Add { .. } | Kind::Read { .. })))
        .collect();
    witness.sort_by_key(|&i| (ops[i].call, i));
    witness
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(call: u64, ret: u64, delta: f64, value: f64) -> Op {
        Op {
            call,
            kind: Kind::Add { delta, ret, value },
        }
    }
    fn unknown(call: u64, delta: f64) -> Op {
        Op {
            call,
            kind: Kind::AddUnknown { delta },
        }
    }
    fn read(call: u64, ret: u64, value: Option<f64>) -> Op {
        Op {
            call,
            kind: Kind::Read { ret, value },
        }
    }

    fn verdict(ops: Vec<Op>) -> Result<(), Vec<usize>> {
        let mut h = BTreeMap::new();
        h.insert("r".to_owned(), ops);
        match check(&h).0 {
            Verdict::Linearizable => Ok(()),
            Verdict::Violation { witness, .. } => Err(witness),
            Verdict::Undecided { .. } => panic!("undecided"),
        }
    }

    #[test]
    fn sequential_and_concurrent_histories_that_are_linearizable() {
        assert_eq!(verdict(vec![]), Ok(()));
        assert_eq!(
            verdict(vec![
                read(0, 1, None),
                add(2, 3, 1.0, 1.0),
                add(4, 5, 2.0, 3.0),
                read(6, 7, Some(3.0)),
            ]),
            Ok(())
        );
        // Two concurrent adds may commit in either order: the answers say
        // which, and both orders are fine.
        assert_eq!(
            verdict(vec![add(0, 10, 1.0, 3.0), add(1, 9, 2.0, 2.0)]),
            Ok(())
        );
        // A read concurrent with an add may see it or not.
        assert_eq!(
            verdict(vec![
                add(0, 10, 5.0, 5.0),
                read(1, 2, None),
                read(3, 4, Some(5.0))
            ]),
            Ok(())
        );
        // Touching in time counts as concurrent.
        assert_eq!(verdict(vec![add(0, 5, 1.0, 1.0), read(5, 6, None)]), Ok(()));
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_have_happened() {
        // Never seen: fine.
        assert_eq!(verdict(vec![unknown(0, 7.0), read(10, 11, None)]), Ok(()));
        // Seen later: fine, it happened in between.
        assert_eq!(
            verdict(vec![unknown(0, 7.0), add(10, 11, 1.0, 8.0)]),
            Ok(())
        );
        // But at most once: seen twice over is not explainable.
        assert!(verdict(vec![unknown(0, 7.0), add(10, 11, 1.0, 15.0)]).is_err());
        // And not before it was invoked.
        assert!(verdict(vec![read(0, 1, Some(7.0)), unknown(5, 7.0)]).is_err());
    }

    #[test]
    fn stale_reads_lost_writes_and_double_applies_are_caught_with_minimal_witnesses() {
        // A stale read: the add finished before the read began.
        let w = verdict(vec![
            read(0, 1, None),
            add(2, 3, 1.0, 1.0),
            add(4, 5, 2.0, 3.0),
            read(6, 7, Some(1.0)),
        ])
        .unwrap_err();
        assert_eq!(w, vec![2, 3], "the second add and the stale read");
        // A lost acknowledged write: a later add does not include it.
        let w = verdict(vec![add(0, 1, 1.0, 1.0), add(2, 3, 2.0, 2.0)]).unwrap_err();
        assert_eq!(w, vec![0, 1]);
        // A double apply: the second acknowledgement counts the first
        // twice. The witness is that answer alone: with every other add
        // applied at most once, 11 cannot be reached.
        let w = verdict(vec![
            add(0, 1, 5.0, 5.0),
            read(2, 3, Some(5.0)),
            add(4, 5, 1.0, 11.0),
        ])
        .unwrap_err();
        assert_eq!(w, vec![2]);
    }

    #[test]
    fn the_witness_is_one_minimal() {
        // Noise around a contradiction: the witness keeps only the
        // contradicting pair, and relaxing either makes the rest fine.
        let ops = vec![
            add(0, 1, 1.0, 1.0),
            read(2, 3, Some(1.0)),
            add(4, 8, 10.0, 11.0),
            unknown(5, 100.0),
            read(9, 10, Some(111.0)),
            read(11, 12, Some(11.0)), // stale: 111 was seen before
            add(13, 14, 1000.0, 1111.0),
        ];
        let w = verdict(ops.clone()).unwrap_err();
        assert_eq!(w, vec![4, 5]);
        // The witness with everything else relaxed is still a
        // contradiction; relaxing any one of its operations too removes it.
        let relax = |keep: &dyn Fn(usize) -> bool| -> Vec<Op> {
            ops.iter()
                .enumerate()
                .filter_map(|(j, o)| match (keep(j), o.kind.relaxed()) {
                    (true, _) | (false, None) => Some(o.clone()),
                    (false, Some(weaker)) => weaker.map(|kind| Op { call: o.call, kind }),
                })
                .collect()
        };
        assert!(verdict(relax(&|j| w.contains(&j))).is_err());
        for &i in &w {
            assert_eq!(
                verdict(relax(&|j| j != i && w.contains(&j))),
                Ok(()),
                "relaxing {i} as well leaves no contradiction"
            );
        }
    }

    #[test]
    fn search_cost_stays_small_on_simulation_sized_histories() {
        // Three clients, 60 adds each, overlapping pairwise, a third of
        // them with unknown outcomes that later adds reveal: linearizable
        // by construction, and the search must not blow up.
        let mut ops = Vec::new();
        let mut value = 0.0;
        for k in 0..60u64 {
            for c in 0..3u64 {
                let call = k * 100 + c * 10;
                let delta = (c * 1000 + k + 1) as f64;
                value += delta;
                if (k + c) % 3 == 0 {
                    ops.push(unknown(call, delta));
                } else {
                    ops.push(add(call, call + 25, delta, value));
                }
            }
        }
        let mut h = BTreeMap::new();
        h.insert("r".to_owned(), ops);
        let (verdict, effort) = check(&h);
        assert_eq!(verdict, Verdict::Linearizable);
        assert!(effort.steps < 10_000, "{effort:?}");
    }

    /// `u` unknown-outcome adds that no answer ever reveals, between adds
    /// that exclude them, then (optionally) an impossible read.
    fn unrevealed(u: u64, impossible_read: bool) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut value = 0.0;
        for k in 0..u {
            ops.push(unknown(k * 100, 1000.0 * (k + 1) as f64));
            value += (k + 1) as f64;
            ops.push(add(k * 100 + 50, k * 100 + 60, (k + 1) as f64, value));
        }
        if impossible_read {
            ops.push(read(u * 100, u * 100 + 5, Some(0.5)));
        }
        ops
    }

    #[test]
    fn unknown_outcomes_cost_nothing_when_a_history_passes_and_are_budgeted_when_it_fails() {
        // Passing: answers are tried before unknowns, so no subset of the
        // unknowns is ever walked.
        let mut budget = Budget::new(STEPS_MAX);
        assert_eq!(
            linearizable(&unrevealed(40, false), &mut budget),
            Some(true)
        );
        assert!(budget.used() <= 40, "{}", budget.used());
        // Failing: every subset of the unknowns must be ruled out (subset
        // sum), so the cost doubles with each one...
        let mut small = Budget::new(STEPS_MAX);
        assert_eq!(linearizable(&unrevealed(8, true), &mut small), Some(false));
        let mut larger = Budget::new(STEPS_MAX);
        assert_eq!(
            linearizable(&unrevealed(10, true), &mut larger),
            Some(false)
        );
        assert!(larger.used() > 3 * small.used());
        // ...and the budget turns a hopeless search into "undecided", never
        // into a pass.
        let mut h = BTreeMap::new();
        h.insert("r".to_owned(), unrevealed(30, true));
        assert_eq!(
            check_within(&h, 100_000).0,
            Verdict::Undecided {
                register: "r".into()
            }
        );
    }
}
