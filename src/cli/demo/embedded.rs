//! The demo's servers and clients: servers embedded in the demo's process
//! on ephemeral loopback ports, and clients that print every attempt,
//! pause and decision.

use std::{net::SocketAddr, sync::Arc};

use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;

use crate::{
    client::{Client, ClientConfig, tcp_channel},
    server::{self, FaultConfig, FaultSwitch, ServerConfig},
    store::{Ledger, MemoryLedger},
    trace::{Event, EventSink},
};

/// A server running inside the demo's process; stops when dropped.
#[derive(Debug)]
pub(super) struct Embedded {
    pub(super) addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

/// Starts a server with `config` on `127.0.0.1:0`, over a fresh in-memory
/// ledger. It accepts connections as soon as this returns: the socket is
/// bound before.
pub(super) async fn embedded_server(config: ServerConfig) -> std::io::Result<Embedded> {
    let ledger = Arc::new(MemoryLedger::new(
        config.dedup.clone(),
        config.events.clone(),
    ));
    embedded_server_with(config, ledger).await
}

/// [`embedded_server`] over `ledger`, which other servers may share.
pub(super) async fn embedded_server_with(
    config: ServerConfig,
    ledger: Arc<dyn Ledger>,
) -> std::io::Result<Embedded> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server::serve_with_ledger(
        config,
        ledger,
        TcpListenerStream::new(listener),
        async {
            let _ = stopped.await;
        },
    ));
    Ok(Embedded { addr, _stop: stop })
}

/// Starts an embedded server with `faults` (until `switch` turns them off)
/// and prints the `abacus serve` command that runs the same server.
pub(super) async fn faulty_server(
    faults: FaultConfig,
    switch: FaultSwitch,
) -> std::io::Result<Embedded> {
    let command = serve_command(&faults);
    let server = embedded_server(ServerConfig {
        faults,
        fault_switch: switch,
        ..ServerConfig::default()
    })
    .await?;
    println!("   server: {command}  ({})", server.addr);
    Ok(server)
}

/// `abacus serve` with the flags of `faults`.
fn serve_command(faults: &FaultConfig) -> String {
    let mut command = String::from("abacus serve");
    if faults.fail_rate > 0.0 {
        command += &format!(" --fail-rate {}", faults.fail_rate);
    }
    let (low, high) = (*faults.delay_ms.start(), *faults.delay_ms.end());
    if high > 0 {
        command += &if low == high {
            format!(" --delay-ms {high}")
        } else {
            format!(" --delay-ms {low}..{high}")
        };
    }
    if faults.drop_after_apply_rate > 0.0 {
        command += &format!(" --drop-after-apply-rate {}", faults.drop_after_apply_rate);
    }
    command + &format!(" --fault-seed {}", faults.seed)
}

/// A client to `addr` whose every attempt, pause and decision is printed.
pub(super) fn narrated_client(addr: SocketAddr, mut config: ClientConfig) -> Client {
    config.events = EventSink::with_hook(|e| match e {
        Event::AttemptStarted { .. }
        | Event::AttemptFailed { .. }
        | Event::Backoff { .. }
        | Event::GaveUp { .. }
        | Event::BreakerTransition { .. }
        | Event::BreakerRejected { .. } => println!("      · {e}"),
        _ => {}
    });
    client(addr, config)
}

/// A client to `addr` with `config` as is.
pub(super) fn client(addr: SocketAddr, config: ClientConfig) -> Client {
    Client::new(channel(addr), config)
}

/// A plaintext channel to an embedded server.
pub(super) fn channel(addr: SocketAddr) -> Channel {
    tcp_channel(&addr.to_string()).expect("a socket address is a valid authority")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_command_runs_the_same_server() {
        let table = [
            (
                FaultConfig {
                    seed: 1,
                    ..FaultConfig::default()
                },
                "abacus serve --fault-seed 1",
            ),
            (
                FaultConfig {
                    fail_rate: 0.5,
                    seed: 42,
                    ..FaultConfig::default()
                },
                "abacus serve --fail-rate 0.5 --fault-seed 42",
            ),
            (
                FaultConfig {
                    fail_rate: 1.0,
                    delay_ms: 5..=5,
                    drop_after_apply_rate: 0.25,
                    seed: 7,
                },
                "abacus serve --fail-rate 1 --delay-ms 5 --drop-after-apply-rate 0.25 --fault-seed 7",
            ),
            (
                FaultConfig {
                    delay_ms: 3..=9,
                    seed: 1,
                    ..FaultConfig::default()
                },
                "abacus serve --delay-ms 3..9 --fault-seed 1",
            ),
        ];
        for (faults, command) in table {
            assert_eq!(serve_command(&faults), command, "{faults}");
        }
    }
}
