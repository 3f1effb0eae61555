//! Bytes on the wire: a stream wrapper that counts every byte the client
//! writes and reads, headers, framing and control frames included. Both
//! fronts' clients connect through it, so "bytes per request" is measured,
//! not estimated from message sizes.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes sent and received by every stream sharing these counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
}

/// A reading of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Bytes {
    pub(crate) sent: u64,
    pub(crate) received: u64,
}

impl std::ops::Sub for Bytes {
    type Output = Bytes;
    fn sub(self, rhs: Bytes) -> Bytes {
        Bytes {
            sent: self.sent - rhs.sent,
            received: self.received - rhs.received,
        }
    }
}

impl Counters {
    pub(crate) fn read(&self) -> Bytes {
        Bytes {
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
        }
    }
}

pin_project! {
    /// `inner`, with its traffic added to shared counters.
    #[derive(Debug)]
    pub(crate) struct Counting<S> {
        #[pin]
        inner: S,
        counters: Arc<Counters>,
    }
}

impl<S> Counting<S> {
    pub(crate) fn new(inner: S, counters: Arc<Counters>) -> Self {
        Self { inner, counters }
    }
}

impl<S: AsyncRead> AsyncRead for Counting<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let poll = this.inner.poll_read(cx, buf);
        let read = buf.filled().len() - before;
        this.counters
            .received
            .fetch_add(read as u64, Ordering::Relaxed);
        poll
    }
}

impl<S: AsyncWrite> AsyncWrite for Counting<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            this.counters.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        poll
    }

    // Forwarded, not left to the default: hyper and h2 write vectored when
    // the stream supports it, and a wrapper that hid the support would
    // change how the clients write (more, smaller writes), not just count.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let poll = this.inner.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &poll {
            this.counters.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// A loopback TCP connection with `TCP_NODELAY` (like the server's side),
/// counted.
pub(crate) async fn connect(
    addr: std::net::SocketAddr,
    counters: &Arc<Counters>,
) -> io::Result<Counting<tokio::net::TcpStream>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(Counting::new(stream, Arc::clone(counters)))
}
