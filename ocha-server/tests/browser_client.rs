//! The JavaScript client from the Ocha docs in a real browser, headless
//! Chromium, against the real binary. The page runs `ocha_client.js`, the
//! very file `javascript_client.rs` gives node, with node's `process.argv`
//! supplied and every console line collected; the test drives Chromium
//! through the DevTools protocol and reads the collected lines back.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::docs_client::{DocsServer, WELCOME};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

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

/// Headless Chromium with a fresh profile in `dir`, in its own process
/// group so that dropping it kills every Chromium process it started (but
/// its two crashpad handlers, which detach themselves and exit with the
/// browser).
struct Chromium {
    child: Child,
    /// Its process group: the browser's pid.
    group: u32,
    profile: PathBuf,
    log: PathBuf,
}

impl Chromium {
    /// Starts `chromium` on about:blank with the DevTools protocol on a
    /// port it picks. A missing `chromium` fails the test: skipping would
    /// let CI pass without ever running the browser client.
    fn start(dir: &Path) -> Chromium {
        let profile = dir.join("chromium-profile");
        let log = dir.join("chromium.log");
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                // Without these it calls out, and this machine's closed
                // network refuses its connections.
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                // Renderers and utilities are then the browser's own
                // children: it reaps them all before it exits.
                "--no-zygote",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            // What it writes outside the profile (crash reports under
            // ~/.config, temporary files) goes with the test's directory.
            .env("HOME", dir)
            .env("XDG_CONFIG_HOME", dir)
            .env("XDG_CACHE_HOME", dir)
            .env("TMPDIR", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create chromium.log"))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "this test runs the docs' JavaScript client in headless Chromium and \
                     needs `chromium` on PATH (apt-get install -y chromium): {error}"
                )
            });
        Chromium {
            group: child.id().expect("chromium is running"),
            child,
            profile,
            log,
        }
    }

    /// Fails with what Chromium wrote to stderr.
    fn fail(&self, what: &str) -> ! {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        panic!("{what}\nchromium stderr:\n{log}");
    }

    /// Connects to the browser's DevTools endpoint, which Chromium writes
    /// to `DevToolsActivePort` in the profile once it listens.
    async fn devtools(&mut self) -> Devtools {
        let file = self.profile.join("DevToolsActivePort");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let url = loop {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            if let Some((port, path)) = text.split_once('\n') {
                if port.parse::<u16>().is_ok() && path.starts_with("/devtools/") {
                    break format!("ws://127.0.0.1:{port}{}", path.trim_end());
                }
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                self.fail(&format!("chromium exited early with {status}"));
            }
            if tokio::time::Instant::now() > deadline {
                self.fail("chromium did not open its DevTools port in time");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .unwrap_or_else(|error| self.fail(&format!("connect to DevTools at {url}: {error}")));
        Devtools { ws, next_id: 0 }
    }

    /// Asks the browser to close and waits until it has exited.
    async fn close(mut self, devtools: &mut Devtools) {
        if let Err(error) = devtools.call("Browser.close", json!({}), None).await {
            // The browser may close the connection before answering.
            eprintln!("Browser.close: {error}");
        }
        match tokio::time::timeout(PATIENCE, self.child.wait()).await {
            Ok(status) => {
                let status = status.expect("wait for chromium");
                if !status.success() {
                    self.fail(&format!("chromium exited with {status}"));
                }
            }
            Err(_) => self.fail("chromium did not exit in time after Browser.close"),
        }
    }
}

impl Drop for Chromium {
    /// Kills whatever is left of Chromium's process group (renderers,
    /// zygotes, utilities), also when the test failed halfway.
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.group)])
            .stderr(Stdio::null())
            .status();
    }
}

/// A DevTools protocol connection to the browser.
struct Devtools {
    ws: Ws,
    next_id: u64,
}

impl Devtools {
    /// Sends a command, to a page when `session` is set, and returns its
    /// result; events on the way are skipped.
    async fn call(
        &mut self,
        method: &str,
        params: Value,
        session: Option<&str>,
    ) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        let exchange = async {
            self.ws
                .send(Message::Text(command.to_string().into()))
                .await
                .map_err(|error| format!("send {method}: {error}"))?;
            loop {
                let reply = match self.ws.next().await {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => return Err(format!("{method}: {error}")),
                    None => return Err(format!("{method}: DevTools connection closed")),
                };
                let mut reply: Value = serde_json::from_str(&reply).expect("DevTools JSON");
                if reply["id"] != id {
                    continue;
                }
                return match reply.get("error") {
                    Some(error) => Err(format!("{method}: {error}")),
                    None => Ok(reply["result"].take()),
                };
            }
        };
        tokio::time::timeout(PATIENCE, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("{method}: no reply in time")))
    }

    /// Opens `url` in a new tab and returns the session to talk to it.
    async fn open(&mut self, url: &str) -> Result<String, String> {
        let target = self
            .call("Target.createTarget", json!({ "url": url }), None)
            .await?;
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
                None,
            )
            .await?;
        Ok(attached["sessionId"].as_str().unwrap().to_owned())
    }

    /// The lines the page's client has printed so far; `None` before the
    /// page's script ran.
    async fn printed(&mut self, session: &str) -> Result<Option<Vec<String>>, String> {
        let params = json!({
            "expression": "typeof printed === 'undefined' ? null : printed",
            "returnByValue": true,
        });
        let result = self.call("Runtime.evaluate", params, Some(session)).await?;
        if let Some(exception) = result.get("exceptionDetails") {
            return Err(format!("Runtime.evaluate: {exception}"));
        }
        Ok(serde_json::from_value(result["result"]["value"].clone()).ok())
    }

    /// Polls the page until `done` holds for its lines; returns them, or
    /// the lines so far and the last error once [`PATIENCE`] is over.
    async fn wait_printed(
        &mut self,
        session: &str,
        done: impl Fn(&[String]) -> bool,
    ) -> Result<Vec<String>, String> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            // While the page loads its context may be gone for a moment.
            let (lines, error) = match self.printed(session).await {
                Ok(lines) => (lines.unwrap_or_default(), None),
                Err(error) => (Vec::new(), Some(error)),
            };
            if done(&lines) {
                return Ok(lines);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("printed so far: {lines:#?}, last error: {error:?}"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
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
    let welcomed = devtools
        .wait_printed(&session, |lines| lines.iter().any(|line| line == WELCOME))
        .await;
    if let Err(error) = welcomed {
        chromium.fail(&format!(
            "the page did not print the welcome {WELCOME:?} in time: {error}"
        ));
    }

    server.create_products().await;

    // After the last product the client closes the socket.
    let printed = devtools
        .wait_printed(&session, |lines| {
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
