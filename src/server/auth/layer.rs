//! [`AuthLayer`]: the gRPC front's check of every `abacus.v1.Calculator`
//! call against the [`Authenticator`]. The identity it admits travels to
//! the handler in the request's extensions ([`Identity`](super::Identity)); a refusal is
//! answered here, with the status `error.rs` maps it to.

use std::{
    future::Ready,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::future::Either;
use tonic::{
    Status,
    body::Body,
    codegen::http::{Request, Response, header::AUTHORIZATION},
};
use tower::{Layer, Service};

use super::Authenticator;
use crate::{pb, rpc::Method};

/// True for paths of the Calculator service (`/abacus.v1.Calculator/…`).
pub fn is_calculator_path(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|p| p.strip_prefix(pb::SERVICE_NAME))
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Authenticates Calculator calls; passes everything else through.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer checking calls against `auth`.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            auth: Arc::clone(&self.auth),
        }
    }
}

/// A service behind [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

/// The response future of [`Auth`]: the inner call, or the refusal.
pub type AuthFuture<F, E> = Either<F, Ready<Result<Response<Body>, E>>>;

impl<S> Service<Request<Body>> for Auth<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = AuthFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let path = req.uri().path();
        if !is_calculator_path(path) {
            return Either::Left(self.inner.call(req));
        }
        let method = Method::from_path(path);
        let header = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
        match self.auth.check(header, method) {
            Ok(identity) => {
                req.extensions_mut().insert(identity);
                Either::Left(self.inner.call(req))
            }
            Err(refused) => {
                Either::Right(std::future::ready(Ok(Status::from(refused).into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calculator_paths() {
        assert!(is_calculator_path("/abacus.v1.Calculator/Add"));
        assert!(is_calculator_path("/abacus.v1.Calculator/Nope"));
        assert!(!is_calculator_path("/abacus.v1.CalculatorX/Add"));
        assert!(!is_calculator_path("/grpc.health.v1.Health/Check"));
        assert!(!is_calculator_path("abacus.v1.Calculator/Add"));
    }
}
