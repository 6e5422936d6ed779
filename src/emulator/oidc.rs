//! The OpenID Connect side, on Auth0's paths: discovery, JWKS, `/authorize` with its login page,
//! `/oauth/token`, `/userinfo` and both logout endpoints.
//! https://auth0.com/docs/api/authentication

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use chrono::Utc;
use poem::{
    Body, Request, Response, handler,
    http::{StatusCode, header},
    web::{Data, Json},
};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use url::Url;

use super::{
    AccessGrant, CodeGrant, PendingLogin, Shared, SsoSession,
    backchannel::{self, Initiator},
    faults::IdTokenFault,
    form_map,
    login_page::{self, LoginView},
    non_empty, oauth_error, random_token,
    users::{NewUser, StoreError, User, timestamp},
};

/// How long a login page stays usable.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// How long a single sign-on session lasts without use: Auth0's default inactivity timeout.
/// https://auth0.com/docs/manage-users/sessions/configure-session-lifetime-settings
pub const SSO_TTL: Duration = Duration::from_secs(3 * 24 * 3600);
/// The single sign-on cookie, named as Auth0 names its session cookie.
const SSO_COOKIE: &str = "auth0";
/// Authorization codes expire quickly, as at Auth0.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// Auth0's default access-token lifetime (and the Management API token's).
const ACCESS_TOKEN_SECS: u64 = 86_400;
/// Auth0's default ID-token lifetime.
const ID_TOKEN_SECS: i64 = 36_000;
/// Scopes the Management API token carries; the registered client is granted all of them.
pub const MANAGEMENT_SCOPES: [&str; 4] =
    ["read:users", "update:users", "delete:users", "create:users"];
const LOGIN_CHOICES: usize = 12;
const BODY_LIMIT: usize = 64 * 1024;

/// https://auth0.com/docs/get-started/applications/configure-applications-with-oidc-discovery
#[handler]
pub async fn discovery(shared: Data<&Arc<Shared>>) -> Json<Value> {
    let issuer = shared.issuer.as_str();
    Json(json!({
        "issuer": shared.issuer_identifier,
        "authorization_endpoint": format!("{issuer}authorize"),
        "token_endpoint": format!("{issuer}oauth/token"),
        "userinfo_endpoint": format!("{issuer}userinfo"),
        "jwks_uri": format!("{issuer}.well-known/jwks.json"),
        "end_session_endpoint": format!("{issuer}oidc/logout"),
        // https://auth0.com/docs/authenticate/login/logout/back-channel-logout/configure-back-channel-logout
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": [
            "aud", "email", "email_verified", "exp", "family_name", "given_name", "iat", "iss",
            "name", "nickname", "nonce", "picture", "sub", "updated_at", shared.roles_claim,
        ],
        "request_uri_parameter_supported": false,
    }))
}

#[handler]
pub async fn jwks(shared: Data<&Arc<Shared>>) -> Json<Value> {
    shared
        .jwks_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Json(shared.keys().jwks())
}

fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    login_page::respond(status, login_page::error(title, message))
}

fn redirect(to: &Url) -> Response {
    Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, to.as_str())
        .header(header::CACHE_CONTROL, "no-store")
        .finish()
}

/// Sends an authorization error back to the application (RFC 6749 4.1.2.1).
fn redirect_error(
    redirect_uri: &Url,
    error: &str,
    description: &str,
    state: Option<&str>,
) -> Response {
    let mut to = redirect_uri.clone();
    {
        let mut query = to.query_pairs_mut();
        query.append_pair("error", error);
        query.append_pair("error_description", description);
        if let Some(state) = state {
            query.append_pair("state", state);
        }
    }
    redirect(&to)
}

/// `GET /authorize`: checks the request and shows the login page.
#[handler]
pub async fn authorize(req: &Request, shared: Data<&Arc<Shared>>) -> Response {
    let params = form_map(req.uri().query().unwrap_or(""));
    let param = |name: &str| non_empty(&params, name);

    // Until client and redirect URI are known good, nothing may be sent to the redirect URI.
    {
        let client = shared.client();
        match param("client_id") {
            Some(id) if id == client.id => {}
            Some(_) => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    "Unknown client",
                    "The client_id in this request is not registered with the emulator.",
                );
            }
            None => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    "Missing client_id",
                    "The request has no client_id parameter.",
                );
            }
        }
        match param("redirect_uri") {
            Some(uri) if client.callback_urls.iter().any(|allowed| allowed == uri) => {}
            Some(uri) => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    "Callback URL mismatch",
                    &format!(
                        "{uri} is not in the list of allowed callback URLs ({}). Register it with --callback-url.",
                        client.callback_urls.join(", ")
                    ),
                );
            }
            None => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    "Missing redirect_uri",
                    "The request has no redirect_uri parameter.",
                );
            }
        }
    }
    let redirect_uri_raw = param("redirect_uri").unwrap_or_default().to_owned();
    let Ok(redirect_uri) = Url::parse(&redirect_uri_raw) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Invalid redirect_uri",
            "The registered redirect_uri is not an absolute URL.",
        );
    };
    let state = param("state");
    let fail =
        |error: &str, description: &str| redirect_error(&redirect_uri, error, description, state);

    match param("response_type") {
        Some("code") => {}
        Some(other) => {
            return fail(
                "unsupported_response_type",
                &format!("Unsupported response type: {other}"),
            );
        }
        None => {
            return fail(
                "invalid_request",
                "Missing required parameter: response_type",
            );
        }
    }
    if let Some(mode) = param("response_mode").filter(|m| *m != "query") {
        return fail(
            "invalid_request",
            &format!("Unsupported response_mode: {mode}"),
        );
    }
    let scope = param("scope").unwrap_or_default();
    if !scope.split(' ').any(|s| s == "openid") {
        return fail("invalid_scope", "The scope must include openid");
    }
    let Some(code_challenge) = param("code_challenge") else {
        return fail(
            "invalid_request",
            "PKCE is required: send code_challenge and code_challenge_method=S256",
        );
    };
    if param("code_challenge_method") != Some("S256") {
        return fail("invalid_request", "code_challenge_method must be S256");
    }
    let challenge_ok = code_challenge.len() == 43
        && code_challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !challenge_ok {
        return fail(
            "invalid_request",
            "code_challenge must be the base64url SHA-256 of the verifier (43 characters)",
        );
    }
    // Auth0 refuses an audience no API in the tenant has, before any login page.
    if let Some(audience) = param("audience")
        && audience != shared.management_audience()
        && !shared.apis.iter().any(|api| api == audience)
    {
        return fail("access_denied", &format!("Service not found: {audience}"));
    }

    let prompts: Vec<&str> = param("prompt").unwrap_or_default().split(' ').collect();
    let signup = param("screen_hint") == Some("signup");
    let pending = PendingLogin {
        redirect_uri: redirect_uri_raw,
        state: state.map(str::to_owned),
        nonce: param("nonce").map(str::to_owned),
        scope: scope.to_owned(),
        code_challenge: code_challenge.to_owned(),
        login_hint: param("login_hint").map(str::to_owned),
        signup,
        organization: param("organization").map(str::to_owned),
        created: Instant::now(),
    };

    // A live single sign-on session skips the login page unless the app asks for it.
    let sso = sso_session(req, &shared)
        .and_then(|(_, sso)| shared.users.get(&sso.user_id).map(|user| (user, sso.sid)));
    let wants_page = prompts.contains(&"login") || signup;
    match sso {
        Some((user, sid)) if !wants_page => {
            return complete_login(&shared, &pending, user, Sso::Existing(sid));
        }
        _ if prompts.contains(&"none") => return fail("login_required", "Login required"),
        _ => {}
    }

    let request_id = random_token(18);
    let email = pending.login_hint.clone().unwrap_or_default();
    shared.grants().pending.insert(request_id.clone(), pending);
    let users = shared.users.login_choices(LOGIN_CHOICES);
    login_page::respond(
        StatusCode::OK,
        login_page::login(&LoginView {
            request_id: &request_id,
            users: &users,
            email: &email,
            name: "",
            error: None,
            signup,
        }),
    )
}

fn invalid_redirect_uri() -> Response {
    error_page(
        StatusCode::BAD_REQUEST,
        "Invalid redirect_uri",
        "The redirect_uri is not a URL.",
    )
}

/// The browser's single sign-on session and its cookie value, while it lasts.
fn sso_session(req: &Request, shared: &Shared) -> Option<(String, SsoSession)> {
    let value = crate::auth::cookies::read(req, SSO_COOKIE)?;
    let session = shared.grants().sso.get(&value).cloned()?;
    (session.created.elapsed() < SSO_TTL).then_some((value, session))
}

fn sso_cookie(value: &str, max_age: Duration) -> String {
    format!(
        "{SSO_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
        max_age.as_secs()
    )
}

/// Ends the browser's single sign-on session (both logout endpoints do), or, for a browser
/// without one, the session `hinted_sid` names (an `id_token_hint`'s `sid`): the application
/// gets a logout token for it (`rp-logout`).
fn end_sso(
    req: &Request,
    shared: &Arc<Shared>,
    hinted_sid: Option<&str>,
    mut response: Response,
) -> Response {
    let browsers = sso_session(req, shared).map(|(value, _)| value);
    let ended = {
        let mut grants = shared.grants();
        let key = match browsers {
            Some(value) => Some(value),
            None => hinted_sid.and_then(|sid| {
                grants
                    .sso
                    .iter()
                    .find(|(_, session)| session.sid == sid)
                    .map(|(value, _)| value.clone())
            }),
        };
        key.and_then(|key| grants.sso.remove(&key))
    };
    if let Some(session) = ended {
        backchannel::sessions_ended(
            shared,
            Initiator::RpLogout,
            vec![(session.user_id, session.sid)],
        );
    }
    if let Ok(cookie) = header::HeaderValue::from_str(&sso_cookie("", Duration::ZERO)) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// Ends every single sign-on session of `user_id` (the user was deleted or blocked): the
/// application gets a logout token for each, for `initiator`.
pub(crate) fn end_user_sessions(shared: &Arc<Shared>, user_id: &str, initiator: Initiator) {
    let ended: Vec<(String, String)> = {
        let mut grants = shared.grants();
        let keys: Vec<String> = grants
            .sso
            .iter()
            .filter(|(_, session)| session.user_id == user_id)
            .map(|(key, _)| key.clone())
            .collect();
        keys.iter()
            .filter_map(|key| grants.sso.remove(key))
            .map(|session| (session.user_id, session.sid))
            .collect()
    };
    if !ended.is_empty() {
        backchannel::sessions_ended(shared, initiator, ended);
    }
}

/// The single sign-on session a sign-in happens in.
enum Sso<'a> {
    /// The browser's session, which skipped the login page.
    Existing(String),
    /// A new session for this browser, with this cookie value.
    New(&'a str),
}

/// After the person is known (login page or single sign-on): the post-login checks, then a
/// code back to the application, issued in the `sso` session.
fn complete_login(shared: &Shared, pending: &PendingLogin, user: User, sso: Sso<'_>) -> Response {
    let Ok(redirect_uri) = Url::parse(&pending.redirect_uri) else {
        return invalid_redirect_uri();
    };
    let state = pending.state.as_deref();
    // Auth0 answers a blocked user with `unauthorized`, not `access_denied`.
    // https://auth0.com/docs/manage-users/user-accounts/block-and-unblock-users
    if user.blocked {
        return redirect_error(&redirect_uri, "unauthorized", "user is blocked", state);
    }
    if let Some(reason) = shared.faults.login_denial() {
        return redirect_error(&redirect_uri, "access_denied", &reason, state);
    }
    let Some(user) = shared.users.record_login(&user.user_id) else {
        return redirect_error(
            &redirect_uri,
            "access_denied",
            "The user no longer exists.",
            state,
        );
    };
    shared
        .streams
        .log("s", "Successful login", Some(&user), json!({}));

    let code = random_token(24);
    let client_id = shared.client().id.clone();
    let (sid, new_sso) = match sso {
        Sso::Existing(sid) => (sid, None),
        Sso::New(value) => (random_token(24), Some(value)),
    };
    let mut grants = shared.grants();
    grants.codes.insert(
        code.clone(),
        CodeGrant {
            client_id,
            redirect_uri: pending.redirect_uri.clone(),
            code_challenge: pending.code_challenge.clone(),
            nonce: pending.nonce.clone(),
            scope: pending.scope.clone(),
            user_id: user.user_id.clone(),
            organization: pending.organization.clone(),
            sid: sid.clone(),
            created: Instant::now(),
        },
    );
    if let Some(value) = new_sso {
        grants.sso.insert(
            value.to_owned(),
            SsoSession {
                user_id: user.user_id,
                sid,
                created: Instant::now(),
            },
        );
    }
    drop(grants);
    let mut to = redirect_uri;
    {
        let mut query = to.query_pairs_mut();
        query.append_pair("code", &code);
        if let Some(state) = state {
            query.append_pair("state", state);
        }
    }
    let mut response = redirect(&to);
    if let Some(value) = new_sso
        && let Ok(cookie) = header::HeaderValue::from_str(&sso_cookie(value, SSO_TTL))
    {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// `POST /u/login`: the person picked a user (or typed an email, or denied).
#[handler]
pub async fn login(shared: Data<&Arc<Shared>>, body: Body) -> Response {
    let Ok(bytes) = body.into_bytes_limit(BODY_LIMIT).await else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The form could not be read.",
        );
    };
    let form = form_map(&String::from_utf8_lossy(&bytes));
    let field = |name: &str| form.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());

    let request_id = field("request").unwrap_or_default();
    let pending = shared.grants().pending.get(request_id).cloned();
    let Some(pending) = pending.filter(|p| p.created.elapsed() < LOGIN_TTL) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Sign-in expired",
            "This sign-in page has expired or was already used.",
        );
    };
    let Ok(redirect_uri) = Url::parse(&pending.redirect_uri) else {
        return invalid_redirect_uri();
    };
    let state = pending.state.as_deref();

    if field("action") == Some("deny") {
        shared.grants().pending.remove(request_id);
        return redirect_error(
            &redirect_uri,
            "access_denied",
            "User did not authorize the request",
            state,
        );
    }

    let again = |status: StatusCode, message: &str| {
        let users = shared.users.login_choices(LOGIN_CHOICES);
        login_page::respond(
            status,
            login_page::login(&LoginView {
                request_id,
                users: &users,
                email: field("email").unwrap_or_default(),
                name: field("name").unwrap_or_default(),
                error: Some(message),
                signup: pending.signup,
            }),
        )
    };

    let user = match (field("user_id"), field("email")) {
        (Some(user_id), _) => match shared.users.get(user_id) {
            Some(user) => user,
            None => {
                return again(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "That user no longer exists. Pick another.",
                );
            }
        },
        (None, Some(email)) => match shared.users.find_by_email(email) {
            Some(user) => user,
            None => {
                let mut new = NewUser::with_email(email);
                new.name = field("name").map(str::to_owned);
                match shared.users.create(new) {
                    Ok(user) => {
                        shared.streams.user_created(&user);
                        shared
                            .streams
                            .log("ss", "Successful signup", Some(&user), json!({}));
                        user
                    }
                    Err(StoreError::Invalid(message)) => {
                        return again(StatusCode::UNPROCESSABLE_ENTITY, &message);
                    }
                    // Created by someone else a moment ago: sign in as them.
                    Err(StoreError::Conflict | StoreError::NotFound) => {
                        match shared.users.find_by_email(email) {
                            Some(user) => user,
                            None => return again(StatusCode::CONFLICT, "Please try again."),
                        }
                    }
                }
            }
        },
        (None, None) => {
            return again(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Enter an email address or pick a user.",
            );
        }
    };
    shared.grants().pending.remove(request_id);
    complete_login(&shared, &pending, user, Sso::New(&random_token(24)))
}

/// Reads a token request body: form (the standard) or JSON (Auth0 accepts both).
fn token_params(content_type: &str, bytes: &[u8]) -> Result<HashMap<String, String>, String> {
    if content_type.starts_with("application/json") {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| format!("The JSON body could not be read: {e}"))?;
        let Value::Object(object) = value else {
            return Err("The JSON body must be an object".into());
        };
        Ok(object
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::String(s) => Some((k, s)),
                Value::Number(n) => Some((k, n.to_string())),
                Value::Bool(b) => Some((k, b.to_string())),
                _ => None,
            })
            .collect())
    } else {
        Ok(form_map(&String::from_utf8_lossy(bytes)))
    }
}

/// The client's credentials from HTTP Basic (RFC 6749 2.3.1: each part form-urlencoded).
fn basic_credentials(req: &Request) -> Option<Result<(String, String), ()>> {
    let raw = req.header(header::AUTHORIZATION)?;
    let (scheme, value) = raw.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD
        .decode(value.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    Some(
        decoded
            .and_then(|text| {
                let (id, secret) = text.split_once(':')?;
                let unescape = |s: &str| -> String {
                    url::form_urlencoded::parse(format!("v={s}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default()
                };
                Some((unescape(id), unescape(secret)))
            })
            .ok_or(()),
    )
}

fn invalid_client(basic: bool) -> Response {
    let mut response = oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "Client authentication failed: unknown client or wrong secret",
    );
    if basic {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            poem::http::HeaderValue::from_static("Basic realm=\"Auth0 emulator\""),
        );
    }
    response
}

/// `POST /oauth/token`.
#[handler]
pub async fn token_endpoint(req: &Request, shared: Data<&Arc<Shared>>, body: Body) -> Response {
    let Ok(bytes) = body.into_bytes_limit(BODY_LIMIT).await else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request body could not be read",
        );
    };
    let params = match token_params(req.content_type().unwrap_or(""), &bytes) {
        Ok(params) => params,
        Err(message) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &message),
    };
    let param = |name: &str| non_empty(&params, name);

    let grant_type = match param("grant_type") {
        Some(grant @ ("authorization_code" | "client_credentials")) => grant,
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("Unsupported grant type: {other}"),
            );
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing required parameter: grant_type",
            );
        }
    };

    // Client authentication: exactly one method (RFC 6749 2.3).
    let basic = basic_credentials(req);
    let (client_id, client_secret) = match (basic, param("client_secret")) {
        (Some(_), Some(_)) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Use one client authentication method, not both client_secret_basic and client_secret_post",
            );
        }
        (Some(Err(())), None) => return invalid_client(true),
        (Some(Ok((id, secret))), None) => {
            if param("client_id").is_some_and(|body_id| body_id != id) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "client_id does not match the Authorization header",
                );
            }
            (id, secret)
        }
        (None, Some(secret)) => match param("client_id") {
            Some(id) => (id.to_owned(), secret.to_owned()),
            None => return invalid_client(false),
        },
        (None, None) => return invalid_client(false),
    };
    let used_basic = param("client_secret").is_none();
    {
        let client = shared.client();
        let id_ok = client_id == client.id;
        let secret_ok: bool = client_secret
            .as_bytes()
            .ct_eq(client.secret.as_bytes())
            .into();
        if !(id_ok && secret_ok) {
            return invalid_client(used_basic);
        }
    }

    match grant_type {
        "authorization_code" => authorization_code(&shared, &client_id, &param),
        _ => client_credentials(&shared, &param),
    }
}

fn authorization_code<'a>(
    shared: &Shared,
    client_id: &str,
    param: &impl Fn(&str) -> Option<&'a str>,
) -> Response {
    let bad_request =
        |description: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_request", description);
    let invalid_grant =
        |description: &str| oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description);
    let Some(code) = param("code") else {
        return bad_request("Missing required parameter: code");
    };
    let Some(redirect_uri) = param("redirect_uri") else {
        return bad_request("Missing required parameter: redirect_uri");
    };
    let Some(verifier) = param("code_verifier") else {
        return bad_request("Missing required parameter: code_verifier");
    };
    // Taken out whatever happens next: a code is good for one attempt only.
    let grant = shared.grants().codes.remove(code);
    let Some(grant) = grant else {
        return invalid_grant("Invalid authorization code");
    };
    if grant.created.elapsed() >= CODE_TTL {
        return invalid_grant("Authorization code has expired");
    }
    if grant.client_id != client_id {
        return invalid_grant("Invalid authorization code");
    }
    if grant.redirect_uri != redirect_uri {
        return invalid_grant(
            "redirect_uri does not match the one used in the authorization request",
        );
    }
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    if challenge != grant.code_challenge {
        return invalid_grant("Failed to verify code verifier");
    }
    let Some(user) = shared.users.get(&grant.user_id) else {
        return invalid_grant("The user no longer exists");
    };
    if let Some(body) = shared.faults.token_response() {
        let content_type = if body.starts_with('{') {
            "application/json"
        } else {
            "text/html; charset=utf-8"
        };
        return Response::builder()
            .content_type(content_type)
            .header(header::CACHE_CONTROL, "no-store")
            .body(body);
    }

    let access_token = random_token(32);
    shared.grants().tokens.insert(
        access_token.clone(),
        AccessGrant::User {
            user_id: user.user_id.clone(),
            expires: Instant::now() + Duration::from_secs(ACCESS_TOKEN_SECS),
        },
    );
    let id_token = id_token(shared, client_id, &user, &grant);
    super::json_response(
        StatusCode::OK,
        &json!({
            "access_token": access_token,
            "id_token": id_token,
            "token_type": "Bearer",
            "expires_in": ACCESS_TOKEN_SECS,
            "scope": grant.scope,
        }),
    )
}

/// A Management API token (https://auth0.com/docs/secure/tokens/access-tokens/management-api-access-tokens).
fn client_credentials<'a>(shared: &Shared, param: &impl Fn(&str) -> Option<&'a str>) -> Response {
    let denied =
        |description: &str| oauth_error(StatusCode::FORBIDDEN, "access_denied", description);
    let audience = shared.management_audience();
    match param("audience") {
        Some(requested) if requested == audience => {}
        Some(requested) => return denied(&format!("Service not found: {requested}")),
        None => {
            return denied(
                "No audience parameter was provided, and no default audience has been configured",
            );
        }
    }
    // An explicit `scope` narrows the grant (tests use it to get a token without read:users).
    let scopes: Vec<String> = match param("scope") {
        None => MANAGEMENT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        Some(requested) => {
            let requested: Vec<&str> = requested.split_whitespace().collect();
            if let Some(unknown) = requested.iter().find(|s| !MANAGEMENT_SCOPES.contains(s)) {
                return denied(&format!("Client has not been granted scopes: {unknown}"));
            }
            requested.into_iter().map(str::to_owned).collect()
        }
    };
    let access_token = random_token(32);
    let scope = scopes.join(" ");
    shared.grants().tokens.insert(
        access_token.clone(),
        AccessGrant::Management {
            scopes,
            expires: Instant::now() + Duration::from_secs(ACCESS_TOKEN_SECS),
        },
    );
    super::json_response(
        StatusCode::OK,
        &json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": ACCESS_TOKEN_SECS,
            "scope": scope,
        }),
    )
}

/// Profile claims for `user`, filtered by scope as Auth0 does (`profile`, `email`); the roles
/// claim is always present, as a post-login Action would add it.
fn profile_claims(shared: &Shared, user: &User, scope: &str) -> Map<String, Value> {
    let scopes: Vec<&str> = scope.split(' ').collect();
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(user.user_id));
    if scopes.contains(&"profile") {
        claims.insert("name".into(), json!(user.name));
        claims.insert("nickname".into(), json!(user.nickname));
        claims.insert("picture".into(), json!(user.picture()));
        // Auth0 sends an ISO 8601 string here, not the number OIDC Core specifies; clients must
        // cope (openidconnect: feature `accept-rfc3339-timestamps`, ramosbugs/openidconnect-rs#23).
        claims.insert("updated_at".into(), json!(timestamp(user.updated_at)));
        if let Some(given) = &user.given_name {
            claims.insert("given_name".into(), json!(given));
        }
        if let Some(family) = &user.family_name {
            claims.insert("family_name".into(), json!(family));
        }
    }
    if scopes.contains(&"email") {
        claims.insert("email".into(), json!(user.email));
        claims.insert("email_verified".into(), json!(user.email_verified));
    }
    claims.insert(shared.roles_claim.clone(), json!(user.roles));
    claims
}

fn id_token(shared: &Shared, client_id: &str, user: &User, grant: &CodeGrant) -> String {
    let fault = shared.faults.id_token_fault();
    let now = Utc::now().timestamp();
    let mut claims = profile_claims(shared, user, &grant.scope);
    let (iat, exp) = match fault {
        Some(IdTokenFault::Expired) => (now - 2 * ID_TOKEN_SECS, now - ID_TOKEN_SECS),
        _ => (now, now + ID_TOKEN_SECS),
    };
    let iss = match fault {
        Some(IdTokenFault::WrongIssuer) => "https://wrong-issuer.example/".to_owned(),
        _ => shared.issuer_identifier.clone(),
    };
    let aud = match fault {
        Some(IdTokenFault::WrongAudience) => "some-other-client".to_owned(),
        _ => client_id.to_owned(),
    };
    claims.insert("iss".into(), json!(iss));
    claims.insert("aud".into(), json!(aud));
    claims.insert("iat".into(), json!(iat));
    claims.insert("exp".into(), json!(exp));
    // The single sign-on session's id, which the logout tokens for it carry too.
    claims.insert("sid".into(), json!(grant.sid));
    // https://auth0.com/docs/manage-users/organizations/using-tokens
    if let Some(organization) = &grant.organization {
        if organization.starts_with("org_") {
            claims.insert("org_id".into(), json!(organization));
        } else {
            let digest = Sha256::digest(organization.to_lowercase().as_bytes());
            let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            claims.insert("org_id".into(), json!(format!("org_{id}")));
            claims.insert("org_name".into(), json!(organization.to_lowercase()));
        }
    }
    match (fault, grant.nonce.as_deref()) {
        (Some(IdTokenFault::WrongNonce), _) => {
            claims.insert("nonce".into(), json!(format!("not-{}", random_token(12))));
        }
        (_, Some(nonce)) => {
            claims.insert("nonce".into(), json!(nonce));
        }
        (_, None) => {}
    }
    for (name, value) in shared.faults.id_token_claims() {
        if value.is_null() {
            claims.remove(&name);
        } else {
            claims.insert(name, value);
        }
    }
    shared.keys().sign(
        &Value::Object(claims),
        fault == Some(IdTokenFault::BadSignature),
    )
}

/// The bearer token of a request, if any.
pub fn bearer(req: &Request) -> Option<&str> {
    let raw = req.header(header::AUTHORIZATION)?;
    let (scheme, token) = raw.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// `GET|POST /userinfo` with the access token from the code flow.
#[handler]
pub async fn userinfo(req: &Request, shared: Data<&Arc<Shared>>) -> Response {
    let unauthorized = || {
        Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")
            .body("Unauthorized")
    };
    let Some(token) = bearer(req) else {
        return unauthorized();
    };
    let grant = shared.grants().tokens.get(token).cloned();
    let Some(AccessGrant::User { user_id, expires }) = grant else {
        return unauthorized();
    };
    if expires <= Instant::now() {
        return unauthorized();
    }
    let Some(user) = shared.users.get(&user_id) else {
        return unauthorized();
    };
    super::json_response(
        StatusCode::OK,
        &Value::Object(profile_claims(&shared, &user, "openid profile email")),
    )
}

fn allowed_logout(shared: &Shared, url: &str) -> bool {
    shared
        .client()
        .logout_urls
        .iter()
        .any(|allowed| allowed == url)
}

/// `GET /v2/logout?client_id&returnTo`: Auth0's own logout.
/// https://auth0.com/docs/api/authentication/logout/auth-0-logout
#[handler]
pub async fn logout_v2(req: &Request, shared: Data<&Arc<Shared>>) -> Response {
    let params = form_map(req.uri().query().unwrap_or(""));
    let param = |name: &str| non_empty(&params, name);
    if param("client_id").is_some_and(|id| id != shared.client().id) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Unknown client",
            "The client_id is not registered with the emulator.",
        );
    }
    let return_to = match param("returnTo") {
        Some(url) if allowed_logout(&shared, url) => Some(url.to_owned()),
        Some(url) => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "Logout URL not allowed",
                &format!(
                    "{url} is not in the list of Allowed Logout URLs. Register it with --logout-url."
                ),
            );
        }
        // Auth0 falls back to the application's first Allowed Logout URL.
        None if param("client_id").is_some() => shared.client().logout_urls.first().cloned(),
        None => None,
    };
    let response = match return_to.and_then(|url| Url::parse(&url).ok()) {
        Some(url) => redirect(&url),
        None => login_page::respond(StatusCode::OK, login_page::signed_out()),
    };
    end_sso(req, &shared, None, response)
}

/// `GET /oidc/logout`: OpenID Connect RP-initiated logout.
/// https://auth0.com/docs/authenticate/login/logout/log-users-out-of-auth0
#[handler]
pub async fn logout_oidc(req: &Request, shared: Data<&Arc<Shared>>) -> Response {
    let params = form_map(req.uri().query().unwrap_or(""));
    let param = |name: &str| non_empty(&params, name);
    let client_id = shared.client().id.clone();
    let mut hinted_sid = None;
    if let Some(hint) = param("id_token_hint") {
        // An expired hint is fine (the session may be old); a forged or foreign one is not.
        let claims = shared.keys().verify(hint);
        let ours = claims.as_ref().is_some_and(|c| {
            c["iss"] == json!(shared.issuer_identifier) && c["aud"] == json!(client_id)
        });
        hinted_sid = claims
            .as_ref()
            .and_then(|c| c["sid"].as_str())
            .map(str::to_owned);
        if !ours {
            return error_page(
                StatusCode::BAD_REQUEST,
                "Invalid id_token_hint",
                "The id_token_hint was not issued by this emulator for this application.",
            );
        }
    }
    if param("client_id").is_some_and(|id| id != client_id) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Unknown client",
            "The client_id is not registered with the emulator.",
        );
    }
    let Some(target) = param("post_logout_redirect_uri") else {
        let page = login_page::respond(StatusCode::OK, login_page::signed_out());
        return end_sso(req, &shared, hinted_sid.as_deref(), page);
    };
    if param("id_token_hint").is_none() && param("client_id").is_none() {
        return error_page(
            StatusCode::BAD_REQUEST,
            "Missing client",
            "post_logout_redirect_uri needs an id_token_hint or a client_id to know the application.",
        );
    }
    let url = match Url::parse(target) {
        Ok(url) if allowed_logout(&shared, target) => url,
        _ => {
            return error_page(
                StatusCode::BAD_REQUEST,
                "Logout URL not allowed",
                &format!(
                    "{target} is not in the list of Allowed Logout URLs. Register it with --logout-url."
                ),
            );
        }
    };
    let mut to = url;
    if let Some(state) = param("state") {
        to.query_pairs_mut().append_pair("state", state);
    }
    end_sso(req, &shared, hinted_sid.as_deref(), redirect(&to))
}
