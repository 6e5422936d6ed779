//! OpenID Connect Back-Channel Logout (issue 17, items 3, 4 and 6): the emulator posts logout
//! tokens to the app when a single sign-on session ends (a logout at the provider, a blocked or
//! deleted user), the app ends exactly the sessions they name, on every instance at once, and
//! anything that is not a valid, first-seen logout token gets a 400 and changes nothing.

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use quotebook::emulator::{Emulator, EmulatorConfig, Initiator};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, client, management_token, post_logout_token, signed_in_at, spawn_app,
};

const DELIVERY_WAIT: Duration = Duration::from_secs(10);

async fn session_rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// A valid logout token from the app's emulator for `sub`'s provider session `sid`.
fn logout_token(app: &TestApp, sub: &str, sid: &str) -> String {
    let emulator = app.emulator();
    emulator.sign("JWT", &emulator.logout_token_claims(sub, sid))
}

#[tokio::test]
async fn a_logout_at_the_provider_ends_that_browsers_session_and_no_other() {
    let app = spawn_app().await;
    let laptop = app.signed_in_client("two-devices@example.com").await;
    let phone = app.signed_in_client("two-devices@example.com").await;
    let bystander = app.signed_in_client("bystander@example.com").await;
    let sub = app.sub_of("two-devices@example.com").await;
    let before = app.sids_of(&sub).await;
    assert_eq!(
        before.len(),
        2,
        "each browser is a provider session of its own"
    );
    assert_ne!(before[0], before[1]);

    // The laptop logs out at the tenant itself (say, from another application of the
    // tenant): the app hears of it only through the back channel.
    let emulator = app.emulator();
    let logout = laptop
        .get(format!(
            "{}v2/logout?client_id={}&returnTo={}/",
            emulator.issuer(),
            quotebook::config::DEV_CLIENT_ID,
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert!(logout.status().is_redirection(), "{}", logout.status());
    let deliveries = emulator
        .wait_for_backchannel_deliveries(1, DELIVERY_WAIT)
        .await;
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0].initiator, Initiator::RpLogout);
    assert_eq!(deliveries[0].sub, sub);
    assert_eq!(deliveries[0].outcome, Ok(200), "the app accepted it");

    assert!(
        !signed_in_at(&app.address, &laptop).await,
        "its session ended"
    );
    assert!(
        signed_in_at(&app.address, &phone).await,
        "another session of theirs stays"
    );
    assert!(signed_in_at(&app.address, &bystander).await);
    let after = app.sids_of(&sub).await;
    assert_eq!(after.len(), 1);
    assert!(before.contains(&after[0]) && after[0] != deliveries[0].sid);
}

/// Blocks (`{"blocked": true}`) or deletes the user through the emulator's Management API.
async fn at_the_management_api(app: &TestApp, sub: &str, change: &str) {
    let emulator = app.emulator();
    let token = management_token(emulator, None).await;
    let url = format!(
        "{}api/v2/users/{}",
        emulator.issuer(),
        url::form_urlencoded::byte_serialize(sub.as_bytes()).collect::<String>()
    );
    let request = match change {
        "block" => client().patch(url).json(&json!({"blocked": true})),
        _ => client().delete(url),
    };
    let response = request.bearer_auth(token).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

#[tokio::test]
async fn a_user_blocked_or_deleted_at_the_provider_is_signed_out_everywhere_at_once() {
    for change in ["block", "delete"] {
        let app = spawn_app().await;
        let email = format!("{change}-me@example.com");
        let devices = [
            app.signed_in_client(&email).await,
            app.signed_in_client(&email).await,
        ];
        let bystander = app.signed_in_client("bystander@example.com").await;
        let sub = app.sub_of(&email).await;

        at_the_management_api(&app, &sub, change).await;

        let deliveries = app
            .emulator()
            .wait_for_backchannel_deliveries(2, DELIVERY_WAIT)
            .await;
        let initiator = match change {
            "block" => Initiator::AccountDeactivated,
            _ => Initiator::AccountDeleted,
        };
        assert_eq!(
            deliveries.len(),
            2,
            "{change}: one per session, {deliveries:?}"
        );
        for delivery in &deliveries {
            assert_eq!(delivery.initiator, initiator);
            assert_eq!(delivery.outcome, Ok(200), "{change}");
        }
        for device in &devices {
            assert!(!signed_in_at(&app.address, device).await, "{change}");
        }
        assert!(signed_in_at(&app.address, &bystander).await, "{change}");
        assert!(app.sids_of(&sub).await.is_empty(), "{change}");
    }
}

/// Well under the one second an instance may otherwise serve a session from memory.
const ANNOUNCED_WITHIN: Duration = Duration::from_millis(250);

#[tokio::test]
async fn a_logout_token_reaches_every_instance_at_once() {
    let app = spawn_app().await;
    let (other, _stop_other) = app.another_instance().await;
    for round in 0..10 {
        let email = format!("roaming-{round}@example.com");
        let browser = app.signed_in_client(&email).await;
        let sub = app.sub_of(&email).await;
        let sid = app.sids_of(&sub).await.remove(0);
        // Both instances have just read the session, so both remember it.
        assert!(signed_in_at(&app.address, &browser).await);
        assert!(signed_in_at(&other, &browser).await);

        let answer = post_logout_token(&app.address, &logout_token(&app, &sub, &sid)).await;
        assert_eq!(answer.status(), StatusCode::OK, "round {round}");
        let answered = std::time::Instant::now();
        assert!(
            !signed_in_at(&app.address, &browser).await,
            "round {round}: the instance that ended it forgot it before answering"
        );
        // The other instance forgets it when Postgres announces the deletion: a request racing
        // that announcement by a few milliseconds is concurrent with the logout, any later one
        // is signed out.
        while signed_in_at(&other, &browser).await {
            assert!(
                answered.elapsed() < ANNOUNCED_WITHIN,
                "round {round}: the other instance still served the session"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[tokio::test]
async fn a_logout_token_with_only_a_sub_ends_every_session_of_that_person() {
    let app = spawn_app().await;
    let devices = [
        app.signed_in_client("sub-only@example.com").await,
        app.signed_in_client("sub-only@example.com").await,
    ];
    let bystander = app.signed_in_client("bystander@example.com").await;
    let sub = app.sub_of("sub-only@example.com").await;
    let emulator = app.emulator();
    let mut claims = emulator.logout_token_claims(&sub, "unused");
    claims.as_object_mut().unwrap().remove("sid");
    let answer = post_logout_token(&app.address, &emulator.sign("logout+jwt", &claims)).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["cache-control"], "no-store");
    assert!(answer.text().await.unwrap().is_empty());
    for device in &devices {
        assert!(!signed_in_at(&app.address, device).await);
    }
    assert!(signed_in_at(&app.address, &bystander).await);

    // A token naming a session that has already ended succeeds silently (section 2.7).
    let again = emulator.logout_token_claims(&sub, "already-gone");
    let answer = post_logout_token(&app.address, &emulator.sign("JWT", &again)).await;
    assert_eq!(answer.status(), StatusCode::OK);
}

fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// HS256 with the client secret: what an attacker who knows no key would try if the app took
/// any algorithm the token names.
fn hs256(claims: &Value, secret: &str) -> String {
    use hmac::{Hmac, Mac};
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "typ": "JWT"}).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// The ID token the person signed in with, as the session keeps it.
async fn id_token_of(app: &TestApp, sub: &str) -> String {
    let user: String = sqlx::query_scalar(
        "SELECT data -> 'data' ->> 'user' FROM sessions WHERE user_id = $1 LIMIT 1",
    )
    .bind(sub)
    .fetch_one(&app.db)
    .await
    .unwrap();
    let user: Value = serde_json::from_str(&user).unwrap();
    user["id_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn anything_but_a_valid_unused_logout_token_gets_a_400_and_changes_nothing() {
    let app = spawn_app().await;
    let browser = app.signed_in_client("target@example.com").await;
    let sub = app.sub_of("target@example.com").await;
    let sid = app.sids_of(&sub).await.remove(0);
    let emulator = app.emulator();
    let good = emulator.logout_token_claims(&sub, &sid);
    let now = chrono::Utc::now().timestamp();
    let changed = |name: &str, value: Value| {
        let mut claims = good.clone();
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value;
        }
        emulator.sign("JWT", &claims)
    };
    let stranger = Emulator::start(EmulatorConfig::for_tests()).await.unwrap();

    let bad_tokens: Vec<(&str, String)> = vec![
        ("not a JWT", "not-a-jwt".to_owned()),
        ("five parts (JWE)", "a.b.c.d.e".to_owned()),
        (
            "alg none",
            unsigned(&json!({"alg": "none", "typ": "JWT"}), &good),
        ),
        (
            "HS256 with the client secret",
            hs256(&good, quotebook::config::DEV_CLIENT_SECRET),
        ),
        ("another key", stranger.sign("JWT", &good)),
        ("a corrupted signature", {
            let token = emulator.sign("JWT", &good);
            let (rest, signature) = token.rsplit_once('.').unwrap();
            let mut bytes = URL_SAFE_NO_PAD.decode(signature).unwrap();
            bytes[0] ^= 1;
            format!("{rest}.{}", URL_SAFE_NO_PAD.encode(bytes))
        }),
        ("typ at+jwt", emulator.sign("at+jwt", &good)),
        (
            "another issuer",
            changed("iss", json!("https://evil.example/")),
        ),
        ("another audience", changed("aud", json!("another-app"))),
        ("no iat", changed("iat", Value::Null)),
        ("iat in the future", changed("iat", json!(now + 600))),
        (
            "too old",
            emulator.sign("JWT", &{
                let mut claims = good.clone();
                claims["iat"] = json!(now - 600);
                claims.as_object_mut().unwrap().remove("exp");
                claims
            }),
        ),
        ("expired", changed("exp", json!(now - 120))),
        ("no events", changed("events", Value::Null)),
        (
            "another event",
            changed(
                "events",
                json!({"http://schemas.openid.net/event/other": {}}),
            ),
        ),
        ("a nonce", changed("nonce", json!("n-1"))),
        ("no jti", changed("jti", Value::Null)),
        ("neither sid nor sub", {
            let mut claims = good.clone();
            claims.as_object_mut().unwrap().remove("sid");
            claims.as_object_mut().unwrap().remove("sub");
            emulator.sign("JWT", &claims)
        }),
        ("a NUL in sid", changed("sid", json!("s\u{0}1"))),
        ("the ID token", id_token_of(&app, &sub).await),
    ];
    for (what, token) in &bad_tokens {
        let answer = post_logout_token(&app.address, token).await;
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{what}");
        assert_eq!(answer.headers()["cache-control"], "no-store", "{what}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{what}");
        assert!(
            body["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{what}"
        );
    }

    let endpoint = app.url("/auth/backchannel-logout");
    let malformed: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("no body", client().post(&endpoint)),
        (
            "no logout_token",
            client().post(&endpoint).form(&[("x", "y")]),
        ),
        (
            "an empty logout_token",
            client().post(&endpoint).form(&[("logout_token", "")]),
        ),
        (
            "logout_token twice",
            client()
                .post(&endpoint)
                .form(&[("logout_token", "a.b.c"), ("logout_token", "d.e.f")]),
        ),
        (
            "JSON instead of a form",
            client()
                .post(&endpoint)
                .json(&json!({"logout_token": emulator.sign("JWT", &good)})),
        ),
    ];
    for (what, request) in malformed {
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{what}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{what}");
    }
    let huge = client()
        .post(&endpoint)
        .form(&[("logout_token", "x".repeat(200_000))])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        app.client
            .get(app.url("/auth/backchannel-logout"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::METHOD_NOT_ALLOWED
    );

    // Nothing changed: the session lives, and the jti every bad token carried is still unused.
    assert!(signed_in_at(&app.address, &browser).await);
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM logout_tokens_seen")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(seen, 0);
    let valid = emulator.sign("JWT", &good);
    let answer = post_logout_token(&app.address, &valid).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(!signed_in_at(&app.address, &browser).await);

    // Replayed: refused, here and on another instance (the memory of used tokens is shared).
    let again = app.signed_in_client("target@example.com").await;
    let answer = post_logout_token(&app.address, &valid).await;
    assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
    let body: Value = answer.json().await.unwrap();
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("already used"),
        "{body}"
    );
    let (other, _stop_other) = app.another_instance().await;
    assert_eq!(
        post_logout_token(&other, &valid).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert!(signed_in_at(&app.address, &again).await);
    assert_eq!(session_rows(&app).await, 1);
}

#[tokio::test]
async fn a_logout_token_signed_with_a_rotated_key_is_accepted() {
    let app = spawn_app().await;
    let browser = app.signed_in_client("rotated@example.com").await;
    let sub = app.sub_of("rotated@example.com").await;
    let sid = app.sids_of(&sub).await.remove(0);
    app.emulator().rotate_signing_key().await.unwrap();
    let answer = post_logout_token(&app.address, &logout_token(&app, &sub, &sid)).await;
    assert_eq!(answer.status(), StatusCode::OK);
    assert!(!signed_in_at(&app.address, &browser).await);
}

#[tokio::test]
async fn a_token_the_app_cannot_check_while_the_provider_is_down_is_a_503_that_changes_nothing() {
    let app = spawn_app().await;
    let browser = app.signed_in_client("unverifiable@example.com").await;
    let sub = app.sub_of("unverifiable@example.com").await;
    let sid = app.sids_of(&sub).await.remove(0);
    let emulator = app.emulator();
    emulator.rotate_signing_key().await.unwrap();
    let token = logout_token(&app, &sub, &sid);
    emulator.shutdown();
    // Signed with a key the app has not seen, and the provider's keys cannot be fetched.
    let answer = post_logout_token(&app.address, &token).await;
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(signed_in_at(&app.address, &browser).await);
}

#[tokio::test]
async fn back_channel_logouts_are_counted() {
    let app = spawn_app().await;
    app.signed_in_client("counted@example.com").await;
    let sub = app.sub_of("counted@example.com").await;
    let sid = app.sids_of(&sub).await.remove(0);
    let rejected = post_logout_token(&app.address, "not-a-jwt").await;
    assert_eq!(rejected.status(), StatusCode::BAD_REQUEST);
    let ended = post_logout_token(&app.address, &logout_token(&app, &sub, &sid)).await;
    assert_eq!(ended.status(), StatusCode::OK);
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The recorder is shared by every test in this process: the counters exist and moved.
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{metrics}"))
    };
    assert!(value(r#"backchannel_logouts_total{outcome="rejected"}"#) >= 1.0);
    assert!(value(r#"backchannel_logouts_total{outcome="ended"}"#) >= 1.0);
    assert!(value(r#"sessions_revoked_total{reason="backchannel_logout"}"#) >= 1.0);
    value(r#"sessions_revoked_total{reason="blocked_or_deleted"}"#);
}
