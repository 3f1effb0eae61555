//! One handler per endpoint: decode (path, headers, JSON body), call the
//! shared [`Calculator`], encode. Like the gRPC adapter, nothing here
//! knows a calculator or dedup rule.

use axum::{
    Extension,
    extract::{Path, Request, State, rejection::PathRejection},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{
    error::RestError,
    headers,
    json::{
        AccumulateBody, AccumulatedBody, BinaryBody, DeletedBody, JsonBody, RegisterBody,
        ResultBody, StatsBody, json_response,
    },
    peer::PeerAddr,
};
use crate::{
    core::BinaryOp,
    error::REPLAYED_KEY,
    rpc::Method,
    server::{auth::Identity, service::Calculator},
    store::{AccumulateArgs, Caller},
};

/// The custom-method suffix of the accumulate path, in the style of
/// Google's API design guide (`POST /v1/registers/total:accumulate`): the
/// verb is not a resource, and `POST /v1/registers/total` alone would read
/// as "create the register".
pub const ACCUMULATE_SUFFIX: &str = ":accumulate";

/// `POST /v1/add|subtract|multiply|divide`.
pub async fn binary(
    op: BinaryOp,
    calculator: Calculator,
    headers: HeaderMap,
    body: Result<JsonBody<BinaryBody>, RestError>,
) -> Result<Response, RestError> {
    let deadline = headers::deadline(&headers)?;
    let JsonBody(BinaryBody { a, b }) = body?;
    let result = calculator.binary(op, a, b, deadline).await?;
    Ok(json_response(StatusCode::OK, &ResultBody { result }))
}

fn path_param(path: Result<Path<String>, PathRejection>) -> Result<String, RestError> {
    path.map(|Path(p)| p)
        .map_err(|e| RestError::InvalidPath(e.body_text()))
}

/// `POST /v1/registers/{name}:accumulate`, `Idempotency-Key` optional
/// (required with `--require-request-id`).
pub async fn register_action(
    State(calculator): State<Calculator>,
    identity: Option<Extension<Identity>>,
    peer: Option<Extension<PeerAddr>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<JsonBody<AccumulateBody>, RestError>,
) -> Result<Response, RestError> {
    let target = path_param(path)?;
    // The router cannot match a parameter followed by a literal inside one
    // segment, so the verb is split off here. The *last* colon separates
    // it: register names may contain colons.
    let Some(register) = target.strip_suffix(ACCUMULATE_SUFFIX) else {
        return Err(RestError::NoRoute {
            method: "POST".into(),
            path: format!("/v1/registers/{target}"),
        });
    };
    let deadline = headers::deadline(&headers)?;
    let request_id = headers::idempotency_key(&headers)?.unwrap_or_default();
    let JsonBody(AccumulateBody { delta }) = body?;
    let args = AccumulateArgs {
        register: register.to_owned(),
        delta,
        request_id,
        // The identity the authenticator admitted scopes the key, as on
        // the gRPC front; without one, per-client bounds charge the peer's
        // address (put there by the accept loop, see `peer`).
        caller: Caller {
            identity: identity.map(|Extension(i)| i.name),
            peer: peer.map(|Extension(PeerAddr(addr))| addr.ip()),
        },
    };
    match calculator.accumulate(&args, deadline).await {
        Ok(done) => {
            let mut response = json_response(
                StatusCode::OK,
                &AccumulatedBody {
                    value: done.value,
                    replayed: done.replayed,
                },
            );
            if done.replayed {
                response.headers_mut().insert(
                    HeaderName::from_static(REPLAYED_KEY),
                    HeaderValue::from_static("true"),
                );
            }
            Ok(response)
        }
        Err(refused) if refused.replayed => Err(RestError::Replayed(refused.error)),
        Err(refused) => Err(RestError::Service(refused.error)),
    }
}

/// `GET /v1/registers/{name}`.
pub async fn get_register(
    State(calculator): State<Calculator>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, RestError> {
    let register = path_param(path)?;
    let deadline = headers::deadline(&headers)?;
    let value = calculator.get(&register, deadline).await?;
    Ok(json_response(StatusCode::OK, &RegisterBody { value }))
}

/// `DELETE /v1/registers/{name}`: idempotent, for writers.
pub async fn delete_register(
    State(calculator): State<Calculator>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, RestError> {
    let register = path_param(path)?;
    let deadline = headers::deadline(&headers)?;
    let value = calculator.delete(&register, deadline).await?;
    Ok(json_response(
        StatusCode::OK,
        &DeletedBody {
            deleted: value.is_some(),
            value,
        },
    ))
}

/// `GET /v1/stats`.
pub async fn stats(State(calculator): State<Calculator>) -> Result<Response, RestError> {
    let stats = calculator.stats().await?;
    Ok(json_response(StatusCode::OK, &StatsBody::from(stats)))
}

/// `GET /healthz`: the process serves. Never shed, like gRPC health.
pub async fn healthz() -> Response {
    json_response(StatusCode::OK, &serde_json::json!({ "status": "SERVING" }))
}

/// Any path we do not serve.
pub async fn no_route(req: Request) -> RestError {
    RestError::NoRoute {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
    }
}

/// A path we serve, with the wrong method.
pub async fn method_not_allowed(req: Request) -> RestError {
    let path = req.uri().path();
    let allow = if path.starts_with("/v1/registers/") {
        "GET, POST, DELETE"
    } else if path == "/v1/stats" || path == "/healthz" || path == super::openapi::OPENAPI_PATH {
        "GET"
    } else {
        "POST"
    };
    RestError::MethodNotAllowed {
        method: req.method().to_string(),
        allow,
    }
}

/// Admission through the process-wide in-flight limit shared with the gRPC
/// front ([`Calculator::shed`]): past it, 429 at once with `Retry-After`.
pub async fn admit(State(calculator): State<Calculator>, req: Request, next: Next) -> Response {
    let method = method_of(req.method(), req.uri().path());
    match calculator.shed().try_admit(method) {
        // Held until the handler has answered.
        Ok(_permit) => next.run(req).await,
        Err(overloaded) => RestError::Service(overloaded).into_response(),
    }
}

/// The RPC a REST request stands for, for the shed event, the
/// authenticator (a DELETE needs the write role) and metrics labels. The
/// binary paths are the operations' short names, as the router builds
/// them.
pub fn method_of(method: &axum::http::Method, path: &str) -> Option<Method> {
    match path {
        "/v1/stats" => Some(Method::GetStats),
        p if p.ends_with(ACCUMULATE_SUFFIX) => Some(Method::Accumulate),
        p if p.starts_with("/v1/registers/") && method == axum::http::Method::DELETE => {
            Some(Method::DeleteRegister)
        }
        p if p.starts_with("/v1/registers/") => Some(Method::GetRegister),
        p => {
            let name = p.strip_prefix("/v1/")?;
            BinaryOp::ALL
                .into_iter()
                .find(|op| op.name() == name)
                .map(Method::from)
        }
    }
}
