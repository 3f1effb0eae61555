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
//! on the tokio clock: the simulation drives both. The backoff resets only
//! after a stream that stayed up ([`Rewatch`]), so an endpoint whose
//! stream flaps is not re-dialled at the smallest pause forever.

use std::{future::Future, sync::Arc};

use futures_util::{Stream, StreamExt};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::{task::JoinHandle, time::Instant};
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
    health_client::HealthClient,
};

use super::{endpoint::HealthCell, rewatch::Rewatch};
use crate::{
    rpc::{HealthScope, Serving},
    trace::{Event, EventSink},
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
    let open = move |request| {
        let mut client = HealthClient::new(channel.clone());
        async move { Ok(client.watch(request).await?.into_inner()) }
    };
    follow(scope, open, &endpoint, &cell, &events, seed).await;
}

/// [`watch`] over any way to `open` a `Watch` stream (a test's, or a
/// channel's).
async fn follow<Open, Opening, Messages>(
    scope: HealthScope,
    mut open: Open,
    endpoint: &str,
    cell: &HealthCell,
    events: &EventSink,
    seed: u64,
) where
    Open: FnMut(HealthCheckRequest) -> Opening,
    Opening: Future<Output = Result<Messages, Status>>,
    Messages: Stream<Item = Result<HealthCheckResponse, Status>> + Unpin,
{
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut rewatch = Rewatch::default();
    loop {
        let request = HealthCheckRequest {
            service: scope.service_name().to_owned(),
        };
        match open(request).await {
            Ok(mut stream) => {
                rewatch.opened(Instant::now());
                while let Some(Ok(message)) = stream.next().await {
                    report(cell, events, endpoint, scope, serving(message.status));
                }
            }
            Err(status) if status.code() == Code::Unimplemented => {
                report(cell, events, endpoint, scope, Serving::Unknown);
                return;
            }
            // NOT_FOUND is what tonic's health server answers for a name it
            // does not report (the spec says SERVICE_UNKNOWN): no word, like
            // a broken stream, and asked again later, since a server may
            // register the name once its store is up.
            Err(_) => {}
        }
        report(cell, events, endpoint, scope, Serving::Unknown);
        tokio::time::sleep(rewatch.broke(Instant::now(), &mut rng)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicU32, Ordering},
        time::Duration,
    };

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_watch_that_flaps_is_reopened_ever_more_slowly() {
        // Every stream says SERVING once and drops at once.
        let opened = Arc::new(AtomicU32::new(0));
        let open = {
            let opened = Arc::clone(&opened);
            move |_: HealthCheckRequest| {
                opened.fetch_add(1, Ordering::Relaxed);
                let serving = HealthCheckResponse {
                    status: ServingStatus::Serving as i32,
                };
                async move { Ok(futures_util::stream::iter([Ok(serving)])) }
            }
        };
        let watching = tokio::spawn(async move {
            let (cell, events) = (HealthCell::default(), EventSink::log_only());
            follow(HealthScope::ALL[0], open, "a", &cell, &events, 1).await;
        });
        // A minute of the paused clock. No stream stays up long enough to
        // reset the backoff, so the pauses' ceilings go 0.1, 0.2, 0.4, 0.8,
        // 1.6, 3.2 s, then 5 s: at least 17 streams in a minute, and about
        // 30 on average (full jitter). With a reset after every message,
        // every pause is at most 100 ms: over 600 streams.
        tokio::time::sleep(Duration::from_secs(60)).await;
        watching.abort();
        let opened = opened.load(Ordering::Relaxed);
        assert!((17..100).contains(&opened), "{opened} streams in a minute");
    }

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
