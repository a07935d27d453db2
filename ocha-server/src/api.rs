//! Routing and request handlers.
//!
//! | route                  | methods            | handler                                 |
//! |------------------------|--------------------|-----------------------------------------|
//! | `/`                    | GET                | WebSocket upgrade into the [`Hub`],     |
//! |                        |                    | `?since=ID` resuming after event `ID`;  |
//! |                        |                    | the [live page](crate::page) otherwise  |
//! | `/app.js`, `/app.css`  | GET                | the live page's script and style sheet  |
//! | `/api/v1/health`       | GET                | `Ignition!`                             |
//! | `/api/v1/ready`        | GET                | readiness: database and Redis status    |
//! | `/api/v1/events`       | GET                | the events as Server-Sent Events,       |
//! |                        |                    | resuming by `Last-Event-ID` or `?since` |
//! | `/api/v1/products`     | GET, POST          | listing; creation (admin) + broadcast   |
//! | `/api/v1/products/:id` | GET, PATCH, DELETE | one product; update and delete (admin)  |
//! |                        |                    | + broadcast                             |
//! | `/api/v1/openapi.json` | GET                | the HTTP API as OpenAPI 3.1             |
//! | `/api/v1/asyncapi.json`| GET                | the events as AsyncAPI 3.0              |
//! | `/metrics`             | GET                | Prometheus metrics ([`metrics`])        |
//!
//! A trailing slash is ignored on API paths, as Express does. Other paths
//! answer 404 and other methods 405, both as JSON. Browser pages on the
//! origins set with [`App::with_cors_origins`] may call every route
//! ([`cors`]).
//!
//! `/metrics` is open, as most exporters are: it tells counts and timings,
//! no product, client or secret, and costs a few microseconds. Where the
//! port is public and the traffic figures are not, restrict the path at
//! the proxy in front.
//!
//! [`metrics`]: crate::metrics
//! [`cors`]: crate::cors

use std::io;
use std::time::Instant;

use bytes::Bytes;
use http::header::{SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, LengthLimitError, Limited};
use hyper::body::Body as HttpBody;
use ocha_realtime::{Admission, EventId, HandshakeError, Hub, Relay};

use crate::event::Product;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::auth::Keys;
use crate::config::EventSettings;
use crate::cors::{self, Cors};
use crate::error::{ApiError, MAX_BODY_BYTES};
use crate::event_log;
use crate::listing::ListQuery;
use crate::metrics::{Metrics, PublishedEvents, Transport};
use crate::object_id;
use crate::page::Asset;
use crate::product::{NewProduct, ProductChanges};
use crate::response::{self, Body};
use crate::server::{ClientAddress, HttpPlace, StartError};
use crate::store::{Store, StoredEvent};

/// Committed events waiting for the broadcaster. A fan-out takes
/// milliseconds and admins create products by hand, so 1024 is never
/// reached in normal operation; if it were, the relay would read the
/// events it missed from the log.
const BROADCAST_QUEUE: usize = 1024;

/// How long the readiness check waits for the database.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The `route` label of requests to no route: one for every unknown path.
const UNMATCHED_ROUTE: &str = "unmatched";

/// Everything a request handler needs: storage, token keys, the hub and
/// the relay that feeds it, the metrics and the origins allowed to call.
#[derive(Clone)]
pub struct App {
    store: Store,
    keys: Keys,
    hub: Hub,
    relay: Relay<Store>,
    broadcasts: mpsc::Sender<Broadcast>,
    metrics: Metrics,
    cors: Cors,
}

/// Work for the broadcaster, done in the order it was queued.
enum Broadcast {
    /// Publish this committed event.
    Event(StoredEvent),
    /// Answer once everything queued before has been published.
    Flush(oneshot::Sender<()>),
}

enum Route<'a> {
    /// `/`: the hub, or the live page.
    Root,
    Asset(Asset),
    Health,
    Ready,
    Events,
    Metrics,
    Products,
    Product(&'a str),
    Document(Document),
}

/// The API's descriptions, built into the binary; `tests/api_docs.rs`
/// checks them against what the server answers.
#[derive(Debug, Clone, Copy)]
enum Document {
    /// The HTTP API, OpenAPI 3.1.
    OpenApi,
    /// The events over WebSocket and SSE, AsyncAPI 3.0.
    AsyncApi,
}

impl Document {
    fn response(self) -> Response<Body> {
        response::static_json(match self {
            Document::OpenApi => include_str!("../api/openapi.json"),
            Document::AsyncApi => include_str!("../api/asyncapi.json"),
        })
    }
}

impl Route<'_> {
    /// The route's template: the `route` label of its requests, in which
    /// ids make no series of their own.
    fn template(&self) -> &'static str {
        match self {
            Route::Root => "/",
            Route::Asset(asset) => asset.path(),
            Route::Health => "/api/v1/health",
            Route::Ready => "/api/v1/ready",
            Route::Events => "/api/v1/events",
            Route::Metrics => "/metrics",
            Route::Products => "/api/v1/products",
            Route::Product(_) => "/api/v1/products/:id",
            Route::Document(Document::OpenApi) => "/api/v1/openapi.json",
            Route::Document(Document::AsyncApi) => "/api/v1/asyncapi.json",
        }
    }
}

#[derive(Serialize)]
struct WithProduct<'a> {
    message: &'static str,
    product: &'a Product,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Listing<'a> {
    message: &'static str,
    page: u32,
    total_pages: u64,
    total_products: u64,
    products: &'a [Product],
}

impl App {
    /// Bundles the parts a server needs: restores `hub`'s history from
    /// `store`'s event log and starts feeding it as `events` says (see
    /// [`event_log::start`]), and starts the task that hands committed
    /// events to the relay.
    ///
    /// # Errors
    ///
    /// When the event log cannot be read or Redis cannot be used.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub async fn start(
        store: Store,
        keys: Keys,
        hub: Hub,
        events: &EventSettings,
    ) -> Result<App, StartError> {
        let published = PublishedEvents::new();
        let counter = published.clone();
        let relay =
            event_log::start(&store, &hub, events, move |_, event| counter.count(event)).await?;
        let (broadcasts, queue) = mpsc::channel(BROADCAST_QUEUE);
        tokio::spawn(broadcast(relay.clone(), queue));
        let metrics = Metrics::new(&store, &hub, &relay, &published);
        Ok(App {
            store,
            keys,
            hub,
            relay,
            broadcasts,
            metrics,
            cors: Cors::default(),
        })
    }

    /// Lets browser pages on `origins` (`scheme://host[:port]`, compared
    /// exactly with their `Origin`) call the API; see [`cors`].
    pub fn with_cors_origins(mut self, origins: &[String]) -> App {
        self.cors = Cors::new(origins);
        self
    }

    /// The hub WebSocket clients join, for shutting it down.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Answers one request, counted in the metrics. Never fails: errors
    /// become JSON responses.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Body>
    where
        B: HttpBody,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let method = request.method().clone();
        let route = route(request.uri().path()).map(|route| route.template());
        let origin = self.cors.allowed_origin(request.headers());
        // An allowed origin's preflight is answered on any route, for every
        // method a page may use; other OPTIONS requests are routed as usual.
        let mut response = if origin.is_some() && route.is_some() && cors::is_preflight(&request) {
            cors::preflight()
        } else {
            self.respond(request).await
        };
        self.cors.finish(origin, &mut response);
        self.metrics.request(
            route.unwrap_or(UNMATCHED_ROUTE),
            &method,
            response.status(),
            started.elapsed(),
        );
        response
    }

    /// Routes a request to its handler.
    async fn respond<B>(&self, request: Request<B>) -> Response<Body>
    where
        B: HttpBody,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let Some(route) = route(request.uri().path()) else {
            return ApiError::RouteNotFound.into_response();
        };
        let method = request.method().clone();
        let result = match (route, method) {
            // The hub checks the whole handshake and explains what is missing.
            (Route::Root, Method::GET) if asks_for_websocket(request.headers()) => {
                let admission = client_admission(&request);
                return match self.hub.upgrade_with(request, admission) {
                    Ok(switching) => response::whole(switching),
                    Err(refused) => self.refusal(refused, Transport::WebSocket),
                };
            }
            (Route::Events, Method::GET) => {
                return match self.hub.event_stream(&request, client_admission(&request)) {
                    Ok(stream) => {
                        if let Some(place) = request.extensions().get::<HttpPlace>() {
                            place.release();
                        }
                        stream.map(Either::Right)
                    }
                    Err(refused) => self.refusal(refused, Transport::EventStream),
                };
            }
            (Route::Root, Method::GET) => Ok(Asset::Page.response()),
            (Route::Asset(asset), Method::GET) => Ok(asset.response()),
            (Route::Health, Method::GET) => Ok(response::text(StatusCode::OK, "Ignition!")),
            (Route::Ready, Method::GET) => Ok(self.readiness().await),
            (Route::Metrics, Method::GET) => Ok(self.metrics.response()),
            (Route::Products, Method::GET) => self.list_products(request.uri().query()).await,
            (Route::Products, Method::POST) => self.create_product(request).await,
            (Route::Product(id), Method::GET) => self.get_product(id).await,
            (Route::Product(id), Method::PATCH) => {
                self.update_product(id.to_owned(), request).await
            }
            (Route::Product(id), Method::DELETE) => {
                self.delete_product(id, request.headers()).await
            }
            (Route::Document(document), Method::GET) => Ok(document.response()),
            (
                Route::Root
                | Route::Asset(_)
                | Route::Health
                | Route::Ready
                | Route::Events
                | Route::Metrics
                | Route::Document(_),
                _,
            ) => Err(ApiError::MethodNotAllowed("GET")),
            (Route::Products, _) => Err(ApiError::MethodNotAllowed("GET, POST")),
            (Route::Product(_), _) => Err(ApiError::MethodNotAllowed("GET, PATCH, DELETE")),
        };
        result.unwrap_or_else(ApiError::into_response)
    }

    async fn create_product<B>(&self, request: Request<B>) -> Result<Response<Body>, ApiError>
    where
        B: HttpBody,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        // Authorization first: strangers learn nothing about validation.
        self.keys.authorize_admin(request.headers())?;
        let body = read_body(request.into_body()).await?;
        let product = NewProduct::from_json(&body)?.into_product(OffsetDateTime::now_utc());
        let product = self.store.insert(product, self.on_commit()).await?;
        Ok(response::json(
            StatusCode::CREATED,
            &WithProduct {
                message: "Product created",
                product: &product,
            },
        ))
    }

    /// `PATCH /api/v1/products/:id`. Checks run as Express and Mongoose run
    /// them: the token, the id's format, the body (validated before the
    /// database is asked, so an invalid body gets 422 even for a product
    /// that does not exist), then the product's existence and uniqueness.
    async fn update_product<B>(
        &self,
        id: String,
        request: Request<B>,
    ) -> Result<Response<Body>, ApiError>
    where
        B: HttpBody,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        self.keys.authorize_admin(request.headers())?;
        let id = product_id(&id)?;
        let body = read_body(request.into_body()).await?;
        let changes = ProductChanges::from_json(&body)?;
        let product = self
            .store
            .update(id, changes, OffsetDateTime::now_utc(), self.on_commit())
            .await?
            .ok_or(ApiError::ProductNotFound)?;
        Ok(response::json(
            StatusCode::OK,
            &WithProduct {
                message: "Product updated",
                product: &product,
            },
        ))
    }

    /// `DELETE /api/v1/products/:id`: 204 with no body.
    async fn delete_product(
        &self,
        id: &str,
        headers: &HeaderMap,
    ) -> Result<Response<Body>, ApiError> {
        self.keys.authorize_admin(headers)?;
        let id = product_id(id)?;
        self.store
            .delete(id, self.on_commit())
            .await?
            .ok_or(ApiError::ProductNotFound)?;
        Ok(response::empty(StatusCode::NO_CONTENT))
    }

    /// The commit hook of a product change: queues its event for the
    /// broadcaster.
    ///
    /// The hook runs even if the request is dropped while it waits (hyper
    /// drops it when the client hangs up); the fan-out runs on the
    /// broadcaster, not on the database's thread or task. An event that
    /// cannot be queued is still in the log, which the relay reads.
    fn on_commit(&self) -> impl FnOnce(&StoredEvent) + Send + 'static {
        let broadcasts = self.broadcasts.clone();
        move |event: &StoredEvent| {
            if broadcasts
                .try_send(Broadcast::Event(event.clone()))
                .is_err()
            {
                tracing::warn!(
                    event = event.id,
                    "broadcast queue full: the relay reads the event from the log"
                );
            }
        }
    }

    /// Whether this node can serve: 200 when the database answers (Redis
    /// being down only slows other nodes' events), 503 otherwise; the body
    /// says how each dependency is.
    /// The response refusing a connection to the hub, counted: the hub's
    /// own, but JSON like the API's for a client over its address's limit.
    fn refusal(&self, error: HandshakeError, transport: Transport) -> Response<Body> {
        self.metrics.refused(&error, transport);
        match error {
            HandshakeError::TooManyPeerConnections => ApiError::TooManyConnections.into_response(),
            error => response::whole(error.into_response()),
        }
    }

    async fn readiness(&self) -> Response<Body> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Readiness {
            status: &'static str,
            database: &'static str,
            redis: &'static str,
            last_event_id: String,
        }
        let database_up = matches!(
            tokio::time::timeout(READY_TIMEOUT, self.store.ping()).await,
            Ok(Ok(()))
        );
        let redis = match self.relay.stats().redis_connected {
            None => "off",
            Some(true) => "up",
            Some(false) => "down",
        };
        let (status, code) = if database_up {
            ("ready", StatusCode::OK)
        } else {
            ("unavailable", StatusCode::SERVICE_UNAVAILABLE)
        };
        response::json(
            code,
            &Readiness {
                status,
                database: if database_up { "up" } else { "down" },
                redis,
                last_event_id: self.hub.last_event_id().to_string(),
            },
        )
    }

    /// Waits until every product committed so far has been published.
    pub(crate) async fn flush_broadcasts(&self) {
        let (done, flushed) = oneshot::channel();
        if self.broadcasts.send(Broadcast::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
    }

    async fn list_products(&self, query: Option<&str>) -> Result<Response<Body>, ApiError> {
        let query = ListQuery::parse(query)?;
        let page = self
            .store
            .list(query.activity, query.offset(), u64::from(query.limit))
            .await?;
        Ok(response::json(
            StatusCode::OK,
            &Listing {
                message: "List of products",
                page: query.page,
                total_pages: query.total_pages(page.total),
                total_products: page.total,
                products: &page.products,
            },
        ))
    }

    async fn get_product(&self, id: &str) -> Result<Response<Body>, ApiError> {
        let product = self
            .store
            .find(product_id(id)?)
            .await?
            .ok_or(ApiError::ProductNotFound)?;
        Ok(response::json(
            StatusCode::OK,
            &WithProduct {
                message: "Product found",
                product: &product,
            },
        ))
    }
}

/// Hands queued events to the relay in order. Ends once every [`App`]
/// clone and every insert still holding a queue handle is gone.
async fn broadcast(relay: Relay<Store>, mut queue: mpsc::Receiver<Broadcast>) {
    while let Some(work) = queue.recv().await {
        match work {
            Broadcast::Event(event) => {
                relay.publish(EventId::new(event.id), &event.json);
                tracing::debug!(event = event.id, "event published");
            }
            Broadcast::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

fn route(path: &str) -> Option<Route<'_>> {
    if path == "/" {
        return Some(Route::Root);
    }
    if let Some(asset) = Asset::at(path) {
        return Some(Route::Asset(asset));
    }
    let path = path.strip_suffix('/').unwrap_or(path);
    if path == "/metrics" {
        return Some(Route::Metrics);
    }
    match path.strip_prefix("/api/v1/")? {
        "health" => Some(Route::Health),
        "ready" => Some(Route::Ready),
        "events" => Some(Route::Events),
        "products" => Some(Route::Products),
        "openapi.json" => Some(Route::Document(Document::OpenApi)),
        "asyncapi.json" => Some(Route::Document(Document::AsyncApi)),
        rest => rest
            .strip_prefix("products/")
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .map(Route::Product),
    }
}

/// Whether a request for `/` asks for a WebSocket at all, rightly or not:
/// with an `Upgrade` header (which every upgrade that
/// [`ocha_realtime::is_websocket_upgrade`] recognises has) or a
/// `Sec-WebSocket-Key`. Such a request goes to the hub, whose handshake
/// check says what is wrong with it; a browser's plain request gets the
/// live page.
fn asks_for_websocket(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) || headers.contains_key(SEC_WEBSOCKET_KEY)
}

/// A product id from a path, in the form the store keeps ids: MongoDB ids
/// are case-insensitive hex.
fn product_id(id: &str) -> Result<String, ApiError> {
    if object_id::is_valid(id) {
        Ok(id.to_ascii_lowercase())
    } else {
        Err(ApiError::InvalidId)
    }
}

/// An anonymous client, counted by the address the server found for it
/// ([`ClientAddress`]) against the hub's per-address limit, resuming after
/// `?since=` if given. (Without it, an event stream resumes after its
/// `Last-Event-ID`, which the hub reads.)
fn client_admission<B>(request: &Request<B>) -> Admission {
    let admission = match request.extensions().get::<ClientAddress>() {
        Some(client) => Admission::anonymous().peer(client.0),
        None => Admission::anonymous(),
    };
    match since(request.uri().query()) {
        Some(since) => admission.since(&since),
        None => admission,
    }
}

/// The `since` query parameter of a WebSocket upgrade, decoded; `None`
/// when absent (a plain connection, whose welcome stays as the Ocha API's).
fn since(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(name, _)| name == "since")
        .map(|(_, value)| value.into_owned())
}

/// Reads the whole body, refusing more than [`MAX_BODY_BYTES`]: at once
/// when its `Content-Length` says so, before a byte of it is read (so a
/// client waiting on `Expect: 100-continue` is never asked to send it).
/// A body that fails as timed out ([`io::ErrorKind::TimedOut`]) gets 408.
async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: HttpBody,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if body.size_hint().lower() > MAX_BODY_BYTES as u64 {
        return Err(ApiError::BodyTooLarge);
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(ApiError::BodyTooLarge),
        Err(error)
            if error
                .downcast_ref::<io::Error>()
                .is_some_and(|error| error.kind() == io::ErrorKind::TimedOut) =>
        {
            Err(ApiError::BodyTimeout)
        }
        Err(error) => Err(ApiError::BodyUnreadable(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(path: &str) -> Option<String> {
        route(path).map(|route| match route {
            Route::Root => "root".to_owned(),
            Route::Asset(asset) => format!("{asset:?}"),
            Route::Health => "health".to_owned(),
            Route::Ready => "ready".to_owned(),
            Route::Events => "events".to_owned(),
            Route::Metrics => "metrics".to_owned(),
            Route::Products => "products".to_owned(),
            Route::Product(id) => format!("product {id}"),
            Route::Document(document) => format!("{document:?}"),
        })
    }

    #[test]
    fn routes_paths() {
        assert_eq!(routed("/").as_deref(), Some("root"));
        assert_eq!(routed("/app.js").as_deref(), Some("Script"));
        assert_eq!(routed("/app.css").as_deref(), Some("Style"));
        assert_eq!(routed("/api/v1/health").as_deref(), Some("health"));
        assert_eq!(routed("/api/v1/ready").as_deref(), Some("ready"));
        assert_eq!(routed("/api/v1/events").as_deref(), Some("events"));
        assert_eq!(routed("/api/v1/openapi.json").as_deref(), Some("OpenApi"));
        assert_eq!(routed("/api/v1/asyncapi.json").as_deref(), Some("AsyncApi"));
        assert_eq!(routed("/metrics").as_deref(), Some("metrics"));
        assert_eq!(routed("/metrics/").as_deref(), Some("metrics"));
        assert_eq!(routed("/api/v1/products").as_deref(), Some("products"));
        assert_eq!(routed("/api/v1/products/").as_deref(), Some("products"));
        assert_eq!(
            routed("/api/v1/products/abc").as_deref(),
            Some("product abc")
        );
        assert_eq!(
            routed("/api/v1/products/abc/").as_deref(),
            Some("product abc")
        );
        for unknown in [
            "",
            "//",
            "/api",
            "/api/v1",
            "/api/v1/",
            "/api/v2/products",
            "/api/v1/products//",
            "/api/v1/products/a/b",
            "/api/v1/healthz",
            "/app.js/",
            "/index.html",
            "/api/v1/metrics",
            "/metrics/x",
        ] {
            assert_eq!(routed(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn since_is_read_from_the_query() {
        assert_eq!(since(None), None);
        assert_eq!(since(Some("")), None);
        assert_eq!(since(Some("token=x")), None);
        assert_eq!(since(Some("since=")).as_deref(), Some(""));
        assert_eq!(since(Some("a=1&since=42")).as_deref(), Some("42"));
        assert_eq!(since(Some("since=%34%32")).as_deref(), Some("42"));
    }
}
