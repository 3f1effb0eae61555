//! Section 7: three replicas over one shared ledger (one in-memory ledger
//! served by three embedded servers, as three `abacus serve --store
//! postgres://…` share one database). One answers 100 ms late: the first
//! call it gets is rescued by a hedge to another replica, and the balancer
//! steers away from it. Then another replica stops: its calls fail over,
//! its breaker ejects it, and once it is back its probe readmits it. The
//! register shows every `Accumulate` applied once, whichever replicas its
//! attempts reached.
//!
//! Waits are event-driven: the restart waits for the stopped server's task
//! to end, the readmission for the breaker's own `probe_due()`.

use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio_stream::{StreamExt, wrappers::TcpListenerStream};

use tokio::{sync::oneshot, task::JoinHandle};

use super::{
    embedded,
    tally::{Count, Tally},
};
use crate::{
    client::{BreakerConfig, Client, ClientConfig, Delivery, HedgeConfig, breaker::State},
    server::{self, DedupConfig, FaultConfig, FaultSwitch, ServerConfig},
    store::{self, MemoryLedger as Ledger},
    trace::{Event, EventSink},
};

/// How late the slow replica answers.
const SLOW_MS: u64 = 100;
/// The hedging delay of this section's client.
const HEDGE_MS: u64 = 20;
/// A hang guard on the waits below: they end on events; this only turns
/// one that never comes into a surprise instead of a hung demo.
const WAIT_MAX: Duration = Duration::from_secs(30);
/// Calls a phase may take before its awaited event counts as missing.
const PHASE_CALLS_MAX: u32 = 60;

/// One embedded replica.
struct Replica {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), server::ServeError>>,
    /// A second handle on every connection it accepted, to cut them all
    /// when it is stopped: a graceful stop would let the connections it
    /// has (the client's, with its health watches open) live on.
    accepted: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Replica {
    /// Serves `ledger` on `addr` (port 0: any) with `faults`.
    async fn start(
        addr: SocketAddr,
        ledger: Arc<dyn store::Ledger>,
        faults: FaultConfig,
        switch: FaultSwitch,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let config = ServerConfig {
            faults,
            fault_switch: switch,
            ..ServerConfig::default()
        };
        let accepted: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let keep = Arc::clone(&accepted);
        let incoming = TcpListenerStream::new(listener).map(move |conn| {
            let conn = conn?.into_std()?;
            keep.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(conn.try_clone()?);
            tokio::net::TcpStream::from_std(conn)
        });
        let task = tokio::spawn(server::serve_with_ledger(config, ledger, incoming, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            stop: Some(stop),
            task,
            accepted,
        })
    }

    /// A replica without faults.
    async fn healthy(addr: SocketAddr, ledger: Arc<dyn store::Ledger>) -> std::io::Result<Self> {
        Self::start(addr, ledger, FaultConfig::default(), FaultSwitch::default()).await
    }

    /// Stops accepting and cuts its connections, as a crash would; returns
    /// once the server has stopped (or after the hang guard).
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for conn in self
            .accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
        let _ = tokio::time::timeout(WAIT_MAX, &mut self.task).await;
        self.task.abort();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs the section with the user's policy, plus the section's hedging
/// and breaker, in exactly-once mode (the point is exactly-once across
/// replicas).
pub(super) async fn section(
    t: &mut Tally,
    seed: u64,
    policy: &ClientConfig,
) -> std::io::Result<()> {
    println!(
        "\n7. Replicas: three servers over one shared ledger; one answers {SLOW_MS} ms late, then another stops"
    );
    let ledger: Arc<dyn store::Ledger> =
        Arc::new(Ledger::new(DedupConfig::default(), EventSink::log_only()));
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let slow = FaultSwitch::default();
    let r1 = Replica::healthy(any, Arc::clone(&ledger)).await?;
    let r2 = Replica::healthy(any, Arc::clone(&ledger)).await?;
    let r3 = Replica::start(
        any,
        Arc::clone(&ledger),
        FaultConfig {
            delay_ms: SLOW_MS..=SLOW_MS,
            seed,
            ..FaultConfig::default()
        },
        slow.clone(),
    )
    .await?;
    let (a1, a2, a3) = (r1.addr, r2.addr, r3.addr);
    println!(
        "   replica-1 {a1}, replica-2 {a2}, replica-3 {a3} (abacus serve --delay-ms {SLOW_MS})"
    );
    println!("   client: --addr {a1},{a2},{a3} --hedge-delay-ms {HEDGE_MS} --hedge-attempts 2");
    let config = ClientConfig {
        mode: Delivery::ExactlyOnce,
        hedge: Some(HedgeConfig {
            attempts_max: 2,
            delay: Duration::from_millis(HEDGE_MS),
            non_fatal_codes: vec![tonic::Code::Unavailable],
        }),
        breaker: Some(BreakerConfig {
            consecutive_failures_max: Some(3),
            open_ms: 300,
            ..BreakerConfig::default()
        }),
        events: EventSink::with_hook(|e| match e {
            Event::HedgeSent { .. }
            | Event::HedgeWon { .. }
            | Event::HedgeCancelled { .. }
            | Event::AttemptFailed { .. }
            | Event::BreakerTransition { .. }
            | Event::EndpointHealth { .. }
            | Event::GaveUp { .. } => println!("      · {e}"),
            _ => {}
        }),
        ..policy.clone()
    };
    let endpoints = [a1, a2, a3].map(|a| (a.to_string(), embedded::channel(a)));
    let client = Client::with_endpoints(endpoints, config);
    let mut seen = Observed::default();

    println!("   a. replica-3 is slow: a call that lands on it is hedged to another replica");
    let hedges_won = |c: &Client| c.counters().map_or(0, |c| c.hedges_won);
    // New replicas are tried first (no estimate yet): replica-3 gets one
    // of the first calls, whose hedge wins 20 ms in.
    for i in 0..PHASE_CALLS_MAX {
        let a = f64::from(i);
        match client.add(a, 1.0).await {
            Ok(v) => println!("     add({a}, 1) = {v}"),
            Err(e) => seen.failed(format!("add({a}, 1): {e}")),
        }
        if hedges_won(&client) > 0 {
            break;
        }
    }
    seen.hedges_won = hedges_won(&client);
    for _ in 0..8 {
        accumulate(&client, &mut seen).await;
    }
    let slow_share = share(&client, a3);
    println!(
        "     {} hedge(s) won; replica-3 got {slow_share} of the attempts (p2c steers away once it has measured it)",
        seen.hedges_won
    );
    slow.turn_off();

    println!("   b. replica-2 stops: its calls fail over, its breaker ejects it");
    let breaker = client.balance().and_then(|b| b.breaker(&a2.to_string()));
    r2.stop().await;
    for i in 0..PHASE_CALLS_MAX {
        if breaker.as_ref().is_some_and(|b| b.state() == State::Open) {
            seen.ejected = true;
            break;
        }
        let a = f64::from(100 + i);
        if let Err(e) = client.add(a, 1.0).await {
            seen.failed(format!("add({a}, 1): {e}"));
        }
        accumulate(&client, &mut seen).await;
    }

    println!(
        "   c. replica-2 is back on {a2}: once its breaker's open period is over, a probe readmits it"
    );
    let r2 = Replica::healthy(a2, Arc::clone(&ledger)).await?;
    if let Some(b) = &breaker {
        seen.probe_due = tokio::time::timeout(WAIT_MAX, b.probe_due()).await.is_ok();
    }
    let answered = |c: &Client| {
        c.endpoints()
            .into_iter()
            .find(|e| e.name == a2.to_string())
            .map_or(0, |e| e.counters.answered)
    };
    let before = answered(&client);
    for i in 0..PHASE_CALLS_MAX {
        let a = f64::from(200 + i);
        if let Err(e) = client.add(a, 1.0).await {
            seen.failed(format!("add({a}, 1): {e}"));
        }
        if breaker.as_ref().is_some_and(|b| b.state() == State::Closed)
            && answered(&client) > before
        {
            seen.readmitted = true;
            break;
        }
    }
    seen.register = client.get("replicas").await.ok();
    let verdict = judge(&seen);
    println!("   => {verdict}");
    t.count(verdict.count());
    for e in client.endpoints() {
        println!(
            "   {}: {} attempts, {} answered, {} failed, {} cancelled; breaker {}",
            e.name,
            e.counters.attempts,
            e.counters.answered,
            e.counters.failed,
            e.counters.cancelled,
            e.breaker.map_or("none", State::name)
        );
    }
    drop((r1, r2, r3));
    Ok(())
}

/// One exactly-once `Accumulate` of 1 to the section's register.
async fn accumulate(client: &Client, seen: &mut Observed) {
    seen.intended += 1.0;
    match client.accumulate("replicas", 1.0).await {
        Ok((v, replayed)) => {
            println!(
                "     replicas += 1 -> {v}{}",
                if replayed { " (replayed)" } else { "" }
            )
        }
        Err(e) => {
            seen.failed(format!("accumulate: {e}"));
            seen.intended -= 1.0;
        }
    }
}

/// "k of n" attempts that went to `addr`.
fn share(client: &Client, addr: SocketAddr) -> String {
    let all = client.endpoints();
    let total: u64 = all.iter().map(|e| e.counters.attempts).sum();
    let mine = all
        .iter()
        .find(|e| e.name == addr.to_string())
        .map_or(0, |e| e.counters.attempts);
    format!("{mine} of {total}")
}

/// What the section saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Observed {
    /// Calls that failed (none should: there is always a replica).
    pub(super) failures: Vec<String>,
    /// Hedged calls a hedge won.
    pub(super) hedges_won: u64,
    /// Replica-2's breaker opened while it was down.
    pub(super) ejected: bool,
    /// Its open period ended within the hang guard.
    pub(super) probe_due: bool,
    /// Its breaker closed again and it answered calls.
    pub(super) readmitted: bool,
    /// The register at the end (`None` if it could not be read).
    pub(super) register: Option<f64>,
    /// Acknowledged increments.
    pub(super) intended: f64,
}

impl Observed {
    fn failed(&mut self, what: String) {
        println!("     FAILED: {what}");
        self.failures.push(what);
    }
}

/// Whether the replicas did their job.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Verdict {
    /// Every call succeeded; hedges won over the slow replica; the stopped
    /// one was ejected and readmitted; each Accumulate applied once.
    Survived {
        /// Hedges won.
        hedges_won: u64,
        /// The register.
        register: f64,
    },
    /// Some calls failed although a replica was always up.
    CallsFailed(Vec<String>),
    /// No hedge won while a replica was slow.
    NoHedgeWon,
    /// The register is not the sum of the acknowledged increments.
    Register {
        /// What it reads (`None`: unreadable).
        got: Option<f64>,
        /// The acknowledged sum.
        intended: f64,
    },
    /// The stopped replica's breaker never opened.
    NeverEjected,
    /// Its open period did not end within the hang guard.
    NeverDue,
    /// It was not readmitted after it came back.
    NeverReadmitted,
}

/// Judges the section from what it saw.
pub(super) fn judge(seen: &Observed) -> Verdict {
    if !seen.failures.is_empty() {
        return Verdict::CallsFailed(seen.failures.clone());
    }
    if seen.register != Some(seen.intended) {
        return Verdict::Register {
            got: seen.register,
            intended: seen.intended,
        };
    }
    if seen.hedges_won == 0 {
        return Verdict::NoHedgeWon;
    }
    if !seen.ejected {
        return Verdict::NeverEjected;
    }
    if !seen.probe_due {
        return Verdict::NeverDue;
    }
    if !seen.readmitted {
        return Verdict::NeverReadmitted;
    }
    Verdict::Survived {
        hedges_won: seen.hedges_won,
        register: seen.intended,
    }
}

impl Verdict {
    /// How it counts in the summary.
    pub(super) fn count(&self) -> Count {
        match self {
            Self::Survived { .. } => Count::Ok,
            _ => Count::Surprise(format!("replicas: {self}")),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Survived {
                hedges_won,
                register,
            } => write!(
                f,
                "every call succeeded: {hedges_won} hedge(s) won over the slow replica, the stopped one was ejected and readmitted by its probe, and the register reads {register}: each Accumulate applied once across replicas."
            ),
            Self::CallsFailed(what) => {
                write!(f, "{} call(s) failed: {}", what.len(), what.join("; "))
            }
            Self::NoHedgeWon => f.write_str("no hedge won while a replica was slow"),
            Self::Register { got, intended } => match got {
                Some(v) => write!(f, "the register reads {v}, {intended} acknowledged"),
                None => write!(
                    f,
                    "the register could not be read ({intended} acknowledged)"
                ),
            },
            Self::NeverEjected => f.write_str("the stopped replica's breaker never opened"),
            Self::NeverDue => write!(
                f,
                "its breaker did not come due for a probe within {} s",
                WAIT_MAX.as_secs()
            ),
            Self::NeverReadmitted => {
                f.write_str("the replica was not readmitted after it came back")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn survived() -> Observed {
        Observed {
            failures: Vec::new(),
            hedges_won: 2,
            ejected: true,
            probe_due: true,
            readmitted: true,
            register: Some(20.0),
            intended: 20.0,
        }
    }

    #[test]
    fn a_run_that_showed_everything_survived() {
        let verdict = judge(&survived());
        assert_eq!(
            verdict,
            Verdict::Survived {
                hedges_won: 2,
                register: 20.0
            }
        );
        assert_eq!(verdict.count(), Count::Ok);
        assert!(verdict.to_string().starts_with("every call succeeded"));
    }

    #[test]
    fn every_other_ending_is_a_surprise() {
        let table = [
            (
                Observed {
                    failures: vec!["add".into()],
                    ..survived()
                },
                Verdict::CallsFailed(vec!["add".into()]),
            ),
            (
                Observed {
                    register: Some(21.0),
                    ..survived()
                },
                Verdict::Register {
                    got: Some(21.0),
                    intended: 20.0,
                },
            ),
            (
                Observed {
                    hedges_won: 0,
                    ..survived()
                },
                Verdict::NoHedgeWon,
            ),
            (
                Observed {
                    ejected: false,
                    ..survived()
                },
                Verdict::NeverEjected,
            ),
            (
                Observed {
                    probe_due: false,
                    ..survived()
                },
                Verdict::NeverDue,
            ),
            (
                Observed {
                    readmitted: false,
                    ..survived()
                },
                Verdict::NeverReadmitted,
            ),
        ];
        for (seen, verdict) in table {
            let judged = judge(&seen);
            assert_eq!(judged, verdict, "{seen:?}");
            assert!(matches!(judged.count(), Count::Surprise(_)), "{seen:?}");
        }
    }
}
