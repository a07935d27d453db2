//! What only Postgres does: several stores, as on several servers, on one
//! database, and a database that goes away and comes back. Each test runs
//! a Postgres server of its own.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::postgres::PostgresServer;
use common::{
    create, get, next_text, post_product, product_body, raw_product, ws_connect, TestServer,
    PATIENCE,
};
use futures_util::future::join_all;
use ocha_server::config::Database;
use ocha_server::event::{Event, ExtraChf, Product, Size};
use ocha_server::product::ProductChanges;
use ocha_server::store::{Activity, Store, StoreError, StoredEvent};
use time::OffsetDateTime;

fn product(n: u32) -> Product {
    Product {
        id: format!("65643f1adeadbeef02{n:06x}"),
        slug: format!("chai-{n}"),
        name: format!("Chai {n}"),
        category: "tea".into(),
        description: "Spiced".into(),
        base_price_chf: 5.5,
        is_active: true,
        image: "/img/chai.png".into(),
        size: vec![Size::S, Size::M],
        extra_chf: ExtraChf::default(),
        created_at: "2025-11-27T17:48:28.123Z".into(),
        updated_at: "2025-11-27T17:48:28.123Z".into(),
    }
}

async fn stores(url: &str, count: usize) -> Vec<Store> {
    let database = Database::Postgres(url.to_owned());
    let opened = join_all((0..count).map(|_| Store::open(&database))).await;
    opened
        .into_iter()
        .map(|store| store.expect("open the store"))
        .collect()
}

/// What `on_commit` received, in the order it ran.
#[derive(Clone, Default)]
struct Commits(Arc<Mutex<Vec<StoredEvent>>>);

impl Commits {
    fn hook(&self) -> impl FnOnce(&StoredEvent) + Send + 'static {
        let commits = self.0.clone();
        move |event| commits.lock().unwrap().push(event.clone())
    }

    fn events(&self) -> Vec<StoredEvent> {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_starting_at_once_create_the_schema_on_an_empty_database() {
    let server = PostgresServer::new();
    // Several empty databases, for several chances to collide.
    for round in 0..4 {
        let url = server.create_database(&format!("empty_{round}"));
        let stores = stores(&url, 3).await;
        stores[0].insert(product(1), |_| {}).await.unwrap();
        assert_eq!(stores[2].list(Activity::Any, 0, 10).await.unwrap().total, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_inserts_of_one_slug_one_wins() {
    let server = PostgresServer::new();
    let stores = stores(&server.url(), 2).await;
    let commits = Commits::default();
    for n in 1..=10 {
        // The same slug; a different id and name, so only the slug conflicts.
        let mut rival = product(100 + n);
        rival.slug = product(n).slug;
        let (first, second) = tokio::join!(
            stores[0].insert(product(n), commits.hook()),
            stores[1].insert(rival, commits.hook()),
        );
        let outcomes = [&first, &second];
        assert_eq!(
            outcomes.iter().filter(|outcome| outcome.is_ok()).count(),
            1,
            "{outcomes:?}"
        );
        assert!(
            outcomes
                .iter()
                .any(|outcome| matches!(outcome, Err(StoreError::SlugTaken))),
            "{outcomes:?}"
        );
    }
    // The losers took no ids.
    let mut ids: Vec<_> = commits.events().iter().map(|event| event.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=10).collect::<Vec<_>>());
}

#[tokio::test]
async fn stores_on_one_database_see_each_others_products() {
    let server = PostgresServer::new();
    let stores = stores(&server.url(), 2).await;
    stores[0].insert(product(1), |_| {}).await.unwrap();
    stores[1].insert(product(2), |_| {}).await.unwrap();

    for store in &stores {
        let page = store.list(Activity::Any, 0, 10).await.unwrap();
        assert_eq!(page.products, [product(1), product(2)]);
    }
    assert_eq!(
        stores[1].find(product(1).id).await.unwrap(),
        Some(product(1))
    );
    assert_eq!(
        stores[0].find(product(2).id).await.unwrap(),
        Some(product(2))
    );
    let again = Product {
        id: product(3).id,
        ..product(1)
    };
    assert!(matches!(
        stores[1].insert(again, |_| {}).await,
        Err(StoreError::SlugTaken)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_concurrent_inserts_from_four_stores_commit_ids_1_to_40() {
    let server = PostgresServer::new();
    let stores = stores(&server.url(), 4).await;
    let commits = Commits::default();

    let inserts = (1..=40).map(|n| {
        let store = stores[n as usize % stores.len()].clone();
        let hook = commits.hook();
        tokio::spawn(async move { store.insert(product(n), hook).await })
    });
    for inserted in join_all(inserts).await {
        inserted.unwrap().unwrap();
    }

    // Hooks run in no particular order; each event is there once.
    let mut hooked = commits.events();
    hooked.sort_by_key(|event| event.id);
    let log = stores[0].events_after(0, 100).await.unwrap();
    assert_eq!(log, hooked);
    assert_eq!(
        log.iter().map(|event| event.id).collect::<Vec<_>>(),
        (1..=40).collect::<Vec<_>>()
    );
    // Each product once, each event numbered as it is stored.
    let slugs: BTreeSet<_> = log
        .iter()
        .map(|event| {
            let json: serde_json::Value = serde_json::from_str(&event.json).unwrap();
            assert_eq!(json["id"], event.id.to_string());
            json["product"]["slug"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(slugs, (1..=40).map(|n| format!("chai-{n}")).collect());
    for store in &stores {
        let (last_id, _) = store.latest_events(0, std::time::UNIX_EPOCH).await.unwrap();
        assert_eq!(last_id, 40);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_of_one_product_from_two_stores_lose_nothing() {
    let server = PostgresServer::new();
    let stores = stores(&server.url(), 2).await;
    let commits = Commits::default();
    stores[0].insert(product(1), commits.hook()).await.unwrap();

    // Another session holds the product's row, so that both updates start
    // before either can finish: each writes the whole row back, and without
    // locking the row before reading it, both would read it as it is now
    // and the second write would undo the first's change.
    let (holder, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM products WHERE id = '{}' FOR UPDATE",
            product(1).id
        ))
        .await
        .unwrap();

    let now = OffsetDateTime::now_utc();
    let category = ProductChanges {
        category: Some("matcha".into()),
        ..ProductChanges::default()
    };
    let description = ProductChanges {
        description: Some("Whisked".into()),
        ..ProductChanges::default()
    };
    let updates = [(0, category), (1, description)].map(|(store, changes)| {
        let store = stores[store].clone();
        let hook = commits.hook();
        tokio::spawn(async move { store.update(product(1).id, changes, now, hook).await })
    });
    wait_for_lock_waits(&holder, 2).await;
    holder.batch_execute("COMMIT").await.unwrap();
    for update in updates {
        assert!(update.await.unwrap().unwrap().is_some());
    }

    let found = stores[1].find(product(1).id).await.unwrap().unwrap();
    assert_eq!(
        (found.category.as_str(), found.description.as_str()),
        ("matcha", "Whisked")
    );
    let log = stores[0].events_after(0, 10).await.unwrap();
    assert_eq!(
        log.iter().map(|event| event.id).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // The second update's event carries the product as it ended up.
    let last: Event = serde_json::from_str(&log[2].json).unwrap();
    assert_eq!(last, Event::ProductUpdated { product: found });
}

/// Waits until `count` sessions wait for a lock.
async fn wait_for_lock_waits(client: &tokio_postgres::Client, count: i64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let waiting: i64 = client
            .query_one(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{waiting} sessions wait for a lock, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_an_update_and_a_delete_racing_the_delete_announces_what_it_removed() {
    let server = PostgresServer::new();
    let stores = stores(&server.url(), 2).await;
    let now = OffsetDateTime::now_utc();
    for n in 1..=10 {
        stores[0].insert(product(n), |_| {}).await.unwrap();
        let commits = Commits::default();
        let rename = ProductChanges {
            name: Some(format!("Renamed {n}")),
            ..ProductChanges::default()
        };
        let (updated, deleted) = tokio::join!(
            stores[0].update(product(n).id, rename, now, commits.hook()),
            stores[1].delete(product(n).id, commits.hook()),
        );
        let deleted = deleted.unwrap().expect("the delete finds the product");
        // Either the update came first and the delete removed its result,
        // or the delete came first and the update found nothing.
        match updated.unwrap() {
            Some(updated) => assert_eq!(deleted, updated),
            None => assert_eq!(deleted, product(n)),
        }
        // Hooks run in no particular order: the last event is the highest.
        let events = commits.events();
        let last = events.iter().max_by_key(|event| event.id).unwrap();
        let last: Event = serde_json::from_str(&last.json).unwrap();
        assert_eq!(last, Event::ProductDeleted { product: deleted });
        assert_eq!(stores[1].find(product(n).id).await.unwrap(), None);
    }
}

#[tokio::test]
async fn on_commit_runs_even_when_the_caller_gives_up() {
    let server = PostgresServer::new();
    let store = stores(&server.url(), 1).await.remove(0);
    let commits = Commits::default();

    // Polled once, which starts the insert, then dropped (the client hung up).
    let gave_up = tokio::time::timeout(Duration::ZERO, store.insert(product(1), commits.hook()));
    assert!(gave_up.await.is_err());

    let deadline = tokio::time::Instant::now() + PATIENCE;
    while commits.events().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "on_commit never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(commits.events()[0].id, 1);
    assert_eq!(store.find(product(1).id).await.unwrap(), Some(product(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_fails_clearly_and_serves_again_once_restarted() {
    let mut server = PostgresServer::new();
    let store = stores(&server.url(), 1).await.remove(0);
    store.ping().await.unwrap();

    server.stop();
    let down = store.ping().await.unwrap_err();
    assert!(down.is_unavailable(), "{down:?}");
    let message = down.to_string();
    assert!(message.starts_with("Postgres: "), "{message}");
    // Refused on a new connection, or cut off on the pooled one.
    assert!(
        [
            "Connection refused",
            "connection closed",
            "terminating connection"
        ]
        .iter()
        .any(|cause| message.contains(cause)),
        "{message}"
    );
    // A second try makes a new connection, which is refused.
    let refused = store.ping().await.unwrap_err().to_string();
    assert!(
        refused.starts_with("Postgres: error connecting to server: Connection refused"),
        "{refused}"
    );
    let insert = store.insert(product(1), |_| {}).await.unwrap_err();
    assert!(insert.is_unavailable(), "{insert:?}");

    server.start();
    store.ping().await.unwrap();
    store.insert(product(1), |_| {}).await.unwrap();
    assert_eq!(store.events_after(0, 10).await.unwrap()[0].id, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_on_postgres_numbers_events_and_answers_503_while_it_is_down() {
    let mut postgres = PostgresServer::new();
    let server = TestServer::with_database(&Database::Postgres(postgres.url())).await;
    let mut client = ws_connect(server.addr).await;

    let created = create(&server, 1).await;
    assert_eq!(
        next_text(&mut client).await,
        format!(
            r#"{{"type":"new_product","product":{},"id":"1"}}"#,
            raw_product(&created)
        )
    );

    postgres.stop();
    // Both the pooled connection, cut off, and a new one, refused.
    for _ in 0..2 {
        get(server.addr, "/api/v1/products")
            .await
            .assert_json(503, r#"{"message":"Service unavailable"}"#);
    }
    post_product(server.addr, Some(&server.admin_token()), &product_body(2))
        .await
        .assert_json(503, r#"{"message":"Service unavailable"}"#);

    postgres.start();
    let created = create(&server, 2).await;
    assert!(next_text(&mut client)
        .await
        .ends_with(&format!(r#"{},"id":"2"}}"#, raw_product(&created))));

    drop(client);
    server.stop().await;
}

#[test]
fn the_harness_restarts_postgres_on_the_same_port_with_the_same_data() {
    let mut server = PostgresServer::new();
    let port = server.port();
    assert!((20000..32000).contains(&port), "{port}");
    assert_eq!(
        server.url(),
        format!("postgres://ocha@127.0.0.1:{port}/ocha")
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database = Database::Postgres(server.url());

    let store = runtime.block_on(Store::open(&database)).unwrap();
    runtime.block_on(store.insert(product(1), |_| {})).unwrap();
    drop(store);

    server.kill();
    server.start();
    assert_eq!(server.port(), port);
    let store = runtime.block_on(Store::open(&database)).unwrap();
    assert_eq!(
        runtime.block_on(store.find(product(1).id)).unwrap(),
        Some(product(1))
    );

    drop(server);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "still running after drop"
    );
}
