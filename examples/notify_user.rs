//! Notifications for one user: clients connect with a JWT that names their
//! user, and your backend sends JSON to all of that user's connections.
//!
//! `GET /?token=JWT` (HS256, user id in the `id` claim, `exp` required)
//! opens a WebSocket for that user; a missing, invalid or expired token gets
//! 401 and no upgrade. `POST /notify/USER_ID` with a JSON body sends the
//! body, byte for byte, as one text frame to each of the user's open
//! connections and answers `{"delivered":N}`. Listens on 127.0.0.1:`PORT`
//! (default 9002); `JWT_SECRET` is the secret tokens are signed with.
//!
//! The notify route is open so the demo stays short. A real service would
//! serve it on an internal port that only its backends reach, or require a
//! service token (an admin JWT, say) in its `Authorization` header.
//!
//!     JWT_SECRET=dev-secret cargo run -p examples --example notify_user
//!     # in another terminal: a token for alice (ocha-server signs such tokens), and her client
//!     export JWT_SECRET=dev-secret
//!     TOKEN=$(cargo run -q -p ocha-server -- token --role user --id alice | tail -n1)
//!     cargo run -p examples --example listen "ws://127.0.0.1:9002/?token=$TOKEN"
//!     # in a third
//!     curl -d '{"type":"order_ready","order":42}' localhost:9002/notify/alice

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use ocha_realtime::{Admission, Config, Frame, HandshakeError, Hub};
use serde::de::IgnoredAny;
use serde::Deserialize;
use tokio::net::TcpListener;

/// Largest notification body accepted, in bytes.
const MAX_BODY: usize = 1024 * 1024;

/// The claim this example reads from a token; `jsonwebtoken` checks `exp`.
#[derive(Deserialize)]
struct Claims {
    id: String,
}

/// What requests are served with: the hub and how to check tokens.
struct App {
    hub: Hub,
    key: DecodingKey,
    validation: Validation,
}

/// What a request's path asks for.
enum Route {
    /// `/`: a WebSocket.
    Connect,
    /// `/notify/USER_ID`: a notification for that user (the id is taken
    /// as it is in the path, not percent-decoded).
    Notify(String),
    NotFound,
}

impl Route {
    fn of(path: &str) -> Route {
        if path == "/" {
            return Route::Connect;
        }
        match path.strip_prefix("/notify/") {
            Some(user) if !user.is_empty() => Route::Notify(user.to_owned()),
            _ => Route::NotFound,
        }
    }
}

impl App {
    /// Opens a WebSocket for the user the request's token names, or
    /// refuses it with 401.
    fn connect(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(token) = query_token(request.uri().query()) else {
            return message(StatusCode::UNAUTHORIZED, "Token missing");
        };
        let Ok(verified) = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
        else {
            return message(StatusCode::UNAUTHORIZED, "Invalid or expired token");
        };
        self.hub
            .upgrade_with(request, Admission::user(verified.claims.id))
            .unwrap_or_else(HandshakeError::into_response)
    }

    /// Sends a JSON body to every connection of `user`, as it came.
    async fn notify(&self, user: &str, body: Incoming) -> Response<Full<Bytes>> {
        // A declared length over the cap is refused before reading any of
        // the body; `Limited` stops bodies that declare none (chunked).
        if body.size_hint().lower() > MAX_BODY as u64 {
            return message(StatusCode::PAYLOAD_TOO_LARGE, "Body over 1 MiB");
        }
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(body) => body.to_bytes(),
            Err(error) if error.is::<LengthLimitError>() => {
                return message(StatusCode::PAYLOAD_TOO_LARGE, "Body over 1 MiB");
            }
            Err(_) => return message(StatusCode::BAD_REQUEST, "Cannot read the body"),
        };
        // JSON text is UTF-8 (RFC 8259). Checked first, because serde_json
        // skips over the strings of an ignored value without checking them.
        let Some(json) = std::str::from_utf8(&body)
            .ok()
            .filter(|text| serde_json::from_str::<IgnoredAny>(text).is_ok())
        else {
            return message(StatusCode::BAD_REQUEST, "Invalid JSON");
        };
        // The sender's bytes, not a re-serialization: clients see exactly
        // what was posted, number formatting and all.
        let delivered = self.hub.send_to_user(user, &Frame::text(json));
        json_response(
            StatusCode::OK,
            serde_json::json!({ "delivered": delivered }),
        )
    }
}

/// The `token` query parameter. JWTs are base64url and dots, which URLs
/// carry as they are, so it is not percent-decoded.
fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .filter(|token| !token.is_empty())
}

async fn handle(
    app: Arc<App>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match Route::of(request.uri().path()) {
        Route::Connect if request.method() == Method::GET => app.connect(request),
        Route::Connect => method_not_allowed(Method::GET),
        Route::Notify(user) if request.method() == Method::POST => {
            app.notify(&user, request.into_body()).await
        }
        Route::Notify(_) => method_not_allowed(Method::POST),
        Route::NotFound => message(StatusCode::NOT_FOUND, "Not found"),
    };
    Ok(response)
}

/// `{"message": text}` with `status`.
fn message(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    json_response(status, serde_json::json!({ "message": text }))
}

fn method_not_allowed(allowed: Method) -> Response<Full<Bytes>> {
    let mut response = message(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
    let allowed = HeaderValue::from_str(allowed.as_str()).expect("a method is a header value");
    response.headers_mut().insert(ALLOW, allowed);
    response
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT is not a port: {port:?}"))?,
        Err(_) => 9002,
    };
    let Some(secret) = std::env::var("JWT_SECRET")
        .ok()
        .filter(|secret| !secret.is_empty())
    else {
        eprintln!("JWT_SECRET is not set: give the HS256 secret that tokens are signed with");
        std::process::exit(1);
    };
    // The algorithm is pinned, not read from the token, so `none` and
    // algorithm-confusion tokens fail; `exp` is required by default, and
    // with no leeway a token is refused the second it expires.
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    let app = Arc::new(App {
        hub: Hub::new(Config::default().without_welcome()),
        key: DecodingKey::from_secret(secret.as_bytes()),
        validation,
    });

    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    // With PORT=0 this line is the only way to learn the port: flush it.
    println!("listening on ws://{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    loop {
        let (stream, _) = listener.accept().await?;
        let app = app.clone();
        let service = service_fn(move |request| handle(app.clone(), request));
        let connection = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::spawn(connection);
    }
}
