//! The tenant's Event Stream and Log Stream: what Auth0 posts to an application's webhooks when
//! users sign up, log in, or are created, updated, blocked or deleted through the Management API.
//!
//! - **Event Stream** (webhook, "Bearer Token" authentication): one CloudEvent 1.0 per request,
//!   `Content-Type: application/json`, `Authorization: Bearer <token>`, in the shape of a real
//!   delivery: `id` (`evt_` + 22 characters), `source`, `specversion`, `type` (`user.created`,
//!   `user.updated`, `user.deleted`), `time`, `data.object` (the user as the Management API
//!   returns it; a deletion adds `deleted_at`), `a0tenant`, `a0stream`. Deliveries run several at
//!   a time, so they may arrive out of order, as Auth0's do; a failed one is retried with backoff
//!   up to 12 times.
//!   <https://auth0.com/docs/customize/events/event-testing-observability-and-failure-recovery>,
//!   <https://auth0.com/docs/customize/events/events-best-practices>
//! - **Log Stream** ("Custom Webhook"): tenant log events (`log_id`, `data` with `type`, `date`,
//!   `user_id`, `details`, ...) batched for up to 50 ms or 100 events, in the configured Content
//!   Format, with the configured Authorization Token as the whole `Authorization` header; a
//!   failed batch is retried up to three times.
//!   <https://auth0.com/docs/customize/log-streams/custom-log-streams>,
//!   <https://auth0.com/docs/customize/log-streams> (delivery attempts)
//!
//! Login emits the log event only: Auth0 documents no Event Streams event for a sign-in.
//! Switches ([`Deliveries`]) make deliveries repeat or come in reverse order, as Auth0 may.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use rand::Rng;
use serde::Serialize;
use serde_json::{Value, json, value::RawValue};
use tokio::sync::{Semaphore, mpsc, watch};
use url::Url;

use super::users::{CONNECTION, CONNECTION_ID, User, timestamp};

/// Where the tenant delivers its streams (each is off when `None`).
#[derive(Debug, Clone, Default)]
pub struct StreamDestinations {
    pub events: Option<EventStreamDestination>,
    pub logs: Option<LogStreamDestination>,
}

/// An Event Stream's webhook: its endpoint and bearer token.
#[derive(Debug, Clone)]
pub struct EventStreamDestination {
    pub url: Url,
    pub token: String,
}

/// A Log Stream's custom webhook: Payload URL, Authorization Token, Content Format.
#[derive(Debug, Clone)]
pub struct LogStreamDestination {
    pub url: Url,
    pub authorization: Option<String>,
    pub format: LogStreamFormat,
}

/// A Log Stream's Content Format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogStreamFormat {
    /// One JSON array a request.
    JsonArray,
    /// One log event a line (the dashboard's default).
    #[default]
    JsonLines,
    /// One JSON object (one log event) a request.
    JsonObject,
}

impl std::str::FromStr for LogStreamFormat {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        match raw
            .to_ascii_lowercase()
            .replace(['-', '_', ' '], "")
            .as_str()
        {
            "jsonarray" | "array" => Ok(Self::JsonArray),
            "jsonlines" | "lines" => Ok(Self::JsonLines),
            "jsonobject" | "object" => Ok(Self::JsonObject),
            _ => Err(format!(
                "expected json-array, json-lines or json-object, got {raw:?}"
            )),
        }
    }
}

/// Switches and counters for the deliveries (tests and benchmarks).
#[derive(Debug, Default)]
pub struct Deliveries {
    repeat: AtomicBool,
    reverse_next: AtomicUsize,
    events_delivered: AtomicU64,
    log_batches_delivered: AtomicU64,
    failed_attempts: AtomicU64,
}

impl Deliveries {
    /// Delivers every Event Stream event and Log Stream batch twice from now on (Auth0
    /// guarantees at-least-once delivery, not exactly-once).
    pub fn repeat_each(&self, repeat: bool) {
        self.repeat.store(repeat, Ordering::Relaxed);
    }

    /// Holds the next `n` Event Stream events and delivers them newest first.
    pub fn reverse_next(&self, n: usize) {
        self.reverse_next.store(n, Ordering::Relaxed);
    }

    /// Event Stream events the webhook accepted (2xx).
    pub fn events_delivered(&self) -> u64 {
        self.events_delivered.load(Ordering::Relaxed)
    }

    /// Log Stream batches the webhook accepted.
    pub fn log_batches_delivered(&self) -> u64 {
        self.log_batches_delivered.load(Ordering::Relaxed)
    }

    /// Delivery attempts that got no 2xx.
    pub fn failed_attempts(&self) -> u64 {
        self.failed_attempts.load(Ordering::Relaxed)
    }
}

/// Event Stream deliveries in flight at once.
const CONCURRENT_DELIVERIES: usize = 8;
const EVENT_ATTEMPTS: u32 = 12;
const LOG_ATTEMPTS: u32 = 3;
const LOG_BATCH_MAX: usize = 100;
const LOG_LINGER: Duration = Duration::from_millis(50);

enum Outgoing {
    Event(String),
    Log(Value),
}

/// The delivery tasks' queues (a stream without a destination has none).
#[derive(Default)]
struct Senders {
    events: Option<mpsc::UnboundedSender<Outgoing>>,
    logs: Option<mpsc::UnboundedSender<Outgoing>>,
}

/// The tenant's streams; handlers call it when users change.
pub(crate) struct Streams {
    senders: std::sync::Mutex<Senders>,
    http: reqwest::Client,
    stopped: watch::Receiver<bool>,
    tenant: String,
    source: String,
    stream_id: String,
    hostname: String,
    client_id: String,
    pub deliveries: Arc<Deliveries>,
}

impl Streams {
    /// Starts the delivery tasks (until `stopped` turns true) for `issuer`'s tenant, whose
    /// application is `client_id`.
    pub fn start(
        destinations: StreamDestinations,
        issuer: &Url,
        client_id: &str,
        stopped: watch::Receiver<bool>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent("Auth0 emulator (streams)")
            .build()
            .unwrap_or_default();
        let hostname = issuer.host_str().unwrap_or("localhost").to_owned();
        let streams = Self {
            senders: std::sync::Mutex::default(),
            http,
            stopped,
            tenant: "emulator".to_owned(),
            source: format!("urn:auth0:emulator.{hostname}"),
            stream_id: format!("est_{}", alphanumeric(22)),
            hostname,
            client_id: client_id.to_owned(),
            deliveries: Arc::default(),
        };
        streams.deliver_to(destinations);
        streams
    }

    /// Points the streams at new destinations; deliveries already queued finish at the old ones.
    pub fn deliver_to(&self, destinations: StreamDestinations) {
        let events = destinations.events.map(|destination| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(deliver_events(
                destination,
                rx,
                self.http.clone(),
                self.deliveries.clone(),
                self.stopped.clone(),
            ));
            tx
        });
        let logs = destinations.logs.map(|destination| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(deliver_logs(
                destination,
                rx,
                self.http.clone(),
                self.deliveries.clone(),
                self.stopped.clone(),
            ));
            tx
        });
        *self.senders() = Senders { events, logs };
    }

    fn senders(&self) -> std::sync::MutexGuard<'_, Senders> {
        self.senders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `user.created` (Management API, sign-up).
    pub fn user_created(&self, user: &User) {
        self.event("user.created", user, None);
    }

    /// `user.updated` (Management API, including blocks).
    pub fn user_updated(&self, user: &User) {
        self.event("user.updated", user, None);
    }

    /// `user.deleted`, with the profile the user had.
    pub fn user_deleted(&self, user: &User) {
        self.event("user.deleted", user, Some(Utc::now()));
    }

    fn event(&self, ty: &str, user: &User, deleted_at: Option<chrono::DateTime<Utc>>) {
        let Some(tx) = self.senders().events.clone() else {
            return;
        };
        let mut object = user.to_json();
        if let (Some(at), Some(map)) = (deleted_at, object.as_object_mut()) {
            map.insert("deleted_at".into(), json!(timestamp(at)));
        }
        // As text: a profile may hold values serde_json cannot (`User::as_sent_text`).
        let object = user.to_json_text(object, |_| true);
        #[derive(Serialize)]
        struct Data<'a> {
            object: &'a RawValue,
        }
        #[derive(Serialize)]
        struct Event<'a> {
            id: String,
            source: &'a str,
            specversion: &'a str,
            #[serde(rename = "type")]
            ty: &'a str,
            time: String,
            data: Data<'a>,
            a0tenant: &'a str,
            a0stream: &'a str,
        }
        let event = Event {
            id: format!("evt_{}", alphanumeric(22)),
            source: &self.source,
            specversion: "1.0",
            ty,
            time: timestamp(Utc::now()),
            data: Data { object: &object },
            a0tenant: &self.tenant,
            a0stream: &self.stream_id,
        };
        if let Ok(body) = serde_json::to_string(&event) {
            let _ = tx.send(Outgoing::Event(body));
        }
    }

    /// A tenant log event of type `code` about `user` (`user_id` is theirs, except for `sapi`,
    /// whose `user_id` is the caller's: empty for a machine-to-machine client).
    pub fn log(&self, code: &str, description: &str, user: Option<&User>, details: Value) {
        let Some(tx) = self.senders().logs.clone() else {
            return;
        };
        let log_id = log_id();
        let (user_id, user_name) = match user {
            Some(user) if code != "sapi" => (user.user_id.as_str(), user.email.as_str()),
            _ => ("", ""),
        };
        let entry = json!({
            "log_id": log_id,
            "data": {
                "date": timestamp(Utc::now()),
                "type": code,
                "description": description,
                "client_id": self.client_id,
                "client_name": "quotebook (emulated)",
                "ip": "127.0.0.1",
                "user_agent": "Emulated browser",
                "hostname": self.hostname,
                "user_id": user_id,
                "user_name": user_name,
                "connection": CONNECTION,
                "connection_id": CONNECTION_ID,
                "strategy": "auth0",
                "strategy_type": "database",
                "tenant_name": self.tenant,
                "environment_name": "emulator",
                "details": details,
                "log_id": log_id,
            }
        });
        let _ = tx.send(Outgoing::Log(entry));
    }

    /// A successful Management API write (`sapi`) on `path`, answered with `status` (and
    /// `body`, when the answer names the user, as `POST /api/v2/users`' does).
    pub fn management_write(
        &self,
        description: &str,
        method: &str,
        path: &str,
        status: u16,
        body: Option<Value>,
    ) {
        let mut response = json!({ "statusCode": status });
        if let (Some(body), Some(map)) = (body, response.as_object_mut()) {
            map.insert("body".into(), body);
        }
        let details = json!({
            "request": { "method": method, "path": path, "query": {}, "channel": "api" },
            "response": response,
        });
        self.log("sapi", description, None, details);
    }
}

/// `len` random ASCII letters and digits (Auth0's event and stream ids).
fn alphanumeric(len: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())]))
        .collect()
}

/// A 56-digit log id, as Auth0's (`900` and digits).
fn log_id() -> String {
    let mut rng = rand::thread_rng();
    let digits: String = (0..36)
        .map(|_| char::from(b'0' + rng.gen_range(0..10)))
        .collect();
    format!("900{}{digits}", Utc::now().format("%Y%m%d%H%M%S%3f"))
}

async fn deliver_events(
    destination: EventStreamDestination,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    http: reqwest::Client,
    deliveries: Arc<Deliveries>,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_DELIVERIES));
    let mut held: Vec<String> = Vec::new();
    let authorization = format!("Bearer {}", destination.token);
    loop {
        let body = tokio::select! {
            received = rx.recv() => match received {
                Some(Outgoing::Event(body)) => body,
                Some(Outgoing::Log(_)) => continue,
                None => return,
            },
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let to_send = match deliveries.reverse_next.load(Ordering::Relaxed) {
            0 => vec![body],
            n => {
                held.push(body);
                deliveries.reverse_next.store(n - 1, Ordering::Relaxed);
                if n > 1 {
                    continue;
                }
                held.drain(..).rev().collect()
            }
        };
        // Held events go out one after the other, so they arrive in the order chosen.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let post = |body| Post {
            http: http.clone(),
            url: destination.url.clone(),
            authorization: Some(authorization.clone()),
            content_type: "application/json",
            body,
            attempts: EVENT_ATTEMPTS,
        };
        let posts: Vec<Post> = to_send.into_iter().map(post).collect();
        let deliveries = deliveries.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            let times = if deliveries.repeat.load(Ordering::Relaxed) {
                2
            } else {
                1
            };
            for post in posts {
                for _ in 0..times {
                    if post.send(&deliveries, stopped.clone()).await {
                        deliveries.events_delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            drop(slot);
        });
    }
}

async fn deliver_logs(
    destination: LogStreamDestination,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    http: reqwest::Client,
    deliveries: Arc<Deliveries>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        // Wait for a first log event, then gather what follows within the linger time.
        let first = tokio::select! {
            received = rx.recv() => match received {
                Some(Outgoing::Log(entry)) => entry,
                Some(Outgoing::Event(_)) => continue,
                None => return,
            },
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LOG_LINGER;
        while batch.len() < LOG_BATCH_MAX {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Outgoing::Log(entry))) => batch.push(entry),
                Ok(Some(Outgoing::Event(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        let bodies: Vec<String> = match destination.format {
            LogStreamFormat::JsonArray => vec![Value::Array(batch).to_string()],
            LogStreamFormat::JsonLines => vec![
                batch
                    .iter()
                    .map(|entry| format!("{entry}\n"))
                    .collect::<String>(),
            ],
            LogStreamFormat::JsonObject => batch.iter().map(Value::to_string).collect(),
        };
        let times = if deliveries.repeat.load(Ordering::Relaxed) {
            2
        } else {
            1
        };
        for body in bodies {
            let post = Post {
                http: http.clone(),
                url: destination.url.clone(),
                authorization: destination.authorization.clone(),
                content_type: "application/json",
                body,
                attempts: LOG_ATTEMPTS,
            };
            for _ in 0..times {
                if post.send(&deliveries, stopped.clone()).await {
                    deliveries
                        .log_batches_delivered
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// One delivery and its retries.
struct Post {
    http: reqwest::Client,
    url: Url,
    authorization: Option<String>,
    content_type: &'static str,
    body: String,
    attempts: u32,
}

impl Post {
    /// Posts until a 2xx, the attempts run out, or the emulator stops; whether it was accepted.
    async fn send(&self, deliveries: &Deliveries, mut stopped: watch::Receiver<bool>) -> bool {
        let mut pause = Duration::from_millis(200);
        for attempt in 1..=self.attempts {
            let mut request = self
                .http
                .post(self.url.clone())
                .header("content-type", self.content_type)
                .body(self.body.clone());
            if let Some(authorization) = &self.authorization {
                request = request.header("authorization", authorization);
            }
            match request.send().await {
                Ok(response) if response.status().is_success() => return true,
                Ok(response) => tracing::debug!(
                    status = response.status().as_u16(),
                    attempt,
                    "emulated stream delivery refused"
                ),
                Err(err) => {
                    tracing::debug!(error = %err, attempt, "emulated stream delivery failed")
                }
            }
            deliveries.failed_attempts.fetch_add(1, Ordering::Relaxed);
            if attempt == self.attempts {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stopped.wait_for(|stop| *stop) => return false,
            }
            pause = (pause * 2).min(Duration::from_secs(10));
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_auth0s() {
        let id = log_id();
        assert_eq!(id.len(), 56, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(alphanumeric(22).len(), 22);
        assert_eq!("JSON lines".parse(), Ok(LogStreamFormat::JsonLines));
        assert_eq!("json-array".parse(), Ok(LogStreamFormat::JsonArray));
        assert!("xml".parse::<LogStreamFormat>().is_err());
    }
}
