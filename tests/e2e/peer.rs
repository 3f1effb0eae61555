//! The gRPC front tells the ledger who is calling: the peer's IP address
//! reaches `AccumulateArgs::caller.peer` through the listener guard (what
//! per-client bounds are charged to).

use std::sync::{Arc, Mutex};

use abacus::{
    pb::{AccumulateRequest, calculator_client::CalculatorClient},
    server::{self, DedupConfig, ServerConfig},
    store::{AccumulateArgs, Backend, Begin, Caller, Ledger, MemoryLedger, StatsView},
    trace::EventSink,
};
use futures_util::future::BoxFuture;
use tokio::{net::TcpListener, time::Instant};

/// The in-memory ledger, recording the caller of every `begin`.
#[derive(Debug)]
struct Recording {
    inner: MemoryLedger,
    callers: Mutex<Vec<Caller>>,
}

impl Ledger for Recording {
    fn begin<'a>(
        &'a self,
        args: &'a AccumulateArgs,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Begin<'a>, abacus::error::ServiceError>> {
        self.callers.lock().unwrap().push(args.caller.clone());
        Ledger::begin(&self.inner, args, deadline)
    }

    fn get<'a>(
        &'a self,
        register: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<f64, abacus::error::ServiceError>> {
        Ledger::get(&self.inner, register, deadline)
    }

    fn stats(&self) -> BoxFuture<'_, Result<StatsView, abacus::error::ServiceError>> {
        Ledger::stats(&self.inner)
    }

    fn backend(&self) -> Backend {
        self.inner.backend()
    }
}

#[tokio::test]
async fn the_ledger_sees_the_callers_address() {
    let ledger = Arc::new(Recording {
        inner: MemoryLedger::new(DedupConfig::default(), EventSink::log_only()),
        callers: Mutex::default(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve_with_ledger(
        ServerConfig::default(),
        Arc::clone(&ledger) as Arc<dyn Ledger>,
        server::tcp_incoming(listener),
        std::future::pending(),
    ));
    let mut client = CalculatorClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client
        .accumulate(AccumulateRequest {
            register: "r".into(),
            delta: 1.0,
            request_id: "peer-1".into(),
        })
        .await
        .unwrap();
    let callers = ledger.callers.lock().unwrap().clone();
    assert_eq!(
        callers,
        [Caller {
            peer: Some([127, 0, 0, 1].into()),
            ..Caller::default()
        }]
    );
}
