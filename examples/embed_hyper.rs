//! Your own hyper service with the hub beside a normal route.
//!
//! `GET /` with a WebSocket upgrade joins the hub; `POST /publish` broadcasts
//! a product named by the request body; anything else gets a plain answer.
//!
//!     cargo run -p examples --example embed_hyper
//!     cargo run -p examples --example listen          # in another terminal
//!     curl -d 'Matcha Latte' localhost:5001/publish

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Method, Request, Response};
use hyper_util::rt::TokioIo;
use ocha_realtime::{is_websocket_upgrade, Event, ExtraChf, HandshakeError, Hub, Product, Size};
use tokio::net::TcpListener;

async fn handle(hub: Hub, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if is_websocket_upgrade(&request) {
        return Ok(hub
            .upgrade(request)
            .unwrap_or_else(HandshakeError::into_response));
    }
    if request.method() == Method::POST && request.uri().path() == "/publish" {
        let body = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let name = String::from_utf8_lossy(&body).trim().to_owned();
        let reached = hub.publish(&Event::NewProduct {
            product: product(name),
        });
        return Ok(Response::new(Full::new(Bytes::from(format!(
            "sent to {reached}\n"
        )))));
    }
    Ok(Response::new(Full::new(Bytes::from(
        "Hello from your own service\n",
    ))))
}

fn product(name: String) -> Product {
    let now = "2026-11-27T12:00:00.000Z".to_owned();
    Product {
        id: "65f1c0de0123456789abcdef".into(),
        slug: name.to_lowercase().replace(' ', "-"),
        name,
        category: "tea".into(),
        description: "Published by the embed_hyper example".into(),
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
    let hub = Hub::default();
    let listener = TcpListener::bind("127.0.0.1:5001").await?;
    println!("listening on ws://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let hub = hub.clone();
        let service = service_fn(move |request| handle(hub.clone(), request));
        let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        // `with_upgrades` lets hyper hand the socket over after the 101.
        tokio::spawn(connection.with_upgrades());
    }
}
