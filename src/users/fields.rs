//! The user's fields, listed once: what is read from an Auth0 profile, stored in `users`, asked
//! for in an export and shown by the admin page and API all follow from the table at the bottom
//! of this file ([`Auth0User`], [`UserRow`], [`COLUMNS`], [`EXPORT_FIELDS`]).
//!
//! Each line names the profile attribute (Auth0's name, which the API view uses too), how its
//! value is read, the `users` column it lands in, and how a new value meets the stored one.
//! Attribute list: auth0.com/docs/manage-users/user-accounts/user-profiles/user-profile-structure

use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Value, value::RawValue};

/// How a profile's value meets the value already stored, when a profile no older than the
/// stored one is written (an older profile is never written: see [`Merge::Version`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// The conflict key, `user_id`.
    Key,
    /// A value of unknown meaning (absent, or `"maybe"` where a boolean belongs) keeps the
    /// stored one, which a sign-in may have written: `coalesce(new, stored)`.
    KeepKnown,
    /// [`Merge::KeepKnown`], and the version of the profile: a profile older than the stored
    /// one is not written (equal is, so replaying a batch refreshes it).
    Version,
    /// Only moves forward: `greatest(new, stored)`.
    Latest,
    /// Replaced as sent, absence included (metadata an application removed is gone).
    AsSent,
}

/// One column of `users` that a profile fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    /// Its Postgres type (`text`, `boolean`, `integer`, `timestamptz`, `jsonb`).
    pub sql_type: &'static str,
    pub merge: Merge,
}

/// One value of a row, borrowed from an [`Auth0User`], in the column's kind. `None` is SQL
/// `NULL`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    Text(Option<&'a str>),
    Flag(Option<bool>),
    Count(Option<i32>),
    Time(Option<DateTime<Utc>>),
    /// JSON text (valid, storable).
    Json(Option<&'a str>),
}

/// How one kind of attribute is read from a profile and stored. The kinds are the types named
/// in the table: [`Text`], [`Flag`], [`Count`], [`Time`], [`Json`].
pub trait Kind {
    /// What the attribute holds once read.
    type Value;
    const SQL_TYPE: &'static str;
    /// The value of the attribute's JSON, or `None` when its meaning is unknown (another type,
    /// `null`, nonsense): unknown never erases known ([`Merge::KeepKnown`]).
    fn read(json: &RawValue, now: DateTime<Utc>) -> Option<Self::Value>;
    fn cell(value: Option<&Self::Value>) -> Cell<'_>;
}

/// A string attribute.
pub struct Text;
/// A boolean attribute, also sent as the strings `"true"` and `"false"` by profiles from some
/// connections (the same rule as openidconnect's `accept-string-booleans`, which sign-in uses).
pub struct Flag;
/// A non-negative whole number, sent as a number or a string of digits; capped at `i32::MAX`
/// (the column is `integer`).
pub struct Count;
/// A time: Auth0 sends RFC 3339 strings (`2024-01-02T03:04:05.678Z`); export files have been
/// seen with Mongo-style `{"$date": "..."}` wrappers, accepted too. A time more than a day in
/// the future is not a real one: stored, it would win every newer-profile comparison and push
/// the incremental watermark past every later change.
pub struct Time;
/// A JSON document (metadata, identities), kept as its text.
pub struct Json;

/// A time later than this past the present is unknown (see [`Time`]).
const FUTURE_TOLERANCE: chrono::Duration = chrono::Duration::days(1);

/// A small scalar's JSON as a value (strings and numbers only: objects only for [`Time`]).
fn scalar(json: &RawValue) -> Option<Value> {
    serde_json::from_str(json.get()).ok()
}

impl Kind for Text {
    type Value = String;
    const SQL_TYPE: &'static str = "text";
    fn read(json: &RawValue, _: DateTime<Utc>) -> Option<String> {
        json.get()
            .starts_with('"')
            .then(|| serde_json::from_str(json.get()).ok())
            .flatten()
    }
    fn cell(value: Option<&String>) -> Cell<'_> {
        Cell::Text(value.map(String::as_str))
    }
}

impl Kind for Flag {
    type Value = bool;
    const SQL_TYPE: &'static str = "boolean";
    fn read(json: &RawValue, _: DateTime<Utc>) -> Option<bool> {
        match json.get() {
            "true" => Some(true),
            "false" => Some(false),
            text if text.starts_with('"') => {
                serde_json::from_str::<String>(text).ok()?.parse().ok()
            }
            _ => None,
        }
    }
    fn cell(value: Option<&bool>) -> Cell<'_> {
        Cell::Flag(value.copied())
    }
}

impl Kind for Count {
    type Value = i32;
    const SQL_TYPE: &'static str = "integer";
    fn read(json: &RawValue, _: DateTime<Utc>) -> Option<i32> {
        let n = match scalar(json)? {
            Value::Number(n) => n.as_u64().or_else(|| {
                n.as_f64()
                    .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                    .map(|f| f as u64)
            })?,
            Value::String(s) => s.trim().parse::<u64>().ok()?,
            _ => return None,
        };
        Some(i32::try_from(n).unwrap_or(i32::MAX))
    }
    fn cell(value: Option<&i32>) -> Cell<'_> {
        Cell::Count(value.copied())
    }
}

impl Kind for Time {
    type Value = DateTime<Utc>;
    const SQL_TYPE: &'static str = "timestamptz";
    fn read(json: &RawValue, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let value = scalar(json)?;
        let text = match &value {
            Value::String(s) => s.as_str(),
            Value::Object(map) => map.get("$date")?.as_str()?,
            _ => return None,
        };
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.with_timezone(&Utc))
            .filter(|t| *t <= now + FUTURE_TOLERANCE)
    }
    fn cell(value: Option<&DateTime<Utc>>) -> Cell<'_> {
        Cell::Time(value.copied())
    }
}

impl Kind for Json {
    type Value = Box<RawValue>;
    const SQL_TYPE: &'static str = "jsonb";
    fn read(json: &RawValue, _: DateTime<Utc>) -> Option<Box<RawValue>> {
        (json.get() != "null").then(|| json.to_owned())
    }
    fn cell(value: Option<&Box<RawValue>>) -> Cell<'_> {
        Cell::Json(value.map(|json| json.get()))
    }
}

/// The top-level attributes of one profile that [`Auth0User`] reads (those of [`PROFILE_KEYS`]),
/// each as its JSON text; the others are only in `raw`.
#[derive(Debug, Default)]
pub(crate) struct ProfileFields<'a> {
    values: [Option<&'a RawValue>; PROFILE_KEYS.len()],
}

impl<'a> ProfileFields<'a> {
    /// The attributes of the profile in `text`, borrowed from it; the others are checked for
    /// syntax and skipped, so no tree of the whole profile is built. A key seen twice keeps its
    /// last value, as serde_json's own maps do.
    pub(crate) fn read(text: &'a str) -> Result<Self, serde_json::Error> {
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let fields = (&mut deserializer).deserialize_map(ProfileVisitor)?;
        deserializer.end()?;
        Ok(fields)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.values[position(key)?]
    }
}

fn position(key: &str) -> Option<usize> {
    PROFILE_KEYS.iter().position(|k| *k == key)
}

struct ProfileVisitor;

impl<'de> Visitor<'de> for ProfileVisitor {
    type Value = ProfileFields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = ProfileFields::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match position(key.as_str()) {
                Some(at) => fields.values[at] = Some(map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// An object key, borrowed from the text unless it holds escapes.
enum Key<'a> {
    Borrowed(&'a str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(key) => key,
            Key::Owned(key) => key,
        }
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Borrowed(key))
            }

            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key::Owned(key.to_owned()))
            }

            fn visit_string<E>(self, key: String) -> Result<Key<'de>, E> {
                Ok(Key::Owned(key))
            }
        }

        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Defines the user's field list; invoked once, below.
macro_rules! user_fields {
    (
        scalars {
            $( $(#[doc = $s_doc:literal])* $s_field:ident: $s_kind:ident => $s_column:literal, $s_merge:ident; )*
        }
        documents {
            $( $(#[doc = $d_doc:literal])* $d_field:ident: $d_kind:ident => $d_column:literal, $d_merge:ident; )*
        }
        raw_only { $( $r_field:ident ),* $(,)? }
    ) => {
        /// An Auth0 user profile as the Management API returns it (a page element, a single
        /// read, an NDJSON line of an export, a webhook's user), read leniently: each attribute
        /// is `None` when absent or of a type or value whose meaning is unknown, and the upsert
        /// then keeps the stored value. Every value is storable (`users::storable`).
        #[derive(Debug, Clone)]
        pub struct Auth0User {
            /// `{provider}|{id}`, the OIDC `sub`.
            pub user_id: String,
            $( $(#[doc = $s_doc])* pub $s_field: Option<<$s_kind as Kind>::Value>, )*
            $( $(#[doc = $d_doc])* pub $d_field: Option<<$d_kind as Kind>::Value>, )*
            /// The profile as received (JSON text), unknown attributes included; re-serialised
            /// only when the storable rule had to change something.
            pub raw: String,
        }

        impl Auth0User {
            /// The profile of `fields`, with `raw` left empty.
            pub(crate) fn from_fields(
                user_id: String,
                fields: &ProfileFields<'_>,
                now: DateTime<Utc>,
            ) -> Self {
                Self {
                    user_id,
                    $( $s_field: fields.get(stringify!($s_field)).and_then(|json| <$s_kind as Kind>::read(json, now)), )*
                    $( $d_field: fields.get(stringify!($d_field)).and_then(|json| <$d_kind as Kind>::read(json, now)), )*
                    raw: String::new(),
                }
            }

            /// The row's values, in the order of [`COLUMNS`].
            pub fn cells(&self) -> [Cell<'_>; COLUMNS.len()] {
                [
                    Cell::Text(Some(&self.user_id)),
                    $( <$s_kind as Kind>::cell(self.$s_field.as_ref()), )*
                    $( <$d_kind as Kind>::cell(self.$d_field.as_ref()), )*
                    Cell::Json(Some(&self.raw)),
                ]
            }
        }

        /// The columns of `users` a profile fills, in the order of [`Auth0User::cells`].
        pub const COLUMNS: &[Column] = &[
            Column { name: "user_id", sql_type: "text", merge: Merge::Key },
            $( Column { name: $s_column, sql_type: <$s_kind as Kind>::SQL_TYPE, merge: Merge::$s_merge }, )*
            $( Column { name: $d_column, sql_type: <$d_kind as Kind>::SQL_TYPE, merge: Merge::$d_merge }, )*
            Column { name: "raw", sql_type: "jsonb", merge: Merge::AsSent },
        ];

        /// The attributes an export is asked for: a JSON export has no other way to say
        /// "everything", and what is not asked for is missing from `raw` too.
        pub const EXPORT_FIELDS: &[&str] = &[
            "user_id",
            $( stringify!($s_field), )*
            $( stringify!($d_field), )*
            $( stringify!($r_field), )*
        ];

        /// The attributes [`Auth0User`] reads from a profile.
        const PROFILE_KEYS: &[&str] = &[
            "user_id",
            $( stringify!($s_field), )*
            $( stringify!($d_field), )*
        ];

        /// A row of `users` as the admin page and API read it: the scalar attributes under
        /// their Auth0 names, and what the sync knows about the row.
        #[derive(Debug, Clone, sqlx::FromRow, poem_openapi::Object)]
        #[oai(skip_serializing_if_is_none)]
        pub struct UserRow {
            pub user_id: String,
            $( $(#[doc = $s_doc])* #[sqlx(rename = $s_column)] pub $s_field: Option<<$s_kind as Kind>::Value>, )*
            /// When the row was first written (by a sync or a sign-in).
            pub first_seen_at: DateTime<Utc>,
            /// When a sync last saw the user.
            pub synced_at: Option<DateTime<Utc>>,
            /// Set when a full sync no longer found the user at the provider.
            pub deleted_at: Option<DateTime<Utc>>,
        }

        /// The `SELECT` list of [`UserRow`].
        pub const USER_ROW_COLUMNS: &str = concat!(
            "user_id",
            $( ", ", $s_column, )*
            ", first_seen_at, synced_at, deleted_at"
        );
    };
}

user_fields! {
    scalars {
        email: Text => "email", KeepKnown;
        email_verified: Flag => "email_verified", KeepKnown;
        name: Text => "name", KeepKnown;
        nickname: Text => "nickname", KeepKnown;
        picture: Text => "picture", KeepKnown;
        blocked: Flag => "blocked", KeepKnown;
        logins_count: Count => "logins_count", KeepKnown;
        last_login: Time => "last_login", Latest;
        /// When the account was created at Auth0.
        created_at: Time => "auth0_created_at", KeepKnown;
        /// When Auth0 last changed the profile: a newer stored profile is never replaced by an
        /// older one.
        updated_at: Time => "auth0_updated_at", Version;
    }
    documents {
        app_metadata: Json => "app_metadata", AsSent;
        user_metadata: Json => "user_metadata", AsSent;
        identities: Json => "identities", AsSent;
    }
    // Kept in `raw` only.
    raw_only { username, phone_number, phone_verified, given_name, family_name, last_ip }
}

/// The names of [`COLUMNS`] as a column list: `user_id, email, ...` (for `INSERT`, `COPY`
/// and the like).
pub fn column_list() -> String {
    COLUMNS
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The column whose [`Merge::Version`] decides which profile is newer.
pub fn version_column() -> &'static str {
    COLUMNS
        .iter()
        .find(|c| c.merge == Merge::Version)
        .map_or("auth0_updated_at", |c| c.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_has_a_cell_of_its_type() {
        let user = crate::users::auth0_user::Auth0User::parse(
            r#"{"user_id":"auth0|1","email":"a@example.com","email_verified":true,"logins_count":2,
                "updated_at":"2024-01-02T03:04:05.678Z","identities":[]}"#,
        )
        .unwrap();
        for (column, cell) in COLUMNS.iter().zip(user.cells()) {
            let sql_type = match cell {
                Cell::Text(_) => "text",
                Cell::Flag(_) => "boolean",
                Cell::Count(_) => "integer",
                Cell::Time(_) => "timestamptz",
                Cell::Json(_) => "jsonb",
            };
            assert_eq!(column.sql_type, sql_type, "{}", column.name);
        }
        assert_eq!(version_column(), "auth0_updated_at");
        assert_eq!(COLUMNS.first().map(|c| c.merge), Some(Merge::Key));
        assert!(EXPORT_FIELDS.contains(&"identities") && EXPORT_FIELDS.contains(&"username"));
        assert!(USER_ROW_COLUMNS.contains("auth0_created_at"));
    }
}
