//! The HTTP contract, end to end: a real server on a free port, a real
//! SQLite file, requests over TCP.

mod common;

use common::*;
use http::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

const REQUIRED: &str =
    r#"{"message":"slug, name, category, description, basePriceCHF and image are required"}"#;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(algorithm: Algorithm, secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn health_unknown_routes_and_wrong_methods() {
    let dir = TempDir::new("routes");
    let server = TestServer::start(&dir.database()).await;

    let health = get(server.addr, "/api/v1/health").await;
    assert_eq!((health.status.as_u16(), health.text()), (200, "Ignition!"));

    for path in [
        "/nope",
        "/api/v1",
        "/api/v2/products",
        "/api/v1/products/a/b",
    ] {
        get(server.addr, path)
            .await
            .assert_json(404, r#"{"message":"Route not found"}"#);
    }

    for (method, path, allow) in [
        (Method::PUT, "/api/v1/products", "GET, POST"),
        (
            Method::PUT,
            "/api/v1/products/65643f1adeadbeef010a0b0c",
            "GET, PATCH, DELETE",
        ),
        (Method::POST, "/api/v1/health", "GET"),
        (Method::POST, "/", "GET"),
    ] {
        let reply = send(server.addr, method, path, None, "").await;
        reply.assert_json(405, r#"{"message":"Method not allowed"}"#);
        assert_eq!(reply.headers["allow"], allow);
    }

    server.stop().await;
}

/// A GET with extra headers, on a fresh connection.
async fn get_with(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::get(path).header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Full::new(bytes::Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

#[tokio::test]
async fn browsers_get_the_live_page_on_the_websocket_endpoint() {
    let dir = TempDir::new("page");
    let server = TestServer::start(&dir.database()).await;
    let addr = server.addr;

    // What a browser sends when it opens the address.
    let browser = [
        ("accept", "text/html,application/xhtml+xml"),
        ("connection", "keep-alive"),
    ];
    for path in ["/", "/?since=3"] {
        let page = get_with(addr, path, &browser).await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(
            page.headers["content-security-policy"],
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        );
        assert_eq!(page.headers["x-content-type-options"], "nosniff");
        assert_eq!(page.text(), include_str!("../src/page/index.html"));
    }
    for (path, content_type, body) in [
        (
            "/app.js",
            "text/javascript; charset=utf-8",
            include_str!("../src/page/app.js"),
        ),
        (
            "/app.css",
            "text/css; charset=utf-8",
            include_str!("../src/page/app.css"),
        ),
    ] {
        let asset = get(addr, path).await;
        assert_eq!(
            (asset.status, &asset.headers["content-type"], asset.text()),
            (StatusCode::OK, &content_type.parse().unwrap(), body)
        );
        let reply = send(addr, Method::POST, path, None, "").await;
        reply.assert_json(405, r#"{"message":"Method not allowed"}"#);
        assert_eq!(reply.headers["allow"], "GET");
    }

    // A request that asks for a WebSocket at all goes to the hub, which
    // says what is wrong with it.
    for (headers, error) in [
        (
            &[("upgrade", "websocket")][..],
            r#"missing "Connection: upgrade" header"#,
        ),
        (
            &[("connection", "upgrade"), ("upgrade", "h2c")][..],
            r#"missing "Upgrade: websocket" header"#,
        ),
        (
            &[
                ("connection", "upgrade"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ][..],
            r#"missing "Upgrade: websocket" header"#,
        ),
    ] {
        let refused = get_with(addr, "/", headers).await;
        assert_eq!(
            (refused.status, refused.text()),
            (StatusCode::BAD_REQUEST, error),
            "{headers:?}"
        );
    }
    // And a WebSocket client still connects, welcome and all.
    drop(ws_connect(addr).await);
    server.stop().await;
}

#[tokio::test]
async fn creation_requires_an_admin_token() {
    let dir = TempDir::new("auth");
    let server = TestServer::start(&dir.database()).await;
    let body = product_body(1);
    let addr = server.addr;

    post_product(addr, None, &body)
        .await
        .assert_json(401, r#"{"message":"Token missing"}"#);

    let invalid =
        |reason: &str| format!(r#"{{"message":"Invalid or expired token","error":"{reason}"}}"#);
    post_product(addr, Some("garbage"), &body)
        .await
        .assert_json(401, &invalid("jwt malformed"));

    let expired = sign(
        Algorithm::HS256,
        SECRET,
        json!({"id": "u1", "role": "admin", "iat": unix_now() - 120, "exp": unix_now() - 60}),
    );
    post_product(addr, Some(&expired), &body)
        .await
        .assert_json(401, &invalid("jwt expired"));

    let fresh = json!({"id": "u1", "role": "admin", "iat": unix_now(), "exp": unix_now() + 60});
    let early = sign(
        Algorithm::HS256,
        SECRET,
        json!({"id": "u1", "role": "admin", "nbf": unix_now() + 60, "exp": unix_now() + 120}),
    );
    post_product(addr, Some(&early), &body)
        .await
        .assert_json(401, &invalid("jwt not active"));
    let other_secret = sign(Algorithm::HS256, "not-the-secret", fresh.clone());
    post_product(addr, Some(&other_secret), &body)
        .await
        .assert_json(401, &invalid("invalid signature"));

    // A user's token with its payload swapped for an admin's.
    let user = server.token("user");
    let admin = server.admin_token();
    let [header, _, signature]: [&str; 3] = user.split('.').collect::<Vec<_>>().try_into().unwrap();
    let admin_payload = admin.split('.').nth(1).unwrap();
    let tampered = format!("{header}.{admin_payload}.{signature}");
    post_product(addr, Some(&tampered), &body)
        .await
        .assert_json(401, &invalid("invalid signature"));

    let hs512 = sign(Algorithm::HS512, SECRET, fresh.clone());
    post_product(addr, Some(&hs512), &body)
        .await
        .assert_json(401, &invalid("invalid algorithm"));

    // {"alg":"none"} with the same claims and no signature.
    let payload = hs512.split('.').nth(1).unwrap();
    let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    assert_eq!(
        post_product(addr, Some(&unsigned), &body).await.status,
        StatusCode::UNAUTHORIZED
    );

    post_product(addr, Some(&server.token("user")), &body)
        .await
        .assert_json(403, r#"{"message":"Access restricted to administrators"}"#);

    // Nothing above was stored.
    let listing = get(addr, "/api/v1/products").await.json();
    assert_eq!(listing["totalProducts"], 0);

    // A token signed elsewhere with the shared secret, as the Ocha API issues them.
    let ocha_token = sign(Algorithm::HS256, SECRET, fresh);
    assert_eq!(
        post_product(addr, Some(&ocha_token), &body).await.status,
        StatusCode::CREATED
    );
    server.stop().await;
}

#[tokio::test]
async fn creates_a_product_with_defaults_and_serves_it_back() {
    let dir = TempDir::new("create");
    let server = TestServer::start(&dir.database()).await;
    let mut body = product_body(1);
    body["slug"] = json!("  matcha-latte-1 ");
    body["color"] = json!("green");
    let before = unix_now();

    let created = post_product(server.addr, Some(&server.admin_token()), &body).await;
    assert_eq!(created.status, StatusCode::CREATED);
    created.assert_json_type();
    let document = created.json();
    assert_eq!(document["message"], "Product created");
    let product = &document["product"];

    let id = product["_id"].as_str().unwrap();
    assert_eq!(id.len(), 24);
    assert!(id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let seconds = u64::from_str_radix(&id[..8], 16).unwrap();
    assert!((before..=unix_now()).contains(&seconds), "{id}");

    let created_at = product["createdAt"].as_str().unwrap();
    assert_eq!(created_at.len(), "2025-11-27T17:48:28.123Z".len());
    assert!(created_at.ends_with('Z') && created_at.as_bytes()[19] == b'.');
    assert_eq!(product["updatedAt"], product["createdAt"]);

    // Field order and values as the Ocha API sends them.
    let expected = format!(
        r#"{{"message":"Product created","product":{{"_id":"{id}","slug":"matcha-latte-1","name":"Matcha Latte 1","category":"tea","description":"Ceremonial matcha with oat milk","basePriceCHF":6.5,"isActive":true,"image":"/img/matcha.png","size":["S","M","L"],"extra_chf":{{"S":0,"M":2,"L":3}},"createdAt":"{created_at}","updatedAt":"{created_at}"}}}}"#
    );
    assert_eq!(created.text(), expected);

    let found = get(server.addr, &format!("/api/v1/products/{id}")).await;
    found.assert_json(
        200,
        &format!(
            r#"{{"message":"Product found","product":{}}}"#,
            raw_product(&created)
        ),
    );
    // MongoDB ids are case-insensitive hex.
    let upper = get(
        server.addr,
        &format!("/api/v1/products/{}", id.to_uppercase()),
    )
    .await;
    assert_eq!(upper.json()["product"], *product);

    let listing = get(server.addr, "/api/v1/products").await;
    listing.assert_json(
        200,
        &format!(
            r#"{{"message":"List of products","page":1,"totalPages":1,"totalProducts":1,"products":[{}]}}"#,
            raw_product(&created)
        ),
    );
    server.stop().await;
}

#[tokio::test]
async fn accepts_explicit_optional_fields() {
    let dir = TempDir::new("optional");
    let server = TestServer::start(&dir.database()).await;
    let mut body = product_body(1);
    body["isActive"] = json!(false);
    body["size"] = json!(["L", "M"]);
    body["extra_chf"] = json!({"M": 1.5});
    body["basePriceCHF"] = json!(0);

    let product = post_product(server.addr, Some(&server.admin_token()), &body)
        .await
        .json()["product"]
        .clone();
    assert_eq!(product["isActive"], false);
    assert_eq!(product["size"], json!(["L", "M"]));
    assert_eq!(product["extra_chf"], json!({"S": 0, "M": 1.5, "L": 3}));
    assert_eq!(product["basePriceCHF"], 0);
    server.stop().await;
}

#[tokio::test]
async fn rejects_bad_products_with_the_ocha_statuses() {
    let dir = TempDir::new("invalid");
    let server = TestServer::start(&dir.database()).await;
    let token = server.admin_token();
    let post = |body: String| {
        send(
            server.addr,
            Method::POST,
            "/api/v1/products",
            Some(&token),
            body,
        )
    };
    let with = |field: &str, value: Value| {
        let mut body = product_body(1);
        body[field] = value;
        body.to_string()
    };
    let without = |field: &str| {
        let mut body = product_body(1);
        body.as_object_mut().unwrap().remove(field);
        body.to_string()
    };

    for field in [
        "slug",
        "name",
        "category",
        "description",
        "basePriceCHF",
        "image",
    ] {
        post(without(field)).await.assert_json(400, REQUIRED);
        post(with(field, json!("")))
            .await
            .assert_json(400, REQUIRED);
        post(with(field, json!("   ")))
            .await
            .assert_json(400, REQUIRED);
        post(with(field, Value::Null))
            .await
            .assert_json(400, REQUIRED);
    }
    // Missing fields are reported before wrong types.
    let mut both = product_body(1);
    both["slug"] = json!(7);
    both.as_object_mut().unwrap().remove("image");
    post(both.to_string()).await.assert_json(400, REQUIRED);

    let invalid = |error: &str| format!(r#"{{"message":"Invalid data","error":"{error}"}}"#);
    for (body, error) in [
        (
            with("slug", json!(7)),
            "slug must be a string, found a number",
        ),
        (
            with("basePriceCHF", json!("6.5")),
            "basePriceCHF must be a number, found a string",
        ),
        (
            with("basePriceCHF", json!(-1)),
            "basePriceCHF must not be negative",
        ),
        (
            with("isActive", json!("yes")),
            "isActive must be a boolean, found a string",
        ),
        (
            with("size", json!(["S", "XL"])),
            r#"size[1] must be \"S\", \"M\" or \"L\""#,
        ),
        (
            with("size", json!(["S", "S"])),
            "size lists S more than once",
        ),
        (with("size", json!([])), "size must list at least one size"),
        (
            with("extra_chf", json!({"L": -3})),
            "extra_chf.L must not be negative",
        ),
        (
            with("extra_chf", json!(3)),
            "extra_chf must be an object, found a number",
        ),
        (
            with("name", json!("n".repeat(201))),
            "name must be at most 200 characters",
        ),
        (
            with("description", json!("d".repeat(5001))),
            "description must be at most 5000 characters",
        ),
    ] {
        post(body).await.assert_json(422, &invalid(error));
    }

    for (body, error) in [
        ("{\"slug\":", "EOF while parsing a value at line 1 column 8"),
        ("[1, 2]", "expected an object, found an array"),
        ("", "EOF while parsing a value at line 1 column 0"),
    ] {
        post(body.to_owned()).await.assert_json(
            400,
            &format!(r#"{{"message":"Invalid JSON","error":"{error}"}}"#),
        );
    }

    assert_eq!(
        get(server.addr, "/api/v1/products").await.json()["totalProducts"],
        0
    );

    create(&server, 1).await;
    let mut same_slug = product_body(2);
    same_slug["slug"] = json!("matcha-latte-1");
    post(same_slug.to_string())
        .await
        .assert_json(409, r#"{"message":"Slug already in use"}"#);
    let mut same_name = product_body(3);
    same_name["name"] = json!("Matcha Latte 1");
    post(same_name.to_string())
        .await
        .assert_json(409, r#"{"message":"Name already in use"}"#);
    // Trimming applies before the uniqueness check.
    post(with("slug", json!("  matcha-latte-1  ")))
        .await
        .assert_json(409, r#"{"message":"Slug already in use"}"#);

    assert_eq!(
        get(server.addr, "/api/v1/products").await.json()["totalProducts"],
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn bodies_are_limited_to_one_mebibyte() {
    const LIMIT: usize = 1024 * 1024;
    let dir = TempDir::new("limit");
    let server = TestServer::start(&dir.database()).await;
    let token = server.admin_token();

    // A valid product padded with whitespace to exactly the limit is accepted...
    let mut at_limit = product_body(1).to_string().into_bytes();
    at_limit.resize(LIMIT, b' ');
    let reply = send(
        server.addr,
        Method::POST,
        "/api/v1/products",
        Some(&token),
        at_limit,
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());

    // ...and one byte more is not.
    let mut over = product_body(2).to_string().into_bytes();
    over.resize(LIMIT + 1, b' ');
    send(
        server.addr,
        Method::POST,
        "/api/v1/products",
        Some(&token),
        over,
    )
    .await
    .assert_json(
        413,
        r#"{"message":"Request body too large","error":"the limit is 1048576 bytes"}"#,
    );
    assert_eq!(
        get(server.addr, "/api/v1/products").await.json()["totalProducts"],
        1
    );
    server.stop().await;
}

#[tokio::test]
async fn lists_with_paging_filter_and_limit_cap() {
    let dir = TempDir::new("list");
    let server = TestServer::start(&dir.database()).await;
    let token = server.admin_token();
    for n in 1..=105 {
        let mut body = product_body(n);
        body["isActive"] = json!(n % 5 != 0);
        let reply = post_product(server.addr, Some(&token), &body).await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    let slugs = |listing: &Value| -> Vec<String> {
        listing["products"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                p["slug"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("matcha-latte-")
                    .to_owned()
            })
            .collect()
    };

    let first = get(server.addr, "/api/v1/products").await;
    first.assert_json_type();
    let first = first.json();
    assert_eq!(
        (
            &first["message"],
            &first["page"],
            &first["totalPages"],
            &first["totalProducts"]
        ),
        (
            &json!("List of products"),
            &json!(1),
            &json!(11),
            &json!(105)
        )
    );
    assert_eq!(
        slugs(&first),
        (1..=10).map(|n| n.to_string()).collect::<Vec<_>>()
    );

    let third = get(server.addr, "/api/v1/products?page=3&limit=7")
        .await
        .json();
    assert_eq!(
        (&third["page"], &third["totalPages"]),
        (&json!(3), &json!(15))
    );
    assert_eq!(
        slugs(&third),
        (15..=21).map(|n| n.to_string()).collect::<Vec<_>>()
    );

    let capped = get(server.addr, "/api/v1/products?limit=1000").await.json();
    assert_eq!(capped["products"].as_array().unwrap().len(), 100);
    assert_eq!(capped["totalPages"], 2);

    let active = get(server.addr, "/api/v1/products?active=true&limit=100&page=1")
        .await
        .json();
    assert_eq!(active["totalProducts"], 84);
    assert!(active["products"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["isActive"] == true));
    assert_eq!(slugs(&active)[..5], ["1", "2", "3", "4", "6"]);

    let past_the_end = get(server.addr, "/api/v1/products?page=99").await.json();
    assert_eq!(past_the_end["products"], json!([]));
    assert_eq!(past_the_end["totalProducts"], 105);

    for (query, error) in [
        ("page=0", "page must be a whole number from 1 to 4294967295"),
        (
            "page=abc",
            "page must be a whole number from 1 to 4294967295",
        ),
        (
            "limit=-5",
            "limit must be a whole number from 1 to 4294967295",
        ),
        ("active=maybe", "active must be true or false"),
    ] {
        get(server.addr, &format!("/api/v1/products?{query}"))
            .await
            .assert_json(
                400,
                &format!(r#"{{"message":"Invalid query parameters","error":"{error}"}}"#),
            );
    }
    server.stop().await;
}

#[tokio::test]
async fn finds_products_by_id() {
    let dir = TempDir::new("find");
    let server = TestServer::start(&dir.database()).await;
    for id in [
        "123",
        "65643f1adeadbeef010a0b0z",
        "65643f1adeadbeef010a0b0c0",
    ] {
        get(server.addr, &format!("/api/v1/products/{id}"))
            .await
            .assert_json(400, r#"{"message":"Invalid ID format"}"#);
    }
    get(server.addr, "/api/v1/products/65643f1adeadbeef010a0b0c")
        .await
        .assert_json(404, r#"{"message":"Product not found"}"#);
    server.stop().await;
}

#[tokio::test]
async fn a_restart_on_the_same_database_keeps_every_product() {
    let dir = TempDir::new("restart");
    let server = TestServer::start(&dir.database()).await;
    let created = [create(&server, 1).await, create(&server, 2).await];
    let listing_before = get(server.addr, "/api/v1/products").await;
    server.stop().await;

    let server = TestServer::start(&dir.database()).await;
    let listing_after = get(server.addr, "/api/v1/products").await;
    assert_eq!(listing_after.text(), listing_before.text());
    assert_eq!(listing_after.json()["totalProducts"], 2);
    for reply in &created {
        let id = reply.json()["product"]["_id"].as_str().unwrap().to_owned();
        let found = get(server.addr, &format!("/api/v1/products/{id}")).await;
        assert_eq!(found.status, StatusCode::OK);
        assert_eq!(found.json()["product"], reply.json()["product"]);
    }
    // The unique constraints persist too.
    post_product(server.addr, Some(&server.admin_token()), &product_body(1))
        .await
        .assert_json(409, r#"{"message":"Slug already in use"}"#);
    server.stop().await;
}
