//! The OpenAPI and AsyncAPI documents against the real binary: both are
//! served as they are in the repository, every response the tests provoke
//! is documented for its route, method and status and matches its schema,
//! every documented response is provoked (but for a few named here), and
//! every event over WebSocket and SSE matches its AsyncAPI message.

mod common;

use std::collections::BTreeSet;

use common::*;
use http::Method;
use serde_json::{json, Value};

/// Documented responses the tests here do not provoke, and why.
const NOT_PROVOKED: &[(&str, &str, &str, &str)] = &[
    (
        "/api/v1/products",
        "get",
        "503",
        "the database is down: tests/cluster.rs",
    ),
    (
        "/api/v1/products",
        "post",
        "503",
        "the database is down: tests/cluster.rs",
    ),
    (
        "/api/v1/products/{id}",
        "get",
        "503",
        "the database is down",
    ),
    (
        "/api/v1/products/{id}",
        "patch",
        "503",
        "the database is down",
    ),
    (
        "/api/v1/products/{id}",
        "delete",
        "503",
        "the database is down",
    ),
    (
        "/api/v1/ready",
        "get",
        "503",
        "the database is down: tests/cluster.rs",
    ),
    (
        "/api/v1/products",
        "post",
        "408",
        "a stalled body: tests/limits.rs",
    ),
    (
        "/api/v1/products/{id}",
        "patch",
        "408",
        "a stalled body: tests/limits.rs",
    ),
    (
        "/api/v1/events",
        "get",
        "403",
        "an origin allow-list: tests/sse.rs",
    ),
    (
        "/api/v1/events",
        "get",
        "429",
        "a per-address cap: tests/limits.rs",
    ),
    (
        "/api/v1/events",
        "get",
        "503",
        "a connection cap: tests/sse.rs",
    ),
    ("/", "get", "403", "an origin allow-list: tests/binary.rs"),
    ("/", "get", "429", "a per-address cap: tests/limits.rs"),
    ("/", "get", "503", "a connection cap: tests/binary.rs"),
    (
        "/",
        "get",
        "101",
        "a WebSocket: checked below over a real socket",
    ),
];

struct Docs {
    openapi: Value,
    asyncapi: Value,
    provoked: BTreeSet<(String, String, String)>,
}

impl Docs {
    /// Checks `reply` to `method` on the documented `path`: its status is
    /// documented there, and its JSON body matches the schema.
    fn check(&mut self, path: &str, method: Method, reply: &Reply) {
        let method = method.as_str().to_ascii_lowercase();
        let status = reply.status.as_str().to_owned();
        let documented = &self.openapi["paths"][path][&method]["responses"][&status];
        assert!(
            documented.is_object(),
            "{method} {path} answered {status}, which openapi.json does not list: {}",
            reply.text()
        );
        let content_type = reply.headers.get("content-type").map(|value| {
            value
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_owned()
        });
        match (&documented["content"], content_type.as_deref()) {
            (Value::Null, None) => assert!(reply.body.is_empty(), "{method} {path} {status}"),
            (Value::Null, Some(other)) => panic!("{method} {path} {status}: undocumented {other}"),
            (content, Some(content_type)) => {
                let schema = &content[content_type]["schema"];
                assert!(
                    schema.is_object(),
                    "{method} {path} {status}: {content_type} undocumented"
                );
                if content_type == "application/json" {
                    let body: Value = serde_json::from_slice(&reply.body).unwrap();
                    validate(
                        &self.openapi,
                        schema,
                        &body,
                        &format!("{method} {path} {status}"),
                    );
                }
            }
            (_, None) => panic!("{method} {path} {status}: no content-type"),
        }
        self.provoked.insert((path.to_owned(), method, status));
    }

    /// Checks an event's JSON against the AsyncAPI message `name`.
    fn check_event(&self, name: &str, text: &str) {
        let payload = &self.asyncapi["components"]["messages"][name]["payload"];
        let event: Value = serde_json::from_str(text).unwrap();
        validate(&self.asyncapi, payload, &event, name);
    }
}

/// A request body that announces `0` bytes and never sends one.
struct Declared(u64);

impl hyper::body::Body for Declared {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Pending
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.0)
    }
}

/// Sends `method` on `path` as an admin with a body of `length` bytes
/// announced and never sent, and returns the server's answer.
async fn send_declared(
    addr: std::net::SocketAddr,
    method: Method,
    path: &str,
    length: u64,
) -> Reply {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {}", admin_token()))
        .body(Declared(length))
        .unwrap();
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("an answer before the body")
        .unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// Validates `instance` against `schema`, whose `$ref`s point into `root`.
fn validate(root: &Value, schema: &Value, instance: &Value, what: &str) {
    let mut schema = schema.clone();
    schema["components"] = root["components"].clone();
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    if let Err(error) = validator.validate(instance) {
        panic!("{what}: {error}\n{instance}");
    }
}

#[tokio::test]
async fn the_documents_describe_what_the_server_answers() {
    let dir = TempDir::new("api-docs");
    let (mut server, addr) = start_binary(&dir).await;
    let admin = admin_token();
    let visitor = token("user");

    let served = |name: &str| {
        let path = format!("{}/api/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str::<Value>(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let openapi_reply = get(addr, "/api/v1/openapi.json").await;
    let asyncapi_reply = get(addr, "/api/v1/asyncapi.json").await;
    let mut docs = Docs {
        openapi: served("openapi.json"),
        asyncapi: served("asyncapi.json"),
        provoked: BTreeSet::new(),
    };
    assert_eq!(openapi_reply.json(), docs.openapi);
    assert_eq!(asyncapi_reply.json(), docs.asyncapi);
    docs.check("/api/v1/openapi.json", Method::GET, &openapi_reply);
    docs.check("/api/v1/asyncapi.json", Method::GET, &asyncapi_reply);

    // Events, over both transports, from here on.
    let (mut ws, welcome) = ws_resume(addr, "").await;
    docs.check_event("welcome", &welcome);
    let mut sse = SseClient::open(addr, "/api/v1/events", &[]).await;
    sse.next_block().await.unwrap();
    let stream = &docs.openapi["paths"]["/api/v1/events"]["get"]["responses"]["200"];
    assert_eq!(sse.status, 200);
    assert!(stream["content"][sse.headers["content-type"].to_str().unwrap()].is_object());
    docs.provoked
        .insert(("/api/v1/events".into(), "get".into(), "200".into()));

    let send = |method: Method, path: String, token: Option<String>, body: String| async move {
        common::send(addr, method, &path, token.as_deref(), body).await
    };
    let admin = Some(admin);
    let products = "/api/v1/products";
    let one = "/api/v1/products/{id}";
    for (path, reply) in [
        ("/api/v1/health", get(addr, "/api/v1/health").await),
        ("/api/v1/ready", get(addr, "/api/v1/ready").await),
        ("/", get(addr, "/").await),
        ("/app.js", get(addr, "/app.js").await),
        ("/app.css", get(addr, "/app.css").await),
        ("/metrics", get(addr, "/metrics").await),
        (products, get(addr, "/api/v1/products?page=1&limit=5").await),
        (products, get(addr, "/api/v1/products?page=0").await),
    ] {
        docs.check(path, Method::GET, &reply);
    }
    let created = send(
        Method::POST,
        products.into(),
        admin.clone(),
        product_body(1).to_string(),
    )
    .await;
    docs.check(products, Method::POST, &created);
    let id = created.json()["product"]["_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let at = format!("/api/v1/products/{id}");
    let missing = "/api/v1/products/0123456789abcdef01234567".to_owned();
    for (method, path, documented, token, body) in [
        (Method::POST, products.to_owned(), products, admin.clone(), product_body(1).to_string()),
        (Method::POST, products.to_owned(), products, None, product_body(2).to_string()),
        (Method::POST, products.to_owned(), products, Some(visitor.clone()), product_body(2).to_string()),
        (Method::POST, products.to_owned(), products, admin.clone(), "{}".to_owned()),
        (Method::POST, products.to_owned(), products, admin.clone(), json!({"basePriceCHF": -1, "slug": "a", "name": "a", "category": "a", "description": "a", "image": "a"}).to_string()),
        (Method::GET, at.clone(), one, None, String::new()),
        (Method::GET, "/api/v1/products/nope".to_owned(), one, None, String::new()),
        (Method::GET, missing.clone(), one, None, String::new()),
        (Method::PATCH, at.clone(), one, admin.clone(), json!({"name": "Renamed"}).to_string()),
        (Method::PATCH, at.clone(), one, None, "{}".to_owned()),
        (Method::PATCH, at.clone(), one, Some(visitor.clone()), "{}".to_owned()),
        (Method::PATCH, "/api/v1/products/nope".to_owned(), one, admin.clone(), "{}".to_owned()),
        (Method::PATCH, missing.clone(), one, admin.clone(), "{}".to_owned()),
        (Method::PATCH, at.clone(), one, admin.clone(), json!({"basePriceCHF": "free"}).to_string()),
        (Method::DELETE, at.clone(), one, None, String::new()),
        (Method::DELETE, at.clone(), one, Some(visitor.clone()), String::new()),
        (Method::DELETE, "/api/v1/products/nope".to_owned(), one, admin.clone(), String::new()),
        (Method::DELETE, missing, one, admin.clone(), String::new()),
    ] {
        let reply = send(method.clone(), path, token, body).await;
        docs.check(documented, method, &reply);
    }
    // Bodies over 1 MiB are refused from their Content-Length alone.
    for (method, path, documented) in [
        (Method::POST, products.to_owned(), products),
        (Method::PATCH, at.clone(), one),
    ] {
        let reply = send_declared(addr, method.clone(), &path, 2 * 1024 * 1024).await;
        docs.check(documented, method, &reply);
    }
    // A second product, so that renaming the first to its name conflicts.
    send(
        Method::POST,
        products.into(),
        admin.clone(),
        product_body(2).to_string(),
    )
    .await;
    let conflict = send(
        Method::PATCH,
        at.clone(),
        admin.clone(),
        json!({"name": "Matcha Latte 2"}).to_string(),
    )
    .await;
    docs.check(one, Method::PATCH, &conflict);
    let deleted = send(Method::DELETE, at, admin, String::new()).await;
    docs.check(one, Method::DELETE, &deleted);
    let bad_handshake = get_with(addr, "/", &[("upgrade", "websocket")]).await;
    docs.check("/", Method::GET, &bad_handshake);
    let old_version = get_with(
        addr,
        "/",
        &[
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "8"),
        ],
    )
    .await;
    docs.check("/", Method::GET, &old_version);

    // The events those requests made: created, renamed, created, deleted.
    for kind in [
        "new_product",
        "product_updated",
        "new_product",
        "product_deleted",
    ] {
        let event = next_text(&mut ws).await;
        assert_eq!(serde_json::from_str::<Value>(&event).unwrap()["type"], kind);
        docs.check_event(kind, &event);
        let (data, id) = sse.next_event().await;
        assert_eq!(data, event, "the same JSON over SSE");
        assert!(id.is_some());
    }
    let (mut resynced, _) = ws_resume(addr, "999").await;
    docs.check_event("resync", &next_text(&mut resynced).await);

    // Every documented response was provoked, but for those named above.
    let mut missing = Vec::new();
    for (path, operations) in docs.openapi["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            for status in operation["responses"]
                .as_object()
                .into_iter()
                .flat_map(|r| r.keys())
            {
                let key = (path.clone(), method.clone(), status.clone());
                let exempt = NOT_PROVOKED.iter().any(|(p, m, s, _)| {
                    (*p, *m, *s) == (path.as_str(), method.as_str(), status.as_str())
                });
                if !docs.provoked.contains(&key) && !exempt {
                    missing.push(key);
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "documented but never provoked: {missing:?}"
    );
    drop((ws, resynced, sse));
    stop_binary(&mut server).await;
}
