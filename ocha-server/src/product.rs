//! Validation of product creation and update requests, following the Ocha
//! API's rules, and the product documents built from them.
//!
//! Creation checks run in the API's order: the body must be a JSON object,
//! then every required field must be present and non-empty, then each field
//! must have the right type and range. Unknown fields are ignored, as
//! Mongoose does.
//!
//! An update ([`ProductChanges`]) checks each field it sets by the same
//! rules, and changes nothing else. What the Ocha API does through
//! Mongoose's `findByIdAndUpdate(id, body, {runValidators: true})`, and so
//! what an update here does:
//!
//! - A required field may be left out, but not set to `null` or a blank
//!   string (Mongoose's `required` validator runs on the paths an update
//!   sets).
//! - `null` for an optional field (`isActive`, `size`, `extra_chf`, or one
//!   size of `extra_chf`) means its default, as on creation.
//! - `extra_chf` replaces the whole surcharge table: sizes it leaves out take
//!   their default, not their current value. Mongoose sends a nested object
//!   as one `$set` of the whole object, which MongoDB replaces rather than
//!   merges, and fills in the defaults of the missing sizes when it reads the
//!   document back (Automattic/mongoose#2991, #5285).
//! - `_id`, `createdAt` and `updatedAt` are ignored like unknown fields
//!   (Mongoose keeps `_id` and `createdAt` immutable and sets `updatedAt`).

use crate::event::{ExtraChf, Product, Size};
use serde_json::{Map, Value};
use thiserror::Error;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

use crate::object_id;

/// Fields that must be present and non-empty, in the order the API lists them.
pub const REQUIRED_FIELDS: [&str; 6] = [
    "slug",
    "name",
    "category",
    "description",
    "basePriceCHF",
    "image",
];

/// Longest accepted `slug`, in characters after trimming.
pub const MAX_SLUG_CHARS: usize = 100;
/// Longest accepted `name`, in characters after trimming.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest accepted `category`, in characters after trimming.
pub const MAX_CATEGORY_CHARS: usize = 100;
/// Longest accepted `description`, in characters after trimming.
pub const MAX_DESCRIPTION_CHARS: usize = 5000;
/// Longest accepted `image` (a URL or path), in characters after trimming.
pub const MAX_IMAGE_CHARS: usize = 2048;

/// Why a request body is not an acceptable product.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProductError {
    /// The body is not JSON, or not a JSON object.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// A required field is missing, `null` or blank.
    #[error("a required field is missing or empty")]
    MissingFields,
    /// A field has the wrong type or is out of range; names the field and why.
    #[error("{0}")]
    Invalid(String),
}

/// A validated product that has no id or timestamps yet.
#[derive(Debug, Clone, PartialEq)]
pub struct NewProduct {
    /// Trimmed, non-empty slug.
    pub slug: String,
    /// Trimmed, non-empty name.
    pub name: String,
    /// Trimmed, non-empty category.
    pub category: String,
    /// Trimmed, non-empty description.
    pub description: String,
    /// Non-negative base price in Swiss francs.
    pub base_price_chf: f64,
    /// Defaults to `true`.
    pub is_active: bool,
    /// Trimmed, non-empty image URL or path.
    pub image: String,
    /// At least one size, each at most once; defaults to S, M, L.
    pub size: Vec<Size>,
    /// Non-negative surcharges; keys left out take their default.
    pub extra_chf: ExtraChf,
}

impl NewProduct {
    /// Parses and validates a request body.
    pub fn from_json(body: &[u8]) -> Result<NewProduct, ProductError> {
        let body = object(body)?;
        if REQUIRED_FIELDS.iter().any(|field| is_blank(&body[*field])) {
            return Err(ProductError::MissingFields);
        }

        Ok(NewProduct {
            slug: text(&body, "slug", MAX_SLUG_CHARS)?,
            name: text(&body, "name", MAX_NAME_CHARS)?,
            category: text(&body, "category", MAX_CATEGORY_CHARS)?,
            description: text(&body, "description", MAX_DESCRIPTION_CHARS)?,
            base_price_chf: amount(&body["basePriceCHF"], "basePriceCHF")?,
            is_active: is_active(&body["isActive"])?,
            image: text(&body, "image", MAX_IMAGE_CHARS)?,
            size: sizes(&body["size"])?,
            extra_chf: extra_chf(&body["extra_chf"])?,
        })
    }

    /// Completes the document: a fresh id and both timestamps taken from `now`.
    pub fn into_product(self, now: OffsetDateTime) -> Product {
        let stamp = timestamp(now);
        Product {
            id: object_id::generate(now.unix_timestamp()),
            slug: self.slug,
            name: self.name,
            category: self.category,
            description: self.description,
            base_price_chf: self.base_price_chf,
            is_active: self.is_active,
            image: self.image,
            size: self.size,
            extra_chf: self.extra_chf,
            created_at: stamp.clone(),
            updated_at: stamp,
        }
    }
}

/// A validated update: the fields a `PATCH` body sets, each checked as on
/// creation (see the [module docs](self) for what differs). `None` leaves a
/// field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProductChanges {
    /// Trimmed, non-empty slug.
    pub slug: Option<String>,
    /// Trimmed, non-empty name.
    pub name: Option<String>,
    /// Trimmed, non-empty category.
    pub category: Option<String>,
    /// Trimmed, non-empty description.
    pub description: Option<String>,
    /// Non-negative base price in Swiss francs.
    pub base_price_chf: Option<f64>,
    /// `true` for `null`.
    pub is_active: Option<bool>,
    /// Trimmed, non-empty image URL or path.
    pub image: Option<String>,
    /// At least one size, each at most once; S, M, L for `null`.
    pub size: Option<Vec<Size>>,
    /// The whole surcharge table: sizes left out take their default.
    pub extra_chf: Option<ExtraChf>,
}

impl ProductChanges {
    /// Parses and validates a request body. An empty body changes nothing,
    /// as for Express's JSON body parser, which reads one as `{}`.
    pub fn from_json(body: &[u8]) -> Result<ProductChanges, ProductError> {
        let body = if body.is_empty() {
            Value::Object(Map::new())
        } else {
            object(body)?
        };
        Ok(ProductChanges {
            slug: changed_text(&body, "slug", MAX_SLUG_CHARS)?,
            name: changed_text(&body, "name", MAX_NAME_CHARS)?,
            category: changed_text(&body, "category", MAX_CATEGORY_CHARS)?,
            description: changed_text(&body, "description", MAX_DESCRIPTION_CHARS)?,
            base_price_chf: body
                .get("basePriceCHF")
                .map(|value| amount(value, "basePriceCHF"))
                .transpose()?,
            is_active: body.get("isActive").map(is_active).transpose()?,
            image: changed_text(&body, "image", MAX_IMAGE_CHARS)?,
            size: body.get("size").map(sizes).transpose()?,
            extra_chf: body.get("extra_chf").map(extra_chf).transpose()?,
        })
    }

    /// Applies the changes to `product` and stamps its `updatedAt` with
    /// `now`, whether or not anything changed: Mongoose's timestamps set
    /// `updatedAt` on every `findByIdAndUpdate`.
    pub fn apply_to(self, product: &mut Product, now: OffsetDateTime) {
        fn set<T>(field: &mut T, change: Option<T>) {
            if let Some(value) = change {
                *field = value;
            }
        }
        set(&mut product.slug, self.slug);
        set(&mut product.name, self.name);
        set(&mut product.category, self.category);
        set(&mut product.description, self.description);
        set(&mut product.base_price_chf, self.base_price_chf);
        set(&mut product.is_active, self.is_active);
        set(&mut product.image, self.image);
        set(&mut product.size, self.size);
        set(&mut product.extra_chf, self.extra_chf);
        product.updated_at = timestamp(now);
    }
}

/// Formats `at` as JavaScript's `Date.toISOString` does: UTC, milliseconds, `Z`.
pub fn timestamp(at: OffsetDateTime) -> String {
    at.to_offset(UtcOffset::UTC)
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        // Every component is available on an OffsetDateTime, so this cannot fail.
        .expect("a UTC date formats")
}

/// The body as JSON, which must be an object.
fn object(body: &[u8]) -> Result<Value, ProductError> {
    let body: Value =
        serde_json::from_slice(body).map_err(|e| ProductError::Json(e.to_string()))?;
    if !body.is_object() {
        return Err(ProductError::Json(format!(
            "expected an object, found {}",
            kind(&body)
        )));
    }
    Ok(body)
}

fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

fn text(body: &Value, field: &str, max_chars: usize) -> Result<String, ProductError> {
    let Value::String(raw) = &body[field] else {
        return Err(wrong_type(field, "a string", &body[field]));
    };
    let trimmed = raw.trim();
    if trimmed.chars().count() > max_chars {
        return Err(ProductError::Invalid(format!(
            "{field} must be at most {max_chars} characters"
        )));
    }
    Ok(trimmed.to_owned())
}

/// A required text field in an update: `None` when absent; when present,
/// checked as on creation and not blank.
fn changed_text(
    body: &Value,
    field: &str,
    max_chars: usize,
) -> Result<Option<String>, ProductError> {
    match body.get(field) {
        None => Ok(None),
        Some(value @ Value::String(_)) if is_blank(value) => {
            Err(ProductError::Invalid(format!("{field} must not be empty")))
        }
        Some(_) => text(body, field, max_chars).map(Some),
    }
}

fn amount(value: &Value, field: &str) -> Result<f64, ProductError> {
    match value.as_f64() {
        Some(amount) if amount < 0.0 => Err(ProductError::Invalid(format!(
            "{field} must not be negative"
        ))),
        Some(amount) => Ok(amount),
        None => Err(wrong_type(field, "a number", value)),
    }
}

fn is_active(value: &Value) -> Result<bool, ProductError> {
    match value {
        Value::Null => Ok(true),
        Value::Bool(active) => Ok(*active),
        other => Err(wrong_type("isActive", "a boolean", other)),
    }
}

fn sizes(value: &Value) -> Result<Vec<Size>, ProductError> {
    let items = match value {
        Value::Null => return Ok(vec![Size::S, Size::M, Size::L]),
        Value::Array(items) => items,
        other => return Err(wrong_type("size", "an array", other)),
    };
    if items.is_empty() {
        return Err(ProductError::Invalid(
            "size must list at least one size".into(),
        ));
    }
    let mut sizes = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let size = match item.as_str().map(str::trim) {
            Some("S") => Size::S,
            Some("M") => Size::M,
            Some("L") => Size::L,
            _ => {
                return Err(ProductError::Invalid(format!(
                    r#"size[{index}] must be "S", "M" or "L""#
                )))
            }
        };
        if sizes.contains(&size) {
            return Err(ProductError::Invalid(format!(
                "size lists {size:?} more than once"
            )));
        }
        sizes.push(size);
    }
    Ok(sizes)
}

fn extra_chf(value: &Value) -> Result<ExtraChf, ProductError> {
    let mut extra = ExtraChf::default();
    match value {
        Value::Null => {}
        Value::Object(_) => {
            for (key, slot) in [
                ("S", &mut extra.s),
                ("M", &mut extra.m),
                ("L", &mut extra.l),
            ] {
                // A partial object only overrides the sizes it names.
                if !value[key].is_null() {
                    *slot = amount(&value[key], &format!("extra_chf.{key}"))?;
                }
            }
        }
        other => return Err(wrong_type("extra_chf", "an object", other)),
    }
    Ok(extra)
}

fn wrong_type(field: &str, expected: &str, found: &Value) -> ProductError {
    ProductError::Invalid(format!("{field} must be {expected}, found {}", kind(found)))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({
            "slug": "matcha-latte",
            "name": "Matcha Latte",
            "category": "tea",
            "description": "Ceremonial matcha",
            "basePriceCHF": 6.5,
            "image": "/img/matcha.png"
        })
    }

    fn parse(body: &Value) -> Result<NewProduct, ProductError> {
        NewProduct::from_json(body.to_string().as_bytes())
    }

    fn with(field: &str, value: Value) -> Value {
        let mut body = valid();
        body[field] = value;
        body
    }

    fn without(field: &str) -> Value {
        let mut body = valid();
        body.as_object_mut().unwrap().remove(field);
        body
    }

    fn invalid(message: &str) -> Result<NewProduct, ProductError> {
        Err(ProductError::Invalid(message.into()))
    }

    #[test]
    fn applies_defaults() {
        let product = parse(&valid()).unwrap();
        assert_eq!(
            product,
            NewProduct {
                slug: "matcha-latte".into(),
                name: "Matcha Latte".into(),
                category: "tea".into(),
                description: "Ceremonial matcha".into(),
                base_price_chf: 6.5,
                is_active: true,
                image: "/img/matcha.png".into(),
                size: vec![Size::S, Size::M, Size::L],
                extra_chf: ExtraChf {
                    s: 0.0,
                    m: 2.0,
                    l: 3.0
                },
            }
        );
    }

    #[test]
    fn trims_strings_and_ignores_unknown_fields() {
        let mut body = with("slug", json!("  matcha-latte\n"));
        body["name"] = json!("\tMatcha Latte ");
        body["size"] = json!([" L ", "S"]);
        body["color"] = json!("green");
        let product = parse(&body).unwrap();
        assert_eq!(product.slug, "matcha-latte");
        assert_eq!(product.name, "Matcha Latte");
        assert_eq!(product.size, vec![Size::L, Size::S]);
    }

    #[test]
    fn accepts_explicit_optional_fields() {
        let mut body = with("isActive", json!(false));
        body["extra_chf"] = json!({"S": 1, "M": 2.5, "L": 4});
        body["basePriceCHF"] = json!(0);
        let product = parse(&body).unwrap();
        assert!(!product.is_active);
        assert_eq!(
            product.extra_chf,
            ExtraChf {
                s: 1.0,
                m: 2.5,
                l: 4.0
            }
        );
        assert_eq!(product.base_price_chf, 0.0);
    }

    #[test]
    fn partial_extra_chf_keeps_the_other_defaults() {
        let product = parse(&with("extra_chf", json!({"M": 1.5, "XL": 9}))).unwrap();
        assert_eq!(
            product.extra_chf,
            ExtraChf {
                s: 0.0,
                m: 1.5,
                l: 3.0
            }
        );
    }

    #[test]
    fn missing_null_or_blank_required_fields_are_reported_together() {
        for field in REQUIRED_FIELDS {
            assert_eq!(
                parse(&without(field)),
                Err(ProductError::MissingFields),
                "{field}"
            );
            assert_eq!(
                parse(&with(field, Value::Null)),
                Err(ProductError::MissingFields)
            );
            assert_eq!(
                parse(&with(field, json!(""))),
                Err(ProductError::MissingFields)
            );
            assert_eq!(
                parse(&with(field, json!("  \t"))),
                Err(ProductError::MissingFields)
            );
        }
    }

    #[test]
    fn required_check_comes_before_type_checks() {
        let mut body = without("name");
        body["slug"] = json!(42);
        assert_eq!(parse(&body), Err(ProductError::MissingFields));
    }

    #[test]
    fn rejects_wrong_types() {
        assert_eq!(
            parse(&with("slug", json!(42))),
            invalid("slug must be a string, found a number")
        );
        assert_eq!(
            parse(&with("image", json!(["a"]))),
            invalid("image must be a string, found an array")
        );
        assert_eq!(
            parse(&with("basePriceCHF", json!("6.5"))),
            invalid("basePriceCHF must be a number, found a string")
        );
        assert_eq!(
            parse(&with("isActive", json!("yes"))),
            invalid("isActive must be a boolean, found a string")
        );
        assert_eq!(
            parse(&with("size", json!("S"))),
            invalid("size must be an array, found a string")
        );
        assert_eq!(
            parse(&with("extra_chf", json!([0, 2, 3]))),
            invalid("extra_chf must be an object, found an array")
        );
        assert_eq!(
            parse(&with("extra_chf", json!({"S": "1"}))),
            invalid("extra_chf.S must be a number, found a string")
        );
    }

    #[test]
    fn rejects_negative_amounts() {
        assert_eq!(
            parse(&with("basePriceCHF", json!(-0.5))),
            invalid("basePriceCHF must not be negative")
        );
        assert_eq!(
            parse(&with("extra_chf", json!({"L": -1}))),
            invalid("extra_chf.L must not be negative")
        );
    }

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(
            parse(&with("size", json!([]))),
            invalid("size must list at least one size")
        );
        assert_eq!(
            parse(&with("size", json!(["S", "XL"]))),
            invalid(r#"size[1] must be "S", "M" or "L""#)
        );
        assert_eq!(
            parse(&with("size", json!(["s"]))),
            invalid(r#"size[0] must be "S", "M" or "L""#)
        );
        assert_eq!(
            parse(&with("size", json!([1]))),
            invalid(r#"size[0] must be "S", "M" or "L""#)
        );
        assert_eq!(
            parse(&with("size", json!(["M", "M"]))),
            invalid("size lists M more than once")
        );
    }

    #[test]
    fn limits_lengths_in_characters_after_trimming() {
        let limits = [
            ("slug", MAX_SLUG_CHARS),
            ("name", MAX_NAME_CHARS),
            ("category", MAX_CATEGORY_CHARS),
            ("description", MAX_DESCRIPTION_CHARS),
            ("image", MAX_IMAGE_CHARS),
        ];
        for (field, max) in limits {
            // Multi-byte characters: the limit counts characters, not bytes.
            let longest = format!("  {}  ", "é".repeat(max));
            assert!(parse(&with(field, json!(longest))).is_ok(), "{field}");
            assert_eq!(
                parse(&with(field, json!("é".repeat(max + 1)))),
                invalid(&format!("{field} must be at most {max} characters"))
            );
        }
    }

    #[test]
    fn rejects_malformed_json_and_non_objects() {
        assert!(matches!(
            NewProduct::from_json(b"{\"slug\":"),
            Err(ProductError::Json(e)) if e.contains("EOF")
        ));
        assert!(matches!(
            NewProduct::from_json(b""),
            Err(ProductError::Json(_))
        ));
        assert_eq!(
            NewProduct::from_json(b"[1,2]"),
            Err(ProductError::Json(
                "expected an object, found an array".into()
            ))
        );
        assert_eq!(
            NewProduct::from_json(b"null"),
            Err(ProductError::Json("expected an object, found null".into()))
        );
    }

    #[test]
    fn completes_the_document() {
        let now = OffsetDateTime::from_unix_timestamp_nanos(1_764_265_708_123_999_000).unwrap();
        let product = parse(&valid()).unwrap().into_product(now);
        assert!(object_id::is_valid(&product.id));
        assert_eq!(&product.id[..8], format!("{:08x}", 1_764_265_708u32));
        assert_eq!(product.created_at, "2025-11-27T17:48:28.123Z");
        assert_eq!(product.updated_at, product.created_at);
    }

    fn changes(body: &Value) -> Result<ProductChanges, ProductError> {
        ProductChanges::from_json(body.to_string().as_bytes())
    }

    #[test]
    fn an_empty_update_changes_nothing() {
        assert_eq!(
            ProductChanges::from_json(b""),
            Ok(ProductChanges::default())
        );
        assert_eq!(changes(&json!({})), Ok(ProductChanges::default()));
        // Fields the API does not let clients set are ignored like unknown ones.
        assert_eq!(
            changes(&json!({
                "_id": "65643f1adeadbeef010a0b0c",
                "createdAt": "2020-01-01T00:00:00.000Z",
                "updatedAt": "2020-01-01T00:00:00.000Z",
                "color": "green"
            })),
            Ok(ProductChanges::default())
        );
    }

    #[test]
    fn an_update_takes_each_field_it_sets_trimmed() {
        let mut body = valid();
        body["slug"] = json!(" hojicha-latte ");
        body["isActive"] = json!(false);
        body["size"] = json!(["M"]);
        body["extra_chf"] = json!({"S": 1, "M": 2.5, "L": 4});
        assert_eq!(
            changes(&body),
            Ok(ProductChanges {
                slug: Some("hojicha-latte".into()),
                name: Some("Matcha Latte".into()),
                category: Some("tea".into()),
                description: Some("Ceremonial matcha".into()),
                base_price_chf: Some(6.5),
                is_active: Some(false),
                image: Some("/img/matcha.png".into()),
                size: Some(vec![Size::M]),
                extra_chf: Some(ExtraChf {
                    s: 1.0,
                    m: 2.5,
                    l: 4.0
                }),
            })
        );
        assert_eq!(
            changes(&json!({"name": "\tHojicha "})),
            Ok(ProductChanges {
                name: Some("Hojicha".into()),
                ..ProductChanges::default()
            })
        );
    }

    #[test]
    fn an_update_may_not_empty_a_required_field() {
        for field in ["slug", "name", "category", "description", "image"] {
            for blank in ["", "  \t"] {
                assert_eq!(
                    changes(&json!({ field: blank })),
                    Err(ProductError::Invalid(format!("{field} must not be empty"))),
                    "{field}"
                );
            }
            assert_eq!(
                changes(&json!({ field: null })),
                Err(ProductError::Invalid(format!(
                    "{field} must be a string, found null"
                )))
            );
        }
        assert_eq!(
            changes(&json!({"basePriceCHF": null})),
            Err(ProductError::Invalid(
                "basePriceCHF must be a number, found null".into()
            ))
        );
    }

    #[test]
    fn null_sets_an_optional_field_to_its_default() {
        assert_eq!(
            changes(&json!({"isActive": null, "size": null, "extra_chf": null})),
            Ok(ProductChanges {
                is_active: Some(true),
                size: Some(vec![Size::S, Size::M, Size::L]),
                extra_chf: Some(ExtraChf::default()),
                ..ProductChanges::default()
            })
        );
    }

    #[test]
    fn a_partial_extra_chf_replaces_the_table_with_defaults_for_the_rest() {
        assert_eq!(
            changes(&json!({"extra_chf": {"M": 1.5, "L": null}})),
            Ok(ProductChanges {
                extra_chf: Some(ExtraChf {
                    s: 0.0,
                    m: 1.5,
                    l: 3.0
                }),
                ..ProductChanges::default()
            })
        );
    }

    #[test]
    fn an_update_checks_types_ranges_and_lengths_as_creation_does() {
        let cases = [
            (json!({"slug": 42}), "slug must be a string, found a number"),
            (
                json!({"basePriceCHF": "6.5"}),
                "basePriceCHF must be a number, found a string",
            ),
            (
                json!({"basePriceCHF": -0.5}),
                "basePriceCHF must not be negative",
            ),
            (
                json!({"isActive": "yes"}),
                "isActive must be a boolean, found a string",
            ),
            (json!({"size": []}), "size must list at least one size"),
            (json!({"size": ["M", "M"]}), "size lists M more than once"),
            (
                json!({"extra_chf": {"L": -1}}),
                "extra_chf.L must not be negative",
            ),
            (
                json!({"extra_chf": [0, 2, 3]}),
                "extra_chf must be an object, found an array",
            ),
            (
                json!({"name": "é".repeat(MAX_NAME_CHARS + 1)}),
                "name must be at most 200 characters",
            ),
        ];
        for (body, error) in cases {
            assert_eq!(
                changes(&body),
                Err(ProductError::Invalid(error.into())),
                "{body}"
            );
        }
        // The longest name, multi-byte and padded, is accepted.
        let longest = format!(" {} ", "é".repeat(MAX_NAME_CHARS));
        assert!(changes(&json!({ "name": longest })).is_ok());
    }

    #[test]
    fn an_update_rejects_malformed_json_and_non_objects() {
        assert!(matches!(
            ProductChanges::from_json(b"{\"name\":"),
            Err(ProductError::Json(e)) if e.contains("EOF")
        ));
        assert!(matches!(
            ProductChanges::from_json(b" "),
            Err(ProductError::Json(_))
        ));
        assert_eq!(
            ProductChanges::from_json(b"[]"),
            Err(ProductError::Json(
                "expected an object, found an array".into()
            ))
        );
    }

    #[test]
    fn applying_changes_sets_only_those_fields_and_stamps_updated_at() {
        let created = OffsetDateTime::from_unix_timestamp(1_764_265_708).unwrap();
        let product = parse(&valid()).unwrap().into_product(created);
        let later = created + time::Duration::milliseconds(1_500);

        let mut updated = product.clone();
        changes(&json!({"name": "Hojicha", "extra_chf": {"S": 1}}))
            .unwrap()
            .apply_to(&mut updated, later);
        assert_eq!(
            updated,
            Product {
                name: "Hojicha".into(),
                extra_chf: ExtraChf {
                    s: 1.0,
                    m: 2.0,
                    l: 3.0
                },
                updated_at: "2025-11-27T17:48:29.500Z".into(),
                ..product.clone()
            }
        );

        let mut untouched = product.clone();
        ProductChanges::default().apply_to(&mut untouched, later);
        assert_eq!(
            untouched,
            Product {
                updated_at: "2025-11-27T17:48:29.500Z".into(),
                ..product
            }
        );
    }

    #[test]
    fn timestamps_are_utc() {
        let local = OffsetDateTime::from_unix_timestamp(0)
            .unwrap()
            .to_offset(UtcOffset::from_hms(2, 0, 0).unwrap());
        assert_eq!(timestamp(local), "1970-01-01T00:00:00.000Z");
    }
}
