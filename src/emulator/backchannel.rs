//! OpenID Connect Back-Channel Logout, sent as Auth0 sends it: when a single sign-on session
//! ends for one of the events the application subscribed to, the tenant posts a logout token
//! naming the session (`sid`) and the user (`sub`) to the application's Back-Channel Logout URI.
//! https://auth0.com/docs/authenticate/login/logout/back-channel-logout
//!
//! The events are Auth0's "initiators": a logout at `/v2/logout` or `/oidc/logout`
//! (`rp-logout`), a deleted user (`account-deleted`), a blocked one (`account-deactivated`).
//! An application subscribes to `rp-logout` and `idp-logout` by default, to others by choice,
//! or to all (`mode: all`).
//! https://auth0.com/docs/authenticate/login/logout/back-channel-logout/oidc-back-channel-logout-initiators
//!
//! Tokens are delivered in the background after the event, as at Auth0 (a logout redirects
//! without waiting for them). Each delivery is logged and kept, as Auth0's tenant logs record
//! `oidc_backchannel_logout_succeeded` / `_failed`; tests read them back. Unlike Auth0, which
//! requires a public https URI, the emulator posts to any URL (a local app over http).

use std::{
    sync::{Mutex, PoisonError, RwLock},
    time::Duration,
};

use chrono::Utc;
use serde_json::{Value, json};

use super::{Shared, random_token};

/// How long a delivery may take before it counts as failed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Lifetime of a logout token: Auth0's own guidance validates them with a two-minute maximum
/// age.
const LOGOUT_TOKEN_SECS: i64 = 120;
/// How many deliveries are kept for inspection.
const DELIVERIES_KEPT: usize = 1_000;

/// Session termination events that send logout tokens, by Auth0's names
/// (`oidc_logout.backchannel_logout_initiators.selected_initiators`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Initiator {
    /// The application (or another one) logged the user out: `/v2/logout`, `/oidc/logout`.
    RpLogout,
    /// An upstream identity provider logged the user out.
    IdpLogout,
    /// The user was deleted.
    AccountDeleted,
    /// The user was blocked.
    AccountDeactivated,
    /// A session was revoked through the Management API.
    SessionRevoked,
}

impl Initiator {
    /// Auth0's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RpLogout => "rp-logout",
            Self::IdpLogout => "idp-logout",
            Self::AccountDeleted => "account-deleted",
            Self::AccountDeactivated => "account-deactivated",
            Self::SessionRevoked => "session-revoked",
        }
    }
}

/// Which initiators the application subscribed to (`backchannel_logout_initiators.mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Initiators {
    /// `mode: all`: every current and future initiator.
    All,
    /// `mode: custom`: those listed.
    Custom(Vec<Initiator>),
}

impl Default for Initiators {
    /// Auth0's default: `rp-logout` and `idp-logout`.
    fn default() -> Self {
        Self::Custom(vec![Initiator::RpLogout, Initiator::IdpLogout])
    }
}

impl Initiators {
    fn includes(&self, initiator: Initiator) -> bool {
        match self {
            Self::All => true,
            Self::Custom(chosen) => chosen.contains(&initiator),
        }
    }
}

/// The application's back-channel logout registration (`oidc_logout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackchannelLogout {
    /// The Back-Channel Logout URI (`backchannel_logout_urls`: Auth0 allows one).
    pub url: String,
    pub initiators: Initiators,
}

/// One logout token sent (or attempted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub initiator: Initiator,
    pub sub: String,
    pub sid: String,
    /// The application's HTTP status, or why there was none.
    pub outcome: Result<u16, String>,
}

/// The registration, the client that delivers, and what was delivered.
pub(crate) struct Backchannel {
    registration: RwLock<Option<BackchannelLogout>>,
    http: reqwest::Client,
    deliveries: Mutex<Vec<Delivery>>,
    delivered: tokio::sync::Notify,
}

impl Backchannel {
    pub fn new(registration: Option<BackchannelLogout>) -> Self {
        Self {
            registration: RwLock::new(registration),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(DELIVERY_TIMEOUT)
                .build()
                .unwrap_or_default(),
            deliveries: Mutex::default(),
            delivered: tokio::sync::Notify::new(),
        }
    }

    pub fn set(&self, registration: Option<BackchannelLogout>) {
        *self
            .registration
            .write()
            .unwrap_or_else(PoisonError::into_inner) = registration;
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until at least `count` deliveries have finished, or `timeout` passes; returns
    /// them all.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let delivered = self.delivered.notified();
            let done = self.deliveries();
            if done.len() >= count || tokio::time::Instant::now() >= deadline {
                return done;
            }
            let _ = tokio::time::timeout_at(deadline, delivered).await;
        }
    }

    fn record(&self, delivery: Delivery) {
        let mut deliveries = self
            .deliveries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if deliveries.len() >= DELIVERIES_KEPT {
            deliveries.remove(0);
        }
        deliveries.push(delivery);
        drop(deliveries);
        self.delivered.notify_waiters();
    }
}

/// The single sign-on sessions `(sub, sid)` that ended for `initiator`: a logout token for each
/// goes to the application, in the background, if it subscribed to `initiator`.
pub(crate) fn sessions_ended(
    shared: &std::sync::Arc<Shared>,
    initiator: Initiator,
    ended: Vec<(String, String)>,
) {
    let registration = shared
        .backchannel
        .registration
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let Some(registration) = registration.filter(|r| r.initiators.includes(initiator)) else {
        return;
    };
    for (sub, sid) in ended {
        let token = logout_token(shared, &sub, &sid);
        let shared = shared.clone();
        let url = registration.url.clone();
        tokio::spawn(async move {
            let outcome = shared
                .backchannel
                .http
                .post(&url)
                .form(&[("logout_token", token.as_str())])
                .send()
                .await
                .map(|response| response.status().as_u16())
                .map_err(|err| crate::auth::oidc::error_chain(&err));
            match &outcome {
                Ok(200 | 204) => tracing::info!(
                    initiator = initiator.as_str(),
                    "emulator: back-channel logout delivered (sslo)"
                ),
                other => tracing::warn!(
                    initiator = initiator.as_str(),
                    outcome = ?other,
                    %url,
                    "emulator: back-channel logout failed (fslo)"
                ),
            }
            shared.backchannel.record(Delivery {
                initiator,
                sub,
                sid,
                outcome,
            });
        });
    }
}

/// A logout token for the registered application, signed like the tenant's ID tokens and typed
/// `JWT`, as Auth0's are.
pub(crate) fn logout_token(shared: &Shared, sub: &str, sid: &str) -> String {
    shared.keys().sign(&logout_claims(shared, sub, sid), false)
}

/// The claims Auth0 puts in a logout token: `iss`, `sub`, `aud`, `iat`, `exp`, `jti`, the
/// back-channel logout event, `trace_id` and `sid`.
pub(crate) fn logout_claims(shared: &Shared, sub: &str, sid: &str) -> Value {
    let now = Utc::now().timestamp();
    json!({
        "iss": shared.issuer_identifier,
        "sub": sub,
        "aud": shared.client().id,
        "iat": now,
        "exp": now + LOGOUT_TOKEN_SECS,
        "jti": random_token(16),
        "events": { crate::auth::logout_token::BACKCHANNEL_LOGOUT_EVENT: {} },
        "trace_id": random_token(12),
        "sid": sid,
    })
}
