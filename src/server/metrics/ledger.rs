//! [`MeteredLedger`]: store latency, timed around any [`Ledger`] without
//! the backends knowing (`abacus_store_operation_duration_seconds`, by
//! operation and result).

use std::sync::Arc;

use tokio::time::Instant;

use super::ServerMetrics;
use crate::{
    error::ServiceError,
    store::{
        AccumulateArgs, Accumulated, Backend, Begin, BoxFuture, Claim, Ledger, StatsView,
        StoreHealth,
    },
};

/// A ledger whose operations are timed into [`ServerMetrics`].
#[derive(Debug)]
pub struct MeteredLedger {
    inner: Arc<dyn Ledger>,
    metrics: ServerMetrics,
}

impl MeteredLedger {
    /// Times `inner`'s operations into `metrics`.
    pub fn new(inner: Arc<dyn Ledger>, metrics: ServerMetrics) -> Self {
        Self { inner, metrics }
    }
}

/// Runs `fut`, observing its time and whether it succeeded. A result that
/// is the caller's fault (a rule error) still counts as the store having
/// answered: `error` means the store itself failed, or has been failing
/// (the store guard refused the operation: its breaker is open, or too
/// much store work is in flight), never an `ok` that took no time.
async fn timed<T>(
    metrics: &ServerMetrics,
    operation: &'static str,
    fut: impl Future<Output = Result<T, ServiceError>>,
) -> Result<T, ServiceError> {
    let start = Instant::now();
    let result = fut.await;
    let store_failed = matches!(
        result,
        Err(ServiceError::StoreUnavailable { .. } | ServiceError::StoreRefused(_))
    );
    metrics.observe_store(operation, !store_failed, start.elapsed());
    result
}

impl Ledger for MeteredLedger {
    fn begin<'a>(
        &'a self,
        args: &'a AccumulateArgs,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Begin<'a>, ServiceError>> {
        Box::pin(async move {
            let begin = timed(&self.metrics, "begin", self.inner.begin(args, deadline)).await?;
            Ok(match begin {
                Begin::Execute(claim) => Begin::Execute(Box::new(MeteredClaim {
                    inner: claim,
                    metrics: self.metrics.clone(),
                })),
                replay => replay,
            })
        })
    }

    fn get<'a>(
        &'a self,
        register: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<f64, ServiceError>> {
        Box::pin(timed(
            &self.metrics,
            "get",
            self.inner.get(register, deadline),
        ))
    }

    fn delete<'a>(
        &'a self,
        register: &'a str,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<Option<f64>, ServiceError>> {
        Box::pin(timed(
            &self.metrics,
            "delete",
            self.inner.delete(register, deadline),
        ))
    }

    fn stats(&self) -> BoxFuture<'_, Result<StatsView, ServiceError>> {
        Box::pin(timed(&self.metrics, "stats", self.inner.stats()))
    }

    fn health(&self) -> tokio::sync::watch::Receiver<StoreHealth> {
        // Forwarded: the default would report a broken store as serving.
        self.inner.health()
    }

    fn backend(&self) -> Backend {
        self.inner.backend()
    }
}

/// A claim whose commit is timed.
#[derive(Debug)]
struct MeteredClaim<'a> {
    inner: Box<dyn Claim<'a> + 'a>,
    metrics: ServerMetrics,
}

impl<'a> Claim<'a> for MeteredClaim<'a> {
    fn request_id(&self) -> &str {
        self.inner.request_id()
    }

    fn commit(self: Box<Self>) -> BoxFuture<'a, Result<Accumulated, ServiceError>> {
        let Self { inner, metrics } = *self;
        Box::pin(async move { timed(&metrics, "commit", inner.commit()).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::guard::Refusal;

    #[tokio::test]
    async fn a_guard_refusal_counts_as_a_store_error_not_an_instant_success() {
        let metrics = ServerMetrics::new();
        let refused = ServiceError::StoreRefused(Refusal::CircuitOpen { probe_in_ms: 500 });
        let answered = timed(&metrics, "get", async { Err::<f64, _>(refused) }).await;
        assert!(matches!(answered, Err(ServiceError::StoreRefused(_))));
        let rule = ServiceError::RequestIdRequired;
        let _ = timed(&metrics, "get", async { Err::<f64, _>(rule) }).await;
        let text = metrics.scrape().await;
        let count = |result: &str| {
            format!(
                "abacus_store_operation_duration_seconds_count{{operation=\"get\",result=\"{result}\"}} 1"
            )
        };
        assert!(text.contains(&count("error")), "{text}");
        // The caller's mistake: the store answered.
        assert!(text.contains(&count("ok")), "{text}");
    }
}
