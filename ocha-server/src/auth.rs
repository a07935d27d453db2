//! Admin authentication with HS256 JSON Web Tokens, compatible with the
//! tokens the Ocha API issues.
//!
//! Only HS256 is accepted: the algorithm is pinned rather than read from the
//! token, so `none` and algorithm-confusion tokens fail. `exp` is required
//! and enforced without leeway.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// Expiry, in Unix seconds.
    pub exp: u64,
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
        validation.leeway = 0;
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
        };
        // HMAC signing of a plain struct has no failure mode (only RSA and EC
        // key parsing or a failing Serialize impl can fail).
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// Checks a token's algorithm, signature and expiry, and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| AuthError::Invalid(reason(e.kind())))
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

fn reason(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "jwt expired".into(),
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

    #[test]
    fn rejects_expired_tokens_without_leeway() {
        let keys = Keys::from_secret(SECRET);
        let token = sign(
            &serde_json::json!({"id": "u1", "role": "admin", "iat": 1, "exp": unix_now() - 1}),
            Algorithm::HS256,
            SECRET,
        );
        assert_eq!(keys.verify(&token), invalid("jwt expired"));
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
