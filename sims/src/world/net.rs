//! Glue between turmoil's simulated TCP and tonic: the server's incoming
//! connection stream and the client's connector. This is the only place the
//! simulation swaps the network; the server and client code are the real
//! ones from `src/`.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use abacus::client::{ConnectFailed, channel_with_connector};
use futures_util::stream::{self, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::{Channel, Uri, server::Connected};

/// Port every simulated server listens on.
pub const PORT: u16 = 9999;

/// A simulated TCP connection that tonic's server accepts.
#[derive(Debug)]
pub struct SimStream(pub turmoil::net::TcpStream);

impl Connected for SimStream {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepted connections of a simulated listener, as the stream `serve`
/// takes.
pub fn incoming(listener: turmoil::net::TcpListener) -> impl Stream<Item = io::Result<SimStream>> {
    stream::unfold(listener, |listener| async move {
        let next = listener.accept().await.map(|(s, _)| SimStream(s));
        Some((next, listener))
    })
}

/// A lazily-connecting channel to `host` over simulated TCP, so a client
/// survives the server being down at start or crashing later.
pub fn channel(host: &str) -> Channel {
    let uri: Uri = format!("http://{host}:{PORT}")
        .parse()
        .expect("host names in scenarios are valid authorities");
    channel_with_connector(uri, |uri: Uri| async move {
        let addr = uri.authority().map(|a| a.to_string()).unwrap_or_default();
        turmoil::net::TcpStream::connect(addr.as_str())
            .await
            .map_err(|source| ConnectFailed { addr, source })
    })
}
