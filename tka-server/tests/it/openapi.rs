//! The OpenAPI document: generated from the Rust types, reviewed as a snapshot, served as is.

use crate::support::{TestServer, alice};

#[test]
fn the_openapi_document_is_reviewed() {
    let document: serde_json::Value = serde_json::from_str(tka_server::openapi::json()).unwrap();
    insta::assert_json_snapshot!("openapi", document);
}

#[test]
fn every_endpoint_lists_its_error_statuses() {
    let document: serde_json::Value = serde_json::from_str(tka_server::openapi::json()).unwrap();
    let paths = document["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/v1/login", vec!["post"]),
        ("/api/v1/token", vec!["post"]),
        ("/api/v1/session", vec!["get", "delete"]),
        ("/api/v1/cluster", vec!["get"]),
        ("/api/v1/openapi.json", vec!["get"]),
    ] {
        for method in methods {
            let responses = paths[path][method]["responses"].as_object().unwrap();
            assert!(responses.contains_key("403"), "{method} {path}");
            assert!(responses.contains_key("429"), "{method} {path}");
        }
    }
    let login = &paths["/api/v1/login"]["post"]["responses"];
    for status in [
        "200", "400", "403", "409", "413", "415", "429", "503", "504",
    ] {
        assert!(login.get(status).is_some(), "login {status}");
    }
    assert!(document["components"]["schemas"]["LoginResponse"].is_object());
    assert!(document["components"]["schemas"]["Problem"].is_object());
}

#[test]
fn problem_codes_are_typed_and_complete() {
    let document: serde_json::Value = serde_json::from_str(tka_server::openapi::json()).unwrap();
    let schemas = &document["components"]["schemas"];
    assert_eq!(
        schemas["Problem"]["properties"]["code"]["$ref"],
        "#/components/schemas/ProblemCode"
    );
    let listed: Vec<&str> = schemas["ProblemCode"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let all: Vec<&str> = tka_core::api::ProblemCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(listed, all);
    // The catch-all for codes from newer servers is never sent, so never documented.
    assert!(!listed.contains(&"unknown"));
    assert!(listed.contains(&"noSession") && listed.contains(&"sessionEnded"));
}

#[tokio::test]
async fn the_document_is_served() {
    let server = TestServer::start().await;
    let mut client = server.client(alice()).await;
    let response = client.get("/api/v1/openapi.json").send().await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), tka_server::openapi::json());
    let mut stranger = server.stranger().await;
    assert_eq!(
        stranger.get("/api/v1/openapi.json").send().await.status,
        403
    );
}
