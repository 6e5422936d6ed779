//! A small W3C WebDriver client over reqwest, driving Debian's chromedriver + headless Chromium.
//!
//! Just the commands the browser tests use; no extra crates (the usual WebDriver clients pull a
//! second TLS stack and HTTP generation into the build).

use std::{
    net::TcpListener,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use serde_json::{Value, json};

const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

pub type Result<T> = std::result::Result<T, String>;

/// Where the browser binaries are, or why the tests cannot run.
pub fn find_browser() -> std::result::Result<(PathBuf, PathBuf), String> {
    let chromium = [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    let driver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    match (chromium, driver) {
        (Some(c), Some(d)) => Ok((c, d)),
        _ => Err(
            "Chromium and chromedriver are not installed: on Debian/Ubuntu run \
                  `apt-get install chromium chromium-driver`"
                .into(),
        ),
    }
}

/// A chromedriver process with one browser session. On drop the whole process group goes:
/// killing chromedriver alone would leave its Chromium processes running.
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    base: String,
    session: String,
    profile: std::path::PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(group) = i32::try_from(self.driver.id()) {
            // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

#[derive(Debug, Clone)]
pub struct Element(String);

impl Browser {
    pub async fn start() -> Result<Self> {
        let (chromium, driver_path) = find_browser()?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let driver = Command::new(driver_path)
            .arg(format!("--port={port}"))
            // Its own process group, which Chromium joins, so drop can end them all.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start chromedriver: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        let base = format!("http://127.0.0.1:{port}");
        let profile = std::env::temp_dir().join(format!("quotebook-chromium-{port}"));
        let mut browser = Self {
            driver,
            http,
            base,
            session: String::new(),
            profile: profile.clone(),
        };
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    // Root needs --no-sandbox; the closed network needs the background
                    // services off.
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", "--window-size=1100,900",
                        format!("--user-data-dir={}", profile.display()),
                    ]
                }
            }}
        });
        let started = Instant::now();
        let created = loop {
            match browser
                .http
                .post(format!("{}/session", browser.base))
                .json(&capabilities)
                .send()
                .await
            {
                Ok(response) => break response.json::<Value>().await.map_err(|e| e.to_string())?,
                Err(_) if started.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => return Err(format!("chromedriver did not answer: {err}")),
            }
        };
        browser.session = created["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no browser session: {created}"))?
            .to_owned();
        Ok(browser)
    }

    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}/session/{}{}", self.base, self.session, path);
        let request = self.http.request(method, url);
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let value: Value = response.json().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("webdriver {path}: {}", value["value"]["message"]));
        }
        Ok(value["value"].clone())
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .map(|_| ())
    }

    /// The browser's Back button.
    pub async fn back(&self) -> Result<()> {
        self.command(reqwest::Method::POST, "/back", Some(json!({})))
            .await
            .map(|_| ())
    }

    /// Opens a new tab (same profile, so the same cookies) and returns its handle; the current
    /// tab stays the one commands go to.
    pub async fn new_tab(&self) -> Result<String> {
        let value = self
            .command(
                reqwest::Method::POST,
                "/window/new",
                Some(json!({ "type": "tab" })),
            )
            .await?;
        value["handle"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("no window handle: {value}"))
    }

    /// The current tab's handle.
    pub async fn current_tab(&self) -> Result<String> {
        let value = self.command(reqwest::Method::GET, "/window", None).await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    pub async fn switch_to(&self, handle: &str) -> Result<()> {
        self.command(
            reqwest::Method::POST,
            "/window",
            Some(json!({ "handle": handle })),
        )
        .await
        .map(|_| ())
    }

    pub async fn current_url(&self) -> Result<String> {
        let value = self.command(reqwest::Method::GET, "/url", None).await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    pub async fn find(&self, css: &str) -> Result<Element> {
        let value = self
            .command(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await?;
        value[ELEMENT_KEY]
            .as_str()
            .map(|id| Element(id.to_owned()))
            .ok_or_else(|| format!("no element {css}"))
    }

    /// Waits until `css` matches an element (htmx swaps are asynchronous).
    pub async fn wait_for(&self, css: &str) -> Result<Element> {
        let started = Instant::now();
        loop {
            match self.find(css).await {
                Ok(element) => return Ok(element),
                Err(_) if started.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => return Err(format!("waited 10 s for {css}: {err}")),
            }
        }
    }

    /// Waits until a script returns `true`.
    pub async fn wait_until(&self, what: &str, script: &str) -> Result<()> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if self.execute(script).await? == json!(true) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("waited 20 s for {what}"))
    }

    pub async fn click(&self, element: &Element) -> Result<()> {
        self.command(
            reqwest::Method::POST,
            &format!("/element/{}/click", element.0),
            Some(json!({})),
        )
        .await
        .map(|_| ())
    }

    pub async fn clear(&self, element: &Element) -> Result<()> {
        self.command(
            reqwest::Method::POST,
            &format!("/element/{}/clear", element.0),
            Some(json!({})),
        )
        .await
        .map(|_| ())
    }

    pub async fn type_text(&self, element: &Element, text: &str) -> Result<()> {
        self.command(
            reqwest::Method::POST,
            &format!("/element/{}/value", element.0),
            Some(json!({ "text": text })),
        )
        .await
        .map(|_| ())
    }

    pub async fn text(&self, element: &Element) -> Result<String> {
        let value = self
            .command(
                reqwest::Method::GET,
                &format!("/element/{}/text", element.0),
                None,
            )
            .await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    pub async fn execute(&self, script: &str) -> Result<Value> {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    pub async fn accept_alert(&self) -> Result<()> {
        let started = Instant::now();
        loop {
            match self
                .command(reqwest::Method::POST, "/alert/accept", Some(json!({})))
                .await
            {
                Ok(_) => return Ok(()),
                Err(_) if started.elapsed() < Duration::from_secs(5) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }

    pub async fn source(&self) -> Result<String> {
        let value = self.command(reqwest::Method::GET, "/source", None).await?;
        Ok(value.as_str().unwrap_or_default().to_owned())
    }

    /// Saves a PNG screenshot to `path`.
    pub async fn screenshot(&self, path: &std::path::Path) -> Result<()> {
        let value = self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap_or_default())
            .map_err(|e| e.to_string())?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        std::fs::write(path, png).map_err(|e| e.to_string())
    }
}
