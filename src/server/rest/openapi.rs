//! The REST twin described: an OpenAPI 3.1 document built from the
//! handlers' wire types (their schemas derived with utoipa from the very
//! structs [`super::json`] and [`super::error`] decode and encode) and the
//! route table [`super::router`] serves, including the bearer-token scheme
//! and the `Idempotency-Key` header. Served at `GET /openapi.json` and kept
//! in `docs/openapi.json`; a test fails when the two differ, and another
//! sends every operation's example to a live server.

use serde_json::json;
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, HttpMethod, InfoBuilder, ObjectBuilder, OpenApi,
    OpenApiBuilder, PathItem, PathsBuilder, Ref, Required, ResponseBuilder, Type,
    header::Header,
    path::{OperationBuilder, ParameterBuilder, ParameterIn},
    request_body::RequestBodyBuilder,
    security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme},
};

use super::{
    error::{ErrorBody, ErrorDetail},
    handlers::ACCUMULATE_SUFFIX,
    json::{
        AccumulateBody, AccumulatedBody, BinaryBody, DeletedBody, RegisterBody, ResultBody,
        StatsBody,
    },
};
use crate::{core::BinaryOp, error::REPLAYED_KEY, server::deadline::REST_TIMEOUT_HEADER};

/// The path the document is served at.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The name of the security scheme in the document.
pub const BEARER_SCHEME: &str = "bearer";

/// The path of the accumulate call, templated.
fn accumulate_path() -> String {
    format!("/v1/registers/{{name}}{ACCUMULATE_SUFFIX}")
}

/// A response header with a description.
fn header(schema: ObjectBuilder, description: &str) -> Header {
    let mut header = Header::new(schema);
    header.description = Some(description.to_owned());
    header
}

fn string_schema() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn json_content(schema: &str, example: Option<serde_json::Value>) -> utoipa::openapi::Content {
    ContentBuilder::new()
        .schema(Some(Ref::from_schema_name(schema)))
        .example(example)
        .build()
}

/// The error responses an authenticated calculator call may get.
fn with_errors(op: OperationBuilder, statuses: &[(&str, &str)]) -> OperationBuilder {
    let mut op = op;
    for (status, description) in statuses {
        let mut response = ResponseBuilder::new()
            .description(*description)
            .content("application/json", json_content("ErrorBody", None));
        match *status {
            "401" | "403" => {
                response = response.header(
                    "WWW-Authenticate",
                    header(string_schema(), "the Bearer challenge (RFC 6750)"),
                );
            }
            "429" => {
                response = response.header(
                    "Retry-After",
                    header(
                        ObjectBuilder::new().schema_type(Type::Integer),
                        "seconds to wait before retrying",
                    ),
                );
            }
            _ => {}
        }
        op = op.response(*status, response.build());
    }
    op
}

/// Errors every calculator call may get.
const COMMON_ERRORS: [(&str, &str); 6] = [
    ("400", "malformed request: body, header or path"),
    (
        "401",
        "no token, or an unknown one (servers started with --auth-tokens)",
    ),
    (
        "429",
        "over the in-flight limit or the identity's rate limit; see Retry-After",
    ),
    (
        "503",
        "unavailable (injected fault, store down); see not_applied",
    ),
    (
        "504",
        "the deadline (abacus-timeout-ms) passed before the request was applied",
    ),
    ("415", "Content-Type is not application/json"),
];

fn timeout_parameter() -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(REST_TIMEOUT_HEADER)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "the caller's deadline in milliseconds (1 to 8 digits), honoured like grpc-timeout",
        ))
        .schema(Some(ObjectBuilder::new().schema_type(Type::Integer)))
        .build()
}

fn name_parameter() -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name("name")
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some("register name: 1 to 64 bytes once in Unicode NFC (composed and decomposed spellings are one register); no control, format or other invisible characters"))
        .schema(Some(string_schema()))
        .example(Some(json!("total")))
        .build()
}

fn bearer() -> SecurityRequirement {
    SecurityRequirement::new(BEARER_SCHEME, Vec::<String>::new())
}

/// The document.
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for op in BinaryOp::ALL {
        let name = op.name();
        let operation = OperationBuilder::new()
            .operation_id(Some(name))
            .summary(Some(format!(
                "{name} two numbers (the gRPC {})",
                crate::rpc::Method::from(op)
            )))
            .security(bearer())
            .parameter(timeout_parameter())
            .request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(Required::True))
                    .content(
                        "application/json",
                        json_content("BinaryBody", Some(json!({"a": 6, "b": 3}))),
                    )
                    .build(),
            ))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("the result")
                    .content("application/json", json_content("ResultBody", None))
                    .build(),
            );
        let operation = with_errors(operation, &COMMON_ERRORS);
        paths = paths.path(
            format!("/v1/{name}"),
            PathItem::new(HttpMethod::Post, operation.build()),
        );
    }
    let accumulate = OperationBuilder::new()
        .operation_id(Some("accumulate"))
        .summary(Some("add delta to a register (created at 0); not idempotent without a key"))
        .description(Some(
            "With an Idempotency-Key, a repeat (same key, same register and delta, same identity) \
             returns the first execution's outcome, marked abacus-replayed: true; the same key \
             with another payload is 409. Keys are scoped by the caller's identity on servers \
             that check tokens.",
        ))
        .security(bearer())
        .parameter(name_parameter())
        .parameter(
            ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "the request ID (IETF httpapi Idempotency-Key draft): a Structured Field \
                     string or a bare token, at most 128 bytes; the same record as a gRPC request_id",
                ))
                .schema(Some(string_schema()))
                .example(Some(json!("\"8e03978e-40d5-43e8-bc93-6894a57f9324\"")))
                .build(),
        )
        .parameter(timeout_parameter())
        .request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content(
                    "application/json",
                    json_content("AccumulateBody", Some(json!({"delta": 5}))),
                )
                .build(),
        ))
        .response(
            "200",
            ResponseBuilder::new()
                .description("applied, or replayed from the dedup store")
                .content("application/json", json_content("AccumulatedBody", None))
                .header(
                    REPLAYED_KEY,
                    header(string_schema(), "`true` when answered from the dedup store"),
                )
                .build(),
        );
    let accumulate = with_errors(
        accumulate,
        &[
            COMMON_ERRORS.as_slice(),
            &[
                ("403", "the identity's role is read: accumulate needs write"),
                (
                    "409",
                    "the key was used with another payload (FAILED_PRECONDITION), or its first execution is still running (ABORTED)",
                ),
            ],
        ]
        .concat(),
    );
    let get_register = with_errors(
        OperationBuilder::new()
            .operation_id(Some("get"))
            .summary(Some("read a register"))
            .security(bearer())
            .parameter(name_parameter())
            .parameter(timeout_parameter())
            .response(
                "200",
                ResponseBuilder::new()
                    .description("the register's value")
                    .content("application/json", json_content("RegisterBody", None))
                    .build(),
            ),
        &[
            COMMON_ERRORS.as_slice(),
            &[("404", "the register was never written")],
        ]
        .concat(),
    );
    let delete_register = with_errors(
        OperationBuilder::new()
            .operation_id(Some("delete"))
            .summary(Some("remove a register; idempotent"))
            .description(Some(
                "Deleting a register that does not exist answers deleted: false. Dedup records \
                 are kept: a repeat of an accumulate applied before replays its first outcome \
                 and does not re-create the register. Gives its creator the register back \
                 under the per-client quota.",
            ))
            .security(bearer())
            .parameter(name_parameter())
            .parameter(timeout_parameter())
            .response(
                "200",
                ResponseBuilder::new()
                    .description("removed, or there was nothing to remove")
                    .content("application/json", json_content("DeletedBody", None))
                    .build(),
            ),
        &[
            COMMON_ERRORS.as_slice(),
            &[("403", "the identity's role is read: delete needs write")],
        ]
        .concat(),
    );
    let stats = with_errors(
        OperationBuilder::new()
            .operation_id(Some("stats"))
            .summary(Some("the server's counters"))
            .security(bearer())
            .response(
                "200",
                ResponseBuilder::new()
                    .description("the proto's Stats fields")
                    .content("application/json", json_content("StatsBody", None))
                    .build(),
            ),
        &COMMON_ERRORS[..4],
    );
    let status_schema = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("status", string_schema())
        .required("status");
    let healthz = OperationBuilder::new()
        .operation_id(Some("healthz"))
        .summary(Some("the process serves (no token, never shed)"))
        .response(
            "200",
            ResponseBuilder::new()
                .description("serving")
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(status_schema)).build(),
                )
                .build(),
        );
    let openapi = OperationBuilder::new()
        .operation_id(Some("openapi"))
        .summary(Some("this document (no token)"))
        .response(
            "200",
            ResponseBuilder::new()
                .description("the OpenAPI document")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(ObjectBuilder::new().schema_type(Type::Object)))
                        .build(),
                )
                .build(),
        );
    let paths = paths
        .path(
            accumulate_path(),
            PathItem::new(HttpMethod::Post, accumulate.build()),
        )
        .path(
            "/v1/registers/{name}",
            PathItem::new(HttpMethod::Get, get_register.build()),
        )
        .path(
            "/v1/registers/{name}",
            PathItem::new(HttpMethod::Delete, delete_register.build()),
        )
        .path("/v1/stats", PathItem::new(HttpMethod::Get, stats.build()))
        .path("/healthz", PathItem::new(HttpMethod::Get, healthz.build()))
        .path(
            OPENAPI_PATH,
            PathItem::new(HttpMethod::Get, openapi.build()),
        );
    let components = ComponentsBuilder::new()
        .schema_from::<BinaryBody>()
        .schema_from::<ResultBody>()
        .schema_from::<AccumulateBody>()
        .schema_from::<AccumulatedBody>()
        .schema_from::<RegisterBody>()
        .schema_from::<DeletedBody>()
        .schema_from::<StatsBody>()
        .schema_from::<ErrorBody<'_>>()
        .schema_from::<ErrorDetail<'_>>()
        .security_scheme(
            BEARER_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <token>`, on servers started with --auth-tokens \
                         (without it every operation is open). A read token may call everything \
                         but accumulate and delete.",
                    ))
                    .build(),
            ),
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("abacus REST twin")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The calculator of abacus.v1.Calculator as HTTP/JSON: the same service, \
                     state, dedup store and limits as the gRPC front. Errors are \
                     {\"error\": {\"code\", \"message\", \"not_applied\"}} with the gRPC code's \
                     name.",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .build()
}

/// The document as served and committed: pretty JSON and a final newline.
pub fn document_json() -> String {
    let mut text = document()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot encode the document: {e}\"}}"));
    text.push('\n');
    text
}
