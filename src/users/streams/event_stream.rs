//! `POST /webhooks/auth0/events`: an Auth0 Event Stream's webhook deliveries.
//!
//! A delivery is one CloudEvent 1.0 in the JSON format (the structured mode, sent as
//! `application/json`); a JSON array of them (the batched mode) is read too. The envelope is
//! checked with the official CloudEvents SDK. Auth0's user events are `user.created`,
//! `user.updated` and `user.deleted`, each with the whole user profile in `data.object` (a
//! deletion's also has `deleted_at`); older pages of the docs spell the type
//! `com.auth0.user.<event>`, read the same. Other types (organizations, groups) are answered
//! 202 and ignored.
//! <https://auth0.com/docs/customize/events/event-types>,
//! <https://auth0.com/docs/customize/events/event-testing-observability-and-failure-recovery>
//! (a delivery as received), <https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/formats/json-format.md>
//!
//! A delivery that is not such an event (not JSON, not a CloudEvent, a user event without a
//! profile that names its user) is refused with 400 and nothing of it is kept. Profiles pass the
//! same storable rule as the sync's (`users::storable`): a lone surrogate escape, which
//! JavaScript writes, is repaired instead of failing the delivery.

use chrono::{DateTime, Utc};
use poem::{Body, Request, Response, handler, web::Data};
use serde::Deserialize;
use serde_json::Value;

use super::{
    Stream, queue,
    webhook::{self, Credential, Receipt},
};
use crate::{error::AppError, observability, startup::AppState, users::storable};

pub const PATH: &str = "/webhooks/auth0/events";
/// See [`super::BODY_LIMITS`].
pub const BODY_LIMIT: usize = 1024 * 1024;
/// Longer ids are not Auth0's (`evt_` and 22 characters); keeps the ledger's keys bounded.
const MAX_ID_LEN: usize = 255;

/// What happened to the user, per the event's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum UserEventKind {
    Created,
    Updated,
    Deleted,
}

impl UserEventKind {
    fn from_type(ty: &str) -> Option<Self> {
        match ty.strip_prefix("com.auth0.").unwrap_or(ty) {
            "user.created" => Some(Self::Created),
            "user.updated" => Some(Self::Updated),
            "user.deleted" => Some(Self::Deleted),
            _ => None,
        }
    }

    /// The event type, as the ledger and the `type` metric label spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "user.created",
            Self::Updated => "user.updated",
            Self::Deleted => "user.deleted",
        }
    }
}

/// A user event of a delivery, checked and ready to queue.
#[derive(Debug, Clone, PartialEq)]
pub struct UserEvent {
    /// The CloudEvent `id` (`evt_...`): the same change redelivered has the same id.
    pub id: String,
    pub kind: UserEventKind,
    /// When the change happened at Auth0 (the CloudEvent `time`).
    pub time: Option<DateTime<Utc>>,
    pub user_id: String,
    /// `data.object` as JSON text, after the storable repair of lone surrogates.
    pub profile: String,
}

/// A delivery, read: its user events and how many other events it held.
#[derive(Debug, Default, PartialEq)]
pub struct Delivery {
    pub events: Vec<UserEvent>,
    pub ignored: usize,
}

/// Reads a delivery's body; the reason, for a 400, when it is not one.
pub fn read(body: &[u8]) -> Result<Delivery, String> {
    let text = std::str::from_utf8(body).map_err(|_| "The body is not UTF-8 text.".to_owned())?;
    if text.trim().is_empty() {
        return Err("The body is empty: expected a CloudEvent (JSON).".to_owned());
    }
    let (value, _) =
        storable::parse_json(text).map_err(|err| format!("The body is not JSON: {err}."))?;
    let events = match value {
        Value::Array(events) => events,
        event @ Value::Object(_) => vec![event],
        _ => return Err("Expected a CloudEvent (a JSON object) or an array of them.".to_owned()),
    };
    let mut delivery = Delivery::default();
    for (n, event) in events.into_iter().enumerate() {
        match read_event(event) {
            Ok(Some(event)) => delivery.events.push(event),
            Ok(None) => delivery.ignored += 1,
            Err(reason) => return Err(format!("Event {}: {reason}", n + 1)),
        }
    }
    Ok(delivery)
}

/// One event: `None` when it is a valid CloudEvent about something else than a user.
fn read_event(value: Value) -> Result<Option<UserEvent>, String> {
    let event = cloudevents::Event::deserialize(value)
        .map_err(|err| format!("not a CloudEvents 1.0 event: {err}."))?;
    use cloudevents::AttributesReader;
    let Some(kind) = UserEventKind::from_type(event.ty()) else {
        return Ok(None);
    };
    let id = event.id();
    if id.trim().is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(format!(
            "the id must be 1 to {MAX_ID_LEN} printable characters."
        ));
    }
    let object = match event.data() {
        Some(cloudevents::Data::Json(data)) => data.get("object"),
        _ => None,
    };
    let Some(object @ Value::Object(_)) = object else {
        return Err(format!(
            "a {} event carries the user profile in data.object.",
            kind.as_str()
        ));
    };
    let user_id = super::log_events::usable_user_id(object.get("user_id"))
        .ok_or_else(|| "data.object has no usable user_id.".to_owned())?;
    Ok(Some(UserEvent {
        id: id.to_owned(),
        kind,
        time: event.time().copied(),
        user_id,
        profile: object.to_string(),
    }))
}

/// Receives a delivery: 202 once its user events are recorded and queued.
#[handler]
pub async fn receive(
    req: &Request,
    body: Body,
    Data(state): Data<&AppState>,
) -> poem::Result<Response> {
    let streams = &state.settings.streams;
    let stream = (streams.events_token.as_ref(), Credential::Bearer);
    let delivery = webhook::delivery(req, body, stream, BODY_LIMIT, read, "Event Stream").await?;
    let recorded = queue::record_events(&state.db, &delivery.events)
        .await
        .map_err(AppError::from)?;
    for event in &delivery.events {
        let duplicate = !recorded.contains(&event.id);
        observability::stream_event_received(Stream::Events, event.kind.as_str(), duplicate);
    }
    for _ in 0..delivery.ignored {
        observability::stream_event_received(Stream::Events, "other", false);
    }
    let receipt = Receipt {
        accepted: recorded.len(),
        duplicates: delivery.events.len() - recorded.len(),
        ignored: delivery.ignored,
    };
    Ok(receipt.answer("Event Stream"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn event(ty: &str, data: Value) -> Value {
        json!({
            "id": "evt_6SfwXrtm8nVcjzzNCFFH1L",
            "source": "urn:auth0:acme",
            "specversion": "1.0",
            "type": ty,
            "time": "2025-02-02T17:56:01.573Z",
            "data": data,
            "a0tenant": "acme",
            "a0stream": "est_38ANnv8pQhqsZrX2VFbftv",
        })
    }

    #[test]
    fn reads_auth0s_delivery_as_documented() {
        let body = event(
            "user.created",
            json!({"object": {"user_id": "auth0|679f", "email": "a@example.com",
                   "updated_at": "2025-02-02T17:56:01.566Z"}}),
        );
        let delivery = read(body.to_string().as_bytes()).unwrap();
        assert_eq!(delivery.ignored, 0);
        let [event] = &delivery.events[..] else {
            panic!("one event: {delivery:?}")
        };
        assert_eq!(event.id, "evt_6SfwXrtm8nVcjzzNCFFH1L");
        assert_eq!(event.kind, UserEventKind::Created);
        assert_eq!(event.user_id, "auth0|679f");
        assert_eq!(
            event.time.unwrap().to_rfc3339(),
            "2025-02-02T17:56:01.573+00:00"
        );
        let profile: Value = serde_json::from_str(&event.profile).unwrap();
        assert_eq!(profile["email"], "a@example.com");
    }

    #[test]
    fn other_types_are_ignored_and_the_old_spelling_is_read() {
        let body = json!([
            event("organization.created", json!({"object": {"id": "org_1"}})),
            event(
                "com.auth0.user.deleted",
                json!({"object": {"user_id": "auth0|1"}})
            ),
        ]);
        let delivery = read(body.to_string().as_bytes()).unwrap();
        assert_eq!(delivery.ignored, 1);
        assert_eq!(delivery.events[0].kind, UserEventKind::Deleted);
    }

    #[test]
    fn what_is_not_a_user_event_is_refused_with_a_reason() {
        let cases = [
            ("".to_owned(), "empty"),
            ("{\"id\": ".to_owned(), "not JSON"),
            ("42".to_owned(), "CloudEvent"),
            (
                json!({"id": "evt_1", "type": "user.updated"}).to_string(),
                "CloudEvents",
            ),
            (
                event(
                    "user.updated",
                    json!({"object": {"email": "a@example.com"}}),
                )
                .to_string(),
                "user_id",
            ),
            (event("user.updated", json!({})).to_string(), "data.object"),
            (
                event(
                    "user.updated",
                    json!({"object": {"user_id": "auth0|a\u{0}b"}}),
                )
                .to_string(),
                "user_id",
            ),
            (
                {
                    let mut e = event("user.updated", json!({"object": {"user_id": "x|1"}}));
                    e["specversion"] = json!("2.0");
                    e.to_string()
                },
                "CloudEvents",
            ),
        ];
        for (body, needle) in cases {
            let reason = read(body.as_bytes()).unwrap_err();
            assert!(reason.contains(needle), "{body}: {reason}");
        }
        assert!(read(&[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn a_lone_surrogate_in_a_profile_is_repaired_not_refused() {
        let body = r#"{"id":"evt_1","source":"urn:auth0:acme","specversion":"1.0",
            "type":"user.updated","data":{"object":{"user_id":"auth0|s","name":"x\ud800"}}}"#;
        let delivery = read(body.as_bytes()).unwrap();
        let profile: Value = serde_json::from_str(&delivery.events[0].profile).unwrap();
        assert_eq!(profile["name"], "x\u{fffd}");
    }
}
