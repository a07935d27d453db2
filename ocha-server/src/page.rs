//! The live page: what a browser gets for `GET /` (a request that does not
//! ask for a WebSocket). One small HTML page, its script and its style
//! sheet, built into the binary: connection status, the product list, and
//! products appearing, changing and disappearing as events arrive over the
//! WebSocket on `/`, which it resumes after a lost connection.
//!
//! Its `Content-Security-Policy` allows only the page's own script, style
//! sheet and connections (fetches and the WebSocket: in CSP Level 3,
//! `'self'` covers `ws:` and `wss:` to the same host): no inline script, so
//! even product text that slipped into the page as HTML could not run. The
//! script inserts product text with `textContent` anyway.

use bytes::Bytes;
use http::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS,
};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use crate::response::Body;

/// The page's policy: its own script, style sheet and connections, nothing
/// else; no `<base>`, no form posts, no framing.
pub const CONTENT_SECURITY_POLICY_VALUE: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// One file of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asset {
    /// The HTML page, served on `/`.
    Page,
    /// Its script, `/app.js`.
    Script,
    /// Its style sheet, `/app.css`.
    Style,
}

impl Asset {
    /// The path the asset is served at.
    pub fn path(self) -> &'static str {
        match self {
            Asset::Page => "/",
            Asset::Script => "/app.js",
            Asset::Style => "/app.css",
        }
    }

    /// The asset served at `path`, other than the page (whose path, `/`,
    /// also takes WebSocket upgrades).
    pub fn at(path: &str) -> Option<Asset> {
        match path {
            "/app.js" => Some(Asset::Script),
            "/app.css" => Some(Asset::Style),
            _ => None,
        }
    }

    /// A 200 response with the asset and its headers.
    pub fn response(self) -> Response<Body> {
        let (body, content_type) = match self {
            Asset::Page => (include_str!("page/index.html"), "text/html; charset=utf-8"),
            Asset::Script => (
                include_str!("page/app.js"),
                "text/javascript; charset=utf-8",
            ),
            Asset::Style => (include_str!("page/app.css"), "text/css; charset=utf-8"),
        };
        let mut response =
            Response::new(Either::Left(Full::new(Bytes::from_static(body.as_bytes()))));
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        // The files change with the binary: revalidate rather than keep an
        // old script after an upgrade.
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        if self == Asset::Page {
            headers.insert(
                CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY_VALUE),
            );
            headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_script_and_style_sheet() {
        let page = include_str!("page/index.html");
        assert!(page.contains(r#"<script src="/app.js" defer></script>"#));
        assert!(page.contains(r#"<link rel="stylesheet" href="/app.css">"#));
        // No inline script or style, which the policy would block.
        assert_eq!(page.matches("<script").count(), 1);
        assert!(!page.contains("<style") && !page.contains("style="));
        assert!(!page.contains("http://") && !page.contains("https://"));
    }

    #[test]
    fn the_script_never_writes_html() {
        let script = include_str!("page/app.js");
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!script.contains(sink), "app.js uses {sink}");
        }
    }

    #[test]
    fn assets_have_their_paths_and_types() {
        assert_eq!(Asset::at("/app.js"), Some(Asset::Script));
        assert_eq!(Asset::at("/app.css"), Some(Asset::Style));
        assert_eq!(Asset::at("/"), None);
        assert_eq!(Asset::at("/app.js/"), None);
        for (asset, content_type) in [
            (Asset::Page, "text/html; charset=utf-8"),
            (Asset::Script, "text/javascript; charset=utf-8"),
            (Asset::Style, "text/css; charset=utf-8"),
        ] {
            let response = asset.response();
            assert_eq!(response.headers()[CONTENT_TYPE], content_type);
            assert_eq!(
                response.headers().contains_key(CONTENT_SECURITY_POLICY),
                asset == Asset::Page
            );
        }
    }
}
