//! The PostgreSQL ledger against a real server: exactly-once across
//! replicas (several ledgers on one database stand for several replicas),
//! commit ambiguity through a proxy that cuts the connection around COMMIT,
//! time bounds, rule errors, retention, and concurrent start-ups.
//!
//! Waiting is on events only: a duplicate is known to be blocked on the
//! row lock when `pg_stat_activity` says so (a bounded poll of the server's
//! own view, not a sleep standing in for it).

use std::{sync::Arc, time::Duration};

use abacus::{
    error::{CalcError, ServiceError},
    store::dedup::DedupConfig,
    store::{
        self, AccumulateArgs, Accumulated, Begin, Ledger, WriteFate,
        postgres::{ManualClock, PgConfig, PgLedger, RetentionClock, SCHEMA_VERSION},
    },
    trace::EventSink,
};
use tokio::time::Instant;

use crate::support::{
    closed_port::ClosedPort,
    pg::{self, TestDb},
    proxy::{Cut, Proxy},
};

/// Skips (loudly) when `ABACUS_SKIP_PG=1`, else a fresh database.
macro_rules! database {
    ($name:literal) => {
        match pg::fresh_database($name).await {
            Some(db) => db,
            None => return,
        }
    };
}

fn config(url: &str) -> PgConfig {
    let mut c = PgConfig::from_url(url).expect("test URL parses");
    c.pool_max = 4;
    c
}

async fn ledger_with(url: &str, dedup: DedupConfig, tweak: impl FnOnce(&mut PgConfig)) -> PgLedger {
    let mut c = config(url);
    tweak(&mut c);
    PgLedger::connect(c, dedup, EventSink::default())
        .await
        .unwrap_or_else(|e| panic!("ledger start: {e}"))
}

async fn ledger(db: &TestDb) -> PgLedger {
    ledger_with(&db.url, DedupConfig::default(), |_| {}).await
}

fn args(register: &str, delta: f64, request_id: &str) -> AccumulateArgs {
    AccumulateArgs {
        register: register.into(),
        delta,
        request_id: request_id.into(),
        caller: Default::default(),
    }
}

fn ok(value: f64, replayed: bool) -> Result<Accumulated, ServiceError> {
    Ok(Accumulated { value, replayed })
}

async fn accumulate(l: &dyn Ledger, a: &AccumulateArgs) -> Result<Accumulated, ServiceError> {
    store::accumulate(l, a, None).await
}

/// Waits until `n` sessions of `db` wait for a lock (bounded: 10 s).
async fn until_lock_waiters(db: &TestDb, n: i64) {
    let client = pg::connect(db).await;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
                &[&db.name],
            )
            .await
            .unwrap()
            .get(0);
        if waiting >= n {
            return;
        }
        assert!(
            Instant::now() < until,
            "no session of {} waits for a lock",
            db.name
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_repeat_is_replayed_a_reuse_refused_and_reads_see_commits() {
    let db = database!("basics");
    let l = ledger(&db).await;
    let a = args("x", 2.5, "id-1");
    assert_eq!(accumulate(&l, &a).await, ok(2.5, false));
    assert_eq!(accumulate(&l, &a).await, ok(2.5, true));
    assert_eq!(
        accumulate(&l, &args("x", 1.0, "id-2")).await,
        ok(3.5, false)
    );
    assert_eq!(
        accumulate(&l, &a).await,
        ok(2.5, true),
        "first value, not the current one"
    );
    let reuse = accumulate(&l, &args("x", 9.0, "id-1")).await.unwrap_err();
    assert!(
        matches!(reuse, ServiceError::RequestIdReused { .. }),
        "{reuse}"
    );
    // Without an ID: applied every time.
    assert_eq!(accumulate(&l, &args("x", 1.0, "")).await, ok(4.5, false));
    assert_eq!(accumulate(&l, &args("x", 1.0, "")).await, ok(5.5, false));
    assert_eq!(l.get("x", None).await, Ok(5.5));
    assert_eq!(
        l.get("nope", None).await,
        Err(ServiceError::Calc(CalcError::UnknownRegister(
            "nope".into()
        )))
    );
    assert!(matches!(
        l.get("", None).await,
        Err(ServiceError::Calc(CalcError::EmptyRegisterName))
    ));
    let st = l.stats().await.unwrap();
    assert_eq!(
        (
            st.applied,
            st.registers,
            st.dedup_hits,
            st.dedup_mismatches,
            st.dedup_entries
        ),
        (4, 1, 2, 1, 2)
    );
}

#[tokio::test]
async fn a_duplicate_at_another_replica_waits_for_the_first_and_replays_it() {
    let db = database!("cross_replica_commit");
    let (one, two) = (ledger(&db).await, ledger(&db).await);
    let a = args("r", 1.0, "shared");
    let Begin::Execute(claim) = one.begin(&a, None).await.unwrap() else {
        panic!("first begin executes")
    };
    let waiting = async {
        let begin = two.begin(&a, None).await.unwrap();
        match begin {
            Begin::Replay(result) => result,
            Begin::Execute(_) => panic!("the duplicate executed while the first committed"),
        }
    };
    let commit = async {
        until_lock_waiters(&db, 1).await;
        claim.commit().await
    };
    let (replayed, committed) = tokio::join!(waiting, commit);
    assert_eq!(committed, ok(1.0, false));
    assert_eq!(replayed, ok(1.0, true));
    assert_eq!(two.get("r", None).await, Ok(1.0));
}

#[tokio::test]
async fn a_duplicate_at_another_replica_takes_over_when_the_first_fails() {
    let db = database!("cross_replica_abort");
    let (one, two) = (ledger(&db).await, ledger(&db).await);
    let a = args("r", 1.0, "shared");
    let Begin::Execute(claim) = one.begin(&a, None).await.unwrap() else {
        panic!("first begin executes")
    };
    let waiting = async {
        match two.begin(&a, None).await.unwrap() {
            Begin::Execute(claim) => claim.commit().await,
            Begin::Replay(r) => panic!("replayed {r:?} though the first never committed"),
        }
    };
    let release = async {
        until_lock_waiters(&db, 1).await;
        // The first execution fails before applying: its claim is dropped.
        drop(claim);
    };
    let (taken_over, ()) = tokio::join!(waiting, release);
    assert_eq!(taken_over, ok(1.0, false));
    assert_eq!(accumulate(&one, &a).await, ok(1.0, true));
    assert_eq!(one.get("r", None).await, Ok(1.0), "applied once");
}

#[tokio::test]
async fn a_duplicate_waits_no_longer_than_its_deadline_and_is_not_marked_not_applied() {
    let db = database!("cross_replica_timeout");
    let (one, two) = (ledger(&db).await, ledger(&db).await);
    let a = args("r", 1.0, "slow");
    let Begin::Execute(claim) = one.begin(&a, None).await.unwrap() else {
        panic!("first begin executes")
    };
    let started = Instant::now();
    let deadline = started + Duration::from_millis(300);
    let err = two.begin(&a, Some(deadline)).await.unwrap_err();
    assert_eq!(
        err,
        ServiceError::StillInFlight {
            request_id: "slow".into()
        }
    );
    assert!(!err.known_not_applied());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "waited {waited:?} for a 300 ms deadline"
    );
    assert_eq!(claim.commit().await, ok(1.0, false));
    assert_eq!(accumulate(&two, &a).await, ok(1.0, true));
}

#[tokio::test]
async fn the_same_id_sent_to_three_replicas_at_once_is_applied_once() {
    let db = database!("three_replicas");
    let replicas = [ledger(&db).await, ledger(&db).await, ledger(&db).await];
    for round in 0..5 {
        let a = args("hot", 1.0, &format!("id-{round}"));
        let results =
            futures_util::future::join_all(replicas.iter().map(|l| accumulate(l, &a))).await;
        let applied = results
            .iter()
            .filter(|r| matches!(r, Ok(x) if !x.replayed))
            .count();
        assert_eq!(applied, 1, "round {round}: {results:?}");
        for r in &results {
            assert_eq!(
                r.as_ref().map(|x| x.value),
                Ok(f64::from(round + 1)),
                "{results:?}"
            );
        }
    }
    assert_eq!(replicas[2].get("hot", None).await, Ok(5.0));
}

/// Where the test cluster listens.
fn upstream(db: &TestDb) -> std::net::SocketAddr {
    let host_port = db
        .url
        .rsplit_once('@')
        .unwrap()
        .1
        .split('/')
        .next()
        .unwrap();
    host_port.parse().expect("test cluster on an IP address")
}

/// The ledger through a proxy that can cut the connection.
async fn behind_proxy(db: &TestDb) -> (Proxy, PgLedger) {
    let proxy = Proxy::start(upstream(db)).await;
    let l = ledger_with(&db.url_via(proxy.addr), DedupConfig::default(), |c| {
        c.pool_max = 2;
        // The sweeper's COMMITs must not meet the proxy's armed cut.
        c.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    (proxy, l)
}

/// Cuts the connection at `cut` during an `Accumulate`'s commit; returns
/// the ledger (to retry through) and what the call answered, checked to be
/// an unknown fate: the ledger cannot tell a COMMIT that arrived from one
/// that did not.
async fn cut_commit(db: &TestDb, cut: Cut, a: &AccumulateArgs) -> (Proxy, PgLedger) {
    let (proxy, l) = behind_proxy(db).await;
    proxy.arm(cut);
    let err = accumulate(&l, a).await.unwrap_err();
    assert_eq!(proxy.fired(), 1, "the proxy cut at {cut:?}");
    assert_eq!(
        err,
        ServiceError::StoreUnavailable {
            fate: WriteFate::Unknown
        }
    );
    assert!(!err.known_not_applied(), "no not-applied marker");
    (proxy, l)
}

#[tokio::test]
async fn a_commit_whose_answer_is_lost_is_unknown_and_its_retry_replays() {
    let db = database!("commit_lost_answer");
    let a = args("r", 5.0, "ambiguous");
    let (_proxy, l) = cut_commit(&db, Cut::AfterCommit, &a).await;
    // It did commit: the retry under the same ID replays, never re-applies.
    assert_eq!(l.get("r", None).await, Ok(5.0));
    assert_eq!(accumulate(&l, &a).await, ok(5.0, true));
    assert_eq!(l.get("r", None).await, Ok(5.0));
}

#[tokio::test]
async fn a_commit_that_never_arrives_is_unknown_and_its_retry_executes() {
    let db = database!("commit_never_sent");
    let a = args("r", 5.0, "ambiguous");
    let (_proxy, l) = cut_commit(&db, Cut::BeforeCommit, &a).await;
    assert!(matches!(
        l.get("r", None).await,
        Err(ServiceError::Calc(CalcError::UnknownRegister(_)))
    ));
    // It did not commit: the retry executes, once.
    assert_eq!(accumulate(&l, &a).await, ok(5.0, false));
    assert_eq!(accumulate(&l, &a).await, ok(5.0, true));
}

#[tokio::test]
async fn a_connection_lost_before_anything_was_written_is_not_applied() {
    let db = database!("lost_before_write");
    let (proxy, l) = behind_proxy(&db).await;
    let a = args("r", 5.0, "early");
    proxy.arm(Cut::NextMessage);
    let err = accumulate(&l, &a).await.unwrap_err();
    assert_eq!(proxy.fired(), 1);
    assert_eq!(
        err,
        ServiceError::StoreUnavailable {
            fate: WriteFate::NotApplied
        }
    );
    assert!(err.known_not_applied());
    assert_eq!(accumulate(&l, &a).await, ok(5.0, false));
}

/// The server-side bound on a silent transaction in the orphaned-claim
/// tests (short, to keep them quick; the default is twice the per-call
/// bound).
const IDLE_BOUND: Duration = Duration::from_millis(1_000);

/// A replica reaching the database through a proxy that can freeze its
/// connections, with a short per-call bound and `idle` as its
/// idle-in-transaction bound.
async fn strandable_with(db: &TestDb, idle: Duration) -> (Proxy, PgLedger) {
    let proxy = Proxy::start(upstream(db)).await;
    let l = ledger_with(&db.url_via(proxy.addr), DedupConfig::default(), |c| {
        c.pool_max = 2;
        c.sweep_interval = Duration::from_secs(3600);
        c.op_timeout = Duration::from_millis(500);
        c.idle_in_transaction_timeout = idle;
    })
    .await;
    (proxy, l)
}

async fn strandable(db: &TestDb) -> (Proxy, PgLedger) {
    strandable_with(db, IDLE_BOUND).await
}

/// The orphan was released by the server's bound, not by luck: the retry
/// waited on it, and no longer than the bound and a margin.
fn released_within_the_bound(waited: Duration) {
    assert!(
        waited >= IDLE_BOUND / 4 && waited < IDLE_BOUND + Duration::from_secs(3),
        "waited {waited:?} on an orphan bounded at {IDLE_BOUND:?}"
    );
}

#[tokio::test]
async fn a_claim_whose_connection_goes_silent_is_released_within_the_bound() {
    let db = database!("orphaned_claim");
    let (proxy, stranded) = strandable(&db).await;
    let other = ledger(&db).await;
    let a = args("r", 1.0, "orphan");
    let Begin::Execute(claim) = stranded.begin(&a, None).await.unwrap() else {
        panic!("first begin executes")
    };
    // The replica holding the claim drops off the network: nothing is
    // closed, nothing arrives. Its transaction sits idle on the server.
    proxy.freeze();
    let started = Instant::now();
    // A retry through another replica waits on the orphan's row lock until
    // the server ends the silent transaction, then executes: the orphan
    // never committed.
    let retried = accumulate(&other, &a).await;
    released_within_the_bound(started.elapsed());
    assert_eq!(retried, ok(1.0, false));
    // The stranded replica cannot commit what the server already rolled
    // back, and says so without claiming more than it knows.
    let late = claim.commit().await.unwrap_err();
    assert_eq!(
        late,
        ServiceError::StoreUnavailable {
            fate: WriteFate::NotApplied
        }
    );
    assert_eq!(accumulate(&other, &a).await, ok(1.0, true));
    assert_eq!(other.get("r", None).await, Ok(1.0), "applied once");
}

/// Negative control: without the bound, the orphan holds its row for as
/// long as the retry is willing to wait (in production: until TCP gives
/// up, hours later), and the retry never gets to execute.
#[tokio::test]
async fn without_the_bound_an_orphaned_claim_outlives_every_retry() {
    let db = database!("orphan_unbounded");
    let (proxy, stranded) = strandable_with(&db, Duration::ZERO).await;
    let other = ledger(&db).await;
    let a = args("r", 1.0, "orphan");
    let Begin::Execute(_claim) = stranded.begin(&a, None).await.unwrap() else {
        panic!("first begin executes")
    };
    proxy.freeze();
    let deadline = Instant::now() + 3 * IDLE_BOUND;
    assert_eq!(
        other.begin(&a, Some(deadline)).await.unwrap_err(),
        ServiceError::StillInFlight {
            request_id: "orphan".into()
        }
    );
}

#[tokio::test]
async fn a_commit_stalled_on_a_silent_connection_frees_its_rows_within_the_bound() {
    let db = database!("orphaned_commit");
    let (proxy, stranded) = strandable(&db).await;
    let other = ledger(&db).await;
    assert_eq!(
        accumulate(&other, &args("r", 100.0, "")).await,
        ok(100.0, false)
    );
    let a = args("r", 1.0, "stalled");
    // The register is updated, then COMMIT never reaches the server: the
    // stranded replica cannot know, and says so.
    proxy.arm(Cut::FreezeAtCommit);
    let err = accumulate(&stranded, &a).await.unwrap_err();
    assert_eq!(proxy.fired(), 1);
    assert_eq!(
        err,
        ServiceError::StoreUnavailable {
            fate: WriteFate::Unknown
        }
    );
    // Its transaction holds the request's row and the register's: the
    // retry and an unrelated write to the same register both wait, until
    // the server ends the silent transaction.
    let unrelated = args("r", 10.0, "neighbour");
    let started = Instant::now();
    let (retry, neighbour) = tokio::join!(accumulate(&other, &a), accumulate(&other, &unrelated));
    released_within_the_bound(started.elapsed());
    assert!(
        matches!(
            retry,
            Ok(Accumulated {
                replayed: false,
                ..
            })
        ),
        "{retry:?}"
    );
    assert!(neighbour.is_ok(), "{neighbour:?}");
    assert_eq!(other.get("r", None).await, Ok(111.0), "each applied once");
    assert_eq!(accumulate(&other, &a).await.map(|x| x.replayed), Ok(true));
}

/// `call`'s output, and when it came since `started`.
async fn timed<T>(started: Instant, call: impl std::future::Future<Output = T>) -> (T, Duration) {
    let out = call.await;
    (out, started.elapsed())
}

/// A store that goes silent mid-use (a partition: sockets open, nothing
/// arrives) holds no call past its caller's remaining deadline, however
/// long the ledger's own per-call bound: a claim, a commit (bounded by the
/// deadline its claim was begun with) and a read, all at once. The ones
/// that sent nothing that could commit say not-applied.
#[tokio::test]
async fn on_a_silent_store_every_call_ends_at_its_callers_deadline() {
    let db = database!("silent_deadlines");
    let proxy = Proxy::start(upstream(&db)).await;
    let l = ledger_with(&db.url_via(proxy.addr), DedupConfig::default(), |c| {
        c.pool_max = 4;
        c.sweep_interval = Duration::from_secs(3600);
        // Far beyond the deadlines below: only they can end the calls.
        c.op_timeout = Duration::from_secs(30);
        c.idle_in_transaction_timeout = IDLE_BOUND;
    })
    .await;
    assert_eq!(
        accumulate(&l, &args("r", 1.0, "warm")).await,
        ok(1.0, false)
    );
    const LEFT: Duration = Duration::from_millis(400);
    let started = Instant::now();
    let held = args("r", 1.0, "held");
    let Begin::Execute(claim) = l.begin(&held, Some(started + LEFT)).await.unwrap() else {
        panic!("executes")
    };
    proxy.freeze();
    let fresh = args("r", 1.0, "fresh");
    let ((begun, t_begin), (committed, t_commit), (read, t_read)) = tokio::join!(
        timed(started, async {
            l.begin(&fresh, Some(started + LEFT)).await.map(|_| ())
        }),
        timed(started, async { claim.commit().await.map(|_| ()) }),
        timed(started, l.get("r", Some(started + LEFT))),
    );
    for (what, took) in [("begin", t_begin), ("commit", t_commit), ("get", t_read)] {
        assert!(
            took >= LEFT - Duration::from_millis(50) && took < LEFT + Duration::from_millis(900),
            "{what} ended after {took:?} on a deadline {LEFT:?} away"
        );
    }
    // Which of the claim and the read got the pooled connection is a race:
    // the one left waiting for a new connection sent nothing (not applied);
    // a claim sent on the frozen one cannot tell whether another replica
    // holds the ID, and answers as a local join would. Neither says applied.
    assert!(
        matches!(
            &begun,
            Err(ServiceError::DeadlineExceeded | ServiceError::StillInFlight { .. })
        ),
        "{begun:?}"
    );
    // COMMIT was never sent: certain not to have applied.
    assert_eq!(committed, Err(ServiceError::DeadlineExceeded));
    assert_eq!(read, Err(ServiceError::DeadlineExceeded));
}

#[tokio::test]
async fn waits_for_a_connection_end_at_the_deadline_or_the_ledgers_limit() {
    let db = database!("pool_bounds");
    let l = ledger_with(&db.url, DedupConfig::default(), |c| {
        c.pool_max = 1;
        c.op_timeout = Duration::from_millis(200);
    })
    .await;
    let held = args("r", 1.0, "holder");
    let Begin::Execute(claim) = l.begin(&held, None).await.unwrap() else {
        panic!("executes")
    };
    // The only connection is held by the claim.
    let other = args("r", 1.0, "other");
    let deadline = Instant::now() + Duration::from_millis(50);
    assert!(matches!(
        l.begin(&other, Some(deadline)).await,
        Err(ServiceError::DeadlineExceeded)
    ));
    assert!(matches!(
        l.begin(&other, None).await,
        Err(ServiceError::StoreUnavailable {
            fate: WriteFate::NotApplied
        })
    ));
    assert!(matches!(
        l.get("r", None).await,
        Err(ServiceError::StoreUnavailable { .. })
    ));
    // A dropped claim does not return its connection mid-transaction: the
    // next call gets a clean one and sees nothing of the claim.
    drop(claim);
    assert_eq!(accumulate(&l, &other).await, ok(1.0, false));
    assert_eq!(accumulate(&l, &held).await, ok(2.0, false));
}

#[tokio::test]
async fn rule_errors_are_recorded_and_replayed() {
    let db = database!("rule_errors");
    let l = ledger(&db).await;
    accumulate(&l, &args("x", f64::MAX, "")).await.unwrap();
    let over = args("x", f64::MAX, "big");
    let first = accumulate(&l, &over).await.unwrap_err();
    assert!(matches!(
        first,
        ServiceError::Calc(CalcError::RegisterOverflow { .. })
    ));
    accumulate(&l, &args("x", -f64::MAX, "")).await.unwrap();
    // The same request would now succeed, but its ID has its answer.
    match l.begin(&over, None).await {
        Ok(Begin::Replay(Err(e))) => assert_eq!(e, first),
        other => panic!("expected a replayed error, got {other:?}"),
    }
    assert_eq!(l.get("x", None).await, Ok(0.0));

    // A full store: REGISTERS_MAX registers, written behind the ledger's
    // back to keep the test fast (the count row is what the ledger reads).
    let client = pg::connect(&db).await;
    let max = abacus::core::REGISTERS_MAX as i64;
    client
        .execute(
            "INSERT INTO abacus_registers (name, value) \
             SELECT 'fill-' || g, 0 FROM generate_series(2, CAST($1 AS BIGINT)) g",
            &[&max],
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE abacus_counters SET n = $1 WHERE name = 'registers'",
            &[&max],
        )
        .await
        .unwrap();
    let new = args("one-too-many", 1.0, "full");
    let full = accumulate(&l, &new).await.unwrap_err();
    assert_eq!(
        full,
        ServiceError::Calc(CalcError::TooManyRegisters {
            max: abacus::core::REGISTERS_MAX
        })
    );
    assert_eq!(accumulate(&l, &new).await.unwrap_err(), full, "replayed");
    assert_eq!(
        accumulate(&l, &args("x", 1.0, "")).await,
        ok(1.0, false),
        "existing ones still work"
    );
    assert_eq!(l.stats().await.unwrap().registers, max as u64);
}

#[tokio::test]
async fn records_die_by_ttl_and_by_rank_and_the_sweeper_deletes_them() {
    let db = database!("retention");
    let clock = ManualClock::new(1_000_000);
    let dedup = DedupConfig {
        entries_max: 3,
        ttl_ms: 10_000,
        ..DedupConfig::default()
    };
    let l = ledger_with(&db.url, dedup, |c| {
        c.clock = RetentionClock::Manual(clock.clone());
        // Only sweep_now() sweeps in this test.
        c.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    for i in 0..5 {
        accumulate(&l, &args("r", 1.0, &format!("id-{i}")))
            .await
            .unwrap();
    }
    // Capacity 3: id-0 and id-1 are dead at once, before any sweep.
    assert_eq!(accumulate(&l, &args("r", 1.0, "id-4")).await, ok(5.0, true));
    assert_eq!(
        accumulate(&l, &args("r", 1.0, "id-1")).await,
        ok(6.0, false),
        "evicted: applies again"
    );
    // Rows: id-0 (#1), id-2 (#3), id-3 (#4), id-4 (#5), id-1 (#6, re-recorded
    // over its dead row): #1 and #3 are beyond the newest three.
    assert_eq!(l.sweep_now().await, Ok(2));
    assert_eq!(l.stats().await.unwrap().dedup_evictions, 2);
    clock.advance(Duration::from_millis(9_999));
    assert_eq!(
        accumulate(&l, &args("r", 1.0, "id-3")).await,
        ok(4.0, true),
        "just under the TTL"
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        accumulate(&l, &args("r", 1.0, "id-3")).await,
        ok(7.0, false),
        "at the TTL: applies again"
    );
    let client = pg::connect(&db).await;
    // id-4 and id-1 expired; id-3's row was taken over by its re-execution.
    assert_eq!(l.sweep_now().await, Ok(2), "the expired ones");
    let left: i64 = client
        .query_one("SELECT count(*) FROM abacus_requests", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1);
}

#[tokio::test]
async fn three_replicas_starting_at_once_share_one_schema() {
    let db = database!("concurrent_start");
    for attempt in 0..3 {
        let db = if attempt == 0 {
            db.clone()
        } else {
            pg::fresh_database("concurrent_start").await.unwrap()
        };
        let starts = futures_util::future::join_all((0..3).map(|_| {
            PgLedger::connect(
                config(&db.url),
                DedupConfig::default(),
                EventSink::default(),
            )
        }))
        .await;
        let ledgers: Vec<PgLedger> = starts
            .into_iter()
            .map(|s| s.unwrap_or_else(|e| panic!("a concurrent start failed: {e}")))
            .collect();
        let client = pg::connect(&db).await;
        let versions: Vec<i32> = client
            .query(
                "SELECT version FROM abacus_schema_version ORDER BY version",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
        // And the schema works from each of them.
        for (i, l) in ledgers.iter().enumerate() {
            assert_eq!(
                accumulate(l, &args("r", 1.0, &format!("start-{i}"))).await,
                ok(i as f64 + 1.0, false)
            );
        }
        // A fourth start on the migrated schema is a no-op.
        let again = PgLedger::connect(
            config(&db.url),
            DedupConfig::default(),
            EventSink::default(),
        );
        assert!(again.await.is_ok());
    }
}

#[tokio::test]
async fn a_schema_newer_than_the_build_is_refused_by_name() {
    let db = database!("schema_too_new");
    drop(ledger(&db).await);
    let client = pg::connect(&db).await;
    client
        .execute(
            "INSERT INTO abacus_schema_version (version) VALUES ($1)",
            &[&(SCHEMA_VERSION + 1)],
        )
        .await
        .unwrap();
    let err = PgLedger::connect(
        config(&db.url),
        DedupConfig::default(),
        EventSink::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("newer than this build"), "{err}");
}

#[tokio::test]
async fn start_up_failures_name_what_to_fix_without_the_password() {
    let db = database!("start_errors");
    let (head, tail) = db.url.rsplit_once('@').unwrap();
    let (user_part, password) = head.rsplit_once(':').unwrap();
    let bad_password = format!("{user_part}:not-{password}@{tail}");
    let err = PgLedger::connect(
        config(&bad_password),
        DedupConfig::default(),
        EventSink::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("refused the login") && err.contains("password"),
        "{err}"
    );
    assert!(!err.contains(password), "{err}");

    let no_db = db.url.replace(&db.name, "no_such_database");
    let err = PgLedger::connect(config(&no_db), DedupConfig::default(), EventSink::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"no_such_database\" does not exist"), "{err}");

    let closed_port = ClosedPort::new();
    let closed = closed_port.addr();
    let err = PgLedger::connect(
        config(&db.url_via(closed)),
        DedupConfig::default(),
        EventSink::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cannot connect") && err.contains(&closed.to_string()),
        "{err}"
    );
    assert!(!err.contains(password), "{err}");
}

/// The ledger is usable as the server's `Arc<dyn Ledger>`.
#[tokio::test]
async fn the_ledger_serves_behind_the_seam() {
    let db = database!("dyn_ledger");
    let l: Arc<dyn Ledger> = Arc::new(ledger(&db).await);
    assert_eq!(l.backend(), store::Backend::Postgres);
    assert_eq!(accumulate(&*l, &args("r", 1.0, "a")).await, ok(1.0, false));
}
