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

/// Starts (once) the test server and migrates the template database.
pub fn cluster() -> &'static TestCluster {
    CLUSTER.get_or_init(|| {
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(start_cluster())
        })
        .join()
        .expect("test cluster setup")
    })
}

async fn start_cluster() -> TestCluster {
    let (local, server) = match std::env::var("TEST_DATABASE_URL") {
        Ok(url) => (
            None,
            db::options_from_url(&url).expect("TEST_DATABASE_URL is a postgres URL"),
        ),
        Err(_) => {
            let root = std::env::temp_dir().join("quotebook-tests");
            remove_stale_clusters(&root);
            let dir = root.join(format!("pg-{}", std::process::id()));
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
    pub port: u16,
    pub db: PgPool,
    /// Cookie store on, redirects off: tests follow the flow step by step.
    pub client: reqwest::Client,
    db_name: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
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

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        cluster().drop_database(std::mem::take(&mut self.db_name));
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
        // Nothing listens on the discard port: a provider that is down. Sign-in tests start
        // the emulator and override this.
        ("AUTH0_ISSUER_BASE_URL", "http://127.0.0.1:9/"),
        ("AUTH0_CLIENT_ID", "quotebook-dev"),
        ("AUTH0_CLIENT_SECRET", "quotebook-dev-secret"),
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
    // Logs only on request (`TEST_LOG=1 cargo test`): a passing run stays readable.
    if std::env::var_os("TEST_LOG").is_some() {
        quotebook::telemetry::init(false);
    }
    let cluster = cluster();
    let db_name = cluster.create_database().await;
    let vars = test_vars(&cluster.url(&db_name), extra);
    let settings = Settings::from_vars(&vars).expect("test settings");
    let app = Application::build(settings).await.expect("app builds");
    let port = app.port();
    let db = PgPoolOptions::new()
        .max_connections(3)
        .connect_with(cluster.options(&db_name))
        .await
        .expect("test pool");
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        db,
        client: client(),
        db_name,
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
