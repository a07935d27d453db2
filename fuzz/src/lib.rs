//! Building blocks shared by the fuzz targets: JSON values the fuzzer builds
//! piece by piece, so that inputs get past the parser to the checks behind
//! it, with strings drawn often from the words those checks look for.

#![deny(missing_docs)]

use arbitrary::Arbitrary;
use serde_json::{Map, Number, Value};

/// Words the product, JWT and handshake checks compare against; random bytes
/// would almost never spell them.
pub const WORDS: &[&str] = &[
    "slug",
    "name",
    "category",
    "description",
    "basePriceCHF",
    "image",
    "isActive",
    "size",
    "extra_chf",
    "S",
    "M",
    "L",
    " S ",
    "XL",
    "",
    " \t",
    "id",
    "role",
    "admin",
    "iat",
    "exp",
    "nbf",
    "aud",
    "alg",
    "typ",
    "HS256",
    "JWT",
    "none",
];

/// A string: one of [`WORDS`] or anything.
#[derive(Debug, Arbitrary)]
pub enum Text {
    /// `WORDS[index % WORDS.len()]`.
    Word(u8),
    /// Any string.
    Any(String),
}

impl Text {
    /// The string this stands for.
    pub fn as_str(&self) -> &str {
        match self {
            Text::Word(index) => WORDS[usize::from(*index) % WORDS.len()],
            Text::Any(text) => text,
        }
    }
}

/// Any JSON value.
#[derive(Debug, Arbitrary)]
pub enum Json {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// Any double; JSON has no NaN or infinity, so those become `null`.
    Float(f64),
    /// A string.
    Text(Text),
    /// An array.
    Array(Vec<Json>),
    /// An object; a repeated key keeps its last value.
    Object(Vec<(Text, Json)>),
}

impl Json {
    /// The value as serde_json holds it.
    pub fn to_value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Int(i) => Value::from(*i),
            Json::Float(x) => float(*x),
            Json::Text(text) => Value::from(text.as_str()),
            Json::Array(items) => items.iter().map(Json::to_value).collect(),
            Json::Object(fields) => Value::Object(object(fields)),
        }
    }
}

/// `x` as a JSON number, or `null` when it is NaN or infinite.
pub fn float(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// A JSON object of `fields`; a repeated key keeps its last value.
pub fn object(fields: &[(Text, Json)]) -> Map<String, Value> {
    fields
        .iter()
        .map(|(key, value)| (key.as_str().to_owned(), value.to_value()))
        .collect()
}

/// A field that usually has the type its check expects.
#[derive(Debug, Arbitrary)]
pub enum Slot<T> {
    /// A value of the expected type.
    Typed(T),
    /// Left out.
    Absent,
    /// Any JSON value.
    Other(Json),
}

impl<T> Slot<T> {
    /// Sets `key` in `object` unless the slot is absent, converting a typed
    /// value with `typed`.
    pub fn put(&self, object: &mut Map<String, Value>, key: &str, typed: impl Fn(&T) -> Value) {
        let value = match self {
            Slot::Typed(value) => typed(value),
            Slot::Absent => return,
            Slot::Other(json) => json.to_value(),
        };
        object.insert(key.to_owned(), value);
    }
}
