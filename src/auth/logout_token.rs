//! Logout token claims (OpenID Connect Back-Channel Logout 1.0, sections 2.4 and 2.6).
//!
//! The signature and `typ` are checked like an ID token's, with the provider's keys
//! (`oidc::OidcProvider::verify_logout_token`); here the claims are held to the spec: the
//! issuer and this client as the one audience, an issue time within [`MAX_AGE_SECS`] (and
//! `exp`, when present, not passed), the back-channel logout event, no `nonce`, a `jti`, and a
//! `sid` or `sub`.

use serde_json::{Map, Value};

use super::id_token::{self, LEEWAY_SECS, TokenError};

/// The `events` member that makes a JWT a logout token.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// How old (by `iat`) a logout token may be. The spec asks providers to keep logout tokens
/// short-lived, "preferably at most two minutes" (section 4); Auth0 documents validating
/// them with a two-minute maximum age, and panva's oidc-provider makes them expire after 120 s.
/// A token is remembered for as long as it could be accepted, so a replay is always refused.
pub const MAX_AGE_SECS: i64 = 120;
/// The longest `jti`, `sid` or `sub` taken (each is stored or looked up as Postgres text).
const MAX_ID_BYTES: usize = 1024;

/// What a logout token must say to be for this application.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The discovered issuer, compared exactly.
    pub issuer: &'a str,
    pub client_id: &'a str,
    /// Seconds since the Unix epoch.
    pub now: i64,
}

/// A valid logout token: what to end, and how long to remember that it was used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutToken {
    /// The issuer that sent it (`iss`): a `jti` is unique per issuer.
    pub issuer: String,
    pub jti: String,
    /// The provider session to end (the ID token's `sid`).
    pub sid: Option<String>,
    /// The person whose sessions to end (every one of them when there is no `sid`).
    pub sub: Option<String>,
    /// Until when (seconds since the Unix epoch) a replay of this token could pass the time
    /// checks, so its `jti` must be remembered.
    pub replayable_until: i64,
}

/// Section 2.6 steps 3-6, and what step 7 needs (a `jti`). Claims the spec does not name are
/// ignored, as section 2.4 requires.
pub fn check_claims(
    claims: &Map<String, Value>,
    expected: &Expected<'_>,
) -> Result<LogoutToken, TokenError> {
    let reject = |why: &str| Err(TokenError::Rejected(why.to_owned()));
    id_token::check_issuer_and_audience(claims, expected.issuer, expected.client_id)?;
    let Some(iat) = id_token::numeric_claim(claims, "iat") else {
        return reject("iat is missing or not a number");
    };
    if iat > expected.now + LEEWAY_SECS {
        return reject("the token was issued in the future");
    }
    if iat + MAX_AGE_SECS + LEEWAY_SECS < expected.now {
        return reject("the token is too old (issued more than two minutes ago)");
    }
    let exp = match claims.get("exp") {
        None => None,
        Some(value) => match value.as_f64() {
            Some(exp) => Some(exp as i64),
            None => return reject("exp is not a number"),
        },
    };
    // Saturating: `exp` may be any number a signed token carries (`1e300` becomes i64::MAX).
    if exp.is_some_and(|exp| exp.saturating_add(LEEWAY_SECS) <= expected.now) {
        return reject("the token has expired");
    }
    match claims.get("events") {
        Some(Value::Object(events)) => match events.get(BACKCHANNEL_LOGOUT_EVENT) {
            Some(Value::Object(_)) => {}
            Some(_) => return reject("the back-channel logout event is not a JSON object"),
            None => return reject("events does not hold the back-channel logout event"),
        },
        Some(_) => return reject("events is not a JSON object"),
        None => return reject("events is missing: this is not a logout token"),
    }
    if claims.contains_key("nonce") {
        return reject("a logout token must not carry a nonce");
    }
    let jti = match identifier(claims, "jti")? {
        Some(jti) => jti,
        None => return reject("jti is missing"),
    };
    let sid = identifier(claims, "sid")?;
    let sub = identifier(claims, "sub")?;
    if sid.is_none() && sub.is_none() {
        return reject("the token names neither a sid nor a sub");
    }
    let latest_accepted = iat + MAX_AGE_SECS + LEEWAY_SECS;
    Ok(LogoutToken {
        issuer: expected.issuer.to_owned(),
        jti,
        sid,
        sub,
        replayable_until: exp.map_or(latest_accepted, |exp| {
            latest_accepted.min(exp.saturating_add(LEEWAY_SECS))
        }),
    })
}

/// A string claim naming something (`jti`, `sid`, `sub`): absent is `None`; present, it must be
/// a non-empty string Postgres can hold, of sane length.
fn identifier(claims: &Map<String, Value>, name: &str) -> Result<Option<String>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(value))
            if !value.is_empty() && value.len() <= MAX_ID_BYTES && !value.contains('\0') =>
        {
            Ok(Some(value.clone()))
        }
        Some(_) => Err(TokenError::Rejected(format!(
            "{name} must be a non-empty string of at most {MAX_ID_BYTES} bytes"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::auth::id_token::tests::{assert_each_change_rejected, claims};

    fn good() -> Value {
        json!({
            "iss": "https://tenant.auth0.com/", "aud": "app", "iat": 1_000, "exp": 1_120,
            "jti": "j-1", "sid": "s-1", "sub": "auth0|1",
            "events": { BACKCHANNEL_LOGOUT_EVENT: {} },
            "trace_id": "ignored",
        })
    }

    const EXPECTED: Expected<'static> = Expected {
        issuer: "https://tenant.auth0.com/",
        client_id: "app",
        now: 1_010,
    };

    #[test]
    fn a_logout_token_names_what_to_end_and_how_long_to_remember_it() {
        assert_eq!(
            check_claims(&claims(good()), &EXPECTED),
            Ok(LogoutToken {
                issuer: "https://tenant.auth0.com/".into(),
                jti: "j-1".into(),
                sid: Some("s-1".into()),
                sub: Some("auth0|1".into()),
                replayable_until: 1_180,
            })
        );
        let mut sub_only = good();
        sub_only.as_object_mut().unwrap().remove("sid");
        sub_only.as_object_mut().unwrap().remove("exp");
        let token = check_claims(&claims(sub_only), &EXPECTED).unwrap();
        assert_eq!((token.sid, token.sub.as_deref()), (None, Some("auth0|1")));
        assert_eq!(token.replayable_until, 1_000 + MAX_AGE_SECS + LEEWAY_SECS);
        let mut typed_aud = good();
        typed_aud["aud"] = json!(["app"]);
        assert!(check_claims(&claims(typed_aud), &EXPECTED).is_ok());
    }

    #[test]
    fn numbers_at_the_ends_of_the_range_are_read_without_overflow() {
        let mut far = good();
        far["exp"] = json!(1e300);
        let token = check_claims(&claims(far), &EXPECTED).unwrap();
        assert_eq!(token.replayable_until, 1_000 + MAX_AGE_SECS + LEEWAY_SECS);
        for iat in [json!(-1e300), json!(1e300)] {
            let mut odd = good();
            odd["iat"] = iat;
            assert!(check_claims(&claims(odd), &EXPECTED).is_err());
        }
    }

    #[test]
    fn every_rule_of_section_2_6_is_held() {
        let changes = [
            ("iss", json!("https://tenant.auth0.com")),
            ("iss", Value::Null),
            ("aud", json!("other")),
            ("aud", json!(["app", "other"])),
            ("aud", Value::Null),
            ("iat", Value::Null),
            ("iat", json!("1000")),
            ("iat", json!(2_000)),
            ("iat", json!(800)),
            ("exp", json!(900)),
            ("exp", json!("1120")),
            ("events", Value::Null),
            ("events", json!([BACKCHANNEL_LOGOUT_EVENT])),
            (
                "events",
                json!({"http://schemas.openid.net/event/other": {}}),
            ),
            ("events", json!({ BACKCHANNEL_LOGOUT_EVENT: true })),
            ("nonce", json!("n-1")),
            ("jti", Value::Null),
            ("jti", json!("")),
            ("jti", json!(7)),
            ("jti", json!("x".repeat(MAX_ID_BYTES + 1))),
            ("sid", json!("a\u{0}b")),
            ("sub", json!({"id": 1})),
        ];
        assert_each_change_rejected(&good(), &changes, |claims| check_claims(claims, &EXPECTED));
        let mut neither = good();
        neither.as_object_mut().unwrap().remove("sid");
        neither.as_object_mut().unwrap().remove("sub");
        assert!(check_claims(&claims(neither), &EXPECTED).is_err());
    }
}
