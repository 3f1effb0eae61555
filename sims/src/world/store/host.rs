//! The store host's side of the protocol: one task per connection, one
//! transaction per connection, over a ledger kept outside the host.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use abacus::{
    server::{DedupConfig, FaultSwitch},
    store::{Begin, Ledger, dedup::DigestKey},
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::{io::AsyncReadExt, time::Instant};
use turmoil::net::{
    TcpListener, TcpStream,
    tcp::{OwnedReadHalf, OwnedWriteHalf},
};

use crate::{
    history::{Entry, History},
    world::{
        clock::Skew,
        store::{
            HOST, MemoryLedger, PORT, SplitLedger, StoreNote,
            wire::{Reply, Request, read_frame, write_frame},
        },
    },
};

/// Which store runs on the store host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreModel {
    /// The in-memory ledger: the claim, the register update and the dedup
    /// record commit together, as in PostgreSQL's one transaction.
    Atomic,
    /// BROKEN, for a negative control: the update and the record are
    /// committed in two transactions ([`SplitLedger`]); a fault between
    /// them leaves an update without its record, and a retry applies again.
    SplitTransactions,
}

/// What the store is and does wrong, apart from its seed.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Which model.
    pub model: StoreModel,
    /// Its dedup limits (and dedup on or off).
    pub dedup: DedupConfig,
    /// Delay range of every operation (ms): a slow store.
    pub delay_ms: (u64, u64),
    /// Probability that a commit's reply is lost.
    pub lose_rate: f64,
    /// Seed of the fault draws.
    pub seed: u64,
    /// How long a claim's connection may stay silent before the store
    /// releases the claim (PostgreSQL's `idle_in_transaction_session_timeout`,
    /// which the PostgreSQL ledger sets to twice its per-call bound):
    /// what frees a claim orphaned by a partition.
    pub idle_claim: Duration,
    /// The store host's clock error, if its clock is skewed: dedup
    /// retention is judged on it (as the PostgreSQL ledger judges it on
    /// the database server's clock, never a replica's), and the idle bound
    /// runs on it.
    pub skew: Option<Skew>,
    /// The key of its request-ID digests (seeded: a digest names an
    /// evicted record in the trace).
    pub key: DigestKey,
}

/// The idle bound the PostgreSQL ledger sets with the store guard's
/// default per-call bound: the model's default.
pub fn idle_claim_default() -> Duration {
    abacus::store::postgres::config::idle_in_transaction_timeout_for(Duration::from_millis(
        abacus::store::guard::config::TIMEOUT_MS_DEFAULT,
    ))
}

/// The store: its ledger and its fault source, kept outside the store host
/// so that they survive the host's crash and restart (the ledger is the
/// durable database; the fault draws simply go on).
#[derive(Debug)]
pub struct Store {
    ledger: Arc<dyn Ledger>,
    delay_ms: (u64, u64),
    lose_rate: f64,
    idle_claim: Duration,
    switch: FaultSwitch,
    // A std Mutex: held for one draw, never across an await; turmoil runs
    // every host on one thread, so draws happen in a deterministic order.
    rng: Mutex<ChaCha8Rng>,
    history: History,
}

impl Store {
    /// A store as `config` describes, reporting into `history` as `store`.
    pub fn new(config: StoreConfig, history: &History) -> Arc<Self> {
        let ledger: Arc<dyn Ledger> = match config.model {
            StoreModel::Atomic => Arc::new(MemoryLedger::with_key_and_clock(
                config.dedup,
                history.sink(HOST),
                config.key,
                Skew::clock_or_tokio(config.skew),
            )),
            StoreModel::SplitTransactions => Arc::new(SplitLedger::new(config.dedup, history)),
        };
        Arc::new(Self {
            ledger,
            delay_ms: config.delay_ms,
            lose_rate: config.lose_rate,
            idle_claim: config
                .skew
                .map_or(config.idle_claim, |s| s.real(config.idle_claim)),
            switch: FaultSwitch::default(),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(config.seed)),
            history: history.clone(),
        })
    }

    /// Turns the store's faults (slowness, lost replies) off.
    pub fn switch(&self) -> FaultSwitch {
        self.switch.clone()
    }

    /// Adds the store host to `sim`: every incarnation serves the same
    /// ledger.
    pub fn serve_on(self: &Arc<Self>, sim: &mut turmoil::Sim<'_>) {
        let store = Arc::clone(self);
        sim.host(HOST, move || {
            let store = Arc::clone(&store);
            async move {
                let listener = TcpListener::bind(("0.0.0.0", PORT)).await?;
                loop {
                    let (stream, _) = listener.accept().await?;
                    // Dropped with the host's runtime on a crash: the
                    // connection closes and its claim rolls back.
                    tokio::spawn(Arc::clone(&store).serve(stream));
                }
            }
        });
    }

    fn note(&self, note: StoreNote) {
        self.history.push(HOST, Entry::Store(note));
    }

    /// The store's slowness: one draw per operation, only when it is on.
    async fn slow_down(&self) {
        let (lo, hi) = self.delay_ms;
        if hi == 0 || !self.switch.is_on() {
            return;
        }
        let ms = self
            .rng
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .random_range(lo..=hi);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Whether this commit's reply is lost: one draw per commit, only when
    /// the fault is on.
    fn lose_reply(&self) -> bool {
        self.lose_rate > 0.0
            && self.switch.is_on()
            && self
                .rng
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .random_bool(self.lose_rate)
    }

    /// One connection: one request, or one transaction (`Begin`, then
    /// `Commit` or a rollback when the connection closes).
    async fn serve(self: Arc<Self>, stream: TcpStream) {
        let (mut rd, mut wr) = stream.into_split();
        let Some(request) = receive(&mut rd).await else {
            return;
        };
        self.slow_down().await;
        let reply = match request {
            Request::Begin { args, wait_ms } => {
                return self.transaction(&args, wait_ms, rd, wr).await;
            }
            Request::Get { register } => match self.ledger.get(&register, None).await {
                Ok(v) => Reply::Value(v),
                Err(e) => Reply::Failed(e),
            },
            Request::Stats => match self.ledger.stats().await {
                Ok(s) => Reply::Stats(s),
                Err(e) => Reply::Failed(e),
            },
            // No claim on this connection: nothing to commit. Closing it
            // tells the replica.
            Request::Commit => return,
        };
        let _ = send(&mut wr, &reply).await;
    }

    /// `Begin`: answer from the record, or wait for a duplicate in flight,
    /// or claim and hold the claim until `Commit` or until the connection
    /// closes.
    async fn transaction(
        &self,
        args: &abacus::store::AccumulateArgs,
        wait_ms: u64,
        mut rd: OwnedReadHalf,
        mut wr: OwnedWriteHalf,
    ) {
        // The replica's bound on waiting for a duplicate in flight (its
        // lock_timeout), counted from arrival.
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let claim = match self.ledger.begin(args, Some(deadline)).await {
            Ok(Begin::Execute(claim)) => claim,
            Ok(Begin::Replay(result)) => {
                let _ = send(&mut wr, &Reply::Replay(result)).await;
                return;
            }
            Err(e) => {
                let _ = send(&mut wr, &Reply::Failed(e)).await;
                return;
            }
        };
        let rolled_back = || {
            self.note(StoreNote::RolledBack {
                request_id: args.request_id.clone(),
            })
        };
        if send(&mut wr, &Reply::Claimed).await.is_err() {
            return rolled_back();
        }
        // The claim lives as long as this connection, like a row lock in
        // an open transaction — and no longer than the idle bound while the
        // connection is silent, as the server ends a transaction left idle.
        match tokio::time::timeout(self.idle_claim, receive(&mut rd)).await {
            Ok(Some(Request::Commit)) => {}
            Ok(_) => return rolled_back(),
            Err(_) => {
                return self.note(StoreNote::IdleReleased {
                    request_id: args.request_id.clone(),
                    idle_ms: self.idle_claim.as_millis() as u64,
                });
            }
        }
        self.slow_down().await;
        // Commit, unless the replica goes first: a one-step commit (the
        // in-memory ledger's) is done at its first poll, so only a commit
        // that takes time (the split control's) can be cut short.
        let result = tokio::select! {
            biased;
            result = claim.commit() => result,
            () = closed(&mut rd) => {
                return self.note(StoreNote::CommitAbandoned {
                    request_id: args.request_id.clone(),
                });
            }
        };
        if self.lose_reply() {
            // Committed; the answer never leaves.
            return self.note(StoreNote::ReplyLost {
                request_id: args.request_id.clone(),
            });
        }
        let _ = send(&mut wr, &Reply::Committed(result)).await;
    }
}

/// The next request, or `None` when the connection closed, broke or sent
/// something that is not a request.
async fn receive(rd: &mut OwnedReadHalf) -> Option<Request> {
    let body = read_frame(rd).await.ok()??;
    Request::decode(&body).ok()
}

async fn send(wr: &mut OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    write_frame(wr, &reply.encode()).await
}

/// Resolves once the replica closes the connection (or sends anything
/// more, which the protocol does not allow mid-commit).
async fn closed(rd: &mut OwnedReadHalf) {
    let mut byte = [0u8; 1];
    let _ = rd.read(&mut byte).await;
}
