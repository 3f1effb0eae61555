//! The REST twin's OpenAPI document: the committed copy is the generated
//! one, the served one too, it is structurally valid, and every operation
//! it lists answers its own example with its documented success.
//!
//! After changing the REST API, regenerate the committed copy with
//! `ABACUS_UPDATE_OPENAPI=1 cargo test --test edge openapi`.

use std::collections::BTreeSet;

use abacus::server::{Edge, rest::openapi};
use serde_json::Value;
use tokio::net::TcpStream;

use crate::support::{Fronts, WRITER_TOKEN, authenticator, http1, rest_request};

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");

#[test]
fn the_committed_document_is_the_generated_one() {
    let generated = openapi::document_json();
    if std::env::var_os("ABACUS_UPDATE_OPENAPI").is_some() {
        std::fs::write(COMMITTED, &generated).expect("write docs/openapi.json");
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json differs from the document the code generates: run \
         `ABACUS_UPDATE_OPENAPI=1 cargo test --test edge openapi` and commit the file"
    );
}

/// Every `$ref` in `value`.
fn refs(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    out.insert(v.as_str().expect("a $ref is a string").to_owned());
                }
                refs(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

#[test]
fn the_document_is_structurally_valid() {
    let doc: Value = serde_json::from_str(&openapi::document_json()).expect("JSON");
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "abacus REST twin");
    assert!(doc["info"]["version"].is_string());
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let mut seen = BTreeSet::new();
    refs(&doc, &mut seen);
    assert!(!seen.is_empty());
    for r in &seen {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(schemas.contains_key(name), "{r} does not resolve");
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (path, item) in paths {
        let item = item.as_object().unwrap();
        assert!(item.keys().all(|k| METHODS.contains(&k.as_str())), "{path}");
        for (method, op) in item {
            operations += 1;
            assert!(op["operationId"].is_string(), "{method} {path}");
            assert!(
                op["responses"]["200"].is_object(),
                "{method} {path}: no 200"
            );
            for requirement in op["security"].as_array().into_iter().flatten() {
                for scheme in requirement.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(scheme), "{method} {path}: {scheme}");
                }
            }
            // Every path parameter is declared.
            for name in path.split('{').skip(1).filter_map(|s| s.split('}').next()) {
                let declared = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["in"] == "path" && p["name"] == name && p["required"] == true);
                assert!(declared, "{method} {path}: parameter {name}");
            }
        }
    }
    assert_eq!(
        operations, 10,
        "4 binary, accumulate, get, delete, stats, healthz, openapi"
    );
    let accumulate = &doc["paths"]["/v1/registers/{name}:accumulate"]["post"];
    assert!(
        accumulate["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"),
        "{accumulate}"
    );
    assert_eq!(accumulate["security"][0]["bearer"], Value::Array(vec![]));
    assert!(accumulate["responses"]["403"].is_object());
}

/// The properties a schema requires.
fn required(doc: &Value, schema_ref: &str) -> Vec<String> {
    let name = schema_ref.trim_start_matches("#/components/schemas/");
    doc["components"]["schemas"][name]["required"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn every_operation_answers_its_example() {
    let fronts = Fronts::start(Edge {
        auth: Some(authenticator(None)),
        ..Edge::default()
    })
    .await;
    let served = {
        let tcp = TcpStream::connect(fronts.rest).await.unwrap();
        let (status, headers, body) =
            http1(tcp, rest_request("GET", "/openapi.json", None, None)).await;
        assert_eq!(status.as_u16(), 200, "no token needed: {body}");
        assert_eq!(headers["content-type"], "application/json");
        body
    };
    assert_eq!(served, openapi::document_json());
    let doc: Value = serde_json::from_str(&served).unwrap();
    let mut calls: Vec<(String, String, Value)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .iter()
                .map(move |(m, op)| (path.clone(), m.clone(), op.clone()))
        })
        .collect();
    // Writes first, so the register read afterwards exists; the delete
    // last, so it finds it too.
    calls.sort_by_key(|(_, method, _)| match method.as_str() {
        "post" => 0,
        "delete" => 2,
        _ => 1,
    });
    for (path, method, op) in calls {
        let mut uri = path.clone();
        let mut headers = Vec::new();
        for p in op["parameters"].as_array().into_iter().flatten() {
            let example = &p["example"];
            match (p["in"].as_str().unwrap(), example) {
                ("path", Value::String(v)) => {
                    uri = uri.replace(&format!("{{{}}}", p["name"].as_str().unwrap()), v)
                }
                ("header", Value::String(v)) => {
                    headers.push((p["name"].as_str().unwrap().to_owned(), v.clone()))
                }
                _ => {}
            }
        }
        assert!(
            !uri.contains('{'),
            "{method} {path}: a path parameter without an example"
        );
        let body = &op["requestBody"]["content"]["application/json"]["example"];
        let body = (!body.is_null()).then(|| body.to_string());
        let token = op["security"].is_array().then_some(WRITER_TOKEN);
        let mut req = rest_request(&method.to_uppercase(), &uri, token, body.as_deref());
        for (name, value) in headers {
            req.headers_mut().insert(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let tcp = TcpStream::connect(fronts.rest).await.unwrap();
        let (status, _, text) = http1(tcp, req).await;
        assert_eq!(status.as_u16(), 200, "{method} {uri}: {text}");
        let answer: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{uri}: {e}"));
        if let Some(schema) =
            op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].as_str()
        {
            for field in required(&doc, schema) {
                assert!(
                    answer.get(&field).is_some(),
                    "{method} {uri}: {field} missing in {text}"
                );
            }
        }
    }
}
