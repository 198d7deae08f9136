//! The API in-process, over a log in memory: each endpoint's answer, and every refusal's
//! status and error code (never a 5xx for bad input). `tests/tests/registry.rs` runs the real
//! binary against a broker.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::testing::MemoryLog;

struct Answer {
    status: u16,
    content_type: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}); status {}: {}", self.status, self.body))
    }

    /// Asserts a refusal: its status and error code.
    fn refused(&self, status: u16, code: u32) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.json()["error_code"], code, "{}", self.body);
        assert!(self.json()["message"].is_string(), "{}", self.body);
    }
}

struct Registry {
    app: Router,
    log: Arc<MemoryLog>,
}

impl Registry {
    fn new() -> Registry {
        let log = MemoryLog::new();
        Registry {
            app: router(Arc::new(log.replica())),
            log,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(content_type) = content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        let response = self
            .app
            .clone()
            .oneshot(request.body(Body::from(body)).expect("request"))
            .await
            .expect("the router never fails");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        Answer {
            status,
            content_type,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, None, Vec::new()).await
    }

    async fn json(&self, method: Method, path: &str, body: Value) -> Answer {
        self.send(
            method,
            path,
            Some(MEDIA_TYPE),
            body.to_string().into_bytes(),
        )
        .await
    }

    async fn register(&self, subject: &str, schema: &str) -> Answer {
        self.json(
            Method::POST,
            &format!("/subjects/{subject}/versions"),
            json!({ "schema": schema }),
        )
        .await
    }
}

const V1: &str = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"}]}"#;
const V2: &str = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"},{"name":"region","type":"string","default":"eu"}]}"#;
const V3: &str = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"},{"name":"amount","type":"double"}]}"#;

#[tokio::test]
async fn register_evolve_and_read_back() {
    let registry = Registry::new();
    let first = registry.register("orders-value", V1).await;
    assert_eq!((first.status, first.json()), (200, json!({"id": 1})));
    assert_eq!(first.content_type.as_deref(), Some(MEDIA_TYPE));
    assert_eq!(
        registry.register("orders-value", V2).await.json(),
        json!({"id": 2})
    );
    // Again: the same id, no new version.
    assert_eq!(
        registry.register("orders-value", V1).await.json(),
        json!({"id": 1})
    );
    assert_eq!(
        registry.get("/subjects/orders-value/versions").await.json(),
        json!([1, 2])
    );
    let latest = registry
        .get("/subjects/orders-value/versions/latest")
        .await
        .json();
    assert_eq!(
        latest,
        json!({"subject": "orders-value", "version": 2, "id": 2, "schema": V2})
    );
    assert_eq!(
        registry
            .get("/subjects/orders-value/versions/-1")
            .await
            .json(),
        latest
    );
    let raw = registry
        .get("/subjects/orders-value/versions/1/schema")
        .await;
    assert_eq!(raw.body, V1);
    assert_eq!(
        registry.get("/schemas/ids/2").await.json(),
        json!({"schema": V2})
    );
    assert_eq!(registry.get("/schemas/ids/2/schema").await.body, V2);
    // An incompatible schema, then the same under NONE.
    let refused = registry.register("orders-value", V3).await;
    refused.refused(409, 409);
    assert!(
        refused.json()["message"]
            .as_str()
            .unwrap()
            .contains("amount"),
        "{}",
        refused.body
    );
    let check = registry
        .json(
            Method::POST,
            "/compatibility/subjects/orders-value/versions/latest?verbose=true",
            json!({"schema": V3}),
        )
        .await
        .json();
    assert_eq!(check["is_compatible"], false);
    assert!(!check["messages"].as_array().unwrap().is_empty());
    let set = registry
        .json(
            Method::PUT,
            "/config/orders-value",
            json!({"compatibility": "NONE"}),
        )
        .await;
    assert_eq!(set.json(), json!({"compatibility": "NONE"}));
    assert_eq!(
        registry.register("orders-value", V3).await.json(),
        json!({"id": 3})
    );
    // The same schema under another subject reuses its id.
    assert_eq!(
        registry.register("other-value", V1).await.json(),
        json!({"id": 1})
    );
    assert_eq!(
        registry.get("/schemas/ids/1/versions").await.json(),
        json!([{"subject": "orders-value", "version": 1}, {"subject": "other-value", "version": 1}])
    );
    assert_eq!(
        registry.get("/schemas/ids/1/subjects").await.json(),
        json!(["orders-value", "other-value"])
    );
    let found = registry
        .json(Method::POST, "/subjects/other-value", json!({"schema": V1}))
        .await;
    assert_eq!(
        found.json(),
        json!({"subject": "other-value", "version": 1, "id": 1, "schema": V1})
    );
    assert_eq!(
        registry.get("/subjects").await.json(),
        json!(["orders-value", "other-value"])
    );
}

#[tokio::test]
async fn deletes_and_levels() {
    let registry = Registry::new();
    registry.register("s", V1).await;
    registry.register("s", V2).await;
    assert_eq!(
        registry
            .send(Method::DELETE, "/subjects/s/versions/1", None, vec![])
            .await
            .json(),
        json!(1)
    );
    assert_eq!(
        registry.get("/subjects/s/versions").await.json(),
        json!([2])
    );
    assert_eq!(
        registry
            .get("/subjects/s/versions?deleted=true")
            .await
            .json(),
        json!([1, 2])
    );
    registry
        .get("/subjects/s/versions/1")
        .await
        .refused(404, 40402);
    assert_eq!(
        registry
            .get("/subjects/s/versions/1?deleted=true")
            .await
            .json()["id"],
        1
    );
    registry
        .send(Method::DELETE, "/subjects/s/versions/1", None, vec![])
        .await
        .refused(404, 40406);
    registry
        .send(Method::DELETE, "/subjects/s?permanent=true", None, vec![])
        .await
        .refused(422, 422);
    assert_eq!(
        registry
            .send(Method::DELETE, "/subjects/s", None, vec![])
            .await
            .json(),
        json!([2])
    );
    assert_eq!(registry.get("/subjects").await.json(), json!([]));
    assert_eq!(
        registry.get("/subjects?deleted=true").await.json(),
        json!(["s"])
    );
    registry
        .get("/subjects/s/versions")
        .await
        .refused(404, 40401);

    assert_eq!(
        registry.get("/config").await.json(),
        json!({"compatibilityLevel": "BACKWARD"})
    );
    assert_eq!(
        registry
            .json(Method::PUT, "/config", json!({"compatibility": "full"}))
            .await
            .json(),
        json!({"compatibility": "FULL"})
    );
    registry.get("/config/s").await.refused(404, 40408);
    assert_eq!(
        registry.get("/config/s?defaultToGlobal=true").await.json(),
        json!({"compatibilityLevel": "FULL"})
    );
    registry
        .json(
            Method::PUT,
            "/config/s",
            json!({"compatibilityLevel": "FORWARD_TRANSITIVE"}),
        )
        .await;
    assert_eq!(
        registry.get("/config/s").await.json(),
        json!({"compatibilityLevel": "FORWARD_TRANSITIVE"})
    );
    assert_eq!(
        registry
            .send(Method::DELETE, "/config/s", None, vec![])
            .await
            .json(),
        json!({"compatibilityLevel": "FORWARD_TRANSITIVE"})
    );
    registry
        .send(Method::DELETE, "/config/s", None, vec![])
        .await
        .refused(404, 40408);
    assert_eq!(
        registry.get("/mode").await.json(),
        json!({"mode": "READWRITE"})
    );
    assert_eq!(registry.get("/schemas/types").await.json(), json!(["AVRO"]));
    assert_eq!(registry.get("/").await.json(), json!({}));
}

#[tokio::test]
async fn bad_input_is_refused_with_confluents_codes_never_a_5xx() {
    let registry = Registry::new();
    registry.register("s", V1).await;
    let post = |body: &'static str, content_type: Option<&'static str>| {
        registry.send(
            Method::POST,
            "/subjects/s/versions",
            content_type,
            body.as_bytes().to_vec(),
        )
    };
    // Not JSON at all: 400. JSON of the wrong shape: 422.
    post("not json", Some("application/json"))
        .await
        .refused(400, 400);
    post("", None).await.refused(400, 400);
    post(r#"{"schemaType":"AVRO"}"#, None)
        .await
        .refused(422, 422);
    post(r#"{"schema": 12}"#, None).await.refused(422, 422);
    // The schema text is not a schema.
    post(r#"{"schema": "not json"}"#, None)
        .await
        .refused(422, 42201);
    post(r#"{"schema": "{\"type\":\"record\"}"}"#, None)
        .await
        .refused(422, 42201);
    post(r#"{"schema": "\"long\"", "schemaType": "PROTOBUF"}"#, None)
        .await
        .refused(422, 42201);
    post(
        r#"{"schema": "\"long\"", "references": [{"name": "x", "subject": "y", "version": 1}]}"#,
        None,
    )
    .await
    .refused(422, 42201);
    // What newer clients add is ignored, whatever the content type.
    let accepted = post(
        r#"{"schema": "\"string\"", "schemaType": "AVRO", "references": [], "metadata": {"properties": {}}, "ruleSet": null}"#,
        Some("application/json"),
    )
    .await;
    // NONE is not set: a string cannot read the record version, so 409, not a parse error.
    accepted.refused(409, 409);
    let other = registry
        .send(
            Method::POST,
            "/subjects/t/versions?normalize=true",
            None,
            br#"{"schema": "\"string\"", "schemaType": "AVRO", "references": [], "ruleSet": null}"#
                .to_vec(),
        )
        .await;
    assert_eq!((other.status, other.json()), (200, json!({"id": 2})));

    registry
        .get("/subjects/s/versions/abc")
        .await
        .refused(422, 42202);
    registry
        .get("/subjects/s/versions/0")
        .await
        .refused(422, 42202);
    registry
        .get("/subjects/nope/versions")
        .await
        .refused(404, 40401);
    registry
        .get("/subjects/nope/versions/1")
        .await
        .refused(404, 40401);
    registry
        .get("/subjects/s/versions/99")
        .await
        .refused(404, 40402);
    registry.get("/schemas/ids/99").await.refused(404, 40403);
    registry.get("/schemas/ids/abc").await.refused(404, 40403);
    registry
        .json(Method::POST, "/subjects/nope", json!({"schema": V1}))
        .await
        .refused(404, 40401);
    registry
        .json(Method::POST, "/subjects/s", json!({"schema": V2}))
        .await
        .refused(404, 40403);
    registry
        .json(
            Method::POST,
            "/compatibility/subjects/nope/versions/latest",
            json!({"schema": V1}),
        )
        .await
        .refused(404, 40401);
    registry
        .json(
            Method::POST,
            "/compatibility/subjects/s/versions/7",
            json!({"schema": V1}),
        )
        .await
        .refused(404, 40402);
    registry
        .json(
            Method::POST,
            "/compatibility/subjects/s/versions/1",
            json!({"schema": "{"}),
        )
        .await
        .refused(422, 42201);
    registry
        .json(Method::PUT, "/config", json!({"compatibility": "SIDEWAYS"}))
        .await
        .refused(422, 42203);
    registry
        .json(Method::PUT, "/config/s", json!({}))
        .await
        .refused(422, 42203);
    registry.get("/nope").await.refused(404, 404);
    registry
        .get("/subjects/s/versions/1/schema/extra")
        .await
        .refused(404, 404);
    registry
        .send(Method::PATCH, "/subjects", None, vec![])
        .await
        .refused(405, 405);
    // Percent-encoded subjects are one path segment.
    let encoded = registry.register("a%2Fb", V1).await;
    assert_eq!(encoded.json(), json!({"id": 1}));
    assert_eq!(
        registry.get("/subjects/a%2Fb/versions").await.json(),
        json!([1])
    );
}

#[tokio::test]
async fn huge_bodies_are_a_413() {
    let registry = Registry::new();
    let huge = vec![b' '; BODY_LIMIT + 1];
    let answer = registry
        .send(Method::POST, "/subjects/s/versions", None, huge)
        .await;
    answer.refused(413, 413);
}

#[tokio::test]
async fn kafka_down_under_a_write_is_a_50001() {
    let registry = Registry::new();
    registry.log.set_down(true);
    let answer = registry.register("s", V1).await;
    answer.refused(500, 50001);
    registry.log.set_down(false);
    assert_eq!(registry.register("s", V1).await.json(), json!({"id": 1}));
}
