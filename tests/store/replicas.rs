//! Replicas as a user runs them: three `abacus serve --store postgres://…`
//! processes over one database of the test cluster, on loopback.
//!
//! - The same request ID sent to all three at once is applied once, and
//!   every replica reads the same value.
//! - A replica killed with SIGKILL under load loses no acknowledged write
//!   and applies none twice: checked against the database itself.
//! - PostgreSQL stopped (a cluster of the test's own): pure calls keep
//!   working, register calls fail fast with UNAVAILABLE, the health service
//!   reports `abacus.v1.Registers` NOT_SERVING; started again, writes come
//!   back by themselves.
//!
//! Talks to the replicas with the raw generated client, so every answer is
//! the server's own. Waits are on events: the log line that gives a
//! replica's address, answers, health changes (Watch), each bounded by a
//! hang guard. No sleeps.

use std::{path::Path, sync::Arc, time::Duration};

use abacus::{
    error::NOT_APPLIED_KEY,
    pb::{
        AccumulateRequest, AccumulateResponse, BinaryRequest, GetRegisterRequest,
        calculator_client::CalculatorClient,
    },
    server::REGISTERS_HEALTH_SERVICE,
};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    listening::Served,
    support::pg::{self, Cluster, TestDb},
};

/// A hang guard, not a timing claim: what it bounds comes in well under a
/// second from healthy processes.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// How fast a register call must fail while PostgreSQL is down, against a
/// deadline of [`CALL_DEADLINE`]: generous on a loaded machine; the point
/// is that it does not wait for the deadline.
const FAIL_FAST: Duration = Duration::from_secs(3);

/// The deadline every register call carries here.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// One `abacus serve --store URL` process, killed (SIGKILL) on drop
/// ([`Served`]).
struct Replica {
    served: Served,
    calc: CalculatorClient<Channel>,
    health: HealthClient<Channel>,
}

impl Replica {
    async fn start(url: &str) -> Replica {
        let served = Served::spawn(
            Path::new(env!("CARGO_BIN_EXE_abacus")),
            &["--store".as_ref(), url.as_ref()],
            "info",
        );
        let addr = served.addr();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("an address")
            .connect_lazy();
        Replica {
            served,
            calc: CalculatorClient::new(channel.clone()),
            health: HealthClient::new(channel),
        }
    }

    async fn accumulate(
        &self,
        register: &str,
        delta: f64,
        id: &str,
    ) -> Result<AccumulateResponse, Status> {
        accumulate(&self.calc, register, delta, id).await
    }

    /// SIGKILL: no shutdown hook, connections cut mid-call.
    fn kill(&mut self) {
        self.served.child.kill().expect("SIGKILL the replica");
    }

    async fn get(&self, register: &str) -> Result<f64, Status> {
        self.calc
            .clone()
            .get_register(GetRegisterRequest {
                register: register.into(),
            })
            .await
            .map(|r| r.into_inner().value)
    }

    async fn add(&self, a: f64, b: f64) -> Result<f64, Status> {
        self.calc
            .clone()
            .add(BinaryRequest { a, b })
            .await
            .map(|r| r.into_inner().result)
    }

    async fn status(&self, service: &str) -> ServingStatus {
        self.health
            .clone()
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status()
    }

    /// Waits (on the health service's Watch stream, bounded) until the
    /// register methods report `want`.
    async fn registers_become(&self, want: ServingStatus) {
        let mut watch = self
            .health
            .clone()
            .watch(HealthCheckRequest {
                service: REGISTERS_HEALTH_SERVICE.into(),
            })
            .await
            .expect("health watch")
            .into_inner();
        let until = Instant::now() + HANG_GUARD;
        loop {
            let next = tokio::time::timeout_at(until, watch.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{REGISTERS_HEALTH_SERVICE} never became {want:?}:\n{}",
                        self.served.logs()
                    )
                })
                .expect("the watch goes on")
                .expect("a status");
            if next.status() == want {
                return;
            }
        }
    }
}

async fn accumulate(
    calc: &CalculatorClient<Channel>,
    register: &str,
    delta: f64,
    id: &str,
) -> Result<AccumulateResponse, Status> {
    let mut request = tonic::Request::new(AccumulateRequest {
        register: register.into(),
        delta,
        request_id: id.into(),
    });
    request.set_timeout(CALL_DEADLINE);
    calc.clone()
        .accumulate(request)
        .await
        .map(|r| r.into_inner())
}

async fn three(url: &str) -> [Replica; 3] {
    let (a, b, c) = tokio::join!(
        Replica::start(url),
        Replica::start(url),
        Replica::start(url)
    );
    [a, b, c]
}

/// The database's own view: a register's value, and how many dedup records
/// hold request IDs starting with `prefix`.
async fn in_database(db: &TestDb, register: &str, prefix: &str) -> (f64, i64) {
    let client = pg::connect(db).await;
    let value: f64 = client
        .query_one(
            "SELECT value FROM abacus_registers WHERE name = $1",
            &[&register],
        )
        .await
        .expect("the register exists")
        .get(0);
    let records: i64 = client
        .query_one(
            "SELECT count(*) FROM abacus_requests WHERE id LIKE $1 AND outcome IS NOT NULL",
            &[&format!("{prefix}%")],
        )
        .await
        .expect("count records")
        .get(0);
    (value, records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_id_sent_to_three_replica_processes_at_once_is_applied_once() {
    let Some(db) = pg::fresh_database("replicas_same_id").await else {
        return;
    };
    let replicas = three(&db.url).await;
    const ROUNDS: usize = 10;
    for round in 0..ROUNDS {
        let id = format!("round-{round}");
        let answers =
            futures_util::future::join_all(replicas.iter().map(|r| r.accumulate("hot", 1.0, &id)))
                .await;
        let answers: Vec<AccumulateResponse> = answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|e| panic!("round {round}: {e:?}")))
            .collect();
        let executed = answers.iter().filter(|a| !a.replayed).count();
        assert_eq!(executed, 1, "round {round}: {answers:?}");
        for a in &answers {
            assert_eq!(a.value, (round + 1) as f64, "round {round}: {answers:?}");
        }
    }
    for r in &replicas {
        assert_eq!(r.get("hot").await.unwrap(), ROUNDS as f64);
    }
    assert_eq!(
        in_database(&db, "hot", "round-").await,
        (ROUNDS as f64, ROUNDS as i64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_load_loses_and_doubles_no_acknowledged_write() {
    let Some(db) = pg::fresh_database("replicas_sigkill").await else {
        return;
    };
    let mut replicas = three(&db.url).await;
    let clients: Arc<Vec<CalculatorClient<Channel>>> =
        Arc::new(replicas.iter().map(|r| r.calc.clone()).collect());
    const WRITERS: usize = 8;
    const WRITES: usize = 25;
    const KILL_AFTER: usize = 60;
    let (acks, mut acked) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (clients, acks) = (Arc::clone(&clients), acks.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..WRITES {
                let id = format!("load-{w}-{i}");
                // One logical write: the same request ID, replica after
                // replica, until one acknowledges it (as a failing-over
                // client does); bounded.
                let mut last = None;
                let mut done = false;
                for attempt in 0..30 {
                    let calc = &clients[(w + i + attempt) % clients.len()];
                    match accumulate(calc, "load", 1.0, &id).await {
                        Ok(_) => {
                            done = true;
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                assert!(done, "{id} never acknowledged: {last:?}");
                let _ = acks.send(());
            }
        }));
    }
    drop(acks);
    let mut count = 0;
    let killed = {
        let mut killed = false;
        while let Some(()) = tokio::time::timeout(HANG_GUARD, acked.recv())
            .await
            .expect("writes keep being acknowledged")
        {
            count += 1;
            if count == KILL_AFTER {
                replicas[0].kill();
                killed = true;
            }
        }
        killed
    };
    for w in writers {
        w.await.expect("a writer panicked");
    }
    assert!(killed);
    assert_eq!(count, WRITERS * WRITES, "every write acknowledged");
    // Each acknowledged write is in the database exactly once: the
    // register holds their count, and there is one record per ID.
    let total = (WRITERS * WRITES) as f64;
    assert_eq!(
        in_database(&db, "load", "load-").await,
        (total, (WRITERS * WRITES) as i64)
    );
    for survivor in &replicas[1..] {
        assert_eq!(survivor.get("load").await.unwrap(), total);
    }
}

/// A register call while PostgreSQL is down: it must fail with
/// UNAVAILABLE, fast. Returns the status.
async fn fails_fast(r: &Replica, id: &str) -> Status {
    let started = Instant::now();
    let e = r
        .accumulate("r", 1.0, id)
        .await
        .expect_err("PostgreSQL is down");
    let took = started.elapsed();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        took < FAIL_FAST,
        "a register call took {took:?} to fail with PostgreSQL down (deadline {CALL_DEADLINE:?})"
    );
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_stopped_pure_calls_work_writes_fail_fast_and_recover_by_themselves() {
    let Some(cluster) = Cluster::private("replicas_store_down") else {
        return;
    };
    let db = cluster.database("replicas_store_down").await;
    let replicas = three(&db.url).await;
    for (i, r) in replicas.iter().enumerate() {
        r.registers_become(ServingStatus::Serving).await;
        r.accumulate("r", 1.0, &format!("before-{i}"))
            .await
            .unwrap();
    }

    cluster.stop().await;
    for (i, r) in replicas.iter().enumerate() {
        // Pure calls never touch the store.
        assert_eq!(r.add(2.0, 3.0).await.unwrap(), 5.0);
        // Register calls fail fast; after a few, the guard's breaker opens
        // and the health service says so.
        let mut attempt = 0;
        while r.status(REGISTERS_HEALTH_SERVICE).await != ServingStatus::NotServing {
            attempt += 1;
            assert!(attempt <= 20, "still SERVING after {attempt} failed writes");
            fails_fast(r, &format!("down-{i}-{attempt}")).await;
        }
        // Now refused before anything is sent: certainly not applied.
        let refused = fails_fast(r, &format!("refused-{i}")).await;
        assert_eq!(
            refused
                .metadata()
                .get(NOT_APPLIED_KEY)
                .map(|v| v.to_str().unwrap()),
            Some("true"),
            "{refused:?}"
        );
        assert_eq!(r.get("r").await.unwrap_err().code(), Code::Unavailable);
        // The rest of the service reports itself healthy, and is.
        assert_eq!(r.status("").await, ServingStatus::Serving);
        assert_eq!(
            r.status("abacus.v1.Calculator").await,
            ServingStatus::Serving
        );
        assert_eq!(r.add(-1.0, 1.0).await.unwrap(), 0.0);
    }

    cluster.start().await;
    // Nobody writes: each replica's guard probes the store by itself.
    for r in &replicas {
        r.registers_become(ServingStatus::Serving).await;
    }
    for (i, r) in replicas.iter().enumerate() {
        let after = r.accumulate("r", 1.0, &format!("after-{i}")).await.unwrap();
        assert!(!after.replayed);
    }
    // Three before, three after; every failed write certainly not applied.
    assert_eq!(replicas[0].get("r").await.unwrap(), 6.0);
}
