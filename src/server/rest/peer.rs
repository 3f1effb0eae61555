//! [`PeerAddr`]: the REST caller's socket address, so that per-client
//! bounds (dedup retention, the register quota) charge a tokenless REST
//! caller by its IP address, as the gRPC front does.
//!
//! The gRPC front reads the address tonic records for each connection
//! (`Request::remote_addr`: the [`Connected`] info of a TCP connection, or
//! of the TCP connection under a TLS session). The REST front takes the
//! same [`Connected`] info from the same listener guard, once per
//! connection in its accept loop, and puts the address in each request's
//! extensions, where the handlers read it. The identity a token proves
//! still comes first ([`crate::store::Caller::quota_key`]).

use std::{any::Any, net::SocketAddr};

use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// The peer's socket address, in a REST request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl PeerAddr {
    /// The address of the peer of connection `io`, found the way tonic's
    /// `Request::remote_addr` finds it for the gRPC front: a TCP
    /// connection's, or that of the TCP connection under a TLS session.
    /// `None` for any other transport (in-memory pipes in tests).
    pub fn of<IO: Connected>(io: &IO) -> Option<Self> {
        let info = io.connect_info();
        let info: &dyn Any = &info;
        let tcp = info.downcast_ref::<TcpConnectInfo>().or_else(|| {
            info.downcast_ref::<TlsConnectInfo<TcpConnectInfo>>()
                .map(TlsConnectInfo::get_ref)
        })?;
        tcp.remote_addr().map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose info is `T`.
    struct Conn<T>(T);

    impl<T: Clone + Send + Sync + 'static> Connected for Conn<T> {
        type ConnectInfo = T;

        fn connect_info(&self) -> T {
            self.0.clone()
        }
    }

    #[test]
    fn the_peer_is_read_from_tcp_connections_only() {
        let addr: SocketAddr = "127.0.0.7:4321".parse().unwrap();
        let tcp = TcpConnectInfo {
            local_addr: Some("127.0.0.1:80".parse().unwrap()),
            remote_addr: Some(addr),
        };
        assert_eq!(PeerAddr::of(&Conn(tcp)), Some(PeerAddr(addr)));
        let unknown = TcpConnectInfo {
            local_addr: None,
            remote_addr: None,
        };
        assert_eq!(PeerAddr::of(&Conn(unknown)), None);
        // A pipe (what tonic answers for `DuplexStream`): no address.
        assert_eq!(PeerAddr::of(&Conn(())), None);
    }
}
