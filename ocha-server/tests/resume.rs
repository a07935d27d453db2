//! Event ids and resume through the real binary on SQLite: missed events
//! (creations, updates and deletions) after a dropped socket, across a
//! restart, and `resync` when they are no longer kept.

mod common;

use common::*;
use ocha_realtime::RESYNC;

/// Creates product `n` on the server at `addr` and returns the 201 reply.
async fn create_on(addr: std::net::SocketAddr, n: u32) -> Reply {
    let reply = post_product(addr, Some(&admin_token()), &product_body(n)).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply
}

#[tokio::test]
async fn events_carry_ids_after_the_document_and_plain_welcomes_are_unchanged() {
    let dir = TempDir::new("ids");
    let (mut server, addr) = start_binary(&dir).await;
    let mut ws = ws_connect(addr).await; // checks the welcome byte for byte
    for n in 1..=2 {
        let created = create_on(addr, n).await;
        let expected = format!(
            r#"{{"type":"new_product","product":{},"id":"{n}"}}"#,
            raw_product(&created)
        );
        assert_eq!(next_text(&mut ws).await, expected);
    }
    // Gone before the shutdown, which would otherwise wait for their closes.
    drop(ws);
    stop_binary(&mut server).await;
}

#[tokio::test]
async fn a_client_whose_socket_died_resumes_with_exactly_what_it_missed() {
    let dir = TempDir::new("resume");
    let (mut server, addr) = start_binary(&dir).await;
    let mut observer = ws_connect(addr).await;
    let (mut ws, welcome) = ws_resume(addr, "").await;
    assert_eq!(welcome, welcome_at(0));
    create_on(addr, 1).await;
    let first = next_text(&mut ws).await;
    assert_eq!(event_id(&first), 1);
    // The socket dies without a closing handshake, as a phone's does.
    drop(ws);
    create_on(addr, 2).await;
    create_on(addr, 3).await;
    let seen: Vec<String> = [
        next_text(&mut observer).await,
        next_text(&mut observer).await,
        next_text(&mut observer).await,
    ]
    .into();
    let (mut ws, welcome) = ws_resume(addr, "1").await;
    assert_eq!(welcome, welcome_at(3));
    assert_eq!(next_text(&mut ws).await, seen[1]);
    assert_eq!(next_text(&mut ws).await, seen[2]);
    create_on(addr, 4).await;
    let live = next_text(&mut ws).await;
    assert_eq!(
        (event_id(&live), event_product_name(&live)),
        (4, "Matcha Latte 4".into())
    );
    assert_quiet(&mut ws).await;
    drop((ws, observer));
    stop_binary(&mut server).await;
}

#[tokio::test]
async fn updates_and_deletions_are_replayed_too_across_a_restart() {
    let dir = TempDir::new("resume-changes");
    let (mut server, addr) = start_binary(&dir).await;
    let mut observer = ws_connect(addr).await;
    let id = product_id(&create_on(addr, 1).await);
    assert_eq!(event_id(&next_text(&mut observer).await), 1);

    let admin = admin_token();
    let updated = patch_product(addr, Some(&admin), &id, r#"{"name":"Hojicha"}"#).await;
    assert_eq!(updated.status, 200, "{}", updated.text());
    assert_eq!(delete_product(addr, Some(&admin), &id).await.status, 204);
    let document = raw_product(&updated);
    let missed = [
        format!(r#"{{"type":"product_updated","product":{document},"id":"2"}}"#),
        format!(r#"{{"type":"product_deleted","product":{document},"id":"3"}}"#),
    ];
    for event in &missed {
        assert_eq!(&next_text(&mut observer).await, event);
    }
    drop(observer);

    // A client that saw only the creation gets both, from this server and
    // from the next one on the same database.
    assert_resumes_with(addr, "1", &missed).await;
    stop_binary(&mut server).await;
    let (mut server, addr) = start_binary(&dir).await;
    assert_resumes_with(addr, "1", &missed).await;
    stop_binary(&mut server).await;
}

/// Asserts that a client resuming after `since` gets `events`, the last of
/// which is the last in the log, and nothing more.
async fn assert_resumes_with(addr: std::net::SocketAddr, since: &str, events: &[String]) {
    let (mut ws, welcome) = ws_resume(addr, since).await;
    let last = events.last().expect("events to resume with");
    assert_eq!(welcome, welcome_at(event_id(last)));
    for event in events {
        assert_eq!(&next_text(&mut ws).await, event);
    }
    assert_quiet(&mut ws).await;
}

#[tokio::test]
async fn clients_resume_across_a_server_restart_and_ids_carry_on() {
    let dir = TempDir::new("restart");
    let (mut server, addr) = start_binary(&dir).await;
    let mut ws = ws_connect(addr).await;
    create_on(addr, 1).await;
    create_on(addr, 2).await;
    let first = next_text(&mut ws).await;
    let second = next_text(&mut ws).await;
    assert_eq!(event_id(&first), 1);
    drop(ws);
    stop_binary(&mut server).await;

    let (mut server, addr) = start_binary(&dir).await;
    let (mut ws, welcome) = ws_resume(addr, "1").await;
    assert_eq!(welcome, welcome_at(2));
    assert_eq!(
        next_text(&mut ws).await,
        second,
        "the same bytes as before the restart"
    );
    create_on(addr, 3).await;
    assert_eq!(event_id(&next_text(&mut ws).await), 3);
    assert_quiet(&mut ws).await;
    drop(ws);
    stop_binary(&mut server).await;
}

#[tokio::test]
async fn positions_past_the_history_or_not_ours_get_a_resync_then_live_events() {
    let dir = TempDir::new("resync");
    let launch = || async {
        let mut command = server_command(&dir);
        command.env("EVENT_HISTORY", "3");
        let (server, addr, _) = start(&mut command).await;
        (server, addr)
    };
    let (mut server, addr) = launch().await;
    for n in 1..=5 {
        create_on(addr, n).await;
    }
    for since in ["1", "6", "abc", "1.5"] {
        let (mut ws, welcome) = ws_resume(addr, since).await;
        assert_eq!(welcome, welcome_at(5), "since={since}");
        assert_eq!(next_text(&mut ws).await, RESYNC, "since={since}");
        assert_quiet(&mut ws).await;
    }
    let (mut ws, _) = ws_resume(addr, "2").await;
    for id in 3..=5 {
        assert_eq!(event_id(&next_text(&mut ws).await), id);
    }
    let (mut resynced, _) = ws_resume(addr, "1").await;
    assert_eq!(next_text(&mut resynced).await, RESYNC);
    create_on(addr, 6).await;
    assert_eq!(event_id(&next_text(&mut resynced).await), 6);
    drop((ws, resynced));
    stop_binary(&mut server).await;

    // The bound holds across a restart too.
    let (mut server, addr) = launch().await;
    let (mut ws, welcome) = ws_resume(addr, "2").await;
    assert_eq!(welcome, welcome_at(6));
    assert_eq!(next_text(&mut ws).await, RESYNC);
    let (mut ws, _) = ws_resume(addr, "3").await;
    for id in 4..=6 {
        assert_eq!(event_id(&next_text(&mut ws).await), id);
    }
    drop(ws);
    stop_binary(&mut server).await;
}
