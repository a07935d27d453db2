//! Product creation bodies: `NewProduct::from_json` never panics, and what it
//! accepts meets the documented rules and becomes a document whose JSON
//! (numbers as JavaScript writes them) reads back as the same product.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ocha_fuzz::{float, object, Json, Slot, Text};
use ocha_server::event::Event;
use ocha_server::object_id;
use ocha_server::product::{
    NewProduct, MAX_CATEGORY_CHARS, MAX_DESCRIPTION_CHARS, MAX_IMAGE_CHARS, MAX_NAME_CHARS,
    MAX_SLUG_CHARS,
};
use serde_json::{Map, Value};
use time::OffsetDateTime;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    body: Body<'a>,
    /// When the product is created, in Unix seconds (an ObjectId holds 32 bits).
    seconds: u32,
    /// Nanoseconds into that second, modulo one second.
    nanos: u32,
}

#[derive(Debug, Arbitrary)]
enum Body<'a> {
    /// Any bytes, for the JSON parser and the object check.
    Raw(&'a [u8]),
    /// An object with the API's fields, each usually of its type.
    Fields(Box<Fields>),
}

#[derive(Debug, Arbitrary)]
struct Fields {
    /// Set first, so the typed fields below usually win over them.
    unknown: Vec<(Text, Json)>,
    slug: Slot<String>,
    name: Slot<String>,
    category: Slot<String>,
    description: Slot<String>,
    base_price_chf: Slot<f64>,
    image: Slot<String>,
    is_active: Slot<bool>,
    size: Slot<Vec<Text>>,
    /// `S`, `M` and `L`.
    extra_chf: Slot<[Slot<f64>; 3]>,
}

impl Fields {
    fn to_json(&self) -> Vec<u8> {
        let mut body = object(&self.unknown);
        let text = |s: &String| Value::from(s.as_str());
        self.slug.put(&mut body, "slug", text);
        self.name.put(&mut body, "name", text);
        self.category.put(&mut body, "category", text);
        self.description.put(&mut body, "description", text);
        self.base_price_chf
            .put(&mut body, "basePriceCHF", |x| float(*x));
        self.image.put(&mut body, "image", text);
        self.is_active
            .put(&mut body, "isActive", |b| Value::Bool(*b));
        self.size.put(&mut body, "size", |sizes| {
            sizes
                .iter()
                .map(|size| Value::from(size.as_str()))
                .collect()
        });
        self.extra_chf.put(&mut body, "extra_chf", |amounts| {
            let mut extra = Map::new();
            for (key, amount) in ["S", "M", "L"].into_iter().zip(amounts) {
                amount.put(&mut extra, key, |x| float(*x));
            }
            Value::Object(extra)
        });
        serde_json::to_vec(&body).expect("a JSON value serializes")
    }
}

fn check_text(field: &str, value: &str, max_chars: usize) {
    assert!(!value.is_empty(), "{field} is empty");
    assert_eq!(value, value.trim(), "{field} is not trimmed");
    assert!(value.chars().count() <= max_chars, "{field} is too long");
}

fn check_amount(field: &str, amount: f64) {
    assert!(amount.is_finite() && amount >= 0.0, "{field} is {amount}");
}

fuzz_target!(|input: Input<'_>| {
    let body = match &input.body {
        Body::Raw(bytes) => bytes.to_vec(),
        Body::Fields(fields) => fields.to_json(),
    };
    let Ok(new) = NewProduct::from_json(&body) else {
        return;
    };

    check_text("slug", &new.slug, MAX_SLUG_CHARS);
    check_text("name", &new.name, MAX_NAME_CHARS);
    check_text("category", &new.category, MAX_CATEGORY_CHARS);
    check_text("description", &new.description, MAX_DESCRIPTION_CHARS);
    check_text("image", &new.image, MAX_IMAGE_CHARS);
    check_amount("basePriceCHF", new.base_price_chf);
    check_amount("extra_chf.S", new.extra_chf.s);
    check_amount("extra_chf.M", new.extra_chf.m);
    check_amount("extra_chf.L", new.extra_chf.l);
    assert!(!new.size.is_empty(), "no size");
    for (i, size) in new.size.iter().enumerate() {
        assert!(!new.size[..i].contains(size), "{size:?} twice");
    }

    let nanos = i128::from(input.seconds) * 1_000_000_000 + i128::from(input.nanos % 1_000_000_000);
    let now = OffsetDateTime::from_unix_timestamp_nanos(nanos).expect("a u32 timestamp is a date");
    let product = new.into_product(now);
    assert!(object_id::is_valid(&product.id), "id {}", product.id);
    assert_eq!(product.id, product.id.to_ascii_lowercase());
    assert_eq!(product.id[..8], format!("{:08x}", input.seconds));
    assert_eq!(product.created_at.len(), "2025-11-27T17:48:28.123Z".len());
    assert!(product.created_at.ends_with('Z'));
    assert_eq!(product.created_at, product.updated_at);

    let event = Event::NewProduct { product };
    let json = serde_json::to_string(&event).expect("an event serializes");
    let back: Event = serde_json::from_str(&json).expect("an event's JSON reads back");
    assert_eq!(back, event, "{json}");
});
