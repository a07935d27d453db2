//! The events ocha-server publishes through its [`Hub`](ocha_realtime::Hub),
//! and the documents they carry.
//!
//! Field names, order and number formatting follow the Ocha API byte for
//! byte, so clients written against it keep working.

use serde::{Deserialize, Serialize};

mod js_number;

/// An event pushed to every connected client.
///
/// Serialized with its kind in a leading `type` field, as the Ocha API does:
///
/// ```
/// # use ocha_server::event::{Event, Product};
/// # fn show(product: Product) {
/// let json = serde_json::to_string(&Event::NewProduct { product }).unwrap();
/// assert!(json.starts_with(r#"{"type":"new_product","product":{"_id":"#));
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A product was created and committed.
    NewProduct {
        /// The product as persisted.
        product: Product,
    },
    /// A product was updated and committed: `{"type":"product_updated",...}`.
    ProductUpdated {
        /// The product as persisted, its new `updatedAt` included.
        product: Product,
    },
    /// A product was deleted and committed: `{"type":"product_deleted",...}`.
    ProductDeleted {
        /// The product as it was just before.
        product: Product,
    },
}

impl Event {
    /// The event's `type` field, such as `new_product`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::NewProduct { .. } => "new_product",
            Event::ProductUpdated { .. } => "product_updated",
            Event::ProductDeleted { .. } => "product_deleted",
        }
    }
}

/// An event with its position in the event log, as clients receive it: the
/// event's fields, then the id as a string, last.
///
/// The id is a string because JavaScript numbers lose integers past 2^53,
/// and last so that the event's own bytes stay those of the Ocha API, with
/// one field appended that its clients ignore:
///
/// ```
/// # use ocha_server::event::{Event, Numbered, Product};
/// # fn show(product: Product) {
/// let event = Event::NewProduct { product };
/// let json = serde_json::to_string(&Numbered { event: &event, id: "42".into() }).unwrap();
/// assert!(json.starts_with(r#"{"type":"new_product","product":{"_id":"#));
/// assert!(json.ends_with(r#"},"id":"42"}"#));
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Numbered<'a> {
    /// The event, whose fields come first.
    #[serde(flatten)]
    pub event: &'a Event,
    /// The event's id in the log, in decimal.
    pub id: String,
}

/// A product document, with the Ocha API's field names in its order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    /// 24 lowercase hex digits in MongoDB ObjectId layout.
    #[serde(rename = "_id")]
    pub id: String,
    /// Unique URL-friendly name.
    pub slug: String,
    /// Unique display name.
    pub name: String,
    /// Free-form category.
    pub category: String,
    /// Free-form description.
    pub description: String,
    /// Price of the smallest size, in Swiss francs.
    #[serde(rename = "basePriceCHF", with = "js_number")]
    pub base_price_chf: f64,
    /// Whether the product is on sale.
    #[serde(rename = "isActive")]
    pub is_active: bool,
    /// Image URL or path.
    pub image: String,
    /// Sizes on offer.
    pub size: Vec<Size>,
    /// Surcharge per size, in Swiss francs.
    pub extra_chf: ExtraChf,
    /// Creation time, ISO 8601 UTC with milliseconds.
    #[serde(rename = "createdAt")]
    pub created_at: String,
    /// Last update time, ISO 8601 UTC with milliseconds.
    #[serde(rename = "updatedAt")]
    pub updated_at: String,
}

/// A product size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Size {
    /// Small.
    S,
    /// Medium.
    M,
    /// Large.
    L,
}

/// Surcharge per size, in Swiss francs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ExtraChf {
    /// Surcharge for [`Size::S`].
    #[serde(rename = "S", with = "js_number")]
    pub s: f64,
    /// Surcharge for [`Size::M`].
    #[serde(rename = "M", with = "js_number")]
    pub m: f64,
    /// Surcharge for [`Size::L`].
    #[serde(rename = "L", with = "js_number")]
    pub l: f64,
}

impl Default for ExtraChf {
    /// The Ocha API's default: `{"S":0,"M":2,"L":3}`.
    fn default() -> Self {
        ExtraChf {
            s: 0.0,
            m: 2.0,
            l: 3.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product() -> Product {
        Product {
            id: "65f1c0de0123456789abcdef".into(),
            slug: "matcha-latte".into(),
            name: "Matcha Latte".into(),
            category: "tea".into(),
            description: "Ceremonial matcha".into(),
            base_price_chf: 6.5,
            is_active: true,
            image: "/img/matcha.png".into(),
            size: vec![Size::S, Size::M, Size::L],
            extra_chf: ExtraChf::default(),
            created_at: "2026-11-27T17:48:28.123Z".into(),
            updated_at: "2026-11-27T17:48:28.123Z".into(),
        }
    }

    #[test]
    fn new_product_matches_the_ocha_wire_format() {
        let json = serde_json::to_string(&Event::NewProduct { product: product() }).unwrap();
        assert_eq!(
            json,
            r#"{"type":"new_product","product":{"_id":"65f1c0de0123456789abcdef","slug":"matcha-latte","name":"Matcha Latte","category":"tea","description":"Ceremonial matcha","basePriceCHF":6.5,"isActive":true,"image":"/img/matcha.png","size":["S","M","L"],"extra_chf":{"S":0,"M":2,"L":3},"createdAt":"2026-11-27T17:48:28.123Z","updatedAt":"2026-11-27T17:48:28.123Z"}}"#
        );
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Event::NewProduct { product: product() });
    }

    #[test]
    fn updates_and_deletes_carry_the_document_under_their_own_type() {
        let document = serde_json::to_string(&product()).unwrap();
        for (event, kind) in [
            (
                Event::ProductUpdated { product: product() },
                "product_updated",
            ),
            (
                Event::ProductDeleted { product: product() },
                "product_deleted",
            ),
        ] {
            let json = serde_json::to_string(&Numbered {
                event: &event,
                id: "7".into(),
            })
            .unwrap();
            assert_eq!(
                json,
                format!(r#"{{"type":"{kind}","product":{document},"id":"7"}}"#)
            );
            assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);
        }
    }

    #[test]
    fn names_are_the_type_field() {
        let event = Event::NewProduct { product: product() };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], event.name());
    }

    #[test]
    fn a_numbered_event_carries_its_id_last_as_a_string() {
        let event = Event::NewProduct { product: product() };
        let json = serde_json::to_string(&Numbered {
            event: &event,
            id: "42".into(),
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"type":"new_product","product":{"_id":"65f1c0de0123456789abcdef","slug":"matcha-latte","name":"Matcha Latte","category":"tea","description":"Ceremonial matcha","basePriceCHF":6.5,"isActive":true,"image":"/img/matcha.png","size":["S","M","L"],"extra_chf":{"S":0,"M":2,"L":3},"createdAt":"2026-11-27T17:48:28.123Z","updatedAt":"2026-11-27T17:48:28.123Z"},"id":"42"}"#
        );
        // Clients that know only the Ocha API's events still read it.
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn whole_numbers_print_without_a_fraction() {
        let mut p = product();
        p.base_price_chf = 4.0;
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains(r#""basePriceCHF":4,"#), "{json}");
    }
}
