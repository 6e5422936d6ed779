//! `POST /webhooks/auth0/logs`: a Log Stream's "Custom Webhook" deliveries.
//!
//! A delivery is a batch of tenant log events in the stream's Content Format: "JSON array"
//! (one array), "JSON lines" (one object a line) or "JSON object" (an object a request). All
//! three are read whatever the `Content-Type` says. A body that is none of them is refused with
//! 400; inside a batch, an element that is not a log event is skipped and counted, so one odd
//! event never makes Auth0 redeliver a batch the app could otherwise take.
//! <https://auth0.com/docs/customize/log-streams/custom-log-streams>
//!
//! Log events that can change a user ([`super::log_events`]) queue a refresh of that user,
//! coalesced per user; a redelivered batch (the same `log_id`s) queues nothing.

use poem::{Body, Request, Response, handler, web::Data};
use serde_json::Value;

use super::{
    Stream,
    log_events::{self, LogEvent, UserLogEvent},
    queue,
    webhook::{self, Credential, Receipt},
};
use crate::{error::AppError, observability, startup::AppState};

pub const PATH: &str = "/webhooks/auth0/logs";
/// See [`super::BODY_LIMITS`].
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// A batch, read: the log events that name a user to refresh, and how many others it held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub user_events: Vec<UserLogEvent>,
    /// Log events that change no user.
    pub other: usize,
    /// Elements that are not log events.
    pub unreadable: usize,
}

/// Reads a delivery's body; the reason, for a 400, when it is no batch of log events.
pub fn read(body: &[u8]) -> Result<Batch, String> {
    let text = std::str::from_utf8(body).map_err(|_| "The body is not UTF-8 text.".to_owned())?;
    let elements = elements(text)?;
    let mut batch = Batch::default();
    for element in &elements {
        match log_events::read(element) {
            LogEvent::User(event) => batch.user_events.push(event),
            LogEvent::Other => batch.other += 1,
            LogEvent::Unreadable(why) => {
                tracing::debug!(why, "Log Stream element skipped");
                batch.unreadable += 1;
            }
        }
    }
    Ok(batch)
}

/// The batch's elements in any of the three formats. Log events are read as plain JSON: the
/// few fields used are ids, codes and dates, which a lone surrogate elsewhere cannot spoil.
fn elements(text: &str) -> Result<Vec<Value>, String> {
    if text.trim().is_empty() {
        return Err("The body is empty: expected log events (JSON array, lines or object).".into());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(events)) => return Ok(events),
        // "JSON object": one log event, or log events keyed by their position.
        Ok(Value::Object(object))
            if object.contains_key("log_id") || object.contains_key("data") =>
        {
            return Ok(vec![Value::Object(object)]);
        }
        Ok(Value::Object(object)) => return Ok(object.into_iter().map(|(_, v)| v).collect()),
        Ok(_) => {
            return Err("Expected log events: a JSON array, JSON lines or a JSON object.".into());
        }
        Err(_) => {}
    }
    // "JSON lines": each non-empty line one log event.
    let mut events = Vec::new();
    let mut unreadable = 0;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match serde_json::from_str::<Value>(line) {
            Ok(event) => events.push(event),
            Err(_) => unreadable += 1,
        }
    }
    if events.is_empty() {
        return Err("The body is not JSON: expected log events as a JSON array, JSON lines or a JSON object.".into());
    }
    // A line that is not JSON is an element that is not a log event.
    events.extend(std::iter::repeat_n(Value::Null, unreadable));
    Ok(events)
}

/// Receives a batch: 202 once the refreshes it calls for are recorded and queued.
#[handler]
pub async fn receive(
    req: &Request,
    body: Body,
    Data(state): Data<&AppState>,
) -> poem::Result<Response> {
    let streams = &state.settings.streams;
    let stream = (streams.log_stream_token.as_ref(), Credential::HeaderValue);
    let batch = webhook::delivery(req, body, stream, BODY_LIMIT, read, "Log Stream").await?;
    if batch.unreadable > 0 {
        tracing::warn!(
            skipped = batch.unreadable,
            "Log Stream delivery held elements that are not log events; skipped"
        );
    }
    let recorded = queue::record_log_events(&state.db, &batch.user_events)
        .await
        .map_err(AppError::from)?;
    for event in &batch.user_events {
        let duplicate = !recorded.log_ids.contains(&event.log_id);
        observability::stream_event_received(Stream::Logs, event.type_code, duplicate);
    }
    for _ in 0..batch.other + batch.unreadable {
        observability::stream_event_received(Stream::Logs, "other", false);
    }
    observability::user_refreshes_queued(recorded.refreshes_queued, recorded.coalesced);
    let receipt = Receipt {
        accepted: recorded.log_ids.len(),
        duplicates: batch.user_events.len() - recorded.log_ids.len(),
        ignored: batch.other + batch.unreadable,
    };
    Ok(receipt.answer("Log Stream"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn login(log_id: &str, user: &str) -> Value {
        json!({"log_id": log_id, "data": {"type": "s", "user_id": user, "log_id": log_id,
               "date": "2024-01-15T10:30:00.000Z"}})
    }

    #[test]
    fn the_three_content_formats_read_alike() {
        let events = [login("1", "auth0|a"), login("2", "auth0|b")];
        let array = serde_json::to_string(&events).unwrap();
        let lines = format!("{}\n{}\n", events[0], events[1]);
        let object = json!({"0": events[0], "1": events[1]}).to_string();
        for body in [array, lines, object] {
            let batch = read(body.as_bytes()).unwrap();
            let users: Vec<&str> = batch
                .user_events
                .iter()
                .map(|e| e.user_id.as_str())
                .collect();
            assert_eq!(users, ["auth0|a", "auth0|b"], "{body}");
        }
        let single = read(events[0].to_string().as_bytes()).unwrap();
        assert_eq!(single.user_events.len(), 1);
    }

    #[test]
    fn one_odd_element_is_skipped_not_fatal() {
        let body = format!(
            "{}\nnot json at all\n{}\n[1,2]\n",
            login("1", "auth0|a"),
            json!({"log_id": "3", "data": {"type": "seacft", "user_id": "auth0|a"}})
        );
        let batch = read(body.as_bytes()).unwrap();
        assert_eq!(batch.user_events.len(), 1);
        assert_eq!(batch.other, 1);
        assert_eq!(batch.unreadable, 2);
    }

    #[test]
    fn a_body_of_no_log_events_is_refused() {
        for body in ["", "   \n", "not json", "\"text\"", "42"] {
            assert!(read(body.as_bytes()).is_err(), "{body:?}");
        }
        assert!(read(&[0xc3, 0x28]).is_err());
    }
}
