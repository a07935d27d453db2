//! Admin authorization from an `Authorization` header: never panics, and
//! admits a request only when its token is at most 8 KiB, carries an
//! HMAC-SHA256 of its header and payload under the server's key, says
//! `HS256` with no `crit`, has the admin role, is past its `nbf` and has not
//! expired. A well-formed admin token signed with the key is admitted.
//!
//! Tokens are built here from fuzzed parts and signed (or not) with an
//! independent HMAC implementation, then possibly tampered with.

#![no_main]

use std::time::{SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use libfuzzer_sys::fuzz_target;
use ocha_fuzz::{object, Json, Slot, Text};
use ocha_server::auth::{Keys, ADMIN_ROLE, MAX_TOKEN_BYTES};
use serde::Deserialize;
use sha2::Sha256;

/// The server's `JWT_SECRET`.
const SECRET: &[u8] = b"fuzz-secret";

#[derive(Debug, Arbitrary)]
enum Input<'a> {
    /// Any header value.
    Raw(&'a [u8]),
    /// A token built from parts.
    Token(Box<Token>),
}

#[derive(Debug, Arbitrary)]
struct Token {
    /// `Bearer`, `bearer` or anything.
    scheme: Scheme,
    alg: Alg,
    header_extra: Vec<(Text, Json)>,
    id: Slot<String>,
    role: Slot<Role>,
    iat: Slot<u64>,
    exp: Slot<Exp>,
    claims_extra: Vec<(Text, Json)>,
    key: Key,
    /// Bytes of the token text to overwrite: (position, byte).
    tamper: Vec<(u16, u8)>,
}

#[derive(Debug, Arbitrary)]
enum Scheme {
    Bearer,
    Lowercase,
    Any(String),
}

#[derive(Debug, Arbitrary)]
enum Alg {
    Hs256,
    Hs384,
    Hs512,
    None,
    Rs256,
    Any(String),
}

#[derive(Debug, Arbitrary)]
enum Role {
    Admin,
    Any(String),
}

#[derive(Debug, Arbitrary)]
enum Exp {
    /// Seconds from now.
    FromNow(i32),
    Absolute(u64),
}

#[derive(Debug, Arbitrary)]
enum Key {
    /// The server's secret.
    Server,
    Other(Vec<u8>),
    /// No signature at all.
    Unsigned,
}

fn hmac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_secs()
}

impl Token {
    /// Whether the server must admit this token: well-formed, signed with the
    /// server's key, HS256, admin, at least a few seconds from expiry.
    fn must_be_admitted(&self) -> bool {
        matches!(self.scheme, Scheme::Bearer | Scheme::Lowercase)
            && matches!(self.alg, Alg::Hs256)
            && self.header_extra.is_empty()
            && matches!(self.id, Slot::Typed(_) | Slot::Absent)
            && matches!(self.role, Slot::Typed(Role::Admin))
            && matches!(self.iat, Slot::Typed(_) | Slot::Absent)
            && matches!(self.exp, Slot::Typed(Exp::FromNow(seconds)) if seconds >= 5)
            && self.claims_extra.is_empty()
            && matches!(self.key, Key::Server)
            && self.tamper.is_empty()
    }

    fn header_value(&self, now: u64) -> Vec<u8> {
        let alg = match &self.alg {
            Alg::Hs256 => "HS256",
            Alg::Hs384 => "HS384",
            Alg::Hs512 => "HS512",
            Alg::None => "none",
            Alg::Rs256 => "RS256",
            Alg::Any(alg) => alg,
        };
        let mut header = object(&self.header_extra);
        header.insert("alg".into(), alg.into());
        header.insert("typ".into(), "JWT".into());

        let mut claims = object(&self.claims_extra);
        self.id.put(&mut claims, "id", |id| id.as_str().into());
        self.role.put(&mut claims, "role", |role| match role {
            Role::Admin => ADMIN_ROLE.into(),
            Role::Any(role) => role.as_str().into(),
        });
        self.iat.put(&mut claims, "iat", |iat| (*iat).into());
        self.exp.put(&mut claims, "exp", |exp| match exp {
            Exp::FromNow(seconds) => now.saturating_add_signed(i64::from(*seconds)).into(),
            Exp::Absolute(exp) => (*exp).into(),
        });

        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("JSON serializes")),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("JSON serializes")),
        );
        let signature = match &self.key {
            Key::Server => hmac(SECRET)
                .chain_update(&signed)
                .finalize()
                .into_bytes()
                .to_vec(),
            Key::Other(key) => hmac(key)
                .chain_update(&signed)
                .finalize()
                .into_bytes()
                .to_vec(),
            Key::Unsigned => Vec::new(),
        };
        let mut token = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature)).into_bytes();
        for &(position, byte) in &self.tamper {
            if let Some(slot) = token.get_mut(usize::from(position)) {
                *slot = byte;
            }
        }
        let scheme = match &self.scheme {
            Scheme::Bearer => "Bearer",
            Scheme::Lowercase => "bearer",
            Scheme::Any(scheme) => scheme,
        };
        [scheme.as_bytes(), b" ", &token].concat()
    }
}

/// The JWT header's fields the server must have checked. Other fields are
/// skipped unparsed, as the server skips them: a value nested deeper than
/// serde_json's recursion limit does not stop a token.
#[derive(Deserialize)]
struct Header {
    alg: String,
    crit: Option<serde::de::IgnoredAny>,
}

/// The claims the server must have checked; others are skipped unparsed.
#[derive(Deserialize)]
struct CheckedClaims {
    role: String,
    exp: u64,
    nbf: Option<u64>,
}

/// Panics unless `token` is at most `MAX_TOKEN_BYTES`, signed with [`SECRET`], says HS256
/// without `crit`, has the admin role, is valid from `nbf` at or before
/// `after` (when the server checked it, or later) and expires after
/// `before` (when the server checked it, or earlier).
fn check_admitted(token: &str, before: u64, after: u64) {
    assert!(
        token.len() <= MAX_TOKEN_BYTES,
        "admitted a token of {} bytes",
        token.len()
    );
    let parts: Vec<&str> = token.split('.').collect();
    let [header, payload, signature] = parts[..] else {
        panic!("admitted a token with {} segments", parts.len());
    };
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .expect("admitted a signature that is not base64url");
    hmac(SECRET)
        .chain_update(format!("{header}.{payload}"))
        .verify_slice(&signature)
        .expect("admitted a token not signed with the server's key");

    let decode = |segment: &str| {
        URL_SAFE_NO_PAD
            .decode(segment)
            .expect("admitted a segment that is not base64url")
    };
    let header: Header =
        serde_json::from_slice(&decode(header)).expect("admitted a header without an algorithm");
    assert_eq!(header.alg, "HS256", "admitted another algorithm");
    assert!(header.crit.is_none(), "admitted a critical extension");
    let claims: CheckedClaims =
        serde_json::from_slice(&decode(payload)).expect("admitted claims without role or exp");
    assert_eq!(claims.role, ADMIN_ROLE, "admitted another role");
    assert!(
        claims.exp > before,
        "admitted a token expired at {}",
        claims.exp
    );
    if let Some(nbf) = claims.nbf {
        assert!(nbf <= after, "admitted a token not valid before {nbf}");
    }
}

fuzz_target!(|input: Input<'_>| {
    let keys = Keys::from_secret(SECRET);
    let now = unix_now();
    let (value, must_be_admitted) = match &input {
        Input::Raw(bytes) => (bytes.to_vec(), false),
        Input::Token(token) => {
            let value = token.header_value(now);
            // Escaped strings can take a token past the server's size limit.
            let fits = value.len() <= "Bearer ".len() + MAX_TOKEN_BYTES;
            let must_be_admitted = token.must_be_admitted() && fits;
            (value, must_be_admitted)
        }
    };
    let Ok(value) = HeaderValue::from_bytes(&value) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, value.clone());

    match keys.authorize_admin(&headers) {
        Ok(claims) => {
            assert_eq!(claims.role, ADMIN_ROLE);
            let value = value.to_str().expect("admitted a header that is not ASCII");
            let (_, token) = value
                .trim()
                .split_once(' ')
                .expect("admitted a header without a scheme");
            check_admitted(token.trim(), now, unix_now());
        }
        Err(error) => assert!(!must_be_admitted, "refused a valid admin token: {error}"),
    }
});
