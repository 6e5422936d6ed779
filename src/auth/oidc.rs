//! The OpenID Connect client: discovery (cached, retried on use so the app starts and keeps
//! serving while the provider is down), the provider's signing keys (fetched again when a token
//! names a key they lack), the authorization URL with PKCE + state + nonce, and the code exchange
//! with full ID-token validation. Nothing here assumes Auth0 beyond the logout fallback:
//! endpoints come from discovery.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use openidconnect::{
    AuthType, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, JsonWebKeySet, LoginHint, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, TokenUrl,
    core::{
        CoreAuthPrompt, CoreAuthenticationFlow, CoreClient, CoreJsonWebKey, CoreJwsSigningAlgorithm,
    },
    reqwest,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock};
use url::Url;

use super::{
    discovery::{self, Metadata},
    id_token::{self, Expected, JwtType, Profile, SignedToken},
    login_request::{LoginRequest, Prompt},
    logout_token::{self, LogoutToken},
};
use crate::config::{AuthSettings, Issuer, TokenAuthMethod};

/// Discovery (and the keys with it) is refreshed after this long: endpoints rarely change.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// A failed discovery is not cached: the next use tries again, but requests that arrive within
/// this long of a failure share its answer instead of each waiting on the provider.
const RETRY_SPACING: Duration = Duration::from_secs(1);
/// Keys are fetched again for an unknown `kid` at most this often (Core 10.1.1).
const KEY_REFETCH_SPACING: Duration = Duration::from_secs(30);

/// The authorization-request client (openidconnect's: scopes, nonce, PKCE, prompt).
type AuthClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// The token response's `id_token`, kept as the string it is: it is validated on its own JSON
/// (see `id_token`), so an unusual claim cannot fail the response's parsing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawIdToken {
    id_token: Option<String>,
}

impl openidconnect::ExtraTokenFields for RawIdToken {}

type TokenResponse =
    openidconnect::StandardTokenResponse<RawIdToken, oauth2::basic::BasicTokenType>;

/// The token-endpoint client (oauth2's, which openidconnect builds on).
type TokenClient = oauth2::Client<
    oauth2::basic::BasicErrorResponse,
    TokenResponse,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// Why a sign-in step could not use the provider. Each maps to its own page and status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// No answer: connection refused, DNS, timeout.
    #[error("the sign-in provider is not reachable: {0}")]
    Unreachable(String),
    /// An answer the app cannot use: an HTTP error page, unreadable JSON, an ID token that is not
    /// a JWT.
    #[error("the sign-in provider sent an answer that could not be used: {0}")]
    BadResponse(String),
    /// Discovery names another issuer than the configured one (Discovery 4.3): a configuration
    /// error that retrying cannot fix.
    #[error(
        "the configured issuer is {configured} but the provider's discovery document names its issuer {discovered}"
    )]
    IssuerMismatch {
        configured: String,
        discovered: String,
    },
    /// The token endpoint refused the code (RFC 6749 5.2), e.g. `invalid_grant`.
    #[error("the sign-in provider refused the code: {0}")]
    Rejected(String),
    /// The ID token failed validation (Core 3.1.3.7).
    #[error("the ID token failed validation: {0}")]
    InvalidIdToken(String),
}

/// Why a token from the provider was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unverified {
    /// The token itself is not valid (the reason, for logs and error descriptions).
    Rejected(String),
    /// The provider's discovery or keys could not be read, so the token could not be checked.
    Provider(OidcError),
}

/// The secrets of one authorization request, kept until its callback.
#[derive(Debug, Clone)]
pub struct AuthorizationSecrets {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// The person a verified ID token names.
#[derive(Debug, Clone)]
pub struct VerifiedLogin {
    pub sub: String,
    /// The provider's session (`sid`): what back-channel logout tokens name.
    pub sid: Option<String>,
    pub profile: Profile,
    pub roles: Vec<String>,
    pub id_token: String,
}

/// What `/readyz` reports about sign-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInStatus {
    Ready,
    /// The provider cannot be used right now (it may recover by itself).
    Unavailable(String),
    /// The configuration is wrong (it will not fix itself).
    Misconfigured(String),
}

struct Discovered {
    issuer: String,
    auth_client: AuthClient,
    token_client: TokenClient,
    userinfo_endpoint: Option<Url>,
    end_session_endpoint: Option<Url>,
    signing_algs: Vec<CoreJwsSigningAlgorithm>,
    metadata: Metadata,
    fetched_at: Instant,
}

#[derive(Default)]
struct Keys {
    set: Arc<JsonWebKeySet<CoreJsonWebKey>>,
    refetched_at: Option<Instant>,
}

/// The sign-in provider as this app uses it. One per process, shared by all requests.
pub struct OidcProvider {
    issuer: Issuer,
    settings: AuthSettings,
    redirect_url: Url,
    http: reqwest::Client,
    discovered: RwLock<Option<Arc<Discovered>>>,
    /// Held while discovery runs; remembers the last failure and when it happened.
    refresh: Mutex<Option<(Instant, OidcError)>>,
    keys: RwLock<Keys>,
}

impl OidcProvider {
    /// The client for the provider at `issuer` (as configured), returning to `redirect_url`.
    /// Nothing is fetched yet (see `warm_up`).
    pub fn new(
        issuer: Issuer,
        settings: AuthSettings,
        redirect_url: Url,
    ) -> Result<Self, OidcError> {
        let http = reqwest::ClientBuilder::new()
            // Following redirects from the provider would open SSRF paths.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| OidcError::Unreachable(e.to_string()))?;
        Ok(Self {
            issuer,
            settings,
            redirect_url,
            http,
            discovered: RwLock::new(None),
            refresh: Mutex::new(None),
            keys: RwLock::new(Keys::default()),
        })
    }

    /// The configured issuer, as written.
    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    /// Fetches discovery now (at start); the caller logs a failure, which is retried on use.
    pub async fn warm_up(&self) -> Result<(), OidcError> {
        self.discovered().await.map(|_| ())
    }

    /// Sign-in's state for `/readyz`, answering within `budget`.
    pub async fn status(&self, budget: Duration) -> SignInStatus {
        match tokio::time::timeout(budget, self.discovered()).await {
            Ok(Ok(_)) => SignInStatus::Ready,
            Ok(Err(err @ OidcError::IssuerMismatch { .. })) => {
                SignInStatus::Misconfigured(format!("sign-in is misconfigured: {err}"))
            }
            Ok(Err(err)) => SignInStatus::Unavailable(err.to_string()),
            Err(_) => SignInStatus::Unavailable(format!(
                "the sign-in provider did not answer within {} s",
                budget.as_secs_f32()
            )),
        }
    }

    async fn discovered(&self) -> Result<Arc<Discovered>, OidcError> {
        if let Some(fresh) = self.fresh_discovery().await {
            return Ok(fresh);
        }
        let mut last_failure = match self.refresh.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // A refresh is under way: aged metadata serves meanwhile, if there is any.
                if let Some(stale) = self.discovered.read().await.clone() {
                    return Ok(stale);
                }
                self.refresh.lock().await
            }
        };
        // Someone else may have refreshed, or failed, while this request waited.
        if let Some(fresh) = self.fresh_discovery().await {
            return Ok(fresh);
        }
        if let Some((at, err)) = last_failure.as_ref()
            && at.elapsed() < RETRY_SPACING
        {
            return self.stale_or(err.clone()).await;
        }
        match self.discover().await {
            Ok(fresh) => {
                *last_failure = None;
                Ok(fresh)
            }
            Err(err) => {
                *last_failure = Some((Instant::now(), err.clone()));
                self.stale_or(err).await
            }
        }
    }

    async fn fresh_discovery(&self) -> Option<Arc<Discovered>> {
        self.discovered
            .read()
            .await
            .as_ref()
            .filter(|d| d.fetched_at.elapsed() < DISCOVERY_TTL)
            .cloned()
    }

    /// Metadata that has aged beats none while the provider is briefly unreachable; a
    /// misconfiguration is reported even then.
    async fn stale_or(&self, err: OidcError) -> Result<Arc<Discovered>, OidcError> {
        match (&err, self.discovered.read().await.as_ref()) {
            (OidcError::IssuerMismatch { .. }, _) | (_, None) => Err(err),
            (_, Some(stale)) => {
                tracing::warn!(error = %err, "OIDC discovery refresh failed; using cached metadata");
                Ok(stale.clone())
            }
        }
    }

    async fn discover(&self) -> Result<Arc<Discovered>, OidcError> {
        let metadata = discovery::fetch(&self.http, &self.issuer).await?;
        let keys = discovery::fetch_keys(&self.http, &metadata).await?;
        let token_endpoint = metadata.token_endpoint().cloned().ok_or_else(|| {
            OidcError::BadResponse("the discovery document has no token_endpoint".into())
        })?;
        let client_id = ClientId::new(self.settings.client_id.clone());
        let client_secret = ClientSecret::new(self.settings.client_secret.expose().to_owned());
        let redirect = RedirectUrl::from_url(self.redirect_url.clone());
        let auth_type = match self.settings.token_auth {
            TokenAuthMethod::Post => AuthType::RequestBody,
            TokenAuthMethod::Basic => AuthType::BasicAuth,
        };
        let auth_client = CoreClient::from_provider_metadata(
            metadata.clone(),
            client_id.clone(),
            Some(client_secret.clone()),
        )
        .set_redirect_uri(redirect.clone());
        let token_client = oauth2::Client::new(client_id)
            .set_client_secret(client_secret)
            .set_auth_type(auth_type)
            .set_redirect_uri(redirect)
            .set_token_uri(TokenUrl::from_url(token_endpoint.url().clone()));
        let discovered = Arc::new(Discovered {
            issuer: metadata.issuer().as_str().to_owned(),
            auth_client,
            token_client,
            userinfo_endpoint: metadata.userinfo_endpoint().map(|u| u.url().clone()),
            end_session_endpoint: metadata
                .additional_metadata()
                .end_session_endpoint
                .as_ref()
                .map(|u| u.url().clone()),
            signing_algs: metadata.id_token_signing_alg_values_supported().clone(),
            metadata,
            fetched_at: Instant::now(),
        });
        self.keys.write().await.set = Arc::new(keys);
        *self.discovered.write().await = Some(discovered.clone());
        Ok(discovered)
    }

    /// The provider URL to send the browser to, and the secrets to keep until the callback.
    /// Scopes and `audience` come from the settings; the person's choices (prompt, screen_hint,
    /// login_hint, connection, organization, invitation) from `request`.
    pub async fn authorization_url(
        &self,
        request: &LoginRequest,
    ) -> Result<(Url, AuthorizationSecrets), OidcError> {
        let discovered = self.discovered().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut auth = discovered
            .auth_client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        // openidconnect adds `openid` itself.
        for scope in self.settings.login.scopes.iter().filter(|s| *s != "openid") {
            auth = auth.add_scope(Scope::new(scope.clone()));
        }
        for prompt in &request.prompt {
            auth = auth.add_prompt(match prompt {
                Prompt::None => CoreAuthPrompt::None,
                Prompt::Login => CoreAuthPrompt::Login,
                Prompt::Consent => CoreAuthPrompt::Consent,
                Prompt::SelectAccount => CoreAuthPrompt::SelectAccount,
            });
        }
        if let Some(hint) = &request.login_hint {
            auth = auth.set_login_hint(LoginHint::new(hint.clone()));
        }
        if let Some(audience) = &self.settings.login.audience {
            auth = auth.add_extra_param("audience", audience.clone());
        }
        for (name, value) in request.auth0_params() {
            auth = auth.add_extra_param(name, value.to_owned());
        }
        let (url, state, nonce) = auth.url();
        Ok((
            url,
            AuthorizationSecrets {
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                pkce_verifier: verifier.secret().clone(),
            },
        ))
    }

    /// Exchanges the code (with the PKCE verifier) and validates the ID token: signature
    /// (against the provider's keys, fetched again once for a new key), issuer, audience,
    /// expiry and nonce. An organization asked for must be the token's (`org_id`, or `org_name`
    /// for a name). Profile claims the token lacks are taken from UserInfo when it has them
    /// (Core 5.4: with the code flow, a provider may return them only there).
    ///
    /// `response_issuer` is the callback's `iss` parameter, when the provider sends one: it
    /// must be this provider's, or the code goes nowhere (RFC 9207, mix-up defence).
    pub async fn exchange(
        &self,
        code: String,
        secrets: &AuthorizationSecrets,
        organization: Option<&str>,
        response_issuer: Option<&str>,
    ) -> Result<VerifiedLogin, OidcError> {
        let discovered = self.discovered().await?;
        if let Some(iss) = response_issuer
            && iss != discovered.issuer
        {
            return Err(OidcError::InvalidIdToken(format!(
                "the authorization response came from {iss}, not {}",
                discovered.issuer
            )));
        }
        let response = discovered
            .token_client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(PkceCodeVerifier::new(secrets.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let raw =
            response.extra_fields().id_token.clone().ok_or_else(|| {
                OidcError::BadResponse("the token response has no id_token".into())
            })?;
        let token = SignedToken::parse(&raw)
            .map_err(|e| OidcError::BadResponse(format!("the ID token: {e}")))?;
        let claims = self
            .verified_claims(&discovered, &token, JwtType::IdToken)
            .await
            .map_err(|failed| match failed {
                Unverified::Rejected(why) => OidcError::InvalidIdToken(why),
                Unverified::Provider(err) => err,
            })?;
        id_token::check_claims(
            &claims,
            &Expected {
                issuer: &discovered.issuer,
                client_id: &self.settings.client_id,
                nonce: &secrets.nonce,
                now: chrono::Utc::now().timestamp(),
            },
        )
        .map_err(|e| OidcError::InvalidIdToken(e.to_string()))?;
        if let Some(organization) = organization {
            check_organization(&claims, organization)?;
        }
        let sub = id_token::string_claim(&claims, "sub").unwrap_or_default();
        let mut profile = Profile::from_claims(&claims);
        if (profile.email.is_none() || profile.name.is_none())
            && let Some(more) = self
                .userinfo(&discovered, response.access_token().secret(), &sub)
                .await
        {
            profile.fill_from(more);
        }
        Ok(VerifiedLogin {
            sid: id_token::string_claim(&claims, "sid"),
            roles: id_token::roles(&claims, &self.settings.roles_claim),
            sub,
            profile,
            id_token: raw,
        })
    }

    /// The token's claims once its `typ` and signature hold. A key the cached set lacks makes
    /// the app fetch the set again, at most once per `KEY_REFETCH_SPACING`.
    async fn verified_claims(
        &self,
        discovered: &Discovered,
        token: &SignedToken,
        kind: JwtType,
    ) -> Result<serde_json::Map<String, serde_json::Value>, Unverified> {
        let secret = self.settings.client_secret.expose();
        let keys = self.keys.read().await.set.clone();
        let first = token.verify(kind, &keys, &discovered.signing_algs, secret);
        let err = match first {
            Ok(claims) => return Ok(claims),
            Err(err) if err.may_be_a_new_key(token) => err,
            Err(err) => return Err(Unverified::Rejected(err.to_string())),
        };
        let mut cache = self.keys.write().await;
        // Another request may have fetched them while this one waited.
        if Arc::ptr_eq(&cache.set, &keys) {
            if cache
                .refetched_at
                .is_some_and(|at| at.elapsed() < KEY_REFETCH_SPACING)
            {
                return Err(Unverified::Rejected(format!(
                    "{err} (keys were fetched again less than {} s ago)",
                    KEY_REFETCH_SPACING.as_secs()
                )));
            }
            cache.refetched_at = Some(Instant::now());
            cache.set = Arc::new(
                discovery::fetch_keys(&self.http, &discovered.metadata)
                    .await
                    .map_err(Unverified::Provider)?,
            );
            tracing::info!(
                keys = cache.set.keys().len(),
                "fetched the provider's signing keys again"
            );
        }
        token
            .verify(kind, &cache.set, &discovered.signing_algs, secret)
            .map_err(|e| Unverified::Rejected(e.to_string()))
    }

    /// Validates a back-channel logout token (OpenID Connect Back-Channel Logout 1.0, section
    /// 2.6): signed by the provider like its ID tokens (the same keys, fetched again once for a
    /// new key, and algorithms; never `none`), typed as a logout token or a plain JWT, and its
    /// claims as `logout_token::check_claims` holds them. Encrypted tokens are not supported
    /// (the app registers no encryption).
    ///
    /// Errors: `Rejected` (a 400: the token is not valid), `Provider` (the provider's discovery
    /// or keys cannot be read right now, so nothing can be validated: a 503).
    pub async fn verify_logout_token(&self, raw: &str) -> Result<LogoutToken, Unverified> {
        let token = SignedToken::parse(raw).map_err(|e| Unverified::Rejected(e.to_string()))?;
        let discovered = self.discovered().await.map_err(Unverified::Provider)?;
        let claims = self
            .verified_claims(&discovered, &token, JwtType::LogoutToken)
            .await?;
        logout_token::check_claims(
            &claims,
            &logout_token::Expected {
                issuer: &discovered.issuer,
                client_id: &self.settings.client_id,
                now: chrono::Utc::now().timestamp(),
            },
        )
        .map_err(|e| Unverified::Rejected(e.to_string()))
    }

    /// UserInfo (Core 5.3) for the profile claims the ID token lacks; `None` when there is no
    /// endpoint or its answer cannot be used (its `sub` must be the token's, Core 5.3.4).
    async fn userinfo(
        &self,
        discovered: &Discovered,
        access_token: &str,
        sub: &str,
    ) -> Option<Profile> {
        let endpoint = discovered.userinfo_endpoint.clone()?;
        let response = self
            .http
            .get(endpoint)
            .bearer_auth(access_token)
            .header("accept", "application/json")
            .send()
            .await
            .and_then(|r| r.error_for_status());
        let claims = match response {
            Ok(r) => r.json::<serde_json::Map<String, serde_json::Value>>().await,
            Err(err) => Err(err),
        };
        match claims {
            Ok(claims) if id_token::string_claim(&claims, "sub").as_deref() == Some(sub) => {
                Some(Profile::from_claims(&claims))
            }
            Ok(_) => {
                tracing::warn!("UserInfo answered for another subject; ignored");
                None
            }
            Err(err) => {
                tracing::info!(error = %error_chain(&err), "UserInfo could not be read; signing in without it");
                None
            }
        }
    }

    /// Where to send the browser to end the provider's session: the `end_session_endpoint`
    /// (OpenID Connect RP-Initiated Logout 1.0, with `client_id` always and `id_token_hint`
    /// when there is one), else Auth0's `/v2/logout`.
    pub async fn logout_url(&self, id_token: Option<&str>, return_to: &Url) -> Url {
        let end_session = self
            .discovered()
            .await
            .ok()
            .and_then(|d| d.end_session_endpoint.clone());
        match end_session {
            Some(mut url) => {
                {
                    let mut query = url.query_pairs_mut();
                    if let Some(hint) = id_token {
                        query.append_pair("id_token_hint", hint);
                    }
                    query
                        .append_pair("post_logout_redirect_uri", return_to.as_str())
                        .append_pair("client_id", &self.settings.client_id);
                }
                url
            }
            None => {
                // https://auth0.com/docs/api/authentication/logout/auth-0-logout
                let mut url = self.issuer.url().clone();
                url.set_path("/v2/logout");
                url.query_pairs_mut()
                    .append_pair("client_id", &self.settings.client_id)
                    .append_pair("returnTo", return_to.as_str());
                url
            }
        }
    }
}

/// The organization asked for must be the one the token is for: `org_id` for an ID
/// (`org_...`), `org_name` (lower-cased by Auth0) for a name.
/// https://auth0.com/docs/manage-users/organizations/using-tokens
fn check_organization(
    claims: &serde_json::Map<String, serde_json::Value>,
    organization: &str,
) -> Result<(), OidcError> {
    let matches = if organization.starts_with("org_") {
        id_token::string_claim(claims, "org_id").as_deref() == Some(organization)
    } else {
        id_token::string_claim(claims, "org_name")
            .is_some_and(|name| name.eq_ignore_ascii_case(organization))
    };
    if matches {
        Ok(())
    } else {
        Err(OidcError::InvalidIdToken(format!(
            "the token is not for the organization {organization}"
        )))
    }
}

fn token_error(
    err: RequestTokenError<
        oauth2::HttpClientError<reqwest::Error>,
        oauth2::basic::BasicErrorResponse,
    >,
) -> OidcError {
    match err {
        RequestTokenError::ServerResponse(response) => {
            let mut text = response.error().to_string();
            if let Some(description) = response.error_description() {
                text.push_str(": ");
                text.push_str(description);
            }
            OidcError::Rejected(text)
        }
        RequestTokenError::Request(err) => OidcError::Unreachable(error_chain(&err)),
        RequestTokenError::Parse(err, _body) => {
            OidcError::BadResponse(format!("the token response could not be read: {err}"))
        }
        RequestTokenError::Other(text) => OidcError::BadResponse(text),
    }
}

/// An error and its causes on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
