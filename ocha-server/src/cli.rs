//! The command line: serve (no arguments) or print an admin token.

use std::ffi::OsString;
use std::time::Duration;

use thiserror::Error;
use time::OffsetDateTime;

use crate::auth::{Keys, DEFAULT_TTL};
use crate::object_id;

/// Usage text, printed by `--help` and after a usage error.
pub const USAGE: &str = "\
Usage:
  ocha-server                  serve HTTP and WebSocket (configured by PORT, HOST,
                               DATABASE_URL, JWT_SECRET and RUST_LOG)
  ocha-server token --role ROLE [--id ID] [--ttl TTL]
                               print a token signed with JWT_SECRET
                               ID defaults to a fresh ObjectId; TTL is a number
                               with a unit s, m, h or d (default 1d)
  ocha-server --help           print this help";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the server.
    Serve,
    /// Print a signed token.
    Token(TokenRequest),
    /// Print the usage text.
    Help,
}

/// The claims and lifetime of a token to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The `role` claim; `admin` may create products.
    pub role: String,
    /// The `id` claim; `None` means a fresh ObjectId.
    pub id: Option<String>,
    /// Time until `exp`.
    pub ttl: Duration,
}

impl TokenRequest {
    /// Signs the token with `keys`.
    pub fn sign(&self, keys: &Keys) -> String {
        let id = match &self.id {
            Some(id) => id.clone(),
            None => object_id::generate(OffsetDateTime::now_utc().unix_timestamp()),
        };
        keys.issue(&id, &self.role, self.ttl)
    }
}

/// A command line that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UsageError {
    /// An argument is not valid UTF-8.
    #[error("arguments must be valid UTF-8")]
    NotUnicode,
    /// An argument or subcommand this program does not know.
    #[error("unexpected argument {0:?}")]
    Unexpected(String),
    /// An option given without its value.
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    /// `token` without `--role`.
    #[error("token needs --role")]
    MissingRole,
    /// A `--ttl` value that is not a positive number with a unit.
    #[error("--ttl must be a positive number followed by s, m, h or d (such as 7d), got {0:?}")]
    Ttl(String),
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut args = args
        .into_iter()
        .map(|arg| arg.into_string().map_err(|_| UsageError::NotUnicode));
    match args.next().transpose()?.as_deref() {
        None => Ok(Command::Serve),
        Some("-h" | "--help" | "help") => Ok(Command::Help),
        Some("token") => parse_token(args),
        Some(other) => Err(UsageError::Unexpected(other.to_owned())),
    }
}

/// The options of `token`.
#[derive(Clone, Copy)]
enum TokenOption {
    Role,
    Id,
    Ttl,
}

impl TokenOption {
    fn flag(self) -> &'static str {
        match self {
            TokenOption::Role => "--role",
            TokenOption::Id => "--id",
            TokenOption::Ttl => "--ttl",
        }
    }
}

fn parse_token(
    mut args: impl Iterator<Item = Result<String, UsageError>>,
) -> Result<Command, UsageError> {
    let (mut role, mut id, mut ttl) = (None, None, DEFAULT_TTL);
    while let Some(arg) = args.next().transpose()? {
        // Accept both `--role admin` and `--role=admin`.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg, None),
        };
        let option = match flag.as_str() {
            "--role" => TokenOption::Role,
            "--id" => TokenOption::Id,
            "--ttl" => TokenOption::Ttl,
            "-h" | "--help" => return Ok(Command::Help),
            _ => return Err(UsageError::Unexpected(flag)),
        };
        let value = match inline {
            Some(value) => value,
            None => args.next().transpose()?.unwrap_or_default(),
        };
        if value.is_empty() {
            return Err(UsageError::MissingValue(option.flag()));
        }
        match option {
            TokenOption::Role => role = Some(value),
            TokenOption::Id => id = Some(value),
            TokenOption::Ttl => ttl = parse_ttl(&value)?,
        }
    }
    Ok(Command::Token(TokenRequest {
        role: role.ok_or(UsageError::MissingRole)?,
        id,
        ttl,
    }))
}

/// Parses a lifetime such as `30s`, `15m`, `12h` or `7d`.
pub fn parse_ttl(text: &str) -> Result<Duration, UsageError> {
    let bad = || UsageError::Ttl(text.to_owned());
    let unit_start = text.char_indices().last().map_or(0, |(at, _)| at);
    let (number, unit) = text.split_at(unit_start);
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => return Err(bad()),
    };
    if !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    number
        .parse::<u64>()
        .ok()
        .filter(|&n| n > 0)
        .and_then(|n| n.checked_mul(unit_secs))
        .map(Duration::from_secs)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_args(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    fn token(role: &str, id: Option<&str>, ttl: Duration) -> Result<Command, UsageError> {
        Ok(Command::Token(TokenRequest {
            role: role.into(),
            id: id.map(Into::into),
            ttl,
        }))
    }

    #[test]
    fn no_arguments_serves() {
        assert_eq!(parse_args(&[]), Ok(Command::Serve));
        assert_eq!(parse_args(&["--help"]), Ok(Command::Help));
        assert_eq!(parse_args(&["token", "-h"]), Ok(Command::Help));
    }

    #[test]
    fn parses_token_options() {
        assert_eq!(
            parse_args(&["token", "--role", "admin"]),
            token("admin", None, DEFAULT_TTL)
        );
        assert_eq!(
            parse_args(&["token", "--ttl=7d", "--id", "u1", "--role=user"]),
            token("user", Some("u1"), Duration::from_secs(7 * 86_400))
        );
    }

    #[test]
    fn rejects_bad_command_lines() {
        assert_eq!(
            parse_args(&["serve"]),
            Err(UsageError::Unexpected("serve".into()))
        );
        assert_eq!(parse_args(&["token"]), Err(UsageError::MissingRole));
        assert_eq!(
            parse_args(&["token", "--role"]),
            Err(UsageError::MissingValue("--role"))
        );
        assert_eq!(
            parse_args(&["token", "--role="]),
            Err(UsageError::MissingValue("--role"))
        );
        assert_eq!(
            parse_args(&["token", "--role", "admin", "--admin"]),
            Err(UsageError::Unexpected("--admin".into()))
        );
        assert_eq!(
            parse_args(&["token", "--role", "admin", "--ttl", "7w"]),
            Err(UsageError::Ttl("7w".into()))
        );
    }

    #[test]
    fn signs_the_requested_claims() {
        let keys = Keys::from_secret(b"secret");
        let request = TokenRequest {
            role: "admin".into(),
            id: None,
            ttl: Duration::from_secs(90),
        };
        let claims = keys.verify(&request.sign(&keys)).unwrap();
        assert!(object_id::is_valid(&claims.id));
        assert_eq!(
            (claims.role.as_str(), claims.exp - claims.iat),
            ("admin", 90)
        );

        let request = TokenRequest {
            id: Some("u7".into()),
            ..request
        };
        assert_eq!(keys.verify(&request.sign(&keys)).unwrap().id, "u7");
    }

    #[test]
    fn parses_ttls() {
        assert_eq!(parse_ttl("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        for bad in [
            "",
            "d",
            "7",
            "0d",
            "-1d",
            "+1d",
            "1.5h",
            "7 d",
            "99999999999999999999d",
            "1é",
        ] {
            assert_eq!(parse_ttl(bad), Err(UsageError::Ttl(bad.into())), "{bad}");
        }
    }
}
