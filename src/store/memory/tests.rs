//! Unit tests of the begin/claim/commit protocol. Time is tokio's paused
//! clock (`start_paused`), so joins, deadlines and TTLs are exact and the
//! tests never sleep for real.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::{Instant, sleep};

use super::*;
use crate::error::CalcError;

/// A state whose events are collected as rendered trace lines.
fn state_with(dedup: DedupConfig) -> (MemoryLedger, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = {
        let lines = Arc::clone(&lines);
        EventSink::with_hook(move |e| lines.lock().unwrap().push(e.to_string()))
    };
    (MemoryLedger::new(dedup, sink), lines)
}

fn state() -> (MemoryLedger, Arc<Mutex<Vec<String>>>) {
    state_with(DedupConfig::default())
}

use crate::store::test_args as args;

fn kinds(lines: &Mutex<Vec<String>>) -> Vec<String> {
    lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_owned())
        .collect()
}

fn ok(value: f64, replayed: bool) -> Result<Accumulated, ServiceError> {
    Ok(Accumulated { value, replayed })
}

#[tokio::test(start_paused = true)]
async fn a_repeat_is_replayed_not_applied() {
    let (s, lines) = state();
    let a = args("x", 2.5, "id-1");
    assert_eq!(s.accumulate(&a, None).await, ok(2.5, false));
    assert_eq!(s.accumulate(&a, None).await, ok(2.5, true));
    assert_eq!(
        s.accumulate(&args("x", 1.0, "id-2"), None).await,
        ok(3.5, false)
    );
    assert_eq!(
        s.accumulate(&a, None).await,
        ok(2.5, true),
        "first value, not the current one"
    );
    assert_eq!(s.get("x", None).await, Ok(3.5));
    let st = s.stats();
    assert_eq!((st.applied, st.dedup_entries, st.dedup_hits), (2, 2, 2));
    assert_eq!(
        kinds(&lines),
        ["applied", "dedup-hit", "applied", "dedup-hit"]
    );
}

#[tokio::test(start_paused = true)]
async fn requests_without_id_are_not_deduplicated() {
    let (s, _) = state();
    let a = args("x", 1.0, "");
    assert_eq!(s.accumulate(&a, None).await, ok(1.0, false));
    assert_eq!(s.accumulate(&a, None).await, ok(2.0, false));
    assert_eq!(s.stats().dedup_entries, 0);
}

#[tokio::test(start_paused = true)]
async fn a_reused_id_with_another_payload_is_refused() {
    let (s, lines) = state();
    s.accumulate(&args("x", 1.0, "id"), None).await.unwrap();
    for other in [
        args("x", 2.0, "id"),
        args("y", 1.0, "id"),
        args("x", -0.0, "id"),
    ] {
        let err = s.accumulate(&other, None).await.unwrap_err();
        assert!(matches!(err, ServiceError::RequestIdReused { .. }), "{err}");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert_eq!(err.pushback_ms(), Some(-1));
    }
    assert_eq!(s.get("x", None).await, Ok(1.0));
    assert_eq!(s.stats().dedup_mismatches, 3);
    assert_eq!(
        kinds(&lines).last().map(String::as_str),
        Some("dedup-mismatch")
    );
}

#[tokio::test(start_paused = true)]
async fn invalid_ids_and_payloads_are_refused_before_claiming() {
    let (s, _) = state();
    let bad_id = args("x", 1.0, "a\u{7}b");
    assert!(matches!(
        s.accumulate(&bad_id, None).await,
        Err(ServiceError::InvalidRequestId(_))
    ));
    let long_id = args("x", 1.0, &"i".repeat(129));
    assert!(matches!(
        s.accumulate(&long_id, None).await,
        Err(ServiceError::InvalidRequestId(_))
    ));
    // A payload error is not an execution: nothing recorded, so the same ID
    // may carry a valid payload afterwards.
    let nan = args("x", f64::NAN, "id");
    assert!(matches!(
        s.accumulate(&nan, None).await,
        Err(ServiceError::Calc(CalcError::NonFiniteOperand { .. }))
    ));
    assert_eq!(s.stats().dedup_entries, 0);
    assert_eq!(
        s.accumulate(&args("x", 1.0, "id"), None).await,
        ok(1.0, false)
    );
}

#[tokio::test(start_paused = true)]
async fn a_state_dependent_refusal_is_recorded_and_replayed() {
    let (s, _) = state();
    s.accumulate(&args("x", f64::MAX, ""), None).await.unwrap();
    let over = args("x", f64::MAX, "big");
    let first = s.accumulate(&over, None).await.unwrap_err();
    assert!(matches!(
        first,
        ServiceError::Calc(CalcError::RegisterOverflow { .. })
    ));
    // The register changes so that the same request would now succeed...
    s.accumulate(&args("x", -f64::MAX, ""), None).await.unwrap();
    // ...but the ID already has its answer.
    match s.begin(&over, None).await {
        Ok(Begin::Replay(Err(e))) => assert_eq!(e, first),
        other => panic!("expected a replayed error, got {other:?}"),
    }
    assert_eq!(s.get("x", None).await, Ok(0.0));
    assert_eq!(s.stats().applied, 2);
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_in_flight_joins_and_replays() {
    let (s, lines) = state();
    let a = args("x", 5.0, "slow");
    let Ok(Begin::Execute(claim)) = s.begin(&a, None).await else {
        panic!("first attempt must execute")
    };
    let first = async {
        sleep(Duration::from_millis(100)).await; // the injected delay
        claim.commit().await
    };
    let started = Instant::now();
    let duplicate = async {
        let r = s.accumulate(&a, None).await;
        (r, started.elapsed())
    };
    let (first, (dup, waited)) = tokio::join!(first, duplicate);
    assert_eq!(first, ok(5.0, false));
    assert_eq!(dup, ok(5.0, true));
    assert_eq!(waited, Duration::from_millis(100), "answered at the commit");
    assert_eq!(s.get("x", None).await, Ok(5.0));
    assert_eq!(s.stats().applied, 1);
    assert_eq!(kinds(&lines), ["dedup-joined", "applied", "dedup-hit"]);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_claim_is_taken_over_by_one_waiter() {
    let (s, _) = state();
    let a = args("x", 1.0, "flaky");
    let Ok(Begin::Execute(claim)) = s.begin(&a, None).await else {
        panic!("first attempt must execute")
    };
    let first = async {
        sleep(Duration::from_millis(50)).await;
        drop(claim); // cancelled, or failed before applying
    };
    // Two duplicates wait; one takes over and executes, the other joins it
    // and gets the replay.
    let (_, r1, r2) = tokio::join!(first, s.accumulate(&a, None), s.accumulate(&a, None));
    let mut got = [r1.unwrap(), r2.unwrap()];
    got.sort_by_key(|r| r.replayed);
    assert_eq!(
        got,
        [
            Accumulated {
                value: 1.0,
                replayed: false
            },
            Accumulated {
                value: 1.0,
                replayed: true
            }
        ]
    );
    assert_eq!(s.get("x", None).await, Ok(1.0));
    assert_eq!(s.stats().applied, 1);
    assert_eq!(s.stats().dedup_in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gives_up_at_its_deadline_without_claiming_not_applied() {
    let (s, _) = state_with(DedupConfig {
        join_wait_ms_max: 1_000,
        ..DedupConfig::default()
    });
    let a = args("x", 1.0, "stuck");
    let Ok(Begin::Execute(claim)) = s.begin(&a, None).await else {
        panic!("first attempt must execute")
    };
    // Its own deadline first...
    let t0 = Instant::now();
    let err = s
        .accumulate(&a, Some(t0 + Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert_eq!(t0.elapsed(), Duration::from_millis(200));
    assert!(matches!(err, ServiceError::StillInFlight { .. }));
    assert_eq!(err.code(), tonic::Code::Aborted);
    assert!(
        !err.known_not_applied(),
        "the first execution may still apply"
    );
    // ...or the server's join limit.
    let t1 = Instant::now();
    assert!(s.accumulate(&a, None).await.is_err());
    assert_eq!(t1.elapsed(), Duration::from_millis(1_000));
    // The claim is intact: committing it still works, once.
    assert_eq!(claim.commit().await, ok(1.0, false));
    assert_eq!(s.accumulate(&a, None).await, ok(1.0, true));
}

#[tokio::test(start_paused = true)]
async fn a_reuse_while_in_flight_is_refused_at_once() {
    let (s, _) = state();
    let a = args("x", 1.0, "id");
    let Ok(Begin::Execute(_claim)) = s.begin(&a, None).await else {
        panic!("first attempt must execute")
    };
    let t0 = Instant::now();
    let err = s.accumulate(&args("x", 9.0, "id"), None).await.unwrap_err();
    assert!(matches!(err, ServiceError::RequestIdReused { .. }));
    assert_eq!(t0.elapsed(), Duration::ZERO);
    assert_eq!(s.stats().dedup_mismatches, 1);
}

#[tokio::test(start_paused = true)]
async fn in_flight_ids_are_bounded() {
    let (s, _) = state_with(DedupConfig {
        in_flight_max: 2,
        ..DedupConfig::default()
    });
    let (a, b, c) = (
        args("x", 1.0, "a"),
        args("x", 1.0, "b"),
        args("x", 1.0, "c"),
    );
    let ca = s.begin(&a, None).await.unwrap();
    let _cb = s.begin(&b, None).await.unwrap();
    let err = s.begin(&c, None).await.unwrap_err();
    assert!(matches!(err, ServiceError::Overloaded { limit: 2, .. }));
    assert!(err.pushback_ms().is_some_and(|ms| ms > 0));
    drop(ca);
    assert!(matches!(s.begin(&c, None).await, Ok(Begin::Execute(_))));
}

#[tokio::test(start_paused = true)]
async fn retention_is_bounded_and_a_late_retry_executes_again() {
    // The documented price of bounded memory: once a record is evicted
    // (capacity or TTL), a retry of its request applies a second time.
    let (s, lines) = state_with(DedupConfig {
        entries_max: 2,
        ttl_ms: 1_000,
        ..DedupConfig::default()
    });
    for id in ["a", "b", "c"] {
        s.accumulate(&args("x", 1.0, id), None).await.unwrap();
    }
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("dedup-evicted id=#") && l.ends_with(" (capacity)"))
    );
    assert_eq!(
        s.accumulate(&args("x", 1.0, "a"), None).await,
        ok(4.0, false)
    );
    assert_eq!(
        s.accumulate(&args("x", 1.0, "c"), None).await,
        ok(3.0, true)
    );
    sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        s.accumulate(&args("x", 1.0, "c"), None).await,
        ok(5.0, false)
    );
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("dedup-evicted id=#") && l.ends_with(" (ttl)"))
    );
    let st = s.stats();
    // Everything older than the TTL went; only the new "c" is retained.
    assert_eq!((st.dedup_entries, st.applied), (1, 5));
    assert!(st.dedup_evictions >= 3);
}

#[tokio::test(start_paused = true)]
async fn dedup_off_applies_every_repeat_and_long_deadlines_are_flagged() {
    use std::sync::atomic::Ordering;
    let (s, _) = state_with(DedupConfig {
        enabled: false,
        ..DedupConfig::default()
    });
    let a = args("x", 1.0, "id-1");
    assert_eq!(s.accumulate(&a, None).await, ok(1.0, false));
    assert_eq!(s.accumulate(&a, None).await, ok(2.0, false));

    let (s, _) = state();
    let short = Instant::now() + Duration::from_secs(5);
    s.accumulate(&args("x", 1.0, "id-1"), Some(short))
        .await
        .unwrap();
    assert!(!s.ttl_warned.load(Ordering::Relaxed));
    let beyond_ttl = Instant::now() + DedupConfig::default().ttl() + Duration::from_secs(1);
    s.accumulate(&args("x", 1.0, "id-2"), Some(beyond_ttl))
        .await
        .unwrap();
    assert!(s.ttl_warned.load(Ordering::Relaxed));
}

#[tokio::test(start_paused = true)]
async fn the_same_id_from_two_identities_names_two_requests() {
    let (s, _) = state();
    let from = |identity: Option<&str>, peer: &str| AccumulateArgs {
        caller: store::Caller {
            identity: identity.map(Into::into),
            peer: Some(peer.parse().unwrap()),
        },
        ..args("x", 1.0, "id-1")
    };
    assert_eq!(
        s.accumulate(&from(Some("alice"), "10.0.0.1"), None).await,
        ok(1.0, false)
    );
    assert_eq!(
        s.accumulate(&from(Some("bob"), "10.0.0.1"), None).await,
        ok(2.0, false),
        "another identity's ID is another request"
    );
    assert_eq!(
        s.accumulate(&from(Some("alice"), "10.0.0.2"), None).await,
        ok(1.0, true),
        "a retry from another address is the same request"
    );
    // Without authentication every caller shares one scope.
    assert_eq!(
        s.accumulate(&from(None, "10.0.0.3"), None).await,
        ok(3.0, false)
    );
    assert_eq!(
        s.accumulate(&from(None, "10.0.0.4"), None).await,
        ok(3.0, true)
    );
}

#[tokio::test(start_paused = true)]
async fn a_replay_after_delete_answers_the_first_outcome_and_does_not_recreate_the_register() {
    let (s, _) = state();
    let first = args("r", 100.0, "id-1");
    assert_eq!(s.accumulate(&first, None).await, ok(100.0, false));
    assert_eq!(s.delete("r", None).await, Ok(Some(100.0)));
    // The retry of the call applied before the delete: its first outcome,
    // marked replayed; the register stays deleted.
    assert_eq!(s.accumulate(&first, None).await, ok(100.0, true));
    assert_eq!(
        s.get("r", None).await,
        Err(ServiceError::Calc(CalcError::UnknownRegister("r".into())))
    );
    assert_eq!(s.stats().registers, 0);
    // Deleting again is harmless; a new call creates the register afresh.
    assert_eq!(s.delete("r", None).await, Ok(None));
    assert_eq!(
        s.accumulate(&args("r", 1.0, "id-2"), None).await,
        ok(1.0, false)
    );
    assert_eq!(
        s.delete("a\u{202E}b", None).await,
        Err(ServiceError::Calc(CalcError::RegisterNameForbiddenChar {
            ch: '\u{202E}',
            position: 2
        }))
    );
}

#[tokio::test(start_paused = true)]
async fn registers_are_created_within_a_quota_per_client() {
    use crate::store::Caller;
    let (s, _) = state_with(DedupConfig {
        registers_per_client_max: 2,
        ..DedupConfig::default()
    });
    let peer = |ip: &str| Caller {
        identity: None,
        peer: Some(ip.parse().unwrap()),
    };
    let from = |caller: &Caller, register: &str, id: &str| AccumulateArgs {
        caller: caller.clone(),
        ..args(register, 1.0, id)
    };
    let (squatter, other) = (peer("10.0.0.1"), peer("10.0.0.2"));
    assert_eq!(
        s.accumulate(&from(&squatter, "a", "1"), None).await,
        ok(1.0, false)
    );
    assert_eq!(
        s.accumulate(&from(&squatter, "b", "2"), None).await,
        ok(1.0, false)
    );
    let third = from(&squatter, "c", "3");
    let refused = s.accumulate(&third, None).await.unwrap_err();
    assert_eq!(
        refused,
        ServiceError::Calc(CalcError::RegisterQuota { held: 2, max: 2 })
    );
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.known_not_applied());
    assert_eq!(refused.pushback_ms(), Some(-1));
    let text = refused.to_string();
    assert!(
        text.contains("--registers-per-client-max 2") && text.contains("delete"),
        "names the limit and the remedy: {text}"
    );
    // Its existing registers still take updates; another client still
    // creates registers.
    assert_eq!(
        s.accumulate(&from(&squatter, "a", "4"), None).await,
        ok(2.0, false)
    );
    assert_eq!(
        s.accumulate(&from(&other, "c", "5"), None).await,
        ok(1.0, false)
    );
    // The refusal was not recorded: once the squatter deletes a register,
    // the same request ID executes.
    assert_eq!(s.delete("b", None).await, Ok(Some(1.0)));
    assert_eq!(s.accumulate(&third, None).await, ok(2.0, false));
    // "c" was the other client's: updating it costs the squatter nothing.
    assert_eq!(
        s.accumulate(&from(&squatter, "d", "6"), None).await,
        ok(1.0, false)
    );
}
