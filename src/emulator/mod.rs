//! The Auth0 emulator: a local OpenID provider and the Management API subset the sync uses,
//! shaped as Auth0 documents them. It makes `cargo run` work with no Auth0 account and is the
//! peer every login and sync test talks to. Never active in production (the `emulator` feature
//! is left out of release images and config refuses it with `APP_ENV=production`).
//!
//! Routes (Auth0's paths):
//! - `/.well-known/openid-configuration`, `/.well-known/jwks.json`
//! - `GET /authorize` (login page, or straight back while the browser's single sign-on session
//!   lasts), `POST /u/login` (its forms), `POST /oauth/token`, `GET|POST /userinfo`,
//!   `GET /v2/logout`, `GET /oidc/logout` (both end the single sign-on session)
//! - `/api/v2/users`, `/api/v2/users/{id}`, `/api/v2/jobs/users-exports`, `/api/v2/jobs/{id}`
//!   (bearer token from `client_credentials` with `audience={issuer}api/v2/`)
//! - `GET /exports/{file}`: the signed, gzipped export file a completed job points to
//!
//! It also posts what Auth0's Event Streams and Log Streams post ([`streams`]) to the
//! destinations configured, when users sign up, log in, or change through the Management API.
//! It also posts back-channel logout tokens to the application's Back-Channel Logout URI when
//! single sign-on sessions end (`backchannel`).

mod backchannel;
mod exports;
mod keys;
mod login_page;
mod management;
mod oidc;
mod rate_limit;
mod search;
mod streams;

pub mod faults;
pub mod users;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use poem::{
    EndpointExt, Response, Route, Server, get,
    http::StatusCode,
    listener::{Acceptor, Listener, TcpListener},
    post,
};
use serde_json::json;
use tokio::sync::watch;
use url::Url;

pub use backchannel::{BackchannelLogout, Delivery as BackchannelDelivery, Initiator, Initiators};
pub use exports::ExportBuild;
pub use faults::{Faults, IdTokenFault};
pub use streams::{
    Deliveries, EventStreamDestination, LogStreamDestination, LogStreamFormat, StreamDestinations,
};
pub use users::{NewUser, StoreError, User, UserPatch, UserStore};

use crate::config::{DEFAULT_ROLES_CLAIM, DEV_CLIENT_ID, DEV_CLIENT_SECRET};

/// How the emulator spells its issuer identifier in discovery and in every token's `iss`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IssuerIdentifier {
    /// `http://HOST:PORT/`, with the trailing slash every Auth0 tenant's issuer has.
    #[default]
    Auth0,
    /// `http://HOST:PORT`, as Google (`https://accounts.google.com`), Okta and Keycloak
    /// (`.../realms/NAME`) spell theirs.
    NoTrailingSlash,
    /// Another URL altogether, as a provider behind a proxy that does not know its public
    /// address announces (a misconfiguration the app must report, not paper over).
    Claimed(String),
}

/// How to run an emulator.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Port 0 picks a free port (tests).
    pub bind: SocketAddr,
    pub client_id: String,
    pub client_secret: String,
    /// Allowed `redirect_uri` values (exact match).
    pub callback_urls: Vec<String>,
    /// Allowed `returnTo` / `post_logout_redirect_uri` values (exact match).
    pub logout_urls: Vec<String>,
    /// Demo users to seed (the first is an admin).
    pub seed_users: usize,
    /// A JSON array of Auth0-shaped users to add.
    pub users_file: Option<PathBuf>,
    /// Management API requests per second; `None` = unlimited.
    pub rate_limit: Option<u32>,
    /// Keep the RSA signing key (PEM) here across restarts; `None` = a fresh key each start.
    pub key_file: Option<PathBuf>,
    /// Namespaced ID-token claim carrying the user's roles.
    pub roles_claim: String,
    /// The issuer identifier's spelling (Auth0's, with the trailing slash, by default).
    pub issuer: IssuerIdentifier,
    /// Audiences of the APIs registered in the tenant, besides the Management API: an
    /// `/authorize` request for any other `audience` is refused with Auth0's
    /// `access_denied` "Service not found".
    pub apis: Vec<String>,
    /// Where the tenant's Event Stream and Log Stream deliver (none by default).
    pub streams: StreamDestinations,
    /// The application's back-channel logout registration; `None`: no logout tokens are sent.
    pub backchannel_logout: Option<BackchannelLogout>,
}

impl EmulatorConfig {
    /// 127.0.0.1 on a free port, the dev client, no users, a fresh key, no rate limit.
    pub fn for_tests() -> Self {
        Self {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            client_id: DEV_CLIENT_ID.to_owned(),
            client_secret: DEV_CLIENT_SECRET.to_owned(),
            callback_urls: Vec::new(),
            logout_urls: Vec::new(),
            seed_users: 0,
            users_file: None,
            rate_limit: None,
            key_file: None,
            roles_claim: DEFAULT_ROLES_CLAIM.to_owned(),
            issuer: IssuerIdentifier::Auth0,
            apis: Vec::new(),
            streams: StreamDestinations::default(),
            backchannel_logout: None,
        }
    }
}

/// The one application registered with the emulated tenant.
pub(crate) struct Client {
    pub id: String,
    pub secret: String,
    pub callback_urls: Vec<String>,
    pub logout_urls: Vec<String>,
}

/// An `/authorize` request waiting for the person to pick a user on the login page.
#[derive(Debug, Clone)]
pub(crate) struct PendingLogin {
    pub redirect_uri: String,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub scope: String,
    pub code_challenge: String,
    pub login_hint: Option<String>,
    /// `screen_hint=signup`: the page offers to create an account.
    pub signup: bool,
    /// The Auth0 organization the sign-in is for (its ID token carries `org_id`/`org_name`).
    pub organization: Option<String>,
    pub created: Instant,
}

/// An issued authorization code (single use, 60 s).
#[derive(Debug, Clone)]
pub(crate) struct CodeGrant {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub nonce: Option<String>,
    pub scope: String,
    pub user_id: String,
    pub organization: Option<String>,
    /// The single sign-on session the code was issued in.
    pub sid: String,
    pub created: Instant,
}

/// A browser's single sign-on session at the tenant (Auth0's `auth0` cookie): while it lasts,
/// `/authorize` sends the browser straight back with a code, without the login page.
/// https://auth0.com/docs/manage-users/sessions/session-layers
#[derive(Debug, Clone)]
pub(crate) struct SsoSession {
    pub user_id: String,
    /// The session id every ID token issued in this session carries (`sid`), and its logout
    /// tokens name.
    pub sid: String,
    pub created: Instant,
}

/// What an access token stands for.
#[derive(Debug, Clone)]
pub(crate) enum AccessGrant {
    /// From the code flow: good for `/userinfo`.
    User { user_id: String, expires: Instant },
    /// From client credentials: good for the Management API with these scopes.
    Management {
        scopes: Vec<String>,
        expires: Instant,
    },
}

#[derive(Default)]
pub(crate) struct Grants {
    pub pending: HashMap<String, PendingLogin>,
    pub codes: HashMap<String, CodeGrant>,
    pub tokens: HashMap<String, AccessGrant>,
    pub sso: HashMap<String, SsoSession>,
}

impl Grants {
    /// Forgets what has expired, so a long-running dev emulator does not grow without bound.
    fn prune(&mut self) {
        let now = Instant::now();
        self.pending
            .retain(|_, p| now.duration_since(p.created) < oidc::LOGIN_TTL);
        self.codes
            .retain(|_, c| now.duration_since(c.created) < oidc::CODE_TTL);
        self.tokens.retain(|_, t| match t {
            AccessGrant::User { expires, .. } | AccessGrant::Management { expires, .. } => {
                *expires > now
            }
        });
        self.sso
            .retain(|_, s| now.duration_since(s.created) < oidc::SSO_TTL);
    }
}

/// State every handler shares.
pub(crate) struct Shared {
    /// Where the emulator answers (`http://HOST:PORT/`): endpoints hang off this.
    pub issuer: Url,
    /// The issuer identifier, spelled as configured: discovery's `issuer` and tokens' `iss`.
    pub issuer_identifier: String,
    pub client: RwLock<Client>,
    pub keys: RwLock<keys::Keys>,
    pub users: UserStore,
    pub faults: Faults,
    pub grants: Mutex<Grants>,
    pub exports: exports::Exports,
    pub roles_claim: String,
    pub apis: Vec<String>,
    /// JWKS requests served (tests check that clients refetch keys sparingly).
    pub jwks_requests: AtomicU64,
    pub streams: streams::Streams,
    pub backchannel: backchannel::Backchannel,
}

impl Shared {
    pub fn client(&self) -> std::sync::RwLockReadGuard<'_, Client> {
        self.client.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn keys(&self) -> std::sync::RwLockReadGuard<'_, keys::Keys> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn grants(&self) -> std::sync::MutexGuard<'_, Grants> {
        let mut grants = self.grants.lock().unwrap_or_else(PoisonError::into_inner);
        let held = grants.pending.len() + grants.codes.len() + grants.tokens.len();
        if held + grants.sso.len() > 10_000 {
            grants.prune();
        }
        grants
    }

    /// `{issuer}api/v2/`: the Management API's audience.
    pub fn management_audience(&self) -> String {
        format!("{}api/v2/", self.issuer)
    }
}

struct Running {
    shared: Arc<Shared>,
    port: u16,
    stop: watch::Sender<bool>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // The last handle gone: stop serving rather than leak a server into other tests.
        let _ = self.stop.send(true);
    }
}

/// A running emulator. Cheap to clone; it stops when `shutdown` is called or the last clone
/// is dropped.
#[derive(Clone)]
pub struct Emulator {
    running: Arc<Running>,
}

impl Emulator {
    /// Binds `config.bind`, seeds users, and serves in a background task.
    pub async fn start(config: EmulatorConfig) -> anyhow::Result<Emulator> {
        let key_file = config.key_file.clone();
        let keys =
            tokio::task::spawn_blocking(move || keys::Keys::load_or_generate(key_file.as_deref()))
                .await
                .context("generating the emulator key")??;

        let users = UserStore::new();
        if let Some(path) = &config.users_file {
            let path = path.clone();
            let store = users.clone();
            tokio::task::spawn_blocking(move || store.load_file(&path))
                .await
                .context("loading the users file")??;
        }
        if config.seed_users > 0 {
            let store = users.clone();
            let n = config.seed_users;
            tokio::task::spawn_blocking(move || store.seed(n))
                .await
                .context("seeding users")?;
        }

        let acceptor = TcpListener::bind(config.bind)
            .into_acceptor()
            .await
            .with_context(|| format!("the Auth0 emulator cannot listen on {}", config.bind))?;
        let port = acceptor
            .local_addr()
            .first()
            .and_then(|addr| addr.as_socket_addr().map(|a| a.port()))
            .unwrap_or(config.bind.port());
        // A wildcard bind is reachable on loopback; the issuer must be a URL browsers can open.
        let host = match config.bind.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        let issuer = Url::parse(&format!("http://{host}:{port}/"))
            .context("building the emulator issuer URL")?;
        let issuer_identifier = match config.issuer {
            IssuerIdentifier::Auth0 => issuer.to_string(),
            IssuerIdentifier::NoTrailingSlash => format!("http://{host}:{port}"),
            IssuerIdentifier::Claimed(other) => other,
        };

        let (stop, mut stopped) = watch::channel(false);
        let streams =
            streams::Streams::start(config.streams, &issuer, &config.client_id, stopped.clone());
        let shared = Arc::new(Shared {
            issuer,
            issuer_identifier,
            client: RwLock::new(Client {
                id: config.client_id,
                secret: config.client_secret,
                callback_urls: config.callback_urls,
                logout_urls: config.logout_urls,
            }),
            keys: RwLock::new(keys),
            users,
            faults: Faults::new(config.rate_limit),
            grants: Mutex::new(Grants::default()),
            exports: exports::Exports::default(),
            roles_claim: config.roles_claim,
            apis: config.apis,
            jwks_requests: AtomicU64::new(0),
            streams,
            backchannel: backchannel::Backchannel::new(config.backchannel_logout),
        });

        let app = routes().data(shared.clone());
        tokio::spawn(async move {
            let signal = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            if let Err(err) = Server::new_with_acceptor(acceptor)
                .run_with_graceful_shutdown(app, signal, Some(Duration::from_secs(1)))
                .await
            {
                tracing::error!(error = %err, "the Auth0 emulator stopped with an error");
            }
        });
        Ok(Emulator {
            running: Arc::new(Running { shared, port, stop }),
        })
    }

    /// Where the emulator answers, as a URL with a trailing slash: `http://127.0.0.1:PORT/`
    /// (the tenant URL the Management API hangs off).
    pub fn issuer(&self) -> Url {
        self.running.shared.issuer.clone()
    }

    /// The issuer identifier exactly as discovery and ID tokens spell it (see
    /// [`IssuerIdentifier`]); `issuer()` as a string unless configured otherwise.
    pub fn issuer_identifier(&self) -> String {
        self.running.shared.issuer_identifier.clone()
    }

    /// Rotates the signing key as Auth0's "Rotate signing key" does: tokens are signed with a
    /// new key (new `kid`) from now on; the previous key stays in the JWKS.
    pub async fn rotate_signing_key(&self) -> anyhow::Result<()> {
        let shared = self.running.shared.clone();
        tokio::task::spawn_blocking(move || {
            shared
                .keys
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .rotate()
        })
        .await
        .context("rotating the emulator key")?
    }

    /// JWKS requests served so far.
    pub fn jwks_requests(&self) -> u64 {
        self.running.shared.jwks_requests.load(Ordering::Relaxed)
    }

    pub fn port(&self) -> u16 {
        self.running.port
    }

    pub fn add_callback_url(&self, url: &str) {
        self.change_client(|client| client.callback_urls.push(url.to_owned()));
    }

    pub fn add_logout_url(&self, url: &str) {
        self.change_client(|client| client.logout_urls.push(url.to_owned()));
    }

    fn change_client(&self, change: impl FnOnce(&mut Client)) {
        let mut client = self
            .running
            .shared
            .client
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        change(&mut client);
    }

    /// Registers (or, with `None`, removes) the application's back-channel logout URI and the
    /// events that send logout tokens to it, as the dashboard's Back-Channel Logout settings do.
    pub fn set_backchannel_logout(&self, registration: Option<BackchannelLogout>) {
        self.running.shared.backchannel.set(registration);
    }

    /// The logout tokens sent so far, oldest first, with the application's answers.
    pub fn backchannel_deliveries(&self) -> Vec<BackchannelDelivery> {
        self.running.shared.backchannel.deliveries()
    }

    /// Waits until at least `count` logout tokens have been delivered (or failed), at most
    /// `timeout`; returns every delivery so far.
    pub async fn wait_for_backchannel_deliveries(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Vec<BackchannelDelivery> {
        self.running
            .shared
            .backchannel
            .wait_for(count, timeout)
            .await
    }

    /// The `sid` of every live single sign-on session of `user_id`.
    pub fn session_ids_of(&self, user_id: &str) -> Vec<String> {
        self.running
            .shared
            .grants()
            .sso
            .values()
            .filter(|s| s.user_id == user_id)
            .map(|s| s.sid.clone())
            .collect()
    }

    /// The claims of a logout token the tenant would send for `sub` and `sid` (for tests that
    /// change one and sign the result with [`Emulator::sign`]).
    pub fn logout_token_claims(&self, sub: &str, sid: &str) -> serde_json::Value {
        backchannel::logout_claims(&self.running.shared, sub, sid)
    }

    /// Signs `claims` with the tenant's current key, with `typ` in the header.
    pub fn sign(&self, typ: &str, claims: &serde_json::Value) -> String {
        self.running.shared.keys().sign_typed(typ, claims, false)
    }

    /// Updates a user as the dashboard or the Management API does, with the same consequences:
    /// blocking ends the user's single sign-on sessions (logout tokens, `account-deactivated`).
    pub fn update_user(&self, user_id: &str, patch: UserPatch) -> Result<User, StoreError> {
        management::update(&self.running.shared, user_id, patch)
    }

    /// Deletes a user as the dashboard or the Management API does: their single sign-on
    /// sessions end (logout tokens, `account-deleted`).
    pub fn delete_user(&self, user_id: &str) {
        management::delete(&self.running.shared, user_id);
    }

    pub fn faults(&self) -> &Faults {
        &self.running.shared.faults
    }

    /// The Event Stream and Log Stream deliveries: counters and switches.
    pub fn deliveries(&self) -> &Deliveries {
        &self.running.shared.streams.deliveries
    }

    /// Delivers the Event Stream and Log Stream to `destinations` from now on (`None`: off), as
    /// editing the streams in Auth0's dashboard does.
    pub fn deliver_streams_to(&self, destinations: StreamDestinations) {
        self.running.shared.streams.deliver_to(destinations);
    }

    pub fn users(&self) -> &UserStore {
        &self.running.shared.users
    }

    /// The export files built so far, oldest first (benchmarks print their build time apart
    /// from the sync's).
    pub fn export_builds(&self) -> Vec<ExportBuild> {
        self.running.shared.exports.builds()
    }

    /// Stops accepting connections (in-flight requests get a second to finish): the provider
    /// is down.
    pub fn shutdown(&self) {
        let _ = self.running.stop.send(true);
    }
}

fn routes() -> Route {
    Route::new()
        .at("/.well-known/openid-configuration", get(oidc::discovery))
        .at("/.well-known/jwks.json", get(oidc::jwks))
        .at("/authorize", get(oidc::authorize))
        .at("/u/login", post(oidc::login))
        .at("/oauth/token", post(oidc::token_endpoint))
        .at("/userinfo", get(oidc::userinfo).post(oidc::userinfo))
        .at("/v2/logout", get(oidc::logout_v2))
        .at("/oidc/logout", get(oidc::logout_oidc))
        .at("/exports/:file", get(exports::download))
        .nest("/api/v2", management::routes())
}

/// Random URL-safe text for codes, tokens and ids.
pub(crate) fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::thread_rng(), buf.as_mut_slice());
    URL_SAFE_NO_PAD.encode(buf)
}

/// A JSON response with a status.
pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    json_text_response(status, body.to_string())
}

/// [`json_response`] for a body already serialised (one that holds raw JSON text).
pub(crate) fn json_text_response(status: StatusCode, body: String) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .header("cache-control", "no-store")
        .body(body)
}

/// An OAuth 2.0 error (RFC 6749 5.2).
pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        &json!({ "error": error, "error_description": description }),
    )
}

/// Parses `application/x-www-form-urlencoded` text (query strings and form bodies) into a map;
/// a repeated key keeps its first value.
/// A parameter that is present and not empty (Auth0 treats `x=` as absent).
pub(crate) fn non_empty<'a>(params: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

pub(crate) fn form_map(raw: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for (key, value) in url::form_urlencoded::parse(raw.as_bytes()) {
        map.entry(key.into_owned())
            .or_insert_with(|| value.into_owned());
    }
    map
}
