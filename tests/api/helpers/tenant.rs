//! The emulated tenant's Management API, used as an administrator (or Auth0's dashboard) uses
//! it: tests and benchmarks change users the way real changes happen, so the emulator's Event
//! Stream and Log Stream report them.

use anyhow::Context;
use serde_json::{Value, json};

/// A Management API client with a token for the emulator's registered application (all the
/// user scopes). Cheap to clone.
#[derive(Clone)]
pub struct Tenant {
    http: reqwest::Client,
    issuer: url::Url,
    token: std::sync::Arc<String>,
}

impl Tenant {
    /// A token by client credentials from the tenant at `issuer` (`http://HOST:PORT/`).
    pub async fn of(issuer: url::Url) -> anyhow::Result<Self> {
        let http = reqwest::Client::new();
        let token: Value = http
            .post(issuer.join("oauth/token")?)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", quotebook::config::DEV_CLIENT_ID),
                ("client_secret", quotebook::config::DEV_CLIENT_SECRET),
                ("audience", &format!("{issuer}api/v2/")),
            ])
            .send()
            .await?
            .json()
            .await?;
        let token = token["access_token"]
            .as_str()
            .context("the token endpoint gave no access token")?;
        Ok(Self {
            token: std::sync::Arc::new(token.to_owned()),
            http,
            issuer,
        })
    }

    fn user_url(&self, user_id: &str) -> anyhow::Result<url::Url> {
        let mut url = self.issuer.join("api/v2/users")?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("the issuer cannot hold a path"))?
            .push(user_id);
        Ok(url)
    }

    /// `POST /api/v2/users` in the database connection; the user created.
    pub async fn create(&self, email: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(self.issuer.join("api/v2/users")?)
            .bearer_auth(self.token.as_str())
            .json(&json!({"connection": "Username-Password-Authentication", "email": email}))
            .send()
            .await?;
        anyhow::ensure!(response.status() == 201, "POST {}", response.status());
        Ok(response.json().await?)
    }

    /// `PATCH /api/v2/users/{id}`; the user as updated.
    pub async fn patch(&self, user_id: &str, body: Value) -> anyhow::Result<Value> {
        let response = self
            .http
            .patch(self.user_url(user_id)?)
            .bearer_auth(self.token.as_str())
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(response.status() == 200, "PATCH {}", response.status());
        Ok(response.json().await?)
    }

    /// `DELETE /api/v2/users/{id}`.
    pub async fn delete(&self, user_id: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .delete(self.user_url(user_id)?)
            .bearer_auth(self.token.as_str())
            .send()
            .await?;
        anyhow::ensure!(response.status() == 204, "DELETE {}", response.status());
        Ok(())
    }
}
