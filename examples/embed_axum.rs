//! The hub inside an axum application: a handler hands the request to
//! `Hub::upgrade` as it is, whatever axum's body type.
//!
//!     cargo run -p examples --example embed_axum
//!     cargo run -p examples --example listen          # in another terminal
//!     curl -d 'Matcha Latte' localhost:5001/publish

use axum::extract::{Request, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use ocha_realtime::{Event, ExtraChf, HandshakeError, Hub, Product, Size};

async fn websocket(State(hub): State<Hub>, request: Request) -> impl IntoResponse {
    hub.upgrade(request)
        .unwrap_or_else(HandshakeError::into_response)
}

async fn publish(State(hub): State<Hub>, name: String) -> String {
    let reached = hub.publish(&Event::NewProduct {
        product: product(name.trim().to_owned()),
    });
    format!("sent to {reached}\n")
}

fn product(name: String) -> Product {
    let now = "2026-11-27T12:00:00.000Z".to_owned();
    Product {
        id: "65f1c0de0123456789abcdef".into(),
        slug: name.to_lowercase().replace(' ', "-"),
        name,
        category: "tea".into(),
        description: "Published by the embed_axum example".into(),
        base_price_chf: 6.5,
        is_active: true,
        image: "/img/tea.png".into(),
        size: vec![Size::S, Size::M, Size::L],
        extra_chf: ExtraChf::default(),
        created_at: now.clone(),
        updated_at: now,
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let app = Router::new()
        .route("/", get(websocket))
        .route("/publish", post(publish))
        .with_state(Hub::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:5001").await?;
    println!("listening on ws://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
