//! An address nothing listens on, for as long as the value lives: a socket
//! bound to a loopback port but never listening, so a connection to it is
//! refused at once, and no other bind in the process (a test server started
//! next, another test) can take the port meanwhile. Binding a listener and
//! dropping it would free the port for exactly those binds.

use std::net::SocketAddr;

/// A refused address; the port stays reserved until this is dropped.
#[derive(Debug)]
pub(crate) struct ClosedPort {
    // Held, never listened on: the port is ours, and connects are refused.
    _socket: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl ClosedPort {
    /// Reserves a loopback port.
    ///
    /// # Panics
    /// When the OS gives no socket or port (a test cannot go on without).
    pub(crate) fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket
            .bind("127.0.0.1:0".parse().expect("a loopback address"))
            .expect("a free loopback port");
        let addr = socket.local_addr().expect("the bound address");
        Self {
            _socket: socket,
            addr,
        }
    }

    /// The refused address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}
