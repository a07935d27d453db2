//! The store's contract, the same on both backends: each check runs on a
//! real SQLite file (`sqlite::<check>`) and on a real Postgres server of
//! its own (`postgres::<check>`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::postgres::PostgresServer;
use ocha_server::config::Database;
use ocha_server::event::{ExtraChf, Product, Size};
use ocha_server::product::ProductChanges;
use ocha_server::store::{Activity, Store, StoreError, StoredEvent};
use time::OffsetDateTime;

/// Runs each check, given the database to open, against both backends.
macro_rules! on_both_backends {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $check() {
                    let dir = crate::common::TempDir::new("store");
                    super::$check(&super::Database::File(dir.database())).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $check() {
                    let server = super::PostgresServer::new();
                    super::$check(&super::Database::Postgres(server.url())).await;
                }
            )*
        }
    };
}

on_both_backends!(
    ids_are_gapless_and_conflicts_take_none,
    events_carry_the_exact_json_with_the_id_last,
    events_after_pages_in_id_order,
    latest_events_seed_a_resume_history,
    pruning_never_lowers_the_counter,
    products_round_trip_exactly_and_list_in_insertion_order,
    ping_answers,
    cuts_by_time_leave_no_hole_when_clocks_disagree,
    updates_and_deletes_commit_their_events_with_the_next_ids,
    a_missing_product_is_neither_updated_nor_deleted_and_takes_no_id,
    update_conflicts_report_the_slug_first_and_change_nothing,
    an_update_that_changes_nothing_still_stamps_and_announces,
);

async fn open(database: &Database) -> Store {
    Store::open(database).await.expect("open the store")
}

/// A product whose id, slug and name `n` makes unique.
fn product(n: u32) -> Product {
    Product {
        id: format!("65643f1adeadbeef01{n:06x}"),
        slug: format!("tea-{n}"),
        name: format!("Tea {n}"),
        category: "tea".into(),
        description: "Hot".into(),
        base_price_chf: 4.5,
        is_active: true,
        image: "/img/tea.png".into(),
        size: vec![Size::L, Size::S],
        extra_chf: ExtraChf {
            s: 0.0,
            m: 1.25,
            l: 3.0,
        },
        created_at: "2025-11-27T17:48:28.123Z".into(),
        updated_at: "2025-11-27T17:48:28.123Z".into(),
    }
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

fn ids(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|event| event.id).collect()
}

/// Inserts products `numbers`, a few milliseconds apart so that their
/// events' times differ, and returns the events.
async fn insert_apart(store: &Store, numbers: impl IntoIterator<Item = u32>) -> Vec<StoredEvent> {
    let commits = Commits::default();
    for n in numbers {
        tokio::time::sleep(Duration::from_millis(5)).await;
        store.insert(product(n), commits.hook()).await.unwrap();
    }
    commits.events()
}

async fn ids_are_gapless_and_conflicts_take_none(database: &Database) {
    let store = open(database).await;
    let commits = Commits::default();
    store.insert(product(1), commits.hook()).await.unwrap();

    let mut same_slug = product(2);
    same_slug.slug = "tea-1".into();
    let mut same_name = product(3);
    same_name.name = "Tea 1".into();
    let mut both = product(4);
    (both.slug, both.name) = ("tea-1".into(), "Tea 1".into());
    let mut same_id = product(5);
    same_id.id = product(1).id;

    let refused = store.insert(same_slug, commits.hook()).await;
    assert!(matches!(refused, Err(StoreError::SlugTaken)), "{refused:?}");
    let refused = store.insert(same_name, commits.hook()).await;
    assert!(matches!(refused, Err(StoreError::NameTaken)), "{refused:?}");
    // With both taken, the slug is reported, whichever index refuses.
    let refused = store.insert(both, commits.hook()).await;
    assert!(matches!(refused, Err(StoreError::SlugTaken)), "{refused:?}");
    // Ids are random enough never to collide; if they did, nothing is kept.
    assert!(store.insert(same_id, commits.hook()).await.is_err());

    store.insert(product(6), commits.hook()).await.unwrap();
    store.insert(product(7), commits.hook()).await.unwrap();
    assert_eq!(ids(&commits.events()), [1, 2, 3]);
    assert_eq!(store.events_after(0, 100).await.unwrap(), commits.events());
    assert_eq!(store.list(Activity::Any, 0, 100).await.unwrap().total, 3);
}

async fn events_carry_the_exact_json_with_the_id_last(database: &Database) {
    let store = open(database).await;
    let before = SystemTime::now();
    let commits = Commits::default();
    store.insert(product(1), commits.hook()).await.unwrap();
    let after = SystemTime::now();

    let [event] = <[_; 1]>::try_from(commits.events()).unwrap();
    assert_eq!(event.id, 1);
    assert_eq!(
        event.json,
        r#"{"type":"new_product","product":{"_id":"65643f1adeadbeef01000001","slug":"tea-1","name":"Tea 1","category":"tea","description":"Hot","basePriceCHF":4.5,"isActive":true,"image":"/img/tea.png","size":["L","S"],"extra_chf":{"S":0,"M":1.25,"L":3},"createdAt":"2025-11-27T17:48:28.123Z","updatedAt":"2025-11-27T17:48:28.123Z"},"id":"1"}"#
    );
    // Whole milliseconds, between the call and its return.
    let since_epoch = event.published_at.duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(since_epoch.subsec_nanos() % 1_000_000, 0);
    assert!(before - Duration::from_millis(1) < event.published_at && event.published_at <= after);
    // The same bytes and time come back from the log.
    assert_eq!(store.events_after(0, 10).await.unwrap(), [event]);
}

async fn events_after_pages_in_id_order(database: &Database) {
    let store = open(database).await;
    let events = insert_apart(&store, 1..=5).await;
    assert_eq!(ids(&events), [1, 2, 3, 4, 5]);

    assert_eq!(store.events_after(0, 2).await.unwrap(), events[0..2]);
    assert_eq!(store.events_after(2, 2).await.unwrap(), events[2..4]);
    assert_eq!(store.events_after(4, 10).await.unwrap(), events[4..]);
    for (after, limit) in [(5, 10), (u64::MAX, 10), (0, 0)] {
        assert_eq!(store.events_after(after, limit).await.unwrap(), []);
    }
    assert_eq!(store.events_after(0, usize::MAX).await.unwrap(), events);
}

async fn latest_events_seed_a_resume_history(database: &Database) {
    let store = open(database).await;
    assert_eq!(
        store.latest_events(10, UNIX_EPOCH).await.unwrap(),
        (0, vec![])
    );
    let events = insert_apart(&store, 1..=4).await;

    assert_eq!(
        store.latest_events(2, UNIX_EPOCH).await.unwrap(),
        (4, events[2..].to_vec())
    );
    assert_eq!(
        store.latest_events(10, UNIX_EPOCH).await.unwrap(),
        (4, events.clone())
    );
    // Strictly newer than the second event's time.
    assert_eq!(
        store
            .latest_events(10, events[1].published_at)
            .await
            .unwrap(),
        (4, events[2..].to_vec())
    );
    let future = SystemTime::now() + Duration::from_secs(3600);
    assert_eq!(store.latest_events(10, future).await.unwrap(), (4, vec![]));
    assert_eq!(
        store.latest_events(0, UNIX_EPOCH).await.unwrap(),
        (4, vec![])
    );
}

async fn pruning_never_lowers_the_counter(database: &Database) {
    let store = open(database).await;
    let events = insert_apart(&store, 1..=5).await;

    // Beyond the newest 3.
    assert_eq!(store.prune_events(3, UNIX_EPOCH).await.unwrap(), 2);
    assert_eq!(store.events_after(0, 10).await.unwrap(), events[2..]);
    // Published before the fourth.
    assert_eq!(
        store
            .prune_events(10, events[3].published_at)
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.events_after(0, 10).await.unwrap(), events[3..]);
    assert_eq!(store.prune_events(usize::MAX, UNIX_EPOCH).await.unwrap(), 0);
    // Everything.
    assert_eq!(store.prune_events(0, UNIX_EPOCH).await.unwrap(), 2);
    assert_eq!(store.events_after(0, 10).await.unwrap(), []);
    assert_eq!(
        store.latest_events(10, UNIX_EPOCH).await.unwrap(),
        (5, vec![])
    );

    let next = insert_apart(&store, [6]).await;
    assert_eq!(ids(&next), [6]);
    assert_eq!(store.events_after(0, 10).await.unwrap(), next);
}

async fn products_round_trip_exactly_and_list_in_insertion_order(database: &Database) {
    let store = open(database).await;
    // Ids in descending order, so only the insertion order explains the
    // listing's; prices that print with 17 digits.
    let products: Vec<Product> = (1..=5)
        .rev()
        .map(|n| Product {
            is_active: n % 2 == 1,
            base_price_chf: 0.1 + 0.2 * f64::from(n),
            extra_chf: ExtraChf {
                s: 1e-7,
                m: 2.0 / 3.0,
                l: 123_456.789,
            },
            size: vec![Size::M],
            ..product(n)
        })
        .collect();
    for product in &products {
        let stored = store.insert(product.clone(), |_| {}).await.unwrap();
        assert_eq!(&stored, product);
    }

    for product in &products {
        assert_eq!(
            store.find(product.id.clone()).await.unwrap().as_ref(),
            Some(product)
        );
    }
    assert_eq!(
        store.find("65643f1adeadbeef01ffffff".into()).await.unwrap(),
        None
    );

    let all = store.list(Activity::Any, 0, 10).await.unwrap();
    assert_eq!((all.total, &all.products), (5, &products));
    let page = store.list(Activity::Any, 2, 2).await.unwrap();
    assert_eq!((page.total, &page.products[..]), (5, &products[2..4]));
    let active = store.list(Activity::Only(true), 1, 10).await.unwrap();
    assert_eq!(
        (active.total, &active.products[..]),
        (3, &[products[2].clone(), products[4].clone()][..])
    );
    let inactive = store.list(Activity::Only(false), 0, 10).await.unwrap();
    assert_eq!(
        (inactive.total, &inactive.products[..]),
        (2, &[products[1].clone(), products[3].clone()][..])
    );
    let beyond = store.list(Activity::Any, u64::MAX, u64::MAX).await.unwrap();
    assert_eq!((beyond.total, beyond.products.len()), (5, 0));
}

async fn ping_answers(database: &Database) {
    let store = open(database).await;
    store.ping().await.unwrap();
}

async fn cuts_by_time_leave_no_hole_when_clocks_disagree(database: &Database) {
    let store = open(database).await;
    let events = insert_apart(&store, 1..=4).await;
    // Event 3 came from a server whose clock was a minute behind.
    backdate(
        database,
        3,
        events[0].published_at - Duration::from_secs(60),
    )
    .await;

    // Events 2 and 4 are newer than event 1, but the history cannot hold
    // them without 3: it starts after 3.
    assert_eq!(
        store
            .latest_events(10, events[0].published_at)
            .await
            .unwrap(),
        (4, events[3..].to_vec())
    );
    // Events 1 and 3 are older than event 2, but 3 cannot go without 2.
    assert_eq!(
        store
            .prune_events(10, events[1].published_at)
            .await
            .unwrap(),
        1
    );
    let kept = store.events_after(0, 10).await.unwrap();
    assert_eq!(ids(&kept), [2, 3, 4]);
}

/// Sets event `id`'s time in the database behind the store's back.
async fn backdate(database: &Database, id: u64, published_at: SystemTime) {
    let millis =
        i64::try_from(published_at.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
    let id = i64::try_from(id).unwrap();
    let updated = match database {
        Database::File(path) => rusqlite::Connection::open(path)
            .unwrap()
            .execute(
                "UPDATE events SET published_at = ?1 WHERE id = ?2",
                (millis, id),
            )
            .unwrap() as u64,
        Database::Postgres(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            client
                .execute(
                    "UPDATE events SET published_at = $1 WHERE id = $2",
                    &[&millis, &id],
                )
                .await
                .unwrap()
        }
        Database::Memory => unreachable!("the checks run on a file"),
    };
    assert_eq!(updated, 1);
}

/// 2026-01-02T03:04:05.678Z, when the updates below happen.
fn later() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(1_767_323_045_678_000_000).unwrap()
}

fn rename(name: &str) -> ProductChanges {
    ProductChanges {
        name: Some(name.into()),
        ..ProductChanges::default()
    }
}

async fn updates_and_deletes_commit_their_events_with_the_next_ids(database: &Database) {
    let store = open(database).await;
    let commits = Commits::default();
    store.insert(product(1), commits.hook()).await.unwrap();
    store.insert(product(2), commits.hook()).await.unwrap();

    let changes = ProductChanges {
        name: Some("Tea One".into()),
        base_price_chf: Some(5.0),
        extra_chf: Some(ExtraChf::default()),
        ..ProductChanges::default()
    };
    let updated = store
        .update(product(1).id, changes, later(), commits.hook())
        .await
        .unwrap();
    let expected = Product {
        name: "Tea One".into(),
        base_price_chf: 5.0,
        extra_chf: ExtraChf::default(),
        updated_at: "2026-01-02T03:04:05.678Z".into(),
        ..product(1)
    };
    assert_eq!(updated.as_ref(), Some(&expected));
    assert_eq!(store.find(product(1).id).await.unwrap(), updated);

    let deleted = store.delete(product(2).id, commits.hook()).await.unwrap();
    assert_eq!(deleted, Some(product(2)));
    assert_eq!(store.find(product(2).id).await.unwrap(), None);
    assert_eq!(
        store.list(Activity::Any, 0, 10).await.unwrap().products,
        [expected]
    );

    let events = commits.events();
    assert_eq!(ids(&events), [1, 2, 3, 4]);
    assert_eq!(
        events[2].json,
        r#"{"type":"product_updated","product":{"_id":"65643f1adeadbeef01000001","slug":"tea-1","name":"Tea One","category":"tea","description":"Hot","basePriceCHF":5,"isActive":true,"image":"/img/tea.png","size":["L","S"],"extra_chf":{"S":0,"M":2,"L":3},"createdAt":"2025-11-27T17:48:28.123Z","updatedAt":"2026-01-02T03:04:05.678Z"},"id":"3"}"#
    );
    assert_eq!(
        events[3].json,
        r#"{"type":"product_deleted","product":{"_id":"65643f1adeadbeef01000002","slug":"tea-2","name":"Tea 2","category":"tea","description":"Hot","basePriceCHF":4.5,"isActive":true,"image":"/img/tea.png","size":["L","S"],"extra_chf":{"S":0,"M":1.25,"L":3},"createdAt":"2025-11-27T17:48:28.123Z","updatedAt":"2025-11-27T17:48:28.123Z"},"id":"4"}"#
    );
    assert_eq!(store.events_after(0, 10).await.unwrap(), events);

    // A deleted product's slug and name are free again.
    store.insert(product(2), commits.hook()).await.unwrap();
    assert_eq!(ids(&commits.events()), [1, 2, 3, 4, 5]);
}

async fn a_missing_product_is_neither_updated_nor_deleted_and_takes_no_id(database: &Database) {
    let store = open(database).await;
    let commits = Commits::default();
    store.insert(product(1), commits.hook()).await.unwrap();
    store.delete(product(1).id, commits.hook()).await.unwrap();

    for missing in [product(1).id, product(2).id] {
        let updated = store
            .update(missing.clone(), rename("Ghost"), later(), commits.hook())
            .await;
        assert!(matches!(updated, Ok(None)), "{updated:?}");
        let deleted = store.delete(missing, commits.hook()).await;
        assert!(matches!(deleted, Ok(None)), "{deleted:?}");
    }
    store.insert(product(3), commits.hook()).await.unwrap();
    assert_eq!(ids(&commits.events()), [1, 2, 3]);
    assert_eq!(store.events_after(0, 10).await.unwrap(), commits.events());
}

async fn update_conflicts_report_the_slug_first_and_change_nothing(database: &Database) {
    let store = open(database).await;
    let commits = Commits::default();
    for n in 1..=3 {
        store.insert(product(n), commits.hook()).await.unwrap();
    }
    let update = |changes: ProductChanges| store.update(product(1).id, changes, later(), |_| {});
    let slug = |slug: &str| Some(slug.to_owned());

    let refused = update(ProductChanges {
        slug: slug("tea-2"),
        ..ProductChanges::default()
    })
    .await;
    assert!(matches!(refused, Err(StoreError::SlugTaken)), "{refused:?}");
    let refused = update(rename("Tea 2")).await;
    assert!(matches!(refused, Err(StoreError::NameTaken)), "{refused:?}");
    // Both taken, by one product or by two: the slug, whichever index refuses.
    for name in ["Tea 2", "Tea 3"] {
        let refused = update(ProductChanges {
            slug: slug("tea-2"),
            ..rename(name)
        })
        .await;
        assert!(matches!(refused, Err(StoreError::SlugTaken)), "{refused:?}");
    }
    // Another product's name with the product's own slug: the name.
    let refused = update(ProductChanges {
        slug: slug("tea-1"),
        ..rename("Tea 3")
    })
    .await;
    assert!(matches!(refused, Err(StoreError::NameTaken)), "{refused:?}");

    assert_eq!(store.find(product(1).id).await.unwrap(), Some(product(1)));
    assert_eq!(ids(&store.events_after(0, 10).await.unwrap()), [1, 2, 3]);

    // Its own slug and name are no conflict.
    let kept = update(ProductChanges {
        slug: slug("tea-1"),
        ..rename("Tea 1")
    })
    .await
    .unwrap();
    assert_eq!(
        kept.map(|product| product.updated_at),
        Some("2026-01-02T03:04:05.678Z".into())
    );
    assert_eq!(ids(&store.events_after(0, 10).await.unwrap()), [1, 2, 3, 4]);
}

async fn an_update_that_changes_nothing_still_stamps_and_announces(database: &Database) {
    let store = open(database).await;
    let commits = Commits::default();
    store.insert(product(1), |_| {}).await.unwrap();
    let updated = store
        .update(
            product(1).id,
            ProductChanges::default(),
            later(),
            commits.hook(),
        )
        .await
        .unwrap();
    let expected = Product {
        updated_at: "2026-01-02T03:04:05.678Z".into(),
        ..product(1)
    };
    assert_eq!(updated.as_ref(), Some(&expected));
    let [event] = <[_; 1]>::try_from(commits.events()).unwrap();
    assert_eq!(event.id, 2);
    assert!(event.json.starts_with(r#"{"type":"product_updated","#));
}
