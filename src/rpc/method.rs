//! [`Method`]: the RPCs of `abacus.v1.Calculator`, with every name a side
//! needs, in one table.

use std::fmt;

use crate::core::BinaryOp;

/// An RPC of `abacus.v1.Calculator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// `Add`
    Add,
    /// `Subtract`
    Subtract,
    /// `Multiply`
    Multiply,
    /// `Divide`
    Divide,
    /// `Accumulate`: mutating, not idempotent.
    Accumulate,
    /// `GetRegister`
    GetRegister,
    /// `DeleteRegister`: mutating, idempotent.
    DeleteRegister,
    /// `GetStats`
    GetStats,
}

/// One row of the table: everything a side may call a method.
struct Names {
    /// As the proto (and every gRPC stack) names it.
    rpc: &'static str,
    /// Lower-case, as the CLI's subcommands and the REST paths say it.
    short: &'static str,
    /// The HTTP/2 path a gRPC call goes to, as tonic's router and metrics
    /// labels see it.
    path: &'static str,
}

impl Method {
    /// Every RPC, in the proto's order.
    pub const ALL: [Method; 8] = [
        Self::Add,
        Self::Subtract,
        Self::Multiply,
        Self::Divide,
        Self::Accumulate,
        Self::GetRegister,
        Self::DeleteRegister,
        Self::GetStats,
    ];

    /// The table. Paths are spelled out (not built at run time) so they are
    /// `&'static str`; a test checks each against the service name and the
    /// RPC name, and the RPC names against the compiled proto.
    const fn names(self) -> Names {
        const fn n(rpc: &'static str, short: &'static str, path: &'static str) -> Names {
            Names { rpc, short, path }
        }
        match self {
            Self::Add => n("Add", "add", "/abacus.v1.Calculator/Add"),
            Self::Subtract => n("Subtract", "subtract", "/abacus.v1.Calculator/Subtract"),
            Self::Multiply => n("Multiply", "multiply", "/abacus.v1.Calculator/Multiply"),
            Self::Divide => n("Divide", "divide", "/abacus.v1.Calculator/Divide"),
            Self::Accumulate => n(
                "Accumulate",
                "accumulate",
                "/abacus.v1.Calculator/Accumulate",
            ),
            Self::GetRegister => n("GetRegister", "get", "/abacus.v1.Calculator/GetRegister"),
            Self::DeleteRegister => n(
                "DeleteRegister",
                "delete",
                "/abacus.v1.Calculator/DeleteRegister",
            ),
            Self::GetStats => n("GetStats", "stats", "/abacus.v1.Calculator/GetStats"),
        }
    }

    /// The RPC's name in the proto: `Accumulate`.
    pub const fn rpc_name(self) -> &'static str {
        self.names().rpc
    }

    /// The lower-case name the CLI and the REST twin use: `add`,
    /// `accumulate`, `get`, `stats`.
    pub const fn short_name(self) -> &'static str {
        self.names().short
    }

    /// The gRPC request path: `/abacus.v1.Calculator/Accumulate`.
    pub const fn path(self) -> &'static str {
        self.names().path
    }

    /// True for RPCs marked `NO_SIDE_EFFECTS` in the proto: repeating them
    /// is always harmless.
    pub const fn is_pure(self) -> bool {
        !matches!(self, Self::Accumulate | Self::DeleteRegister)
    }

    /// True when repeating the RPC has the effect of sending it once: the
    /// pure ones, and `DeleteRegister` (marked `IDEMPOTENT` in the proto).
    pub const fn is_idempotent(self) -> bool {
        self.is_pure() || matches!(self, Self::DeleteRegister)
    }

    /// The method a gRPC request path names, if it is one of ours.
    ///
    /// ```
    /// use abacus::rpc::Method;
    /// assert_eq!(Method::from_path("/abacus.v1.Calculator/GetStats"), Some(Method::GetStats));
    /// assert_eq!(Method::from_path("/grpc.health.v1.Health/Check"), None);
    /// ```
    pub fn from_path(path: &str) -> Option<Method> {
        Self::ALL.into_iter().find(|m| m.path() == path)
    }

    /// The arithmetic operation, for the four binary RPCs.
    pub const fn binary_op(self) -> Option<BinaryOp> {
        match self {
            Self::Add => Some(BinaryOp::Add),
            Self::Subtract => Some(BinaryOp::Subtract),
            Self::Multiply => Some(BinaryOp::Multiply),
            Self::Divide => Some(BinaryOp::Divide),
            Self::Accumulate | Self::GetRegister | Self::DeleteRegister | Self::GetStats => None,
        }
    }
}

impl From<BinaryOp> for Method {
    fn from(op: BinaryOp) -> Self {
        match op {
            BinaryOp::Add => Self::Add,
            BinaryOp::Subtract => Self::Subtract,
            BinaryOp::Multiply => Self::Multiply,
            BinaryOp::Divide => Self::Divide,
        }
    }
}

impl fmt::Display for Method {
    /// The RPC name, as traces and logs print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.rpc_name())
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;
    use prost_types::{FileDescriptorSet, method_options::IdempotencyLevel};

    use super::*;
    use crate::pb;

    /// The table against the compiled contract: the same RPCs in the same
    /// order, each pure exactly when the proto marks it `NO_SIDE_EFFECTS`.
    #[test]
    fn the_table_is_the_proto() {
        let fds = FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let service = fds
            .file
            .iter()
            .filter(|f| f.package() == "abacus.v1")
            .flat_map(|f| &f.service)
            .find(|s| format!("abacus.v1.{}", s.name()) == pb::SERVICE_NAME)
            .expect("the Calculator service");
        let proto: Vec<(&str, bool)> = service
            .method
            .iter()
            .map(|m| {
                let level = m
                    .options
                    .as_ref()
                    .map_or(IdempotencyLevel::IdempotencyUnknown, |o| {
                        o.idempotency_level()
                    });
                (m.name(), level == IdempotencyLevel::NoSideEffects)
            })
            .collect();
        let table: Vec<(&str, bool)> = Method::ALL
            .iter()
            .map(|m| (m.rpc_name(), m.is_pure()))
            .collect();
        assert_eq!(table, proto);
    }

    #[test]
    fn paths_and_names_agree() {
        for m in Method::ALL {
            assert_eq!(m.path(), format!("/{}/{}", pb::SERVICE_NAME, m.rpc_name()));
            assert_eq!(Method::from_path(m.path()), Some(m));
            assert_eq!(m.to_string(), m.rpc_name());
            assert_eq!(m.binary_op().map(Method::from), m.binary_op().map(|_| m));
        }
        for op in BinaryOp::ALL {
            assert_eq!(Method::from(op).binary_op(), Some(op));
        }
        assert_eq!(Method::from_path("/abacus.v1.Calculator/Nope"), None);
        assert_eq!(Method::from_path("Add"), None);
    }
}
