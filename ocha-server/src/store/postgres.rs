//! The Postgres backend, for several servers sharing one database.
//!
//! A small pool of connections serves every operation. The schema mirrors
//! SQLite's: the same columns and unique constraints, `size` and
//! `extra_chf` as JSON text, listing in insertion order (`seq`), event
//! times in milliseconds since the Unix epoch. Without TLS: the URL's
//! `sslmode` may be `disable` or `prefer`, not `require`.

use std::error::Error;
use std::future::Future;
use std::io;
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, IsolationLevel, NoTls, Row, Transaction};

use super::{
    event_id, from_millis, millis, panic_message, sql_int, stored_event, Activity, Page,
    StoreError, StoredEvent,
};
use crate::event::{Event, Product};
use crate::product::ProductChanges;

/// The schema, created or completed at every start under [`SCHEMA_LOCK`].
/// The constraint names are spelled out: conflicts are told apart by them.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS products (
    seq            BIGSERIAL        PRIMARY KEY,
    id             TEXT             NOT NULL CONSTRAINT products_id_key UNIQUE,
    slug           TEXT             NOT NULL CONSTRAINT products_slug_key UNIQUE,
    name           TEXT             NOT NULL CONSTRAINT products_name_key UNIQUE,
    category       TEXT             NOT NULL,
    description    TEXT             NOT NULL,
    base_price_chf DOUBLE PRECISION NOT NULL,
    is_active      BOOLEAN          NOT NULL,
    image          TEXT             NOT NULL,
    size           TEXT             NOT NULL,
    extra_chf      TEXT             NOT NULL,
    created_at     TEXT             NOT NULL,
    updated_at     TEXT             NOT NULL
);
CREATE INDEX IF NOT EXISTS products_by_activity ON products (is_active, seq);
CREATE TABLE IF NOT EXISTS events (
    id           BIGINT PRIMARY KEY CHECK (id > 0),
    json         TEXT   NOT NULL,
    published_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS event_counter (
    singleton BOOLEAN PRIMARY KEY CHECK (singleton),
    last_id   BIGINT  NOT NULL CHECK (last_id >= 0)
);
INSERT INTO event_counter (singleton, last_id) VALUES (TRUE, 0) ON CONFLICT DO NOTHING;
";

/// The advisory lock that serializes schema changes: `CREATE TABLE IF NOT
/// EXISTS` run by two sessions at once on an empty database can fail on
/// the catalog's unique indexes. "ocha" in ASCII, unlikely to collide with
/// another application's lock in the same database.
const SCHEMA_LOCK: i64 = 0x6f63_6861;

const SLUG_CONSTRAINT: &str = "products_slug_key";
const NAME_CONSTRAINT: &str = "products_name_key";

const COLUMNS: &str = "id, slug, name, category, description, base_price_chf, is_active, \
                       image, size, extra_chf, created_at, updated_at";

/// Connections per server. Inserts take turns on the counter row anyway,
/// and a read is one indexed query; several servers share the database's
/// `max_connections` (100 by default).
const POOL_SIZE: usize = 10;

/// How long an operation waits for a free connection before it fails as
/// unavailable, rather than queue for as long as the database is slow.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// How long making a connection (and logging in) may take before an
/// operation fails as unavailable, rather than hang on an unreachable host.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> StoreError {
        if error.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            match error.as_db_error().and_then(|db| db.constraint()) {
                Some(SLUG_CONSTRAINT) => return StoreError::SlugTaken,
                Some(NAME_CONSTRAINT) => return StoreError::NameTaken,
                _ => {}
            }
        }
        StoreError::Postgres(error)
    }
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> StoreError {
        match error {
            PoolError::Backend(error) => StoreError::from(error),
            other => StoreError::Pool(other),
        }
    }
}

/// `error`'s message followed by its causes', which is where the server's
/// or the socket's explanation is.
pub(super) fn describe(error: &tokio_postgres::Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        message.push_str(": ");
        message.push_str(&error.to_string());
        cause = error.source();
    }
    message
}

/// Whether `error` says the server cannot be reached or is going away,
/// rather than refusing a statement.
pub(super) fn is_unavailable(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() || error.source().is_some_and(|cause| cause.is::<io::Error>()) {
        return true;
    }
    // Class 08: connection exception; 57P01-57P03: shutting down or
    // starting; 53300: too many connections.
    error.code().is_some_and(|code| {
        code.code().starts_with("08")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
            ]
            .contains(code)
    })
}

/// Whether the pool failed for want of a connection: none was free or
/// could be made in time.
pub(super) fn pool_is_unavailable(error: &PoolError) -> bool {
    match error {
        PoolError::Timeout(_) => true,
        PoolError::Backend(error) => is_unavailable(error),
        _ => false,
    }
}

/// A pool of connections to one database. Cloning is cheap and shares it.
#[derive(Debug, Clone)]
pub(super) struct Postgres {
    pool: Pool,
}

impl Postgres {
    /// Connects to the database at `url` and creates or completes the
    /// schema.
    pub(super) async fn open(url: &str) -> Result<Postgres, StoreError> {
        let manager = Manager::from_config(
            url.parse()?,
            NoTls,
            // A connection is checked only for having been closed: a
            // round trip before every operation would double the cheap
            // ones, and a connection broken unnoticed fails one operation,
            // then is dropped.
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .expect("a pool with a runtime for its timeouts builds");

        let mut client = pool.get().await?;
        let transaction = client.transaction().await?;
        // Held until the commit: another server starting at the same time
        // waits here, then finds the schema in place.
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await?;
        transaction.batch_execute(SCHEMA).await?;
        transaction.commit().await?;
        Ok(Postgres { pool })
    }

    /// [`Store::insert`](super::Store::insert). The transaction runs on its
    /// own task, so that it commits and `on_commit` runs even if the caller
    /// stops waiting; tasks call `on_commit` in no particular order.
    pub(super) async fn insert<F>(
        &self,
        product: Product,
        on_commit: F,
    ) -> Result<Product, StoreError>
    where
        F: FnOnce(&StoredEvent) + Send + 'static,
    {
        let pool = self.pool.clone();
        on_a_task(async move {
            let event = insert_with_event(&pool, &product).await?;
            on_commit(&event);
            Ok(product)
        })
        .await
    }

    /// [`Store::update`](super::Store::update), on its own task as
    /// [`insert`](Self::insert) is.
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
        let pool = self.pool.clone();
        on_a_task(async move {
            let updated = update_with_event(&pool, &id, changes, now).await?;
            Ok(updated.map(|(product, event)| {
                on_commit(&event);
                product
            }))
        })
        .await
    }

    /// [`Store::delete`](super::Store::delete), on its own task as
    /// [`insert`](Self::insert) is.
    pub(super) async fn delete<F>(
        &self,
        id: String,
        on_commit: F,
    ) -> Result<Option<Product>, StoreError>
    where
        F: FnOnce(&StoredEvent) + Send + 'static,
    {
        let pool = self.pool.clone();
        on_a_task(async move {
            let deleted = delete_with_event(&pool, &id).await?;
            Ok(deleted.map(|(product, event)| {
                on_commit(&event);
                product
            }))
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
        let mut client = self.pool.get().await?;
        // One snapshot, so the page and the total agree.
        let transaction = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let count = transaction
            .prepare_cached(
                "SELECT COUNT(*) FROM products WHERE $1::BOOLEAN IS NULL OR is_active = $1",
            )
            .await?;
        let total: i64 = transaction.query_one(&count, &[&filter]).await?.get(0);
        let page = transaction
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM products WHERE $1::BOOLEAN IS NULL OR is_active = $1 \
                 ORDER BY seq LIMIT $2 OFFSET $3"
            ))
            .await?;
        let products = transaction
            .query(&page, &[&filter, &sql_int(limit), &sql_int(offset)])
            .await?
            .iter()
            .map(product_from_row)
            .collect::<Result<_, _>>()?;
        transaction.commit().await?;
        Ok(Page {
            products,
            total: u64::try_from(total).expect("a count is never negative"),
        })
    }

    /// [`Store::find`](super::Store::find).
    pub(super) async fn find(&self, id: String) -> Result<Option<Product>, StoreError> {
        let client = self.pool.get().await?;
        let find = client
            .prepare_cached(&format!("SELECT {COLUMNS} FROM products WHERE id = $1"))
            .await?;
        let row = client.query_opt(&find, &[&id]).await?;
        Ok(row.as_ref().map(product_from_row).transpose()?)
    }

    /// [`Store::events_after`](super::Store::events_after).
    pub(super) async fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let client = self.pool.get().await?;
        let select = client
            .prepare_cached(
                "SELECT id, json, published_at FROM events WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .await?;
        let rows = client
            .query(&select, &[&sql_int(after), &sql_int(limit)])
            .await?;
        Ok(rows.iter().map(event_from_row).collect::<Result<_, _>>()?)
    }

    /// [`Store::latest_events`](super::Store::latest_events).
    pub(super) async fn latest_events(
        &self,
        count: usize,
        newer_than: SystemTime,
    ) -> Result<(u64, Vec<StoredEvent>), StoreError> {
        let mut client = self.pool.get().await?;
        // One snapshot, so the last id and the events agree.
        let transaction = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let last_id: i64 = transaction
            .query_one("SELECT last_id FROM event_counter", &[])
            .await?
            .get(0);
        let rows = transaction
            .query(
                "SELECT id, json, published_at FROM (\
                     SELECT id, json, published_at FROM events \
                     WHERE id > (\
                         SELECT COALESCE(MAX(id), 0) FROM events WHERE published_at <= $1\
                     ) \
                     ORDER BY id DESC LIMIT $2\
                 ) AS newest ORDER BY id",
                &[&millis(newer_than), &sql_int(count)],
            )
            .await?;
        transaction.commit().await?;
        let events = rows.iter().map(event_from_row).collect::<Result<_, _>>()?;
        Ok((event_id(last_id), events))
    }

    /// [`Store::prune_events`](super::Store::prune_events).
    pub(super) async fn prune_events(
        &self,
        keep: usize,
        older_than: SystemTime,
    ) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        // Ids are gapless, so the newest `keep` are those within `keep` of
        // the last committed id. With no event as recent as `older_than`,
        // every one goes.
        let deleted = client
            .execute(
                "DELETE FROM events \
                 WHERE id <= (SELECT last_id FROM event_counter) - $1 \
                    OR id < (\
                        SELECT COALESCE(MIN(id), (SELECT last_id + 1 FROM event_counter)) \
                        FROM events WHERE published_at >= $2\
                    )",
                &[&sql_int(keep), &millis(older_than)],
            )
            .await?;
        Ok(deleted)
    }

    /// [`Store::ping`](super::Store::ping): a query on a pooled connection,
    /// made anew if the pooled ones were closed.
    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        self.pool.get().await?.batch_execute("SELECT 1").await?;
        Ok(())
    }
}

/// Inserts `product` and its event in one transaction and returns the
/// committed event.
async fn insert_with_event(pool: &Pool, product: &Product) -> Result<StoredEvent, StoreError> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let insert = transaction
        .prepare_cached(&format!(
            "INSERT INTO products ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .await?;
    let inserted = transaction
        .execute(
            &insert,
            &[
                &product.id,
                &product.slug,
                &product.name,
                &product.category,
                &product.description,
                &product.base_price_chf,
                &product.is_active,
                &product.image,
                &to_json(&product.size),
                &to_json(&product.extra_chf),
                &product.created_at,
                &product.updated_at,
            ],
        )
        .await;
    if let Err(error) = inserted {
        // The failed statement aborted the transaction: end it before
        // asking anything else on this connection.
        transaction.rollback().await?;
        return Err(conflict(&client, error, &product.slug, None).await?);
    }
    // Only now that the product is in, so that a conflict takes no id.
    let event = append_event(
        &transaction,
        &Event::NewProduct {
            product: product.clone(),
        },
    )
    .await?;
    transaction.commit().await?;
    Ok(event)
}

/// Applies `changes` to the product with this id and writes it and its
/// event in one transaction; returns both as committed, or `None` when no
/// product has this id.
async fn update_with_event(
    pool: &Pool,
    id: &str,
    changes: ProductChanges,
    now: OffsetDateTime,
) -> Result<Option<(Product, StoredEvent)>, StoreError> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    // Locked until the commit: a concurrent update of this product waits
    // here, then reads what this one wrote, so neither loses the other's
    // changes. A delete that locked the row first makes this one wait, then
    // find no product; one that comes second deletes what this one wrote.
    let select = transaction
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM products WHERE id = $1 FOR UPDATE"
        ))
        .await?;
    let Some(row) = transaction.query_opt(&select, &[&id]).await? else {
        transaction.rollback().await?;
        return Ok(None);
    };
    let mut product = product_from_row(&row)?;
    changes.apply_to(&mut product, now);
    let update = transaction
        .prepare_cached(
            "UPDATE products SET slug = $2, name = $3, category = $4, description = $5, \
                 base_price_chf = $6, is_active = $7, image = $8, size = $9, \
                 extra_chf = $10, updated_at = $11 \
             WHERE id = $1",
        )
        .await?;
    let updated = transaction
        .execute(
            &update,
            &[
                &product.id,
                &product.slug,
                &product.name,
                &product.category,
                &product.description,
                &product.base_price_chf,
                &product.is_active,
                &product.image,
                &to_json(&product.size),
                &to_json(&product.extra_chf),
                &product.updated_at,
            ],
        )
        .await;
    if let Err(error) = updated {
        transaction.rollback().await?;
        return Err(conflict(&client, error, &product.slug, Some(&product.id)).await?);
    }
    let event = append_event(
        &transaction,
        &Event::ProductUpdated {
            product: product.clone(),
        },
    )
    .await?;
    transaction.commit().await?;
    Ok(Some((product, event)))
}

/// Deletes the product with this id and writes its event in one
/// transaction; returns the product as it was and the event, or `None` when
/// no product has this id.
async fn delete_with_event(
    pool: &Pool,
    id: &str,
) -> Result<Option<(Product, StoredEvent)>, StoreError> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let delete = transaction
        .prepare_cached(&format!(
            "DELETE FROM products WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .await?;
    let Some(row) = transaction.query_opt(&delete, &[&id]).await? else {
        transaction.rollback().await?;
        return Ok(None);
    };
    let product = product_from_row(&row)?;
    let event = append_event(
        &transaction,
        &Event::ProductDeleted {
            product: product.clone(),
        },
    )
    .await?;
    transaction.commit().await?;
    Ok(Some((product, event)))
}

/// Takes the next event id and writes `event` under it. Called only once
/// the product change succeeded, so that a conflict takes no id. The
/// counter row stays locked until the commit: the next change waits here,
/// so ids commit in order, and a rollback gives the id back.
async fn append_event(
    transaction: &Transaction<'_>,
    event: &Event,
) -> Result<StoredEvent, StoreError> {
    let id: i64 = transaction
        .query_one(
            "UPDATE event_counter SET last_id = last_id + 1 RETURNING last_id",
            &[],
        )
        .await?
        .get(0);
    let event = stored_event(event, event_id(id));
    transaction
        .execute(
            "INSERT INTO events (id, json, published_at) VALUES ($1, $2, $3)",
            &[&id, &event.json, &millis(event.published_at)],
        )
        .await?;
    Ok(event)
}

/// The error to report for `error`, which failed writing a product's row
/// in a transaction since rolled back: when both its slug and its name are
/// taken, the slug, though Postgres reports the first unique index that
/// refuses the row, in an order the schema does not promise. `updating` is
/// the id of the product an update writes, whose own slug is no conflict.
async fn conflict(
    client: &Client,
    error: tokio_postgres::Error,
    slug: &str,
    updating: Option<&str>,
) -> Result<StoreError, StoreError> {
    Ok(match StoreError::from(error) {
        StoreError::NameTaken if slug_taken(client, slug, updating).await? => StoreError::SlugTaken,
        error => error,
    })
}

/// Whether a product other than the one with id `except` has `slug`.
async fn slug_taken(client: &Client, slug: &str, except: Option<&str>) -> Result<bool, StoreError> {
    let row = client
        .query_one(
            "SELECT EXISTS (\
                 SELECT 1 FROM products WHERE slug = $1 AND id IS DISTINCT FROM $2\
             )",
            &[&slug, &except],
        )
        .await?;
    Ok(row.get(0))
}

/// Runs `work` on a task of its own, so that it commits (and runs its
/// commit hook) even if the caller stops waiting, and reports a panic as
/// [`StoreError::Panicked`].
async fn on_a_task<T, W>(work: W) -> Result<T, StoreError>
where
    T: Send + 'static,
    W: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    match tokio::spawn(work).await {
        Ok(result) => result,
        Err(error) if error.is_panic() => {
            let panic = error.into_panic();
            tracing::error!(panic = panic_message(&*panic), "a database task panicked");
            Err(StoreError::Panicked)
        }
        // Cancelled: the runtime is shutting down.
        Err(_) => Err(StoreError::Closed),
    }
}

fn product_from_row(row: &Row) -> Result<Product, tokio_postgres::Error> {
    Ok(Product {
        id: row.try_get(0)?,
        slug: row.try_get(1)?,
        name: row.try_get(2)?,
        category: row.try_get(3)?,
        description: row.try_get(4)?,
        base_price_chf: row.try_get(5)?,
        is_active: row.try_get(6)?,
        image: row.try_get(7)?,
        size: row.try_get::<_, JsonText<_>>(8)?.0,
        extra_chf: row.try_get::<_, JsonText<_>>(9)?.0,
        created_at: row.try_get(10)?,
        updated_at: row.try_get(11)?,
    })
}

fn event_from_row(row: &Row) -> Result<StoredEvent, tokio_postgres::Error> {
    Ok(StoredEvent {
        id: event_id(row.try_get(0)?),
        json: row.try_get(1)?,
        published_at: from_millis(row.try_get(2)?),
    })
}

fn to_json(value: &impl serde::Serialize) -> String {
    // A list of sizes, or three numbers (a non-finite one becomes null).
    serde_json::to_string(value).expect("sizes and surcharges always serialize")
}

/// A value stored as JSON text, read back like any column, so that a
/// document that does not parse fails as a column that does not convert.
struct JsonText<T>(T);

impl<'a, T: DeserializeOwned> FromSql<'a> for JsonText<T> {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        let text = <&str>::from_sql(ty, raw)?;
        Ok(JsonText(serde_json::from_str(text)?))
    }

    fn accepts(ty: &Type) -> bool {
        <&str as FromSql>::accepts(ty)
    }
}
