//! ID token validation (OpenID Connect Core 1.0, section 3.1.3.7) on the token's own JSON.
//!
//! openidconnect's `IdToken` parses every standard claim with its spec type before anything is
//! verified, so one profile claim in another shape (a SAML connection's `email_verified` of
//! `"true"` or `"jane@acme.example"`, a `name` that is a number) fails the whole sign-in, and the
//! crate has no lenient claims type. So the JWS is checked here with the crate's key types and
//! cryptography (`JsonWebKeySet`, `CoreJsonWebKey::verify_signature`, which also refuses a key
//! whose type does not fit the algorithm), the claims that decide who signed in are held to the
//! spec exactly, and the profile claims are read for what they are ([`Profile`]).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use openidconnect::{
    JsonWebKey, JsonWebKeySet, JwsSigningAlgorithm,
    core::{CoreJsonWebKey, CoreJsonWebKeyUse, CoreJwsSigningAlgorithm},
};
use serde::Deserialize;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

/// Seconds of clock difference tolerated between the provider and this server.
pub const LEEWAY_SECS: i64 = 60;

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a signed JWT this app can read (RFC 7515 compact serialisation with a JSON header and
    /// payload): the provider sent something else.
    #[error("not a readable JWT: {0}")]
    Malformed(String),
    /// Signed with a key the JWK set does not hold: the provider may have rotated its keys.
    #[error("signed with a key the provider does not publish")]
    UnknownKey,
    /// No published key verifies the signature.
    #[error("the signature does not verify")]
    BadSignature,
    /// The header or a claim breaks OpenID Connect Core 3.1.3.7.
    #[error("{0}")]
    Rejected(String),
}

impl TokenError {
    /// The provider may have rotated its keys, so fetching them again could help (OpenID
    /// Connect Core 10.1.1): an unknown `kid`, or a failed signature on a token without one.
    pub fn may_be_a_new_key(&self, token: &SignedToken) -> bool {
        match self {
            Self::UnknownKey => true,
            Self::BadSignature => token.header.kid.is_none(),
            _ => false,
        }
    }
}

/// Which kind of JWT a token must be, by its `typ` header (RFC 8725 section 3.11, explicit
/// typing): a token made for one purpose is never accepted for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtType {
    /// An ID token: `JWT` or no `typ` (OpenID Connect Core 1.0 does not type ID tokens).
    IdToken,
    /// A logout token: `logout+jwt` (OpenID Connect Back-Channel Logout 1.0, section 2.4,
    /// recommended; panva's oidc-provider sends it), `JWT` (what Auth0 sends) or no `typ`.
    /// An ID token cannot pass as one anyway: it lacks the `events` claim.
    LogoutToken,
}

impl JwtType {
    /// Whether the header's `typ` fits; the `application/` prefix may be left out (RFC 7515,
    /// section 4.1.9) and case does not matter.
    fn accepts(self, typ: Option<&str>) -> bool {
        let Some(typ) = typ else {
            return true;
        };
        let typ = typ.to_ascii_lowercase();
        let typ = typ.strip_prefix("application/").unwrap_or(&typ);
        match self {
            Self::IdToken => typ == "jwt",
            Self::LogoutToken => typ == "jwt" || typ == "logout+jwt",
        }
    }
}

#[derive(Debug, Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
    cty: Option<String>,
    crit: Option<Value>,
}

/// A compact JWS split into its parts (RFC 7515, section 7.1); nothing in it is trusted yet.
#[derive(Debug)]
pub struct SignedToken {
    signing_input: String,
    header: JoseHeader,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl SignedToken {
    /// Splits and decodes `raw`. An encrypted token (JWE, five parts) is not supported.
    pub fn parse(raw: &str) -> Result<Self, TokenError> {
        let parts: Vec<&str> = raw.split('.').collect();
        let [header, payload, signature] = parts[..] else {
            return Err(TokenError::Malformed(format!(
                "{} parts instead of three",
                parts.len()
            )));
        };
        let decode = |part: &str, what: &str| {
            URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|_| TokenError::Malformed(format!("the {what} is not base64url")))
        };
        let header_json: JoseHeader = serde_json::from_slice(&decode(header, "header")?)
            .map_err(|e| TokenError::Malformed(format!("the header: {e}")))?;
        Ok(Self {
            signing_input: format!("{header}.{payload}"),
            header: header_json,
            payload: decode(payload, "payload")?,
            signature: decode(signature, "signature")?,
        })
    }

    /// Checks the JOSE header (a `typ` fit for `kind`) and the signature against `keys`, for
    /// one of the `allowed` algorithms; HMAC algorithms use the client secret as their key
    /// (Core 3.1.3.7 step 8). Returns the payload's claims.
    pub fn verify(
        &self,
        kind: JwtType,
        keys: &JsonWebKeySet<CoreJsonWebKey>,
        allowed: &[CoreJwsSigningAlgorithm],
        client_secret: &str,
    ) -> Result<Map<String, Value>, TokenError> {
        let header = &self.header;
        // RFC 7519 5.1 and RFC 7515 4.1.9-4.1.11: a JWT of the expected kind, no nested
        // content, no extensions we would have to understand.
        if !kind.accepts(header.typ.as_deref()) {
            return Err(TokenError::Rejected(format!(
                "unexpected token type {:?}",
                header.typ
            )));
        }
        if header.cty.is_some() || header.crit.is_some() {
            return Err(TokenError::Rejected(
                "nested tokens and critical header parameters are not supported".into(),
            ));
        }
        let alg: CoreJwsSigningAlgorithm =
            serde_json::from_value(Value::String(header.alg.clone())).map_err(|_| {
                TokenError::Rejected(format!("unsupported algorithm {:?}", header.alg))
            })?;
        if alg == CoreJwsSigningAlgorithm::None || !allowed.contains(&alg) {
            return Err(TokenError::Rejected(format!(
                "the algorithm {:?} is not one the provider announced",
                header.alg
            )));
        }
        let message = self.signing_input.as_bytes();
        let verified = if alg.uses_shared_secret() {
            CoreJsonWebKey::new_symmetric(client_secret.as_bytes().to_vec())
                .verify_signature(&alg, message, &self.signature)
                .is_ok()
        } else {
            let candidates: Vec<&CoreJsonWebKey> = keys
                .keys()
                .iter()
                .filter(|key| {
                    header
                        .kid
                        .as_deref()
                        .is_none_or(|kid| key.key_id().is_some_and(|id| id.as_str() == kid))
                })
                .filter(|key| {
                    key.key_use()
                        .is_none_or(|u| *u == CoreJsonWebKeyUse::Signature)
                })
                .collect();
            if candidates.is_empty() {
                return Err(TokenError::UnknownKey);
            }
            candidates
                .iter()
                .any(|key| key.verify_signature(&alg, message, &self.signature).is_ok())
        };
        if !verified {
            return Err(TokenError::BadSignature);
        }
        match serde_json::from_slice(&self.payload) {
            Ok(Value::Object(claims)) => Ok(claims),
            _ => Err(TokenError::Malformed(
                "the payload is not a JSON object".into(),
            )),
        }
    }
}

/// What the ID token must say to be this sign-in's.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The discovered issuer, compared exactly.
    pub issuer: &'a str,
    pub client_id: &'a str,
    /// The `nonce` sent with this sign-in's authorization request.
    pub nonce: &'a str,
    /// Seconds since the Unix epoch.
    pub now: i64,
}

/// Core 3.1.3.7 steps 2-5 and 9-11: issuer, audience, authorized party, expiry, issue time and
/// nonce; `sub` must be a non-empty string (Core 2).
pub fn check_claims(
    claims: &Map<String, Value>,
    expected: &Expected<'_>,
) -> Result<(), TokenError> {
    let reject = |why: String| Err(TokenError::Rejected(why));
    check_issuer_and_audience(claims, expected.issuer, expected.client_id)?;
    if let Some(azp) = claims.get("azp")
        && azp.as_str() != Some(expected.client_id)
    {
        return reject(format!("azp {azp} is not this application"));
    }
    let number = |name: &str| numeric_claim(claims, name);
    match number("exp") {
        Some(exp) if exp + LEEWAY_SECS > expected.now => {}
        Some(_) => return reject("the token has expired".into()),
        None => return reject("exp is missing".into()),
    }
    match number("iat") {
        Some(iat) if iat <= expected.now + LEEWAY_SECS => {}
        Some(_) => return reject("the token was issued in the future".into()),
        None => return reject("iat is missing".into()),
    }
    if number("nbf").is_some_and(|nbf| nbf > expected.now + LEEWAY_SECS) {
        return reject("the token is not valid yet".into());
    }
    let nonce = claims
        .get("nonce")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !bool::from(nonce.as_bytes().ct_eq(expected.nonce.as_bytes())) {
        return reject("the nonce is not this sign-in's".into());
    }
    if claims
        .get("sub")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return reject("sub is missing".into());
    }
    Ok(())
}

/// Core 3.1.3.7 steps 2 and 3 (which logout tokens follow too): `iss` is the provider's
/// issuer exactly, and this client is the one audience.
pub fn check_issuer_and_audience(
    claims: &Map<String, Value>,
    issuer: &str,
    client_id: &str,
) -> Result<(), TokenError> {
    if claims.get("iss").and_then(Value::as_str) != Some(issuer) {
        return Err(TokenError::Rejected(format!(
            "iss {} is not the provider's issuer {issuer}",
            claims.get("iss").unwrap_or(&Value::Null),
        )));
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    // The client must be an audience, and no audience may be one it does not trust.
    if audiences != [client_id] {
        return Err(TokenError::Rejected(format!(
            "aud {audiences:?} is not this application alone"
        )));
    }
    Ok(())
}

/// A NumericDate claim (RFC 7519 section 2) as whole seconds, if it is a number.
pub fn numeric_claim(claims: &Map<String, Value>, name: &str) -> Option<i64> {
    claims.get(name).and_then(Value::as_f64).map(|n| n as i64)
}

/// The person's profile as the claims give it. Each field is read for what it is: a claim in
/// another shape is unknown (`None`), never a failed sign-in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub email: Option<String>,
    /// `true`/`false`, or the strings `"true"`/`"false"` in any case (SAML connections send
    /// strings); anything else is unknown.
    pub email_verified: Option<bool>,
    pub name: Option<String>,
    pub nickname: Option<String>,
    pub picture: Option<String>,
}

impl Profile {
    /// From ID token or UserInfo claims (Core 5.1).
    pub fn from_claims(claims: &Map<String, Value>) -> Self {
        let text = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let email_verified = match claims.get("email_verified") {
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Some(true),
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Some(false),
            _ => None,
        };
        Self {
            email: text("email"),
            email_verified,
            name: text("name"),
            nickname: text("nickname"),
            picture: text("picture"),
        }
    }

    /// Fills what this profile lacks from `other` (the UserInfo response).
    pub fn fill_from(&mut self, other: Profile) {
        if self.email.is_none() {
            self.email = other.email;
            self.email_verified = other.email_verified;
        }
        self.email_verified = self.email_verified.or(other.email_verified);
        self.name = self.name.take().or(other.name);
        self.nickname = self.nickname.take().or(other.nickname);
        self.picture = self.picture.take().or(other.picture);
    }
}

/// The roles in a namespaced claim: an array of strings (non-strings skipped), or one string.
pub fn roles(claims: &Map<String, Value>, claim: &str) -> Vec<String> {
    match claims.get(claim) {
        Some(Value::Array(roles)) => roles
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(role)) => vec![role.clone()],
        _ => Vec::new(),
    }
}

/// A string claim, if it is one.
pub fn string_claim(claims: &Map<String, Value>, name: &str) -> Option<String> {
    claims.get(name).and_then(Value::as_str).map(str::to_owned)
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;

    pub(crate) fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("an object"),
        }
    }

    /// Each `(claim, value)` change of `good` (`null`: the claim left out) must make `check`
    /// reject the claims.
    pub(crate) fn assert_each_change_rejected<T: std::fmt::Debug>(
        good: &Value,
        changes: &[(&str, Value)],
        check: impl Fn(&Map<String, Value>) -> Result<T, TokenError>,
    ) {
        for (name, value) in changes {
            let mut token = good.clone();
            if value.is_null() {
                token.as_object_mut().unwrap().remove(*name);
            } else {
                token[*name] = value.clone();
            }
            let checked = check(&claims(token));
            assert!(
                matches!(checked, Err(TokenError::Rejected(_))),
                "{name}={value}: {checked:?}"
            );
        }
    }

    fn good() -> Value {
        json!({
            "iss": "https://tenant.auth0.com/", "aud": "app", "sub": "auth0|1",
            "exp": 2_000, "iat": 1_000, "nonce": "n-1",
        })
    }

    const EXPECTED: Expected<'static> = Expected {
        issuer: "https://tenant.auth0.com/",
        client_id: "app",
        nonce: "n-1",
        now: 1_500,
    };

    #[test]
    fn the_claims_that_decide_who_signed_in_are_held_to_the_spec() {
        assert_eq!(check_claims(&claims(good()), &EXPECTED), Ok(()));
        let mut as_array = good();
        as_array["aud"] = json!(["app"]);
        as_array["azp"] = json!("app");
        assert_eq!(check_claims(&claims(as_array), &EXPECTED), Ok(()));
        let mut late_but_within_leeway = good();
        late_but_within_leeway["exp"] = json!(1_450);
        assert_eq!(
            check_claims(&claims(late_but_within_leeway), &EXPECTED),
            Ok(())
        );

        let changes = [
            ("iss", json!("https://tenant.auth0.com")),
            ("iss", Value::Null),
            ("aud", json!("other")),
            ("aud", json!(["app", "other"])),
            ("azp", json!("other")),
            ("exp", json!(1_000)),
            ("exp", json!("2000")),
            ("iat", json!(9_000)),
            ("iat", Value::Null),
            ("nbf", json!(9_000)),
            ("nonce", json!("n-2")),
            ("nonce", Value::Null),
            ("sub", json!("")),
            ("sub", json!(7)),
        ];
        assert_each_change_rejected(&good(), &changes, |claims| check_claims(claims, &EXPECTED));
    }

    #[test]
    fn profile_claims_are_read_for_what_they_are() {
        let profile = Profile::from_claims(&claims(json!({
            "email": "jane@acme.example", "email_verified": "jane@acme.example",
            "name": 42, "nickname": " jane ", "picture": {"url": "x"},
        })));
        assert_eq!(
            profile,
            Profile {
                email: Some("jane@acme.example".into()),
                email_verified: None,
                name: None,
                nickname: Some("jane".into()),
                picture: None,
            }
        );
        for (raw, expected) in [
            (json!(true), Some(true)),
            (json!("true"), Some(true)),
            (json!("False"), Some(false)),
            (json!(1), None),
            (json!("yes"), None),
        ] {
            let profile = Profile::from_claims(&claims(json!({ "email_verified": raw })));
            assert_eq!(profile.email_verified, expected, "{raw}");
        }
        assert_eq!(
            roles(&claims(json!({"r": ["admin", 3, "x"]})), "r"),
            ["admin", "x"]
        );
        assert_eq!(roles(&claims(json!({"r": "admin"})), "r"), ["admin"]);
        assert!(roles(&claims(json!({"r": {"admin": true}})), "r").is_empty());
    }

    #[test]
    fn userinfo_fills_only_what_the_token_lacks() {
        let mut from_token = Profile {
            name: Some("Jane".into()),
            ..Profile::default()
        };
        from_token.fill_from(Profile {
            email: Some("jane@example.com".into()),
            email_verified: Some(true),
            name: Some("Someone else".into()),
            ..Profile::default()
        });
        assert_eq!(from_token.name.as_deref(), Some("Jane"));
        assert_eq!(from_token.email.as_deref(), Some("jane@example.com"));
        assert_eq!(from_token.email_verified, Some(true));
    }

    #[test]
    fn tokens_that_are_not_signed_jwts_are_malformed() {
        for raw in ["not-a-jwt", "a.b", "a.b.c.d.e", "!!.e30.sig", "e30.!!.c2ln"] {
            assert!(
                matches!(SignedToken::parse(raw), Err(TokenError::Malformed(_))),
                "{raw}"
            );
        }
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(r#"{"sub":"x"}"#)
        );
        let token = SignedToken::parse(&unsigned).unwrap();
        let keys = JsonWebKeySet::new(Vec::new());
        assert!(matches!(
            token.verify(
                JwtType::IdToken,
                &keys,
                &[CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256],
                "s"
            ),
            Err(TokenError::Rejected(_))
        ));
    }

    #[test]
    fn hmac_tokens_verify_with_the_client_secret_only_when_announced() {
        use hmac::{Hmac, Mac};
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"auth0|1"}"#);
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"client-secret").unwrap();
        mac.update(format!("{header}.{payload}").as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        let token = SignedToken::parse(&format!("{header}.{payload}.{signature}")).unwrap();
        let keys = JsonWebKeySet::new(Vec::new());
        let hs256 = [CoreJwsSigningAlgorithm::HmacSha256];
        assert!(
            token
                .verify(JwtType::IdToken, &keys, &hs256, "client-secret")
                .is_ok()
        );
        assert_eq!(
            token.verify(JwtType::IdToken, &keys, &hs256, "another-secret"),
            Err(TokenError::BadSignature)
        );
        assert!(matches!(
            token.verify(
                JwtType::IdToken,
                &keys,
                &[CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256],
                "client-secret"
            ),
            Err(TokenError::Rejected(_))
        ));
    }
}
