//! quotebook through Debian's real PgBouncer 1.18 in transaction mode (issue 14, items 1 and 2):
//! the web tier, the admin enqueue and the worker, with a Neon-style `-pooler` URL and nothing
//! else, or with PgBouncer on port 6432 and a direct URL beside it. After the traffic, every
//! server connection of the pooler is inspected: no statement left prepared, no channel
//! listened to, no advisory lock held.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{
    TestApp, client, local_cluster,
    pgbouncer::{PgBouncer, SERVER_ROLE},
    random_suffix, spawn_on, test_vars,
};

const TOKEN: &str = "pooler-admin-token-0123456789";
const POOL_SIZE: u32 = 3;

/// A PgBouncer named like a Neon pooled endpoint: its socket directory ends in `-pooler`, and
/// the same path without it leads (a symbolic link) to the cluster's own socket, so the direct
/// URL the app derives by dropping `-pooler` reaches Postgres itself.
struct NeonLike {
    root: PathBuf,
    endpoint: String,
    bouncer: PgBouncer,
}

impl NeonLike {
    async fn start() -> Self {
        let cluster = local_cluster();
        let root = std::env::temp_dir().join(format!("qb-neon-{}", random_suffix()));
        let endpoint = format!("ep-test-{}", random_suffix());
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink(cluster.socket_dir(), root.join(&endpoint)).unwrap();
        let bouncer = PgBouncer::start(
            &root.join(format!("{endpoint}-pooler")),
            5432,
            cluster.socket_dir(),
            POOL_SIZE,
        )
        .await;
        Self {
            root,
            endpoint,
            bouncer,
        }
    }

    /// The pooled URL, as Neon's console gives it (but with the socket in `host=`).
    fn url(&self, database: &str) -> String {
        self.bouncer.url(
            &format!("{}-pooler.us-east-2.aws.neon.test", self.endpoint),
            database,
        )
    }
}

impl Drop for NeonLike {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The app with only the pooled URL (the seed guide's `.env.local`), plus an admin token.
async fn app_through(
    url: impl Fn(&str) -> String,
    extra: &[(&str, &str)],
    worker: bool,
) -> TestApp {
    let mut extra = extra.to_vec();
    extra.push(("ADMIN_API_TOKEN", TOKEN));
    spawn_on(local_cluster(), |db| test_vars(&url(db), &extra), worker).await
}

/// Advisory locks held by the pooler's server connections (they would outlive their client).
async fn advisory_locks_held_by_the_pooler(direct: &PgPool, database: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
         WHERE l.locktype = 'advisory' AND a.usename = $1 AND a.datname = $2",
    )
    .bind(SERVER_ROLE)
    .bind(database)
    .fetch_one(direct)
    .await
    .unwrap()
}

/// `people` signed in, each with a saved quote, then `rounds` of concurrent page reads that
/// all go to the database; every answer must be right.
async fn signed_in_traffic(app: &TestApp, people: usize, rounds: usize) {
    let readers = app.readers_with_quotes(people).await;
    for _ in 0..rounds {
        app.read_quotes_at_once(&readers, 5).await;
    }
}

/// Triggers a sync through the admin API and waits for the worker to finish it.
async fn sync_through_the_api(app: &TestApp) -> Value {
    let accepted = client()
        .post(app.url("/api/admin/sync"))
        .bearer_auth(TOKEN)
        .json(&json!({"mode": "incremental"}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let run: Value = accepted.json().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let current: Value = client()
            .get(app.url(&format!("/api/admin/sync/{}", run["id"])))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if current["status"] == "succeeded" || current["status"] == "failed" {
            return current;
        }
        assert!(
            Instant::now() < deadline,
            "the run never finished: {current}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_a_neon_pooled_url_requests_use_the_pooler_and_session_work_goes_direct() {
    let neon = NeonLike::start().await;
    let app = app_through(|db| neon.url(db), &[], true).await;

    signed_in_traffic(&app, 4, 3).await;
    // Each sync is a new job: a NOTIFY that a LISTEN on a pooled server connection would hand to
    // some unrelated request; each takes and releases the sync's run lock.
    for _ in 0..4 {
        let run = sync_through_the_api(&app).await;
        assert_eq!(run["status"], "succeeded", "{run}");
        assert!(run["error"].is_null(), "{run}");
    }
    signed_in_traffic(&app, 2, 1).await;

    // The workers (the sync's, the streams') and the web tier (for ended sessions) each listen
    // on a direct connection of their own (the pooler's server connections are checked below).
    let listening: Vec<String> = sqlx::query_scalar(
        "SELECT query FROM pg_stat_activity
         WHERE datname = $1 AND usename = 'postgres' AND query LIKE 'LISTEN%' ORDER BY query",
    )
    .bind(&app.db_name)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(listening.len(), 3, "{listening:?}");
    assert!(
        listening
            .iter()
            .any(|q| q.contains(quotebook::auth::session_events::CHANNEL)),
        "{listening:?}"
    );
    for server in neon.bouncer.server_connections(&app.db_name, &app.db).await {
        assert!(server.prepared.is_empty(), "statements left on {server:?}");
        assert!(server.listening.is_empty(), "LISTEN on {server:?}");
    }
    assert_eq!(
        advisory_locks_held_by_the_pooler(&app.db, &app.db_name).await,
        0,
        "the sync's run lock stays on the direct connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_on_6432_beside_a_direct_url_gets_only_unnamed_statements() {
    let cluster = local_cluster();
    let socket_dir = std::env::temp_dir().join(format!("qb-bouncer-{}", random_suffix()));
    let bouncer = PgBouncer::start(&socket_dir, 6432, cluster.socket_dir(), POOL_SIZE).await;
    // Port 6432 names no direct endpoint, so it is given (without it the app refuses to start:
    // `config/database.rs`, and `foundation.rs` for the exit code).
    let app = spawn_on(
        cluster,
        |db| {
            let mut vars = test_vars(&bouncer.url("localhost", db), &[("ADMIN_API_TOKEN", TOKEN)]);
            vars.insert("DATABASE_URL_DIRECT".into(), cluster.url(db));
            vars
        },
        true,
    )
    .await;
    signed_in_traffic(&app, 4, 3).await;
    let run = sync_through_the_api(&app).await;
    assert_eq!(run["status"], "succeeded", "{run}");

    for server in bouncer.server_connections(&app.db_name, &app.db).await {
        assert!(server.prepared.is_empty(), "statements left on {server:?}");
        assert!(server.listening.is_empty(), "LISTEN on {server:?}");
    }
}

/// Runs `quotebook migrate` (the real binary, as Fly's release command) with `database_url`.
async fn run_migrate(database_url: &str) -> std::process::Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_quotebook"));
    command
        .arg("migrate")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "info")
        // A scratch directory: no .env from the checkout leaks in.
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(30), command.output()).await {
        Ok(output) => output.expect("run quotebook migrate"),
        Err(_) => {
            panic!("quotebook migrate hung (a migration lock left with a pooled connection?)")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotebook_migrate_during_traffic_never_leaves_the_migration_lock_with_the_pooler() {
    let neon = NeonLike::start().await;
    let app = app_through(|db| neon.url(db), &[], false).await;
    let reader = app.signed_in_client("deploying@example.com").await;
    // Pages through the pooler while the release command runs, as during a deploy.
    let home = app.url("/");
    let traffic = tokio::spawn(async move {
        loop {
            let _ = reader.get(&home).send().await;
        }
    });
    let url = neon.url(&app.db_name);
    for _ in 0..3 {
        let output = run_migrate(&url).await;
        let log = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{log}");
        assert!(
            log.contains("without -pooler"),
            "the log says where migrations ran: {log}"
        );
        assert!(
            !log.contains("postgres@"),
            "no credentials in the log: {log}"
        );
        assert_eq!(
            advisory_locks_held_by_the_pooler(&app.db, &app.db_name).await,
            0,
            "{log}"
        );
    }
    traffic.abort();
}
