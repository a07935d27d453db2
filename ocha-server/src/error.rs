//! API errors and the JSON bodies the Ocha API answers them with.
//!
//! Each variant's `Display` is the `message` field clients see; the detail
//! a variant carries becomes the `error` field.

use http::header::{HeaderValue, ALLOW, CONNECTION};
use http::{Response, StatusCode};
use serde::Serialize;
use thiserror::Error;

use crate::auth::AuthError;
use crate::product::ProductError;
use crate::response::{self, Body};
use crate::store::StoreError;

/// Largest accepted request body: 1 MiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A request that failed, and how to tell the client.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApiError {
    /// 401: no bearer token.
    #[error("Token missing")]
    TokenMissing,
    /// 401: bad, tampered or expired token; holds the reason.
    #[error("Invalid or expired token")]
    InvalidToken(String),
    /// 403: the token's role is not admin.
    #[error("Access restricted to administrators")]
    NotAdmin,
    /// 400: the body is not a JSON object; holds the parser's complaint.
    #[error("Invalid JSON")]
    InvalidJson(String),
    /// 400: a required product field is missing or empty.
    #[error("slug, name, category, description, basePriceCHF and image are required")]
    MissingFields,
    /// 422: a field has the wrong type or range; holds the field and why.
    #[error("Invalid data")]
    InvalidData(String),
    /// 409: the slug belongs to another product.
    #[error("Slug already in use")]
    SlugTaken,
    /// 409: the name belongs to another product.
    #[error("Name already in use")]
    NameTaken,
    /// 413: the body is over [`MAX_BODY_BYTES`].
    #[error("Request body too large")]
    BodyTooLarge,
    /// 400: the body could not be read (the client broke off, or bad chunking).
    #[error("Invalid request body")]
    BodyUnreadable(String),
    /// 408: the body did not arrive in time; the connection is closed,
    /// since the rest of the body would be read as the next request.
    #[error("Request body timed out")]
    BodyTimeout,
    /// 429: the client's address holds its most connections
    /// (`MAX_CONNECTIONS_PER_IP`).
    #[error("Too many connections from this address")]
    TooManyConnections,
    /// 400: a listing parameter is not acceptable; holds which and why.
    #[error("Invalid query parameters")]
    InvalidQuery(String),
    /// 400: the product id is not 24 hex digits.
    #[error("Invalid ID format")]
    InvalidId,
    /// 404: no product has this id.
    #[error("Product not found")]
    ProductNotFound,
    /// 404: no route has this path.
    #[error("Route not found")]
    RouteNotFound,
    /// 405: the route exists but not for this method; holds the `allow` value.
    #[error("Method not allowed")]
    MethodNotAllowed(&'static str),
    /// 500: the database failed; the cause is logged, not sent.
    #[error("Internal server error")]
    Internal,
    /// 503: the database cannot be reached for now; the cause is logged,
    /// not sent.
    #[error("Service unavailable")]
    Unavailable,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

impl ApiError {
    /// The response status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::TokenMissing | ApiError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotAdmin => StatusCode::FORBIDDEN,
            ApiError::InvalidJson(_)
            | ApiError::MissingFields
            | ApiError::BodyUnreadable(_)
            | ApiError::InvalidQuery(_)
            | ApiError::InvalidId => StatusCode::BAD_REQUEST,
            ApiError::InvalidData(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::SlugTaken | ApiError::NameTaken => StatusCode::CONFLICT,
            ApiError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyConnections => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ProductNotFound | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `error` field, for variants that explain themselves further.
    fn detail(&self) -> Option<&str> {
        match self {
            ApiError::InvalidToken(detail)
            | ApiError::InvalidJson(detail)
            | ApiError::InvalidData(detail)
            | ApiError::BodyUnreadable(detail)
            | ApiError::InvalidQuery(detail) => Some(detail),
            ApiError::BodyTooLarge => Some("the limit is 1048576 bytes"),
            _ => None,
        }
    }

    /// The JSON response: `{"message":..}` plus `"error"` where there is detail.
    pub fn into_response(self) -> Response<Body> {
        let body = ErrorBody {
            message: self.to_string(),
            error: self.detail(),
        };
        let mut response = response::json(self.status(), &body);
        match self {
            ApiError::MethodNotAllowed(allow) => {
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::BodyTimeout => {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> ApiError {
        match error {
            AuthError::Missing => ApiError::TokenMissing,
            AuthError::Invalid(reason) => ApiError::InvalidToken(reason),
            AuthError::NotAdmin(_) => ApiError::NotAdmin,
        }
    }
}

impl From<ProductError> for ApiError {
    fn from(error: ProductError) -> ApiError {
        match error {
            ProductError::Json(detail) => ApiError::InvalidJson(detail),
            ProductError::MissingFields => ApiError::MissingFields,
            ProductError::Invalid(detail) => ApiError::InvalidData(detail),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::SlugTaken => ApiError::SlugTaken,
            StoreError::NameTaken => ApiError::NameTaken,
            // The client gets a bare 503 or 500; operators get the cause.
            other if other.is_unavailable() => {
                tracing::warn!(error = %other, "database unavailable");
                ApiError::Unavailable
            }
            other => {
                tracing::error!(error = %other, "database failure");
                ApiError::Internal
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deadpool_postgres::TimeoutType;
    use http_body_util::BodyExt;

    async fn parts(error: ApiError) -> (StatusCode, String, Option<String>) {
        let response = error.into_response();
        assert_eq!(response.headers()["content-type"], "application/json");
        let allow = response
            .headers()
            .get(ALLOW)
            .map(|v| v.to_str().unwrap().to_owned());
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap(), allow)
    }

    #[tokio::test]
    async fn bodies_match_the_ocha_api() {
        let cases = [
            (
                ApiError::TokenMissing,
                401,
                r#"{"message":"Token missing"}"#,
            ),
            (
                ApiError::InvalidToken("jwt expired".into()),
                401,
                r#"{"message":"Invalid or expired token","error":"jwt expired"}"#,
            ),
            (
                ApiError::NotAdmin,
                403,
                r#"{"message":"Access restricted to administrators"}"#,
            ),
            (
                ApiError::MissingFields,
                400,
                r#"{"message":"slug, name, category, description, basePriceCHF and image are required"}"#,
            ),
            (
                ApiError::SlugTaken,
                409,
                r#"{"message":"Slug already in use"}"#,
            ),
            (
                ApiError::NameTaken,
                409,
                r#"{"message":"Name already in use"}"#,
            ),
            (
                ApiError::InvalidData("size[0] must be \"S\", \"M\" or \"L\"".into()),
                422,
                r#"{"message":"Invalid data","error":"size[0] must be \"S\", \"M\" or \"L\""}"#,
            ),
            (
                ApiError::InvalidId,
                400,
                r#"{"message":"Invalid ID format"}"#,
            ),
            (
                ApiError::ProductNotFound,
                404,
                r#"{"message":"Product not found"}"#,
            ),
            (
                ApiError::BodyTooLarge,
                413,
                r#"{"message":"Request body too large","error":"the limit is 1048576 bytes"}"#,
            ),
            (
                ApiError::Internal,
                500,
                r#"{"message":"Internal server error"}"#,
            ),
            (
                ApiError::Unavailable,
                503,
                r#"{"message":"Service unavailable"}"#,
            ),
        ];
        for (error, status, body) in cases {
            let (actual_status, actual_body, allow) = parts(error).await;
            assert_eq!(
                (actual_status.as_u16(), actual_body.as_str(), allow),
                (status, body, None)
            );
        }
    }

    #[tokio::test]
    async fn method_not_allowed_names_the_allowed_methods() {
        let (status, body, allow) = parts(ApiError::MethodNotAllowed("GET, POST")).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body, r#"{"message":"Method not allowed"}"#);
        assert_eq!(allow.as_deref(), Some("GET, POST"));
    }

    #[test]
    fn maps_module_errors() {
        assert_eq!(
            ApiError::from(AuthError::NotAdmin("user".into())),
            ApiError::NotAdmin
        );
        assert_eq!(
            ApiError::from(ProductError::Invalid("x".into())),
            ApiError::InvalidData("x".into())
        );
        assert_eq!(ApiError::from(StoreError::NameTaken), ApiError::NameTaken);
        assert_eq!(ApiError::from(StoreError::Closed), ApiError::Internal);
        assert_eq!(ApiError::from(StoreError::Panicked), ApiError::Internal);
        let no_connection = deadpool_postgres::PoolError::Timeout(TimeoutType::Wait);
        assert_eq!(
            ApiError::from(StoreError::Pool(no_connection)),
            ApiError::Unavailable
        );
    }
}
