//! The hub inside an axum application: a handler hands the request to
//! `Hub::upgrade` as it is, whatever axum's body type. `axum::serve` wraps
//! each socket before hyper sees it, so the listener lets the hub tune them
//! as they are accepted (`Hub::tune`).
//!
//!     cargo run -p examples --example embed_axum
//!     cargo run -p examples --example listen          # in another terminal
//!     curl -H 'content-type: application/json' localhost:5001/products -d '{
//!       "_id": "65f1c0de0123456789abcdef", "slug": "hojicha", "name": "Hojicha",
//!       "category": "tea", "description": "Roasted green tea", "basePriceCHF": 5,
//!       "isActive": true, "image": "/img/hojicha.png", "size": ["S", "M", "L"],
//!       "extra_chf": {"S": 0, "M": 2, "L": 3},
//!       "createdAt": "2026-11-27T12:00:00.000Z", "updatedAt": "2026-11-27T12:00:00.000Z"}'

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use ocha_realtime::{Frame, HandshakeError, Hub};
use serde::Serialize;
use serde_json::value::RawValue;

async fn websocket(State(hub): State<Hub>, request: Request) -> impl IntoResponse {
    hub.upgrade(request)
        .unwrap_or_else(HandshakeError::into_response)
}

/// The event clients receive: the posted document as it came, in the Ocha
/// API's `new_product` envelope.
#[derive(Serialize)]
struct NewProduct<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    product: &'a RawValue,
}

async fn publish(State(hub): State<Hub>, Json(product): Json<Box<RawValue>>) -> String {
    let event = NewProduct {
        kind: "new_product",
        product: &product,
    };
    let reached = hub.publish(&Frame::json(&event).expect("raw JSON serializes"));
    format!("sent to {reached}\n")
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let hub = Hub::default();
    let app = Router::new()
        .route("/", get(websocket))
        .route("/products", post(publish))
        .with_state(hub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:5001").await?;
    println!("listening on ws://{}", listener.local_addr()?);
    let listener = listener.tap_io(move |socket| hub.tune(socket));
    axum::serve(listener, app).await
}
