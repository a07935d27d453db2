//! The server side of the WebSocket opening handshake (RFC 6455, section 4.2).

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::Full;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::Config;

/// Why an upgrade request was refused.
///
/// Turn it into the response to send with [`HandshakeError::into_response`]:
/// a short plain-text reason with the status from [`HandshakeError::status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The request is not a GET.
    #[error("a WebSocket upgrade must be a GET request")]
    Method,
    /// The request is not HTTP/1.1.
    #[error("a WebSocket upgrade needs HTTP/1.1")]
    HttpVersion,
    /// `Connection` does not list `upgrade`.
    #[error("missing \"Connection: upgrade\" header")]
    Connection,
    /// `Upgrade` does not list `websocket`.
    #[error("missing \"Upgrade: websocket\" header")]
    Upgrade,
    /// `Sec-WebSocket-Version` is missing or not 13.
    #[error("unsupported WebSocket version; this server speaks version 13")]
    WebSocketVersion,
    /// `Sec-WebSocket-Key` is missing or not 16 bytes in base64.
    #[error("missing or malformed Sec-WebSocket-Key header")]
    Key,
    /// The `Origin` is not on the allow-list.
    #[error("origin not allowed")]
    Origin,
    /// The hub holds its maximum number of connections.
    #[error("too many connections; try again later")]
    TooManyConnections,
    /// The client's address holds its maximum number of connections
    /// ([`Config::max_connections_per_peer`]).
    #[error("too many connections from this address; close one or try again later")]
    TooManyPeerConnections,
    /// The hub is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The subprotocol the application admitted the client with is not
    /// one the client offered in `Sec-WebSocket-Protocol`.
    #[error("the server does not speak any subprotocol this client offered")]
    Protocol,
    /// The request did not come through a hyper connection that supports
    /// upgrades (serve it with `.with_upgrades()`).
    #[error("this server cannot upgrade the connection")]
    NotUpgradable,
}

impl HandshakeError {
    /// The status the refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::WebSocketVersion => StatusCode::UPGRADE_REQUIRED,
            HandshakeError::Origin => StatusCode::FORBIDDEN,
            // The client's own doing, unlike a full hub: 429, not 503.
            HandshakeError::TooManyPeerConnections => StatusCode::TOO_MANY_REQUESTS,
            HandshakeError::TooManyConnections | HandshakeError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            HandshakeError::NotUpgradable => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The response refusing the upgrade: [`status`](Self::status) and the
    /// reason as plain text; 426 also names the version this server speaks.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.to_string())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self == HandshakeError::WebSocketVersion {
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

/// Whether `request` asks for a WebSocket (its `Upgrade` header lists
/// `websocket`): a cheap test for routing, before [`Hub::upgrade`] checks the
/// whole handshake.
///
/// [`Hub::upgrade`]: crate::Hub::upgrade
pub fn is_websocket_upgrade<B>(request: &Request<B>) -> bool {
    header_lists(request.headers(), header::UPGRADE, "websocket")
}

/// Checks everything the request itself decides and returns the
/// `Sec-WebSocket-Accept` value to answer with.
pub(crate) fn check<B>(request: &Request<B>, config: &Config) -> Result<String, HandshakeError> {
    if request.method() != Method::GET {
        return Err(HandshakeError::Method);
    }
    if request.version() != Version::HTTP_11 {
        return Err(HandshakeError::HttpVersion);
    }
    let headers = request.headers();
    if !header_lists(headers, header::CONNECTION, "upgrade") {
        return Err(HandshakeError::Connection);
    }
    if !header_lists(headers, header::UPGRADE, "websocket") {
        return Err(HandshakeError::Upgrade);
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13")) {
        return Err(HandshakeError::WebSocketVersion);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|key| is_valid_key(key.as_bytes()))
        .ok_or(HandshakeError::Key)?;
    check_origin(headers, config)?;
    Ok(derive_accept_key(key.as_bytes()))
}

/// Refuses a browser whose `Origin` is not on the allow-list, if there is
/// one; clients that send no `Origin` (not browsers) pass.
pub(crate) fn check_origin(headers: &HeaderMap, config: &Config) -> Result<(), HandshakeError> {
    if let (Some(allowed), Some(origin)) = (&config.allowed_origins, headers.get(header::ORIGIN)) {
        if !allowed
            .iter()
            .any(|allowed| allowed.as_bytes() == origin.as_bytes())
        {
            return Err(HandshakeError::Origin);
        }
    }
    Ok(())
}

/// Whether the client offered `protocol` in `Sec-WebSocket-Protocol`.
pub(crate) fn offers_protocol<B>(request: &Request<B>, protocol: &str) -> bool {
    request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|offered| offered.trim() == protocol)
}

/// The 101 response that completes the handshake.
pub(crate) fn switching_protocols(accept: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::try_from(accept).expect("base64 is a valid header value"),
    );
    response
}

/// Whether a comma-separated header lists `token`, ignoring case.
fn header_lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// A key is 16 random bytes in base64: 22 base64 digits and `==`.
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> http::request::Builder {
        Request::get("/")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "WebSocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    }

    #[test]
    fn accepts_the_rfc_example() {
        let request = request().body(()).unwrap();
        assert!(is_websocket_upgrade(&request));
        let accept = check(&request, &Config::default()).unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn refuses_each_broken_part() {
        let config = Config::default().allowed_origins(["https://ok.example"]);
        let with = |name: &'static str, value: &'static str| {
            let mut request = request().body(()).unwrap();
            request
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
            request
        };
        let mut post = request().body(()).unwrap();
        *post.method_mut() = Method::POST;
        let mut http10 = request().body(()).unwrap();
        *http10.version_mut() = Version::HTTP_10;
        let cases = [
            (post, HandshakeError::Method),
            (http10, HandshakeError::HttpVersion),
            (with("connection", "close"), HandshakeError::Connection),
            (
                with("sec-websocket-version", "8"),
                HandshakeError::WebSocketVersion,
            ),
            (with("sec-websocket-key", "short"), HandshakeError::Key),
            (
                with("origin", "https://evil.example"),
                HandshakeError::Origin,
            ),
        ];
        for (request, expected) in cases {
            assert_eq!(check(&request, &config), Err(expected));
        }
        let no_upgrade = Request::get("/")
            .header("connection", "upgrade")
            .body(())
            .unwrap();
        assert!(!is_websocket_upgrade(&no_upgrade));
        assert_eq!(check(&no_upgrade, &config), Err(HandshakeError::Upgrade));
        let allowed = request()
            .header("origin", "https://ok.example")
            .body(())
            .unwrap();
        assert!(check(&allowed, &config).is_ok());
    }
}
