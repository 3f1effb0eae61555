//! The demo's servers and clients: servers embedded in the demo's process
//! on ephemeral loopback ports, and clients that print every attempt,
//! pause and decision.

use std::net::SocketAddr;

use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;

use crate::{
    client::{Client, ClientConfig, tcp_channel},
    server::{self, ServerConfig},
    trace::{Event, EventSink},
};

/// A server running inside the demo's process; stops when dropped.
#[derive(Debug)]
pub(super) struct Embedded {
    pub(super) addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

/// Starts a server with `config` on `127.0.0.1:0`. It accepts connections
/// as soon as this returns: the socket is bound before.
pub(super) async fn embedded_server(config: ServerConfig) -> std::io::Result<Embedded> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server::serve(
        config,
        TcpListenerStream::new(listener),
        async {
            let _ = stopped.await;
        },
    ));
    Ok(Embedded { addr, _stop: stop })
}

/// A client to `addr` whose every attempt, pause and decision is printed.
pub(super) fn narrated_client(addr: SocketAddr, mut config: ClientConfig) -> Client {
    config.events = EventSink::with_hook(|e| match e {
        Event::AttemptStarted { .. }
        | Event::AttemptFailed { .. }
        | Event::Backoff { .. }
        | Event::GaveUp { .. }
        | Event::BreakerTransition { .. }
        | Event::BreakerRejected { .. } => println!("      · {e}"),
        _ => {}
    });
    client(addr, config)
}

/// A client to `addr` with `config` as is.
pub(super) fn client(addr: SocketAddr, config: ClientConfig) -> Client {
    let channel = tcp_channel(&addr.to_string()).expect("a socket address is a valid authority");
    Client::new(channel, config)
}
