//! CI smoke tests of the load generator: small runs that assert nothing is
//! lost, duplicated, reordered, delivered where it should not be, or failed
//! to connect. Never a speed threshold: timings are printed, not checked.
//!
//! The servers run in this process on 127.0.0.1: the real server through
//! `server::run` with an in-memory database (issue 4), over WebSocket and
//! Server-Sent Events, and a rooms-like server for the channel mode.
//! `loadgen` is the real binary, run as a child.
//!
//! Two listeners serving one app stand for two nodes of a cluster: to the
//! load generator, which only sees where its clients connect and where it
//! POSTs, they are one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use ocha_realtime::{is_websocket_upgrade, Admission, Config, Frame, HandshakeError, Hub};
use ocha_server::api::App;
use ocha_server::auth::Keys;
use ocha_server::config::{Database, EventSettings};
use ocha_server::server;
use ocha_server::store::Store;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
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

/// The options of every smoke run: `CLIENTS` × `EVENTS` against `addr`,
/// then `extra`.
fn loadgen_args(addr: SocketAddr, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--url",
        &format!("http://{addr}"),
        "--clients",
        &CLIENTS.to_string(),
        "--events",
        &EVENTS.to_string(),
        "--jwt-secret",
        SECRET,
        "--settle-ms",
        "200",
        "--interval-ms",
        "50",
        "--json",
    ]
    .map(String::from)
    .into();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// Runs the real `loadgen` binary against `addr` with `extra` options and
/// returns its JSON report, after asserting it exited successfully.
async fn loadgen(addr: SocketAddr, extra: &[&str]) -> Value {
    let args = loadgen_args(addr, extra);
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

/// Asserts that each of the first `recipients` readers got every event
/// exactly once, in order, and the other readers nothing.
fn assert_nothing_lost(report: &Value, recipients: u64) {
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
    assert_eq!(n("/recipients"), recipients, "{report}");
    assert_eq!(n("/deliveries/expected"), recipients * EVENTS, "{report}");
    assert_eq!(
        n("/deliveries/received"),
        n("/deliveries/expected"),
        "{report}"
    );
    assert_eq!(n("/deliveries/lost"), 0, "{report}");
    assert_eq!(n("/duplicates"), 0, "{report}");
    assert_eq!(n("/out_of_order"), 0, "{report}");
    assert_eq!(n("/non_member_frames"), 0, "{report}");
    assert_eq!(n("/disconnected"), 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_against_the_real_server_loses_nothing() {
    let app = real_app().await;
    let listener = listen().await;
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server::run(listener, app, async {
        let _ = stopped.await;
    }));

    let interval = loadgen(addr, &[]).await;
    assert_eq!(interval["mode"], "interval");
    assert_eq!(interval["transport"], "websocket");
    assert_nothing_lost(&interval, CLIENTS);

    let back_to_back = loadgen(addr, &["--back-to-back"]).await;
    assert_eq!(back_to_back["mode"], "back-to-back");
    assert_nothing_lost(&back_to_back, CLIENTS);

    // Clients that never read must not cost the readers anything. At this
    // size the server may or may not close them, so only their opening is checked.
    let slow = loadgen(addr, &["--slow-clients", "5"]).await;
    assert_nothing_lost(&slow, CLIENTS);
    assert_eq!(slow["slow"]["requested"], 5, "{slow}");
    assert_eq!(slow["slow"]["failed_to_open"], 0, "{slow}");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server shuts down in time")
        .expect("server task does not panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_readers_get_the_same_events_as_websocket_readers() {
    let app = real_app().await;
    let listener = listen().await;
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server::run(listener, app, async {
        let _ = stopped.await;
    }));

    // The second run's streams open past the first run's events: their
    // position after the welcome is the last event's id, no longer 0.
    for mode in [&[][..], &["--back-to-back"]] {
        let report = loadgen(addr, &[&["--sse"], mode].concat()).await;
        assert_eq!(report["transport"], "sse", "{report}");
        assert_nothing_lost(&report, CLIENTS);
    }

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server shuts down in time")
        .expect("server task does not panic");
}

/// The real server's app on an in-memory database.
async fn real_app() -> App {
    let store = Store::open(&Database::Memory)
        .await
        .expect("open the database");
    let keys = Keys::from_secret(SECRET.as_bytes());
    App::start(store, keys, Hub::default(), &EventSettings::default())
        .await
        .expect("start the app")
}

/// Serves `app` on two listeners, "nodes" of one cluster, until the
/// returned sender is dropped or sent to.
async fn two_nodes(app: App) -> ([SocketAddr; 2], oneshot::Sender<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let stopped = stopped.map(|_| ()).shared();
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let listener = listen().await;
        addrs.push(listener.local_addr().unwrap());
        tokio::spawn(server::run(listener, app.clone(), stopped.clone()));
    }
    ([addrs[0], addrs[1]], stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_spreads_clients_over_nodes_and_reports_each() {
    let (nodes, _stop) = two_nodes(real_app().await).await;
    let (a, b) = (
        format!("http://{}", nodes[0]),
        format!("http://{}", nodes[1]),
    );
    let report = loadgen(nodes[0], &["--ws-url", &a, "--ws-url", &b]).await;
    assert_nothing_lost(&report, CLIENTS);
    assert_eq!(report["ws_urls"].as_array().unwrap().len(), 2, "{report}");
    for (node, addr) in report["nodes"].as_array().unwrap().iter().zip(nodes) {
        assert_eq!(node["ws_url"], format!("ws://{addr}/"), "{report}");
        assert_eq!(node["clients"], CLIENTS / 2, "{report}");
        assert_eq!(node["events_complete"], EVENTS, "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_only_loadgen_measures_another_loadgens_events() {
    let (nodes, _stop) = two_nodes(real_app().await).await;
    let b = format!("http://{}", nodes[1]);
    let pair = ["--run-id", "smoke42"];

    // The listener, on the second node, first: it says when its clients are in.
    let mut args = loadgen_args(nodes[1], &pair);
    args.extend(["--listen-only", "--ws-url", &b, "--timeout-s", "30"].map(String::from));
    let mut listener = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the listening loadgen");
    let mut stderr = BufReader::new(listener.stderr.take().unwrap()).lines();
    let (listening_tx, listening) = oneshot::channel();
    // Read on to the end, so the listener never blocks on a full pipe.
    let said = tokio::spawn(async move {
        let (mut said, mut listening_tx) = (String::new(), Some(listening_tx));
        while let Ok(Some(line)) = stderr.next_line().await {
            if line.contains("smoke42: listening") {
                listening_tx.take().map(|tx| tx.send(()));
            }
            said.push_str(&line);
            said.push('\n');
        }
        said
    });
    tokio::time::timeout(RUN_LIMIT, listening)
        .await
        .expect("the listener listens in time")
        .expect("the listener ended before listening");

    let poster = loadgen(nodes[0], &pair).await;
    assert_nothing_lost(&poster, CLIENTS);

    let mut stdout = String::new();
    let status = tokio::time::timeout(RUN_LIMIT, async {
        listener
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .await
            .expect("read stdout");
        listener.wait().await.expect("wait for the listener")
    })
    .await
    .expect("the listener ends in time");
    let said = said.await.expect("stderr reader");
    eprintln!("listening loadgen: {status}\n{said}{stdout}");
    assert!(
        status.success(),
        "listener failed ({status}):\n{said}{stdout}"
    );
    let heard: Value = serde_json::from_str(stdout.trim()).expect("listener JSON");
    assert_nothing_lost(&heard, CLIENTS);
    assert_eq!(heard["mode"], "listen-only", "{heard}");
    assert_eq!(heard["run_id"], "smoke42", "{heard}");
    // Timed from the send times the poster wrote in its products.
    let per_event = heard["deliveries"]["all_clients_per_event_ms"]
        .as_array()
        .unwrap();
    assert_eq!(per_event.len() as u64, EVENTS, "{heard}");
    assert!(per_event.iter().all(Value::is_f64), "{heard}");
    assert!(heard["deliveries"]["latency_ms"]["p50"].is_f64(), "{heard}");
}

/// As much of `examples/rooms.rs` as loadgen's channel mode relies on: no
/// welcome, `/?channel=NAME` joins NAME on connecting, and a POST to
/// `/channels/NAME` or `/broadcast` publishes its body there.
async fn serve_rooms(listener: TcpListener, hub: Hub) {
    loop {
        let (stream, _) = listener.accept().await.expect("accept");
        let hub = hub.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let hub = hub.clone();
            async move { Ok::<_, Infallible>(rooms(hub, request).await) }
        });
        let connection = http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::spawn(connection);
    }
}

async fn rooms(hub: Hub, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if is_websocket_upgrade(&request) {
        let admission = match request.uri().query() {
            Some(query) => Admission::anonymous().channel(query.trim_start_matches("channel=")),
            None => Admission::anonymous(),
        };
        return hub
            .upgrade_with(request, admission)
            .unwrap_or_else(HandshakeError::into_response);
    }
    let path = request.uri().path().to_owned();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let frame = Frame::text(std::str::from_utf8(&body).unwrap());
    let delivered = match path.strip_prefix("/channels/") {
        Some(channel) => hub.publish_to(channel, &frame),
        None => hub.publish(&frame),
    };
    Response::new(Full::new(Bytes::from(format!(
        r#"{{"delivered":{delivered}}}"#
    ))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_channel_mode_reaches_members_only() {
    const MEMBERS: u64 = 50;
    let listener = listen().await;
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve_rooms(
        listener,
        Hub::new(Config::default().without_welcome()),
    ));
    let members = MEMBERS.to_string();
    let channel = ["--channel", "c", "--channel-members", &members];

    let to_members = loadgen(addr, &channel).await;
    assert_eq!(to_members["post_path"], "/channels/c", "{to_members}");
    assert_nothing_lost(&to_members, MEMBERS);

    let to_all = loadgen(addr, &[&channel[..], &["--broadcast"]].concat()).await;
    assert_eq!(to_all["post_path"], "/broadcast", "{to_all}");
    assert_nothing_lost(&to_all, CLIENTS);

    server.abort();
}
