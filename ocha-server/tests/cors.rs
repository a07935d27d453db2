//! CORS through the real binary, with raw HTTP/1.1 requests over TCP as a
//! browser sends them: preflights and responses for the origins in
//! `CORS_ORIGINS`, nothing for the others.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;

const ADMIN: &str = "https://admin.example";
const DEV: &str = "http://localhost:3000";

/// A response read off the socket.
struct Raw {
    status: u16,
    /// Names lowercased, in the order sent.
    headers: Vec<(String, String)>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }

    /// The `access-control-*` headers.
    fn cors_headers(&self) -> Vec<&(String, String)> {
        self.headers
            .iter()
            .filter(|(name, _)| name.starts_with("access-control-"))
            .collect()
    }

    /// Asserts that a browser on `origin` may read this response.
    fn assert_readable_by(&self, origin: &str) {
        assert_eq!(
            self.header("access-control-allow-origin"),
            Some(origin),
            "{:?}",
            self.headers
        );
        assert_eq!(self.header("vary"), Some("Origin"));
    }
}

/// Sends `head` (request line and headers, without the blank line) and
/// `body` on a fresh connection that the server then closes.
async fn raw(addr: SocketAddr, head: &str, body: &str) -> Raw {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{head}\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut response))
        .await
        .expect("a response in time")
        .expect("a UTF-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a complete head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').expect("a header line");
            (name.to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    Raw {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A browser's preflight from `origin` for `method` on `path`.
async fn preflight(addr: SocketAddr, origin: &str, method: &str, path: &str) -> Raw {
    raw(
        addr,
        &format!(
            "OPTIONS {path} HTTP/1.1\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: {method}\r\n\
             Access-Control-Request-Headers: authorization, content-type"
        ),
        "",
    )
    .await
}

async fn start_with_cors(dir: &TempDir) -> (Child, SocketAddr) {
    let (child, addr, _) =
        start(server_command(dir).env("CORS_ORIGINS", format!("{ADMIN}, {DEV}"))).await;
    (child, addr)
}

#[tokio::test]
async fn allowed_origins_get_preflights_answered_for_every_route_and_method() {
    let dir = TempDir::new("cors-preflight");
    let (mut child, addr) = start_with_cors(&dir).await;
    for (method, path) in [
        ("GET", "/api/v1/products"),
        ("POST", "/api/v1/products"),
        ("GET", "/api/v1/products/65643f1adeadbeef010a0b0c"),
        ("PATCH", "/api/v1/products/65643f1adeadbeef010a0b0c"),
        ("DELETE", "/api/v1/products/65643f1adeadbeef010a0b0c"),
        ("GET", "/api/v1/health"),
        ("GET", "/api/v1/ready"),
    ] {
        for origin in [ADMIN, DEV] {
            let reply = preflight(addr, origin, method, path).await;
            assert_eq!(reply.status, 204, "{method} {path}: {}", reply.body);
            assert!(reply.body.is_empty());
            reply.assert_readable_by(origin);
            assert_eq!(
                reply.header("access-control-allow-methods"),
                Some("GET, POST, PATCH, DELETE")
            );
            // Named: a `*` would not cover Authorization.
            assert_eq!(
                reply.header("access-control-allow-headers"),
                Some("Authorization, Content-Type")
            );
            assert_eq!(reply.header("access-control-max-age"), Some("7200"));
        }
    }
    stop_binary(&mut child).await;
}

#[tokio::test]
async fn allowed_origins_can_read_every_response_errors_included() {
    let dir = TempDir::new("cors-responses");
    let (mut child, addr) = start_with_cors(&dir).await;
    let post = |token: &str| {
        format!(
            "POST /api/v1/products HTTP/1.1\r\nOrigin: {ADMIN}\r\n\
             Content-Type: application/json\r\nAuthorization: Bearer {token}"
        )
    };
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nOrigin: {ADMIN}");
    let product = product_body(1).to_string();
    let token = admin_token();
    let created = raw(addr, &post(&token), &product).await;
    assert_eq!(created.status, 201, "{}", created.body);
    created.assert_readable_by(ADMIN);

    for (head, body, status, answer) in [
        (get("/api/v1/products"), "", 200, None),
        (post("garbage"), &*product, 401, None),
        (
            post(&token),
            &*product,
            409,
            Some(r#"{"message":"Slug already in use"}"#),
        ),
        (
            get("/api/v1/products/65643f1adeadbeef010a0b0c"),
            "",
            404,
            Some(r#"{"message":"Product not found"}"#),
        ),
        (
            get("/api/v1/products/x"),
            "",
            400,
            Some(r#"{"message":"Invalid ID format"}"#),
        ),
        (
            get("/nope"),
            "",
            404,
            Some(r#"{"message":"Route not found"}"#),
        ),
        (
            format!("PUT /api/v1/products HTTP/1.1\r\nOrigin: {ADMIN}"),
            "",
            405,
            Some(r#"{"message":"Method not allowed"}"#),
        ),
    ] {
        let reply = raw(addr, &head, body).await;
        assert_eq!(reply.status, status, "{head}: {}", reply.body);
        if let Some(answer) = answer {
            assert_eq!(reply.body, answer);
        }
        reply.assert_readable_by(ADMIN);
    }
    stop_binary(&mut child).await;
}

#[tokio::test]
async fn other_origins_get_no_cors_headers() {
    let dir = TempDir::new("cors-others");
    let (mut child, addr) = start_with_cors(&dir).await;
    // Exact comparison: no prefix, case or default-port variant passes.
    for origin in [
        "https://evil.example",
        "https://admin.example.evil.example",
        "HTTPS://admin.example",
        "https://admin.example:443",
        "http://admin.example",
        "null",
    ] {
        let reply = preflight(addr, origin, "POST", "/api/v1/products").await;
        // Routed as any OPTIONS request: the browser refuses the request.
        assert_eq!(reply.status, 405, "{origin}");
        assert_eq!(reply.header("allow"), Some("GET, POST"));
        assert!(
            reply.cors_headers().is_empty(),
            "{origin}: {:?}",
            reply.headers
        );
        // The answer depends on the origin, so caches must keep them apart.
        assert_eq!(reply.header("vary"), Some("Origin"));

        let listing = raw(
            addr,
            &format!("GET /api/v1/products HTTP/1.1\r\nOrigin: {origin}"),
            "",
        )
        .await;
        assert_eq!(listing.status, 200);
        assert!(listing.cors_headers().is_empty(), "{origin}");
    }
    // Nor does a request without an Origin, such as curl's.
    let plain = raw(addr, "GET /api/v1/products HTTP/1.1", "").await;
    assert_eq!(plain.status, 200);
    assert!(plain.cors_headers().is_empty());
    assert_eq!(plain.header("vary"), Some("Origin"));
    stop_binary(&mut child).await;
}

#[tokio::test]
async fn without_cors_origins_no_origin_gets_cors_headers() {
    let dir = TempDir::new("cors-off");
    let server = TestServer::start(&dir.database()).await;
    let reply = preflight(server.addr, ADMIN, "POST", "/api/v1/products").await;
    assert_eq!(reply.status, 405);
    assert!(reply.cors_headers().is_empty());
    assert_eq!(reply.header("vary"), None);
    let listing = raw(
        server.addr,
        &format!("GET /api/v1/products HTTP/1.1\r\nOrigin: {ADMIN}"),
        "",
    )
    .await;
    assert_eq!(listing.status, 200);
    assert!(listing.cors_headers().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn cors_origins_must_be_origins() {
    for bad in ["*", "https://admin.example/", "admin.example"] {
        let output = binary()
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .env("DATABASE_URL", "sqlite::memory:")
            .env("CORS_ORIGINS", bad)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(1), "{bad}: {stderr}");
        assert!(
            stderr.contains(&format!("CORS_ORIGINS must be comma-separated origins such as https://admin.example, got {bad:?}")),
            "{stderr}"
        );
    }
}
