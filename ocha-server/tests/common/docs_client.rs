//! What the two runs of the Ocha docs' JavaScript client share: the server
//! they talk to, the products they are sent and what the client must print.

use std::net::SocketAddr;

use http::StatusCode;
use serde_json::Value;
use tokio::process::Child;

use super::{admin_token, post_product, product_body, start_binary, TempDir};

/// What the docs' client prints for the server's welcome.
pub const WELCOME: &str = "Connecté au WebSocket";

/// The real binary, up and healthy, with the directory holding its database.
pub struct DocsServer {
    pub dir: TempDir,
    pub addr: SocketAddr,
    pub process: Child,
    /// The products the test creates once the client is welcomed.
    pub products: [Value; 2],
}

impl DocsServer {
    pub async fn start(label: &str) -> DocsServer {
        let dir = TempDir::new(label);
        let (process, addr) = start_binary(&dir).await;
        DocsServer {
            dir,
            addr,
            process,
            products: [product_body(1), product_body(2)],
        }
    }

    /// The client's URL.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Creates every product as an admin.
    pub async fn create_products(&self) {
        let token = admin_token();
        for body in &self.products {
            let created = post_product(self.addr, Some(&token), body).await;
            assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
        }
    }

    /// Every line the client prints, in order: opened, welcome, one line
    /// per product, closed.
    pub fn expected_transcript(&self) -> Vec<String> {
        let mut lines = vec![
            "Connected to the WebSocket server".to_owned(),
            WELCOME.to_owned(),
        ];
        for body in &self.products {
            lines.push(format!(
                "New product added: {}",
                body["name"].as_str().unwrap()
            ));
        }
        lines.push("Disconnected".to_owned());
        lines
    }
}
