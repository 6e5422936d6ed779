//! The database going away under a running app (issue 14, items 3 to 5), through a real TCP
//! proxy in front of the test cluster: every connection dropped at once (a compute restart),
//! connects that take seconds (a suspended compute waking), nothing listening (an outage); and
//! a pool whose connections are all busy.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use quotebook::{auth::session_store::CACHE_TTL, config::Settings, startup::Application};
use reqwest::StatusCode;

use crate::helpers::{
    TestApp, local_cluster, spawn_app_with, spawn_on, tcp_proxy::TcpProxy, test_vars,
};

/// Never sent (the cluster trusts local connections), so it must never be seen either.
const PASSWORD: &str = "s3cret-pw-9f2b";

fn proxied_url(proxy: &TcpProxy, database: &str) -> String {
    format!(
        "postgres://postgres:{PASSWORD}@127.0.0.1:{}/{database}",
        proxy.port()
    )
}

async fn start_proxy() -> TcpProxy {
    TcpProxy::start(local_cluster().socket_dir().join(".s.PGSQL.5432")).await
}

async fn app_behind(proxy: &TcpProxy, extra: &[(&str, &str)]) -> TestApp {
    spawn_on(
        local_cluster(),
        |db| test_vars(&proxied_url(proxy, db), extra),
        false,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_survive_every_pooled_connection_dying_at_once() {
    let proxy = start_proxy().await;
    let app = app_behind(&proxy, &[("DATABASE_MAX_CONNECTIONS", "4")]).await;
    let readers = app.readers_with_quotes(3).await;
    app.read_quotes_at_once(&readers, 6).await;
    assert!(
        app.app_pool.num_idle() >= 2,
        "the pool holds several connections ({} idle)",
        app.app_pool.num_idle()
    );

    // A compute restart: every connection closes; the app has not noticed yet, and they have
    // been idle for less than the idle check's threshold.
    proxy.kill_connections();
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    app.read_quotes_at_once(&readers, 6).await;
    app.read_quotes_at_once(&readers, 2).await;

    // Writes after the loss find checked connections too.
    let (client, _) = &readers[0];
    let token = app.csrf_for(client).await;
    let saved = client
        .put(app.url("/quote"))
        .header("HX-Request", "true")
        .header("X-CSRF-Token", &token)
        .form(&[("message", "Saved after the restart.")])
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_idle_for_a_while_are_checked_before_use_and_a_lost_one_marks_the_rest() {
    let proxy = start_proxy().await;
    let cluster = local_cluster();
    let db_name = cluster.create_database().await;
    let settings = Settings::from_vars(&test_vars(&proxied_url(&proxy, &db_name), &[]))
        .expect("test settings");
    let options = quotebook::db::options_from_url(&proxied_url(&proxy, &db_name)).unwrap();
    let pool = quotebook::db::connect(options, &settings.database)
        .await
        .unwrap();
    let select = || sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&pool);
    let fill = || async {
        let held = futures::future::join_all((0..3).map(|_| pool.acquire())).await;
        assert!(held.iter().all(Result::is_ok));
    };

    // Idle past the threshold: pinged before use, so a plain query (no retry) succeeds.
    fill().await;
    proxy.kill_connections();
    tokio::time::sleep(quotebook::db::CHECK_IDLE_AFTER + Duration::from_millis(300)).await;
    for _ in 0..3 {
        assert_eq!(select().await.unwrap(), 1);
    }

    // Idle for a moment only: the first read meets a dead connection and runs again; the
    // others it leaves idle are then checked, so plain queries after it succeed.
    fill().await;
    proxy.kill_connections();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(quotebook::db::retry_idempotent(select).await.unwrap(), 1);
    for _ in 0..3 {
        assert_eq!(select().await.unwrap(), 1);
    }
    pool.close().await;
    cluster.drop_database(db_name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_waits_for_a_waking_compute_within_the_request_timeout() {
    let proxy = start_proxy().await;
    // The numbers: a 3 s acquire timeout, a 15 s request timeout, 5 s connects.
    let app = app_behind(
        &proxy,
        &[
            ("DATABASE_ACQUIRE_TIMEOUT_MS", "3000"),
            ("REQUEST_TIMEOUT_SECS", "15"),
        ],
    )
    .await;
    let readers = app.readers_with_quotes(1).await;
    // The compute suspends (its connections die) and wakes slowly on the next connect.
    proxy.kill_connections();
    proxy.set_connect_delay(Duration::from_secs(5));
    let started = Instant::now();
    app.read_quotes_at_once(&readers, 1).await;
    let waited = started.elapsed() - CACHE_TTL;
    assert!(
        waited >= Duration::from_millis(4500),
        "the page waited for a new connection ({waited:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_waits_for_a_cold_compute_and_gives_up_at_its_bound() {
    let proxy = start_proxy().await;
    // Slower than the tests' 1.5 s acquire timeout, on every connection.
    proxy.set_connect_delay(Duration::from_millis(2500));
    let started = Instant::now();
    let app = app_behind(&proxy, &[]).await;
    assert!(started.elapsed() >= Duration::from_millis(2500));
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    drop(app);

    let cluster = local_cluster();
    let db_name = cluster.create_database().await;
    let vars = test_vars(
        &proxied_url(&proxy, &db_name),
        &[("DATABASE_STARTUP_TIMEOUT_SECS", "1")],
    );
    let started = Instant::now();
    let err = match Application::build(Settings::from_vars(&vars).unwrap()).await {
        Ok(_) => panic!("start-up must give up after DATABASE_STARTUP_TIMEOUT_SECS"),
        Err(err) => format!("{err:#}"),
    };
    assert!(started.elapsed() < Duration::from_secs(2), "{err}");
    assert!(err.contains("DATABASE_STARTUP_TIMEOUT_SECS"), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{}", proxy.port())),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "{err}");
    cluster.drop_database(db_name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pool_sheds_pages_after_the_acquire_timeout_not_the_connect_allowance() {
    let app = spawn_app_with(&[
        ("DATABASE_MAX_CONNECTIONS", "2"),
        ("DATABASE_ACQUIRE_TIMEOUT_MS", "1000"),
        ("DATABASE_CONNECT_TIMEOUT_SECS", "10"),
    ])
    .await;
    let readers = app.readers_with_quotes(1).await;
    let (client, _) = &readers[0];
    // Every connection is in use elsewhere.
    let first = app.app_pool.acquire().await.unwrap();
    let second = app.app_pool.acquire().await.unwrap();
    tokio::time::sleep(CACHE_TTL + Duration::from_millis(100)).await;
    let started = Instant::now();
    let page = client.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a busy pool answered after {:?}",
        started.elapsed()
    );
    drop((first, second));
    app.read_quotes_at_once(&readers, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cut_off_by_the_request_timeout_is_counted_as_a_503_under_its_route() {
    let app = spawn_app_with(&[("REQUEST_TIMEOUT_SECS", "1")]).await;
    let readers = app.readers_with_quotes(1).await;
    let (client, _) = &readers[0];
    let before = requests_counted(&app, "/", 503).await;
    // Session reads wait behind the lock for longer than the request may take.
    let mut blocker = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    tokio::time::sleep(CACHE_TTL + Duration::from_millis(100)).await;
    let page = client.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
    blocker.rollback().await.unwrap();
    let after = requests_counted(&app, "/", 503).await;
    assert!(
        after >= before + 1.0,
        "503s under route=\"/\": {before} -> {after}"
    );
}

/// Log lines written on this thread (the test runs on a current-thread runtime, so the app's
/// tasks write here too), as production writes them: JSON with the request's span.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    fn lines(&self) -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer"))
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

/// `http_requests_total` for `GET route` answered `status`, from the app's `/metrics`.
async fn requests_counted(app: &TestApp, route: &str, status: u16) -> f64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    let series =
        format!("http_requests_total{{method=\"GET\",route=\"{route}\",status=\"{status}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

#[tokio::test]
async fn a_database_503_is_counted_and_logged_under_its_route_with_its_cause() {
    use tracing_subscriber::layer::SubscriberExt;
    // tracing-core decides whether a call site logs at all when it is first reached, asking
    // only the reaching thread's subscriber while a single one is registered: another test's
    // thread (with none) would switch the app's call sites off for good. A second registered
    // subscriber makes it ask every registered one, this test's included.
    let _ask_every_subscriber = tracing::Dispatch::new(tracing_subscriber::registry());
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(move || writer.clone()),
    );
    let _logging = tracing::subscriber::set_default(subscriber);

    let proxy = start_proxy().await;
    let app = app_behind(
        &proxy,
        &[
            ("DATABASE_ACQUIRE_TIMEOUT_MS", "300"),
            ("DATABASE_CONNECT_TIMEOUT_SECS", "1"),
        ],
    )
    .await;
    let readers = app.readers_with_quotes(1).await;
    let (client, _) = &readers[0];
    let before = requests_counted(&app, "/", 503).await;

    proxy.stop();
    tokio::time::sleep(CACHE_TTL + Duration::from_millis(100)).await;
    let page = client.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Only what needs the session fails: the page's assets still load.
    let asset = client
        .get(app.url("/assets/htmx.min.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(asset.status(), StatusCode::OK);

    proxy.restart().await;
    app.read_quotes_at_once(&readers, 1).await;
    let after = requests_counted(&app, "/", 503).await;
    assert!(
        after >= before + 1.0,
        "503s under route=\"/\": {before} -> {after}"
    );

    let lines = logs.lines();
    // The page's line (the emulator's stream deliveries may have met the outage too).
    let failed = lines
        .iter()
        .find(|line| {
            line["message"] == "request failed" && line["status"] == 503 && line["path"] == "/"
        })
        .unwrap_or_else(|| panic!("no log line for the 503: {lines:#?}"));
    assert_eq!(failed["route"], "/", "{failed}");
    assert_eq!(failed["span"]["route"], "/", "{failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("database unavailable: "), "{failed}");
    assert!(
        error.len() > "database unavailable: ".len(),
        "the cause is in the line: {failed}"
    );
    let everything = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(!everything.contains(PASSWORD), "a secret reached the log");
}
