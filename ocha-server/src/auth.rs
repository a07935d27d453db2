//! Admin authentication with HS256 JSON Web Tokens, compatible with the
//! tokens the Ocha API issues.
//!
//! Only HS256 is accepted: the algorithm is pinned rather than read from the
//! token, so `none` and algorithm-confusion tokens fail. Checks follow Node's
//! `jsonwebtoken` (which the Ocha API verifies with), without leeway, and its
//! messages:
//!
//! | token                                         | refused with          |
//! |-----------------------------------------------|-----------------------|
//! | over [`MAX_TOKEN_BYTES`]                      | `jwt malformed`       |
//! | not three base64url JSON segments             | `jwt malformed`       |
//! | another algorithm                             | `invalid algorithm`   |
//! | a signature by another key, or tampered with  | `invalid signature`   |
//! | a `crit` header (no extension is understood)  | `invalid token`       |
//! | no `exp`                                      | `jwt must have an exp claim` |
//! | `nbf` after now                               | `jwt not active`      |
//! | now at or after `exp`                         | `jwt expired`         |
//!
//! An `aud` claim is not checked, as `jsonwebtoken` does when not given an
//! audience to expect.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::AUTHORIZATION;
use http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The role that may create products.
pub const ADMIN_ROLE: &str = "admin";

/// Lifetime of the tokens this server prints when not told otherwise: one day.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest token accepted, in bytes. The Ocha API's are about 200; a larger
/// one is refused before any base64 or HMAC work is spent on it.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Shortest `JWT_SECRET` that is not warned about: HS256 wants a key of at
/// least its hash's 256 bits (RFC 7518, section 3.2), and a shorter secret,
/// such as a word, can be found by brute force from any token it signed.
pub const MIN_SECRET_BYTES: usize = 32;

/// The claims the Ocha API puts in its tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id. Absent reads as empty: only the role is checked.
    #[serde(default)]
    pub id: String,
    /// The user's role. Absent reads as empty, which is not admin (the Ocha
    /// API answers such tokens with 403 too).
    #[serde(default)]
    pub role: String,
    /// Issued at, in Unix seconds.
    #[serde(default)]
    pub iat: u64,
    /// Expiry, in Unix seconds: the token is valid before this second.
    pub exp: u64,
    /// Not before, in Unix seconds: the token is valid from this second on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// Why a request may not write.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// No `Authorization: Bearer <token>` header.
    #[error("token missing")]
    Missing,
    /// The token is malformed, tampered with, signed otherwise or expired.
    /// Holds the reason in the wording of Node's `jsonwebtoken`, which the
    /// Ocha API passes on to its clients.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The token is valid but its role is not [`ADMIN_ROLE`].
    #[error("role {0:?} is not admin")]
    NotAdmin(String),
}

/// The signing and verification keys derived from one shared secret.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Keys {
    /// Keys for the given `JWT_SECRET`.
    pub fn from_secret(secret: &[u8]) -> Keys {
        let mut validation = Validation::new(Algorithm::HS256);
        // Times are checked in `verify`, as jsonwebtoken for Node does: the
        // crate's `exp` check admits a token during its expiry second.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        // With no audience configured the crate refuses any token with an
        // `aud`; Node's jsonwebtoken ignores the claim then.
        validation.validate_aud = false;
        Keys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Keys for a random 256-bit secret, valid for this process only.
    pub fn random() -> Keys {
        Keys::from_secret(&rand::random::<[u8; 32]>())
    }

    /// Signs a token for `id` and `role` that expires `ttl` from now.
    pub fn issue(&self, id: &str, role: &str, ttl: Duration) -> String {
        let iat = unix_now();
        let claims = Claims {
            id: id.to_owned(),
            role: role.to_owned(),
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
            nbf: None,
        };
        // HMAC signing of a plain struct has no failure mode (only RSA and EC
        // key parsing or a failing Serialize impl can fail).
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// Checks a token's size, header, algorithm, signature and validity
    /// period, in that order, and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_at(token, unix_now())
    }

    /// [`verify`](Self::verify) at `now`, in Unix seconds.
    fn verify_at(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        let invalid = |reason: &str| Err(AuthError::Invalid(reason.into()));
        if token.len() > MAX_TOKEN_BYTES {
            return invalid("jwt malformed");
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError::Invalid(reason(e.kind())))?
            .claims;
        if !without_critical_extensions(token) {
            return invalid("invalid token");
        }
        // Node's order and comparisons: valid from `nbf`, expired at `exp`.
        if claims.nbf.is_some_and(|nbf| nbf > now) {
            return invalid("jwt not active");
        }
        if now >= claims.exp {
            return invalid("jwt expired");
        }
        Ok(claims)
    }

    /// Admits a request whose bearer token is valid and has the admin role.
    pub fn authorize_admin(&self, headers: &HeaderMap) -> Result<Claims, AuthError> {
        let token = bearer_token(headers).ok_or(AuthError::Missing)?;
        let claims = self.verify(token)?;
        if claims.role != ADMIN_ROLE {
            return Err(AuthError::NotAdmin(claims.role));
        }
        Ok(claims)
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Whether the token's header has no `crit`: RFC 7515 (section 4.1.11)
/// requires a recipient to refuse extensions it does not understand, and
/// this server understands none. Called once the header has been read by
/// `jsonwebtoken`, so a header read here with an error (a repeated `crit`)
/// is refused too.
fn without_critical_extensions(token: &str) -> bool {
    #[derive(Deserialize)]
    struct Header {
        /// Whether the field is there, whatever its value, `null` included.
        #[serde(default, deserialize_with = "present")]
        crit: bool,
    }
    fn present<'de, D: serde::Deserializer<'de>>(field: D) -> Result<bool, D::Error> {
        serde::de::IgnoredAny::deserialize(field).map(|_| true)
    }
    let header = token.split('.').next().unwrap_or_default();
    URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|json| serde_json::from_slice::<Header>(&json).ok())
        .is_some_and(|header| !header.crit)
}

fn reason(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidSignature => "invalid signature".into(),
        ErrorKind::InvalidAlgorithm => "invalid algorithm".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("jwt must have an {claim} claim"),
        // Bad base64, bad JSON, an unknown algorithm such as `none`, or the
        // wrong number of segments.
        _ => "jwt malformed".into(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const SECRET: &[u8] = b"test-secret";

    fn sign(claims: &serde_json::Value, algorithm: Algorithm, secret: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(algorithm),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(authorization).unwrap());
        headers
    }

    fn invalid(reason: &str) -> Result<Claims, AuthError> {
        Err(AuthError::Invalid(reason.into()))
    }

    #[test]
    fn issued_tokens_verify_with_the_same_secret() {
        let keys = Keys::from_secret(SECRET);
        let token = keys.issue("65643f1adeadbeef010a0b0c", "admin", Duration::from_secs(60));
        let claims = keys
            .authorize_admin(&headers(&format!("Bearer {token}")))
            .unwrap();
        assert_eq!(claims.id, "65643f1adeadbeef010a0b0c");
        assert_eq!(claims.role, "admin");
        assert_eq!(claims.exp, claims.iat + 60);
        assert!(claims.iat.abs_diff(unix_now()) <= 1);
    }

    #[test]
    fn accepts_tokens_signed_elsewhere_with_the_same_secret() {
        let token = sign(
            &serde_json::json!({"id": "u1", "role": "admin", "iat": 1, "exp": unix_now() + 60}),
            Algorithm::HS256,
            SECRET,
        );
        let keys = Keys::from_secret(SECRET);
        assert_eq!(keys.verify(&token).unwrap().role, "admin");
        assert!(keys
            .authorize_admin(&headers(&format!("bearer  {token} ")))
            .is_ok());
    }

    #[test]
    fn requires_a_bearer_token() {
        let keys = Keys::from_secret(SECRET);
        assert_eq!(
            keys.authorize_admin(&HeaderMap::new()),
            Err(AuthError::Missing)
        );
        assert_eq!(
            keys.authorize_admin(&headers("Bearer ")),
            Err(AuthError::Missing)
        );
        assert_eq!(
            keys.authorize_admin(&headers("Basic YWxhZGRpbg==")),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn rejects_other_secrets_tampering_and_garbage() {
        let keys = Keys::from_secret(SECRET);
        let other = Keys::from_secret(b"other").issue("u1", "admin", Duration::from_secs(60));
        assert_eq!(keys.verify(&other), invalid("invalid signature"));

        let token = keys.issue("u1", "user", Duration::from_secs(60));
        let mut parts: Vec<&str> = token.split('.').collect();
        let admin_payload = Keys::from_secret(SECRET).issue("u1", "admin", Duration::from_secs(60));
        parts[1] = admin_payload.split('.').nth(1).unwrap();
        assert_eq!(keys.verify(&parts.join(".")), invalid("invalid signature"));

        assert_eq!(keys.verify("not-a-jwt"), invalid("jwt malformed"));
    }

    /// A token signed with [`SECRET`] whose header is `header` as is.
    fn sign_with_header(header: &serde_json::Value, claims: &serde_json::Value) -> String {
        let encode = |json: &serde_json::Value| URL_SAFE_NO_PAD.encode(json.to_string());
        let message = format!("{}.{}", encode(header), encode(claims));
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )
        .unwrap();
        format!("{message}.{signature}")
    }

    #[test]
    fn a_token_expires_at_exp_not_a_second_later() {
        let keys = Keys::from_secret(SECRET);
        let exp = 1_900_000_000;
        let token = sign(
            &serde_json::json!({"id": "u1", "role": "admin", "iat": 1, "exp": exp}),
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(keys.verify_at(&token, exp - 1).unwrap().exp, exp);
        assert_eq!(keys.verify_at(&token, exp), invalid("jwt expired"));
        assert_eq!(keys.verify_at(&token, exp + 1), invalid("jwt expired"));
        // And against the clock: one that expired a second ago.
        let expired = sign(
            &serde_json::json!({"role": "admin", "exp": unix_now() - 1}),
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(keys.verify(&expired), invalid("jwt expired"));
    }

    #[test]
    fn a_token_is_valid_from_nbf_on() {
        let keys = Keys::from_secret(SECRET);
        let nbf = 1_900_000_000;
        let token = sign(
            &serde_json::json!({"role": "admin", "nbf": nbf, "exp": nbf + 60}),
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(keys.verify_at(&token, nbf - 1), invalid("jwt not active"));
        assert_eq!(keys.verify_at(&token, nbf).unwrap().nbf, Some(nbf));
        assert_eq!(keys.verify_at(&token, nbf + 60), invalid("jwt expired"));
        // Node checks `nbf` first: a token both early and expired is early.
        let inverted = sign(
            &serde_json::json!({"role": "admin", "nbf": nbf, "exp": nbf - 60}),
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(
            keys.verify_at(&inverted, nbf - 1),
            invalid("jwt not active")
        );
    }

    #[test]
    fn an_audience_is_accepted_when_none_is_expected() {
        let keys = Keys::from_secret(SECRET);
        for aud in [
            serde_json::json!("ocha"),
            serde_json::json!(["ocha", "shop"]),
        ] {
            let token = sign(
                &serde_json::json!({"role": "admin", "aud": aud, "exp": unix_now() + 60}),
                Algorithm::HS256,
                SECRET,
            );
            assert_eq!(keys.verify(&token).unwrap().role, "admin", "{aud}");
        }
    }

    #[test]
    fn refuses_critical_header_extensions() {
        let keys = Keys::from_secret(SECRET);
        let claims = serde_json::json!({"role": "admin", "exp": unix_now() + 60});
        let plain = sign_with_header(&serde_json::json!({"alg": "HS256", "typ": "JWT"}), &claims);
        assert_eq!(keys.verify(&plain).unwrap().role, "admin");
        for crit in [
            serde_json::json!(["exp"]),
            serde_json::json!(["b64"]),
            serde_json::json!([]),
            serde_json::Value::Null,
        ] {
            let header = serde_json::json!({"alg": "HS256", "crit": crit, "b64": true});
            let token = sign_with_header(&header, &claims);
            assert_eq!(keys.verify(&token), invalid("invalid token"), "{crit}");
        }
        // Spelled with an escape, it is the same field.
        let escaped = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","cr\u0069t":["b64"]}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = jsonwebtoken::crypto::sign(
            escaped.as_bytes(),
            &EncodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )
        .unwrap();
        assert_eq!(
            keys.verify(&format!("{escaped}.{signature}")),
            invalid("invalid token")
        );
    }

    #[test]
    fn refuses_tokens_over_8_kib_before_reading_them() {
        let keys = Keys::from_secret(SECRET);
        // Validly signed tokens padded to the limit, and just over it.
        let token_with = |padding: usize| {
            sign(
                &serde_json::json!({"role": "admin", "exp": unix_now() + 60, "pad": "x".repeat(padding)}),
                Algorithm::HS256,
                SECRET,
            )
        };
        // Base64 turns 3 bytes into 4 characters: start a little short.
        let mut padding = (MAX_TOKEN_BYTES - token_with(0).len()) / 4 * 3 - 8;
        while token_with(padding + 1).len() <= MAX_TOKEN_BYTES {
            padding += 1;
        }
        let (fits, over) = (token_with(padding), token_with(padding + 1));
        assert!(fits.len() <= MAX_TOKEN_BYTES && over.len() > MAX_TOKEN_BYTES);
        assert_eq!(keys.verify(&fits).unwrap().role, "admin");
        assert_eq!(keys.verify(&over), invalid("jwt malformed"));
    }

    #[test]
    fn requires_exp() {
        let token = sign(
            &serde_json::json!({"id": "u1", "role": "admin"}),
            Algorithm::HS256,
            SECRET,
        );
        assert!(Keys::from_secret(SECRET).verify(&token).is_err());
    }

    #[test]
    fn accepts_only_hs256() {
        let keys = Keys::from_secret(SECRET);
        let claims = serde_json::json!({"id": "u1", "role": "admin", "exp": unix_now() + 60});
        let hs512 = sign(&claims, Algorithm::HS512, SECRET);
        assert_eq!(keys.verify(&hs512), invalid("invalid algorithm"));

        // {"alg":"none","typ":"JWT"} with the claims above and no signature.
        let payload = hs512.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert_eq!(keys.verify(&none), invalid("jwt malformed"));
    }

    #[test]
    fn only_admins_may_write() {
        let keys = Keys::from_secret(SECRET);
        let user = keys.issue("u1", "user", Duration::from_secs(60));
        assert_eq!(
            keys.authorize_admin(&headers(&format!("Bearer {user}"))),
            Err(AuthError::NotAdmin("user".into()))
        );
        let roleless = sign(
            &serde_json::json!({"id": "u1", "exp": unix_now() + 60}),
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(
            keys.authorize_admin(&headers(&format!("Bearer {roleless}"))),
            Err(AuthError::NotAdmin(String::new()))
        );
    }
}
