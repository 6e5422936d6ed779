//! Test harness: the real app on port 0 against its own database, cloned from a template that is
//! migrated once per test run (`CREATE DATABASE x TEMPLATE t`), and dropped afterwards.
//!
//! With `TEST_DATABASE_URL` set, databases are created on that server; otherwise a throwaway
//! cluster is started from the system's PostgreSQL binaries in a temporary directory and stops
//! with the test process.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use quotebook::{config::Settings, db, local_postgres::LocalPostgres, startup::Application};
use sqlx::{
    ConnectOptions, Connection, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::sync::oneshot;

pub mod pgbouncer;
pub mod tcp_proxy;
pub mod tenant;

/// The server every test database lives on, and the migrated template.
pub struct TestCluster {
    pub local: Option<LocalPostgres>,
    server: PgConnectOptions,
    template: String,
}

impl TestCluster {
    pub fn options(&self, database: &str) -> PgConnectOptions {
        self.server.clone().database(database)
    }

    /// A URL the app accepts as `DATABASE_URL` for `database`.
    pub fn url(&self, database: &str) -> String {
        match (&self.local, std::env::var("TEST_DATABASE_URL")) {
            (Some(local), _) => local.url(database),
            (None, Ok(raw)) => {
                let mut url = url::Url::parse(&raw).expect("TEST_DATABASE_URL is a URL");
                url.set_path(&format!("/{database}"));
                url.to_string()
            }
            (None, Err(_)) => unreachable!("a cluster is either local or from TEST_DATABASE_URL"),
        }
    }

    async fn admin_connection(&self) -> PgConnection {
        let maintenance = self.server.get_database().unwrap_or("postgres").to_owned();
        self.options(&maintenance)
            .connect()
            .await
            .expect("connect to the test server")
    }

    /// A fresh database cloned from the migrated template.
    pub async fn create_database(&self) -> String {
        let name = format!("qb_test_{}", random_suffix());
        let mut conn = self.admin_connection().await;
        // Concurrent clones of one template can collide briefly; retry.
        for attempt in 0.. {
            let sql = format!("CREATE DATABASE \"{name}\" TEMPLATE \"{}\"", self.template);
            match sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
            {
                Ok(_) => break,
                Err(err) if attempt < 20 => {
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("create test database: {err}"),
            }
        }
        let _ = conn.close().await;
        name
    }

    pub fn drop_database(&'static self, name: String) {
        // Drop runs outside any runtime we can rely on: use a small one of our own.
        let handle = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut conn = self.admin_connection().await;
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await;
                let _ = conn.close().await;
            });
        });
        let _ = handle.join();
    }
}

static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
static LOCAL_CLUSTER: OnceLock<TestCluster> = OnceLock::new();

/// Starts (once) the test server and migrates the template database.
pub fn cluster() -> &'static TestCluster {
    CLUSTER.get_or_init(|| init_cluster(std::env::var("TEST_DATABASE_URL").ok()))
}

/// A test server this process started itself, whose Unix socket tests can put a pooler or a
/// proxy in front of: [`cluster`] itself unless `TEST_DATABASE_URL` points elsewhere.
pub fn local_cluster() -> &'static TestCluster {
    let shared = cluster();
    if shared.local.is_some() {
        return shared;
    }
    LOCAL_CLUSTER.get_or_init(|| init_cluster(None))
}

impl TestCluster {
    /// The directory holding the local server's Unix socket.
    pub fn socket_dir(&self) -> &std::path::Path {
        self.local
            .as_ref()
            .map(LocalPostgres::socket_dir)
            .expect("a local cluster (see local_cluster())")
    }
}

fn init_cluster(server_url: Option<String>) -> TestCluster {
    std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(start_cluster(server_url))
    })
    .join()
    .expect("test cluster setup")
}

async fn start_cluster(server_url: Option<String>) -> TestCluster {
    let (local, server) = match server_url {
        Some(url) => (
            None,
            db::options_from_url(&url).expect("TEST_DATABASE_URL is a postgres URL"),
        ),
        None => {
            let root = std::env::temp_dir().join("quotebook-tests");
            remove_stale_clusters(&root);
            let dir = root.join(format!("pg-{}-{}", std::process::id(), random_suffix()));
            let _ = std::fs::remove_dir_all(&dir);
            let local = LocalPostgres::start(&dir).unwrap_or_else(|err| panic!("{err}"));
            let server = local.connect_options("postgres");
            (Some(local), server)
        }
    };
    let template = format!("qb_template_{}", random_suffix());
    let mut conn = server.connect().await.expect("connect to the test server");
    let sql = format!("CREATE DATABASE \"{template}\"");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("create template database");
    let _ = conn.close().await;

    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(server.clone().database(&template))
        .await
        .expect("connect to template");
    db::migrate(&pool).await.expect("migrate template");
    pool.close().await;

    TestCluster {
        local,
        server,
        template,
    }
}

/// Clusters left by earlier runs whose process is gone (their server stopped with them).
fn remove_stale_clusters(root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("pg-"))
            .and_then(|p| p.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

pub fn random_suffix() -> String {
    let bytes: [u8; 6] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running app with its own database.
pub struct TestApp {
    pub address: String,
    /// A pool of the test's own, straight to the app's database.
    pub db: PgPool,
    /// The app's own request pool (through whatever `DATABASE_URL` names).
    pub app_pool: PgPool,
    pub db_name: String,
    /// Cookie store on, redirects off: tests follow the flow step by step.
    pub client: reqwest::Client,
    /// The in-process emulator (absent when a test points the app at another issuer).
    pub emulator: Option<quotebook::emulator::Emulator>,
    cluster: &'static TestCluster,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request failed")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.cluster
            .drop_database(std::mem::take(&mut self.db_name));
    }
}

/// The variables every test app starts from; `extra` overrides or adds.
pub fn test_vars(database_url: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = [
        ("APP_ENV", "development"),
        ("PORT", "0"),
        ("DATABASE_URL", database_url),
        ("DATABASE_MAX_CONNECTIONS", "5"),
        ("DATABASE_ACQUIRE_TIMEOUT_MS", "1500"),
        // As `cargo run`: the in-process Auth0 emulator, here on a free port with a fresh key.
        ("APP_BASE_URL", "http://127.0.0.1:0"),
        ("AUTH0_EMULATOR_ADDR", "127.0.0.1:0"),
        ("AUTH0_EMULATOR_USERS", "2"),
        ("AUTH0_EMULATOR_PERSIST_KEY", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        vars.insert((*k).to_owned(), (*v).to_owned());
    }
    vars
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Spawns the app with extra environment variables.
pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    spawn(extra, false).await
}

/// Spawns the app with its sync worker running, as `quotebook serve` does.
pub async fn spawn_app_with_worker(extra: &[(&str, &str)]) -> TestApp {
    spawn(extra, true).await
}

/// Starts an emulator with `config` and the app signing in against it as an external provider,
/// configured with the issuer exactly as the emulator spells it.
pub async fn spawn_app_against(
    config: quotebook::emulator::EmulatorConfig,
    extra: &[(&str, &str)],
) -> TestApp {
    let emulator = quotebook::emulator::Emulator::start(config)
        .await
        .expect("emulator starts");
    let issuer = emulator.issuer_identifier();
    spawn_app_with_provider(emulator, &issuer, extra).await
}

/// The app signing in against `emulator`, with `AUTH0_ISSUER_BASE_URL` written as `issuer`.
/// The emulator learns the app's callback and logout URLs once the app has a port.
pub async fn spawn_app_with_provider(
    emulator: quotebook::emulator::Emulator,
    issuer: &str,
    extra: &[(&str, &str)],
) -> TestApp {
    let mut vars = vec![
        ("AUTH0_ISSUER_BASE_URL", issuer),
        ("AUTH0_CLIENT_ID", quotebook::config::DEV_CLIENT_ID),
        ("AUTH0_CLIENT_SECRET", quotebook::config::DEV_CLIENT_SECRET),
    ];
    vars.extend_from_slice(extra);
    let mut app = spawn(&vars, false).await;
    emulator.add_callback_url(&format!("{}/auth/callback", app.address));
    emulator.add_logout_url(&format!("{}/", app.address));
    app.emulator = Some(emulator);
    app
}

async fn spawn(extra: &[(&str, &str)], with_worker: bool) -> TestApp {
    let cluster = cluster();
    spawn_on(
        cluster,
        |db_name| test_vars(&cluster.url(db_name), extra),
        with_worker,
    )
    .await
}

/// Spawns the app on a fresh database of `cluster`, with the variables `vars` gives for that
/// database's name (for tests that put a pooler or a proxy in front of it).
pub async fn spawn_on(
    cluster: &'static TestCluster,
    vars: impl FnOnce(&str) -> HashMap<String, String>,
    with_worker: bool,
) -> TestApp {
    // Logs only on request (`TEST_LOG=1 cargo test`): a passing run stays readable.
    if std::env::var_os("TEST_LOG").is_some() {
        quotebook::telemetry::init(false);
    }
    let db_name = cluster.create_database().await;
    let settings = Settings::from_vars(&vars(&db_name)).expect("test settings");
    let app = Application::build(settings).await.expect("app builds");
    let port = app.port();
    let app_pool = app.db().clone();
    let emulator = app.emulator().cloned();
    let db = PgPoolOptions::new()
        .max_connections(3)
        .connect_with(cluster.options(&db_name))
        .await
        .expect("test pool");
    let (tx, rx) = oneshot::channel::<()>();
    let stopped = futures::FutureExt::shared(async {
        let _ = rx.await;
    });
    if with_worker {
        app.spawn_worker(stopped.clone())
            .await
            .expect("worker starts");
    }
    let server = tokio::spawn(app.run_until_stopped(stopped));
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        db,
        app_pool,
        client: client(),
        emulator,
        db_name,
        cluster,
        shutdown: Some(tx),
        server: Some(server),
    }
}

/// A browser-like client: keeps cookies, does not follow redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_provider(Arc::new(reqwest::cookie::Jar::default()))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A form found in an HTML page: where it posts (always POST here) and its hidden fields.
#[derive(Debug, Clone)]
pub struct HtmlForm {
    pub action: String,
    pub hidden: Vec<(String, String)>,
}

/// The first `<form>` in `html` that has an input named `field` (any provider's login page
/// with an email box will do).
pub fn find_form(html: &str, field: &str) -> Option<HtmlForm> {
    let mut rest = html;
    while let Some(start) = rest.find("<form") {
        let end = rest[start..].find("</form>").map(|e| start + e)?;
        let form = &rest[start..end];
        if form.contains(&format!("name=\"{field}\"")) {
            let open_tag = &form[..form.find('>')?];
            let mut hidden = Vec::new();
            let mut inputs = form;
            while let Some(i) = inputs.find("<input") {
                let tag_end = inputs[i..].find('>').map(|e| i + e)?;
                let tag = &inputs[i..tag_end];
                if attr(tag, "type").as_deref() == Some("hidden")
                    && let Some(name) = attr(tag, "name")
                {
                    hidden.push((name, attr(tag, "value").unwrap_or_default()));
                }
                inputs = &inputs[tag_end..];
            }
            return Some(HtmlForm {
                action: attr(open_tag, "action").unwrap_or_default(),
                hidden,
            });
        }
        rest = &rest[end..];
    }
    None
}

/// The value of attribute `name` in a tag, entity-decoded.
pub fn attr(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let end = tag[start..].find('"')? + start;
    Some(
        tag[start..end]
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&#39;", "'")
            .replace("&amp;", "&"),
    )
}

/// The CSRF token a signed-in page carries in `<meta name="csrf-token">`.
pub fn csrf_token(html: &str) -> Option<String> {
    let start = html.find("<meta name=\"csrf-token\"")?;
    let end = html[start..].find('>')? + start;
    attr(&html[start..end], "content")
}

pub fn location(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Steps of a login through the provider's pages, for tests that stop half-way.
pub struct LoginSteps {
    /// The app's callback URL (with `code` and `state`) the provider redirected back to.
    pub callback_url: String,
}

impl TestApp {
    /// Walks the real flow with `client`: app → provider login page → form post → back to the
    /// app's callback URL, which is returned un-followed.
    pub async fn start_login(
        &self,
        client: &reqwest::Client,
        email: &str,
        next: &str,
    ) -> LoginSteps {
        start_login_at(&self.address, client, email, next).await
    }

    /// The whole login; returns the app's answer to the callback (a 303 to `next` on success).
    pub async fn login_with(&self, client: &reqwest::Client, email: &str) -> reqwest::Response {
        let steps = self.start_login(client, email, "/").await;
        client
            .get(&steps.callback_url)
            .send()
            .await
            .expect("callback request")
    }

    /// A fresh client signed in as `email`.
    pub async fn signed_in_client(&self, email: &str) -> reqwest::Client {
        let client = client();
        let response = self.login_with(&client, email).await;
        assert_eq!(
            response.status(),
            reqwest::StatusCode::SEE_OTHER,
            "login succeeds"
        );
        client
    }

    /// Another instance of the app on the same database and provider (as a second Fly Machine):
    /// its address, and the sender that stops it.
    pub async fn another_instance(&self) -> (String, oneshot::Sender<()>) {
        let emulator = self.emulator.as_ref().expect("the in-process emulator");
        let issuer = emulator.issuer().to_string();
        let vars = test_vars(
            &self.cluster.url(&self.db_name),
            &[
                ("AUTH0_ISSUER_BASE_URL", issuer.as_str()),
                ("AUTH0_CLIENT_ID", quotebook::config::DEV_CLIENT_ID),
                ("AUTH0_CLIENT_SECRET", quotebook::config::DEV_CLIENT_SECRET),
            ],
        );
        let app = Application::build(Settings::from_vars(&vars).expect("test settings"))
            .await
            .expect("second instance builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        emulator.add_logout_url(&format!("{address}/"));
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async {
            let _ = rx.await;
        }));
        (address, tx)
    }

    /// Ends every local session behind the app's back (as expiry, or a logout on another
    /// instance, would) and waits until this instance's memory of them has lapsed.
    pub async fn end_all_sessions(&self) {
        sqlx::query("DELETE FROM sessions")
            .execute(&self.db)
            .await
            .expect("delete sessions");
        wait_out_the_session_memory().await;
    }

    /// A fresh client signed in as `email` who has saved `quote` (as htmx saves it).
    pub async fn signed_in_with_quote(&self, email: &str, quote: &str) -> reqwest::Client {
        let client = self.signed_in_client(email).await;
        let token = self.csrf_for(&client).await;
        let saved = client
            .put(self.url("/quote"))
            .header("HX-Request", "true")
            .header("X-CSRF-Token", &token)
            .form(&[("message", quote)])
            .send()
            .await
            .expect("save request");
        assert_eq!(saved.status(), reqwest::StatusCode::OK, "{email} saves");
        client
    }

    /// `people` clients, each signed in as a person of their own who has saved a quote, with
    /// that quote.
    pub async fn readers_with_quotes(&self, people: usize) -> Vec<(reqwest::Client, String)> {
        let mut readers = Vec::new();
        for n in 0..people {
            let quote = format!("Quote of reader {n}.");
            let client = self
                .signed_in_with_quote(&format!("reader{n}@example.com"), &quote)
                .await;
            readers.push((client, quote));
        }
        readers
    }

    /// Every reader loads the home page `times` times, all at once, past the one-second session
    /// memory (so every session is read from the database); each page must show its reader's
    /// quote.
    pub async fn read_quotes_at_once(&self, readers: &[(reqwest::Client, String)], times: usize) {
        tokio::time::sleep(quotebook::auth::session_store::CACHE_TTL + Duration::from_millis(100))
            .await;
        let pages = readers.iter().flat_map(|(client, quote)| {
            (0..times).map(move |_| async move {
                let page = client.get(self.url("/")).send().await.expect("home");
                (quote, page.status(), page.text().await.expect("home body"))
            })
        });
        for (quote, status, body) in futures::future::join_all(pages).await {
            assert_eq!(status, reqwest::StatusCode::OK, "{body}");
            assert!(body.contains(quote.as_str()), "{quote}: {body}");
        }
    }

    /// The CSRF token of the signed-in home page.
    pub async fn csrf_for(&self, client: &reqwest::Client) -> String {
        let html = client
            .get(self.url("/"))
            .send()
            .await
            .expect("home")
            .text()
            .await
            .expect("home body");
        csrf_token(&html).expect("signed-in pages carry a CSRF token")
    }
}

/// Waits until sessions changed behind the app's back are read from the database again (the
/// app remembers sessions it read for a second).
pub async fn wait_out_the_session_memory() {
    tokio::time::sleep(quotebook::auth::session_store::CACHE_TTL + Duration::from_millis(100))
        .await;
}

/// Blocks the emulator's user with `email`, as an Auth0 dashboard's "Block" does.
pub fn block_user(emulator: &quotebook::emulator::Emulator, email: &str) {
    let user = emulator
        .users()
        .find_by_email(email)
        .expect("the user exists");
    emulator
        .users()
        .update(
            &user.user_id,
            quotebook::emulator::UserPatch {
                blocked: Some(true),
                ..Default::default()
            },
        )
        .expect("the user is blocked");
}

/// Walks the real flow for the app at `address` (see [`TestApp::start_login`]).
pub async fn start_login_at(
    address: &str,
    client: &reqwest::Client,
    email: &str,
    next: &str,
) -> LoginSteps {
    let next = url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>();
    start_login_from(client, &format!("{address}/auth/login?next={next}"), email).await
}

/// Walks the real flow from the app's login URL `login` (with whatever query it carries) as
/// `email`, returning the app's callback URL un-followed.
pub async fn start_login_from(client: &reqwest::Client, login: &str, email: &str) -> LoginSteps {
    let start = client.get(login).send().await.expect("login request");
    assert_eq!(
        start.status(),
        reqwest::StatusCode::SEE_OTHER,
        "login must redirect to the provider"
    );
    let authorize_url = url::Url::parse(&location(&start)).expect("authorize URL");
    let page = client
        .get(authorize_url.clone())
        .send()
        .await
        .expect("authorize page");
    // A provider that still has a single sign-on session sends the browser straight back.
    if page.status().is_redirection() {
        return LoginSteps {
            callback_url: location(&page),
        };
    }
    assert_eq!(
        page.status(),
        reqwest::StatusCode::OK,
        "provider login page"
    );
    let html = page.text().await.expect("login page body");
    let form = find_form(&html, "email").expect("the login page has an email form");
    let action = authorize_url.join(&form.action).expect("form action");
    let mut fields = form.hidden.clone();
    fields.push(("email".into(), email.into()));
    let back = client
        .post(action)
        .form(&fields)
        .send()
        .await
        .expect("login form post");
    assert!(
        back.status().is_redirection(),
        "provider redirects back: {}",
        back.status()
    );
    LoginSteps {
        callback_url: location(&back),
    }
}

/// The app on a Postgres cluster of its own, for tests that stop and restart the database.
pub struct AppOnOwnCluster {
    pub address: String,
    dir: std::path::PathBuf,
    cluster: Option<LocalPostgres>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl AppOnOwnCluster {
    /// Needs a multi-threaded test runtime (the cluster starts and stops synchronously).
    pub async fn spawn(extra: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(format!("quotebook-own-{}", random_suffix()));
        let cluster = tokio::task::block_in_place(|| LocalPostgres::start(&dir))
            .unwrap_or_else(|err| panic!("{err}"));
        let vars = test_vars(&cluster.url("postgres"), extra);
        let app = Application::build(Settings::from_vars(&vars).expect("test settings"))
            .await
            .expect("app builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async {
            let _ = rx.await;
        }));
        Self {
            address,
            dir,
            cluster: Some(cluster),
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    pub fn stop_database(&mut self) {
        if let Some(cluster) = self.cluster.take() {
            tokio::task::block_in_place(|| cluster.stop());
        }
    }

    pub fn start_database(&mut self) {
        let cluster = tokio::task::block_in_place(|| LocalPostgres::start(&self.dir))
            .unwrap_or_else(|err| panic!("{err}"));
        self.cluster = Some(cluster);
    }

    /// A client signed in through the real flow.
    pub async fn signed_in_client(&self, email: &str) -> reqwest::Client {
        let client = client();
        let steps = start_login_at(&self.address, &client, email, "/").await;
        let done = client
            .get(&steps.callback_url)
            .send()
            .await
            .expect("callback");
        assert_eq!(
            done.status(),
            reqwest::StatusCode::SEE_OTHER,
            "login succeeds"
        );
        client
    }

    /// Stops the app, then its database, and removes the cluster's files.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.stop_database();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Management API token from `emulator` (client credentials of the dev client), narrowed to
/// `scope` when given.
pub async fn management_token(
    emulator: &quotebook::emulator::Emulator,
    scope: Option<&str>,
) -> String {
    let mut body = serde_json::json!({
        "grant_type": "client_credentials",
        "client_id": quotebook::config::DEV_CLIENT_ID,
        "client_secret": quotebook::config::DEV_CLIENT_SECRET,
        "audience": format!("{}api/v2/", emulator.issuer()),
    });
    if let Some(scope) = scope {
        body["scope"] = serde_json::json!(scope);
    }
    let response = client()
        .post(format!("{}oauth/token", emulator.issuer()))
        .json(&body)
        .send()
        .await
        .expect("token request");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let token: serde_json::Value = response.json().await.expect("token JSON");
    assert_eq!(token["token_type"], "Bearer");
    token["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

impl TestApp {
    /// The `sub` (users.user_id) of the person who signed in as `email`.
    pub async fn sub_of(&self, email: &str) -> String {
        sqlx::query_scalar("SELECT user_id FROM users WHERE email = $1")
            .bind(email)
            .fetch_one(&self.db)
            .await
            .expect("the person signed in")
    }

    /// The provider session (`sid`) of each of `sub`'s sessions, in order.
    pub async fn sids_of(&self, sub: &str) -> Vec<String> {
        sqlx::query_scalar("SELECT sid FROM sessions WHERE user_id = $1 ORDER BY sid")
            .bind(sub)
            .fetch_all(&self.db)
            .await
            .expect("sessions")
    }

    /// The app's in-process emulator (development mode).
    pub fn emulator(&self) -> &quotebook::emulator::Emulator {
        self.emulator.as_ref().expect("the in-process emulator")
    }
}

/// Whether `client` is signed in at the app at `address` (`/auth/me`: 200 or 401).
pub async fn signed_in_at(address: &str, client: &reqwest::Client) -> bool {
    let me = client
        .get(format!("{address}/auth/me"))
        .send()
        .await
        .expect("/auth/me");
    match me.status() {
        reqwest::StatusCode::OK => true,
        reqwest::StatusCode::UNAUTHORIZED => false,
        other => panic!("/auth/me answered {other}"),
    }
}

/// Posts `logout_token` to the app at `address` as a provider does (OpenID Connect Back-Channel
/// Logout 1.0, section 2.5).
pub async fn post_logout_token(address: &str, logout_token: &str) -> reqwest::Response {
    client()
        .post(format!("{address}/auth/backchannel-logout"))
        .form(&[("logout_token", logout_token)])
        .send()
        .await
        .expect("back-channel logout request")
}

/// Waits (up to 20 s) until a statement starting with `query_prefix` waits for a lock in
/// `db`'s database: the moment a test lets the transaction it holds go on.
pub async fn wait_for_lock_wait(db: &sqlx::PgPool, query_prefix: &str) {
    let started = std::time::Instant::now();
    loop {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                            WHERE datname = current_database() AND wait_event_type = 'Lock'
                              AND starts_with(query, $1))",
        )
        .bind(query_prefix)
        .fetch_one(db)
        .await
        .expect("pg_stat_activity");
        if waiting {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "no `{query_prefix}` came to wait for the lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
