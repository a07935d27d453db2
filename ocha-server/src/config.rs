//! Configuration from the environment.
//!
//! | variable               | default          | meaning                                                      |
//! |------------------------|------------------|--------------------------------------------------------------|
//! | `PORT`                 | `5001`           | TCP port for HTTP and WebSocket                              |
//! | `HOST`                 | `0.0.0.0`        | IP address to listen on                                      |
//! | `DATABASE_URL`         | `sqlite:ocha.db` | `sqlite:<path>`, `sqlite::memory:` or `postgres://…` (below) |
//! | `JWT_SECRET`           | random per run   | HS256 secret shared with the token issuer (warned if < 32 B) |
//! | `WS_HEARTBEAT_SECS`    | `30`             | ping period, 1 to 3600 seconds                               |
//! | `WS_OUTBOUND_CAPACITY` | `256`            | messages queued per client before 4008                       |
//! | `WS_SEND_BUFFER_BYTES` | `32768`          | kernel send buffer per socket, or `os`                       |
//! | `WS_MAX_CONNECTIONS`   | unlimited        | open WebSockets; upgrades past it get 503                    |
//! | `WS_MAX_MESSAGE_BYTES` | `65536`          | largest client message; larger gets 1009                     |
//! | `WS_ALLOWED_ORIGINS`   | every origin     | comma-separated exact `Origin` allow-list                    |
//! | `SSE_HEARTBEAT_SECS`   | `15`             | comment line period on idle event streams, 1 to 3600 seconds |
//! | `EVENT_HISTORY`        | `1000`           | events kept for resuming clients (0: none)                   |
//! | `EVENT_HISTORY_SECS`   | `86400`          | how long an event is kept, in seconds                        |
//! | `REDIS_URL`            | none (one node)  | `redis://HOST:PORT`: nodes share events through Redis        |
//! | `EVENT_POLL_MS`        | `1000`           | how often the event log is read for events nobody announced  |
//! | `MAX_HTTP_CONNECTIONS` | see below        | connections speaking HTTP at once; more wait to be accepted  |
//! | `HEADER_TIMEOUT_SECS`  | `10`             | to send a request's headers; also the keep-alive idle time   |
//! | `BODY_TIMEOUT_SECS`    | `30`             | to send a request's body once its headers are in             |
//! | `MAX_HEADER_BYTES`     | `16384`          | request line and headers; larger gets 431                    |
//! | `MAX_CONNECTIONS_PER_IP` | unlimited        | WebSockets per client address; more get 429                  |
//! | `CORS_ORIGINS`         | none             | comma-separated exact origins whose pages may call the API   |
//!
//! The `WS_*` variables and `MAX_CONNECTIONS_PER_IP` tune the
//! [`ocha_realtime::Hub`]; see [`ocha_realtime::Config`] for what each
//! setting does. `MAX_CONNECTIONS_PER_IP` counts an IPv6 client by its /64
//! network, which one subscriber usually holds whole; leave it unset behind
//! a proxy, whose clients all share its address.
//!
//! The other limits guard against slow, huge and hostile HTTP clients; see
//! [`crate::server`] for how each is applied. `MAX_HTTP_CONNECTIONS`
//! defaults to the open-file limit less 64 descriptors for the database
//! and the rest of the process, and at most 10,000.
//!
//! `DATABASE_URL` names SQLite, embedded and private to this server, or a
//! Postgres server that several servers can share:
//! `postgres://user:password@host:port/database` (also `postgresql://`,
//! with libpq's URL parameters such as `connect_timeout`; TLS is not
//! supported, so `sslmode=require` fails to connect).
//!
//! An empty variable counts as unset, as in most shells' `VAR= cmd`.

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// Port used when `PORT` is unset.
pub const DEFAULT_PORT: u16 = 5001;
/// Address used when `HOST` is unset: every IPv4 interface.
pub const DEFAULT_HOST: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// Database used when `DATABASE_URL` is unset, relative to the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:ocha.db";
/// Longest heartbeat `WS_HEARTBEAT_SECS` accepts: a longer one would keep
/// dead clients for hours, and is more likely a value in milliseconds.
pub const MAX_HEARTBEAT_SECS: u64 = 3600;
/// Fewest bytes `MAX_HEADER_BYTES` accepts: hyper's smallest read buffer,
/// and room for a request line, a token and a few headers.
pub const MIN_HEADER_BYTES: usize = 8192;

/// Where products are stored.
///
/// `Debug` and `Display` mask a Postgres password, so either can be logged.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A private in-memory SQLite database, gone when the server stops.
    Memory,
    /// A SQLite database file, created if missing.
    File(PathBuf),
    /// A Postgres server, as a `postgres://` or `postgresql://` URL (in
    /// libpq's syntax, which `tokio_postgres::Config` parses). Several
    /// servers may share it.
    Postgres(String),
}

impl Database {
    /// Parses `sqlite:<path>`, `sqlite://<path>`, `sqlite::memory:`, or
    /// `postgres://user:password@host:port/db` (also `postgresql://`).
    pub fn from_url(url: &str) -> Result<Database, ConfigError> {
        let bad = || ConfigError::DatabaseUrl(redacted(url));
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // Checked now, so that a typo stops the server at start with
            // this message rather than at the first connection.
            url.parse::<tokio_postgres::Config>().map_err(|_| bad())?;
            return Ok(Database::Postgres(url.to_owned()));
        }
        let rest = url.strip_prefix("sqlite:").ok_or_else(bad)?;
        let path = rest.strip_prefix("//").unwrap_or(rest);
        match path {
            "" => Err(bad()),
            ":memory:" => Ok(Database::Memory),
            path => Ok(Database::File(PathBuf::from(path))),
        }
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Memory => f.write_str("sqlite::memory:"),
            Database::File(path) => write!(f, "sqlite:{}", path.display()),
            Database::Postgres(url) => f.write_str(&redacted(url)),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Memory => f.write_str("Memory"),
            Database::File(path) => f.debug_tuple("File").field(path).finish(),
            Database::Postgres(url) => f.debug_tuple("Postgres").field(&redacted(url)).finish(),
        }
    }
}

/// `url` with any password replaced by `***`: the one in the credentials
/// and a `password` parameter. The credentials end at the first `@`, where
/// `tokio_postgres` ends them too, so what it would send as the password is
/// what is masked.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (credentials, rest) = match rest.split_once('@') {
        Some((credentials, rest)) => (Some(credentials), rest),
        None => (None, rest),
    };
    let mut masked = format!("{scheme}://");
    if let Some(credentials) = credentials {
        match credentials.split_once(':') {
            Some((user, _)) => masked.push_str(&format!("{user}:***@")),
            None => masked.push_str(&format!("{credentials}@")),
        }
    }
    let (location, query) = match rest.split_once('?') {
        Some((location, query)) => (location, Some(query)),
        None => (rest, None),
    };
    masked.push_str(location);
    if let Some(query) = query {
        let parameters: Vec<_> = query
            .split('&')
            .map(|parameter| match parameter.split_once('=') {
                Some(("password", _)) => "password=***",
                _ => parameter,
            })
            .collect();
        masked.push('?');
        masked.push_str(&parameters.join("&"));
    }
    masked
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The variable holds bytes that are not UTF-8.
    #[error("{0} is not valid UTF-8")]
    NotUnicode(&'static str),
    /// `PORT` is not a port number.
    #[error("PORT must be a port number from 0 to 65535, got {0:?}")]
    Port(String),
    /// `HOST` is not an IP address.
    #[error("HOST must be an IP address such as 0.0.0.0, 127.0.0.1 or ::, got {0:?}")]
    Host(String),
    /// `DATABASE_URL` is neither a SQLite nor a Postgres URL; holds it,
    /// password masked.
    #[error(
        "DATABASE_URL must be sqlite:<path>, sqlite::memory: or \
         postgres://user:password@host:port/database, got {0:?}"
    )]
    DatabaseUrl(String),
    /// `WS_HEARTBEAT_SECS` or `SSE_HEARTBEAT_SECS` is not a number of
    /// seconds in range.
    #[error("{0} must be a whole number of seconds from 1 to {MAX_HEARTBEAT_SECS}, got {1:?}")]
    Heartbeat(&'static str, String),
    /// A count, size or number of seconds is not a positive integer.
    #[error("{0} must be a positive integer, got {1:?}")]
    NotPositive(&'static str, String),
    /// `WS_SEND_BUFFER_BYTES` is neither a size nor `os`.
    #[error("WS_SEND_BUFFER_BYTES must be a positive number of bytes or \"os\", got {0:?}")]
    SendBuffer(String),
    /// `WS_ALLOWED_ORIGINS` holds something that is not an origin.
    #[error("WS_ALLOWED_ORIGINS must be comma-separated origins such as https://shop.example, got {0:?}")]
    AllowedOrigins(String),
    /// `EVENT_HISTORY` is not a number of events.
    #[error("EVENT_HISTORY must be a whole number of events, got {0:?}")]
    History(String),
    /// `REDIS_URL` is not a Redis URL.
    #[error("REDIS_URL must be redis://HOST:PORT, got {0:?}")]
    RedisUrl(String),
    /// `MAX_HEADER_BYTES` is not a size hyper can work with.
    #[error("MAX_HEADER_BYTES must be a number of bytes from {MIN_HEADER_BYTES}, got {0:?}")]
    HeaderBytes(String),
    /// `CORS_ORIGINS` holds something that is not an origin.
    #[error(
        "CORS_ORIGINS must be comma-separated origins such as https://admin.example, got {0:?}"
    )]
    CorsOrigins(String),
}

/// Event history and sharing, from `EVENT_HISTORY`, `EVENT_HISTORY_SECS`,
/// `REDIS_URL` and `EVENT_POLL_MS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSettings {
    /// Events kept for resuming clients, in memory and in the database.
    pub history: usize,
    /// How long an event is kept.
    pub history_age: Duration,
    /// The Redis server nodes share events through, if any.
    pub redis_url: Option<String>,
    /// How often the event log is read for events nobody announced.
    pub poll_interval: Duration,
}

impl Default for EventSettings {
    fn default() -> Self {
        EventSettings {
            history: 1000,
            history_age: Duration::from_secs(24 * 60 * 60),
            redis_url: None,
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl EventSettings {
    fn from_lookup(
        lookup: &impl Fn(&str) -> Option<OsString>,
    ) -> Result<EventSettings, ConfigError> {
        let defaults = EventSettings::default();
        let history = var(lookup, "EVENT_HISTORY")?
            .map(|events| events.parse().map_err(|_| ConfigError::History(events)))
            .transpose()?
            .unwrap_or(defaults.history);
        let redis_url = var(lookup, "REDIS_URL")?
            .map(|url| match url.strip_prefix("redis://") {
                Some(rest) if !rest.is_empty() => Ok(url),
                _ => Err(ConfigError::RedisUrl(url)),
            })
            .transpose()?;
        let seconds = |name| positive(lookup, name);
        Ok(EventSettings {
            history,
            history_age: seconds("EVENT_HISTORY_SECS")?.map_or(defaults.history_age, |secs| {
                Duration::from_secs(secs as u64)
            }),
            redis_url,
            poll_interval: positive(lookup, "EVENT_POLL_MS")?
                .map_or(defaults.poll_interval, |ms| {
                    Duration::from_millis(ms as u64)
                }),
        })
    }
}

/// Limits on HTTP connections and requests, from `MAX_HTTP_CONNECTIONS`,
/// `HEADER_TIMEOUT_SECS`, `BODY_TIMEOUT_SECS` and `MAX_HEADER_BYTES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Most connections speaking HTTP at once (upgraded WebSockets no
    /// longer count); `None` derives it from the open-file limit at start.
    pub max_connections: Option<usize>,
    /// How long a connection may take to send a request's headers, from
    /// when it is ready for one: accepted, or its previous response sent.
    /// hyper runs one timer for both, so it is also how long an idle
    /// keep-alive connection stays open.
    pub header_timeout: Duration,
    /// How long a request's body may take to arrive once its headers are in.
    pub body_timeout: Duration,
    /// Most bytes in a request line and headers.
    pub max_header_bytes: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            max_connections: None,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            // Node's default, so every request the Ocha API accepts fits.
            max_header_bytes: 16 * 1024,
        }
    }
}

impl HttpSettings {
    fn from_lookup(
        lookup: &impl Fn(&str) -> Option<OsString>,
    ) -> Result<HttpSettings, ConfigError> {
        let defaults = HttpSettings::default();
        let seconds = |name, default| {
            positive(lookup, name)
                .map(|secs| secs.map_or(default, |secs| Duration::from_secs(secs as u64)))
        };
        let max_header_bytes = var(lookup, "MAX_HEADER_BYTES")?
            .map(|bytes| match bytes.parse() {
                Ok(n) if n >= MIN_HEADER_BYTES => Ok(n),
                _ => Err(ConfigError::HeaderBytes(bytes)),
            })
            .transpose()?
            .unwrap_or(defaults.max_header_bytes);
        Ok(HttpSettings {
            max_connections: positive(lookup, "MAX_HTTP_CONNECTIONS")?,
            header_timeout: seconds("HEADER_TIMEOUT_SECS", defaults.header_timeout)?,
            body_timeout: seconds("BODY_TIMEOUT_SECS", defaults.body_timeout)?,
            max_header_bytes,
        })
    }
}

/// How the WebSocket hub behaves, from the `WS_*` variables and
/// `MAX_CONNECTIONS_PER_IP`. A variable left unset keeps
/// [`ocha_realtime::Config`]'s default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubSettings {
    /// From `WS_HEARTBEAT_SECS`.
    pub heartbeat: Option<Duration>,
    /// From `WS_OUTBOUND_CAPACITY`.
    pub outbound_capacity: Option<usize>,
    /// From `WS_SEND_BUFFER_BYTES`; `Some(None)` (from `os`) leaves it to the
    /// operating system.
    pub send_buffer: Option<Option<usize>>,
    /// From `WS_MAX_CONNECTIONS`.
    pub max_connections: Option<usize>,
    /// From `WS_MAX_MESSAGE_BYTES`.
    pub max_message_bytes: Option<usize>,
    /// From `WS_ALLOWED_ORIGINS`.
    pub allowed_origins: Option<Vec<String>>,
    /// From `SSE_HEARTBEAT_SECS`.
    pub sse_heartbeat: Option<Duration>,
    /// From `MAX_CONNECTIONS_PER_IP`.
    pub max_connections_per_peer: Option<usize>,
}

impl HubSettings {
    /// The hub configuration: the library's defaults with these settings.
    pub fn realtime_config(&self) -> ocha_realtime::Config {
        let mut config = ocha_realtime::Config::default();
        if let Some(interval) = self.heartbeat {
            config = config.heartbeat_interval(interval);
        }
        if let Some(messages) = self.outbound_capacity {
            config = config.outbound_capacity(messages);
        }
        if let Some(bytes) = self.send_buffer {
            config = config.send_buffer_size(bytes);
        }
        if let Some(connections) = self.max_connections {
            config = config.max_connections(connections);
        }
        if let Some(bytes) = self.max_message_bytes {
            config = config.max_message_size(bytes);
        }
        if let Some(origins) = &self.allowed_origins {
            config = config.allowed_origins(origins);
        }
        if let Some(interval) = self.sse_heartbeat {
            config = config.sse_heartbeat_interval(interval);
        }
        if let Some(connections) = self.max_connections_per_peer {
            config = config.max_connections_per_peer(connections);
        }
        config
    }

    fn from_lookup(lookup: &impl Fn(&str) -> Option<OsString>) -> Result<HubSettings, ConfigError> {
        let heartbeat = |name| {
            var(lookup, name)?
                .map(|secs| match secs.parse() {
                    Ok(secs @ 1..=MAX_HEARTBEAT_SECS) => Ok(Duration::from_secs(secs)),
                    _ => Err(ConfigError::Heartbeat(name, secs)),
                })
                .transpose()
        };
        let send_buffer = var(lookup, "WS_SEND_BUFFER_BYTES")?
            .map(|bytes| match bytes.as_str() {
                "os" => Ok(None),
                _ => bytes
                    .parse::<NonZeroUsize>()
                    .map(|bytes| Some(bytes.get()))
                    .map_err(|_| ConfigError::SendBuffer(bytes)),
            })
            .transpose()?;
        Ok(HubSettings {
            heartbeat: heartbeat("WS_HEARTBEAT_SECS")?,
            sse_heartbeat: heartbeat("SSE_HEARTBEAT_SECS")?,
            outbound_capacity: positive(lookup, "WS_OUTBOUND_CAPACITY")?,
            send_buffer,
            max_connections: positive(lookup, "WS_MAX_CONNECTIONS")?,
            max_message_bytes: positive(lookup, "WS_MAX_MESSAGE_BYTES")?,
            allowed_origins: var(lookup, "WS_ALLOWED_ORIGINS")?
                .map(|list| origins(&list, ConfigError::AllowedOrigins))
                .transpose()?,
            max_connections_per_peer: positive(lookup, "MAX_CONNECTIONS_PER_IP")?,
        })
    }
}

/// Everything the server reads from its environment.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Address to listen on, from `HOST` and `PORT`.
    pub addr: SocketAddr,
    /// From `DATABASE_URL`.
    pub database: Database,
    /// From `JWT_SECRET`; `None` means "generate one for this run".
    pub jwt_secret: Option<String>,
    /// From the `WS_*` variables.
    pub hub: HubSettings,
    /// From the `EVENT_*` variables and `REDIS_URL`.
    pub events: EventSettings,
    /// From the HTTP limits' variables.
    pub http: HttpSettings,
    /// From `CORS_ORIGINS`; empty when unset.
    pub cors_origins: Vec<String>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret stays out of logs and panic messages.
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("database", &self.database)
            .field(
                "jwt_secret",
                &self.jwt_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("hub", &self.hub)
            .field("events", &self.events)
            .field("http", &self.http)
            .field("cors_origins", &self.cors_origins)
            .finish()
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var_os(name))
    }

    /// Reads variables through `lookup`, so tests need not touch the
    /// process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Config, ConfigError> {
        let port = match var(&lookup, "PORT")? {
            Some(port) => port.parse().map_err(|_| ConfigError::Port(port))?,
            None => DEFAULT_PORT,
        };
        let host = match var(&lookup, "HOST")? {
            Some(host) => host.parse().map_err(|_| ConfigError::Host(host))?,
            None => DEFAULT_HOST,
        };
        let database = match var(&lookup, "DATABASE_URL")? {
            Some(url) => Database::from_url(&url)?,
            None => Database::from_url(DEFAULT_DATABASE_URL)?,
        };
        Ok(Config {
            addr: SocketAddr::new(host, port),
            database,
            jwt_secret: jwt_secret(&lookup)?,
            hub: HubSettings::from_lookup(&lookup)?,
            events: EventSettings::from_lookup(&lookup)?,
            http: HttpSettings::from_lookup(&lookup)?,
            cors_origins: var(&lookup, "CORS_ORIGINS")?
                .map(|list| origins(&list, ConfigError::CorsOrigins))
                .transpose()?
                .unwrap_or_default(),
        })
    }
}

/// Reads `JWT_SECRET` alone, for the `token` command.
pub fn jwt_secret(
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Result<Option<String>, ConfigError> {
    var(&lookup, "JWT_SECRET")
}

fn var(
    lookup: &impl Fn(&str) -> Option<OsString>,
    name: &'static str,
) -> Result<Option<String>, ConfigError> {
    match lookup(name) {
        None => Ok(None),
        Some(value) if value.is_empty() => Ok(None),
        Some(value) => value
            .into_string()
            .map(Some)
            .map_err(|_| ConfigError::NotUnicode(name)),
    }
}

fn positive(
    lookup: &impl Fn(&str) -> Option<OsString>,
    name: &'static str,
) -> Result<Option<usize>, ConfigError> {
    var(lookup, name)?
        .map(|value| match value.parse::<NonZeroUsize>() {
            Ok(n) => Ok(n.get()),
            Err(_) => Err(ConfigError::NotPositive(name, value)),
        })
        .transpose()
}

/// Splits `WS_ALLOWED_ORIGINS` or `CORS_ORIGINS`, reporting a bad `list`
/// with `error`. Browsers send `scheme://host[:port]` and both are compared
/// exactly, so an entry with a path (even a trailing `/`) or `*` would
/// silently refuse every browser: reject it instead.
fn origins(list: &str, error: fn(String) -> ConfigError) -> Result<Vec<String>, ConfigError> {
    list.split(',')
        .map(|origin| match origin.trim().split_once("://") {
            Some((scheme, host))
                if !scheme.is_empty() && !host.is_empty() && !host.contains('/') =>
            {
                Ok(origin.trim().to_owned())
            }
            _ => Err(error(list.to_owned())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_lookup(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| OsString::from(value))
        })
    }

    fn config_error(database_url: &str) -> String {
        config(&[("DATABASE_URL", database_url)])
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults() {
        let config = config(&[]).unwrap();
        assert_eq!(config.addr, "0.0.0.0:5001".parse().unwrap());
        assert_eq!(config.database, Database::File("ocha.db".into()));
        assert_eq!(config.jwt_secret, None);
        assert_eq!(config.hub, HubSettings::default());
        assert_eq!(config.events, EventSettings::default());
        assert!(config.cors_origins.is_empty());
        assert_eq!(config.http, HttpSettings::default());
    }

    #[test]
    fn http_settings() {
        let config = config(&[
            ("MAX_HTTP_CONNECTIONS", "500"),
            ("HEADER_TIMEOUT_SECS", "5"),
            ("BODY_TIMEOUT_SECS", "60"),
            ("MAX_HEADER_BYTES", "32768"),
        ])
        .unwrap();
        assert_eq!(
            config.http,
            HttpSettings {
                max_connections: Some(500),
                header_timeout: Duration::from_secs(5),
                body_timeout: Duration::from_secs(60),
                max_header_bytes: 32768,
            }
        );
        for (name, bad, error) in [
            (
                "MAX_HTTP_CONNECTIONS",
                "0",
                ConfigError::NotPositive("MAX_HTTP_CONNECTIONS", "0".into()),
            ),
            (
                "HEADER_TIMEOUT_SECS",
                "0",
                ConfigError::NotPositive("HEADER_TIMEOUT_SECS", "0".into()),
            ),
            (
                "BODY_TIMEOUT_SECS",
                "1.5",
                ConfigError::NotPositive("BODY_TIMEOUT_SECS", "1.5".into()),
            ),
            (
                "MAX_HEADER_BYTES",
                "8191",
                ConfigError::HeaderBytes("8191".into()),
            ),
            (
                "MAX_HEADER_BYTES",
                "16k",
                ConfigError::HeaderBytes("16k".into()),
            ),
        ] {
            assert_eq!(
                self::config(&[(name, bad)]).err(),
                Some(error),
                "{name}={bad}"
            );
        }
    }

    #[test]
    fn cors_origins_are_exact_origins() {
        let config = config(&[(
            "CORS_ORIGINS",
            "https://admin.example, http://localhost:3000",
        )])
        .unwrap();
        assert_eq!(
            config.cors_origins,
            ["https://admin.example", "http://localhost:3000"]
        );
        for bad in [
            "*",
            "admin.example",
            "https://admin.example/",
            "https://a.example,,",
        ] {
            assert_eq!(
                self::config(&[("CORS_ORIGINS", bad)]),
                Err(ConfigError::CorsOrigins(bad.into()))
            );
        }
        assert_eq!(
            self::config(&[("CORS_ORIGINS", "*")])
                .unwrap_err()
                .to_string(),
            r#"CORS_ORIGINS must be comma-separated origins such as https://admin.example, got "*""#
        );
    }

    #[test]
    fn event_settings() {
        let config = config(&[
            ("EVENT_HISTORY", "0"),
            ("EVENT_HISTORY_SECS", "60"),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            ("EVENT_POLL_MS", "250"),
        ])
        .unwrap();
        assert_eq!(
            config.events,
            EventSettings {
                history: 0,
                history_age: Duration::from_secs(60),
                redis_url: Some("redis://127.0.0.1:6379".into()),
                poll_interval: Duration::from_millis(250),
            }
        );
        for (name, bad, error) in [
            ("EVENT_HISTORY", "-1", ConfigError::History("-1".into())),
            (
                "EVENT_HISTORY_SECS",
                "0",
                ConfigError::NotPositive("EVENT_HISTORY_SECS", "0".into()),
            ),
            (
                "EVENT_POLL_MS",
                "x",
                ConfigError::NotPositive("EVENT_POLL_MS", "x".into()),
            ),
            (
                "REDIS_URL",
                "localhost:6379",
                ConfigError::RedisUrl("localhost:6379".into()),
            ),
            (
                "REDIS_URL",
                "redis://",
                ConfigError::RedisUrl("redis://".into()),
            ),
        ] {
            assert_eq!(
                self::config(&[(name, bad)]).err(),
                Some(error),
                "{name}={bad}"
            );
        }
    }

    #[test]
    fn unset_hub_variables_keep_the_library_defaults() {
        // `ocha_realtime::Config` has no accessors or `PartialEq`; its
        // derived `Debug` shows every field.
        assert_eq!(
            format!("{:?}", HubSettings::default().realtime_config()),
            format!("{:?}", ocha_realtime::Config::default())
        );
    }

    #[test]
    fn reads_every_variable() {
        let config = config(&[
            ("PORT", "8080"),
            ("HOST", "::1"),
            ("DATABASE_URL", "sqlite:///var/lib/ocha/products.db"),
            ("JWT_SECRET", "s3cret"),
        ])
        .unwrap();
        assert_eq!(config.addr, "[::1]:8080".parse().unwrap());
        assert_eq!(
            config.database,
            Database::File("/var/lib/ocha/products.db".into())
        );
        assert_eq!(config.jwt_secret.as_deref(), Some("s3cret"));
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn reads_every_hub_variable() {
        let hub = config(&[
            ("WS_HEARTBEAT_SECS", "15"),
            ("WS_OUTBOUND_CAPACITY", "1024"),
            ("WS_SEND_BUFFER_BYTES", "65536"),
            ("WS_MAX_CONNECTIONS", "10000"),
            ("WS_MAX_MESSAGE_BYTES", "4096"),
            (
                "WS_ALLOWED_ORIGINS",
                "https://shop.example, http://localhost:3000",
            ),
            ("SSE_HEARTBEAT_SECS", "5"),
            ("MAX_CONNECTIONS_PER_IP", "20"),
        ])
        .unwrap()
        .hub;
        assert_eq!(
            hub,
            HubSettings {
                heartbeat: Some(Duration::from_secs(15)),
                outbound_capacity: Some(1024),
                send_buffer: Some(Some(65536)),
                max_connections: Some(10_000),
                max_message_bytes: Some(4096),
                allowed_origins: Some(vec![
                    "https://shop.example".into(),
                    "http://localhost:3000".into()
                ]),
                sse_heartbeat: Some(Duration::from_secs(5)),
                max_connections_per_peer: Some(20),
            }
        );
        let os = config(&[("WS_SEND_BUFFER_BYTES", "os")]).unwrap().hub;
        assert_eq!(os.send_buffer, Some(None));
    }

    #[test]
    fn empty_values_count_as_unset() {
        let config = config(&[
            ("PORT", ""),
            ("JWT_SECRET", ""),
            ("WS_MAX_CONNECTIONS", ""),
            ("WS_ALLOWED_ORIGINS", ""),
        ])
        .unwrap();
        assert_eq!(config.addr.port(), DEFAULT_PORT);
        assert_eq!(config.jwt_secret, None);
        assert_eq!(config.hub, HubSettings::default());
    }

    #[test]
    fn parses_database_urls() {
        assert_eq!(Database::from_url("sqlite::memory:"), Ok(Database::Memory));
        assert_eq!(
            Database::from_url("sqlite://:memory:"),
            Ok(Database::Memory)
        );
        assert_eq!(
            Database::from_url("sqlite:data/x.db"),
            Ok(Database::File("data/x.db".into()))
        );
        assert_eq!(
            Database::from_url("sqlite://x.db"),
            Ok(Database::File("x.db".into()))
        );
        for postgres in [
            "postgres://ocha:s3cret@db.example:5433/products",
            "postgresql://ocha@localhost/ocha",
            "postgres://localhost",
        ] {
            assert_eq!(
                Database::from_url(postgres),
                Ok(Database::Postgres(postgres.into()))
            );
        }
        for bad in [
            "mysql://localhost/ocha",
            "postgres://host:port/ocha",
            "postgres://localhost/ocha?sslmode=sometimes",
            "sqlite:",
            "sqlite://",
            "ocha.db",
        ] {
            assert_eq!(
                Database::from_url(bad),
                Err(ConfigError::DatabaseUrl(bad.into()))
            );
        }
        assert_eq!(Database::Memory.to_string(), "sqlite::memory:");
        assert_eq!(Database::File("x.db".into()).to_string(), "sqlite:x.db");
    }

    #[test]
    fn never_shows_a_postgres_password() {
        let database =
            Database::from_url("postgres://ocha:s3cret@db.example:5433/products").unwrap();
        assert_eq!(
            database.to_string(),
            "postgres://ocha:***@db.example:5433/products"
        );
        assert_eq!(
            format!("{database:?}"),
            r#"Postgres("postgres://ocha:***@db.example:5433/products")"#
        );
        let config = config(&[(
            "DATABASE_URL",
            "postgresql://ocha@db.example/products?password=s3cret&connect_timeout=5",
        )])
        .unwrap();
        assert_eq!(
            config.database.to_string(),
            "postgresql://ocha@db.example/products?password=***&connect_timeout=5"
        );
        assert!(!format!("{config:?}").contains("s3cret"));
        // Nor does the error for a URL that does not parse.
        let error = config_error("postgres://ocha:s3cret@db.example:port/products");
        assert!(!error.contains("s3cret"), "{error}");
        assert_eq!(
            error,
            "DATABASE_URL must be sqlite:<path>, sqlite::memory: or \
             postgres://user:password@host:port/database, \
             got \"postgres://ocha:***@db.example:port/products\""
        );
    }

    #[test]
    fn rejects_bad_values_with_a_clear_message() {
        assert_eq!(
            config(&[("PORT", "70000")]),
            Err(ConfigError::Port("70000".into()))
        );
        assert_eq!(
            config(&[("PORT", "http")]),
            Err(ConfigError::Port("http".into()))
        );
        assert_eq!(
            config(&[("HOST", "localhost")]),
            Err(ConfigError::Host("localhost".into()))
        );
        assert_eq!(
            config(&[("PORT", "abc")]).unwrap_err().to_string(),
            r#"PORT must be a port number from 0 to 65535, got "abc""#
        );
    }

    #[test]
    fn rejects_bad_hub_values_with_a_clear_message() {
        for secs in ["0", "3601", "-5", "1.5", "30s"] {
            assert_eq!(
                config(&[("WS_HEARTBEAT_SECS", secs)]),
                Err(ConfigError::Heartbeat("WS_HEARTBEAT_SECS", secs.into()))
            );
        }
        for name in [
            "WS_OUTBOUND_CAPACITY",
            "WS_MAX_CONNECTIONS",
            "WS_MAX_MESSAGE_BYTES",
            "MAX_CONNECTIONS_PER_IP",
        ] {
            for bad in ["0", "-1", "zero", "64KiB"] {
                assert_eq!(
                    config(&[(name, bad)]),
                    Err(ConfigError::NotPositive(name, bad.into()))
                );
            }
        }
        for bad in ["0", "OS", "32k"] {
            assert_eq!(
                config(&[("WS_SEND_BUFFER_BYTES", bad)]),
                Err(ConfigError::SendBuffer(bad.into()))
            );
        }
        for bad in [
            "*",
            "shop.example",
            "https://shop.example/",
            "https://a.example,,https://b.example",
            "https://",
        ] {
            assert_eq!(
                config(&[("WS_ALLOWED_ORIGINS", bad)]),
                Err(ConfigError::AllowedOrigins(bad.into()))
            );
        }
        assert_eq!(
            config(&[("WS_OUTBOUND_CAPACITY", "zero")])
                .unwrap_err()
                .to_string(),
            r#"WS_OUTBOUND_CAPACITY must be a positive integer, got "zero""#
        );
    }

    #[cfg(unix)]
    #[test]
    fn rejects_non_unicode_values() {
        use std::os::unix::ffi::OsStringExt;
        let result =
            Config::from_lookup(|name| (name == "HOST").then(|| OsString::from_vec(vec![0xff])));
        assert_eq!(result, Err(ConfigError::NotUnicode("HOST")));
    }
}
