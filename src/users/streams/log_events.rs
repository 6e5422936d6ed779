//! Which tenant log events can change a user, and which user.
//!
//! A Log Stream delivers every log event of the categories it is filtered to; most (token
//! exchanges, failed logins, MFA prompts) change no profile. Those that can, from Auth0's log
//! event type codes (auth0.com/docs/deploy-monitor/logs/log-event-type-codes) and their schemas
//! (auth0.com/docs/tenant-logs), are in [`USER_CHANGING`]. Their user is `data.user_id`, except
//! for `sapi`, a Management API write, whose `user_id` is whoever made the call (empty for a
//! machine-to-machine client): its user is the one in the request's path
//! (`/api/v2/users/{id}`, `PATCH` for updates and blocks, `DELETE`), or in the response of
//! `POST /api/v2/users`.
//!
//! Not in the list, with the reason: brute-force blocks (`limit_wc`, `limit_sul`) live outside
//! the profile (the user-blocks endpoint) and lift by themselves; SCIM operations (`sscim`) name
//! users by SCIM id, not `user_id` (Event Streams or the sync carry those changes); MFA
//! enrolments and failed operations change no profile field the app keeps.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Log event type codes after which a user's profile may differ, with Auth0's names.
pub const USER_CHANGING: &[(&str, &str)] = &[
    ("ss", "Success Signup"),
    ("s", "Success Login"),
    ("si", "Successfully accepted a user invite"),
    ("sapi", "Success API Operation"),
    ("sce", "Success Change Email"),
    ("scp", "Success Change Password"),
    ("scpn", "Success Change Phone Number"),
    ("scu", "Success Change Username"),
    ("sv", "Success Verification Email"),
    ("sdu", "Success User Deletion"),
    // Earlier tenants' code for a deleted user (still in older log exports).
    ("du", "Deleted User"),
];

/// Longest `user_id` accepted from a delivery: Auth0's are `provider|id`, far shorter.
const MAX_USER_ID_LEN: usize = 512;

/// A log event that names a user whose profile may have changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLogEvent {
    pub log_id: String,
    /// The type code, one of [`USER_CHANGING`].
    pub type_code: &'static str,
    pub user_id: String,
    /// `data.date`: when it happened at Auth0.
    pub date: Option<DateTime<Utc>>,
}

/// What one element of a batch is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// It may have changed this user.
    User(UserLogEvent),
    /// A log event of another type (or one of these types about no user, such as a `sapi` on
    /// a client): nothing to do.
    Other,
    /// Not a log event as Auth0 sends them (why, for the log).
    Unreadable(&'static str),
}

/// Reads one element of a delivery: `{"log_id": "...", "data": {"type": "s", ...}}`, or the
/// `data` object alone (which carries its own `log_id`).
pub fn read(element: &Value) -> LogEvent {
    let Some(outer) = element.as_object() else {
        return LogEvent::Unreadable("a log event is a JSON object");
    };
    let data = match outer.get("data") {
        Some(Value::Object(data)) => data,
        Some(_) => return LogEvent::Unreadable("its data is not an object"),
        None => outer,
    };
    let log_id = [outer.get("log_id"), data.get("log_id"), data.get("_id")]
        .into_iter()
        .flatten()
        .find_map(Value::as_str)
        .map(str::trim)
        .filter(|id| !id.is_empty() && id.len() <= 255 && !id.contains('\0'));
    let Some(log_id) = log_id else {
        return LogEvent::Unreadable("it has no log_id");
    };
    let Some(code) = data.get("type").and_then(Value::as_str) else {
        return LogEvent::Unreadable("it has no type");
    };
    let Some(&(type_code, _)) = USER_CHANGING.iter().find(|(known, _)| *known == code) else {
        return LogEvent::Other;
    };
    let user_id = if type_code == "sapi" {
        api_operation_user(data.get("details"))
    } else {
        usable_user_id(data.get("user_id"))
    };
    let Some(user_id) = user_id else {
        return LogEvent::Other;
    };
    let date = data
        .get("date")
        .and_then(Value::as_str)
        .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
        .map(|d| d.with_timezone(&Utc));
    LogEvent::User(UserLogEvent {
        log_id: log_id.to_owned(),
        type_code,
        user_id,
        date,
    })
}

/// The user a Management API write was about: `/api/v2/users/{id}` (and its sub-resources) in
/// the request's path, or the `user_id` `POST /api/v2/users` answered with.
fn api_operation_user(details: Option<&Value>) -> Option<String> {
    let request = details?.get("request")?;
    let path = request.get("path")?.as_str()?;
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let rest = path.strip_prefix("/api/v2/users")?;
    match rest.strip_prefix('/') {
        Some(rest) => {
            let segment = rest.split('/').next().unwrap_or(rest);
            let decoded = percent_encoding::percent_decode_str(segment)
                .decode_utf8()
                .ok()?;
            usable_user_id(Some(&Value::String(decoded.into_owned())))
        }
        None if rest.is_empty() => {
            let body = details?.get("response")?.get("body")?;
            usable_user_id(body.get("user_id"))
        }
        None => None,
    }
}

/// A `user_id` the app can key a row by: a non-empty string, at most 512 bytes, without U+0000
/// or control characters (trimmed, as the sync reads ids).
pub fn usable_user_id(value: Option<&Value>) -> Option<String> {
    let id = value?.as_str()?.trim();
    (!id.is_empty() && id.len() <= MAX_USER_ID_LEN && !id.chars().any(char::is_control))
        .then(|| id.to_owned())
}

/// The `type` label for the received-events metric: a known code, or `other`.
pub fn metric_type(code: &str) -> &'static str {
    USER_CHANGING
        .iter()
        .find(|(known, _)| *known == code)
        .map_or("other", |(known, _)| known)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn log(data: Value) -> Value {
        json!({"log_id": "900200001", "data": data})
    }

    #[test]
    fn a_login_names_its_user() {
        let read = read(&log(json!({
            "date": "2024-01-15T10:30:00.000Z", "type": "s",
            "user_id": "auth0|abc", "log_id": "900200001"
        })));
        let LogEvent::User(event) = read else {
            panic!("{read:?}")
        };
        assert_eq!(event.type_code, "s");
        assert_eq!(event.user_id, "auth0|abc");
        assert_eq!(event.log_id, "900200001");
        assert!(event.date.is_some());
    }

    #[test]
    fn a_management_api_write_names_the_user_it_changed_not_the_caller() {
        let patch = log(json!({
            "type": "sapi", "description": "Update a User",
            "user_id": "auth0|the-admin",
            "details": {"request": {"method": "patch", "path": "/api/v2/users/auth0%7C5c6b"}}
        }));
        assert!(matches!(read(&patch), LogEvent::User(e) if e.user_id == "auth0|5c6b"));
        let roles = log(json!({"type": "sapi", "user_id": "",
            "details": {"request": {"method": "post", "path": "/api/v2/users/google-oauth2|1/roles"}}}));
        assert!(matches!(read(&roles), LogEvent::User(e) if e.user_id == "google-oauth2|1"));
        let create = log(json!({"type": "sapi", "user_id": "",
            "details": {"request": {"method": "post", "path": "/api/v2/users"},
                        "response": {"statusCode": 201, "body": {"user_id": "auth0|new"}}}}));
        assert!(matches!(read(&create), LogEvent::User(e) if e.user_id == "auth0|new"));
        let other = log(json!({"type": "sapi", "user_id": "auth0|the-admin",
            "details": {"request": {"method": "post", "path": "/api/v2/log-streams"}}}));
        assert_eq!(read(&other), LogEvent::Other);
        let by_email = log(json!({"type": "sapi",
            "details": {"request": {"method": "get", "path": "/api/v2/users-by-email"}}}));
        assert_eq!(read(&by_email), LogEvent::Other);
    }

    #[test]
    fn other_types_and_unidentified_events_change_nobody() {
        assert_eq!(
            read(&log(json!({"type": "seacft", "user_id": "auth0|a"}))),
            LogEvent::Other
        );
        assert_eq!(
            read(&log(json!({"type": "s", "user_id": ""}))),
            LogEvent::Other
        );
        assert!(matches!(
            read(&json!({"data": {"type": "s"}})),
            LogEvent::Unreadable(_)
        ));
        assert!(matches!(read(&json!([1])), LogEvent::Unreadable(_)));
        assert!(matches!(
            read(&log(json!({"user_id": "x"}))),
            LogEvent::Unreadable(_)
        ));
        // The data object alone, with its own log_id.
        let bare = json!({"type": "sdu", "user_id": "auth0|gone", "log_id": "9001"});
        assert!(matches!(read(&bare), LogEvent::User(e) if e.log_id == "9001"));
    }

    #[test]
    fn metric_labels_stay_a_closed_set() {
        assert_eq!(metric_type("sapi"), "sapi");
        assert_eq!(metric_type("some-new-code"), "other");
    }
}
