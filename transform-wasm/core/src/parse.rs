//! Parsing a login body: straight into the six fields it may carry,
//! borrowing from the body wherever JSON needs no unescaping: no tree of
//! values, and almost no allocation (which costs most inside wasm). Other
//! keys are skipped; a repeated key keeps its last value, as in serde_json's
//! own maps.

use std::borrow::Cow;
use std::fmt;

use maskpipe_guest::Rejection;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A login field as sent: a string, null, or some other JSON kind.
pub(crate) enum Field<'a> {
    Str(Cow<'a, str>),
    Null,
    Other(&'static str),
}

#[derive(Default)]
pub(crate) struct Login<'a> {
    pub user_id: Option<Field<'a>>,
    pub device_type: Option<Field<'a>>,
    pub ip: Option<Field<'a>>,
    pub device_id: Option<Field<'a>>,
    pub app_version: Option<Field<'a>>,
    pub locale: Option<Field<'a>>,
}

pub(crate) fn parse(body: &str) -> Result<Login<'_>, Rejection> {
    let invalid = |e: serde_json::Error| {
        // serde_json's syntax errors carry a position, never the input text.
        Rejection::new(
            "invalid_json",
            format!(
                "body is not valid JSON ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        )
    };
    let mut deserializer = serde_json::Deserializer::from_str(body);
    let top = deserializer.deserialize_any(TopVisitor).map_err(invalid)?;
    deserializer.end().map_err(invalid)?;
    match top {
        Top::Object(login) => Ok(login),
        Top::Other(kind) => Err(Rejection::new(
            "not_an_object",
            format!("body is JSON {kind}, not an object"),
        )),
    }
}

enum Top<'a> {
    Object(Login<'a>),
    Other(&'static str),
}

/// Accepts any JSON value: an object is read as a login, the rest is named.
struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Top<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut login = Login::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let slot = match &*key.0 {
                "user_id" => &mut login.user_id,
                "device_type" => &mut login.device_type,
                "ip" => &mut login.ip,
                "device_id" => &mut login.device_id,
                "app_version" => &mut login.app_version,
                "locale" => &mut login.locale,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value::<FieldSeed<'de>>()?.0);
        }
        Ok(Top::Object(login))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Top::Other("array"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Top::Other("string"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Top::Other("boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Top::Other("number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Top::Other("number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Top::Other("number"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Top::Other("null"))
    }
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(StrVisitor).map(Key)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(text))
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(text.to_owned()))
    }
    fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(text))
    }
}

/// A field's value: its string, or the kind of whatever else it is.
struct FieldSeed<'a>(Field<'a>);

impl<'de> Deserialize<'de> for FieldSeed<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldVisitor).map(FieldSeed)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Borrowed(text)))
    }
    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(text.to_owned())))
    }
    fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(text)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Field::Null)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Field::Other("boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Field::Other("number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Field::Other("number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Field::Other("number"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::Other("array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Other("object"))
    }
}
