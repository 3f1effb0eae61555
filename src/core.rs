//! The calculator's rules, with no I/O: pure arithmetic and the register
//! map. Both front ends (gRPC and REST) and the simulation call into this one
//! module, so there is exactly one definition of what `Divide` or
//! `Accumulate` means.
//!
//! Never awaits, never logs, never touches the network or a clock.

use std::{collections::BTreeMap, fmt};

use crate::{error::CalcError, rpc::Method};

mod name;

pub use name::{
    CodePoint, Escaped, REGISTER_NAME_BYTES_MAX, forbidden, register_name, validate_register_name,
};

/// Most registers one server holds; creating one more is refused with
/// `RESOURCE_EXHAUSTED` so memory stays bounded whatever clients send.
pub const REGISTERS_MAX: usize = 10_000;

/// The four pure operations. All are side-effect free and safe to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Subtract,
    /// `a * b`
    Multiply,
    /// `a / b`, refusing `b == 0`.
    Divide,
}

impl BinaryOp {
    /// Every operation, for tables and tests.
    pub const ALL: [BinaryOp; 4] = [Self::Add, Self::Subtract, Self::Multiply, Self::Divide];

    /// Lower-case name as used by the CLI and the REST paths (from
    /// [`Method`]'s table, the only one).
    pub fn name(self) -> &'static str {
        Method::from(self).short_name()
    }
}

impl fmt::Display for BinaryOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Applies `op` to finite operands, refusing anything whose result is not a
/// finite number.
///
/// ```
/// use abacus::core::{evaluate, BinaryOp};
/// assert_eq!(evaluate(BinaryOp::Divide, 7.0, 2.0), Ok(3.5));
/// assert!(evaluate(BinaryOp::Divide, 1.0, 0.0).is_err());
/// assert!(evaluate(BinaryOp::Multiply, f64::MAX, 2.0).is_err());
/// ```
pub fn evaluate(op: BinaryOp, a: f64, b: f64) -> Result<f64, CalcError> {
    finite("a", a)?;
    finite("b", b)?;
    let result = match op {
        BinaryOp::Add => a + b,
        BinaryOp::Subtract => a - b,
        BinaryOp::Multiply => a * b,
        BinaryOp::Divide => {
            if b == 0.0 {
                return Err(CalcError::DivisionByZero);
            }
            a / b
        }
    };
    if result.is_finite() {
        Ok(result)
    } else {
        Err(CalcError::Overflow { op, a, b })
    }
}

fn finite(operand: &'static str, value: f64) -> Result<(), CalcError> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(CalcError::NonFiniteOperand { operand, value })
    }
}

/// Checks an `Accumulate` payload on its own, before any register is looked
/// at: the errors it returns depend only on the payload, so the server
/// refuses them before claiming a request ID (they are never executions and
/// never recorded).
///
/// ```
/// use abacus::core::validate_accumulate;
/// assert!(validate_accumulate("x", 1.0).is_ok());
/// assert!(validate_accumulate("", 1.0).is_err());
/// assert!(validate_accumulate("x", f64::NAN).is_err());
/// ```
pub fn validate_accumulate(name: &str, delta: f64) -> Result<(), CalcError> {
    validate_register_name(name)?;
    finite("delta", delta)
}

/// What a client has created against its register quota: registers it
/// holds, and how many it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Registers the client created that still exist.
    pub held: usize,
    /// The most it may hold.
    pub max: usize,
}

impl Quota {
    /// No per-client bound (the server's [`REGISTERS_MAX`] still holds).
    pub const UNLIMITED: Quota = Quota {
        held: 0,
        max: usize::MAX,
    };
}

/// What `name += delta` would store, given the register's current value
/// (`None` when it does not exist yet), how many registers are held, and
/// the caller's quota (which only creating a register uses): the rule
/// itself, for stores that keep registers elsewhere than in a
/// [`Registers`] map (a database reads the one row it needs).
///
/// ```
/// use abacus::core::{plan_accumulate, Quota, REGISTERS_MAX};
/// let q = Quota::UNLIMITED;
/// assert_eq!(plan_accumulate(Some(1.0), 1, q, "x", 2.0), Ok(3.0));
/// assert_eq!(plan_accumulate(None, 0, q, "x", 2.0), Ok(2.0));
/// assert!(plan_accumulate(None, REGISTERS_MAX, q, "x", 2.0).is_err());
/// assert!(plan_accumulate(Some(f64::MAX), 1, q, "x", f64::MAX).is_err());
/// let full = Quota { held: 3, max: 3 };
/// assert!(plan_accumulate(None, 5, full, "x", 1.0).is_err());
/// assert_eq!(plan_accumulate(Some(1.0), 5, full, "x", 1.0), Ok(2.0));
/// ```
pub fn plan_accumulate(
    current: Option<f64>,
    registers_held: usize,
    quota: Quota,
    name: &str,
    delta: f64,
) -> Result<f64, CalcError> {
    validate_accumulate(name, delta)?;
    let current = match current {
        Some(v) => v,
        None if registers_held >= REGISTERS_MAX => {
            return Err(CalcError::TooManyRegisters { max: REGISTERS_MAX });
        }
        None if quota.held >= quota.max => {
            return Err(CalcError::RegisterQuota {
                held: quota.held,
                max: quota.max,
            });
        }
        None => 0.0,
    };
    let next = current + delta;
    if next.is_finite() {
        Ok(next)
    } else {
        Err(CalcError::RegisterOverflow {
            register: name.to_owned(),
            current,
            delta,
        })
    }
}

/// Named accumulators. A `BTreeMap` (not `HashMap`) so that iteration order,
/// and so every listing, snapshot and trace, is deterministic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registers {
    values: BTreeMap<String, f64>,
}

impl Registers {
    /// An empty register map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Computes what `accumulate` would store, without storing it, so callers
    /// can validate first and commit together with other state.
    pub fn plan_accumulate(&self, name: &str, delta: f64, quota: Quota) -> Result<f64, CalcError> {
        plan_accumulate(
            self.values.get(name).copied(),
            self.values.len(),
            quota,
            name,
            delta,
        )
    }

    /// True when register `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// Removes register `name`, returning its last value (`None` if it did
    /// not exist).
    pub fn remove(&mut self, name: &str) -> Option<f64> {
        self.values.remove(name)
    }

    /// Adds `delta` to register `name` (created at 0) and returns the new value.
    ///
    /// ```
    /// let mut r = abacus::core::Registers::new();
    /// assert_eq!(r.accumulate("x", 2.5), Ok(2.5));
    /// assert_eq!(r.accumulate("x", 1.0), Ok(3.5));
    /// assert_eq!(r.get("x"), Ok(3.5));
    /// assert!(r.get("y").is_err());
    /// ```
    pub fn accumulate(&mut self, name: &str, delta: f64) -> Result<f64, CalcError> {
        let next = self.plan_accumulate(name, delta, Quota::UNLIMITED)?;
        self.set(name, next);
        Ok(next)
    }

    /// Stores a value computed by [`Registers::plan_accumulate`] (or restored
    /// from durable storage).
    pub fn set(&mut self, name: &str, value: f64) {
        match self.values.get_mut(name) {
            Some(slot) => *slot = value,
            None => {
                self.values.insert(name.to_owned(), value);
            }
        }
    }

    /// Reads a register; `NotFound` if it was never written.
    pub fn get(&self, name: &str) -> Result<f64, CalcError> {
        validate_register_name(name)?;
        self.values
            .get(name)
            .copied()
            .ok_or_else(|| CalcError::UnknownRegister(name.to_owned()))
    }

    /// Number of registers held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when no register was ever written.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// All registers in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.values.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::CalcError as E;

    fn check(op: BinaryOp, a: f64, b: f64, expect: Result<f64, &str>) {
        let got = evaluate(op, a, b);
        match (got, expect) {
            (Ok(g), Ok(e)) => assert_eq!(g, e, "{op:?}({a}, {b})"),
            (Err(g), Err(e)) => assert!(
                g.to_string().contains(e),
                "{op:?}({a}, {b}): error {g:?} does not mention {e:?}"
            ),
            (g, e) => panic!("{op:?}({a}, {b}): got {g:?}, expected {e:?}"),
        }
    }

    #[test]
    fn arithmetic_and_its_errors() {
        use BinaryOp::*;
        check(Add, 2.0, 3.0, Ok(5.0));
        check(Subtract, 2.0, 3.0, Ok(-1.0));
        check(Multiply, -4.0, 2.5, Ok(-10.0));
        check(Divide, 1.0, 4.0, Ok(0.25));
        check(Divide, 1.0, 0.0, Err("division by zero"));
        check(Divide, 0.0, -0.0, Err("division by zero"));
        check(Add, f64::NAN, 1.0, Err("operand a is NaN"));
        check(Add, 1.0, f64::INFINITY, Err("operand b is inf"));
        check(Subtract, f64::NEG_INFINITY, 1.0, Err("operand a is -inf"));
        check(Multiply, f64::MAX, 2.0, Err("overflow"));
        check(Add, f64::MAX, f64::MAX, Err("overflow"));
        check(Divide, f64::MAX, 0.5, Err("overflow"));
        check(Divide, 1e-300, 1e300, Ok(1e-300 / 1e300));
    }

    #[test]
    fn register_names_are_validated() {
        let mut r = Registers::new();
        assert_eq!(r.accumulate("", 1.0), Err(E::EmptyRegisterName));
        let long = "x".repeat(REGISTER_NAME_BYTES_MAX + 1);
        assert_eq!(
            r.accumulate(&long, 1.0),
            Err(E::RegisterNameTooLong { len: 65 })
        );
        assert_eq!(
            r.accumulate("a\nb", 1.0),
            Err(E::RegisterNameForbiddenChar {
                ch: '\n',
                position: 2
            })
        );
        let max = "x".repeat(REGISTER_NAME_BYTES_MAX);
        assert_eq!(r.accumulate(&max, 1.0), Ok(1.0));
        assert!(r.get("").is_err());
    }

    #[test]
    fn accumulate_refuses_non_finite_and_overflow_without_changing_state() {
        let mut r = Registers::new();
        r.accumulate("x", f64::MAX).unwrap();
        let before = r.clone();
        assert!(matches!(
            r.accumulate("x", f64::MAX),
            Err(E::RegisterOverflow { .. })
        ));
        assert!(matches!(
            r.accumulate("x", f64::NAN),
            Err(E::NonFiniteOperand { .. })
        ));
        assert_eq!(r, before, "a refused update must leave registers unchanged");
    }

    #[test]
    fn register_count_is_bounded() {
        let mut r = Registers::new();
        for i in 0..REGISTERS_MAX {
            r.accumulate(&format!("r{i}"), 1.0).unwrap();
        }
        assert_eq!(
            r.accumulate("one-more", 1.0),
            Err(E::TooManyRegisters { max: REGISTERS_MAX })
        );
        // Existing registers still accept updates.
        assert_eq!(r.accumulate("r0", 1.0), Ok(2.0));
    }
}
