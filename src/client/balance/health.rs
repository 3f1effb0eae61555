//! Watching `grpc.health.v1` on each endpoint: one task per endpoint, one
//! `Watch` stream per [`HealthScope`], each status change written to the
//! endpoint's [`HealthCell`] and announced as an
//! [`Event::EndpointHealth`].
//!
//! `Watch` rather than polling `Check`: the server pushes a change the
//! moment it happens (a replica whose store goes down is out of rotation
//! for register calls within one message), and an idle stream costs
//! nothing. As gRPC's client-side health checking (A17) does, a server
//! answering UNIMPLEMENTED has no health service: the endpoint is then
//! judged by its breaker alone. Unlike A17, `SERVICE_UNKNOWN` reads as "no
//! word" rather than "unhealthy": a server that does not report a scope
//! (an older one) must not be cut off from calls it serves.
//!
//! A stream that breaks (the replica went away) leaves the status unknown
//! and is re-opened after a full-jitter backoff drawn from a seeded RNG,
//! on the tokio clock: the simulation drives both.

use std::{sync::Arc, time::Duration};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::task::JoinHandle;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::endpoint::HealthCell;
use crate::{
    resilience::backoff::Backoff,
    rpc::{HealthScope, Serving},
    trace::{Event, EventSink},
};

/// Pause before re-opening a broken watch: full jitter under a ceiling
/// growing from 100 ms to 5 s.
const REWATCH: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(5),
    multiplier: 2.0,
};

/// Aborts its task when dropped: the watch lives as long as the endpoint.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts watching both scopes of `endpoint` over `channel`.
pub(crate) fn spawn_watch(
    runtime: &tokio::runtime::Handle,
    channel: Channel,
    endpoint: Arc<str>,
    cell: Arc<HealthCell>,
    events: EventSink,
    seed: u64,
) -> AbortOnDrop {
    let watches = HealthScope::ALL.map(|scope| {
        watch(
            scope,
            channel.clone(),
            Arc::clone(&endpoint),
            Arc::clone(&cell),
            events.clone(),
            seed ^ scope.index() as u64,
        )
    });
    let [calculator, registers] = watches;
    AbortOnDrop(runtime.spawn(async move {
        futures_util::future::join(calculator, registers).await;
    }))
}

/// The status a health response reports.
fn serving(status: i32) -> Serving {
    match ServingStatus::try_from(status) {
        Ok(ServingStatus::Serving) => Serving::Serving,
        Ok(ServingStatus::NotServing) => Serving::NotServing,
        _ => Serving::Unknown,
    }
}

/// Records `status`, announcing it if it changed.
fn report(
    cell: &HealthCell,
    events: &EventSink,
    endpoint: &str,
    scope: HealthScope,
    status: Serving,
) {
    if cell.set(scope, status) != status {
        events.emit(Event::EndpointHealth {
            endpoint: endpoint.to_owned(),
            scope,
            status,
        });
    }
}

/// Watches one scope until the task is aborted (or the server turns out
/// to have no health service).
async fn watch(
    scope: HealthScope,
    channel: Channel,
    endpoint: Arc<str>,
    cell: Arc<HealthCell>,
    events: EventSink,
    seed: u64,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut broken: u32 = 0;
    loop {
        let request = HealthCheckRequest {
            service: scope.service_name().to_owned(),
        };
        match HealthClient::new(channel.clone()).watch(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                while let Ok(Some(message)) = stream.message().await {
                    broken = 0;
                    report(&cell, &events, &endpoint, scope, serving(message.status));
                }
            }
            Err(status) if status.code() == Code::Unimplemented => {
                report(&cell, &events, &endpoint, scope, Serving::Unknown);
                return;
            }
            // NOT_FOUND is what tonic's health server answers for a name it
            // does not report (the spec says SERVICE_UNKNOWN): no word, like
            // a broken stream, and asked again later, since a server may
            // register the name once its store is up.
            Err(_) => {}
        }
        report(&cell, &events, &endpoint, scope, Serving::Unknown);
        broken = broken.saturating_add(1);
        tokio::time::sleep(REWATCH.pause(broken, &mut rng)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_serving() {
        assert_eq!(serving(ServingStatus::Serving as i32), Serving::Serving);
        assert_eq!(
            serving(ServingStatus::NotServing as i32),
            Serving::NotServing
        );
        assert_eq!(
            serving(ServingStatus::ServiceUnknown as i32),
            Serving::Unknown
        );
        assert_eq!(serving(ServingStatus::Unknown as i32), Serving::Unknown);
        assert_eq!(serving(99), Serving::Unknown);
    }
}
