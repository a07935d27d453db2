//! The SQLite backend.
//!
//! One dedicated thread owns the connection and runs jobs sent over a
//! bounded channel, so blocking SQLite calls never run on the async workers,
//! and `sqlite::memory:` (which lives and dies with its connection) works
//! like a file. Writes are serialized by that thread; with WAL, a committed
//! product survives a crash or restart. A job that panics fails alone: what
//! it had not committed is rolled back and the thread serves the next job.
//!
//! `size` and `extra_chf` are stored as JSON text; listing follows insertion
//! order (the rowid). Event times are milliseconds since the Unix epoch.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::SystemTime;

use rusqlite::types::Type;
use rusqlite::{ffi, params, Connection, OptionalExtension, Row, Transaction};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::{
    from_millis, millis, panic_message, sql_int, stored_event, Activity, Page, StoreError,
    StoredEvent,
};
use crate::event::{Event, Product};
use crate::product::ProductChanges;

/// The schema, created or completed at every start: a database from before
/// the event log gets its tables, and its ids start at 1.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS products (
    seq            INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL UNIQUE,
    slug           TEXT    NOT NULL UNIQUE,
    name           TEXT    NOT NULL UNIQUE,
    category       TEXT    NOT NULL,
    description    TEXT    NOT NULL,
    base_price_chf REAL    NOT NULL,
    is_active      INTEGER NOT NULL,
    image          TEXT    NOT NULL,
    size           TEXT    NOT NULL,
    extra_chf      TEXT    NOT NULL,
    created_at     TEXT    NOT NULL,
    updated_at     TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS products_by_activity ON products (is_active, seq);
CREATE TABLE IF NOT EXISTS events (
    id           INTEGER PRIMARY KEY CHECK (id > 0),
    json         TEXT    NOT NULL,
    published_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS event_counter (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    last_id   INTEGER NOT NULL CHECK (last_id >= 0)
);
INSERT OR IGNORE INTO event_counter (singleton, last_id) VALUES (1, 0);
";

const COLUMNS: &str = "id, slug, name, category, description, base_price_chf, is_active, \
                       image, size, extra_chf, created_at, updated_at";

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> StoreError {
        // SQLite names the violated column: "UNIQUE constraint failed: products.slug".
        if let rusqlite::Error::SqliteFailure(failure, Some(message)) = &error {
            if failure.extended_code == ffi::SQLITE_CONSTRAINT_UNIQUE {
                if message.ends_with("products.slug") {
                    return StoreError::SlugTaken;
                }
                if message.ends_with("products.name") {
                    return StoreError::NameTaken;
                }
            }
        }
        StoreError::Sqlite(error)
    }
}

/// Jobs waiting for the database thread. When it falls this far behind,
/// callers wait for room (each in its own request) instead of growing the
/// queue without limit. A job is one indexed query or insert, well under a
/// millisecond, so a full queue is under a second of work: room for bursts
/// while keeping how long a queued request waits short.
const JOB_QUEUE: usize = 1024;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// A handle to the database thread. Cloning is cheap; the thread and its
/// connection close when the last handle is dropped.
#[derive(Debug, Clone)]
pub(super) struct Sqlite {
    jobs: mpsc::Sender<Job>,
}

impl Sqlite {
    /// Opens (creating if needed) the database file at `path`, or a private
    /// in-memory database for `None`, switches a file to WAL mode and
    /// creates the schema.
    pub(super) async fn open(path: Option<PathBuf>) -> Result<Sqlite, StoreError> {
        let (jobs, mut queue) = mpsc::channel::<Job>(JOB_QUEUE);
        let (opened, on_open) = oneshot::channel();
        thread::Builder::new()
            .name("ocha-sqlite".into())
            .spawn(move || {
                let mut connection = match connect(path.as_deref()) {
                    Ok(connection) => connection,
                    Err(error) => {
                        let _ = opened.send(Err(error));
                        return;
                    }
                };
                let _ = opened.send(Ok(()));
                // Ends when every Store handle has been dropped.
                while let Some(job) = queue.blocking_recv() {
                    job(&mut connection);
                }
            })
            .map_err(StoreError::Thread)?;
        on_open.await.map_err(|_| StoreError::Closed)??;
        Ok(Sqlite { jobs })
    }

    /// [`Store::insert`](super::Store::insert): `on_commit` runs on this
    /// thread, so in commit order, while every other job waits.
    pub(super) async fn insert<F>(
        &self,
        product: Product,
        on_commit: F,
    ) -> Result<Product, StoreError>
    where
        F: FnOnce(&StoredEvent) + Send + 'static,
    {
        self.call(move |connection| {
            let transaction = connection.transaction()?;
            let inserted = transaction.execute(
                &format!(
                    "INSERT INTO products ({COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
                ),
                params![
                    product.id,
                    product.slug,
                    product.name,
                    product.category,
                    product.description,
                    product.base_price_chf,
                    product.is_active,
                    product.image,
                    to_json(&product.size)?,
                    to_json(&product.extra_chf)?,
                    product.created_at,
                    product.updated_at,
                ],
            );
            conflict(&transaction, inserted, &product.slug, None)?;
            // Only now that the product is in: a conflict takes no id.
            let event = append_event(
                &transaction,
                &Event::NewProduct {
                    product: product.clone(),
                },
            )?;
            transaction.commit()?;
            on_commit(&event);
            Ok(product)
        })
        .await
    }

    /// [`Store::update`](super::Store::update): `on_commit` runs on this
    /// thread, as for [`insert`](Self::insert). This thread is the only
    /// writer, so nothing changes the row between its read and its write.
    pub(super) async fn update<F>(
        &self,
        id: String,
        changes: ProductChanges,
        now: OffsetDateTime,
        on_commit: F,
    ) -> Result<Option<Product>, StoreError>
    where
        F: FnOnce(&StoredEvent) + Send + 'static,
    {
        self.call(move |connection| {
            let transaction = connection.transaction()?;
            let Some(mut product) = transaction
                .query_row(
                    &format!("SELECT {COLUMNS} FROM products WHERE id = ?1"),
                    [&id],
                    product_from_row,
                )
                .optional()?
            else {
                return Ok(None);
            };
            changes.apply_to(&mut product, now);
            let updated = transaction.execute(
                "UPDATE products SET slug = ?2, name = ?3, category = ?4, description = ?5, \
                     base_price_chf = ?6, is_active = ?7, image = ?8, size = ?9, \
                     extra_chf = ?10, updated_at = ?11 \
                 WHERE id = ?1",
                params![
                    product.id,
                    product.slug,
                    product.name,
                    product.category,
                    product.description,
                    product.base_price_chf,
                    product.is_active,
                    product.image,
                    to_json(&product.size)?,
                    to_json(&product.extra_chf)?,
                    product.updated_at,
                ],
            );
            conflict(&transaction, updated, &product.slug, Some(&product.id))?;
            let event = append_event(
                &transaction,
                &Event::ProductUpdated {
                    product: product.clone(),
                },
            )?;
            transaction.commit()?;
            on_commit(&event);
            Ok(Some(product))
        })
        .await
    }

    /// [`Store::delete`](super::Store::delete): `on_commit` runs on this
    /// thread, as for [`insert`](Self::insert).
    pub(super) async fn delete<F>(
        &self,
        id: String,
        on_commit: F,
    ) -> Result<Option<Product>, StoreError>
    where
        F: FnOnce(&StoredEvent) + Send + 'static,
    {
        self.call(move |connection| {
            let transaction = connection.transaction()?;
            let Some(product) = transaction
                .query_row(
                    &format!("DELETE FROM products WHERE id = ?1 RETURNING {COLUMNS}"),
                    [&id],
                    product_from_row,
                )
                .optional()?
            else {
                return Ok(None);
            };
            let event = append_event(
                &transaction,
                &Event::ProductDeleted {
                    product: product.clone(),
                },
            )?;
            transaction.commit()?;
            on_commit(&event);
            Ok(Some(product))
        })
        .await
    }

    /// [`Store::list`](super::Store::list).
    pub(super) async fn list(
        &self,
        activity: Activity,
        offset: u64,
        limit: u64,
    ) -> Result<Page, StoreError> {
        let filter = activity.filter();
        let (offset, limit) = (sql_int(offset), sql_int(limit));
        self.call(move |connection| {
            // One read transaction, so the page and the total agree.
            let transaction = connection.transaction()?;
            let total = transaction.query_row(
                "SELECT COUNT(*) FROM products WHERE ?1 IS NULL OR is_active = ?1",
                [filter],
                |row| row.get(0),
            )?;
            let products = transaction
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM products WHERE ?1 IS NULL OR is_active = ?1 \
                     ORDER BY seq LIMIT ?2 OFFSET ?3"
                ))?
                .query_map(params![filter, limit, offset], product_from_row)?
                .collect::<Result<_, _>>()?;
            transaction.commit()?;
            Ok(Page { products, total })
        })
        .await
    }

    /// [`Store::find`](super::Store::find).
    pub(super) async fn find(&self, id: String) -> Result<Option<Product>, StoreError> {
        self.call(move |connection| {
            connection
                .query_row(
                    &format!("SELECT {COLUMNS} FROM products WHERE id = ?1"),
                    [id],
                    product_from_row,
                )
                .optional()
                .map_err(StoreError::from)
        })
        .await
    }

    /// [`Store::events_after`](super::Store::events_after).
    pub(super) async fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let (after, limit) = (sql_int(after), sql_int(limit));
        self.call(move |connection| {
            connection
                .prepare_cached(
                    "SELECT id, json, published_at FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
                )?
                .query_map([after, limit], event_from_row)?
                .collect::<Result<_, _>>()
                .map_err(StoreError::from)
        })
        .await
    }

    /// [`Store::latest_events`](super::Store::latest_events).
    pub(super) async fn latest_events(
        &self,
        count: usize,
        newer_than: SystemTime,
    ) -> Result<(u64, Vec<StoredEvent>), StoreError> {
        let (count, newer_than) = (sql_int(count), millis(newer_than));
        self.call(move |connection| {
            // One read transaction, so the last id and the events agree.
            let transaction = connection.transaction()?;
            let last_id =
                transaction.query_row("SELECT last_id FROM event_counter", [], |row| row.get(0))?;
            let events = transaction
                .prepare(
                    "SELECT id, json, published_at FROM (\
                         SELECT id, json, published_at FROM events \
                         WHERE id > (\
                             SELECT COALESCE(MAX(id), 0) FROM events WHERE published_at <= ?1\
                         ) \
                         ORDER BY id DESC LIMIT ?2\
                     ) ORDER BY id",
                )?
                .query_map([newer_than, count], event_from_row)?
                .collect::<Result<_, _>>()?;
            transaction.commit()?;
            Ok((last_id, events))
        })
        .await
    }

    /// [`Store::prune_events`](super::Store::prune_events).
    pub(super) async fn prune_events(
        &self,
        keep: usize,
        older_than: SystemTime,
    ) -> Result<u64, StoreError> {
        let (keep, older_than) = (sql_int(keep), millis(older_than));
        self.call(move |connection| {
            // Ids are gapless, so the newest `keep` are those within `keep`
            // of the last id. With no event as recent as `older_than`,
            // every one goes.
            let deleted = connection.execute(
                "DELETE FROM events \
                 WHERE id <= (SELECT last_id FROM event_counter) - ?1 \
                    OR id < (\
                        SELECT COALESCE(MIN(id), (SELECT last_id + 1 FROM event_counter)) \
                        FROM events WHERE published_at >= ?2\
                    )",
                [keep, older_than],
            )?;
            Ok(deleted as u64)
        })
        .await
    }

    /// [`Store::ping`](super::Store::ping): a query on the database thread,
    /// which proves the thread serves jobs.
    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        self.call(|connection| {
            connection.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    /// Runs `job` on the database thread and waits for its result, first
    /// for room in the queue if it is full.
    async fn call<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        self.jobs
            .send(Box::new(move |connection| {
                // Unwinding drops any open `Transaction`, which rolls it
                // back, so the connection is fit for the next job.
                let result = panic::catch_unwind(AssertUnwindSafe(|| job(connection)))
                    .unwrap_or_else(|panic| {
                        tracing::error!(panic = panic_message(&*panic), "a database job panicked");
                        Err(StoreError::Panicked)
                    });
                // The caller may have gone away (client disconnected); the
                // job ran regardless, which is what a committed insert needs.
                let _ = reply.send(result);
            }))
            .await
            .map_err(|_| StoreError::Closed)?;
        result.await.map_err(|_| StoreError::Closed)?
    }
}

fn connect(path: Option<&Path>) -> Result<Connection, StoreError> {
    let connection = match path {
        None => Connection::open_in_memory()?,
        Some(path) => {
            let connection = Connection::open(path)?;
            let mode: String =
                connection
                    .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::NoWal(mode));
            }
            connection
        }
    };
    connection.execute_batch(SCHEMA)?;
    Ok(connection)
}

/// The outcome of writing a product's row, with a unique violation as the
/// conflict the API reports: the slug when another product has `slug`,
/// though SQLite names only one violated index, in no documented order.
/// `updating` is the id of the product an update writes, whose own slug is
/// no conflict.
fn conflict(
    transaction: &Transaction<'_>,
    written: rusqlite::Result<usize>,
    slug: &str,
    updating: Option<&str>,
) -> Result<(), StoreError> {
    match written.map_err(StoreError::from) {
        Ok(_) => Ok(()),
        Err(StoreError::NameTaken) if slug_taken(transaction, slug, updating)? => {
            Err(StoreError::SlugTaken)
        }
        Err(error) => Err(error),
    }
}

/// Whether a product other than the one with id `except` has `slug`.
fn slug_taken(connection: &Connection, slug: &str, except: Option<&str>) -> rusqlite::Result<bool> {
    connection.query_row(
        "SELECT EXISTS (SELECT 1 FROM products WHERE slug = ?1 AND id IS NOT ?2)",
        params![slug, except],
        |row| row.get(0),
    )
}

/// Takes the next event id and writes `event` under it. The counter is
/// bumped only here, after the product change succeeded: a conflict takes
/// no id.
fn append_event(transaction: &Transaction<'_>, event: &Event) -> Result<StoredEvent, StoreError> {
    let id = transaction.query_row(
        "UPDATE event_counter SET last_id = last_id + 1 RETURNING last_id",
        [],
        |row| row.get(0),
    )?;
    let event = stored_event(event, id);
    transaction.execute(
        "INSERT INTO events (id, json, published_at) VALUES (?1, ?2, ?3)",
        params![event.id, event.json, millis(event.published_at)],
    )?;
    Ok(event)
}

fn product_from_row(row: &Row<'_>) -> rusqlite::Result<Product> {
    Ok(Product {
        id: row.get(0)?,
        slug: row.get(1)?,
        name: row.get(2)?,
        category: row.get(3)?,
        description: row.get(4)?,
        base_price_chf: row.get(5)?,
        is_active: row.get(6)?,
        image: row.get(7)?,
        size: from_json(row, 8)?,
        extra_chf: from_json(row, 9)?,
        created_at: row.get(10)?,
        updated_at: row.get(11)?,
    })
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        id: row.get(0)?,
        json: row.get(1)?,
        published_at: from_millis(row.get(2)?),
    })
}

fn to_json(value: &impl serde::Serialize) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn from_json<T: DeserializeOwned>(row: &Row<'_>, column: usize) -> rusqlite::Result<T> {
    let text: String = row.get(column)?;
    serde_json::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(column, Type::Text, Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ExtraChf, Size};
    use futures_util::task::noop_waker_ref;
    use std::future::Future;
    use std::sync::{mpsc, Arc, Mutex};
    use std::task::Context;

    fn product(n: u32, active: bool) -> Product {
        Product {
            id: format!("65643f1adeadbeef01{n:06x}"),
            slug: format!("tea-{n}"),
            name: format!("Tea {n}"),
            category: "tea".into(),
            description: "Hot".into(),
            base_price_chf: 4.5,
            is_active: active,
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

    #[tokio::test]
    async fn round_trips_products() {
        let store = Sqlite::open(None).await.unwrap();
        let stored = store.insert(product(1, false), |_| {}).await.unwrap();
        assert_eq!(stored, product(1, false));
        assert_eq!(
            store.find(product(1, false).id).await.unwrap(),
            Some(product(1, false))
        );
        assert_eq!(
            store.find("65643f1adeadbeef01ffffff".into()).await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn on_commit_runs_once_per_commit_even_when_the_caller_gives_up() {
        let store = Sqlite::open(None).await.unwrap();
        let (committed, commits) = mpsc::channel();
        let notify = |committed: &mpsc::Sender<StoredEvent>| {
            let committed = committed.clone();
            move |event: &StoredEvent| committed.send(event.clone()).unwrap()
        };

        // Dropped right after handing the job over (the client hung up).
        let _ = tokio::time::timeout(
            std::time::Duration::ZERO,
            store.insert(product(1, true), notify(&committed)),
        )
        .await;
        // Jobs run in order, so this conflict proves the first one committed.
        assert!(matches!(
            store.insert(product(1, true), notify(&committed)).await,
            Err(StoreError::SlugTaken)
        ));
        store
            .insert(product(2, true), notify(&committed))
            .await
            .unwrap();

        drop(committed);
        let commits: Vec<_> = commits.iter().collect();
        // The conflict took no id.
        assert_eq!(
            commits.iter().map(|event| event.id).collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(commits[0].json.contains(r#""slug":"tea-1""#));
        assert!(commits[1].json.contains(r#""slug":"tea-2""#));
        assert_eq!(store.events_after(0, 10).await.unwrap(), commits);
    }

    #[tokio::test]
    async fn the_database_enforces_unique_slugs_and_names() {
        let store = Sqlite::open(None).await.unwrap();
        store.insert(product(1, true), |_| {}).await.unwrap();

        let mut same_slug = product(2, true);
        same_slug.slug = "tea-1".into();
        assert!(matches!(
            store.insert(same_slug, |_| {}).await,
            Err(StoreError::SlugTaken)
        ));

        let mut same_name = product(3, true);
        same_name.name = "Tea 1".into();
        assert!(matches!(
            store.insert(same_name, |_| {}).await,
            Err(StoreError::NameTaken)
        ));

        // With both taken, the slug is reported, whichever index SQLite names.
        let mut both = product(4, true);
        both.slug = "tea-1".into();
        both.name = "Tea 1".into();
        assert!(matches!(
            store.insert(both, |_| {}).await,
            Err(StoreError::SlugTaken)
        ));

        assert_eq!(store.list(Activity::Any, 0, 10).await.unwrap().total, 1);
    }

    #[tokio::test]
    async fn lists_in_insertion_order_with_filter_and_paging() {
        let store = Sqlite::open(None).await.unwrap();
        // Ids in descending order, so only the rowid explains the listing order.
        for n in (1..=5).rev() {
            store.insert(product(n, n % 2 == 1), |_| {}).await.unwrap();
        }
        let slugs = |page: Page| {
            page.products
                .into_iter()
                .map(|p| p.slug)
                .collect::<Vec<_>>()
        };

        let all = store.list(Activity::Any, 0, 10).await.unwrap();
        assert_eq!(all.total, 5);
        assert_eq!(slugs(all), ["tea-5", "tea-4", "tea-3", "tea-2", "tea-1"]);

        let second = store.list(Activity::Any, 2, 2).await.unwrap();
        assert_eq!(
            (second.total, slugs(second)),
            (5, vec!["tea-3".to_owned(), "tea-2".to_owned()])
        );

        let active = store.list(Activity::Only(true), 0, 10).await.unwrap();
        assert_eq!(
            (active.total, slugs(active)),
            (3, vec!["tea-5".into(), "tea-3".into(), "tea-1".into()])
        );

        let inactive = store.list(Activity::Only(false), 1, 10).await.unwrap();
        assert_eq!(
            (inactive.total, slugs(inactive)),
            (2, vec!["tea-2".to_owned()])
        );

        let beyond = store.list(Activity::Any, 10, 10).await.unwrap();
        assert_eq!((beyond.total, beyond.products.len()), (5, 0));
    }

    #[tokio::test]
    async fn a_file_database_uses_wal_and_survives_reopening() {
        let dir = tempfile::Builder::new().prefix("store").tempdir().unwrap();
        let database = dir.path().join("products.db");

        let store = Sqlite::open(Some(database.clone())).await.unwrap();
        store.insert(product(1, true), |_| {}).await.unwrap();
        drop(store);

        let mode: String = Connection::open(dir.path().join("products.db"))
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");

        let reopened = Sqlite::open(Some(database.clone())).await.unwrap();
        assert_eq!(
            reopened.find(product(1, true).id).await.unwrap(),
            Some(product(1, true))
        );
    }

    #[tokio::test]
    async fn events_and_their_counter_survive_reopening() {
        let dir = tempfile::Builder::new().prefix("store").tempdir().unwrap();
        let database = dir.path().join("products.db");
        let open = || Sqlite::open(Some(database.clone()));

        let store = open().await.unwrap();
        for n in 1..=3 {
            store.insert(product(n, true), |_| {}).await.unwrap();
        }
        let committed = store.events_after(0, 10).await.unwrap();
        assert_eq!(committed.len(), 3);
        drop(store);

        let reopened = open().await.unwrap();
        assert_eq!(reopened.events_after(0, 10).await.unwrap(), committed);
        assert_eq!(
            reopened
                .prune_events(0, SystemTime::UNIX_EPOCH)
                .await
                .unwrap(),
            3
        );
        drop(reopened);

        // With every event pruned, the counter alone remembers the last id.
        let pruned = open().await.unwrap();
        assert_eq!(
            pruned
                .latest_events(10, SystemTime::UNIX_EPOCH)
                .await
                .unwrap(),
            (3, vec![])
        );
        pruned.insert(product(4, true), |_| {}).await.unwrap();
        let next = pruned.events_after(0, 10).await.unwrap();
        assert_eq!(next.iter().map(|event| event.id).collect::<Vec<_>>(), [4]);
    }

    #[tokio::test]
    async fn a_database_from_before_the_event_log_gets_one() {
        let dir = tempfile::Builder::new().prefix("store").tempdir().unwrap();
        let database = dir.path().join("products.db");
        // The schema as it was, with a product in it.
        let old = Connection::open(&database).unwrap();
        old.execute_batch(&SCHEMA[..SCHEMA.find("CREATE TABLE IF NOT EXISTS events").unwrap()])
            .unwrap();
        old.execute(
            &format!(
                "INSERT INTO products ({COLUMNS}) \
                 VALUES ('65643f1adeadbeef01000000', 'old', 'Old', 'tea', 'Hot', 4.5, 1, \
                         '/img/tea.png', '[\"S\"]', '{{\"S\":0,\"M\":2,\"L\":3}}', \
                         '2025-01-01T00:00:00.000Z', '2025-01-01T00:00:00.000Z')"
            ),
            [],
        )
        .unwrap();
        drop(old);

        let store = Sqlite::open(Some(database)).await.unwrap();
        assert_eq!(
            store
                .latest_events(10, SystemTime::UNIX_EPOCH)
                .await
                .unwrap(),
            (0, vec![])
        );
        store.insert(product(1, true), |_| {}).await.unwrap();
        let events = store.events_after(0, 10).await.unwrap();
        assert_eq!(events.iter().map(|event| event.id).collect::<Vec<_>>(), [1]);
        assert_eq!(store.list(Activity::Any, 0, 10).await.unwrap().total, 2);
    }

    #[tokio::test]
    async fn a_panicking_job_is_rolled_back_and_the_store_keeps_serving() {
        let store = Sqlite::open(None).await.unwrap();
        store.insert(product(1, true), |_| {}).await.unwrap();

        let panicked: Result<(), _> = store
            .call(|connection| {
                let transaction = connection.transaction()?;
                transaction.execute("DELETE FROM products", [])?;
                panic!("a bug in the middle of a transaction");
            })
            .await;
        assert!(matches!(panicked, Err(StoreError::Panicked)));

        // The delete was rolled back and the connection is usable.
        store.insert(product(2, true), |_| {}).await.unwrap();
        let page = store.list(Activity::Any, 0, 10).await.unwrap();
        assert_eq!(
            page.products.iter().map(|p| &p.slug).collect::<Vec<_>>(),
            ["tea-1", "tea-2"]
        );
    }

    #[tokio::test]
    async fn a_full_queue_makes_callers_wait_for_room() {
        let store = Sqlite::open(None).await.unwrap();
        // Occupy the thread until the queue has been filled.
        let (started, on_start) = oneshot::channel();
        let (release, blocked) = mpsc::channel::<()>();
        let busy = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .call(move |_| {
                        let _ = started.send(());
                        let _ = blocked.recv();
                        Ok(())
                    })
                    .await
            }
        });
        on_start.await.unwrap();

        // Polled by hand, so that none moves unless the test polls it, and
        // unconstrained, so that Tokio's task budget does not make a poll
        // pending while there is room.
        let ran = Arc::new(Mutex::new(Vec::new()));
        let job = |n: usize| {
            let ran = ran.clone();
            Box::pin(tokio::task::unconstrained(store.call(move |_| {
                ran.lock().unwrap().push(n);
                Ok(())
            })))
        };
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut queued: Vec<_> = (0..=JOB_QUEUE).map(job).collect();
        for call in &mut queued {
            assert!(call.as_mut().poll(&mut cx).is_pending());
        }

        // The last call found the queue full: a call made once there is
        // room again runs before it.
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
        let (extra, overflow) = (job(JOB_QUEUE + 1), queued.pop().unwrap());
        for call in queued {
            call.await.unwrap();
        }
        extra.await.unwrap();
        assert!(
            !ran.lock().unwrap().contains(&JOB_QUEUE),
            "the call made while the queue was full was queued anyway"
        );
        overflow.await.unwrap();
        assert_eq!(ran.lock().unwrap().last(), Some(&JOB_QUEUE));
    }

    #[tokio::test]
    async fn reports_an_unopenable_database() {
        let dir = tempfile::Builder::new()
            .prefix("store-missing")
            .tempdir()
            .unwrap();
        let database = dir.path().join("no/such/dir/products.db");
        assert!(matches!(
            Sqlite::open(Some(database.clone())).await,
            Err(StoreError::Sqlite(_))
        ));
    }
}
