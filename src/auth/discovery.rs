//! OpenID Connect Discovery 1.0: the provider's metadata, fetched from the configured issuer and
//! accepted only when it names that issuer. The document is parsed by openidconnect; only the
//! issuer comparison is ours, because openidconnect's compares strings and would refuse the
//! issuer Neon's guide configures for Auth0 (see [`same_issuer`]).

use openidconnect::{
    JsonWebKeySet, ProviderMetadataWithLogout, core::CoreJsonWebKey, reqwest::Client as Http,
};
use url::Url;

use super::oidc::OidcError;
use crate::config::Issuer;

/// The provider's metadata (with `end_session_endpoint`, OpenID Connect RP-Initiated Logout).
pub type Metadata = ProviderMetadataWithLogout;

/// Discovery 4.1: the document lives at the issuer, any terminating `/` removed, followed by
/// `/.well-known/openid-configuration`.
pub fn document_url(issuer: &Issuer) -> Result<Url, OidcError> {
    let raw = format!(
        "{}/.well-known/openid-configuration",
        issuer.as_str().trim_end_matches('/')
    );
    Url::parse(&raw).map_err(|e| OidcError::BadResponse(format!("{raw}: {e}")))
}

/// Discovery 4.3: is `discovered` (the document's `issuer`) the configured issuer?
///
/// Identical strings are; so are two spellings of one URL under RFC 3986's normalisations
/// (6.2.2 case and dot segments, 6.2.3 default port and an empty path being `/`), which can never
/// name another provider: Neon's guide writes `https://TENANT.auth0.com` for a tenant whose
/// issuer is `https://TENANT.auth0.com/`. A path that differs, even by a trailing slash
/// (`.../realms/app` and `.../realms/app/`), is another issuer. ID tokens are then held to the
/// discovered string exactly (OpenID Connect Core 1.0, 3.1.3.7 step 2).
pub fn same_issuer(configured: &str, discovered: &str) -> bool {
    configured == discovered
        || matches!(
            (Url::parse(configured), Url::parse(discovered)),
            (Ok(a), Ok(b)) if a == b
        )
}

/// Fetches and checks the discovery document of `issuer`.
///
/// Errors: `Unreachable` (no answer), `BadResponse` (not a 200 with a readable document),
/// `IssuerMismatch` (the document names another issuer).
pub async fn fetch(http: &Http, issuer: &Issuer) -> Result<Metadata, OidcError> {
    let url = document_url(issuer)?;
    let response = http
        .get(url.clone())
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| OidcError::Unreachable(super::oidc::error_chain(&e)))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| OidcError::Unreachable(super::oidc::error_chain(&e)))?;
    if !status.is_success() {
        return Err(OidcError::BadResponse(format!(
            "the discovery document at {url} answered HTTP {status}"
        )));
    }
    let metadata: Metadata = serde_json::from_slice(&body).map_err(|e| {
        OidcError::BadResponse(format!(
            "the discovery document at {url} could not be read: {e}"
        ))
    })?;
    let discovered = metadata.issuer().as_str();
    if !same_issuer(issuer.as_str(), discovered) {
        return Err(OidcError::IssuerMismatch {
            configured: issuer.as_str().to_owned(),
            discovered: discovered.to_owned(),
        });
    }
    Ok(metadata)
}

/// The provider's signing keys from its `jwks_uri`.
pub async fn fetch_keys(
    http: &Http,
    metadata: &Metadata,
) -> Result<JsonWebKeySet<CoreJsonWebKey>, OidcError> {
    JsonWebKeySet::fetch_async(metadata.jwks_uri(), http)
        .await
        .map_err(|err| match err {
            openidconnect::DiscoveryError::Request(e) => {
                OidcError::Unreachable(super::oidc::error_chain(&e))
            }
            other => OidcError::BadResponse(format!(
                "the provider's keys at {} could not be read: {}",
                metadata.jwks_uri().as_str(),
                super::oidc::error_chain(&other)
            )),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_issuer_under_rfc_3986_normalisation_but_never_another_path() {
        for (configured, discovered) in [
            ("https://tenant.auth0.com/", "https://tenant.auth0.com/"),
            ("https://tenant.auth0.com", "https://tenant.auth0.com/"),
            ("https://Tenant.Auth0.com:443", "https://tenant.auth0.com/"),
            ("https://accounts.google.com", "https://accounts.google.com"),
            (
                "https://kc.example/realms/app",
                "https://kc.example/realms/app",
            ),
        ] {
            assert!(
                same_issuer(configured, discovered),
                "{configured} ~ {discovered}"
            );
        }
        for (configured, discovered) in [
            (
                "https://kc.example/realms/app/",
                "https://kc.example/realms/app",
            ),
            (
                "https://kc.example/realms/app",
                "https://kc.example/realms/app/",
            ),
            (
                "https://kc.example/realms/app",
                "https://kc.example/realms/other",
            ),
            ("https://tenant.auth0.com/", "http://tenant.auth0.com/"),
            (
                "https://tenant.auth0.com/",
                "https://tenant.auth0.com:8443/",
            ),
            ("https://tenant.auth0.com/", "https://other.auth0.com/"),
        ] {
            assert!(
                !same_issuer(configured, discovered),
                "{configured} !~ {discovered}"
            );
        }
    }

    #[test]
    fn the_document_hangs_off_the_issuer_without_its_trailing_slash() {
        for (issuer, url) in [
            (
                "https://tenant.auth0.com/",
                "https://tenant.auth0.com/.well-known/openid-configuration",
            ),
            (
                "https://accounts.google.com",
                "https://accounts.google.com/.well-known/openid-configuration",
            ),
            (
                "https://kc.example/realms/app/",
                "https://kc.example/realms/app/.well-known/openid-configuration",
            ),
        ] {
            let issuer = Issuer::parse("AUTH0_ISSUER_BASE_URL", issuer).unwrap();
            assert_eq!(document_url(&issuer).unwrap().as_str(), url);
        }
    }
}
