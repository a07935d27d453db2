//! A client doing what the Ocha docs' JavaScript client does: print the
//! welcome, print `New product added: <name>` for each event, and reconnect
//! with backoff when the connection drops.
//!
//!     cargo run -p examples --example listen [ws://localhost:5001]

use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://localhost:5001".into());
    let mut backoff = Duration::from_millis(500);
    loop {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((mut socket, _)) => {
                backoff = Duration::from_millis(500);
                while let Some(Ok(message)) = socket.next().await {
                    if let Message::Text(text) = message {
                        print_message(&text);
                    }
                }
                println!("Connection closed");
            }
            Err(error) => eprintln!("Cannot connect to {url}: {error}"),
        }
        println!("Reconnecting in {backoff:?}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Prints a frame as the Ocha docs' client does.
fn print_message(text: &str) {
    let Ok(data) = serde_json::from_str::<serde_json::Value>(text) else {
        println!("Message: {text}");
        return;
    };
    if data["type"] == "new_product" {
        println!(
            "New product added: {}",
            data["product"]["name"].as_str().unwrap_or("?")
        );
    } else if let Some(message) = data["message"].as_str() {
        println!("{message}");
    } else {
        println!("Message: {text}");
    }
}
