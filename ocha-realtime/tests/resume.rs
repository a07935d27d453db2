//! Event ids, the history and resuming clients, over real sockets.

mod support;

use std::time::{Duration, SystemTime};

use ocha_realtime::{Config, EventId, Frame, Hub, OCHA_WELCOME, RESYNC};
use support::{assert_quiet, connect, next_text, serve};

/// The event `id` as a client sees it.
fn event(id: u64) -> String {
    format!(r#"{{"type":"tick","n":{id},"id":"{id}"}}"#)
}

fn publish(hub: &Hub, id: u64) -> Option<usize> {
    hub.publish_event(EventId::new(id), &Frame::text(&event(id)))
}

fn welcome_at(position: u64) -> String {
    format!(r#"{{"message":"Connecté au WebSocket","lastEventId":"{position}"}}"#)
}

#[tokio::test]
async fn a_resuming_client_gets_what_it_missed_in_order_then_live_events() {
    let (hub, addr) = serve(Config::default()).await;
    let mut plain = connect(addr, "/", OCHA_WELCOME).await;
    for id in 1..=5 {
        assert_eq!(publish(&hub, id), Some(1));
    }
    let mut resumed = connect(addr, "/?since=2", &welcome_at(5)).await;
    for id in 3..=5 {
        assert_eq!(next_text(&mut resumed).await, event(id));
    }
    assert_eq!(publish(&hub, 6), Some(2));
    assert_eq!(next_text(&mut resumed).await, event(6));
    for id in 1..=6 {
        assert_eq!(next_text(&mut plain).await, event(id));
    }
    assert_quiet(&mut resumed).await;
}

#[tokio::test]
async fn an_empty_since_learns_the_position_without_a_replay() {
    let (hub, addr) = serve(Config::default()).await;
    let mut fresh = connect(addr, "/?since=", &welcome_at(0)).await;
    publish(&hub, 1);
    assert_eq!(next_text(&mut fresh).await, event(1));
    let mut later = connect(addr, "/?since=", &welcome_at(1)).await;
    assert_quiet(&mut later).await;
    // Resuming from the position it learnt misses nothing.
    publish(&hub, 2);
    let mut back = connect(addr, "/?since=1", &welcome_at(2)).await;
    assert_eq!(next_text(&mut back).await, event(2));
}

#[tokio::test]
async fn too_old_or_unknown_positions_get_a_resync_then_live_events() {
    let (hub, addr) = serve(Config::default().history_size(3)).await;
    for id in 1..=5 {
        publish(&hub, id);
    }
    for since in ["1", "6", "abc", "-1", "99999999999999999999"] {
        let mut client = connect(addr, &format!("/?since={since}"), &welcome_at(5)).await;
        assert_eq!(next_text(&mut client).await, RESYNC, "since={since}");
        assert_quiet(&mut client).await;
    }
    // The oldest position still covered replays all that is kept.
    let mut covered = connect(addr, "/?since=2", &welcome_at(5)).await;
    for id in 3..=5 {
        assert_eq!(next_text(&mut covered).await, event(id));
    }
    let mut resynced = connect(addr, "/?since=1", &welcome_at(5)).await;
    assert_eq!(next_text(&mut resynced).await, RESYNC);
    publish(&hub, 6);
    assert_eq!(next_text(&mut resynced).await, event(6));
}

#[tokio::test]
async fn an_event_already_published_is_not_sent_again() {
    let (hub, addr) = serve(Config::default()).await;
    let mut client = connect(addr, "/", OCHA_WELCOME).await;
    assert_eq!(publish(&hub, 7), Some(1));
    assert_eq!(publish(&hub, 7), None);
    assert_eq!(publish(&hub, 3), None);
    assert_eq!(hub.last_event_id(), EventId::new(7));
    assert_eq!(next_text(&mut client).await, event(7));
    assert_quiet(&mut client).await;
}

#[tokio::test]
async fn a_restored_history_resumes_clients_across_a_restart() {
    let (hub, addr) = serve(Config::default().history_max_age(Duration::from_secs(60))).await;
    let now = SystemTime::now();
    let expired = now - Duration::from_secs(120);
    hub.restore_history(
        EventId::new(9),
        [(6, expired), (7, now), (8, now), (9, now)]
            .map(|(id, at)| (EventId::new(id), at, Frame::text(&event(id)))),
    );
    let mut client = connect(addr, "/?since=7", &welcome_at(9)).await;
    assert_eq!(next_text(&mut client).await, event(8));
    assert_eq!(next_text(&mut client).await, event(9));
    let mut expired = connect(addr, "/?since=5", &welcome_at(9)).await;
    assert_eq!(next_text(&mut expired).await, RESYNC);
    assert_eq!(publish(&hub, 9), None, "restored ids count as published");
}

/// Clients resume while events are being published: each gets every event
/// after its position exactly once and in order, whichever side of the
/// handover an event falls on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_while_events_are_published_loses_and_repeats_nothing() {
    const EVENTS: u64 = 3000;
    let (hub, addr) = serve(Config::default().history_size(EVENTS as usize)).await;
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            for id in 1..=EVENTS {
                publish(&hub, id).unwrap();
                if id % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    let mut readers = Vec::new();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        // Some way behind the hub, which moves on while the client connects.
        let since = hub.last_event_id().get().saturating_sub(50);
        readers.push(tokio::spawn(async move {
            let url = format!("ws://{addr}/?since={since}");
            let (mut client, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            let welcome: serde_json::Value =
                serde_json::from_str(&next_text(&mut client).await).unwrap();
            assert_eq!(welcome["message"], "Connecté au WebSocket");
            for id in since + 1..=EVENTS {
                assert_eq!(next_text(&mut client).await, event(id), "since {since}");
            }
            since
        }));
    }
    publisher.await.unwrap();
    for reader in readers {
        reader.await.unwrap();
    }
}

fn publish_to(hub: &Hub, channel: &str, id: u64) -> Option<usize> {
    hub.publish_event_to(channel, EventId::new(id), &Frame::text(&event(id)))
}

#[tokio::test]
async fn a_channel_keeps_its_own_ids_and_history_even_with_no_member() {
    let (hub, addr) = serve(Config::default().history_size(3)).await;
    for id in 1..=4 {
        assert_eq!(publish_to(&hub, "room", id), Some(0));
    }
    publish(&hub, 1);
    assert_eq!(publish_to(&hub, "room", 4), None, "already published");
    assert_eq!(hub.channel_last_event_id("room"), EventId::new(4));
    assert_eq!(hub.channel_last_event_id("elsewhere"), EventId::START);

    // The plain welcome: only the channel resumes.
    let mut member = connect(addr, "/?channel=room&since=2", OCHA_WELCOME).await;
    for id in 3..=4 {
        assert_eq!(next_text(&mut member).await, event(id));
    }
    assert_eq!(publish_to(&hub, "room", 5), Some(1));
    assert_eq!(publish_to(&hub, "other", 1), Some(0));
    assert_eq!(next_text(&mut member).await, event(5));
    assert_quiet(&mut member).await;

    let mut too_old = connect(addr, "/?channel=room&since=1", OCHA_WELCOME).await;
    assert_eq!(
        next_text(&mut too_old).await,
        r#"{"type":"resync","channel":"room"}"#
    );
    let mut unknown = connect(addr, "/?channel=new&since=7", OCHA_WELCOME).await;
    assert_eq!(
        next_text(&mut unknown).await,
        r#"{"type":"resync","channel":"new"}"#
    );
}

/// A client joins a channel by message with the last id it saw there.
#[tokio::test]
async fn subscribe_since_replays_then_delivers_live_events() {
    let hub = Hub::builder(Config::default().outbound_capacity(4))
        .on_message(|hub, from, message| async move {
            if let ocha_realtime::Message::Text(text) = message {
                let (channel, since) = text.split_once(' ').unwrap();
                assert!(hub.subscribe_since(from, channel, since));
                assert!(!hub.subscribe_since(from, channel, since), "already in");
                hub.send(from, &Frame::text("joined"));
            }
        })
        .build();
    let addr = support::serve_hub(hub.clone()).await;
    // More missed events than the outbound capacity: a replay is not a
    // client falling behind.
    for id in 1..=20 {
        publish_to(&hub, "room", id);
    }
    let mut client = connect(addr, "/", OCHA_WELCOME).await;
    futures_util::SinkExt::send(&mut client, "room 10".into())
        .await
        .unwrap();
    for id in 11..=20 {
        assert_eq!(next_text(&mut client).await, event(id));
    }
    assert_eq!(next_text(&mut client).await, "joined");
    publish_to(&hub, "room", 21);
    assert_eq!(next_text(&mut client).await, event(21));
    assert_eq!(hub.stats().slow_consumer_closes, 0);
}

/// As for events to all: members resume in a channel while it is published
/// to, and each gets every event after its position exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_in_a_channel_while_it_is_published_to_loses_and_repeats_nothing() {
    const EVENTS: u64 = 3000;
    let (hub, addr) = serve(Config::default().history_size(EVENTS as usize)).await;
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            for id in 1..=EVENTS {
                publish_to(&hub, "room", id).unwrap();
                if id % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    let mut readers = Vec::new();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let since = hub.channel_last_event_id("room").get().saturating_sub(50);
        readers.push(tokio::spawn(async move {
            let url = format!("ws://{addr}/?channel=room&since={since}");
            let (mut client, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            assert_eq!(next_text(&mut client).await, OCHA_WELCOME);
            for id in since + 1..=EVENTS {
                assert_eq!(next_text(&mut client).await, event(id), "since {since}");
            }
        }));
    }
    publisher.await.unwrap();
    for reader in readers {
        reader.await.unwrap();
    }
}
