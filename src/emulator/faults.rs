//! Switches tests flip to make the emulator misbehave, or behave as real tenants do beyond the
//! defaults: errors, hangs, slowness, rate limits, broken ID tokens, claims in the shapes other
//! connections send, and a post-login Action that refuses the sign-in.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use super::rate_limit::RateLimiter;

/// A way to break the next ID tokens minted (stays on until cleared with `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTokenFault {
    /// `nonce` differs from the one sent to `/authorize`.
    WrongNonce,
    /// `iss` is another issuer.
    WrongIssuer,
    /// `aud` is another client.
    WrongAudience,
    /// `exp` (and `iat`) lie in the past.
    Expired,
    /// The signature does not verify against the JWKS.
    BadSignature,
}

/// What the next Management API request (or export download) should suffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Injected {
    Fail(u16),
    Hang(Duration),
}

#[derive(Default)]
struct State {
    queue: VecDeque<Injected>,
    latency: Duration,
    id_token: Option<IdTokenFault>,
    claims: serde_json::Map<String, serde_json::Value>,
    login_denial: Option<String>,
    token_response: Option<String>,
    /// Where downloads break off, and how many more will.
    cut_download: Option<(usize, usize)>,
}

/// Fault switches; shared by the emulator's handlers.
#[derive(Default)]
pub struct Faults {
    state: Mutex<State>,
    management_requests: AtomicU64,
    export_downloads: AtomicU64,
    pub(crate) rate_limit: RateLimiter,
}

impl Faults {
    pub(crate) fn new(rate_limit: Option<u32>) -> Self {
        Self {
            rate_limit: RateLimiter::new(rate_limit),
            ..Self::default()
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next `n` Management API requests (or export downloads) answer `status` with an
    /// Auth0-shaped error body (429 also carries exhausted rate-limit headers).
    pub fn fail_next(&self, n: usize, status: u16) {
        self.state()
            .queue
            .extend(std::iter::repeat_n(Injected::Fail(status), n));
    }

    /// The next `n` requests wait `for_` before being handled (clients should time out).
    pub fn hang_next(&self, n: usize, for_: Duration) {
        self.state()
            .queue
            .extend(std::iter::repeat_n(Injected::Hang(for_), n));
    }

    /// The next export download breaks off after `bytes` bytes of the file, as a connection
    /// dropped halfway through a large download does: the client must fetch the job again
    /// for a fresh location and resume.
    pub fn cut_next_download(&self, bytes: usize) {
        self.cut_next_downloads(bytes, 1);
    }

    /// The next `n` export downloads each break off after `bytes` bytes of the file (a
    /// connection that keeps dropping: a client that resumes gets no further).
    pub fn cut_next_downloads(&self, bytes: usize, n: usize) {
        self.state().cut_download = (n > 0).then_some((bytes, n));
    }

    pub(crate) fn take_download_cut(&self) -> Option<usize> {
        self.export_downloads.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state();
        let (bytes, left) = state.cut_download?;
        state.cut_download = (left > 1).then_some((bytes, left - 1));
        Some(bytes)
    }

    /// Export downloads served so far (whole or cut).
    pub fn export_downloads(&self) -> u64 {
        self.export_downloads.load(Ordering::Relaxed)
    }

    /// Every Management API request and export download waits this long first.
    pub fn set_latency(&self, latency: Duration) {
        self.state().latency = latency;
    }

    /// Requests per second the Management API accepts; `None` = unlimited.
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        self.rate_limit.set_limit(per_second);
    }

    pub fn set_id_token_fault(&self, fault: Option<IdTokenFault>) {
        self.state().id_token = fault;
    }

    /// Claims the next ID tokens carry instead of the usual ones; `null` leaves a claim out.
    /// Real tenants send such shapes: a SAML connection's `fieldsMap` maps profile fields from
    /// assertion attributes, whose values are strings, so `email_verified` arrives as `"true"`,
    /// `"false"` or whatever the attribute held, and `email` or `name` may be missing. An empty
    /// map restores the defaults.
    /// https://auth0.com/docs/api/management/v2/connections/post-connections (`options.fieldsMap`)
    pub fn set_id_token_claims(&self, claims: serde_json::Map<String, serde_json::Value>) {
        self.state().claims = claims;
    }

    /// A post-login Action that calls `api.access.deny(reason)`: after the person signs in on
    /// the login page, the emulator sends `error=access_denied&error_description=<reason>` back
    /// to the application instead of a code. `None` lets sign-ins through again.
    /// https://auth0.com/docs/customize/actions/explore-triggers/signup-and-login-triggers/login-trigger/post-login-api-object
    pub fn deny_logins(&self, reason: Option<&str>) {
        self.state().login_denial = reason.map(str::to_owned);
    }

    /// Management API requests received so far (benchmarks divide work by this).
    pub fn management_requests(&self) -> u64 {
        self.management_requests.load(Ordering::Relaxed)
    }

    pub(crate) fn count_management_request(&self) {
        self.management_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the next queued fault and the configured latency.
    pub(crate) fn next(&self) -> (Option<Injected>, Duration) {
        let mut state = self.state();
        let injected = state.queue.pop_front();
        (injected, state.latency)
    }

    /// The token endpoint answers a valid code with this body (status 200) instead of the
    /// tokens: an HTML error page from a proxy, or JSON whose `id_token` is not a JWT. `None`
    /// restores real token responses.
    pub fn set_token_response(&self, body: Option<&str>) {
        self.state().token_response = body.map(str::to_owned);
    }

    pub(crate) fn token_response(&self) -> Option<String> {
        self.state().token_response.clone()
    }

    pub(crate) fn id_token_fault(&self) -> Option<IdTokenFault> {
        self.state().id_token
    }

    pub(crate) fn id_token_claims(&self) -> serde_json::Map<String, serde_json::Value> {
        self.state().claims.clone()
    }

    pub(crate) fn login_denial(&self) -> Option<String> {
        self.state().login_denial.clone()
    }
}
