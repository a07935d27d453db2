//! CI smoke test of the load generator against the real server (issue 4):
//! a small run that asserts nothing is lost, duplicated, reordered or failed
//! to connect. Never a speed threshold: timings are printed, not checked.
//!
//! The server runs in this process through `server::run` on 127.0.0.1 with
//! an in-memory database; `loadgen` is the real binary, run as a child.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ocha_realtime::Hub;
use ocha_server::api::App;
use ocha_server::auth::Keys;
use ocha_server::config::Database;
use ocha_server::server;
use ocha_server::store::Store;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::oneshot;

const SECRET: &str = "loadgen-smoke-secret";
const CLIENTS: u64 = 200;
const EVENTS: u64 = 5;
/// Bound on one loadgen run, far above its few seconds even in debug: a hang
/// fails the test instead of stalling CI.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Binds 127.0.0.1 on a port below the ephemeral range (32768 and up on
/// Linux), so the loadgen's 200 client ports never compete with the
/// server's; falls back to any free port.
async fn listen() -> TcpListener {
    let start = 20_000 + (std::process::id() % 12_000) as u16;
    for offset in 0..64 {
        let port = 20_000 + (start - 20_000 + offset) % 12_000;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)).await {
            return listener;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
}

/// Runs the real `loadgen` binary against `addr` with `extra` options and
/// returns its JSON report, after asserting it exited successfully.
async fn loadgen(addr: SocketAddr, extra: &[&str]) -> Value {
    let url = format!("http://{addr}");
    let clients = CLIENTS.to_string();
    let events = EVENTS.to_string();
    let mut args = vec![
        "--url",
        &url,
        "--clients",
        &clients,
        "--events",
        &events,
        "--jwt-secret",
        SECRET,
        "--settle-ms",
        "200",
        "--interval-ms",
        "50",
        "--json",
    ];
    args.extend_from_slice(extra);
    let started = Instant::now();
    let output = tokio::time::timeout(
        RUN_LIMIT,
        Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(&args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("loadgen {args:?} did not finish within {RUN_LIMIT:?}"))
    .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!(
        "loadgen {extra:?} in {:.2} s: {}\n{stderr}{stdout}",
        started.elapsed().as_secs_f64(),
        output.status
    );
    assert!(
        output.status.success(),
        "loadgen {args:?} failed ({})\nstderr:\n{stderr}\nstdout:\n{stdout}",
        output.status
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("loadgen JSON: {e}: {stdout}"))
}

/// Asserts every reader got every event exactly once, in order.
fn assert_nothing_lost(report: &Value) {
    let n = |path: &str| {
        report
            .pointer(path)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("no number at {path} in {report}"))
    };
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(n("/connect/ok"), CLIENTS, "{report}");
    assert_eq!(n("/connect/failed"), 0, "{report}");
    assert_eq!(n("/connect/bad_welcome"), 0, "{report}");
    assert_eq!(n("/posts_failed"), 0, "{report}");
    assert_eq!(n("/deliveries/expected"), CLIENTS * EVENTS, "{report}");
    assert_eq!(
        n("/deliveries/received"),
        n("/deliveries/expected"),
        "{report}"
    );
    assert_eq!(n("/deliveries/lost"), 0, "{report}");
    assert_eq!(n("/duplicates"), 0, "{report}");
    assert_eq!(n("/out_of_order"), 0, "{report}");
    assert_eq!(n("/disconnected"), 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_against_the_real_server_loses_nothing() {
    let store = Store::open(&Database::Memory)
        .await
        .expect("open the database");
    let app = App::new(store, Keys::from_secret(SECRET.as_bytes()), Hub::default());
    let listener = listen().await;
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server::run(listener, app, async {
        let _ = stopped.await;
    }));

    let interval = loadgen(addr, &[]).await;
    assert_eq!(interval["mode"], "interval");
    assert_nothing_lost(&interval);

    let back_to_back = loadgen(addr, &["--back-to-back"]).await;
    assert_eq!(back_to_back["mode"], "back-to-back");
    assert_nothing_lost(&back_to_back);

    // Clients that never read must not cost the readers anything. At this
    // size the server may or may not close them, so only their opening is checked.
    let slow = loadgen(addr, &["--slow-clients", "5"]).await;
    assert_nothing_lost(&slow);
    assert_eq!(slow["slow"]["requested"], 5, "{slow}");
    assert_eq!(slow["slow"]["failed_to_open"], 0, "{slow}");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server shuts down in time")
        .expect("server task does not panic");
}
