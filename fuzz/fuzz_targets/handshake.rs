//! WebSocket upgrade requests: `Hub::upgrade` never panics, and gets as far
//! as taking over the connection only when every handshake header is valid
//! (RFC 6455, section 4.2.1). Each refusal names a check the request fails.
//!
//! Requests built here carry no hyper connection, so the best outcome is
//! `NotUpgradable`, returned before the hub would spawn a task: no runtime
//! is needed.

#![no_main]

use arbitrary::Arbitrary;
use base64::alphabet::STANDARD;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Version};
use libfuzzer_sys::fuzz_target;
use ocha_realtime::{is_websocket_upgrade, Config, HandshakeError, Hub};

/// An origin the fuzzer may allow and send.
const ORIGIN: &str = "https://ok.example";

/// Values a handshake header usually has, and near misses.
const VALUES: &[&str] = &[
    "Upgrade",
    "keep-alive, Upgrade",
    " upgrade ,",
    "upgrades",
    "websocket",
    "WebSocket",
    "h2c, websocket",
    "13",
    "8",
    " 13",
    "dGhlIHNhbXBsZSBub25jZQ==",
    "dGhlIHNhbXBsZSBub25jZQ=",
    ORIGIN,
    "",
];

#[derive(Debug, Arbitrary)]
struct Input {
    method: Pick,
    /// Index into HTTP/0.9, 1.0, 1.1, 2 and 3.
    version: u8,
    headers: Vec<(Pick, ValuePick)>,
    /// The hub's `allowed_origins`, if any.
    allowed_origins: Option<Vec<Origin>>,
}

/// A usual method or header name, picked by index, or any bytes.
#[derive(Debug, Arbitrary)]
enum Pick {
    Usual(u8),
    Bytes(Vec<u8>),
}

/// A header value: one of [`VALUES`], a well-formed key, or any bytes.
#[derive(Debug, Arbitrary)]
enum ValuePick {
    Usual(u8),
    Key([u8; 16]),
    Bytes(Vec<u8>),
}

/// An allowed origin: the one requests usually send, or any.
#[derive(Debug, Arbitrary)]
enum Origin {
    Usual,
    Any(String),
}

impl Pick {
    fn method(&self) -> Option<Method> {
        match self {
            Pick::Usual(i) => Some([Method::GET, Method::POST][usize::from(*i) % 2].clone()),
            Pick::Bytes(bytes) => Method::from_bytes(bytes).ok(),
        }
    }

    fn header_name(&self) -> Option<HeaderName> {
        let usual = [
            header::CONNECTION,
            header::UPGRADE,
            header::SEC_WEBSOCKET_VERSION,
            header::SEC_WEBSOCKET_KEY,
            header::ORIGIN,
        ];
        match self {
            Pick::Usual(i) => Some(usual[usize::from(*i) % usual.len()].clone()),
            Pick::Bytes(bytes) => HeaderName::from_bytes(bytes).ok(),
        }
    }
}

impl ValuePick {
    fn get(&self) -> Option<HeaderValue> {
        match self {
            ValuePick::Usual(i) => Some(HeaderValue::from_static(
                VALUES[usize::from(*i) % VALUES.len()],
            )),
            ValuePick::Key(bytes) => {
                HeaderValue::try_from(base64::engine::general_purpose::STANDARD.encode(bytes)).ok()
            }
            ValuePick::Bytes(bytes) => HeaderValue::from_bytes(bytes).ok(),
        }
    }
}

/// The visible-ASCII values of `name`: a value with other bytes is no
/// valid token list, so it lists nothing.
fn values<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
}

/// Whether some `name` header lists `token` (RFC 9110 lists: comma-separated,
/// optional whitespace, tokens case-insensitive).
fn lists(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    values(headers, name)
        .flat_map(|value| value.split(','))
        .any(|item| item.trim_matches([' ', '\t']).eq_ignore_ascii_case(token))
}

/// Whether `key` is base64 for 16 bytes. Unused low bits in the last digit
/// are tolerated, as most decoders do.
fn is_valid_key(key: &[u8]) -> bool {
    let lenient = GeneralPurpose::new(
        &STANDARD,
        GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    lenient.decode(key).is_ok_and(|bytes| bytes.len() == 16)
}

/// Each check `Hub::upgrade` documents, as whether the request passes it.
fn checks(request: &Request<()>, allowed: Option<&[String]>) -> [(HandshakeError, bool); 7] {
    let headers = request.headers();
    let origin_ok = match (allowed, headers.get(header::ORIGIN)) {
        (Some(allowed), Some(origin)) => allowed.iter().any(|a| a.as_bytes() == origin.as_bytes()),
        _ => true,
    };
    [
        (HandshakeError::Method, request.method() == Method::GET),
        (
            HandshakeError::HttpVersion,
            request.version() == Version::HTTP_11,
        ),
        (
            HandshakeError::Connection,
            lists(headers, &header::CONNECTION, "upgrade"),
        ),
        (
            HandshakeError::Upgrade,
            lists(headers, &header::UPGRADE, "websocket"),
        ),
        (
            HandshakeError::WebSocketVersion,
            headers
                .get(header::SEC_WEBSOCKET_VERSION)
                .is_some_and(|v| v == "13"),
        ),
        (
            HandshakeError::Key,
            headers
                .get(header::SEC_WEBSOCKET_KEY)
                .is_some_and(|key| is_valid_key(key.as_bytes())),
        ),
        (HandshakeError::Origin, origin_ok),
    ]
}

fuzz_target!(|input: Input| {
    let Some(method) = input.method.method() else {
        return;
    };
    let versions = [
        Version::HTTP_09,
        Version::HTTP_10,
        Version::HTTP_11,
        Version::HTTP_2,
        Version::HTTP_3,
    ];
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.version_mut() = versions[usize::from(input.version) % versions.len()];
    for (name, value) in &input.headers {
        if let (Some(name), Some(value)) = (name.header_name(), value.get()) {
            request.headers_mut().append(name, value);
        }
    }
    let allowed: Option<Vec<String>> = input.allowed_origins.as_ref().map(|origins| {
        origins
            .iter()
            .map(|origin| match origin {
                Origin::Usual => ORIGIN.to_owned(),
                Origin::Any(origin) => origin.clone(),
            })
            .collect()
    });
    let mut config = Config::default();
    if let Some(allowed) = &allowed {
        config = config.allowed_origins(allowed.iter().cloned());
    }

    let checks = checks(&request, allowed.as_deref());
    assert_eq!(
        is_websocket_upgrade(&request),
        lists(request.headers(), &header::UPGRADE, "websocket")
    );
    let error = Hub::new(config)
        .upgrade(request)
        .expect_err("no hyper connection to upgrade");
    if error == HandshakeError::NotUpgradable {
        for (check, passed) in &checks {
            assert!(passed, "upgrade went ahead despite failing {check:?}");
        }
    } else {
        assert!(
            checks
                .iter()
                .any(|(check, passed)| *check == error && !passed),
            "refused with {error:?}, a check the request passes: {checks:?}"
        );
    }
    assert!(error.status().is_client_error() || error.status().is_server_error());
});
