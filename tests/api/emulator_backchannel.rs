//! The emulator's back-channel logout (issue 17, item 6): Auth0's logout token shape, the `sid`
//! shared by a single sign-on session's ID tokens and its logout tokens, and only the
//! initiators the application subscribed to.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use poem::{
    EndpointExt, Route, Server, handler,
    listener::{Acceptor, Listener, TcpListener},
    post,
    web::{Data, Form},
};
use quotebook::emulator::{BackchannelLogout, EmulatorConfig, Initiator, Initiators};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{client, management_token, signed_in_at, spawn_app_against};

/// Logout tokens received by a stand-in application.
type Received = Arc<Mutex<Vec<String>>>;

#[derive(serde::Deserialize)]
struct LogoutForm {
    logout_token: String,
}

#[handler]
fn receive(Data(received): Data<&Received>, Form(form): Form<LogoutForm>) {
    received.lock().unwrap().push(form.logout_token);
}

/// A stand-in Back-Channel Logout URI that keeps what it is sent.
async fn receiver() -> (String, Received) {
    let received = Received::default();
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let port = acceptor.local_addr()[0].as_socket_addr().unwrap().port();
    let app = Route::new()
        .at("/logout", post(receive))
        .data(received.clone());
    tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
    (format!("http://127.0.0.1:{port}/logout"), received)
}

fn decode(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[tokio::test]
async fn logout_tokens_are_shaped_as_auth0_sends_them_and_name_the_id_tokens_sid() {
    let app = spawn_app_against(EmulatorConfig::for_tests(), &[]).await;
    let emulator = app.emulator();
    let (url, received) = receiver().await;
    emulator.set_backchannel_logout(Some(BackchannelLogout {
        url,
        initiators: Initiators::default(),
    }));
    let discovery: Value = client()
        .get(format!(
            "{}.well-known/openid-configuration",
            emulator.issuer()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["backchannel_logout_supported"], true);
    assert_eq!(discovery["backchannel_logout_session_supported"], true);

    // Two sign-ins in one browser are one single sign-on session: one sid.
    let browser = app.signed_in_client("shaped@example.com").await;
    let sub = app.sub_of("shaped@example.com").await;
    let first = app.sids_of(&sub).await;
    app.end_all_sessions().await;
    let again = app.login_with(&browser, "shaped@example.com").await;
    assert_eq!(again.status(), StatusCode::SEE_OTHER);
    assert_eq!(app.sids_of(&sub).await, first, "the same sid");
    assert_eq!(emulator.session_ids_of(&sub), first);

    let logout = browser
        .get(format!(
            "{}v2/logout?client_id={}",
            emulator.issuer(),
            quotebook::config::DEV_CLIENT_ID
        ))
        .send()
        .await
        .unwrap();
    assert!(logout.status().is_redirection());
    let deliveries = emulator
        .wait_for_backchannel_deliveries(1, Duration::from_secs(10))
        .await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].outcome, Ok(200));
    assert!(
        emulator.session_ids_of(&sub).is_empty(),
        "the session ended"
    );

    let tokens = received.lock().unwrap().clone();
    assert_eq!(tokens.len(), 1);
    let parts: Vec<&str> = tokens[0].split('.').collect();
    assert_eq!(parts.len(), 3);
    let header = decode(parts[0]);
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "JWT");
    assert!(header["kid"].is_string());
    let claims = decode(parts[1]);
    assert_eq!(claims["iss"], emulator.issuer_identifier());
    assert_eq!(claims["aud"], quotebook::config::DEV_CLIENT_ID);
    assert_eq!(claims["sub"], sub);
    assert_eq!(claims["sid"], first[0]);
    assert_eq!(
        claims["events"],
        serde_json::json!({"http://schemas.openid.net/event/backchannel-logout": {}})
    );
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    let iat = claims["iat"].as_i64().unwrap();
    assert!((iat - chrono::Utc::now().timestamp()).abs() < 60);
    assert_eq!(claims["exp"].as_i64().unwrap() - iat, 120);
    assert!(claims.get("nonce").is_none());
}

#[tokio::test]
async fn only_the_initiators_the_application_subscribed_to_send_logout_tokens() {
    let app = spawn_app_against(EmulatorConfig::for_tests(), &[]).await;
    let emulator = app.emulator();
    // Auth0's default subscription: rp-logout and idp-logout only.
    emulator.set_backchannel_logout(Some(BackchannelLogout {
        url: app.url("/auth/backchannel-logout"),
        initiators: Initiators::default(),
    }));
    let deleted = app.signed_in_client("deleted@example.com").await;
    let sub = app.sub_of("deleted@example.com").await;
    let token = management_token(emulator, None).await;
    let gone = client()
        .delete(format!(
            "{}api/v2/users/{}",
            emulator.issuer(),
            url::form_urlencoded::byte_serialize(sub.as_bytes()).collect::<String>()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    assert!(
        emulator.session_ids_of(&sub).is_empty(),
        "its session ended at the tenant"
    );

    // A later logout (subscribed) is delivered; had the deletion sent one, it would be first.
    let other = app.signed_in_client("logs-out@example.com").await;
    other
        .get(format!("{}v2/logout", emulator.issuer()))
        .send()
        .await
        .unwrap();
    let deliveries = emulator
        .wait_for_backchannel_deliveries(1, Duration::from_secs(10))
        .await;
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0].initiator, Initiator::RpLogout);
    assert!(
        signed_in_at(&app.address, &deleted).await,
        "not told of the deletion"
    );
    assert!(!signed_in_at(&app.address, &other).await);

    // Subscribed to account-deleted: a deletion is delivered.
    emulator.set_backchannel_logout(Some(BackchannelLogout {
        url: app.url("/auth/backchannel-logout"),
        initiators: Initiators::Custom(vec![Initiator::AccountDeleted]),
    }));
    let next = app.signed_in_client("next@example.com").await;
    let next_sub = app.sub_of("next@example.com").await;
    emulator.delete_user(&next_sub);
    let deliveries = emulator
        .wait_for_backchannel_deliveries(2, Duration::from_secs(10))
        .await;
    assert_eq!(deliveries.len(), 2, "{deliveries:?}");
    assert_eq!(deliveries[1].initiator, Initiator::AccountDeleted);
    assert!(!signed_in_at(&app.address, &next).await);
}

#[tokio::test]
async fn a_back_channel_uri_that_fails_is_recorded_and_logging_out_still_works() {
    let app = spawn_app_against(EmulatorConfig::for_tests(), &[]).await;
    let emulator = app.emulator();
    emulator.set_backchannel_logout(Some(BackchannelLogout {
        url: app.url("/not-the-back-channel-uri"),
        initiators: Initiators::All,
    }));
    let browser = app.signed_in_client("unlucky@example.com").await;
    let logout = browser
        .get(format!("{}v2/logout", emulator.issuer()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        logout.status(),
        StatusCode::OK,
        "the emulator's signed-out page"
    );
    let deliveries = emulator
        .wait_for_backchannel_deliveries(1, Duration::from_secs(10))
        .await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].outcome, Ok(404), "Auth0 would log fslo");
}
