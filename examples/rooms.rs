//! Channels in a small service: clients join channels as they connect and
//! by message, talk to a channel's members, and the service publishes to a
//! channel or to everyone over HTTP and says who is in a channel.
//!
//!     cargo run -p examples --example rooms       # PORT, default 9003
//!     cargo run -p examples --example listen 'ws://127.0.0.1:9003/?channel=tea&user=alice'
//!     curl -d '{"special":"hojicha"}' localhost:9003/channels/tea
//!     curl localhost:9003/channels/tea    # {"connections":1,"users":{"alice":1}}
//!
//! To talk in a channel, use a client that sends too (websocat, a browser).
//!
//! | request | what happens |
//! |---|---|
//! | WebSocket `/?channel=A&channel=B&user=NAME` | joins A and B at admission, as user NAME (anonymous without `user`) |
//! | client sends `{"join":"A"}` | joins A; answered `{"joined":"A"}` |
//! | client sends `{"leave":"A"}` | leaves A; answered `{"left":"A"}` |
//! | client sends `{"channel":"A","message":ANY}` | A's members, sender included, receive it as sent; a non-member is answered an error |
//! | `POST /channels/A`, a JSON body | A's members receive the body byte for byte; answers `{"delivered":N}` |
//! | `POST /broadcast`, a JSON body | every connection receives the body; answers `{"delivered":N}` |
//! | `GET /channels/A` | `{"connections":N,"users":{"alice":2,...}}` |
//!
//! Anything a client sends that is not one of the three messages is
//! answered `{"error":"..."}`; an HTTP body that is not JSON gets 400, one
//! over 1 MiB gets 413. There is no welcome.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;

use bytes::Bytes;
use http::{header, Method, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use ocha_realtime::{
    is_websocket_upgrade, Admission, Config, ConnectionId, Frame, HandshakeError, Hub, Message,
};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, value::RawValue, Value};
use tokio::net::TcpListener;

/// Largest body `POST /channels/NAME` and `POST /broadcast` accept.
const MAX_BODY: usize = 1024 * 1024;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT is not a port: {port:?}"))?,
        Err(_) => 9003,
    };
    let hub = Hub::builder(Config::default().without_welcome())
        .on_message(|hub, from, message| async move { answer(&hub, from, &message) })
        .build();

    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    // Tests and scripts start this with PORT=0 and read the port from here.
    println!("listening on ws://{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    loop {
        let (stream, _) = listener.accept().await?;
        let hub = hub.clone();
        let service = service_fn(move |request| {
            let hub = hub.clone();
            async move { Ok::<_, Infallible>(handle(hub, request).await) }
        });
        let connection = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::spawn(connection);
    }
}

/// What a client may send.
enum Command {
    Join(String),
    Leave(String),
    Say {
        channel: String,
        message: Box<RawValue>,
    },
}

/// A client message as JSON, before it is known to be one [`Command`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields {
    join: Option<String>,
    leave: Option<String>,
    channel: Option<String>,
    /// Kept as sent, to be passed on unchanged.
    #[serde(default, deserialize_with = "present")]
    message: Option<Box<RawValue>>,
}

/// Reads a field that is there as `Some`, even `null`, which a plain
/// `Option` would read as absent.
fn present<'de, D: Deserializer<'de>>(field: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(field).map(Some)
}

impl Command {
    fn parse(message: &Message) -> Result<Command, String> {
        let Message::Text(text) = message else {
            return Err("send JSON text, not binary".into());
        };
        let fields: Fields = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let command = match fields {
            Fields {
                join: Some(channel),
                leave: None,
                channel: None,
                message: None,
            } => Command::Join(channel),
            Fields {
                join: None,
                leave: Some(channel),
                channel: None,
                message: None,
            } => Command::Leave(channel),
            Fields {
                join: None,
                leave: None,
                channel: Some(channel),
                message: Some(message),
            } => Command::Say { channel, message },
            _ => {
                return Err(
                    r#"send {"join":NAME}, {"leave":NAME} or {"channel":NAME,"message":ANY}"#
                        .into(),
                )
            }
        };
        match &command {
            Command::Join(channel) | Command::Leave(channel) | Command::Say { channel, .. }
                if channel.is_empty() =>
            {
                Err("a channel name cannot be empty".into())
            }
            _ => Ok(command),
        }
    }
}

/// What members of a channel receive when one of them talks in it.
#[derive(Serialize)]
struct Said<'a> {
    channel: &'a str,
    message: &'a RawValue,
}

/// Carries out a client's message; answers the sender unless it talked in
/// a channel, which it hears as a member.
fn answer(hub: &Hub, from: ConnectionId, message: &Message) {
    let reply = match Command::parse(message) {
        // Joining twice or leaving a channel one is not in changes nothing
        // and is answered the same.
        Ok(Command::Join(channel)) => {
            hub.subscribe(from, &channel);
            json!({ "joined": channel })
        }
        Ok(Command::Leave(channel)) => {
            hub.unsubscribe(from, &channel);
            json!({ "left": channel })
        }
        Ok(Command::Say { channel, message }) if hub.is_subscribed(from, &channel) => {
            let said = Said {
                channel: &channel,
                message: &message,
            };
            hub.publish_to(&channel, &Frame::json(&said).expect("raw JSON serializes"));
            return;
        }
        Ok(Command::Say { channel, .. }) => {
            json!({ "error": format!("join {channel:?} before sending to it") })
        }
        Err(error) => json!({ "error": error }),
    };
    hub.send(from, &Frame::json(&reply).expect("JSON values serialize"));
}

/// Answers one HTTP request: a WebSocket upgrade or the channel routes.
async fn handle(hub: Hub, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if is_websocket_upgrade(&request) && request.uri().path() == "/" {
        let admission = admission(request.uri().query().unwrap_or_default());
        return hub
            .upgrade_with(request, admission)
            .unwrap_or_else(HandshakeError::into_response);
    }
    let path = request.uri().path();
    let channel = match path.strip_prefix("/channels/") {
        Some(name) => match percent_encoding::percent_decode_str(name).decode_utf8() {
            Ok(name) if !name.is_empty() && !name.contains('/') => Some(name.into_owned()),
            _ => return error(StatusCode::NOT_FOUND, "no such channel name"),
        },
        None if path == "/broadcast" => None,
        None => return error(StatusCode::NOT_FOUND, "not found"),
    };
    match (request.method(), channel) {
        (&Method::GET, Some(channel)) => {
            let users: BTreeMap<String, usize> = hub.presence(&channel).into_iter().collect();
            let connections = hub.channel_connections(&channel);
            respond(
                StatusCode::OK,
                &json!({ "connections": connections, "users": users }),
            )
        }
        (&Method::POST, channel) => {
            let body = match json_body(request.into_body()).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            let frame = Frame::text(&body);
            let delivered = match channel {
                Some(channel) => hub.publish_to(&channel, &frame),
                None => hub.publish(&frame),
            };
            respond(StatusCode::OK, &json!({ "delivered": delivered }))
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

/// The admission a query such as `channel=A&channel=B&user=NAME` asks for.
/// A real service would take the user from a verified token, not trust it.
fn admission(query: &str) -> Admission {
    let mut user = None;
    let mut channels = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            _ if value.is_empty() => {}
            "channel" => channels.push(value.into_owned()),
            "user" => user = Some(value.into_owned()),
            _ => {}
        }
    }
    let admission = user.map_or_else(Admission::anonymous, Admission::user);
    channels.into_iter().fold(admission, Admission::channel)
}

/// The body as text, if it is JSON of at most [`MAX_BODY`] bytes; the error
/// response to send otherwise.
async fn json_body(body: Incoming) -> Result<String, Response<Full<Bytes>>> {
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "body over 1 MiB"))
        }
        Err(e) => return Err(error(StatusCode::BAD_REQUEST, &e.to_string())),
    };
    let text = String::from_utf8(bytes.into())
        .map_err(|_| error(StatusCode::BAD_REQUEST, "body is not UTF-8"))?;
    match serde_json::from_str::<serde::de::IgnoredAny>(&text) {
        Ok(_) => Ok(text),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("body is not JSON: {e}"),
        )),
    }
}

fn respond(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("status and header are valid")
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    respond(status, &json!({ "error": message }))
}
