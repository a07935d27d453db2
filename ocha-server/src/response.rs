//! Building responses.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

/// The body type of every response, WebSocket handshakes included.
pub type Body = Full<Bytes>;

/// A JSON response with `content-type: application/json`.
pub fn json(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    // Bodies are structs of strings, numbers and products, which always serialize.
    let bytes = serde_json::to_vec(body).expect("response bodies serialize");
    with_type(status, bytes, "application/json")
}

/// A plain-text response.
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    with_type(
        status,
        body.as_bytes().to_vec(),
        "text/plain; charset=utf-8",
    )
}

/// A response with no body, such as 204.
pub fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = status;
    response
}

fn with_type(status: StatusCode, body: Vec<u8>, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
