//! `PATCH` and `DELETE /api/v1/products/:id`, end to end: a real server on
//! a free port and a real database, requests over TCP, and WebSocket
//! clients that must each receive every committed change once, and nothing
//! for a failed request.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::postgres::PostgresServer;
use common::*;
use futures_util::future::join_all;
use http::Method;
use ocha_server::config::Database;
use serde_json::{json, Value};

/// An id no product has.
const UNKNOWN_ID: &str = "65643f1adeadbeef010a0b0c";

const TOKEN_MISSING: &str = r#"{"message":"Token missing"}"#;
const NOT_ADMIN: &str = r#"{"message":"Access restricted to administrators"}"#;
const INVALID_ID: &str = r#"{"message":"Invalid ID format"}"#;
const NOT_FOUND: &str = r#"{"message":"Product not found"}"#;
const SLUG_TAKEN: &str = r#"{"message":"Slug already in use"}"#;
const NAME_TAKEN: &str = r#"{"message":"Name already in use"}"#;

fn invalid_data(error: &str) -> String {
    format!(r#"{{"message":"Invalid data","error":"{error}"}}"#)
}

/// The frame clients receive for an event of `kind` carrying `document`
/// (its exact bytes), the `id`th in the log.
fn frame(kind: &str, document: &str, id: u64) -> String {
    format!(r#"{{"type":"{kind}","product":{document},"id":"{id}"}}"#)
}

/// `PATCH /api/v1/products/{id}` with `body`.
async fn patch_json(addr: SocketAddr, token: Option<&str>, id: &str, body: Value) -> Reply {
    patch_product(addr, token, id, body.to_string()).await
}

/// Reads one frame from each client and asserts it is `expected`.
async fn assert_each_receives(clients: &mut [Ws], expected: &str) {
    for client in clients {
        assert_eq!(next_text(client).await, expected);
    }
}

#[tokio::test]
async fn sqlite_updates_and_deletes_answer_and_broadcast_once() {
    let dir = TempDir::new("patch");
    updates_and_deletes_answer_and_broadcast_once(&Database::File(dir.database())).await;
}

#[tokio::test]
async fn postgres_updates_and_deletes_answer_and_broadcast_once() {
    let postgres = PostgresServer::new();
    updates_and_deletes_answer_and_broadcast_once(&Database::Postgres(postgres.url())).await;
}

async fn updates_and_deletes_answer_and_broadcast_once(database: &Database) {
    let server = TestServer::with_database(database).await;
    let (addr, admin) = (server.addr, server.admin_token());
    let mut clients = [ws_connect(addr).await, ws_connect(addr).await];
    let mut body = product_body(1);
    body["extra_chf"] = json!({"S": 1, "M": 2.5, "L": 4});
    let created = post_product(addr, Some(&admin), &body).await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_each_receives(
        &mut clients,
        &frame("new_product", raw_product(&created), 1),
    )
    .await;
    let id = product_id(&created);
    let before = created.json()["product"].clone();

    // Apart from the creation, so that the new updatedAt differs.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let changes = json!({
        "name": "  Hojicha Latte ",
        "basePriceCHF": 7,
        "extra_chf": {"M": 1.5},
        "createdAt": "2020-01-01T00:00:00.000Z",
        "color": "brown"
    });
    // Ids are case-insensitive hex, as for a read.
    let updated = patch_product(addr, Some(&admin), &id.to_uppercase(), changes.to_string()).await;
    assert_eq!(updated.status, 200, "{}", updated.text());
    updated.assert_json_type();
    let updated_at = updated.json()["product"]["updatedAt"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        updated_at.len() == 24 && updated_at.as_str() > before["updatedAt"].as_str().unwrap(),
        "{updated_at}"
    );
    // The fields sent, trimmed; extra_chf whole, sizes left out at their
    // default; the rest, createdAt included, as it was; in the API's order.
    let expected = format!(
        r#"{{"message":"Product updated","product":{{"_id":"{id}","slug":"matcha-latte-1","name":"Hojicha Latte","category":"tea","description":"Ceremonial matcha with oat milk","basePriceCHF":7,"isActive":true,"image":"/img/matcha.png","size":["S","M","L"],"extra_chf":{{"S":0,"M":1.5,"L":3}},"createdAt":"{}","updatedAt":"{updated_at}"}}}}"#,
        before["createdAt"].as_str().unwrap()
    );
    assert_eq!(updated.text(), expected);
    let document = raw_product(&updated).to_owned();
    assert_each_receives(&mut clients, &frame("product_updated", &document, 2)).await;

    get(addr, &format!("/api/v1/products/{id}"))
        .await
        .assert_json(
            200,
            &format!(r#"{{"message":"Product found","product":{document}}}"#),
        );
    let listing = get(addr, "/api/v1/products").await;
    assert!(listing.text().contains(&document), "{}", listing.text());

    let deleted = delete_product(addr, Some(&admin), &id).await;
    assert_eq!(deleted.status, 204);
    assert!(deleted.body.is_empty(), "{:?}", deleted.body);
    // The document as it was just before.
    assert_each_receives(&mut clients, &frame("product_deleted", &document, 3)).await;

    get(addr, &format!("/api/v1/products/{id}"))
        .await
        .assert_json(404, NOT_FOUND);
    assert_eq!(
        get(addr, "/api/v1/products").await.json()["totalProducts"],
        0
    );
    // Its slug and name are free again.
    let again = post_product(addr, Some(&admin), &product_body(1)).await;
    assert_eq!(again.status, 201, "{}", again.text());
    assert_each_receives(&mut clients, &frame("new_product", raw_product(&again), 4)).await;

    join_all(clients.iter_mut().map(assert_quiet)).await;
    // Gone clients let shutdown skip the closing handshake.
    drop(clients);
    server.stop().await;
}

#[tokio::test]
async fn failed_updates_and_deletes_answer_as_creation_does_and_broadcast_nothing() {
    let dir = TempDir::new("patch-errors");
    let server = TestServer::start(&dir.database()).await;
    let (addr, admin, user) = (server.addr, server.admin_token(), server.token("user"));
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(product_id(&create(&server, n).await));
    }
    let mut clients = [ws_connect(addr).await, ws_connect(addr).await];
    let rename = json!({"name": "Hojicha"});

    // Authorization first, with the bodies creation answers, even for an
    // invalid id or body.
    for id in [ids[0].as_str(), "nope"] {
        patch_json(addr, None, id, json!([]))
            .await
            .assert_json(401, TOKEN_MISSING);
        delete_product(addr, None, id)
            .await
            .assert_json(401, TOKEN_MISSING);
        let garbage = patch_json(addr, Some("garbage"), id, rename.clone()).await;
        garbage.assert_json(
            401,
            r#"{"message":"Invalid or expired token","error":"jwt malformed"}"#,
        );
        patch_json(addr, Some(&user), id, rename.clone())
            .await
            .assert_json(403, NOT_ADMIN);
        delete_product(addr, Some(&user), id)
            .await
            .assert_json(403, NOT_ADMIN);
    }

    // Then the id's format, then the body, then whether the product exists.
    for id in [
        "123",
        "65643f1adeadbeef010a0b0z",
        "65643f1adeadbeef010a0b0c0",
    ] {
        patch_json(addr, Some(&admin), id, json!([]))
            .await
            .assert_json(400, INVALID_ID);
        delete_product(addr, Some(&admin), id)
            .await
            .assert_json(400, INVALID_ID);
    }
    for id in [ids[0].as_str(), UNKNOWN_ID] {
        patch_product(addr, Some(&admin), id, "{\"name\":")
            .await
            .assert_json(
                400,
                r#"{"message":"Invalid JSON","error":"EOF while parsing a value at line 1 column 8"}"#,
            );
        patch_json(addr, Some(&admin), id, json!(["name"]))
            .await
            .assert_json(
                400,
                r#"{"message":"Invalid JSON","error":"expected an object, found an array"}"#,
            );
        for (body, error) in [
            (json!({"name": "  "}), "name must not be empty"),
            (json!({"slug": null}), "slug must be a string, found null"),
            (
                json!({"basePriceCHF": -1}),
                "basePriceCHF must not be negative",
            ),
            (
                json!({"isActive": "yes"}),
                "isActive must be a boolean, found a string",
            ),
            (
                json!({"size": ["S", "XL"]}),
                r#"size[1] must be \"S\", \"M\" or \"L\""#,
            ),
            (
                json!({"extra_chf": {"L": -3}}),
                "extra_chf.L must not be negative",
            ),
            (
                json!({"description": "d".repeat(5001)}),
                "description must be at most 5000 characters",
            ),
        ] {
            patch_json(addr, Some(&admin), id, body)
                .await
                .assert_json(422, &invalid_data(error));
        }
        let mut huge = rename.to_string().into_bytes();
        huge.resize(1024 * 1024 + 1, b' ');
        patch_product(addr, Some(&admin), id, huge)
            .await
            .assert_json(
                413,
                r#"{"message":"Request body too large","error":"the limit is 1048576 bytes"}"#,
            );
    }
    patch_json(addr, Some(&admin), UNKNOWN_ID, rename.clone())
        .await
        .assert_json(404, NOT_FOUND);
    delete_product(addr, Some(&admin), UNKNOWN_ID)
        .await
        .assert_json(404, NOT_FOUND);

    // Another product's slug or name, trimmed first; the slug first when
    // both are taken, by one product or two.
    for (body, conflict) in [
        (json!({"slug": " matcha-latte-2 "}), SLUG_TAKEN),
        (json!({"name": "Matcha Latte 2"}), NAME_TAKEN),
        (
            json!({"slug": "matcha-latte-2", "name": "Matcha Latte 2"}),
            SLUG_TAKEN,
        ),
        (
            json!({"slug": "matcha-latte-2", "name": "Matcha Latte 3"}),
            SLUG_TAKEN,
        ),
        (
            json!({"slug": "matcha-latte-1", "name": "Matcha Latte 3"}),
            NAME_TAKEN,
        ),
    ] {
        patch_json(addr, Some(&admin), &ids[0], body)
            .await
            .assert_json(409, conflict);
    }

    let wrong_method = send(
        addr,
        Method::PUT,
        &format!("/api/v1/products/{}", ids[0]),
        Some(&admin),
        rename.to_string(),
    )
    .await;
    wrong_method.assert_json(405, r#"{"message":"Method not allowed"}"#);
    assert_eq!(wrong_method.headers["allow"], "GET, PATCH, DELETE");

    // Nothing changed, nothing was broadcast, and no event id was taken.
    let first = get(addr, &format!("/api/v1/products/{}", ids[0])).await;
    assert_eq!(first.json()["product"]["name"], "Matcha Latte 1");
    assert_eq!(
        first.json()["product"]["updatedAt"],
        first.json()["product"]["createdAt"]
    );
    assert_eq!(
        get(addr, "/api/v1/products").await.json()["totalProducts"],
        3
    );
    join_all(clients.iter_mut().map(assert_quiet)).await;
    let renamed = patch_json(addr, Some(&admin), &ids[0], rename).await;
    assert_eq!(renamed.status, 200, "{}", renamed.text());
    assert_each_receives(
        &mut clients,
        &frame("product_updated", raw_product(&renamed), 4),
    )
    .await;
    drop(clients);
    server.stop().await;
}

#[tokio::test]
async fn an_update_that_changes_nothing_still_answers_200_stamps_and_broadcasts() {
    let dir = TempDir::new("patch-noop");
    let server = TestServer::start(&dir.database()).await;
    let (addr, admin) = (server.addr, server.admin_token());
    let created = create(&server, 1).await;
    let id = product_id(&created);
    let mut client = ws_connect(addr).await;

    let mut previous = created.json()["product"].clone();
    let unchanged = previous["name"].clone();
    // No body at all (Express reads it as {}), an empty object, only
    // fields clients may not set, and a field set to its current value.
    let bodies = [
        String::new(),
        "{}".to_owned(),
        json!({"_id": UNKNOWN_ID, "updatedAt": "2020-01-01T00:00:00.000Z", "color": "green"})
            .to_string(),
        json!({ "name": unchanged }).to_string(),
    ];
    for (n, body) in bodies.into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let updated = patch_product(addr, Some(&admin), &id, body.clone()).await;
        assert_eq!(updated.status, 200, "{body:?}: {}", updated.text());
        let product = updated.json()["product"].clone();
        // Only updatedAt moved on.
        assert!(
            product["updatedAt"].as_str() > previous["updatedAt"].as_str(),
            "{body:?}"
        );
        previous["updatedAt"] = product["updatedAt"].clone();
        assert_eq!(product, previous, "{body:?}");
        assert_eq!(
            next_text(&mut client).await,
            frame("product_updated", raw_product(&updated), 2 + n as u64)
        );
    }
    assert_quiet(&mut client).await;
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn null_resets_optional_fields_and_extra_chf_is_replaced_whole() {
    let dir = TempDir::new("patch-defaults");
    let server = TestServer::start(&dir.database()).await;
    let (addr, admin) = (server.addr, server.admin_token());
    let mut body = product_body(1);
    body["isActive"] = json!(false);
    body["size"] = json!(["L"]);
    body["extra_chf"] = json!({"S": 1, "M": 2.5, "L": 4});
    let id = product_id(&post_product(addr, Some(&admin), &body).await);

    let patched = |body: Value| {
        let admin = admin.clone();
        let id = id.clone();
        async move {
            let reply = patch_product(addr, Some(&admin), &id, body.to_string()).await;
            assert_eq!(reply.status, 200, "{}", reply.text());
            reply.json()["product"].clone()
        }
    };
    // Sizes left out of extra_chf take their default, not their value.
    let product = patched(json!({"extra_chf": {"L": 5}})).await;
    assert_eq!(product["extra_chf"], json!({"S": 0, "M": 2, "L": 5}));
    assert_eq!(
        (&product["isActive"], &product["size"]),
        (&json!(false), &json!(["L"]))
    );
    let product = patched(json!({"extra_chf": {"S": null, "M": 1}})).await;
    assert_eq!(product["extra_chf"], json!({"S": 0, "M": 1, "L": 3}));

    // null means the default, as on creation.
    let product = patched(json!({"isActive": null, "size": null, "extra_chf": null})).await;
    assert_eq!(
        (
            &product["isActive"],
            &product["size"],
            &product["extra_chf"]
        ),
        (
            &json!(true),
            &json!(["S", "M", "L"]),
            &json!({"S": 0, "M": 2, "L": 3})
        )
    );
    server.stop().await;
}
