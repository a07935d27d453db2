//! The JavaScript client from the Ocha docs, unchanged, against the real
//! binary: Node's WHATWG `WebSocket` is the API browsers have.

mod common;

use std::process::Stdio;

use common::docs_client::{DocsServer, WELCOME};
use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The docs' client, plus reading the URL and closing after N products.
const CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/javascript/ocha_client.js"
);

/// `node`, with `--experimental-websocket` if `WebSocket` is not a global
/// yet (Node 20 and 21). A missing or too old `node` fails the test:
/// skipping would let CI pass without ever running the browser client.
fn node() -> Command {
    let has_websocket = |flags: &[&str]| {
        std::process::Command::new("node")
            .args(flags)
            .args([
                "-e",
                "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
            ])
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|error| {
                panic!(
                    "this test runs the docs' JavaScript client and needs Node.js >= 20.10 \
                     as `node` on PATH: {error}"
                )
            })
            .success()
    };
    let flags: &[&str] = if has_websocket(&[]) {
        &[]
    } else if has_websocket(&["--experimental-websocket"]) {
        &["--experimental-websocket"]
    } else {
        panic!(
            "`node` has no WebSocket, even with --experimental-websocket: this test \
             needs Node.js >= 20.10 (`node --version` tells which one is on PATH)"
        );
    };
    let mut command = Command::new("node");
    command
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Fails with what node printed so far; kills it first so that reading its
/// stderr cannot hang.
async fn fail(client: &mut Child, what: &str, transcript: &[String]) -> ! {
    let _ = client.start_kill();
    panic!(
        "{what}\nnode stdout so far: {transcript:#?}\nnode stderr: {}",
        stderr(client).await
    );
}

#[tokio::test]
async fn the_docs_client_gets_the_welcome_then_each_new_product_in_order() {
    let mut server = DocsServer::start("javascript").await;
    let mut client = node()
        .arg(CLIENT)
        .arg(server.url())
        .arg(server.products.len().to_string())
        .spawn()
        .expect("start node");
    let mut stdout = BufReader::new(client.stdout.take().unwrap()).lines();
    let mut transcript = Vec::new();

    // The welcome is sent once the hub has the client, so products created
    // from now on reach it.
    let welcomed = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = stdout.next_line().await.expect("read node's stdout") {
            transcript.push(line);
            if transcript.last().unwrap() == WELCOME {
                return true;
            }
        }
        false
    })
    .await;
    if welcomed != Ok(true) {
        let what = format!("node did not print the welcome {WELCOME:?} in time");
        fail(&mut client, &what, &transcript).await;
    }

    server.create_products().await;

    // After the last product the client closes; node exits once it is closed.
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = stdout.next_line().await.expect("read node's stdout") {
            transcript.push(line);
        }
    })
    .await;
    if ended.is_err() {
        fail(&mut client, "node did not exit in time", &transcript).await;
    }
    let status = exit_status(&mut client).await;
    let errors = stderr(&mut client).await;

    assert_eq!(
        transcript,
        server.expected_transcript(),
        "node stderr: {errors}"
    );
    assert!(status.success(), "node exited with {status}: {errors}");

    stop_binary(&mut server.process).await;
}
