//! A WebSocket echo server: every message a client sends comes back to it.
//!
//! No welcome and no events, so conformance tools such as the Autobahn
//! testsuite see only echoes. Listens on 127.0.0.1:`PORT` (default 9001);
//! messages up to 16 MiB, the largest the Autobahn cases send.
//!
//!     cargo run --release -p examples --example echo
//!     ../shared/autobahn/run.sh ws://127.0.0.1:9001   # in another terminal

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use ocha_realtime::{Config, Frame, HandshakeError, Hub};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT is not a port: {port:?}"))?,
        Err(_) => 9001,
    };
    let config = Config::default()
        .without_welcome()
        .max_message_size(16 * 1024 * 1024);
    let hub = Hub::builder(config)
        .on_message(|hub, from, message| async move {
            hub.send(from, &Frame::from(&message));
        })
        .build();

    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on ws://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let hub = hub.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let response: Response<Full<Bytes>> = hub
                .upgrade(request)
                .unwrap_or_else(HandshakeError::into_response);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::spawn(connection);
    }
}
