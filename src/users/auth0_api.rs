//! A small Auth0 Management API client: exactly the calls the user sync makes.
//!
//! - Token: client credentials (`client_secret_post`) for audience `<issuer>api/v2/`, cached and
//!   shared by every clone until 60 s before it expires (fetching one per request is Auth0's
//!   leading cause of 429s: auth0.com/docs/secure/tokens/access-tokens/management-api-access-tokens).
//! - Rate limits: every response carries `x-ratelimit-remaining` / `x-ratelimit-reset` (UNIX
//!   seconds). At zero remaining the next call waits for the reset; a 429 waits for it too.
//!   (auth0.com/docs/troubleshoot/customer-support/operational-policies/rate-limit-policy)
//! - 5xx, timeouts and connection errors are retried with exponential backoff and full jitter, a
//!   bounded number of times; other 4xx are returned at once.
//! - The secret and the token never reach a log line or an error message.
//! - Every response is counted in `auth0_api_requests_total{status}` (429s included, transport
//!   failures as `status="error"`), retries and the token call too: that is the load Auth0 sees.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use futures::Stream;
use rand::Rng;
use reqwest::{RequestBuilder, StatusCode, header::HeaderMap};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, value::RawValue};
use tokio::{sync::Mutex, time::Instant};
use url::Url;

use crate::{
    config::{AuthSettings, Secret},
    observability,
};

/// Retry and timeout policy; the defaults suit Auth0's published limits.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Whole-request timeout for API calls (downloads use `read_timeout` instead).
    pub request_timeout: Duration,
    /// Attempts for one call that fails with 5xx, a timeout or a connection error.
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// 429s tolerated for one call before giving up (each waits for the window reset).
    pub max_rate_limited: u32,
    /// Upper bound on a single rate-limit wait, whatever `x-ratelimit-reset` says.
    pub max_rate_wait: Duration,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(20),
            max_attempts: 6,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            max_rate_limited: 30,
            max_rate_wait: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "Auth0 refused the Management API credentials ({status}): check AUTH0_MGMT_CLIENT_ID / \
         AUTH0_MGMT_CLIENT_SECRET and that the application is authorized for the Management API \
         with the read:users scope"
    )]
    Credentials { status: u16 },
    #[error("Auth0 answered {status} to {what}: {message}")]
    Status {
        status: u16,
        what: String,
        message: String,
    },
    #[error("Auth0 did not answer {what} after {attempts} attempts: {last}")]
    Exhausted {
        what: String,
        attempts: u32,
        last: String,
    },
    #[error("Auth0 sent an unreadable answer to {what}: {message}")]
    Decode { what: String, message: String },
    #[error("the Management API URL could not be built from the issuer {0}")]
    BadIssuer(String),
    #[error("could not build the HTTP client: {0}")]
    Client(String),
}

impl ApiError {
    /// Worth retrying the whole sync later (the API was unavailable, not wrong).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Exhausted { .. } => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// `GET /api/v2/users` with `include_totals=true`.
#[derive(Debug, Clone, Deserialize)]
pub struct UsersPage {
    #[serde(default)]
    pub start: u64,
    #[serde(default)]
    pub limit: u64,
    #[serde(default)]
    pub length: u64,
    #[serde(default)]
    pub total: u64,
    /// Each profile as its own JSON text: one profile that serde_json cannot read (a lone
    /// surrogate escape, a number past f64) must not make the page unreadable.
    #[serde(default)]
    pub users: Vec<Box<RawValue>>,
}

/// Query for `GET /api/v2/users` (auth0.com/docs/api/management/v2/users/get-users).
#[derive(Debug, Clone, Default)]
pub struct UsersQuery {
    pub page: u32,
    pub per_page: u32,
    pub sort: Option<String>,
    /// Lucene query; sent with `search_engine=v3`.
    pub q: Option<String>,
}

/// A job as `GET /api/v2/jobs/{id}` describes it (auth0.com/docs/manage-users/user-migration/bulk-user-exports).
#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    pub id: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub percentage_done: Option<f64>,
    #[serde(default)]
    pub time_left_seconds: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct RateWindow {
    remaining: Option<u64>,
    reset: Option<u64>,
}

#[derive(Debug)]
struct CachedToken {
    value: Secret,
    refresh_at: Instant,
}

struct Inner {
    http: reqwest::Client,
    download: reqwest::Client,
    issuer: Url,
    api_base: Url,
    client_id: String,
    client_secret: Secret,
    options: ApiOptions,
    token: Mutex<Option<CachedToken>>,
    rate: std::sync::Mutex<RateWindow>,
    calls: AtomicU64,
}

/// Cheap to clone; clones share the token cache, the rate-limit window and the call counter.
#[derive(Clone)]
pub struct ManagementApi {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ManagementApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementApi")
            .field("issuer", &self.inner.issuer.as_str())
            .field("client_id", &self.inner.client_id)
            .finish_non_exhaustive()
    }
}

impl ManagementApi {
    /// `issuer` is the tenant URL with its trailing slash (`https://tenant.us.auth0.com/`).
    pub fn new(
        issuer: Url,
        client_id: impl Into<String>,
        client_secret: Secret,
        options: ApiOptions,
    ) -> Result<Self, ApiError> {
        let mut issuer = issuer;
        if !issuer.path().ends_with('/') {
            let path = format!("{}/", issuer.path());
            issuer.set_path(&path);
        }
        let api_base = issuer
            .join("api/v2/")
            .map_err(|_| ApiError::BadIssuer(issuer.to_string()))?;
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                "quotebook/",
                env!("CARGO_PKG_VERSION"),
                " user-sync"
            ))
            .connect_timeout(Duration::from_secs(10))
            .timeout(options.request_timeout)
            .build()
            .map_err(|e| ApiError::Client(e.to_string()))?;
        // Export files can be large: bound the silence between chunks, not the whole download.
        let download = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ApiError::Client(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                download,
                issuer,
                api_base,
                client_id: client_id.into(),
                client_secret,
                options,
                token: Mutex::new(None),
                rate: std::sync::Mutex::new(RateWindow::default()),
                calls: AtomicU64::new(0),
            }),
        })
    }

    /// The Management API client of `auth` against `issuer` (the emulator's issuer is only known
    /// once it has bound its port, so the caller passes it).
    pub fn from_settings(
        issuer: Url,
        auth: &AuthSettings,
        options: ApiOptions,
    ) -> Result<Self, ApiError> {
        Self::new(
            issuer,
            auth.mgmt_client_id.clone(),
            auth.mgmt_client_secret.clone(),
            options,
        )
    }

    pub fn issuer(&self) -> &Url {
        &self.inner.issuer
    }

    /// HTTP requests sent so far (token, API and download calls, retries included).
    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::Relaxed)
    }

    pub async fn list_users(&self, query: &UsersQuery) -> Result<UsersPage, ApiError> {
        let mut params: Vec<(&str, String)> = vec![
            ("page", query.page.to_string()),
            ("per_page", query.per_page.to_string()),
            ("include_totals", "true".to_owned()),
        ];
        if let Some(sort) = &query.sort {
            params.push(("sort", sort.clone()));
        }
        if let Some(q) = &query.q {
            params.push(("q", q.clone()));
            params.push(("search_engine", "v3".to_owned()));
        }
        let url = self.api_url("users")?;
        self.call_json("GET /api/v2/users", move |http| {
            http.get(url.clone()).query(&params)
        })
        .await
    }

    /// `GET /api/v2/users/{id}` as JSON text (see [`UsersPage::users`]); `None` when Auth0
    /// answers 404.
    pub async fn get_user(&self, user_id: &str) -> Result<Option<Box<RawValue>>, ApiError> {
        let mut url = self.api_url("users")?;
        url.path_segments_mut()
            .map_err(|_| ApiError::BadIssuer(self.inner.issuer.to_string()))?
            .push(user_id);
        match self
            .call_json::<Box<RawValue>>("GET /api/v2/users/{id}", move |http| http.get(url.clone()))
            .await
        {
            Ok(user) => Ok(Some(user)),
            Err(ApiError::Status { status: 404, .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// `POST /api/v2/jobs/users-exports` for the whole tenant as NDJSON with `fields`, at most
    /// `limit` users. The API reference gives `limit` a default of 5 while the export guide says
    /// "all records if omitted", so it is always sent.
    pub async fn create_users_export(&self, fields: &[&str], limit: u64) -> Result<Job, ApiError> {
        let body = serde_json::json!({
            "format": "json",
            "limit": limit.max(1),
            "fields": fields.iter().map(|name| serde_json::json!({ "name": name })).collect::<Vec<_>>(),
        });
        let url = self.api_url("jobs/users-exports")?;
        self.call_json("POST /api/v2/jobs/users-exports", move |http| {
            http.post(url.clone()).json(&body)
        })
        .await
    }

    pub async fn get_job(&self, id: &str) -> Result<Job, ApiError> {
        let mut url = self.api_url("jobs")?;
        url.path_segments_mut()
            .map_err(|_| ApiError::BadIssuer(self.inner.issuer.to_string()))?
            .push(id);
        self.call_json("GET /api/v2/jobs/{id}", move |http| http.get(url.clone()))
            .await
    }

    /// Streams the export file at `location` (a pre-signed URL: no bearer token is sent to it).
    pub async fn download(
        &self,
        location: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, reqwest::Error>> + use<>, ApiError> {
        let url = Url::parse(location).map_err(|_| ApiError::Decode {
            what: "the export job".to_owned(),
            message: "its location is not a URL".to_owned(),
        })?;
        let what = "the export download";
        let response = self
            .send_with_retries(what, false, |_| self.inner.download.get(url.clone()))
            .await?;
        Ok(response.bytes_stream())
    }

    fn api_url(&self, path: &str) -> Result<Url, ApiError> {
        self.inner
            .api_base
            .join(path)
            .map_err(|_| ApiError::BadIssuer(self.inner.issuer.to_string()))
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<T, ApiError> {
        let response = self.send_with_retries(what, true, build).await?;
        let bytes = response.bytes().await.map_err(|e| ApiError::Exhausted {
            what: what.to_owned(),
            attempts: 1,
            last: describe(&e),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode {
            what: what.to_owned(),
            message: e.to_string(),
        })
    }

    /// Sends a request until it succeeds, a non-retryable status comes back, or the budget is spent.
    async fn send_with_retries(
        &self,
        what: &str,
        authenticated: bool,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
        let options = &self.inner.options;
        let mut failures = 0u32;
        let mut rate_limited = 0u32;
        let mut refreshed_token = false;
        loop {
            self.wait_for_rate_window().await;
            let mut request = build(&self.inner.http);
            if authenticated {
                let token = self.token().await?;
                request = request.bearer_auth(token.expose());
            }
            self.inner.calls.fetch_add(1, Ordering::Relaxed);
            let last = match request.send().await {
                Ok(response) => {
                    self.observe_rate_headers(response.headers());
                    let status = response.status();
                    observability::auth0_api_response(Some(status.as_u16()));
                    if status.is_success() {
                        return Ok(response);
                    }
                    if status == StatusCode::TOO_MANY_REQUESTS {
                        rate_limited += 1;
                        if rate_limited > options.max_rate_limited {
                            return Err(ApiError::Status {
                                status: 429,
                                what: what.to_owned(),
                                message: "rate limited too many times in a row".to_owned(),
                            });
                        }
                        let wait = self.rate_wait(response.headers());
                        tracing::info!(
                            what,
                            wait_ms = wait.as_millis() as u64,
                            "Auth0 rate limit reached; waiting for the window to reset"
                        );
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    if status == StatusCode::UNAUTHORIZED && authenticated && !refreshed_token {
                        // The cached token may have been revoked by a key rotation: fetch one more.
                        refreshed_token = true;
                        *self.inner.token.lock().await = None;
                        continue;
                    }
                    if !status.is_server_error() {
                        let message = error_message(response).await;
                        return Err(match status.as_u16() {
                            401 | 403 if authenticated => ApiError::Status {
                                status: status.as_u16(),
                                what: what.to_owned(),
                                message: format!(
                                    "{message} (does the Management API application have read:users?)"
                                ),
                            },
                            code => ApiError::Status {
                                status: code,
                                what: what.to_owned(),
                                message,
                            },
                        });
                    }
                    format!("HTTP {status}")
                }
                Err(err) => {
                    observability::auth0_api_response(None);
                    describe(&err)
                }
            };
            failures += 1;
            if failures >= options.max_attempts {
                return Err(ApiError::Exhausted {
                    what: what.to_owned(),
                    attempts: failures,
                    last,
                });
            }
            let delay = backoff(options, failures);
            tracing::warn!(what, attempt = failures, error = %last, retry_in_ms = delay.as_millis() as u64, "Auth0 call failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// A valid access token, fetched under the lock so concurrent callers share one request.
    async fn token(&self) -> Result<Secret, ApiError> {
        let mut cached = self.inner.token.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.refresh_at
        {
            return Ok(token.value.clone());
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let url = self
            .inner
            .issuer
            .join("oauth/token")
            .map_err(|_| ApiError::BadIssuer(self.inner.issuer.to_string()))?;
        let form = [
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", self.inner.client_id.clone()),
            (
                "client_secret",
                self.inner.client_secret.expose().to_owned(),
            ),
            ("audience", self.inner.api_base.to_string()),
        ];
        let what = "POST /oauth/token (client credentials)";
        let response = match self
            .send_with_retries_unauthenticated(what, |http| http.post(url.clone()).form(&form))
            .await
        {
            Err(ApiError::Status { status, .. }) if (400..500).contains(&status) => {
                return Err(ApiError::Credentials { status });
            }
            other => other?,
        };
        let body: TokenResponse = response.json().await.map_err(|e| ApiError::Decode {
            what: what.to_owned(),
            message: describe(&e),
        })?;
        let lifetime = Duration::from_secs(body.expires_in.unwrap_or(86_400));
        // Refresh 60 s early so a token never expires between the check and Auth0 reading it.
        let refresh_at = Instant::now() + lifetime.saturating_sub(Duration::from_secs(60));
        let value = Secret::new(body.access_token);
        *cached = Some(CachedToken {
            value: value.clone(),
            refresh_at,
        });
        Ok(value)
    }

    /// The token call goes through the same retry loop, minus the bearer header (boxed: the loop
    /// calls `token()` itself).
    fn send_with_retries_unauthenticated<'a>(
        &'a self,
        what: &'a str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder + Send + 'a,
    ) -> futures::future::BoxFuture<'a, Result<reqwest::Response, ApiError>> {
        Box::pin(self.send_with_retries(what, false, build))
    }

    async fn wait_for_rate_window(&self) {
        let wait = {
            let window = self
                .inner
                .rate
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match (window.remaining, window.reset) {
                (Some(0), Some(reset)) => until_unix(reset, self.inner.options.max_rate_wait),
                _ => Duration::ZERO,
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
            let mut window = self
                .inner
                .rate
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // The window has reset; the next response tells us the new budget.
            window.remaining = None;
        }
    }

    fn observe_rate_headers(&self, headers: &HeaderMap) {
        let remaining = header_u64(headers, "x-ratelimit-remaining");
        let reset = header_u64(headers, "x-ratelimit-reset");
        if remaining.is_some() || reset.is_some() {
            let mut window = self
                .inner
                .rate
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *window = RateWindow { remaining, reset };
        }
    }

    fn rate_wait(&self, headers: &HeaderMap) -> Duration {
        let max = self.inner.options.max_rate_wait;
        // Whether Auth0 sends Retry-After is undocumented; x-ratelimit-reset is.
        match header_u64(headers, "x-ratelimit-reset") {
            Some(reset) => until_unix(reset, max).max(Duration::from_millis(50)) + jitter(100),
            None => header_u64(headers, "retry-after")
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(1))
                .min(max),
        }
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Time until the UNIX second `reset`, plus a little: the reset second itself may still be full.
fn until_unix(reset: u64, max: Duration) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(reset).saturating_sub(now).min(max)
}

fn jitter(max_ms: u64) -> Duration {
    Duration::from_millis(rand::thread_rng().gen_range(0..=max_ms))
}

/// Exponential backoff with "full jitter": a random delay up to base * 2^(n-1), capped.
fn backoff(options: &ApiOptions, failures: u32) -> Duration {
    let ceiling = options
        .backoff_base
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(options.backoff_max);
    let ceiling_ms = u64::try_from(ceiling.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(rand::thread_rng().gen_range(ceiling_ms / 2..=ceiling_ms))
}

/// A transport error without its URL: query strings are harmless but noisy, and it keeps any
/// future credential-bearing URL out of logs.
fn describe(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_body() || err.is_decode() {
        "response body failed"
    } else {
        "request failed"
    };
    let source = std::error::Error::source(err)
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    format!("{kind}{source}")
}

/// Auth0 error bodies are `{statusCode, error, message, errorCode}`; keep only the message.
async fn error_message(response: reqwest::Response) -> String {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| {
            v.get("message")
                .or_else(|| v.get("error_description"))
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| text.chars().take(200).collect());
    if message.is_empty() {
        status.to_string()
    } else {
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let options = ApiOptions::default();
        for failures in 1..20 {
            let delay = backoff(&options, failures);
            assert!(delay <= options.backoff_max);
        }
        assert!(backoff(&options, 1) <= options.backoff_base);
    }

    #[test]
    fn the_client_never_prints_its_secret() {
        let api = ManagementApi::new(
            Url::parse("https://tenant.example").unwrap(),
            "id",
            Secret::new("super-secret-value"),
            ApiOptions::default(),
        )
        .unwrap();
        assert!(!format!("{api:?}").contains("super-secret-value"));
        assert_eq!(api.issuer().as_str(), "https://tenant.example/");
    }

    #[test]
    fn one_unreadable_profile_does_not_make_its_page_unreadable() {
        // What JavaScript's JSON.stringify writes for a lone surrogate, and a number past f64.
        let body = r#"{"start":0,"limit":100,"length":3,"total":3,"users":[
            {"user_id":"auth0|a","name":"half an emoji \ud83d"},
            {"user_id":"auth0|b","logins_count":1e400,"note":"\u0000"},
            {"user_id":"auth0|c","name":"fine"}]}"#;
        assert!(
            serde_json::from_str::<serde_json::Value>(body).is_err(),
            "serde_json alone fails"
        );
        let page: UsersPage = serde_json::from_str(body).unwrap();
        let parsed: Vec<_> = page
            .users
            .iter()
            .map(|u| crate::users::auth0_user::Auth0User::parse(u.get()))
            .collect();
        assert_eq!(
            parsed[0].as_ref().unwrap().name.as_deref(),
            Some("half an emoji \u{fffd}")
        );
        assert_eq!(
            parsed[1].as_ref().unwrap_err().user_id.as_deref(),
            Some("auth0|b")
        );
        assert_eq!(parsed[2].as_ref().unwrap().name.as_deref(), Some("fine"));
    }
}
