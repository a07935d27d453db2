//! Channels, users, admission and presence, over real sockets.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::StatusCode;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use ocha_realtime::{
    Admission, CloseError, Config, ConnectionId, Frame, HandshakeError, Hub, Presence,
};
use serde::Serialize;
use support::{assert_quiet, eventually, next, next_text, Client};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// A server whose upgrade route admits clients as its query says:
/// `/?user=NAME&channel=A&channel=B`. With `token=`, the token must be
/// `good` or the upgrade is refused with 401 and a JSON body. Admission
/// waits for a permit of `admissions`, as a database lookup would wait.
async fn serve(hub: Hub, admissions: Arc<Semaphore>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (hub, admissions) = (hub.clone(), admissions.clone());
            let service = service_fn(move |request: Request<Incoming>| {
                let (hub, admissions) = (hub.clone(), admissions.clone());
                async move {
                    admissions.acquire().await.unwrap().forget();
                    Ok::<_, Infallible>(admit(&hub, request))
                }
            });
            let connection = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::spawn(connection);
        }
    });
    addr
}

fn admit(hub: &Hub, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let query = request.uri().query().unwrap_or("").to_owned();
    let pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    if let Some((_, token)) = pairs.iter().find(|(key, _)| *key == "token") {
        if *token != "good" {
            let mut refusal = Response::new(Full::new(Bytes::from(r#"{"message":"bad token"}"#)));
            *refusal.status_mut() = StatusCode::UNAUTHORIZED;
            return refusal;
        }
    }
    let mut admission = match pairs.iter().find(|(key, _)| *key == "user") {
        Some((_, user)) => Admission::user(*user),
        None => Admission::anonymous(),
    };
    for (_, channel) in pairs.iter().filter(|(key, _)| *key == "channel") {
        admission = admission.channel(*channel);
    }
    if let Some((_, protocol)) = pairs.iter().find(|(key, _)| *key == "protocol") {
        admission = admission.protocol(*protocol);
    }
    hub.upgrade_with(request, admission)
        .unwrap_or_else(HandshakeError::into_response)
}

/// A hub without a welcome, served with admission that never waits.
async fn hub_and_server(builder: ocha_realtime::HubBuilder) -> (Hub, SocketAddr) {
    let hub = builder.build();
    let addr = serve(
        hub.clone(),
        Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
    )
    .await;
    (hub, addr)
}

async fn connect(addr: SocketAddr, query: &str) -> Client {
    let (client, response) = tokio_tungstenite::connect_async(format!("ws://{addr}/?{query}"))
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    client
}

fn quiet_config() -> Config {
    Config::default().without_welcome()
}

#[tokio::test]
async fn your_own_event_type_arrives_byte_for_byte() {
    #[derive(Serialize)]
    struct OrderReady<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        order: u64,
        items: Vec<&'a str>,
        total: f64,
    }
    let (hub, addr) = hub_and_server(Hub::builder(quiet_config())).await;
    let mut client = connect(addr, "user=alice").await;
    eventually("alice is connected", || hub.user_connections("alice") == 1).await;
    let event = OrderReady {
        kind: "order_ready",
        order: 42,
        items: vec!["Matcha Latte", "Hōjicha"],
        total: 12.5,
    };
    assert_eq!(hub.send_to_user("alice", &Frame::json(&event).unwrap()), 1);
    assert_eq!(
        next_text(&mut client).await,
        r#"{"type":"order_ready","order":42,"items":["Matcha Latte","Hōjicha"],"total":12.5}"#
    );
    // A value serde_json cannot write is an error, not a publish.
    let bad: HashMap<(u8, u8), u8> = HashMap::from([((1, 2), 3)]);
    assert!(Frame::json(&bad).is_err());
}

#[tokio::test]
async fn a_channel_reaches_its_members_once_and_nobody_else() {
    let (hub, addr) = hub_and_server(Hub::builder(quiet_config())).await;
    let mut lausanne = connect(addr, "channel=store:lausanne&channel=products").await;
    let mut both = connect(addr, "channel=store:lausanne&channel=store:geneva").await;
    let mut geneva = connect(addr, "channel=store:geneva").await;
    let mut nowhere = connect(addr, "").await;
    eventually("everyone is in", || hub.stats().connections == 4).await;
    assert_eq!(hub.channel_connections("store:lausanne"), 2);

    for i in 0..3 {
        let frame = Frame::text(&format!("lausanne {i}"));
        assert_eq!(hub.publish_to("store:lausanne", &frame), 2);
    }
    assert_eq!(hub.publish_to("store:geneva", &Frame::text("geneva")), 2);
    assert_eq!(hub.publish_to("store:zurich", &Frame::text("nobody")), 0);
    assert_eq!(hub.publish(&Frame::text("everyone")), 4);

    for client in [&mut lausanne, &mut both] {
        for i in 0..3 {
            assert_eq!(next_text(client).await, format!("lausanne {i}"));
        }
    }
    assert_eq!(next_text(&mut both).await, "geneva");
    assert_eq!(next_text(&mut geneva).await, "geneva");
    for client in [&mut lausanne, &mut both, &mut geneva, &mut nowhere] {
        assert_eq!(next_text(client).await, "everyone");
        assert_quiet(client).await;
    }
}

#[tokio::test]
async fn subscribe_and_unsubscribe_change_membership_by_connection_id() {
    let ids = Arc::new(Mutex::new(Vec::<ConnectionId>::new()));
    let builder = Hub::builder(quiet_config()).on_presence({
        let ids = ids.clone();
        move |_hub, event| {
            if let Presence::Connected { connection, .. } = event {
                ids.lock().unwrap().push(connection);
            }
        }
    });
    let (hub, addr) = hub_and_server(builder).await;
    let mut client = connect(addr, "").await;
    eventually("the connection is announced", || {
        ids.lock().unwrap().len() == 1
    })
    .await;
    let id = ids.lock().unwrap()[0];

    assert!(!hub.is_subscribed(id, "news"));
    assert!(hub.subscribe(id, "news"));
    assert!(hub.is_subscribed(id, "news"));
    assert!(!hub.subscribe(id, "news"), "already a member");
    assert_eq!(hub.publish_to("news", &Frame::text("first")), 1);
    assert_eq!(next_text(&mut client).await, "first");
    assert!(hub.unsubscribe(id, "news"));
    assert!(!hub.is_subscribed(id, "news"));
    assert!(!hub.unsubscribe(id, "news"));
    assert_eq!(hub.publish_to("news", &Frame::text("second")), 0);
    assert_quiet(&mut client).await;
    assert_eq!(hub.stats().channels, 0, "an emptied channel is gone");
}

#[tokio::test]
async fn a_user_is_reached_and_disconnected_on_every_connection() {
    let (hub, addr) = hub_and_server(Hub::builder(quiet_config())).await;
    let mut tab = connect(addr, "user=alice").await;
    let mut phone = connect(addr, "user=alice").await;
    let mut bob = connect(addr, "user=bob").await;
    eventually("all are in", || hub.stats().connections == 3).await;
    assert_eq!(hub.user_connections("alice"), 2);

    assert_eq!(
        hub.send_to_user("alice", &Frame::text("your order is ready")),
        2
    );
    assert_eq!(next_text(&mut tab).await, "your order is ready");
    assert_eq!(next_text(&mut phone).await, "your order is ready");
    assert_quiet(&mut bob).await;

    assert_eq!(
        hub.disconnect_user("alice", 1006, ""),
        Err(CloseError::Code(1006))
    );
    assert_eq!(hub.disconnect_user("alice", 4001, "logged out"), Ok(2));
    for client in [&mut tab, &mut phone] {
        match next(client).await {
            Message::Close(Some(frame)) => {
                assert_eq!(frame.code, CloseCode::Library(4001));
                assert_eq!(frame.reason, "logged out");
            }
            other => panic!("expected close 4001, got {other:?}"),
        }
        // Reading on sends tungstenite's close reply, which ends it.
        assert!(client.next().await.is_none());
    }
    eventually("alice is gone", || hub.user_connections("alice") == 0).await;
    assert_eq!(hub.send_to_user("alice", &Frame::text("too late")), 0);
    assert_eq!(hub.send_to_user("bob", &Frame::text("still here")), 1);
    assert_eq!(next_text(&mut bob).await, "still here");
}

#[tokio::test]
async fn the_application_refuses_with_its_own_status_and_body() {
    let (hub, addr) = hub_and_server(Hub::builder(quiet_config())).await;
    let request = format!("ws://{addr}/?token=forged")
        .into_client_request()
        .unwrap();
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(
                response.body().as_deref(),
                Some(&br#"{"message":"bad token"}"#[..])
            );
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    assert_eq!(hub.stats().accepted, 0);
    let _admitted = connect(addr, "token=good").await;
}

#[tokio::test]
async fn admission_may_wait_without_holding_the_hub() {
    let hub = Hub::builder(quiet_config()).build();
    let admissions = Arc::new(Semaphore::new(1));
    let addr = serve(hub.clone(), admissions.clone()).await;
    let mut first = connect(addr, "channel=news").await;

    // The second client's admission waits (on a lookup, say) meanwhile the
    // hub publishes, and its first member reads.
    let waiting = tokio::spawn(async move { connect(addr, "channel=news").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished());
    assert_eq!(hub.publish_to("news", &Frame::text("while waiting")), 1);
    assert_eq!(next_text(&mut first).await, "while waiting");

    admissions.add_permits(1);
    let mut second = waiting.await.unwrap();
    eventually("both are members", || hub.channel_connections("news") == 2).await;
    assert_eq!(hub.publish_to("news", &Frame::text("after")), 2);
    assert_eq!(next_text(&mut second).await, "after");
}

#[tokio::test]
async fn an_admitted_subprotocol_is_echoed_and_must_have_been_offered() {
    let (_hub, addr) = hub_and_server(Hub::builder(quiet_config())).await;
    let mut request = format!("ws://{addr}/?protocol=token.good")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "chat, token.good".parse().unwrap(),
    );
    let (_client, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "token.good");

    let not_offered = support::raw_request(
        addr,
        &support::upgrade_request("").replace("GET / ", "GET /?protocol=token.good "),
    )
    .await;
    assert!(not_offered.starts_with("HTTP/1.1 400"), "{not_offered}");
}

#[tokio::test]
async fn presence_follows_connects_disconnects_slow_closes_and_heartbeat_drops() {
    let events = Arc::new(Mutex::new(Vec::new()));
    // Members leave when their connection ends, at most a close timeout
    // after it starts closing.
    let config = quiet_config()
        .outbound_capacity(2)
        .heartbeat_interval(Duration::from_millis(200))
        .close_timeout(Duration::from_millis(200));
    let builder = Hub::builder(config).on_presence({
        let events = events.clone();
        move |_hub, event| events.lock().unwrap().push(event)
    });
    let (hub, addr) = hub_and_server(builder).await;

    let mut alice = connect(addr, "user=alice&channel=lobby").await;
    let alice_tab = connect(addr, "user=alice&channel=lobby").await;
    let bob = connect(addr, "user=bob&channel=lobby").await;
    eventually("three are in", || hub.channel_connections("lobby") == 3).await;
    let mut presence = hub.presence("lobby");
    presence.sort();
    assert_eq!(presence, [("alice".to_owned(), 2), ("bob".to_owned(), 1)]);

    // A polite disconnect.
    drop(alice_tab);
    eventually("alice has one tab", || hub.user_connections("alice") == 1).await;
    assert_eq!(hub.presence("lobby").len(), 2);

    // Bob never reads again (nor answers pings): dropped by the heartbeat
    // while alice reads and answers.
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = alice.next().await {
            if let Message::Text(text) = message {
                if text.as_str() == "stop" {
                    break;
                }
            }
        }
        alice
    });
    eventually("bob is dropped as silent", || {
        hub.user_connections("bob") == 0
    })
    .await;
    assert_eq!(hub.stats().heartbeat_timeouts, 1);
    assert_eq!(hub.presence("lobby"), [("alice".to_owned(), 1)]);
    drop(bob);

    // Carol stops reading and falls behind: closed as slow, and gone.
    let carol = tokio::net::TcpStream::connect(addr).await.unwrap();
    let carol = {
        let mut stream = carol;
        tokio::io::AsyncWriteExt::write_all(
            &mut stream,
            support::upgrade_request("")
                .replace("GET / ", "GET /?user=carol&channel=vip ")
                .as_bytes(),
        )
        .await
        .unwrap();
        stream
    };
    eventually("carol is in", || hub.user_connections("carol") == 1).await;
    let big = Frame::text(&"x".repeat(1 << 20));
    for _ in 0..16 {
        hub.publish_to("vip", &big);
    }
    eventually("carol is closed as slow", || {
        hub.user_connections("carol") == 0
    })
    .await;
    assert!(hub.stats().slow_consumer_closes >= 1);
    drop(carol);

    hub.publish_to("lobby", &Frame::text("stop"));
    let mut alice = reader.await.unwrap();
    alice.close(None).await.unwrap();
    eventually("everyone is gone", || hub.stats().connections == 0).await;
    let stats = hub.stats();
    assert_eq!((stats.channels, stats.users), (0, 0));

    // Connected, Joined, Left, Disconnected: four connections, one channel each.
    let mut kinds = [0; 4];
    for event in events.lock().unwrap().iter() {
        kinds[match event {
            Presence::Connected { .. } => 0,
            Presence::Joined { .. } => 1,
            Presence::Left { .. } => 2,
            Presence::Disconnected { .. } => 3,
            other => panic!("unexpected {other:?}"),
        }] += 1;
    }
    assert_eq!(kinds, [4, 4, 4, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_is_reachable_as_soon_as_its_upgrade_is_answered() {
    let (hub, addr) = hub_and_server(Hub::builder(quiet_config())).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let user = format!("dana{i}");
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            support::upgrade_request("").replace("GET / ", &format!("GET /?user={user} "));
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
            .await
            .unwrap();
        support::read_until(&mut stream, b"\r\n\r\n").await;
        // Listed before the 101 was sent, though its socket may still be on
        // its way to the hub.
        assert_eq!(hub.send_to_user(&user, &Frame::text("hi")), 1, "{user}");
        support::read_until(&mut stream, b"\x81\x02hi").await;
        clients.push(stream);
    }
}
