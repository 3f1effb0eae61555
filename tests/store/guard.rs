//! The store guard in a real server on loopback, over a store that answers
//! nothing at all (a hung PostgreSQL): register calls beyond the guard's
//! bound are refused at once, not applied, and the pure calls — which never
//! touch the store — are all answered, none shed. The control is the same
//! server without the guard: the hung register calls take every slot of
//! the server's in-flight cap, and the pure calls are shed.
//!
//! Waiting is on events only: the store counts the calls that reached it,
//! and each refusal is an answer.

use std::{sync::Arc, time::Duration};

use abacus::{
    client::{Client, ClientConfig, Delivery, RetryConfig, tcp_channel},
    error::ServiceError,
    server::{self, ServerConfig},
    store::{
        AccumulateArgs, Backend, Begin, BoxFuture, Ledger, StatsView,
        guard::{GuardConfig, GuardedLedger},
    },
    trace::{EventSink, Outcome},
};
use tokio::{sync::watch, time::Instant};
use tonic::Code;

/// The server's in-flight cap in these tests.
const SERVER_SLOTS: usize = 16;
/// The guard's bound on store operations in flight.
const STORE_SLOTS: usize = 4;
/// Register calls sent at once: more than the server's cap.
const WRITERS: usize = 40;
/// Pure calls made while the store hangs.
const PURE_CALLS: usize = 50;

/// A store that never answers: every call waits for its deadline (as the
/// PostgreSQL ledger bounds its waits) and counts itself on arrival.
#[derive(Debug)]
struct Hung {
    arrived: watch::Sender<usize>,
}

impl Hung {
    async fn hang<T>(&self, deadline: Option<Instant>) -> Result<T, ServiceError> {
        self.arrived.send_modify(|n| *n += 1);
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
        Err(ServiceError::DeadlineExceeded)
    }
}

impl Ledger for Hung {
    fn begin<'a>(
        &'a self,
        _args: &'a AccumulateArgs,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Begin<'a>, ServiceError>> {
        Box::pin(self.hang(deadline))
    }

    fn get<'a>(
        &'a self,
        _register: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<f64, ServiceError>> {
        Box::pin(self.hang(deadline))
    }

    fn stats(&self) -> BoxFuture<'_, Result<StatsView, ServiceError>> {
        Box::pin(self.hang(None))
    }

    fn backend(&self) -> Backend {
        Backend::Model
    }
}

/// What the writers and the pure calls met.
#[derive(Debug)]
struct Seen {
    /// Register calls that reached the store.
    reached_store: usize,
    /// Codes of the register calls answered (the others still hang), with
    /// whether each was marked not-applied.
    writers: Vec<(Code, bool)>,
    /// Codes of the pure calls (`OK` when answered).
    pure: Vec<Code>,
}

/// A server over `Hung` (guarded or not); `WRITERS` Accumulates sent at
/// once, then, once every one of them has either reached the store or been
/// answered, `PURE_CALLS` Adds one after the other.
async fn under_a_hung_store(guarded: bool) -> Seen {
    let (arrived, mut reached) = watch::channel(0usize);
    let hung: Arc<dyn Ledger> = Arc::new(Hung { arrived });
    let ledger: Arc<dyn Ledger> = if guarded {
        let config = GuardConfig {
            // Longer than the test: the admitted calls hang throughout.
            timeout_ms: 120_000,
            in_flight_max: STORE_SLOTS,
            ..GuardConfig::default()
        };
        Arc::new(GuardedLedger::new(hung, config, EventSink::default(), 1).unwrap())
    } else {
        hung
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ServerConfig {
        in_flight_max: SERVER_SLOTS,
        ..ServerConfig::default()
    };
    tokio::spawn(server::serve_with_ledger(
        config,
        ledger,
        server::tcp_incoming(listener),
        std::future::pending(),
    ));
    let client = Client::new(
        tcp_channel(&addr.to_string()).unwrap(),
        ClientConfig {
            deadline: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(60),
            // Every answer as the server gave it: no retries, no breaker.
            retry: RetryConfig {
                attempts_max: 1,
                ..RetryConfig::default()
            },
            breaker: None,
            mode: Delivery::ExactlyOnce,
            ..ClientConfig::default()
        },
    );
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..WRITERS {
        let (client, answers) = (client.clone(), answers.clone());
        tokio::spawn(async move {
            let result = client.accumulate("r", i as f64).await;
            let _ = answers.send(result);
        });
    }
    // Every writer either reached the store (and hangs there) or was
    // answered; the first phase is over when the two add up.
    let mut writers = Vec::new();
    while *reached.borrow() + writers.len() < WRITERS {
        tokio::select! {
            changed = reached.changed() => changed.expect("the store lives"),
            answer = answered.recv() => {
                let e = answer.expect("writers live").expect_err("the store never answers");
                writers.push((e.code, e.outcome == Outcome::NotApplied));
            }
        }
    }
    let mut pure = Vec::new();
    for i in 0..PURE_CALLS {
        pure.push(match client.add(i as f64, 1.0).await {
            Ok(sum) => {
                assert_eq!(sum, i as f64 + 1.0);
                Code::Ok
            }
            Err(e) => e.code,
        });
    }
    let reached_store = *reached.borrow();
    Seen {
        reached_store,
        writers,
        pure,
    }
}

/// Runs `f` with a hang guard: the phases wait on events, which come at
/// once from a working server.
async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("the scenario ended within a minute")
}

#[tokio::test]
async fn with_the_guard_a_hung_store_holds_few_slots_and_pure_calls_are_all_answered() {
    let seen = bounded(under_a_hung_store(true)).await;
    assert_eq!(seen.reached_store, STORE_SLOTS, "{seen:?}");
    // Everyone else was refused at once by the guard, certainly not
    // applied (nothing was sent), as UNAVAILABLE: none reached the
    // server's own cap.
    assert_eq!(seen.writers.len(), WRITERS - STORE_SLOTS);
    assert!(
        seen.writers
            .iter()
            .all(|&(code, not_applied)| code == Code::Unavailable && not_applied),
        "{seen:?}"
    );
    assert!(
        seen.pure.iter().all(|&c| c == Code::Ok),
        "pure calls failed while the store hung: {:?}",
        seen.pure
    );
}

/// Negative control: the same server and load without the guard.
#[tokio::test]
async fn without_the_guard_a_hung_store_takes_every_slot_and_pure_calls_are_shed() {
    let seen = bounded(under_a_hung_store(false)).await;
    assert_eq!(seen.reached_store, SERVER_SLOTS, "{seen:?}");
    assert!(
        seen.writers
            .iter()
            .all(|&(code, _)| code == Code::ResourceExhausted),
        "{seen:?}"
    );
    assert_eq!(
        seen.pure
            .iter()
            .filter(|&&c| c == Code::ResourceExhausted)
            .count(),
        PURE_CALLS,
        "the pure calls were shed: {:?}",
        seen.pure
    );
}
