//! Query parameters of `GET /api/v1/products`: `page`, `limit` and `active`.
//!
//! Values are taken as written (no percent-decoding: none of the accepted
//! values needs it); unknown parameters are ignored and, when one is given
//! twice, the last one counts.

use crate::error::ApiError;
use crate::store::Activity;

/// Page when `page` is absent.
pub const DEFAULT_PAGE: u32 = 1;
/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: u32 = 10;
/// Largest page size; larger `limit`s are capped to it.
pub const MAX_LIMIT: u32 = 100;

/// A validated listing request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListQuery {
    /// 1-based page number.
    pub page: u32,
    /// Products per page, from 1 to [`MAX_LIMIT`].
    pub limit: u32,
    /// `active=true` or `active=false` filters on `isActive`.
    pub activity: Activity,
}

impl ListQuery {
    /// Parses a URI query string such as `page=2&limit=20&active=true`.
    pub fn parse(query: Option<&str>) -> Result<ListQuery, ApiError> {
        let mut list = ListQuery {
            page: DEFAULT_PAGE,
            limit: DEFAULT_LIMIT,
            activity: Activity::Any,
        };
        let pairs = query
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty());
        for pair in pairs {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "page" => list.page = positive(key, value)?,
                "limit" => list.limit = positive(key, value)?.min(MAX_LIMIT),
                "active" => {
                    list.activity = match value {
                        "true" => Activity::Only(true),
                        "false" => Activity::Only(false),
                        _ => return Err(invalid("active must be true or false")),
                    }
                }
                _ => {}
            }
        }
        Ok(list)
    }

    /// Products to skip before this page.
    pub fn offset(&self) -> u64 {
        u64::from(self.page - 1) * u64::from(self.limit)
    }

    /// Number of pages `total` products fill.
    pub fn total_pages(&self, total: u64) -> u64 {
        total.div_ceil(u64::from(self.limit))
    }
}

fn positive(key: &str, value: &str) -> Result<u32, ApiError> {
    // Digits only: `parse` alone would also accept a leading `+`.
    value
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| value.parse::<u32>().ok())
        .flatten()
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            invalid(&format!(
                "{key} must be a whole number from 1 to {}",
                u32::MAX
            ))
        })
}

fn invalid(reason: &str) -> ApiError {
    ApiError::InvalidQuery(reason.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<ListQuery, ApiError> {
        ListQuery::parse(Some(query))
    }

    #[test]
    fn defaults() {
        let expected = ListQuery {
            page: 1,
            limit: 10,
            activity: Activity::Any,
        };
        assert_eq!(ListQuery::parse(None), Ok(expected));
        assert_eq!(parse(""), Ok(expected));
        assert_eq!(parse("sort=name&&"), Ok(expected));
    }

    #[test]
    fn reads_page_limit_and_active() {
        assert_eq!(
            parse("page=3&limit=20&active=true"),
            Ok(ListQuery {
                page: 3,
                limit: 20,
                activity: Activity::Only(true)
            })
        );
        assert_eq!(
            parse("active=false").unwrap().activity,
            Activity::Only(false)
        );
        assert_eq!(parse("page=1&page=2").unwrap().page, 2);
    }

    #[test]
    fn caps_the_limit() {
        assert_eq!(parse("limit=100").unwrap().limit, 100);
        assert_eq!(parse("limit=5000").unwrap().limit, MAX_LIMIT);
    }

    #[test]
    fn rejects_bad_numbers_and_flags() {
        for query in [
            "page=0",
            "page=-1",
            "page=abc",
            "page=1.5",
            "page=+2",
            "page=",
            "page",
            "page=4294967296",
        ] {
            assert_eq!(
                parse(query),
                Err(ApiError::InvalidQuery(
                    "page must be a whole number from 1 to 4294967295".into()
                )),
                "{query}"
            );
        }
        assert!(matches!(parse("limit=0"), Err(ApiError::InvalidQuery(_))));
        assert_eq!(
            parse("active=yes"),
            Err(ApiError::InvalidQuery(
                "active must be true or false".into()
            ))
        );
    }

    #[test]
    fn computes_offsets_and_page_counts() {
        let query = parse("page=3&limit=10").unwrap();
        assert_eq!(query.offset(), 20);
        assert_eq!(query.total_pages(0), 0);
        assert_eq!(query.total_pages(20), 2);
        assert_eq!(query.total_pages(21), 3);
        let last = parse("page=4294967295&limit=100").unwrap();
        assert_eq!(last.offset(), 429_496_729_400);
    }
}
