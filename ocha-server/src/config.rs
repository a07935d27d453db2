//! Configuration from the environment.
//!
//! | variable       | default          | meaning                                   |
//! |----------------|------------------|-------------------------------------------|
//! | `PORT`         | `5001`           | TCP port for HTTP and WebSocket           |
//! | `HOST`         | `0.0.0.0`        | IP address to listen on                   |
//! | `DATABASE_URL` | `sqlite:ocha.db` | `sqlite:<path>` or `sqlite::memory:`      |
//! | `JWT_SECRET`   | random per run   | HS256 secret shared with the token issuer |
//!
//! An empty variable counts as unset, as in most shells' `VAR= cmd`.

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use thiserror::Error;

/// Port used when `PORT` is unset.
pub const DEFAULT_PORT: u16 = 5001;
/// Address used when `HOST` is unset: every IPv4 interface.
pub const DEFAULT_HOST: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// Database used when `DATABASE_URL` is unset, relative to the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:ocha.db";

/// Where products are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A private in-memory database, gone when the server stops.
    Memory,
    /// A database file, created if missing.
    File(PathBuf),
}

impl Database {
    /// Parses `sqlite:<path>`, `sqlite://<path>` or `sqlite::memory:`.
    pub fn from_url(url: &str) -> Result<Database, ConfigError> {
        let bad = || ConfigError::DatabaseUrl(url.to_owned());
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
        }
    }
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
    /// `DATABASE_URL` is not a SQLite URL.
    #[error("DATABASE_URL must be sqlite:<path> or sqlite::memory:, got {0:?}")]
    DatabaseUrl(String),
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

    #[test]
    fn defaults() {
        let config = config(&[]).unwrap();
        assert_eq!(config.addr, "0.0.0.0:5001".parse().unwrap());
        assert_eq!(config.database, Database::File("ocha.db".into()));
        assert_eq!(config.jwt_secret, None);
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
    fn empty_values_count_as_unset() {
        let config = config(&[("PORT", ""), ("JWT_SECRET", "")]).unwrap();
        assert_eq!(config.addr.port(), DEFAULT_PORT);
        assert_eq!(config.jwt_secret, None);
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
        for bad in [
            "postgres://localhost/ocha",
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

    #[cfg(unix)]
    #[test]
    fn rejects_non_unicode_values() {
        use std::os::unix::ffi::OsStringExt;
        let result =
            Config::from_lookup(|name| (name == "HOST").then(|| OsString::from_vec(vec![0xff])));
        assert_eq!(result, Err(ConfigError::NotUnicode("HOST")));
    }
}
