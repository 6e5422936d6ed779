//! The OpenID Connect client: discovery (cached, retried lazily so the app starts and keeps
//! serving while the provider is down), the authorization URL with PKCE + state + nonce, and the
//! code exchange with full ID-token verification. Nothing here assumes Auth0 beyond the logout
//! fallback: endpoints come from discovery.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine;
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse,
    core::{CoreAuthenticationFlow, CoreClient},
    reqwest,
};
use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;
use url::Url;

use crate::config::{AuthSettings, TokenAuthMethod};

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Discovery is refreshed after this long (keys rotate; endpoints rarely change).
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the sign-in provider is not reachable: {0}")]
    Unreachable(String),
    #[error("the sign-in provider rejected the request: {0}")]
    Rejected(String),
    #[error("the ID token failed verification: {0}")]
    InvalidIdToken(String),
}

/// What the login step keeps in the session until the callback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingLogin {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub next: String,
}

/// Verified identity from the callback.
#[derive(Debug, Clone)]
pub struct VerifiedLogin {
    pub sub: String,
    pub email: Option<String>,
    pub email_verified: Option<bool>,
    pub name: Option<String>,
    pub nickname: Option<String>,
    pub picture: Option<String>,
    pub roles: Vec<String>,
    pub id_token: String,
}

struct Discovered {
    client: Arc<Client>,
    end_session_endpoint: Option<Url>,
    fetched_at: Instant,
}

pub struct OidcProvider {
    issuer: Url,
    settings: AuthSettings,
    redirect_url: Url,
    http: reqwest::Client,
    discovered: RwLock<Option<Discovered>>,
}

impl OidcProvider {
    pub fn new(issuer: Url, settings: AuthSettings, redirect_url: Url) -> Result<Self, OidcError> {
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
        })
    }

    pub fn issuer(&self) -> &Url {
        &self.issuer
    }

    /// Fetches discovery now (at start); failure is logged by the caller and retried on use.
    pub async fn warm_up(&self) -> Result<(), OidcError> {
        self.client().await.map(|_| ())
    }

    async fn client(&self) -> Result<(Arc<Client>, Option<Url>), OidcError> {
        if let Some(d) = self.discovered.read().await.as_ref()
            && d.fetched_at.elapsed() < DISCOVERY_TTL
        {
            return Ok((d.client.clone(), d.end_session_endpoint.clone()));
        }
        let mut slot = self.discovered.write().await;
        match self.discover().await {
            Ok(fresh) => {
                let out = (fresh.client.clone(), fresh.end_session_endpoint.clone());
                *slot = Some(fresh);
                Ok(out)
            }
            // A stale client beats no client while the provider is briefly unreachable.
            Err(err) => match slot.as_ref() {
                Some(stale) => {
                    tracing::warn!(error = %err, "OIDC discovery refresh failed; using cached metadata");
                    Ok((stale.client.clone(), stale.end_session_endpoint.clone()))
                }
                None => Err(err),
            },
        }
    }

    async fn discover(&self) -> Result<Discovered, OidcError> {
        let issuer = IssuerUrl::from_url(self.issuer.clone());
        let metadata =
            openidconnect::ProviderMetadataWithLogout::discover_async(issuer, &self.http)
                .await
                .map_err(|e| OidcError::Unreachable(error_chain(&e)))?;
        let end_session_endpoint = metadata
            .additional_metadata()
            .end_session_endpoint
            .as_ref()
            .map(|u| u.url().clone());
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.settings.client_id.clone()),
            Some(ClientSecret::new(
                self.settings.client_secret.expose().to_owned(),
            )),
        )
        .set_redirect_uri(RedirectUrl::from_url(self.redirect_url.clone()))
        .set_auth_type(match self.settings.token_auth {
            TokenAuthMethod::Post => openidconnect::AuthType::RequestBody,
            TokenAuthMethod::Basic => openidconnect::AuthType::BasicAuth,
        });
        Ok(Discovered {
            client: Arc::new(client),
            end_session_endpoint,
            fetched_at: Instant::now(),
        })
    }

    /// The provider URL to send the browser to, and what to remember until the callback.
    pub async fn authorization_url(&self, next: String) -> Result<(Url, PendingLogin), OidcError> {
        let (client, _) = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("profile".into()))
            .set_pkce_challenge(challenge)
            .url();
        Ok((
            url,
            PendingLogin {
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                pkce_verifier: verifier.secret().clone(),
                next,
            },
        ))
    }

    /// Exchanges the code (with the PKCE verifier) and verifies the ID token: signature (JWKS),
    /// issuer, audience, expiry and nonce.
    pub async fn exchange(
        &self,
        code: String,
        pending: &PendingLogin,
    ) -> Result<VerifiedLogin, OidcError> {
        let (client, _) = self.client().await?;
        let response = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| OidcError::Rejected(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|err| match &err {
                openidconnect::RequestTokenError::ServerResponse(resp) => {
                    OidcError::Rejected(resp.error().to_string())
                }
                _ => OidcError::Unreachable(error_chain(&err)),
            })?;
        let id_token = response.id_token().ok_or_else(|| {
            OidcError::InvalidIdToken("the token response has no id_token".into())
        })?;
        let claims = id_token
            .claims(
                &client.id_token_verifier(),
                &Nonce::new(pending.nonce.clone()),
            )
            .map_err(|e| OidcError::InvalidIdToken(e.to_string()))?;
        let raw = id_token.to_string();
        Ok(VerifiedLogin {
            sub: claims.subject().to_string(),
            email: claims.email().map(|e| e.to_string()),
            email_verified: claims.email_verified(),
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.to_string()),
            nickname: claims
                .nickname()
                .and_then(|n| n.get(None))
                .map(|n| n.to_string()),
            picture: claims
                .picture()
                .and_then(|p| p.get(None))
                .map(|p| p.to_string()),
            roles: roles_from_verified_token(&raw, &self.settings.roles_claim),
            id_token: raw,
        })
    }

    /// Where to send the browser after the local session is gone: the provider's
    /// `end_session_endpoint` (RP-initiated logout), else Auth0's `/v2/logout`.
    pub async fn logout_url(&self, id_token: Option<&str>, return_to: &Url) -> Url {
        let end_session = self.client().await.ok().and_then(|(_, end)| end);
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
                let mut url = self.issuer.clone();
                url.set_path("/v2/logout");
                url.query_pairs_mut()
                    .append_pair("client_id", &self.settings.client_id)
                    .append_pair("returnTo", return_to.as_str());
                url
            }
        }
    }
}

/// Reads the namespaced roles claim from an ID token whose signature was already verified.
fn roles_from_verified_token(raw: &str, claim: &str) -> Vec<String> {
    let payload = raw.split('.').nth(1).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|claims| claims.get(claim).cloned())
        .and_then(|roles| serde_json::from_value::<Vec<String>>(roles).ok())
        .unwrap_or_default()
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
