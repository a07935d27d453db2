//! The JavaScript client from the Ocha docs in a real browser, headless
//! Chromium, against the real binary. The page runs `ocha_client.js`, the
//! very file `javascript_client.rs` gives node, with node's `process.argv`
//! supplied and every console line collected; the test drives Chromium
//! through the DevTools protocol and reads the collected lines back.

mod common;

use std::path::Path;

use common::chromium::{Chromium, Devtools};
use common::docs_client::{DocsServer, WELCOME};
use common::*;
use serde_json::{json, Value};

/// The docs' client, plus reading the URL and closing after N products.
const CLIENT: &str = include_str!("javascript/ocha_client.js");

/// A page that gives the client what node would (`process.argv`, and a
/// `process.exitCode` to set) and keeps every line it prints in `printed`.
fn page(url: &str, products: usize) -> String {
    let argv = json!(["chromium", "ocha_client.js", url, products.to_string()]);
    format!(
        r#"<!doctype html>
<meta charset="utf-8">
<title>Ocha client</title>
<script>
var process = {{ argv: {argv}, exitCode: 0 }};
var printed = [];
for (const [name, prefix] of [["log", ""], ["error", "console.error: "]]) {{
  const original = console[name];
  console[name] = (...args) => {{
    printed.push(prefix + args.join(" "));
    original.apply(console, args);
  }};
}}
</script>
<script>
{CLIENT}
</script>
"#
    )
}

/// `path` as a `file://` URL.
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for byte in path.to_str().expect("a UTF-8 temp dir").bytes() {
        if byte.is_ascii_alphanumeric() || b"/-_.~".contains(&byte) {
            url.push(byte as char);
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    url
}

/// The lines the page's client has printed so far; `None` before the
/// page's script ran.
const PRINTED: &str = "typeof printed === 'undefined' ? null : printed";

/// Polls the page until `done` holds for the lines its client printed;
/// returns them, or what was printed so far and the last error once
/// [`PATIENCE`] is over.
async fn wait_printed(
    devtools: &mut Devtools,
    session: &str,
    done: impl Fn(&[String]) -> bool,
) -> Result<Vec<String>, String> {
    let lines = |value: &Value| -> Vec<String> {
        serde_json::from_value(value.clone()).unwrap_or_default()
    };
    let printed = devtools
        .wait_for(session, PRINTED, |value| done(&lines(value)))
        .await?;
    Ok(lines(&printed))
}

#[tokio::test]
async fn the_docs_client_in_chromium_gets_the_welcome_then_each_new_product_in_order() {
    let mut server = DocsServer::start("browser").await;
    let page_path = server.dir.path().join("ocha_client.html");
    std::fs::write(&page_path, page(&server.url(), server.products.len())).unwrap();

    let mut chromium = Chromium::start(server.dir.path());
    let mut devtools = chromium.devtools().await;
    let session = match devtools.open(&file_url(&page_path)).await {
        Ok(session) => session,
        Err(error) => chromium.fail(&format!("open the page: {error}")),
    };

    // The welcome is sent once the hub has the client, so products created
    // from now on reach it.
    let welcomed = wait_printed(&mut devtools, &session, |lines| {
        lines.iter().any(|line| line == WELCOME)
    })
    .await;
    if let Err(error) = welcomed {
        chromium.fail(&format!(
            "the page did not print the welcome {WELCOME:?} in time: {error}"
        ));
    }

    server.create_products().await;

    // After the last product the client closes the socket.
    let printed = wait_printed(&mut devtools, &session, |lines| {
        lines.last().is_some_and(|line| line == "Disconnected")
    })
    .await
    .unwrap_or_else(|error| {
        chromium.fail(&format!(
            "the page did not print Disconnected in time: {error}"
        ))
    });

    assert_eq!(printed, server.expected_transcript());

    chromium.close(&mut devtools).await;
    stop_binary(&mut server.process).await;
}
