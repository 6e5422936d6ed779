//! An Auth0 user profile as the Management API returns it.
//!
//! Parsing is deliberately lenient: the profile is stored whole in `users.raw`, and each typed
//! column is read from it when present and of the expected type. A field Auth0 adds, drops or
//! changes the type of never fails a sync; only a missing `user_id` makes a record unusable.
//! Field list: auth0.com/docs/manage-users/user-accounts/user-profiles/user-profile-structure

use chrono::{DateTime, Utc};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct Auth0User {
    /// `{provider}|{id}`, the OIDC `sub`.
    pub user_id: String,
    pub email: Option<String>,
    pub email_verified: Option<bool>,
    pub name: Option<String>,
    pub nickname: Option<String>,
    pub picture: Option<String>,
    pub blocked: Option<bool>,
    pub logins_count: Option<i32>,
    pub last_login: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub app_metadata: Option<Value>,
    pub user_metadata: Option<Value>,
    pub identities: Option<Value>,
    /// The profile exactly as received (JSON text), unknown fields included.
    pub raw: String,
}

impl Auth0User {
    /// Reads one profile; `None` when it has no usable `user_id`.
    pub fn from_value(value: &Value, raw: String) -> Option<Self> {
        let user_id = value.get("user_id")?.as_str()?.trim();
        if user_id.is_empty() {
            return None;
        }
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
        let flag = |key: &str| value.get(key).and_then(Value::as_bool);
        let object = |key: &str| value.get(key).filter(|v| !v.is_null()).cloned();
        Some(Self {
            user_id: user_id.to_owned(),
            email: text("email"),
            email_verified: flag("email_verified"),
            name: text("name"),
            nickname: text("nickname"),
            picture: text("picture"),
            blocked: flag("blocked"),
            logins_count: value
                .get("logins_count")
                .and_then(Value::as_i64)
                .map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
            last_login: timestamp(value.get("last_login")),
            created_at: timestamp(value.get("created_at")),
            updated_at: timestamp(value.get("updated_at")),
            app_metadata: object("app_metadata"),
            user_metadata: object("user_metadata"),
            identities: object("identities"),
            raw,
        })
    }

    /// Parses one JSON document (an NDJSON line of an export, for instance).
    pub fn from_json(text: &str) -> Option<Self> {
        let value: Value = serde_json::from_str(text).ok()?;
        Self::from_value(&value, text.to_owned())
    }
}

/// Auth0 sends RFC 3339 strings (`2024-01-02T03:04:05.678Z`); export files have been seen with
/// Mongo-style `{"$date": "..."}` wrappers, accepted too.
fn timestamp(value: Option<&Value>) -> Option<DateTime<Utc>> {
    let text = match value? {
        Value::String(s) => s.as_str(),
        Value::Object(map) => map.get("$date")?.as_str()?,
        _ => return None,
    };
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_known_fields_and_keeps_the_rest_raw() {
        let text = r#"{"user_id":"auth0|1","email":"a@example.com","email_verified":true,
            "updated_at":"2024-01-02T03:04:05.678Z","logins_count":3,"identities":[{"provider":"auth0"}],
            "brand_new_field":{"x":1},"name":7}"#;
        let user = Auth0User::from_json(text).unwrap();
        assert_eq!(user.user_id, "auth0|1");
        assert_eq!(user.email.as_deref(), Some("a@example.com"));
        assert_eq!(user.logins_count, Some(3));
        assert_eq!(
            user.name, None,
            "a wrongly typed field is skipped, not fatal"
        );
        assert_eq!(
            user.updated_at.unwrap().to_rfc3339(),
            "2024-01-02T03:04:05.678+00:00"
        );
        assert!(user.raw.contains("brand_new_field"));
    }

    #[test]
    fn a_profile_without_user_id_is_unusable() {
        assert!(Auth0User::from_json(r#"{"email":"a@example.com"}"#).is_none());
        assert!(Auth0User::from_json(r#"{"user_id":""}"#).is_none());
        assert!(Auth0User::from_json("not json").is_none());
    }

    #[test]
    fn export_style_dates_are_accepted() {
        let user = Auth0User::from_json(
            r#"{"user_id":"x|1","created_at":{"$date":"2020-05-06T07:08:09.000Z"}}"#,
        )
        .unwrap();
        assert!(user.created_at.is_some());
    }
}
