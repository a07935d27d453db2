//! Product storage and the event log, in SQLite or Postgres.
//!
//! [`Store`] is one API over two backends, chosen by [`Database`]:
//!
//! - SQLite: embedded, private to one server; a dedicated thread owns the
//!   connection.
//! - Postgres: a server that several Ocha servers share, through a small
//!   connection pool.
//!
//! # The event log
//!
//! Each committed product change (insert, update or delete) writes, in the
//! same transaction, one event row: the log is both the outbox (what must
//! still be published) and the history clients resume from. Event ids come
//! from a one-row counter that the transaction bumps after the product
//! change succeeded, so that a conflict or a missing product consumes no
//! id:
//!
//! ```sql
//! UPDATE event_counter SET last_id = last_id + 1 RETURNING last_id
//! ```
//!
//! The bump locks the counter row until the transaction ends, so commits
//! happen in id order, and a rollback undoes the bump: ids are 1, 2, 3…
//! with no gaps, in commit order. A reader that has seen id N and then
//! sees N + 2 knows that N + 1 is committed (or is committing). Pruning
//! deletes events but never the counter, so ids never repeat or go back.
//!
//! Event times come from the clock of the Ocha server that committed each
//! event, so with several servers they may not rise with the ids. The
//! operations that select by time therefore cut the log at one id, never
//! leaving a hole that a reader would take for an event still committing.
//!
//! The database, not a racy read-then-write, decides conflicts: `slug` and
//! `name` are unique in both schemas. An update reads the product, applies
//! the changes and writes it back within its transaction, with the row
//! locked (Postgres: `SELECT ... FOR UPDATE`; SQLite: one writer), so that
//! concurrent updates of one product never lose each other's changes.

use std::any::Any;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use time::OffsetDateTime;

use crate::config::Database;
use crate::event::{Event, Numbered, Product};
use crate::metrics::StoreLatency;
use crate::product::ProductChanges;

mod postgres;
mod sqlite;

/// A failed storage operation.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Another product has this slug.
    #[error("slug already in use")]
    SlugTaken,
    /// Another product has this name.
    #[error("name already in use")]
    NameTaken,
    /// A file database could not be switched to write-ahead logging.
    #[error("could not enable WAL mode: the database stayed in {0:?} mode")]
    NoWal(String),
    /// Any other SQLite failure.
    #[error("SQLite: {0}")]
    Sqlite(#[source] rusqlite::Error),
    /// Any other Postgres failure, connecting included.
    ///
    /// The message includes the server's or the socket's explanation, which
    /// `tokio_postgres::Error`'s own message leaves to its source (it says
    /// only "db error" for every error the server reports).
    #[error("Postgres: {}", postgres::describe(.0))]
    Postgres(#[source] tokio_postgres::Error),
    /// No Postgres connection became free, or could be made, in time.
    #[error("Postgres connection pool: {0}")]
    Pool(#[source] deadpool_postgres::PoolError),
    /// The database thread could not be started.
    #[error("could not start the database thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The operation panicked (a bug): what it had not committed was rolled
    /// back, and the store keeps serving.
    #[error("the database operation panicked")]
    Panicked,
    /// The database thread or task is gone (it panicked while opening, or
    /// the runtime is shutting down).
    #[error("the database thread stopped")]
    Closed,
}

impl StoreError {
    /// Whether the database could not be reached: it is down, restarting,
    /// unreachable or out of connections, rather than refusing this
    /// operation. Worth retrying later; an API answers 503, not 500.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Postgres(error) => postgres::is_unavailable(error),
            StoreError::Pool(error) => postgres::pool_is_unavailable(error),
            _ => false,
        }
    }
}

/// Which products a listing includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Every product.
    Any,
    /// Only products whose `isActive` equals the flag.
    Only(bool),
}

impl Activity {
    /// The `is_active` value to match, `None` for every product.
    fn filter(self) -> Option<bool> {
        match self {
            Activity::Any => None,
            Activity::Only(active) => Some(active),
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The products on the page, in insertion order.
    pub products: Vec<Product>,
    /// How many products match, over all pages.
    pub total: u64,
}

/// One committed event, as clients receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in the log: 1, 2, 3… with no gaps, in commit order.
    pub id: u64,
    /// The whole event JSON, its `"id"` field included, e.g.
    /// `{"type":"new_product","product":{...},"id":"42"}`.
    pub json: String,
    /// When it was committed (millisecond precision): stamped in the
    /// transaction, just before the commit, by the clock of the Ocha server
    /// that committed it.
    pub published_at: SystemTime,
}

/// A handle to the database. Cloning is cheap and shares the connection
/// (SQLite) or the pool (Postgres), and the operations' timings.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    latency: StoreLatency,
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

impl Store {
    /// Opens the database and creates or updates its schema.
    ///
    /// SQLite: creates the file if needed and switches it to WAL mode.
    /// Postgres: connects, and creates the tables under an advisory lock,
    /// so that several servers starting at once on an empty database do not
    /// trip over each other.
    pub async fn open(database: &Database) -> Result<Store, StoreError> {
        let backend = match database {
            Database::Memory => Backend::Sqlite(sqlite::Sqlite::open(None).await?),
            Database::File(path) => {
                Backend::Sqlite(sqlite::Sqlite::open(Some(path.clone())).await?)
            }
            Database::Postgres(url) => Backend::Postgres(postgres::Postgres::open(url).await?),
        };
        Ok(Store {
            backend,
            latency: StoreLatency::new(),
        })
    }

    /// How long each operation takes, for the metrics.
    pub(crate) fn latency(&self) -> &StoreLatency {
        &self.latency
    }

    /// Inserts a product and its `new_product` event in one transaction,
    /// and returns the product once committed.
    ///
    /// `on_commit` receives the committed event right after the commit. It
    /// runs even if the caller stops waiting once the insert has started
    /// (one dropped before that commits nothing), exactly once per
    /// committed product. It should hand the event off (for example to a
    /// bounded queue with `try_send`) rather than do slow work or block:
    ///
    /// - SQLite runs it on the database thread, in commit (and so id) order;
    ///   every other operation waits for it.
    /// - Postgres runs it on a Tokio task, one per insert, so inserts
    ///   committed in id order may call it in another order: a consumer
    ///   that needs id order reorders, or reads the log.
    ///
    /// If the commit's outcome is unknown (the connection broke during it),
    /// this returns an error and `on_commit` does not run, though the
    /// product and its event may be committed: the log is the reference.
    ///
    /// When both the slug and the name are taken, reports the slug: the API
    /// contract lists that conflict first, and the databases would name
    /// either.
    pub async fn insert<F>(&self, product: Product, on_commit: F) -> Result<Product, StoreError>
    where
        F: FnOnce(&StoredEvent) + Send + 'static,
    {
        let _timer = self.latency.start("insert");
        match &self.backend {
            Backend::Sqlite(store) => store.insert(product, on_commit).await,
            Backend::Postgres(store) => store.insert(product, on_commit).await,
        }
    }

    /// Applies `changes` to the product with this id (24 lowercase hex
    /// digits), stamped `now`, and writes its `product_updated` event in the
    /// same transaction; returns the product as committed, or `None` when
    /// no product has this id (then nothing is committed and `on_commit`
    /// does not run).
    ///
    /// `on_commit` and the conflicts are as for [`insert`](Store::insert):
    /// a slug or name that another product has fails with
    /// [`StoreError::SlugTaken`] (reported first) or
    /// [`StoreError::NameTaken`]; a product keeping its own is no conflict.
    /// Every update commits an event, even one that changes nothing but
    /// `updatedAt`.
    pub async fn update<F>(
        &self,
        id: String,
        changes: ProductChanges,
        now: OffsetDateTime,
        on_commit: F,
    ) -> Result<Option<Product>, StoreError>
    where
        F: FnOnce(&StoredEvent) + Send + 'static,
    {
        let _timer = self.latency.start("update");
        match &self.backend {
            Backend::Sqlite(store) => store.update(id, changes, now, on_commit).await,
            Backend::Postgres(store) => store.update(id, changes, now, on_commit).await,
        }
    }

    /// Deletes the product with this id (24 lowercase hex digits) and
    /// writes its `product_deleted` event in the same transaction; returns
    /// the product as it was, or `None` when no product has this id (then
    /// nothing is committed and `on_commit` does not run). `on_commit` is as
    /// for [`insert`](Store::insert).
    pub async fn delete<F>(&self, id: String, on_commit: F) -> Result<Option<Product>, StoreError>
    where
        F: FnOnce(&StoredEvent) + Send + 'static,
    {
        let _timer = self.latency.start("delete");
        match &self.backend {
            Backend::Sqlite(store) => store.delete(id, on_commit).await,
            Backend::Postgres(store) => store.delete(id, on_commit).await,
        }
    }

    /// Returns up to `limit` products after skipping `offset`, and the
    /// total, as of one moment.
    pub async fn list(
        &self,
        activity: Activity,
        offset: u64,
        limit: u64,
    ) -> Result<Page, StoreError> {
        let _timer = self.latency.start("list");
        match &self.backend {
            Backend::Sqlite(store) => store.list(activity, offset, limit).await,
            Backend::Postgres(store) => store.list(activity, offset, limit).await,
        }
    }

    /// Returns the product with this id (24 lowercase hex digits), if any.
    pub async fn find(&self, id: String) -> Result<Option<Product>, StoreError> {
        let _timer = self.latency.start("find");
        match &self.backend {
            Backend::Sqlite(store) => store.find(id).await,
            Backend::Postgres(store) => store.find(id).await,
        }
    }

    /// Events with id > `after`, ascending, at most `limit`.
    ///
    /// Ids are committed in order, so the result has no gaps, though it may
    /// start after `after + 1` where those events were pruned.
    pub async fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let _timer = self.latency.start("events_after");
        match &self.backend {
            Backend::Sqlite(store) => store.events_after(after, limit).await,
            Backend::Postgres(store) => store.events_after(after, limit).await,
        }
    }

    /// The last id ever assigned (0 if none) and the kept events newer than
    /// `newer_than`, at most the newest `count`, ascending, as of one
    /// moment. Used to seed the in-memory resume history at start.
    ///
    /// The events are consecutive: those after the last one published at
    /// or before `newer_than`, so that one stamped by a clock that was
    /// behind does not split them.
    pub async fn latest_events(
        &self,
        count: usize,
        newer_than: SystemTime,
    ) -> Result<(u64, Vec<StoredEvent>), StoreError> {
        let _timer = self.latency.start("latest_events");
        match &self.backend {
            Backend::Sqlite(store) => store.latest_events(count, newer_than).await,
            Backend::Postgres(store) => store.latest_events(count, newer_than).await,
        }
    }

    /// Deletes the events beyond the newest `keep` and those published
    /// before `older_than`; returns how many. Never lowers the counter: the
    /// next event gets the next id even when every event was deleted.
    ///
    /// Only ever deletes the oldest events: by time, those before the first
    /// one published at or after `older_than`, so that what remains has no
    /// hole even where clocks disagree.
    pub async fn prune_events(
        &self,
        keep: usize,
        older_than: SystemTime,
    ) -> Result<u64, StoreError> {
        let _timer = self.latency.start("prune_events");
        match &self.backend {
            Backend::Sqlite(store) => store.prune_events(keep, older_than).await,
            Backend::Postgres(store) => store.prune_events(keep, older_than).await,
        }
    }

    /// One round trip to the database, for a readiness check.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _timer = self.latency.start("ping");
        match &self.backend {
            Backend::Sqlite(store) => store.ping().await,
            Backend::Postgres(store) => store.ping().await,
        }
    }
}

/// `event`, committed as number `id` now.
fn stored_event(event: &Event, id: u64) -> StoredEvent {
    let numbered = Numbered {
        event,
        id: id.to_string(),
    };
    StoredEvent {
        id,
        // Documents hold strings, booleans, numbers and lists of them.
        json: serde_json::to_string(&numbered).expect("events always serialize"),
        published_at: from_millis(millis(SystemTime::now())),
    }
}

/// Milliseconds since the Unix epoch, as the schemas store times; negative
/// before it, saturated far from it.
fn millis(time: SystemTime) -> i64 {
    let saturated = |duration: Duration| i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => saturated(after),
        Err(before) => -saturated(before.duration()),
    }
}

/// The time `millis` milliseconds after the Unix epoch.
fn from_millis(millis: i64) -> SystemTime {
    let duration = Duration::from_millis(millis.unsigned_abs());
    if millis >= 0 {
        UNIX_EPOCH + duration
    } else {
        UNIX_EPOCH - duration
    }
}

/// A count or position for a query parameter: SQL integers are signed, and
/// nothing is stored past `i64::MAX`, so larger values mean the same.
fn sql_int(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

/// An event id or the counter, read back as the schemas keep them: never
/// negative.
fn event_id(id: i64) -> u64 {
    u64::try_from(id).expect("the schema keeps event ids non-negative")
}

/// The message of a `panic!` with a literal or formatted message.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    match panic.downcast_ref::<&str>() {
        Some(message) => message,
        None => panic
            .downcast_ref::<String>()
            .map_or("<not a string>", String::as_str),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_in_milliseconds() {
        for ms in [0, 1, 1_764_265_708_123, -1, -86_400_000] {
            assert_eq!(millis(from_millis(ms)), ms);
        }
        let now = SystemTime::now();
        let stored = from_millis(millis(now));
        assert!(stored <= now && now.duration_since(stored).unwrap() < Duration::from_millis(1));
    }

    #[test]
    fn query_integers_saturate() {
        assert_eq!(sql_int(5u64), 5);
        assert_eq!(sql_int(u64::MAX), i64::MAX);
        assert_eq!(sql_int(usize::MAX), i64::MAX);
    }
}
