//! Building responses.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use ocha_realtime::EventStream;
use serde::Serialize;

/// The body type of every response: a whole body (JSON, text, WebSocket
/// handshakes), or a Server-Sent Events stream.
pub type Body = Either<Full<Bytes>, EventStream>;

/// `response` with its whole body as a [`Body`].
pub fn whole(response: Response<Full<Bytes>>) -> Response<Body> {
    response.map(Either::Left)
}

/// A JSON response with `content-type: application/json`.
pub fn json(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    // Bodies are structs of strings, numbers and products, which always serialize.
    let bytes = serde_json::to_vec(body).expect("response bodies serialize");
    with_type(status, bytes, "application/json")
}

/// A JSON document built into the binary, as it is.
pub fn static_json(body: &'static str) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from_static(body.as_bytes()))));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
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
    let mut response = Response::new(Either::Left(Full::default()));
    *response.status_mut() = status;
    response
}

fn with_type(status: StatusCode, body: Vec<u8>, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
