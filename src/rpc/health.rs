//! Which `grpc.health.v1` service name answers for which RPC, and the
//! statuses a health watch reports.
//!
//! A replica serves two kinds of work that fail apart: arithmetic, which
//! needs nothing but the process, and registers, which need the store. It
//! reports each under its own health service name, so a replica whose
//! store is down can say "NOT_SERVING" for registers while it still adds,
//! and a client steers only the register calls away from it.

use std::fmt;

use crate::{pb, rpc::Method};

/// The health service name the server reports register availability under
/// (`Accumulate`, `GetRegister`).
pub const REGISTERS_HEALTH_SERVICE: &str = "abacus.v1.Registers";

/// What part of a replica a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HealthScope {
    /// The calculator itself: reported as `abacus.v1.Calculator` (and the
    /// server-wide `""`).
    Calculator,
    /// The registers, which need the store: `abacus.v1.Registers`.
    Registers,
}

impl HealthScope {
    /// Both scopes, in a fixed order.
    pub const ALL: [HealthScope; 2] = [Self::Calculator, Self::Registers];

    /// The `grpc.health.v1` service name to watch.
    pub const fn service_name(self) -> &'static str {
        match self {
            Self::Calculator => pb::SERVICE_NAME,
            Self::Registers => REGISTERS_HEALTH_SERVICE,
        }
    }

    /// Index into per-scope arrays.
    pub const fn index(self) -> usize {
        match self {
            Self::Calculator => 0,
            Self::Registers => 1,
        }
    }
}

impl fmt::Display for HealthScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.service_name())
    }
}

impl Method {
    /// The health scope whose status says whether a replica can serve this
    /// RPC: the register RPCs need the store, the rest only the process.
    ///
    /// ```
    /// use abacus::rpc::{HealthScope, Method};
    /// assert_eq!(Method::Accumulate.health_scope(), HealthScope::Registers);
    /// assert_eq!(Method::Add.health_scope(), HealthScope::Calculator);
    /// ```
    pub const fn health_scope(self) -> HealthScope {
        match self {
            Self::Accumulate | Self::GetRegister | Self::DeleteRegister => HealthScope::Registers,
            Self::Add | Self::Subtract | Self::Multiply | Self::Divide | Self::GetStats => {
                HealthScope::Calculator
            }
        }
    }
}

/// What a health watch last said about one scope of one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Serving {
    /// `SERVING`.
    Serving,
    /// `NOT_SERVING`: send it nothing that needs this scope.
    NotServing,
    /// No word: not watched yet, the watch is reconnecting, the server does
    /// not know the name (`SERVICE_UNKNOWN`, e.g. an older server) or does
    /// not implement health. Treated as serving: the breaker judges a
    /// replica that cannot answer, health only takes out one that says so.
    Unknown,
}

impl Serving {
    /// Lower-case name for traces: `serving`, `not-serving`, `unknown`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::NotServing => "not-serving",
            Self::Unknown => "unknown",
        }
    }

    /// False only for `NotServing`.
    pub const fn admits(self) -> bool {
        !matches!(self, Self::NotServing)
    }
}

impl fmt::Display for Serving {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_rpcs_need_the_registers_scope() {
        for m in Method::ALL {
            let expect = if matches!(
                m,
                Method::Accumulate | Method::GetRegister | Method::DeleteRegister
            ) {
                HealthScope::Registers
            } else {
                HealthScope::Calculator
            };
            assert_eq!(m.health_scope(), expect, "{m}");
        }
        assert_eq!(
            HealthScope::Calculator.service_name(),
            "abacus.v1.Calculator"
        );
        for (i, s) in HealthScope::ALL.into_iter().enumerate() {
            assert_eq!(s.index(), i);
        }
    }
}
