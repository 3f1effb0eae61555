//! One client cannot flush another's dedup records: the scenario of the
//! adversarial report, on every backend. With `entries_max` 1,000, a
//! victim applies +100 under a request ID; an attacker (another peer)
//! sends 1,001 fresh IDs; the victim's retry under its original ID must
//! replay, and the register stay at 100. Charged to one client, the same
//! traffic does flush the record (the negative control).

use std::net::IpAddr;

use abacus::{
    store::{
        self, AccumulateArgs, Accumulated, Caller, DedupConfig, Ledger, MemoryLedger,
        postgres::{PgConfig, PgLedger},
        redb::RedbLedger,
    },
    trace::EventSink,
};

use crate::support::{pg, temp_dir::TempDir};

const ENTRIES_MAX: usize = 1_000;

fn limits() -> DedupConfig {
    DedupConfig {
        entries_max: ENTRIES_MAX,
        ..DedupConfig::default()
    }
}

fn peer(ip: &str) -> Caller {
    Caller {
        identity: None,
        peer: Some(ip.parse::<IpAddr>().expect("an IP address")),
    }
}

fn call(caller: &Caller, register: &str, delta: f64, id: &str) -> AccumulateArgs {
    AccumulateArgs {
        register: register.into(),
        delta,
        request_id: id.into(),
        caller: caller.clone(),
    }
}

/// Plays the scenario; returns the victim's retry and the register after.
async fn flush(ledger: &dyn Ledger, victim: &Caller, attacker: &Caller) -> (Accumulated, f64) {
    let first = call(victim, "victim", 100.0, "victim-1");
    let applied = store::accumulate(ledger, &first, None)
        .await
        .expect("applied");
    assert_eq!(
        applied,
        Accumulated {
            value: 100.0,
            replayed: false
        }
    );
    for i in 0..=ENTRIES_MAX {
        let fresh = call(attacker, "attacker", 1.0, &format!("attack-{i}"));
        store::accumulate(ledger, &fresh, None)
            .await
            .expect("attack applied");
    }
    let retry = store::accumulate(ledger, &first, None)
        .await
        .expect("retry");
    let value = ledger.get("victim", None).await.expect("read");
    (retry, value)
}

fn assert_isolated(backend: &str, (retry, value): (Accumulated, f64)) {
    assert_eq!(
        retry,
        Accumulated {
            value: 100.0,
            replayed: true
        },
        "{backend}: the victim's retry must replay its first outcome"
    );
    assert_eq!(value, 100.0, "{backend}: the register must stay at 100");
}

#[tokio::test]
async fn an_attackers_fresh_ids_do_not_flush_a_victims_record_in_memory() {
    let ledger = MemoryLedger::new(limits(), EventSink::default());
    let seen = flush(&ledger, &peer("10.0.0.1"), &peer("10.0.0.2")).await;
    assert_isolated("memory", seen);
    let stats = ledger.stats();
    assert_eq!(stats.dedup_entries, ENTRIES_MAX as u64);
    assert_eq!(
        stats.dedup_evictions_early, 2,
        "the attacker's own oldest records, inside their TTL"
    );
}

/// Negative control: the same traffic from one client flushes the record,
/// so the tests above can fail.
#[tokio::test]
async fn negative_control_one_clients_traffic_does_flush_its_own_record() {
    let ledger = MemoryLedger::new(limits(), EventSink::default());
    let same = peer("10.0.0.1");
    let (retry, value) = flush(&ledger, &same, &same).await;
    assert!(!retry.replayed, "applied again once its record was evicted");
    assert_eq!(value, 200.0);
}

#[tokio::test]
async fn an_attackers_fresh_ids_do_not_flush_a_victims_record_in_redb_across_a_restart() {
    let dir = TempDir::new("isolation");
    let (victim, attacker) = (peer("10.0.0.1"), peer("10.0.0.2"));
    {
        let ledger = RedbLedger::open(limits(), EventSink::default(), dir.path()).expect("open");
        assert_isolated("redb", flush(&ledger, &victim, &attacker).await);
    }
    // Reloaded, every record keeps its owner: the attacker's next fresh IDs
    // still evict only its own.
    let ledger = RedbLedger::open(limits(), EventSink::default(), dir.path()).expect("reopen");
    for i in 0..10 {
        let fresh = call(&attacker, "attacker", 1.0, &format!("after-{i}"));
        store::accumulate(&ledger, &fresh, None)
            .await
            .expect("attack applied");
    }
    let retry = store::accumulate(&ledger, &call(&victim, "victim", 100.0, "victim-1"), None)
        .await
        .expect("retry");
    assert_isolated(
        "redb after a restart",
        (retry, ledger.get("victim", None).await.expect("read")),
    );
}

#[tokio::test]
async fn an_attackers_fresh_ids_do_not_flush_a_victims_record_in_postgres() {
    let Some(db) = pg::fresh_database("isolation").await else {
        return;
    };
    let ledger = PgLedger::connect(
        PgConfig::from_url(&db.url).expect("test URL"),
        limits(),
        EventSink::default(),
    )
    .await
    .expect("PostgreSQL ledger");
    assert_isolated(
        "postgres",
        flush(&ledger, &peer("10.0.0.1"), &peer("10.0.0.2")).await,
    );
}
