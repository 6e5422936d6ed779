//! Reading an Auth0 user profile as the Management API returns it.
//!
//! Parsing is deliberately lenient: the profile is stored whole in `users.raw`, and each typed
//! column is read from it when present and of the expected type (the field list and the rules
//! per kind are in [`super::fields`]). An attribute Auth0 adds, drops or changes the type of
//! never fails a sync. Every value is made storable by the one rule in [`super::storable`]; only
//! a profile without a usable `user_id`, or one that is not JSON at all, is [`Unusable`].
//!
//! A profile is read in one pass that keeps the attributes it needs as JSON text and skips the
//! rest, without building a tree of the whole profile: an export of a million users is read at
//! the speed of the download. Only text that may hold what the storable rule changes (a `\u0000`
//! or a UTF-16 surrogate escape) takes the slower way through a `serde_json::Value`.

use chrono::Utc;
use serde_json::Value;

use super::{
    fields::{Kind, ProfileFields, Text},
    storable,
};

pub use super::fields::Auth0User;

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

    /// A line of an export that is not UTF-8 text, so not JSON either.
    pub(crate) fn not_text() -> Self {
        Self::new(None, "the profile is not UTF-8 text")
    }
}

impl Auth0User {
    /// Reads one profile from JSON text (a page element, an NDJSON line of an export).
    pub fn parse(text: &str) -> Result<Self, Unusable> {
        if !storable::may_need_repair(text)
            && let Ok(fields) = ProfileFields::read(text)
        {
            let user_id = checked_user_id(
                fields
                    .get("user_id")
                    .and_then(|id| Text::read(id, Utc::now())),
            )?;
            return Ok(Self::from_fields(user_id, &fields, Utc::now()).with_raw(text.to_owned()));
        }
        match storable::parse_json(text) {
            Ok((mut value, repaired)) => {
                let user_id = user_id(&value)?;
                let changed = storable::json(&mut value) || repaired;
                let raw = if changed {
                    value.to_string()
                } else {
                    text.to_owned()
                };
                Self::from_clean(user_id, raw)
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
        Self::from_clean(user_id, value.to_string())
    }

    /// Reads storable JSON text whose `user_id` was checked.
    fn from_clean(user_id: String, raw: String) -> Result<Self, Unusable> {
        let user = ProfileFields::read(&raw)
            .map(|fields| Self::from_fields(user_id.clone(), &fields, Utc::now()))
            .map_err(|err| {
                Unusable::new(
                    Some(&user_id),
                    format!("the profile is not a JSON object: {err}"),
                )
            })?;
        Ok(user.with_raw(raw))
    }

    fn with_raw(mut self, raw: String) -> Self {
        self.raw = raw;
        self
    }
}

/// The profile's `user_id`, checked before the storable rule runs: cleaning an id would make it
/// another user's.
fn user_id(value: &Value) -> Result<String, Unusable> {
    checked_user_id(
        value
            .get("user_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
    )
}

fn checked_user_id(raw: Option<String>) -> Result<String, Unusable> {
    let Some(raw) = raw else {
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
    Ok(if id.len() == raw.len() {
        raw
    } else {
        id.to_owned()
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A JSON document of a profile, parsed for comparison.
    fn doc(json: &Option<Box<serde_json::value::RawValue>>) -> Option<Value> {
        json.as_ref()
            .map(|j| serde_json::from_str(j.get()).unwrap())
    }

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
        // serde_json cannot hold 1e400 in a value; the NUL makes the storable rule read one.
        let err = Auth0User::parse(r#"{"user_id":"auth0|big","logins":1e400,"note":"\u0000"}"#)
            .unwrap_err();
        assert_eq!(err.user_id.as_deref(), Some("auth0|big"));
        assert!(err.reason.contains("number out of range"), "{err}");
    }

    #[test]
    fn a_number_past_f64_elsewhere_is_kept_in_raw_and_unknown_where_read() {
        // Postgres' numeric holds 1e400, so the profile is stored whole.
        let user =
            Auth0User::parse(r#"{"user_id":"auth0|big","logins_count":1e400,"x":-1e999}"#).unwrap();
        assert_eq!(user.logins_count, None);
        assert!(user.raw.contains("1e400"));
    }

    #[test]
    fn keys_with_escapes_and_repeated_keys_read_like_serde_json() {
        let user = Auth0User::parse(
            r#"{"user_id":"auth0|k","\u0065mail":"a@example.com","name":"first","name":"last"}"#,
        )
        .unwrap();
        assert_eq!(user.email.as_deref(), Some("a@example.com"));
        assert_eq!(
            user.name.as_deref(),
            Some("last"),
            "the last of a repeated key wins"
        );
        assert!(Auth0User::parse(r#"["auth0|1"]"#).is_err(), "not an object");
        assert!(Auth0User::parse(r#"{"user_id":"auth0|1"} trailing"#).is_err());
    }

    #[test]
    fn nul_is_removed_everywhere_and_raw_follows() {
        let user = Auth0User::parse(
            r#"{"user_id":"auth0|n","name":"Ada\u0000 L","user_metadata":{"note":"a\u0000b"},
                "app_metadata":{"k\u0000":["\u0000"]},"identities":[{"profileData":{"x":"\u0000"}}]}"#,
        )
        .unwrap();
        assert_eq!(user.name.as_deref(), Some("Ada L"));
        assert_eq!(
            doc(&user.user_metadata),
            Some(serde_json::json!({"note": "ab"}))
        );
        assert_eq!(
            doc(&user.app_metadata),
            Some(serde_json::json!({"k": [""]}))
        );
        assert_eq!(
            doc(&user.identities),
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
