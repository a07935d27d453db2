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
use ocha_realtime::{is_websocket_upgrade, Frame, HandshakeError, Hub};
use serde::Serialize;
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
        let event = NewProduct {
            kind: "new_product",
            product: ProductName { name },
        };
        let frame = Frame::json(&event).expect("strings serialize");
        let reached = hub.publish(&frame);
        return Ok(Response::new(Full::new(Bytes::from(format!(
            "sent to {reached}\n"
        )))));
    }
    Ok(Response::new(Full::new(Bytes::from(
        "Hello from your own service\n",
    ))))
}

/// Your own event type: anything `serde::Serialize`. This one has the
/// shape of the Ocha API's `new_product`, so the `listen` example shows it.
#[derive(Serialize)]
struct NewProduct {
    #[serde(rename = "type")]
    kind: &'static str,
    product: ProductName,
}

#[derive(Serialize)]
struct ProductName {
    name: String,
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
