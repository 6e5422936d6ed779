//! The Auth0 emulator over real HTTP: the code flow with PKCE and its failure modes, the
//! Management API (auth, paging, the 1000 cap, search, CRUD, exports, rate limits) and the
//! fault switches other tests rely on.

use std::{collections::HashMap, io::Read, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use quotebook::emulator::{Emulator, EmulatorConfig, IdTokenFault};
use reqwest::{StatusCode, header::LOCATION};
use rsa::{
    BigUint, RsaPublicKey,
    pkcs1v15::{Signature, VerifyingKey},
    signature::Verifier,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{client, management_token};

const CALLBACK: &str = "http://localhost:3000/auth/callback";
const LOGOUT: &str = "http://localhost:3000/";
const CLIENT_ID: &str = quotebook::config::DEV_CLIENT_ID;
const CLIENT_SECRET: &str = quotebook::config::DEV_CLIENT_SECRET;
const ROLES_CLAIM: &str = quotebook::config::DEFAULT_ROLES_CLAIM;

async fn start(seed_users: usize) -> Emulator {
    let emulator = Emulator::start(EmulatorConfig {
        seed_users,
        ..EmulatorConfig::for_tests()
    })
    .await
    .expect("emulator starts");
    emulator.add_callback_url(CALLBACK);
    emulator.add_logout_url(LOGOUT);
    emulator
}

fn url(emulator: &Emulator, path: &str) -> String {
    format!("{}{}", emulator.issuer(), path.trim_start_matches('/'))
}

struct Pkce {
    verifier: String,
    challenge: String,
}

fn pkce() -> Pkce {
    let verifier = format!(
        "verifier-{}-{}",
        crate::helpers::random_suffix(),
        "x".repeat(40)
    );
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    Pkce {
        verifier,
        challenge,
    }
}

fn query_of(location: &str) -> HashMap<String, String> {
    let url = url::Url::parse(location).expect("absolute Location");
    url.query_pairs().into_owned().collect()
}

fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .expect("a Location header")
        .to_owned()
}

/// `/authorize` with everything right, overridden by `overrides` (empty value = left out).
fn authorize_url(emulator: &Emulator, pkce: &Pkce, overrides: &[(&str, &str)]) -> String {
    let mut params: Vec<(&str, String)> = vec![
        ("client_id", CLIENT_ID.into()),
        ("redirect_uri", CALLBACK.into()),
        ("response_type", "code".into()),
        ("scope", "openid profile email".into()),
        ("state", "state-123".into()),
        ("nonce", "nonce-456".into()),
        ("code_challenge", pkce.challenge.clone()),
        ("code_challenge_method", "S256".into()),
    ];
    for (key, value) in overrides {
        params.retain(|(k, _)| k != key);
        if !value.is_empty() {
            params.push((key, (*value).to_owned()));
        }
    }
    let mut url = url::Url::parse(&url(emulator, "/authorize")).unwrap();
    url.query_pairs_mut().extend_pairs(params);
    url.to_string()
}

/// The hidden `request` field of the login page.
fn request_id(html: &str) -> String {
    let marker = "name=\"request\" value=\"";
    let start = html.find(marker).expect("login form carries the request") + marker.len();
    let end = html[start..].find('"').unwrap() + start;
    html[start..end].to_owned()
}

/// Walks authorize → login page → login with `email` in a fresh browser and returns the code.
async fn login(emulator: &Emulator, pkce: &Pkce, email: &str) -> String {
    let location = sign_in_with(&client(), emulator, pkce, email, &[]).await;
    assert!(location.starts_with(CALLBACK), "{location}");
    let query = query_of(&location);
    assert_eq!(query["state"], "state-123");
    query["code"].clone()
}

async fn exchange(emulator: &Emulator, code: &str, verifier: &str) -> reqwest::Response {
    client()
        .post(url(emulator, "/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", CALLBACK),
            ("code_verifier", verifier),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap()
}

/// Verifies an RS256 JWT against the emulator's JWKS; the claims, or `None` if the signature
/// does not hold.
async fn verify(emulator: &Emulator, jwt: &str) -> Option<Value> {
    let jwks: Value = client()
        .get(url(emulator, "/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the token's kid is in the JWKS");
    let n = URL_SAFE_NO_PAD.decode(key["n"].as_str().unwrap()).unwrap();
    let e = URL_SAFE_NO_PAD.decode(key["e"].as_str().unwrap()).unwrap();
    let public = RsaPublicKey::new(BigUint::from_bytes_be(&n), BigUint::from_bytes_be(&e)).unwrap();
    let signature =
        Signature::try_from(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().as_slice()).unwrap();
    VerifyingKey::<Sha256>::new(public)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .ok()?;
    Some(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap())
}

fn claims_unverified(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn api_get(emulator: &Emulator, token: &str, path_and_query: &str) -> reqwest::Response {
    client()
        .get(url(emulator, path_and_query))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn discovery_and_jwks_look_like_auth0() {
    let emulator = start(0).await;
    let doc: Value = client()
        .get(url(&emulator, "/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let issuer = emulator.issuer().to_string();
    assert!(issuer.ends_with('/'));
    assert_eq!(issuer, format!("http://127.0.0.1:{}/", emulator.port()));
    assert_eq!(doc["issuer"], issuer);
    assert_eq!(doc["authorization_endpoint"], format!("{issuer}authorize"));
    assert_eq!(doc["token_endpoint"], format!("{issuer}oauth/token"));
    assert_eq!(doc["end_session_endpoint"], format!("{issuer}oidc/logout"));
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["RS256"])
    );
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!(["client_secret_post", "client_secret_basic"])
    );
    let jwks: Value = client()
        .get(doc["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert!(key["kid"].as_str().is_some_and(|k| !k.is_empty()));
}

#[tokio::test]
async fn full_code_flow_with_pkce_gives_a_verifiable_id_token() {
    let emulator = start(5).await;
    let pkce = pkce();
    let code = login(&emulator, &pkce, "New.Person@Example.com").await;
    let response = exchange(&emulator, &code, &pkce.verifier).await;
    assert_eq!(response.status(), StatusCode::OK);
    let tokens: Value = response.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens["expires_in"].as_u64().unwrap() > 0);
    assert_eq!(tokens["scope"], "openid profile email");

    let claims = verify(&emulator, tokens["id_token"].as_str().unwrap())
        .await
        .expect("the ID token verifies with the JWKS");
    assert_eq!(claims["iss"], emulator.issuer().to_string());
    assert_eq!(claims["aud"], CLIENT_ID);
    assert_eq!(claims["nonce"], "nonce-456");
    assert_eq!(claims["email"], "new.person@example.com");
    assert_eq!(claims["email_verified"], false);
    assert!(claims["sub"].as_str().unwrap().starts_with("auth0|"));
    assert!(claims["name"].is_string() && claims["nickname"] == "new.person");
    assert!(claims["picture"].as_str().unwrap().starts_with("https://"));
    assert!(claims["updated_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(claims[ROLES_CLAIM], json!([]));
    let now = chrono::Utc::now().timestamp();
    assert!(claims["exp"].as_i64().unwrap() > now);
    assert!(claims["iat"].as_i64().unwrap() <= now + 1);

    // The new user exists in the tenant, with the login recorded.
    let user = emulator
        .users()
        .find_by_email("new.person@example.com")
        .unwrap();
    assert_eq!(user.user_id, claims["sub"]);
    assert_eq!(user.logins_count, 1);
    assert_eq!(emulator.users().count(), 6);

    let info: Value = client()
        .get(url(&emulator, "/userinfo"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], claims["sub"]);
    assert_eq!(info["email"], "new.person@example.com");
    let denied = client()
        .get(url(&emulator, "/userinfo"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_seeded_admin_can_sign_in_with_one_click_and_carries_the_roles_claim() {
    let emulator = start(3).await;
    let pkce = pkce();
    let http = client();
    let html = http
        .get(authorize_url(
            &emulator,
            &pkce,
            &[("login_hint", "hint@example.com")],
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("Ada Admin"));
    assert!(
        html.contains("value=\"hint@example.com\""),
        "login_hint pre-fills the email"
    );
    assert!(!html.contains("<script"));
    let admin = emulator.users().find_by_email("admin@example.com").unwrap();
    let response = http
        .post(url(&emulator, "/u/login"))
        .form(&[
            ("request", request_id(&html).as_str()),
            ("user_id", admin.user_id.as_str()),
            ("action", "login"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let code = query_of(&location(&response))["code"].clone();
    let tokens: Value = exchange(&emulator, &code, &pkce.verifier)
        .await
        .json()
        .await
        .unwrap();
    let claims = verify(&emulator, tokens["id_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(claims["sub"], admin.user_id);
    assert_eq!(claims[ROLES_CLAIM], json!(["admin"]));
}

#[tokio::test]
async fn client_secret_basic_works_and_bad_secrets_are_invalid_client() {
    let emulator = start(0).await;
    let pkce = pkce();
    let code = login(&emulator, &pkce, "basic@example.com").await;
    let ok = client()
        .post(url(&emulator, "/oauth/token"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", CALLBACK),
            ("code_verifier", pkce.verifier.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);

    let code = login(&emulator, &pkce, "basic@example.com").await;
    let basic = client()
        .post(url(&emulator, "/oauth/token"))
        .basic_auth(CLIENT_ID, Some("wrong"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", CALLBACK),
            ("code_verifier", pkce.verifier.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    assert!(basic.headers().contains_key("www-authenticate"));
    let body: Value = basic.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");

    let post = client()
        .post(url(&emulator, "/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", CALLBACK),
            ("code_verifier", pkce.verifier.as_str()),
            ("client_id", CLIENT_ID),
            ("client_secret", "wrong"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), StatusCode::UNAUTHORIZED);
    let body: Value = post.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");

    let unsupported = client()
        .post(url(&emulator, "/oauth/token"))
        .form(&[
            ("grant_type", "password"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(unsupported.status(), StatusCode::BAD_REQUEST);
    let body: Value = unsupported.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type");

    let garbage = client()
        .post(url(&emulator, "/oauth/token"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    let body: Value = garbage.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
}

#[tokio::test]
async fn wrong_verifier_reused_code_and_wrong_redirect_are_invalid_grant() {
    let emulator = start(0).await;
    let pkce = pkce();

    let code = login(&emulator, &pkce, "a@example.com").await;
    let wrong = exchange(
        &emulator,
        &code,
        "a-completely-different-verifier-that-is-long-enough",
    )
    .await;
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("verifier")
    );

    let code = login(&emulator, &pkce, "a@example.com").await;
    assert_eq!(
        exchange(&emulator, &code, &pkce.verifier).await.status(),
        StatusCode::OK
    );
    let reused = exchange(&emulator, &code, &pkce.verifier).await;
    assert_eq!(reused.status(), StatusCode::BAD_REQUEST);
    let body: Value = reused.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");

    let code = login(&emulator, &pkce, "a@example.com").await;
    emulator.add_callback_url("http://localhost:3000/other");
    let redirect = client()
        .post(url(&emulator, "/oauth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", "http://localhost:3000/other"),
            ("code_verifier", pkce.verifier.as_str()),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), StatusCode::BAD_REQUEST);
    let body: Value = redirect.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("redirect_uri")
    );
}

#[tokio::test]
async fn authorize_rejects_bad_requests_the_rfc_way() {
    let emulator = start(0).await;
    let pkce = pkce();
    let http = client();

    // A redirect URI that is not registered: an error page, never a redirect.
    let page = http
        .get(authorize_url(
            &emulator,
            &pkce,
            &[("redirect_uri", "https://evil.example/cb")],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    assert!(page.headers().get(LOCATION).is_none());
    assert!(page.text().await.unwrap().contains("evil.example"));

    let page = http
        .get(authorize_url(
            &emulator,
            &pkce,
            &[("client_id", "someone-else")],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    assert!(page.headers().get(LOCATION).is_none());

    for (overrides, error) in [
        (vec![("code_challenge", "")], "invalid_request"),
        (vec![("code_challenge_method", "plain")], "invalid_request"),
        (vec![("code_challenge_method", "")], "invalid_request"),
        (
            vec![("response_type", "token")],
            "unsupported_response_type",
        ),
        (vec![("scope", "profile email")], "invalid_scope"),
        (vec![("prompt", "none")], "login_required"),
    ] {
        let response = http
            .get(authorize_url(&emulator, &pkce, &overrides))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FOUND, "{overrides:?}");
        let location = location(&response);
        assert!(location.starts_with(CALLBACK));
        let query = query_of(&location);
        assert_eq!(query["error"], error, "{overrides:?}");
        assert!(!query["error_description"].is_empty());
        assert_eq!(query["state"], "state-123");
        assert!(!query.contains_key("code"));
    }

    // Deny on the login page sends access_denied back.
    let html = http
        .get(authorize_url(&emulator, &pkce, &[]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let denied = http
        .post(url(&emulator, "/u/login"))
        .form(&[("request", request_id(&html).as_str()), ("action", "deny")])
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::FOUND);
    let query = query_of(&location(&denied));
    assert_eq!(query["error"], "access_denied");
    assert_eq!(query["state"], "state-123");

    // The pending request is gone, and garbage is an error page, not a crash.
    let again = http
        .post(url(&emulator, "/u/login"))
        .form(&[
            ("request", request_id(&html).as_str()),
            ("email", "x@example.com"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);

    let html = http
        .get(authorize_url(&emulator, &pkce, &[]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let invalid = http
        .post(url(&emulator, "/u/login"))
        .form(&[
            ("request", request_id(&html).as_str()),
            ("email", "not an email"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(invalid.text().await.unwrap().contains("not an email"));
}

#[tokio::test]
async fn each_id_token_fault_breaks_the_token_as_described() {
    let emulator = start(0).await;
    let pkce = pkce();
    for fault in [
        IdTokenFault::WrongNonce,
        IdTokenFault::WrongIssuer,
        IdTokenFault::WrongAudience,
        IdTokenFault::Expired,
        IdTokenFault::BadSignature,
    ] {
        emulator.faults().set_id_token_fault(Some(fault));
        let code = login(&emulator, &pkce, "faulty@example.com").await;
        let tokens: Value = exchange(&emulator, &code, &pkce.verifier)
            .await
            .json()
            .await
            .unwrap();
        let jwt = tokens["id_token"].as_str().unwrap();
        let claims = claims_unverified(jwt);
        let verified = verify(&emulator, jwt).await;
        let now = chrono::Utc::now().timestamp();
        match fault {
            IdTokenFault::WrongNonce => assert_ne!(claims["nonce"], "nonce-456"),
            IdTokenFault::WrongIssuer => assert_ne!(claims["iss"], emulator.issuer().to_string()),
            IdTokenFault::WrongAudience => assert_ne!(claims["aud"], CLIENT_ID),
            IdTokenFault::Expired => assert!(claims["exp"].as_i64().unwrap() < now),
            IdTokenFault::BadSignature => assert!(verified.is_none()),
        }
        if fault != IdTokenFault::BadSignature {
            assert!(verified.is_some(), "{fault:?} keeps a valid signature");
        }
    }
    emulator.faults().set_id_token_fault(None);
    let code = login(&emulator, &pkce, "faulty@example.com").await;
    let tokens: Value = exchange(&emulator, &code, &pkce.verifier)
        .await
        .json()
        .await
        .unwrap();
    let claims = verify(&emulator, tokens["id_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(claims["nonce"], "nonce-456");
}

#[tokio::test]
async fn logout_endpoints_check_the_return_url() {
    let emulator = start(0).await;
    let http = client();
    let ok = http
        .get(url(&emulator, "/v2/logout"))
        .query(&[("client_id", CLIENT_ID), ("returnTo", LOGOUT)])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::FOUND);
    assert_eq!(location(&ok), LOGOUT);
    let bad = http
        .get(url(&emulator, "/v2/logout"))
        .query(&[
            ("client_id", CLIENT_ID),
            ("returnTo", "https://evil.example/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert!(bad.headers().get(LOCATION).is_none());

    let pkce = pkce();
    let code = login(&emulator, &pkce, "bye@example.com").await;
    let tokens: Value = exchange(&emulator, &code, &pkce.verifier)
        .await
        .json()
        .await
        .unwrap();
    let oidc = http
        .get(url(&emulator, "/oidc/logout"))
        .query(&[
            ("id_token_hint", tokens["id_token"].as_str().unwrap()),
            ("post_logout_redirect_uri", LOGOUT),
            ("state", "bye-state"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(oidc.status(), StatusCode::FOUND);
    let to = location(&oidc);
    assert!(to.starts_with(LOGOUT));
    assert_eq!(query_of(&to)["state"], "bye-state");
    let bad = http
        .get(url(&emulator, "/oidc/logout"))
        .query(&[
            ("client_id", CLIENT_ID),
            ("post_logout_redirect_uri", "https://evil.example/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let forged = http
        .get(url(&emulator, "/oidc/logout"))
        .query(&[
            ("id_token_hint", "a.b.c"),
            ("post_logout_redirect_uri", LOGOUT),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::BAD_REQUEST);
}

/// Signs in as `email` in a fresh browser and exchanges the code: the ID token.
async fn id_token_for(emulator: &Emulator, pkce: &Pkce, email: &str) -> String {
    let code = login(emulator, pkce, email).await;
    let tokens: Value = exchange(emulator, &code, &pkce.verifier)
        .await
        .json()
        .await
        .unwrap();
    tokens["id_token"].as_str().unwrap().to_owned()
}

/// `/authorize` with `client` (its cookies), answered without following redirects.
async fn authorize_with(
    http: &reqwest::Client,
    emulator: &Emulator,
    pkce: &Pkce,
    overrides: &[(&str, &str)],
) -> reqwest::Response {
    http.get(authorize_url(emulator, pkce, overrides))
        .send()
        .await
        .unwrap()
}

/// Signs in on the login page as `email` with `client`, returning where the emulator sends the
/// browser back to.
async fn sign_in_with(
    http: &reqwest::Client,
    emulator: &Emulator,
    pkce: &Pkce,
    email: &str,
    overrides: &[(&str, &str)],
) -> String {
    let page = authorize_with(http, emulator, pkce, overrides).await;
    assert_eq!(page.status(), StatusCode::OK, "the login page");
    let html = page.text().await.unwrap();
    let back = http
        .post(url(emulator, "/u/login"))
        .form(&[
            ("request", request_id(&html).as_str()),
            ("email", email),
            ("action", "login"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), StatusCode::FOUND);
    location(&back)
}

#[tokio::test]
async fn single_sign_on_skips_the_login_page_until_a_logout_ends_it() {
    let emulator = start(0).await;
    let pkce = pkce();
    let browser = client();
    let silent = authorize_with(&browser, &emulator, &pkce, &[("prompt", "none")]).await;
    assert_eq!(query_of(&location(&silent))["error"], "login_required");

    let first = sign_in_with(&browser, &emulator, &pkce, "sso@example.com", &[]).await;
    assert!(query_of(&first).contains_key("code"));
    // Straight back with a code, for the same person, as Auth0 does while its session lasts.
    for prompt in ["", "none"] {
        let again = authorize_with(&browser, &emulator, &pkce, &[("prompt", prompt)]).await;
        assert_eq!(again.status(), StatusCode::FOUND, "prompt={prompt:?}");
        let code = query_of(&location(&again))["code"].clone();
        let tokens: Value = exchange(&emulator, &code, &pkce.verifier)
            .await
            .json()
            .await
            .unwrap();
        let claims = claims_unverified(tokens["id_token"].as_str().unwrap());
        assert_eq!(claims["email"], "sso@example.com");
    }
    // prompt=login and the sign-up screen still show a page.
    for hint in [("prompt", "login"), ("screen_hint", "signup")] {
        let page = authorize_with(&browser, &emulator, &pkce, &[hint]).await;
        assert_eq!(page.status(), StatusCode::OK, "{hint:?}");
    }
    // Another browser has no session.
    let other = authorize_with(&client(), &emulator, &pkce, &[]).await;
    assert_eq!(other.status(), StatusCode::OK);

    // Either logout ends it.
    for logout in [
        vec![("client_id", CLIENT_ID), ("returnTo", LOGOUT)],
        vec![
            ("client_id", CLIENT_ID),
            ("post_logout_redirect_uri", LOGOUT),
        ],
    ] {
        sign_in_with(
            &browser,
            &emulator,
            &pkce,
            "sso@example.com",
            &[("prompt", "login")],
        )
        .await;
        let path = if logout[1].0 == "returnTo" {
            "/v2/logout"
        } else {
            "/oidc/logout"
        };
        let bye = browser
            .get(url(&emulator, path))
            .query(&logout)
            .send()
            .await
            .unwrap();
        assert_eq!(bye.status(), StatusCode::FOUND, "{path}");
        let after = authorize_with(&browser, &emulator, &pkce, &[]).await;
        assert_eq!(
            after.status(),
            StatusCode::OK,
            "the login page again after {path}"
        );
    }
}

#[tokio::test]
async fn the_issuer_is_spelled_as_configured_in_discovery_and_tokens() {
    use quotebook::emulator::IssuerIdentifier;
    for (spelling, expect_slash) in [
        (IssuerIdentifier::Auth0, true),
        (IssuerIdentifier::NoTrailingSlash, false),
    ] {
        let emulator = Emulator::start(EmulatorConfig {
            issuer: spelling.clone(),
            ..EmulatorConfig::for_tests()
        })
        .await
        .unwrap();
        emulator.add_callback_url(CALLBACK);
        let identifier = emulator.issuer_identifier();
        assert_eq!(identifier.ends_with('/'), expect_slash, "{spelling:?}");
        let doc: Value = client()
            .get(url(&emulator, "/.well-known/openid-configuration"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["issuer"], identifier);
        let pkce = pkce();
        let id_token = id_token_for(&emulator, &pkce, "iss@example.com").await;
        assert_eq!(claims_unverified(&id_token)["iss"], identifier);
    }
    let elsewhere = Emulator::start(EmulatorConfig {
        issuer: IssuerIdentifier::Claimed("https://idp.internal:8443/realms/app".into()),
        ..EmulatorConfig::for_tests()
    })
    .await
    .unwrap();
    let doc: Value = client()
        .get(url(&elsewhere, "/.well-known/openid-configuration"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["issuer"], "https://idp.internal:8443/realms/app");
}

#[tokio::test]
async fn a_rotated_key_signs_new_tokens_and_the_old_one_stays_published() {
    let emulator = start(0).await;
    let pkce = pkce();
    let kid = |jwt: &str| -> Value {
        let header = jwt.split('.').next().unwrap();
        serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()["kid"]
            .clone()
    };
    let before = id_token_for(&emulator, &pkce, "rotate@example.com").await;

    emulator.rotate_signing_key().await.unwrap();
    let after = id_token_for(&emulator, &pkce, "rotate@example.com").await;
    assert_ne!(kid(&after), kid(&before), "a new kid");
    assert!(verify(&emulator, &after).await.is_some());
    assert!(
        verify(&emulator, &before).await.is_some(),
        "the old key is still published"
    );
    let fetched = emulator.jwks_requests();
    assert!(fetched >= 2, "JWKS requests are counted: {fetched}");
}

#[tokio::test]
async fn claim_switches_send_the_shapes_other_connections_send() {
    let emulator = start(0).await;
    let pkce = pkce();
    let mut shapes = serde_json::Map::new();
    shapes.insert("email_verified".into(), json!("jane@acme.example"));
    shapes.insert("name".into(), Value::Null);
    emulator.faults().set_id_token_claims(shapes);
    let id_token = id_token_for(&emulator, &pkce, "jane@acme.example").await;
    let claims = verify(&emulator, &id_token).await.unwrap();
    assert_eq!(claims["email_verified"], "jane@acme.example");
    assert!(claims.get("name").is_none());
    assert_eq!(claims["email"], "jane@acme.example");

    emulator
        .faults()
        .set_id_token_claims(serde_json::Map::new());
    let id_token = id_token_for(&emulator, &pkce, "jane@acme.example").await;
    let claims = claims_unverified(&id_token);
    assert_eq!(claims["email_verified"], false);
    assert!(claims["name"].is_string());
}

#[tokio::test]
async fn post_login_denials_blocked_users_and_unknown_audiences_come_back_as_errors() {
    let emulator = Emulator::start(EmulatorConfig {
        apis: vec!["https://api.quotebook.example".into()],
        ..EmulatorConfig::for_tests()
    })
    .await
    .unwrap();
    emulator.add_callback_url(CALLBACK);
    let pkce = pkce();

    emulator
        .faults()
        .deny_logins(Some("Please verify your email before logging in."));
    let back = query_of(&sign_in_with(&client(), &emulator, &pkce, "deny@example.com", &[]).await);
    assert_eq!(back["error"], "access_denied");
    assert_eq!(
        back["error_description"],
        "Please verify your email before logging in."
    );
    assert_eq!(back["state"], "state-123");
    emulator.faults().deny_logins(None);

    crate::helpers::block_user(&emulator, "deny@example.com");
    let back = query_of(&sign_in_with(&client(), &emulator, &pkce, "deny@example.com", &[]).await);
    assert_eq!(back["error"], "unauthorized");
    assert_eq!(back["error_description"], "user is blocked");

    let unknown = authorize_with(
        &client(),
        &emulator,
        &pkce,
        &[("audience", "https://nope.example")],
    )
    .await;
    let back = query_of(&location(&unknown));
    assert_eq!(back["error"], "access_denied");
    assert_eq!(
        back["error_description"],
        "Service not found: https://nope.example"
    );
    let known = authorize_with(
        &client(),
        &emulator,
        &pkce,
        &[("audience", "https://api.quotebook.example")],
    )
    .await;
    assert_eq!(known.status(), StatusCode::OK);
}

#[tokio::test]
async fn organizations_reach_the_id_token_and_signup_opens_the_signup_screen() {
    let emulator = start(0).await;
    let pkce = pkce();
    let signup = authorize_with(&client(), &emulator, &pkce, &[("screen_hint", "signup")]).await;
    assert!(signup.text().await.unwrap().contains("Create your account"));

    for (organization, org_id, org_name) in [
        ("org_abc123", Some("org_abc123"), None),
        ("Acme", None, Some("acme")),
    ] {
        let back = sign_in_with(
            &client(),
            &emulator,
            &pkce,
            "member@example.com",
            &[("organization", organization)],
        )
        .await;
        let code = query_of(&back)["code"].clone();
        let tokens: Value = exchange(&emulator, &code, &pkce.verifier)
            .await
            .json()
            .await
            .unwrap();
        let claims = claims_unverified(tokens["id_token"].as_str().unwrap());
        if let Some(id) = org_id {
            assert_eq!(claims["org_id"], id);
        }
        if let Some(name) = org_name {
            assert_eq!(claims["org_name"], name);
            assert!(claims["org_id"].as_str().unwrap().starts_with("org_"));
        }
    }
}

#[tokio::test]
async fn management_api_requires_a_token_with_the_right_scope() {
    let emulator = start(3).await;
    let http = client();
    let anonymous = http
        .get(url(&emulator, "/api/v2/users"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["statusCode"], 401);
    assert_eq!(body["error"], "Unauthorized");
    assert!(body["message"].is_string());

    assert_eq!(
        api_get(&emulator, "bogus", "/api/v2/users").await.status(),
        StatusCode::UNAUTHORIZED
    );

    let narrow = management_token(&emulator, Some("update:users")).await;
    let forbidden = api_get(&emulator, &narrow, "/api/v2/users").await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    let body: Value = forbidden.json().await.unwrap();
    assert_eq!(body["errorCode"], "insufficient_scope");

    // A user's access token is not a Management API token.
    let pkce = pkce();
    let code = login(&emulator, &pkce, "user@example.com").await;
    let tokens: Value = exchange(&emulator, &code, &pkce.verifier)
        .await
        .json()
        .await
        .unwrap();
    let user_token = tokens["access_token"].as_str().unwrap();
    assert_eq!(
        api_get(&emulator, user_token, "/api/v2/users")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // Only the Management API audience is known.
    let wrong_audience = http
        .post(url(&emulator, "/oauth/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("audience", "https://elsewhere.example/api/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_audience.status(), StatusCode::FORBIDDEN);
    let body: Value = wrong_audience.json().await.unwrap();
    assert_eq!(body["error"], "access_denied");

    let token = management_token(&emulator, None).await;
    let ok = api_get(&emulator, &token, "/api/v2/users").await;
    assert_eq!(ok.status(), StatusCode::OK);
    let users: Value = ok.json().await.unwrap();
    assert_eq!(users.as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn users_page_with_totals_and_stop_at_the_1000_cap() {
    let emulator = start(1050).await;
    let token = management_token(&emulator, None).await;

    let mut seen = std::collections::HashSet::new();
    let mut last_updated = String::new();
    for page in 0..3 {
        let response = api_get(
            &emulator,
            &token,
            &format!(
                "/api/v2/users?page={page}&per_page=100&include_totals=true&sort=updated_at:1"
            ),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["start"], page * 100);
        assert_eq!(body["limit"], 100);
        assert_eq!(body["length"], 100);
        assert_eq!(body["total"], 1050);
        for user in body["users"].as_array().unwrap() {
            assert!(seen.insert(user["user_id"].as_str().unwrap().to_owned()));
            let updated = user["updated_at"].as_str().unwrap().to_owned();
            assert!(updated > last_updated, "sorted by updated_at ascending");
            last_updated = updated;
            assert_eq!(user["identities"][0]["provider"], "auth0");
        }
    }

    // Without `page`, at most 50 come back, as a bare array.
    let body: Value = api_get(&emulator, &token, "/api/v2/users?per_page=100")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body.as_array().unwrap().len(), 50);

    let last_allowed = api_get(&emulator, &token, "/api/v2/users?page=9&per_page=100").await;
    assert_eq!(last_allowed.status(), StatusCode::OK);
    let capped = api_get(&emulator, &token, "/api/v2/users?page=10&per_page=100").await;
    assert_eq!(capped.status(), StatusCode::BAD_REQUEST);
    let body: Value = capped.json().await.unwrap();
    assert_eq!(body["statusCode"], 400);
    assert_eq!(body["error"], "Bad Request");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("You can only page through the first 1000 records")
    );
    assert!(body["errorCode"].is_string());

    for bad in [
        "/api/v2/users?per_page=101&page=0",
        "/api/v2/users?page=abc",
        "/api/v2/users?include_totals=maybe",
        "/api/v2/users?sort=password:1",
        "/api/v2/users?q=updated_at:[yesterday%20TO%20*]&search_engine=v3",
        "/api/v2/users?q=%22%5B%7B&search_engine=v3",
        "/api/v2/users?bogus=1",
    ] {
        let response = api_get(&emulator, &token, bad).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["statusCode"], 400, "{bad}");
    }
}

#[tokio::test]
async fn search_by_updated_at_inclusive_and_exclusive_and_by_email() {
    let emulator = start(40).await;
    let token = management_token(&emulator, None).await;
    let all: Value = api_get(
        &emulator,
        &token,
        "/api/v2/users?page=0&per_page=100&sort=updated_at:1",
    )
    .await
    .json()
    .await
    .unwrap();
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 40);
    let pivot = all[9]["updated_at"].as_str().unwrap();

    let search = |q: String| {
        let emulator = emulator.clone();
        let token = token.clone();
        async move {
            let response = client()
                .get(url(&emulator, "/api/v2/users"))
                .bearer_auth(&token)
                .query(&[
                    ("q", q.as_str()),
                    ("search_engine", "v3"),
                    ("sort", "updated_at:1"),
                    ("include_totals", "true"),
                    ("page", "0"),
                    ("per_page", "100"),
                ])
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            response.json::<Value>().await.unwrap()
        }
    };
    let inclusive = search(format!("updated_at:[{pivot} TO *]")).await;
    assert_eq!(inclusive["total"], 31);
    assert_eq!(inclusive["users"][0]["updated_at"], pivot);
    let exclusive = search(format!("updated_at:{{{pivot} TO *]")).await;
    assert_eq!(exclusive["total"], 30);
    assert_eq!(exclusive["users"][0]["user_id"], all[10]["user_id"]);

    let by_email = search("email:\"ADMIN@example.com\"".to_owned()).await;
    assert_eq!(by_email["total"], 1);
    assert_eq!(by_email["users"][0]["name"], "Ada Admin");
    assert_eq!(
        by_email["users"][0]["app_metadata"]["roles"],
        json!(["admin"])
    );

    // A change moves the user past the watermark, as an incremental sync expects.
    let last = all[39]["updated_at"].as_str().unwrap();
    let first_id = all[0]["user_id"].as_str().unwrap();
    emulator
        .users()
        .update(
            first_id,
            quotebook::emulator::UserPatch {
                name: Some("Renamed".into()),
                ..Default::default()
            },
        )
        .unwrap();
    let changed = search(format!("updated_at:{{{last} TO *]")).await;
    assert_eq!(changed["total"], 1);
    assert_eq!(changed["users"][0]["name"], "Renamed");

    let descending: Value = api_get(
        &emulator,
        &token,
        "/api/v2/users?page=0&per_page=1&sort=updated_at:-1",
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(descending[0]["user_id"], first_id);
}

#[tokio::test]
async fn users_can_be_created_read_updated_and_deleted() {
    let emulator = start(0).await;
    let token = management_token(&emulator, None).await;
    let http = client();
    let created = http
        .post(url(&emulator, "/api/v2/users"))
        .bearer_auth(&token)
        .json(&json!({
            "connection": "Username-Password-Authentication",
            "email": "Grace@Example.com",
            "password": "irrelevant-here",
            "name": "Grace Hopper",
            "app_metadata": {"roles": ["editor"], "plan": "pro"},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let user: Value = created.json().await.unwrap();
    let id = user["user_id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("auth0|"));
    assert_eq!(user["email"], "grace@example.com");
    assert_eq!(
        user["app_metadata"],
        json!({"roles": ["editor"], "plan": "pro"})
    );
    let created_at = user["created_at"].as_str().unwrap();
    assert!(
        created_at.ends_with('Z') && created_at.len() == 24,
        "ISO 8601 with ms: {created_at}"
    );

    let duplicate = http
        .post(url(&emulator, "/api/v2/users"))
        .bearer_auth(&token)
        .json(&json!({"connection": "Username-Password-Authentication", "email": "grace@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(duplicate.status(), StatusCode::CONFLICT);
    let no_connection = http
        .post(url(&emulator, "/api/v2/users"))
        .bearer_auth(&token)
        .json(&json!({"email": "x@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_connection.status(), StatusCode::BAD_REQUEST);
    let bad_json = http
        .post(url(&emulator, "/api/v2/users"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), StatusCode::BAD_REQUEST);

    let encoded = id.replace('|', "%7C");
    let fetched: Value = api_get(&emulator, &token, &format!("/api/v2/users/{encoded}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["name"], "Grace Hopper");

    let patched = http
        .patch(url(&emulator, &format!("/api/v2/users/{encoded}")))
        .bearer_auth(&token)
        .json(&json!({"name": "Rear Admiral Hopper", "blocked": true, "app_metadata": {"plan": null}}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(patched["name"], "Rear Admiral Hopper");
    assert_eq!(patched["blocked"], true);
    assert_eq!(patched["app_metadata"], json!({"roles": ["editor"]}));
    assert!(patched["updated_at"].as_str().unwrap() > user["updated_at"].as_str().unwrap());
    let wrong_type = http
        .patch(url(&emulator, &format!("/api/v2/users/{encoded}")))
        .bearer_auth(&token)
        .json(&json!({"name": 42}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), StatusCode::BAD_REQUEST);

    let deleted = http
        .delete(url(&emulator, &format!("/api/v2/users/{encoded}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let gone = api_get(&emulator, &token, &format!("/api/v2/users/{encoded}")).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    let body: Value = gone.json().await.unwrap();
    assert_eq!(body["statusCode"], 404);
    assert_eq!(emulator.users().count(), 0);
}

async fn run_export(emulator: &Emulator, token: &str, body: Value) -> (Value, Vec<u8>) {
    let http = client();
    let created = http
        .post(url(emulator, "/api/v2/jobs/users-exports"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let job: Value = created.json().await.unwrap();
    assert_eq!(job["type"], "users_export");
    assert_eq!(job["status"], "pending");
    assert!(job["id"].as_str().unwrap().starts_with("job_"));
    let id = job["id"].as_str().unwrap().to_owned();

    let mut statuses = vec!["pending".to_owned()];
    let mut job = job;
    for _ in 0..200 {
        job = api_get(emulator, token, &format!("/api/v2/jobs/{id}"))
            .await
            .json()
            .await
            .unwrap();
        let status = job["status"].as_str().unwrap().to_owned();
        if statuses.last() != Some(&status) {
            statuses.push(status.clone());
        }
        if status == "completed" || status == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(statuses, ["pending", "processing", "completed"]);
    assert_eq!(job["percentage_done"], 100);
    let location = job["location"].as_str().unwrap();
    let file = http.get(location).send().await.unwrap();
    assert_eq!(file.status(), StatusCode::OK);
    let gz = file.bytes().await.unwrap();
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(gz.as_ref())
        .read_to_end(&mut text)
        .unwrap();
    (job, text)
}

#[tokio::test]
async fn export_job_produces_gzipped_ndjson_with_every_user() {
    let emulator = start(1234).await;
    let token = management_token(&emulator, None).await;
    let (job, text) = run_export(
        &emulator,
        &token,
        json!({
            "format": "json",
            "fields": [{"name": "user_id"}, {"name": "email"}, {"name": "updated_at", "export_as": "changed"}, {"name": "app_metadata.roles", "export_as": "roles"}],
        }),
    )
    .await;
    assert_eq!(job["format"], "json");
    let text = String::from_utf8(text).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1234);
    let ids: std::collections::HashSet<_> = lines
        .iter()
        .map(|l| l["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1234);
    assert!(
        lines
            .iter()
            .all(|l| l["email"].is_string() && l["changed"].is_string())
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["roles"] == json!(["admin"]))
            .count(),
        1
    );

    let (_, csv) = run_export(
        &emulator,
        &token,
        json!({"format": "csv", "limit": 10, "fields": [{"name": "email"}, {"name": "name"}]}),
    )
    .await;
    let csv = String::from_utf8(csv).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "email,name");
    assert_eq!(rows.len(), 11);

    // Locations are signed: a tampered one is refused.
    let location = format!(
        "{}exports/nope.json.gz?expires=99999999999&sig=abc",
        emulator.issuer()
    );
    assert_eq!(
        client().get(location).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let missing = api_get(&emulator, &token, "/api/v2/jobs/job_missing").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn rate_limit_headers_and_429_when_the_budget_is_spent() {
    let emulator = start(2).await;
    let token = management_token(&emulator, None).await;
    emulator.faults().set_rate_limit(Some(3));
    let mut statuses = Vec::new();
    let mut saw_429 = None;
    for _ in 0..10 {
        let response = api_get(&emulator, &token, "/api/v2/users").await;
        let headers = response.headers();
        assert_eq!(headers["x-ratelimit-limit"], "3");
        let remaining: u64 = headers["x-ratelimit-remaining"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(remaining <= 2);
        let reset: i64 = headers["x-ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let now = chrono::Utc::now().timestamp();
        assert!(
            reset >= now && reset <= now + 2,
            "reset is UNIX seconds: {reset}"
        );
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS && saw_429.is_none() {
            saw_429 = Some(response.json::<Value>().await.unwrap());
        }
    }
    let body = saw_429.expect("a 429 within 10 quick requests at 3/s");
    assert_eq!(body["statusCode"], 429);
    assert_eq!(body["error"], "Too Many Requests");
    assert!(statuses.iter().filter(|s| **s == StatusCode::OK).count() <= 6);

    emulator.faults().set_rate_limit(None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        api_get(&emulator, &token, "/api/v2/users").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn fault_switches_fail_hang_count_and_shut_down() {
    let emulator = start(2).await;
    let token = management_token(&emulator, None).await;
    let before = emulator.faults().management_requests();

    emulator.faults().fail_next(2, 503);
    let failed = api_get(&emulator, &token, "/api/v2/users").await;
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(failed.headers().contains_key("x-ratelimit-remaining"));
    let body: Value = failed.json().await.unwrap();
    assert_eq!(body["statusCode"], 503);
    assert_eq!(
        api_get(&emulator, &token, "/api/v2/users").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        api_get(&emulator, &token, "/api/v2/users").await.status(),
        StatusCode::OK
    );

    emulator.faults().fail_next(1, 429);
    let limited = api_get(&emulator, &token, "/api/v2/users").await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()["x-ratelimit-remaining"], "0");
    assert!(limited.headers().contains_key("x-ratelimit-reset"));

    emulator.faults().hang_next(1, Duration::from_secs(5));
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let hung = impatient
        .get(url(&emulator, "/api/v2/users"))
        .bearer_auth(&token)
        .send()
        .await;
    assert!(hung.is_err_and(|e| e.is_timeout()));

    emulator.faults().set_latency(Duration::from_millis(200));
    let started = std::time::Instant::now();
    assert_eq!(
        api_get(&emulator, &token, "/api/v2/users").await.status(),
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    emulator.faults().set_latency(Duration::ZERO);

    assert_eq!(emulator.faults().management_requests() - before, 6);

    emulator.shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let down = reqwest::Client::new()
        .get(url(&emulator, "/.well-known/jwks.json"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(
        down.is_err_and(|e| e.is_connect()),
        "after shutdown, connections are refused"
    );
}

#[tokio::test]
async fn a_key_file_keeps_the_signing_key_across_restarts() {
    let path = std::env::temp_dir().join(format!(
        "qb-emulator-{}.pem",
        crate::helpers::random_suffix()
    ));
    let config = EmulatorConfig {
        key_file: Some(path.clone()),
        ..EmulatorConfig::for_tests()
    };
    let jwks = |emulator: Emulator| async move {
        client()
            .get(url(&emulator, "/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let first = jwks(Emulator::start(config.clone()).await.unwrap()).await;
    let second = jwks(Emulator::start(config).await.unwrap()).await;
    assert_eq!(first, second);
    let fresh = jwks(Emulator::start(EmulatorConfig::for_tests()).await.unwrap()).await;
    assert_ne!(first, fresh);
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn a_users_file_seeds_auth0_shaped_users() {
    let path =
        std::env::temp_dir().join(format!("qb-users-{}.json", crate::helpers::random_suffix()));
    std::fs::write(
        &path,
        json!([
            {"user_id": "auth0|imported1", "email": "Imported@Example.com", "name": "Imported One",
             "app_metadata": {"roles": ["admin"], "plan": "team"}, "updated_at": "2024-01-02T03:04:05.678Z",
             "created_at": "2024-01-01T00:00:00.000Z"},
            {"email": "second@example.com"}
        ])
        .to_string(),
    )
    .unwrap();
    let emulator = Emulator::start(EmulatorConfig {
        users_file: Some(path.clone()),
        ..EmulatorConfig::for_tests()
    })
    .await
    .unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(emulator.users().count(), 2);
    let token = management_token(&emulator, None).await;
    let user: Value = api_get(&emulator, &token, "/api/v2/users/auth0%7Cimported1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(user["email"], "imported@example.com");
    assert_eq!(user["updated_at"], "2024-01-02T03:04:05.678Z");
    assert_eq!(
        user["app_metadata"],
        json!({"roles": ["admin"], "plan": "team"})
    );

    let broken =
        std::env::temp_dir().join(format!("qb-users-{}.json", crate::helpers::random_suffix()));
    std::fs::write(&broken, "{not a list").unwrap();
    let err = Emulator::start(EmulatorConfig {
        users_file: Some(broken.clone()),
        ..EmulatorConfig::for_tests()
    })
    .await
    .err()
    .expect("a broken users file is an error");
    let _ = std::fs::remove_file(&broken);
    assert!(format!("{err:#}").contains("JSON array"), "{err:#}");
}
