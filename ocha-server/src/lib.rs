//! The thin Ocha server: WebSocket push and the Ocha product API on one
//! port, admin JWT, embedded SQLite or a shared Postgres. It embeds
//! [`ocha_realtime`]: a WebSocket upgrade on `/` joins the hub, and every
//! product created, updated or deleted through `/api/v1/products` is
//! committed with its event, then broadcast to every client, as
//! `{"type":"new_product","product":{...},"id":"1"}`, `product_updated` or
//! `product_deleted`. A browser opening `/` gets a live page of the
//! products.
//!
//! # Modules
//!
//! - [`server`]: accept loop, hyper connections and their limits, graceful
//!   shutdown, signals.
//! - [`api`]: routing and the HTTP handlers.
//! - [`metrics`]: Prometheus metrics, served at `/metrics`.
//! - [`cors`]: cross-origin requests from the origins in `CORS_ORIGINS`.
//! - [`error`]: API errors and their JSON bodies.
//! - [`response`]: JSON and text response builders.
//! - [`event`]: the events clients receive and the product documents they
//!   carry, byte for byte as the Ocha API writes them.
//! - [`event_log`]: the database's event log feeding the hub, on one node
//!   or many (over Redis): resume history, ids, catch-up.
//! - [`product`]: validation of created and updated products, and their
//!   documents.
//! - [`page`]: the live page served on `/` to browsers.
//! - [`listing`]: listing query parameters and paging.
//! - [`store`]: products and the event log, in SQLite (on a dedicated
//!   thread) or Postgres (through a pool).
//! - [`auth`]: HS256 JWT issue, verification and the admin check.
//! - [`object_id`]: MongoDB-style product ids.
//! - [`config`]: configuration from the environment.
//! - [`cli`]: the command line (`ocha-server`, `ocha-server token ...`).
//!
//! To serve from your own code, hand [`server::run`] a listener, an
//! [`App`](api::App) and a shutdown future:
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use ocha_server::{api::App, auth::Keys, config::{Database, EventSettings}, server, store::Store};
//!
//! let store = Store::open(&Database::Memory).await?;
//! let hub = ocha_realtime::Hub::default();
//! let app = App::start(store, Keys::from_secret(b"secret"), hub, &EventSettings::default()).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! server::run(listener, app, async { let _ = tokio::signal::ctrl_c().await; }).await;
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod cors;
pub mod error;
pub mod event;
pub mod event_log;
pub mod listing;
pub mod metrics;
pub mod object_id;
pub mod page;
pub mod product;
pub mod response;
pub mod server;
pub mod store;
