//! An Auth0 user profile as the Management API returns it.
//!
//! Parsing is deliberately lenient: the profile is stored whole in `users.raw`, and each typed
//! column is read from it when present and of the expected type. A field Auth0 adds, drops or
//! changes the type of never fails a sync. Every value is made storable by the one rule in
//! [`super::storable`]; only a profile without a usable `user_id`, or one that is not JSON at
//! all, is [`Unusable`].
//! Field list: auth0.com/docs/manage-users/user-accounts/user-profiles/user-profile-structure

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::storable;

#[derive(Debug, Clone, PartialEq)]
pub struct Auth0User {
    /// `{provider}|{id}`, the OIDC `sub`.
    pub user_id: String,
    /// `None` here and in the other scalar fields: absent, or of a type or value whose meaning
    /// is unknown. The upsert keeps the stored value then (a sign-in may know it).
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
    /// The profile as received (JSON text), unknown fields included; re-serialised only when
    /// the storable rule had to change something.
    pub raw: String,
}

/// A profile that cannot be stored: what it is known by (when it has a readable `user_id`) and
/// why. The sync skips it, counts it and logs both.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unusable {
    pub user_id: Option<String>,
    pub reason: String,
}

impl Unusable {
    fn new(user_id: Option<&str>, reason: impl Into<String>) -> Self {
        Self {
            user_id: user_id.map(str::to_owned),
            reason: reason.into(),
        }
    }
}

/// A timestamp later than this past the present is not a real one. Stored, it would win every
/// newer-profile comparison and push the incremental watermark past every future change.
const FUTURE_TOLERANCE: chrono::Duration = chrono::Duration::days(1);

impl Auth0User {
    /// Reads one profile from JSON text (a page element, an NDJSON line of an export).
    pub fn parse(text: &str) -> Result<Self, Unusable> {
        match storable::parse_json(text) {
            Ok((mut value, repaired)) => {
                let user_id = user_id(&value)?;
                let changed = storable::json(&mut value) || repaired;
                let raw = if changed {
                    value.to_string()
                } else {
                    text.to_owned()
                };
                Ok(Self::read(user_id, &value, raw))
            }
            Err(err) => Err(Unusable::new(
                user_id_of_unreadable(text).as_deref(),
                format!("the profile is not JSON that can be read: {err}"),
            )),
        }
    }

    /// Reads one profile already parsed (a webhook's `data.object`, for instance).
    pub fn from_value(mut value: Value) -> Result<Self, Unusable> {
        let user_id = user_id(&value)?;
        storable::json(&mut value);
        let raw = value.to_string();
        Ok(Self::read(user_id, &value, raw))
    }

    fn read(user_id: String, value: &Value, raw: String) -> Self {
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
        let object = |key: &str| value.get(key).filter(|v| !v.is_null()).cloned();
        let now = Utc::now();
        let time = |key: &str| timestamp(value.get(key)).filter(|t| *t <= now + FUTURE_TOLERANCE);
        Self {
            user_id,
            email: text("email"),
            email_verified: boolean(value.get("email_verified")),
            name: text("name"),
            nickname: text("nickname"),
            picture: text("picture"),
            blocked: boolean(value.get("blocked")),
            logins_count: count(value.get("logins_count")),
            last_login: time("last_login"),
            created_at: time("created_at"),
            updated_at: time("updated_at"),
            app_metadata: object("app_metadata"),
            user_metadata: object("user_metadata"),
            identities: object("identities"),
            raw,
        }
    }
}

/// The profile's `user_id`, checked before the storable rule runs: cleaning an id would make it
/// another user's.
fn user_id(value: &Value) -> Result<String, Unusable> {
    let Some(raw) = value.get("user_id").and_then(Value::as_str) else {
        return Err(Unusable::new(None, "the profile has no user_id"));
    };
    let id = raw.trim();
    if id.is_empty() {
        return Err(Unusable::new(None, "the profile has an empty user_id"));
    }
    if id.contains('\0') {
        return Err(Unusable::new(
            Some(id),
            "the user_id contains U+0000, which Postgres cannot store",
        ));
    }
    Ok(id.to_owned())
}

/// Best effort for logs: the `user_id` of a profile that does not parse as a whole (serde
/// skips the other fields without reading their values).
fn user_id_of_unreadable(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        user_id: String,
    }
    serde_json::from_str::<IdOnly>(text).ok().map(|p| p.user_id)
}

/// JSON booleans, and the strings `"true"` and `"false"` that profiles from some connections
/// carry (the same rule as openidconnect's `accept-string-booleans`, which sign-in uses). Any
/// other value means nothing known.
fn boolean(value: Option<&Value>) -> Option<bool> {
    match value? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A non-negative whole number, sent as a number or a string of digits; capped at `i32::MAX`
/// (the column is `integer`).
fn count(value: Option<&Value>) -> Option<i32> {
    let n = match value? {
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
        let user = Auth0User::parse(text).unwrap();
        assert_eq!(user.user_id, "auth0|1");
        assert_eq!(user.email.as_deref(), Some("a@example.com"));
        assert_eq!(user.logins_count, Some(3));
        assert_eq!(
            user.name, None,
            "a wrongly typed field is unknown, not fatal"
        );
        assert_eq!(
            user.updated_at.unwrap().to_rfc3339(),
            "2024-01-02T03:04:05.678+00:00"
        );
        assert_eq!(
            user.raw, text,
            "a clean profile is kept exactly as received"
        );
    }

    #[test]
    fn a_profile_without_a_storable_user_id_is_unusable() {
        let no_id = Auth0User::parse(r#"{"email":"a@example.com"}"#).unwrap_err();
        assert_eq!(no_id.user_id, None);
        assert!(Auth0User::parse(r#"{"user_id":""}"#).is_err());
        assert!(Auth0User::parse("not json").is_err());
        let nul = Auth0User::parse(r#"{"user_id":"auth0|a\u0000b"}"#).unwrap_err();
        assert_eq!(nul.user_id.as_deref(), Some("auth0|a\0b"));
        assert!(nul.reason.contains("U+0000"), "{nul}");
    }

    #[test]
    fn an_unreadable_profile_still_names_its_user() {
        let err = Auth0User::parse(r#"{"user_id":"auth0|big","logins":1e400}"#).unwrap_err();
        assert_eq!(err.user_id.as_deref(), Some("auth0|big"));
        assert!(err.reason.contains("number out of range"), "{err}");
    }

    #[test]
    fn nul_is_removed_everywhere_and_raw_follows() {
        let user = Auth0User::parse(
            r#"{"user_id":"auth0|n","name":"Ada\u0000 L","user_metadata":{"note":"a\u0000b"},
                "app_metadata":{"k\u0000":["\u0000"]},"identities":[{"profileData":{"x":"\u0000"}}]}"#,
        )
        .unwrap();
        assert_eq!(user.name.as_deref(), Some("Ada L"));
        assert_eq!(user.user_metadata, Some(serde_json::json!({"note": "ab"})));
        assert_eq!(user.app_metadata, Some(serde_json::json!({"k": [""]})));
        assert_eq!(
            user.identities,
            Some(serde_json::json!([{"profileData": {"x": ""}}]))
        );
        assert!(!user.raw.contains("\\u0000"), "{}", user.raw);
        let raw: Value = serde_json::from_str(&user.raw).unwrap();
        assert_eq!(raw["user_metadata"]["note"], "ab");
    }

    #[test]
    fn lone_surrogates_are_replaced_not_fatal() {
        let user = Auth0User::parse(
            r#"{"user_id":"auth0|s","name":"x\ud800","user_metadata":{"e":"\udc00"}}"#,
        )
        .unwrap();
        assert_eq!(user.name.as_deref(), Some("x\u{fffd}"));
        assert!(user.raw.contains('\u{fffd}'));
    }

    #[test]
    fn string_booleans_and_counts_are_read_and_nonsense_is_unknown() {
        let read = |fields: &str| {
            Auth0User::parse(&format!(r#"{{"user_id":"auth0|b",{fields}}}"#)).unwrap()
        };
        let user = read(r#""email_verified":"true","blocked":"false","logins_count":"12""#);
        assert_eq!(user.email_verified, Some(true));
        assert_eq!(user.blocked, Some(false));
        assert_eq!(user.logins_count, Some(12));
        for nonsense in [r#""yes""#, r#""""#, "1", "null", r#""TRUE ""#, "[]"] {
            let user = read(&format!(
                r#""email_verified":{nonsense},"blocked":{nonsense}"#
            ));
            assert_eq!(user.email_verified, None, "{nonsense}");
            assert_eq!(user.blocked, None, "{nonsense}");
        }
        assert_eq!(read(r#""logins_count":-4"#).logins_count, None);
        assert_eq!(read(r#""logins_count":7.0"#).logins_count, Some(7));
        assert_eq!(read(r#""logins_count":1e12"#).logins_count, Some(i32::MAX));
    }

    #[test]
    fn dates_from_the_future_are_unknown() {
        let user = Auth0User::parse(
            r#"{"user_id":"x|1","updated_at":"9999-12-31T23:59:59.999Z","created_at":{"$date":"2020-05-06T07:08:09.000Z"}}"#,
        )
        .unwrap();
        assert_eq!(user.updated_at, None);
        assert!(user.created_at.is_some(), "export-style dates are accepted");
    }

    #[test]
    fn from_value_applies_the_same_rule() {
        let user = Auth0User::from_value(serde_json::json!({
            "user_id": "auth0|v", "name": "a\u{0}b", "email_verified": "false"
        }))
        .unwrap();
        assert_eq!(user.name.as_deref(), Some("ab"));
        assert_eq!(user.email_verified, Some(false));
        assert!(!user.raw.contains("\\u0000"));
    }
}
