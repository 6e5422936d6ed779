//! What `GET /auth/login` accepts, as @auth0/nextjs-auth0 v4's login route does: where to go
//! afterwards (`returnTo`, or quotebook's own `next`) and the Universal Login parameters a person
//! or a link may choose (`prompt`, `screen_hint`, `login_hint`, `connection`, `organization`,
//! `invitation`). Only these reach the provider; everything else in the query (`redirect_uri`,
//! `client_id`, `response_type`, `scope`, `audience`, `state`, `nonce`, ...) is ignored, because
//! the app sets those itself. https://auth0.com/docs/api/authentication/login/authorize-application
//! and https://auth0.com/docs/authenticate/login/auth0-universal-login/new-experience#signup

use std::collections::HashMap;

/// The longest value accepted for a passed-on parameter.
const MAX_VALUE_CHARS: usize = 256;

/// A `prompt` value (OpenID Connect Core 1.0, 3.1.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    None,
    Login,
    Consent,
    SelectAccount,
}

/// A validated `/auth/login` request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginRequest {
    /// A local path (see [`safe_next`]).
    pub next: String,
    pub prompt: Vec<Prompt>,
    /// `signup` or `login`: which Universal Login screen opens.
    pub screen_hint: Option<String>,
    pub login_hint: Option<String>,
    /// An Auth0 connection name, to skip the choice of identity provider.
    pub connection: Option<String>,
    /// An Auth0 organization ID (`org_...`) or name; the ID token must be for it.
    pub organization: Option<String>,
    /// An Auth0 organization invitation ticket ID.
    pub invitation: Option<String>,
}

/// A parameter with a value the provider would refuse; the message says which and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LoginRequestError(pub String);

impl LoginRequest {
    /// Reads the raw query string (`application/x-www-form-urlencoded`; a repeated parameter
    /// keeps its first value).
    pub fn from_query(query: &str) -> Result<Self, LoginRequestError> {
        let mut params: HashMap<String, String> = HashMap::new();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            params
                .entry(key.into_owned())
                .or_insert_with(|| value.into_owned());
        }
        let get = |name: &str| params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let value = |name: &'static str| -> Result<Option<String>, LoginRequestError> {
            match get(name) {
                None => Ok(None),
                Some(v) if v.chars().count() > MAX_VALUE_CHARS => Err(LoginRequestError(format!(
                    "The {name} parameter is too long (at most {MAX_VALUE_CHARS} characters)."
                ))),
                Some(v) if v.chars().any(char::is_control) => Err(LoginRequestError(format!(
                    "The {name} parameter contains control characters."
                ))),
                Some(v) => Ok(Some(v.to_owned())),
            }
        };
        let screen_hint = value("screen_hint")?;
        if let Some(hint) = &screen_hint
            && hint != "signup"
            && hint != "login"
        {
            return Err(LoginRequestError(format!(
                "The screen_hint parameter must be signup or login, not {hint:?}."
            )));
        }
        Ok(Self {
            next: safe_next(get("next").or(get("returnTo"))),
            prompt: parse_prompt(value("prompt")?.as_deref())?,
            screen_hint,
            login_hint: value("login_hint")?,
            connection: value("connection")?,
            organization: value("organization")?,
            invitation: value("invitation")?,
        })
    }

    /// Auth0's own parameters to pass on as they are.
    pub fn auth0_params(&self) -> Vec<(&'static str, &str)> {
        [
            ("screen_hint", &self.screen_hint),
            ("connection", &self.connection),
            ("organization", &self.organization),
            ("invitation", &self.invitation),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_deref().map(|v| (name, v)))
        .collect()
    }

    /// Whether the request asks the provider for something: then a signed-in person is sent to
    /// sign in again (another account, an organization, a sign-up) instead of straight on.
    pub fn asks_the_provider(&self) -> bool {
        !self.prompt.is_empty() || self.login_hint.is_some() || !self.auth0_params().is_empty()
    }
}

fn parse_prompt(raw: Option<&str>) -> Result<Vec<Prompt>, LoginRequestError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let mut prompts = Vec::new();
    for word in raw.split_whitespace() {
        let prompt = match word {
            "none" => Prompt::None,
            "login" => Prompt::Login,
            "consent" => Prompt::Consent,
            "select_account" => Prompt::SelectAccount,
            other => {
                return Err(LoginRequestError(format!(
                    "The prompt parameter takes none, login, consent or select_account, not {other:?}."
                )));
            }
        };
        if !prompts.contains(&prompt) {
            prompts.push(prompt);
        }
    }
    if prompts.contains(&Prompt::None) && prompts.len() > 1 {
        return Err(LoginRequestError(
            "The prompt parameter cannot combine none with other values.".into(),
        ));
    }
    Ok(prompts)
}

/// A local path to return to after login; anything else (other hosts, `//host`, backslashes,
/// control characters that browsers strip) falls back to `/`. No open redirect.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && !path.chars().any(|c| c.is_control() || c.is_whitespace()) =>
        {
            path.to_owned()
        }
        _ => "/".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_must_be_a_local_path() {
        assert_eq!(safe_next(Some("/admin?x=1")), "/admin?x=1");
        for bad in [
            "//evil.example",
            "https://evil.example/",
            "/\\evil.example",
            "\\\\evil.example",
            "/\t/evil.example",
            "evil",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn return_to_is_next_and_only_allowlisted_parameters_are_kept() {
        let request = LoginRequest::from_query(
            "returnTo=%2Fquote%2Fedit&screen_hint=signup&prompt=login+consent&login_hint=a%40b.c\
             &connection=github&organization=org_1&invitation=inv_1&redirect_uri=https%3A%2F%2Fevil\
             &scope=admin&audience=x&client_id=y",
        )
        .unwrap();
        assert_eq!(request.next, "/quote/edit");
        assert_eq!(request.prompt, [Prompt::Login, Prompt::Consent]);
        assert_eq!(request.login_hint.as_deref(), Some("a@b.c"));
        assert_eq!(
            request.auth0_params(),
            [
                ("screen_hint", "signup"),
                ("connection", "github"),
                ("organization", "org_1"),
                ("invitation", "inv_1"),
            ]
        );
        assert!(request.asks_the_provider());
        assert_eq!(
            LoginRequest::from_query("next=%2Fa&returnTo=%2Fb")
                .unwrap()
                .next,
            "/a"
        );
        let plain = LoginRequest::from_query("next=%2F&foo=bar").unwrap();
        assert!(!plain.asks_the_provider());
    }

    #[test]
    fn values_the_provider_would_refuse_are_explained() {
        let long = format!("login_hint={}", "a".repeat(MAX_VALUE_CHARS + 1));
        for (query, says) in [
            ("prompt=bogus", "prompt"),
            ("prompt=none+login", "none"),
            ("screen_hint=register", "screen_hint"),
            (long.as_str(), "login_hint"),
            ("connection=a%07b", "connection"),
        ] {
            let err = LoginRequest::from_query(query).unwrap_err();
            assert!(err.0.contains(says), "{query}: {err}");
        }
    }
}
