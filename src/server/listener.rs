//! [`guard`]: the accept side both fronts share, over *any* stream of
//! accepted connections (tokio's TCP listener, turmoil's simulated one):
//!
//! - a **connection cap** ([`Limits::connections_max`]). At the cap, a new
//!   connection takes the place of an old one, which is closed: the
//!   oldest that never sent a byte (it has no request under way to lose),
//!   else the one whose peer has been quiet longest, if for at least
//!   [`EVICT_QUIET_MIN`]. If every connection is busy, the new one is
//!   closed at once (its peer sees the connection end rather than a hang).
//!   Either way a rate-limited warning says the cap was reached. So
//!   sockets opened and left idle cannot lock new clients out;
//! - **accept-error backoff**: a failed accept (out of file descriptors:
//!   EMFILE/ENFILE) pauses accepting, 5 ms doubling to 1 s (as Go's
//!   `net/http` does), and is logged rate-limited — instead of retrying at
//!   once in a loop that spins a core while the condition lasts;
//! - per connection ([`Conn`]), a **first-byte timeout** (a socket opened
//!   and left silent is closed, freeing its slot) and an **idle timeout**
//!   (no byte read or written).
//!
//! All of it sits below the protocol, on the byte stream, so HTTP/1.1,
//! h2c and gRPC are treated alike, whatever the protocol sniffing or
//! handshake would wait for. HTTP/2 keepalive pings (configured on each
//! front) keep live idle connections busy, so the idle timeout only closes
//! connections nobody is on.

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use futures_util::task::AtomicWaker;
use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use super::{
    limits::Limits,
    tally::{Report, Tally},
};

/// First pause after a failed accept.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause after repeated failed accepts.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// At the cap, a connection whose peer has spoken may be closed to make
/// room only once it has sent nothing for this long: one in the middle of
/// a request is not.
pub const EVICT_QUIET_MIN: Duration = Duration::from_secs(1);

/// Wraps `incoming` with the connection cap, accept backoff and the
/// per-connection timeouts of `limits`. `front` names the front in log
/// lines (`"gRPC"`, `"REST"`). Accept errors are handled here, so the
/// stream never yields one.
pub fn guard<I, IO, E>(incoming: I, limits: &Limits, front: &'static str) -> Guarded<I>
where
    I: Stream<Item = Result<IO, E>>,
    E: std::fmt::Display,
{
    Guarded {
        incoming,
        shared: Arc::new(Shared {
            front,
            connections_max: limits.connections_max.max(1),
            first_byte_timeout: limits.first_byte_timeout,
            idle_timeout: limits.idle_timeout,
            epoch: Instant::now(),
            open: Mutex::default(),
            refused: Mutex::default(),
            evicted_total: AtomicU64::new(0),
            accept_errors: Mutex::default(),
            timed_out: Mutex::default(),
            timed_out_total: AtomicU64::new(0),
        }),
        backoff: None,
        pause: None,
    }
}

/// What the accept side of one front shares with its connections.
#[derive(Debug)]
struct Shared {
    front: &'static str,
    connections_max: usize,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    /// Start of the clock the connections' `last_read_ms` count from.
    epoch: Instant,
    /// Connections open now, by id (each [`Conn`] removes itself when
    /// dropped). A std mutex: taken to add or remove one, and at the cap
    /// to pick one to close; never across I/O.
    open: Mutex<Open>,
    // Tallies behind std mutexes: taken only on rare paths (a refusal, a
    // failed accept, a timeout), for a counter update, never across I/O.
    // `refused` counts new connections closed at the cap and old ones
    // closed to make room.
    refused: Mutex<Tally>,
    evicted_total: AtomicU64,
    accept_errors: Mutex<Tally>,
    timed_out: Mutex<Tally>,
    timed_out_total: AtomicU64,
}

/// Counts one occurrence in `tally`; the report, if a line is due.
fn record(tally: &Mutex<Tally>) -> Option<Report> {
    // A poisoned tally only loses a log line's count; never panic for it.
    let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
    tally.record(Instant::now())
}

/// The open connections of a front.
#[derive(Debug, Default)]
struct Open {
    next_id: u64,
    cells: HashMap<u64, Arc<Cell>>,
}

/// What the accept side knows of one open connection.
#[derive(Debug)]
struct Cell {
    id: u64,
    /// When its peer last sent a byte (or it was accepted), in ms since
    /// [`Shared::epoch`].
    last_read_ms: AtomicU64,
    /// Its peer has sent at least one byte.
    heard: AtomicBool,
    /// Set to close it: its next read or write fails.
    evict: AtomicBool,
    /// Wakes its task so that it sees `evict`.
    waker: AtomicWaker,
}

impl Shared {
    fn lock_open(&self) -> MutexGuard<'_, Open> {
        // Every update is a single insert or remove: a panic elsewhere
        // cannot leave it half-done.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.epoch);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    /// Registers a new connection, making room at the cap by closing the
    /// connection quiet longest, if one has been quiet long enough.
    /// `None`: at the cap with every connection busy.
    fn admit(&self) -> Option<Arc<Cell>> {
        let now_ms = self.now_ms();
        let mut open = self.lock_open();
        if open.cells.len() >= self.connections_max {
            let quiet_min = u64::try_from(EVICT_QUIET_MIN.as_millis()).unwrap_or(u64::MAX);
            // Never-heard ones first (`false` sorts first), then the
            // quietest; ties by id, so the choice does not depend on the
            // map's order.
            let (_, _, victim) = open
                .cells
                .values()
                .map(|c| {
                    let heard = c.heard.load(Ordering::Relaxed);
                    (heard, c.last_read_ms.load(Ordering::Relaxed), c.id)
                })
                .filter(|&(heard, read, _)| !heard || now_ms.saturating_sub(read) >= quiet_min)
                .min()?;
            let victim = open.cells.remove(&victim)?;
            victim.evict.store(true, Ordering::Release);
            victim.waker.wake();
            self.evicted_total.fetch_add(1, Ordering::Relaxed);
        }
        let id = open.next_id;
        open.next_id += 1;
        let cell = Arc::new(Cell {
            id,
            last_read_ms: AtomicU64::new(now_ms),
            heard: AtomicBool::new(false),
            evict: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        open.cells.insert(id, Arc::clone(&cell));
        Some(cell)
    }
}

/// A front's counters, for tests and shutdown lines.
#[derive(Debug, Clone)]
pub struct ListenerStats {
    shared: Arc<Shared>,
}

impl ListenerStats {
    /// Connections open now (closed ones to make room are not).
    pub fn open(&self) -> usize {
        self.shared.lock_open().cells.len()
    }

    /// Connections closed at the cap so far: new ones refused and quiet
    /// ones closed to make room.
    pub fn refused(&self) -> u64 {
        lock(&self.shared.refused).total()
    }

    /// Quiet connections closed to make room for new ones so far.
    pub fn evicted(&self) -> u64 {
        self.shared.evicted_total.load(Ordering::Relaxed)
    }

    /// Connections closed by the first-byte or idle timeout so far.
    pub fn timed_out(&self) -> u64 {
        self.shared.timed_out_total.load(Ordering::Relaxed)
    }
}

fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(|e| e.into_inner())
}

pin_project! {
    /// The guarded connection stream: see [`guard`].
    #[derive(Debug)]
    pub struct Guarded<I> {
        #[pin]
        incoming: I,
        shared: Arc<Shared>,
        // The pause after the last failed accept, doubled on each failure
        // in a row; `None` once an accept succeeds.
        backoff: Option<Duration>,
        // Boxed: only allocated while accepting fails.
        pause: Option<Pin<Box<Sleep>>>,
    }
}

impl<I> Guarded<I> {
    /// Counters of this front, shared with its connections.
    pub fn stats(&self) -> ListenerStats {
        ListenerStats {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<I, IO, E> Stream for Guarded<I>
where
    I: Stream<Item = Result<IO, E>>,
    E: std::fmt::Display,
{
    type Item = Result<Conn<IO>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if let Some(pause) = this.pause {
                ready!(pause.as_mut().poll(cx));
                *this.pause = None;
            }
            let io = match ready!(this.incoming.as_mut().poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => {
                    let pause = this
                        .backoff
                        .map_or(ACCEPT_BACKOFF_MIN, |b| (b * 2).min(ACCEPT_BACKOFF_MAX));
                    *this.backoff = Some(pause);
                    if let Some(report) = record(&this.shared.accept_errors) {
                        tracing::warn!(
                            front = this.shared.front,
                            failures = %report,
                            "accept failed: {e}; pausing accepts for {} ms (out of file descriptors? see `ulimit -n`)",
                            pause.as_millis()
                        );
                    }
                    *this.pause = Some(Box::pin(tokio::time::sleep(pause)));
                    continue;
                }
                Some(Ok(io)) => io,
            };
            *this.backoff = None;
            let shared = &*this.shared;
            let evicted_before = shared.evicted_total.load(Ordering::Relaxed);
            let admitted = shared.admit();
            let made_room = shared.evicted_total.load(Ordering::Relaxed) != evicted_before;
            if (admitted.is_none() || made_room)
                && let Some(report) = record(&shared.refused)
            {
                tracing::warn!(
                    front = shared.front,
                    closed = %report,
                    "connection cap reached ({} open): closing a silent or quiet connection for each new one, or the new one when all are busy",
                    shared.connections_max
                );
            }
            let Some(cell) = admitted else {
                // Closed at once: the peer sees the connection end and can
                // go elsewhere, rather than wait in the kernel's backlog.
                drop(io);
                continue;
            };
            return Poll::Ready(Some(Ok(Conn::new(io, Arc::clone(this.shared), cell))));
        }
    }
}

pin_project! {
    /// One accepted connection: the peer's byte stream with the
    /// first-byte and idle timeouts, holding a slot under the cap until
    /// dropped. Reads and writes pass through unchanged; a timeout makes
    /// the next read or write fail with `TimedOut`, and the protocol layer
    /// above closes the connection.
    #[derive(Debug)]
    pub struct Conn<IO> {
        #[pin]
        io: IO,
        timing: Timing,
    }
}

/// A connection's deadlines.
#[derive(Debug)]
struct Timing {
    // One timer per connection, pushed forward lazily: activity only
    // records the time, and the timer is re-armed when it would fire
    // (tokio extends a later deadline without touching the wheel).
    timer: Pin<Box<Sleep>>,
    accepted: Instant,
    last_activity: Instant,
    heard_from_peer: bool,
    timed_out: bool,
    slot: Slot,
}

/// A connection's place under the cap; freed when dropped.
#[derive(Debug)]
struct Slot {
    shared: Arc<Shared>,
    cell: Arc<Cell>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Already gone if it was evicted.
        self.shared.lock_open().cells.remove(&self.cell.id);
    }
}

impl<IO> Conn<IO> {
    fn new(io: IO, shared: Arc<Shared>, cell: Arc<Cell>) -> Self {
        let now = Instant::now();
        let timing = Timing {
            timer: Box::pin(tokio::time::sleep_until(now + shared.first_byte_timeout)),
            accepted: now,
            last_activity: now,
            heard_from_peer: false,
            timed_out: false,
            slot: Slot { shared, cell },
        };
        Self { io, timing }
    }
}

impl Timing {
    /// Records activity: bytes went through.
    fn active(&mut self, read: bool) {
        self.last_activity = Instant::now();
        if read {
            self.heard_from_peer = true;
            let shared = &self.slot.shared;
            let ms = self.last_activity.saturating_duration_since(shared.epoch);
            let ms = u64::try_from(ms.as_millis()).unwrap_or(u64::MAX);
            self.slot.cell.last_read_ms.store(ms, Ordering::Relaxed);
            self.slot.cell.heard.store(true, Ordering::Relaxed);
        }
    }

    /// Fails once the connection was closed to make room for another.
    fn check_evicted(&self) -> io::Result<()> {
        if self.slot.cell.evict.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed to make room under the connection cap",
            ));
        }
        Ok(())
    }

    /// Called when the peer's side is pending: arms the timer for the
    /// deadline that applies, and fails once it has passed or the
    /// connection was evicted.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.slot.cell.waker.register(cx.waker());
        if let Err(e) = self.check_evicted() {
            return Poll::Ready(e);
        }
        let shared = &self.slot.shared;
        let (deadline, what) = if self.heard_from_peer {
            (self.last_activity + shared.idle_timeout, "idle")
        } else {
            (self.accepted + shared.first_byte_timeout, "silent")
        };
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        ready!(self.timer.as_mut().poll(cx));
        if !self.timed_out {
            self.timed_out = true;
            shared.timed_out_total.fetch_add(1, Ordering::Relaxed);
            if let Some(report) = record(&shared.timed_out) {
                tracing::info!(
                    front = shared.front,
                    closed = %report,
                    "closed connections silent past the first-byte timeout ({:?}) or idle past the idle timeout ({:?})",
                    shared.first_byte_timeout,
                    shared.idle_timeout
                );
            }
        }
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connection {what} for too long: closed"),
        ))
    }
}

impl<IO: AsyncRead> AsyncRead for Conn<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        this.timing.check_evicted()?;
        let before = buf.filled().len();
        match this.io.as_mut().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.timing.active(true);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.timing.poll_deadline(cx).map(Err),
        }
    }
}

impl<IO: AsyncWrite> AsyncWrite for Conn<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        this.timing.check_evicted()?;
        match this.io.as_mut().poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.timing.active(false);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // A peer that stopped reading stalls our writes: time it out
            // like a silent one.
            Poll::Pending => this.timing.poll_deadline(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        this.timing.check_evicted()?;
        match this.io.as_mut().poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.timing.active(false);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.timing.poll_deadline(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        match this.io.as_mut().poll_flush(cx) {
            Poll::Pending => this.timing.poll_deadline(cx).map(Err),
            done => done,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Conn<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
    use tokio_stream::StreamExt;

    use super::*;

    fn limits(connections_max: usize) -> Limits {
        Limits {
            connections_max,
            first_byte_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        }
    }

    /// Pipes as connections: the test holds the peer ends.
    fn pipes(n: usize) -> (Vec<DuplexStream>, Vec<Result<DuplexStream, String>>) {
        (0..n).map(|_| duplex(64)).map(|(a, b)| (a, Ok(b))).unzip()
    }

    /// Lets `guarded` take what is waiting in `incoming`; nothing may be
    /// yielded.
    async fn settle<S: Stream + Unpin>(guarded: &mut S) {
        std::future::poll_fn(|cx| {
            assert!(Pin::new(&mut *guarded).poll_next(cx).is_pending());
            Poll::Ready(())
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_a_silent_or_quiet_connection_makes_room_or_the_new_one_is_closed() {
        let (mut peers, conns) = pipes(5);
        let (feed, incoming) = tokio::sync::mpsc::unbounded_channel();
        let incoming = tokio_stream::wrappers::UnboundedReceiverStream::new(incoming);
        let mut guarded = Box::pin(guard(incoming, &limits(2), "test"));
        let stats = guarded.stats();
        let mut conns = conns.into_iter();
        let accept = |conn| feed.send(conn).unwrap();
        let mut byte = [0u8; 1];

        // A silent connection makes room at once: it has no request to lose.
        accept(conns.next().unwrap());
        accept(conns.next().unwrap());
        let mut silent = guarded.next().await.unwrap().unwrap();
        let mut talking = guarded.next().await.unwrap().unwrap();
        peers[1].write_all(b"x").await.unwrap();
        assert_eq!(talking.read(&mut byte).await.unwrap(), 1);
        accept(conns.next().unwrap());
        let mut third = guarded.next().await.unwrap().unwrap();
        let err = silent.read(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        drop(silent);
        assert_eq!((stats.evicted(), stats.open()), (1, 2));

        // Both open ones have spoken just now: the fourth is closed at once
        // (its peer reads end-of-stream).
        peers[2].write_all(b"x").await.unwrap();
        assert_eq!(third.read(&mut byte).await.unwrap(), 1);
        accept(conns.next().unwrap());
        settle(&mut guarded).await;
        assert_eq!(peers[3].read(&mut byte).await.unwrap(), 0);
        assert_eq!((stats.refused(), stats.evicted()), (2, 1));

        // Two seconds on, the third speaks again: the other, quiet for
        // longer than `EVICT_QUIET_MIN`, makes room for the fifth.
        tokio::time::advance(Duration::from_secs(2)).await;
        peers[2].write_all(b"x").await.unwrap();
        assert_eq!(third.read(&mut byte).await.unwrap(), 1);
        accept(conns.next().unwrap());
        let fifth = guarded.next().await.unwrap().unwrap();
        let err = talking.read(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!((stats.evicted(), stats.open()), (2, 2));
        drop((talking, third, fifth));
        assert_eq!(stats.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_times_out_and_a_talking_one_does_not() {
        let (mut peers, conns) = pipes(2);
        let mut guarded = Box::pin(guard(tokio_stream::iter(conns), &limits(8), "test"));
        let stats = guarded.stats();
        let mut silent = guarded.next().await.unwrap().unwrap();
        let mut talking = guarded.next().await.unwrap().unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 8];
        let err = silent.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert_eq!(stats.timed_out(), 1);

        // One byte every 30 s keeps the other alive far past both
        // timeouts; it then times out 60 s after the last activity.
        let peer = &mut peers[1];
        for _ in 0..5 {
            peer.write_all(b"x").await.unwrap();
            assert_eq!(talking.read(&mut buf).await.unwrap(), 1);
            tokio::time::advance(Duration::from_secs(30)).await;
        }
        let quiet_since = Instant::now() - Duration::from_secs(30);
        let err = talking.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(Instant::now() - quiet_since, Duration::from_secs(60));
        assert_eq!(stats.timed_out(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_accepts_back_off_exponentially_and_recover() {
        let (_peers, ok) = pipes(1);
        let errors = (0..10).map(|i| Err(format!("EMFILE #{i}")));
        let incoming = tokio_stream::iter(errors.chain(ok));
        let start = Instant::now();
        let mut guarded = Box::pin(guard(incoming, &limits(8), "test"));
        let _conn = guarded.next().await.unwrap().unwrap();
        // 5, 10, 20, ... 640 ms (eight pauses), then twice the 1 s cap.
        assert_eq!(start.elapsed(), Duration::from_millis(5 * 255 + 2 * 1000));
        assert!(guarded.next().await.is_none());
    }
}
