//! The live page on `/` in a real browser, headless Chromium, against the
//! real binary on SQLite: products created, renamed and deleted through the
//! API appear, change and disappear in the page's visible text, and the
//! page reconnects on its own after a restart (resuming) and after a
//! restart on another database (loading the list again on `resync`).
//!
//! When a step fails, the test saves a screenshot of the page under
//! Cargo's temporary directory for integration tests (`target/tmp`) and
//! prints its path.

mod common;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use common::chromium::{Chromium, Devtools};
use common::daemon::unused_port;
use common::*;
use futures_util::FutureExt;
use serde_json::{json, Value};
use tokio::process::Child;

/// The page's visible text.
const TEXT: &str = "document.body.innerText";

/// The page's connection state: `connecting`, `live` or `offline`.
const STATE: &str = "document.getElementById('status')?.dataset.state ?? null";

/// The binary on `port` (the page reconnects to the address it came from)
/// with its database in `dir`.
async fn launch(dir: &TempDir, port: u16) -> (Child, SocketAddr) {
    let mut command = server_command(dir);
    command.env("PORT", port.to_string());
    let (server, addr, _) = start(&mut command).await;
    (server, addr)
}

/// Creates product `n` and returns its id.
async fn create_on(addr: SocketAddr, n: u32) -> String {
    let reply = post_product(addr, Some(&admin_token()), &product_body(n)).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    product_id(&reply)
}

/// The page of `session` in Chromium.
struct Page<'a> {
    devtools: &'a mut Devtools,
    session: &'a str,
}

impl Page<'_> {
    /// Waits until the page is connected and shows the products.
    async fn wait_live(&mut self) {
        let state = self
            .devtools
            .wait_for(self.session, STATE, |state| state == "live")
            .await;
        if let Err(error) = state {
            panic!("the page is not live: {error}");
        }
    }

    /// Waits until the page has lost its connection.
    async fn wait_offline(&mut self) {
        let state = self
            .devtools
            .wait_for(self.session, STATE, |state| state == "offline")
            .await;
        if let Err(error) = state {
            panic!("the page did not notice the server went away: {error}");
        }
    }

    /// Waits until the page's visible text has each of `shown` and none of
    /// `gone`.
    async fn wait_text(&mut self, shown: &[&str], gone: &[&str]) {
        let matches = |text: &Value| {
            let text = text.as_str().unwrap_or_default();
            shown.iter().all(|name| text.contains(name))
                && !gone.iter().any(|name| text.contains(name))
        };
        if let Err(error) = self.devtools.wait_for(self.session, TEXT, matches).await {
            panic!("the page does not show {shown:?} without {gone:?}: {error}");
        }
    }
}

#[tokio::test]
async fn products_appear_change_and_disappear_and_the_page_reconnects_on_its_own() {
    let dir = TempDir::new("live-page");
    let port = unused_port();
    let (mut server, addr) = launch(&dir, port).await;
    create_on(addr, 1).await;

    let mut chromium = Chromium::start(dir.path());
    let mut devtools = chromium.devtools().await;
    let session = match devtools.open(&format!("http://{addr}/")).await {
        Ok(session) => session,
        Err(error) => chromium.fail(&format!("open the page: {error}")),
    };
    let mut page = Page {
        devtools: &mut devtools,
        session: &session,
    };
    let other_dir = TempDir::new("live-page-other");

    let steps = async {
        // The product from before the page opened, from the listing.
        page.wait_live().await;
        page.wait_text(&["Matcha Latte 1", "1 product"], &[]).await;

        let id = create_on(addr, 2).await;
        page.wait_text(&["Matcha Latte 1", "Matcha Latte 2"], &[])
            .await;

        // Markup in a name is shown as text, never run as HTML.
        let admin = admin_token();
        let renamed = json!({"name": "<em>Hojicha</em> Latte 2", "basePriceCHF": 7.25});
        let reply = patch_product(addr, Some(&admin), &id, renamed.to_string()).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        page.wait_text(
            &["<em>Hojicha</em> Latte 2", "CHF 7.25"],
            &["Matcha Latte 2"],
        )
        .await;

        let reply = delete_product(addr, Some(&admin), &id).await;
        assert_eq!(reply.status, 204, "{}", reply.text());
        page.wait_text(&["Matcha Latte 1", "1 product"], &["Hojicha"])
            .await;

        // A restart: the page reconnects and resumes where it was, getting
        // what was created since whether or not it was back by then.
        stop_binary(&mut server).await;
        page.wait_offline().await;
        let (restarted, addr) = launch(&dir, port).await;
        server = restarted;
        create_on(addr, 3).await;
        page.wait_text(&["Matcha Latte 1", "Matcha Latte 3"], &["Hojicha"])
            .await;
        page.wait_live().await;

        // Another database on the same address: the page's last event id
        // is not one this server gave, so it gets a resync and loads the
        // (empty) list again.
        stop_binary(&mut server).await;
        page.wait_offline().await;
        let (replaced, addr) = launch(&other_dir, port).await;
        server = replaced;
        page.wait_text(&["No products yet."], &["Matcha Latte"])
            .await;
        page.wait_live().await;
        create_on(addr, 4).await;
        page.wait_text(&["Matcha Latte 4", "1 product"], &["Matcha Latte 1"])
            .await;
    };
    if let Err(panic) = AssertUnwindSafe(steps).catch_unwind().await {
        let saved = save_screenshot(&mut devtools, &session).await;
        eprintln!("screenshot of the page when the test failed: {saved}");
        std::panic::resume_unwind(panic);
    }

    chromium.close(&mut devtools).await;
    stop_binary(&mut server).await;
}

/// Saves a screenshot of the page as `target/tmp/live_page-<time>.png` and
/// returns its path, or says why it could not.
async fn save_screenshot(devtools: &mut Devtools, session: &str) -> String {
    let png = match devtools.screenshot(session).await {
        Ok(png) => png,
        Err(error) => return format!("none: {error}"),
    };
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("live_page-{millis}.png"));
    match std::fs::write(&path, png) {
        Ok(()) => path.display().to_string(),
        Err(error) => format!("none: cannot write {}: {error}", path.display()),
    }
}
