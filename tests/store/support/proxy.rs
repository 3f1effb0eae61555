//! A loopback TCP proxy between the ledger and PostgreSQL that can cut a
//! connection at a chosen point of the wire protocol, to make the failures
//! that matter happen for real: a COMMIT that reaches the server but whose
//! answer is lost, and one that never reaches it. It can also **freeze**
//! connections: stop forwarding in both directions while keeping both
//! sockets open, as a partition does — neither side learns anything, and
//! the server's session stays idle in its transaction.
//!
//! It reads the client's side as PostgreSQL protocol messages (an untyped
//! start-up message, then `type byte + i32 length + body`); the server's
//! side is copied as bytes.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// What the proxy does to the next matching message (then it disarms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// Forward everything.
    Pass,
    /// Close the connection instead of forwarding the next `COMMIT`.
    BeforeCommit,
    /// Forward the next `COMMIT`, wait for the server's answer (so it has
    /// committed), drop that answer and close the connection.
    AfterCommit,
    /// Close the connection instead of forwarding the next message,
    /// whatever it is.
    NextMessage,
    /// Freeze the connection instead of forwarding the next `COMMIT`: the
    /// server never gets it, the client never hears back.
    FreezeAtCommit,
}

/// A running proxy; dropping it stops accepting.
#[derive(Debug)]
pub(crate) struct Proxy {
    /// Where clients connect.
    pub(crate) addr: SocketAddr,
    cut: Arc<Mutex<Cut>>,
    fired: watch::Receiver<u32>,
    /// Set to freeze every connection (open ones and new ones).
    frozen: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Proxies connections to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let cut = Arc::new(Mutex::new(Cut::Pass));
        let (fired_tx, fired) = watch::channel(0u32);
        let fired_tx = Arc::new(fired_tx);
        let (frozen, frozen_rx) = watch::channel(false);
        let task = {
            let cut = Arc::clone(&cut);
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    tokio::spawn(pump(
                        client,
                        server,
                        Arc::clone(&cut),
                        Arc::clone(&fired_tx),
                        frozen_rx.clone(),
                    ));
                }
            })
        };
        Proxy {
            addr,
            cut,
            fired,
            frozen,
            task,
        }
    }

    /// Arms a cut for the next matching message.
    pub(crate) fn arm(&self, cut: Cut) {
        *self.cut.lock().unwrap() = cut;
    }

    /// How many cuts have fired.
    pub(crate) fn fired(&self) -> u32 {
        *self.fired.borrow()
    }

    /// Freezes every connection, open or new: nothing more is forwarded
    /// either way, nothing is closed.
    pub(crate) fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

/// Takes the armed cut if `msg` matches it.
fn take_cut(cut: &Mutex<Cut>, kind: u8, body: &[u8]) -> Cut {
    let mut armed = cut.lock().unwrap();
    let is_commit = kind == b'Q' && body.len() >= 6 && body[..6].eq_ignore_ascii_case(b"COMMIT");
    let fires = match *armed {
        Cut::Pass => false,
        Cut::BeforeCommit | Cut::AfterCommit | Cut::FreezeAtCommit => is_commit,
        Cut::NextMessage => true,
    };
    if fires {
        std::mem::replace(&mut *armed, Cut::Pass)
    } else {
        Cut::Pass
    }
}

/// Resolves once `frozen` reads true (never, if its sender is gone).
async fn until_frozen(mut frozen: watch::Receiver<bool>) {
    if frozen.wait_for(|f| *f).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn pump(
    client: TcpStream,
    server: TcpStream,
    cut: Arc<Mutex<Cut>>,
    fired: Arc<watch::Sender<u32>>,
    frozen: watch::Receiver<bool>,
) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    // Set when the server's next bytes must be swallowed and the
    // connection closed (AfterCommit).
    let (swallow_tx, mut swallow_rx) = watch::channel(false);
    let downstream = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match server_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if *swallow_rx.borrow_and_update() {
                // The answer to COMMIT: it committed; the client never
                // learns it.
                return;
            }
            if client_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let upstream = async move {
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        let mut started = false;
        loop {
            let n = match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            loop {
                // Start-up phase: untyped messages (an SSL request, then
                // the start-up message itself).
                let (kind, header) = if started {
                    (pending.first().copied(), 1)
                } else {
                    (None, 0)
                };
                if pending.len() < header + 4 {
                    break;
                }
                let len = i32::from_be_bytes(pending[header..header + 4].try_into().unwrap());
                let total = header + len.max(4) as usize;
                if pending.len() < total {
                    break;
                }
                let msg: Vec<u8> = pending.drain(..total).collect();
                let Some(kind) = kind else {
                    // 80877103 = SSLRequest, 80877104 = GSSENCRequest: the
                    // real start-up message follows.
                    let code = msg
                        .get(4..8)
                        .map(|c| i32::from_be_bytes(c.try_into().unwrap()));
                    started = !matches!(code, Some(80877103 | 80877104));
                    if server_tx.write_all(&msg).await.is_err() {
                        return;
                    }
                    continue;
                };
                match take_cut(&cut, kind, &msg[5..]) {
                    Cut::Pass => {
                        if server_tx.write_all(&msg).await.is_err() {
                            return;
                        }
                    }
                    Cut::AfterCommit => {
                        // Armed before forwarding, so the answer cannot slip
                        // through.
                        let _ = swallow_tx.send(true);
                        fired.send_modify(|n| *n += 1);
                        let _ = server_tx.write_all(&msg).await;
                        // Keep the server side open until the answer came.
                        std::future::pending::<()>().await;
                    }
                    Cut::BeforeCommit | Cut::NextMessage => {
                        fired.send_modify(|n| *n += 1);
                        return;
                    }
                    Cut::FreezeAtCommit => {
                        fired.send_modify(|n| *n += 1);
                        // Hold every socket open, forward nothing more.
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    };
    // Whichever side ends first ends the connection: every half is dropped
    // here, closing both sockets. Frozen, both pumps stop where they are
    // and the sockets stay open for as long as the proxy lives.
    // (The pumps own the socket halves: frozen, they are kept, unpolled.)
    let (mut downstream, mut upstream) = (Box::pin(downstream), Box::pin(upstream));
    tokio::select! {
        () = &mut downstream => {}
        () = &mut upstream => {}
        () = until_frozen(frozen) => std::future::pending::<()>().await,
    }
}
