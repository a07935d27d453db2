//! Headless Chromium driven through the DevTools protocol, for the tests
//! that run a page in a real browser against the real binary.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::prelude::{Engine, BASE64_STANDARD};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

use super::{Ws, PATIENCE};

/// Headless Chromium with a fresh profile in `dir`, in its own process
/// group so that dropping it kills every Chromium process it started (but
/// its two crashpad handlers, which detach themselves and exit with the
/// browser).
pub struct Chromium {
    child: Child,
    /// Its process group: the browser's pid.
    group: u32,
    profile: PathBuf,
    log: PathBuf,
}

impl Chromium {
    /// Starts `chromium` on about:blank with the DevTools protocol on a
    /// port it picks. A missing `chromium` fails the test: skipping would
    /// let CI pass without ever running the browser tests.
    pub fn start(dir: &Path) -> Chromium {
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
                    "these tests run pages in headless Chromium and \
                     need `chromium` on PATH (apt-get install -y chromium): {error}"
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
    pub fn fail(&self, what: &str) -> ! {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        panic!("{what}\nchromium stderr:\n{log}");
    }

    /// Connects to the browser's DevTools endpoint, which Chromium writes
    /// to `DevToolsActivePort` in the profile once it listens.
    pub async fn devtools(&mut self) -> Devtools {
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
    pub async fn close(mut self, devtools: &mut Devtools) {
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
pub struct Devtools {
    ws: Ws,
    next_id: u64,
}

impl Devtools {
    /// Sends a command, to a page when `session` is set, and returns its
    /// result; events on the way are skipped.
    pub async fn call(
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
    pub async fn open(&mut self, url: &str) -> Result<String, String> {
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

    /// Evaluates `expression` in the page of `session` and returns its
    /// value (JSON); an exception the expression throws is an error.
    pub async fn evaluate(&mut self, session: &str, expression: &str) -> Result<Value, String> {
        let params = json!({ "expression": expression, "returnByValue": true });
        let mut result = self.call("Runtime.evaluate", params, Some(session)).await?;
        if let Some(exception) = result.get("exceptionDetails") {
            return Err(format!("Runtime.evaluate: {exception}"));
        }
        Ok(result["result"]["value"].take())
    }

    /// Polls `expression` in the page until `done` holds for its value;
    /// returns that value, or the last value and error once [`PATIENCE`]
    /// is over. While a page loads its context may be gone for a moment:
    /// errors until then are retried.
    pub async fn wait_for(
        &mut self,
        session: &str,
        expression: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (value, error) = match self.evaluate(session, expression).await {
                Ok(value) => (value, None),
                Err(error) => (Value::Null, Some(error)),
            };
            if done(&value) {
                return Ok(value);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "{expression} is still {value}, last error: {error:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A PNG of what the page of `session` shows.
    pub async fn screenshot(&mut self, session: &str) -> Result<Vec<u8>, String> {
        let result = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png" }),
                Some(session),
            )
            .await?;
        let data = result["data"].as_str().ok_or("no screenshot data")?;
        BASE64_STANDARD
            .decode(data)
            .map_err(|error| format!("screenshot data: {error}"))
    }
}
