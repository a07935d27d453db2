//! Cross-origin requests from browser pages on the origins in
//! `CORS_ORIGINS`, such as an admin page served elsewhere.
//!
//! For a listed origin (compared exactly with the request's `Origin`):
//!
//! - every response carries `Access-Control-Allow-Origin: <origin>`, errors
//!   (401, 404, 409…) included, so that the page can read why;
//! - a preflight (`OPTIONS` with `Access-Control-Request-Method`) on any
//!   route is answered 204, allowing `GET, POST, PATCH, DELETE` and the
//!   `Authorization` and `Content-Type` headers, named since `*` does not
//!   cover `Authorization`, for [`MAX_AGE_SECS`].
//!
//! Other origins get no CORS header, so their browser keeps the response
//! from the page; their preflight is answered as any `OPTIONS` request is,
//! 405 with `Allow`, which tells them nothing about the list.
//!
//! Once the list is set, every response carries `Vary: Origin`: responses
//! differ by origin, and a cache must not hand one origin's to another.
//! Credentials (cookies) are not allowed, nor needed: the token travels in
//! `Authorization`, which a page sends without them.

use std::sync::Arc;

use http::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use http::{Method, Request, Response, StatusCode};

use crate::response::Body;

/// How long a browser may keep a preflight's answer: Chromium's cap, two
/// hours. An origin removed from the list meanwhile still gets no
/// `Access-Control-Allow-Origin` on the requests themselves.
pub const MAX_AGE_SECS: u32 = 7200;

/// The methods a preflight allows: those of the product routes.
const METHODS: &str = "GET, POST, PATCH, DELETE";

/// The request headers a preflight allows: the token and the JSON body's type.
const HEADERS: &str = "Authorization, Content-Type";

/// The origins allowed to read responses. Cloning is cheap.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cors {
    origins: Arc<[String]>,
}

impl Cors {
    /// Allows `origins`, each `scheme://host[:port]`; none turns CORS off.
    pub(crate) fn new(origins: &[String]) -> Cors {
        Cors {
            origins: origins.into(),
        }
    }

    /// The request's `Origin`, if it is allowed.
    pub(crate) fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(ORIGIN)?;
        self.origins
            .iter()
            .any(|allowed| allowed.as_bytes() == origin.as_bytes())
            .then(|| origin.clone())
    }

    /// Adds the CORS headers for `origin` (from [`allowed_origin`]) to a
    /// response, and `Vary: Origin` whenever origins are listed.
    ///
    /// [`allowed_origin`]: Self::allowed_origin
    pub(crate) fn finish(&self, origin: Option<HeaderValue>, response: &mut Response<Body>) {
        if self.origins.is_empty() {
            return;
        }
        let headers = response.headers_mut();
        headers.append(VARY, HeaderValue::from_static("Origin"));
        if let Some(origin) = origin {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
    }
}

/// Whether `request` is a CORS preflight: what a browser sends before a
/// request a page may not make unasked.
pub(crate) fn is_preflight<B>(request: &Request<B>) -> bool {
    request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to an allowed origin's preflight, before [`Cors::finish`]
/// names the origin.
pub(crate) fn preflight() -> Response<Body> {
    let mut response = crate::response::empty(StatusCode::NO_CONTENT);
    let headers = response.headers_mut();
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(METHODS),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(HEADERS),
    );
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(MAX_AGE_SECS));
    response
}
