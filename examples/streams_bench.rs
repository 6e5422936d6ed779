//! From a change in Auth0 (the emulator) to the `users` row, and for a block to the end of the
//! person's sessions: issue 17's figures. Prints p50/p95/p99/max and the Management API calls
//! the app made.
//!
//! ```sh
//! cargo run --release --example streams_bench [-- --changes 1000 --rate 50 --stream events|logs]
//! ```
//!
//! The app runs in this process as `quotebook serve` does in development (web tier, worker, the
//! in-process emulator), on a throwaway Postgres cluster (or a database created on
//! `DATABASE_URL`'s server). The emulator's Event Stream (or, with `--stream logs`, its Log
//! Stream) delivers to the app; nothing else does. Two phases, each `--changes` changes at
//! `--rate` per second through the emulator's Management API:
//!
//! 1. **updates**: `PATCH /api/v2/users/{id}` with a new `name`, timed from just before the
//!    request to Postgres notifying the new name in `users` (a trigger this benchmark adds).
//! 2. **blocks**: each user has two sessions (written as the app writes them); `PATCH` with
//!    `blocked: true`, timed to `users.blocked` and to the sessions' rows being gone; for a
//!    sample, also to the person's next request being signed out (that adds the app's
//!    one-second memory of recently read sessions).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use async_session::Session;
use quotebook::{
    auth::current_user::SessionUser,
    config::Settings,
    emulator::{EventStreamDestination, LogStreamDestination, StreamDestinations},
    local_postgres::LocalPostgres,
    startup::Application,
};
use serde_json::json;
use sqlx::{ConnectOptions, Connection, PgPool, postgres::PgListener};

// Shared with the tests; the benchmark only renames and blocks users.
#[allow(dead_code)]
#[path = "../tests/api/helpers/tenant.rs"]
mod tenant;
use tenant::Tenant;

const EVENTS_TOKEN: &str = "streams-bench-events-token";
const LOGS_TOKEN: &str = "streams-bench-logs-token";
/// People whose next request is watched after their block.
const SIGNED_OUT_SAMPLE: usize = 50;

type Clock = Arc<Mutex<HashMap<String, Instant>>>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let changes: usize = flag("--changes").map_or(Ok(1000), |v| v.parse())?;
    let rate: u64 = flag("--rate").map_or(Ok(50), |v| v.parse())?;
    let logs = flag("--stream").as_deref() == Some("logs");
    if std::env::var_os("RUST_LOG").is_some() {
        quotebook::telemetry::init(false);
    }

    let dir = std::env::temp_dir().join(format!("quotebook-streams-bench-{}", std::process::id()));
    let (local, server) = tokio::task::block_in_place(|| LocalPostgres::from_env_or_start(&dir))?;
    let name = format!("qb_streams_bench_{}", std::process::id());
    let mut admin = server.connect().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await?;
    let url = match &local {
        Some(local) => local.url(&name),
        None => {
            let mut url = url::Url::parse(&std::env::var("DATABASE_URL")?)?;
            url.set_path(&format!("/{name}"));
            url.to_string()
        }
    };

    let result = bench(&url, changes, rate, logs).await;

    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
    let _ = admin.close().await;
    if let Some(local) = local {
        tokio::task::block_in_place(|| local.stop());
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn bench(database_url: &str, changes: usize, rate: u64, logs: bool) -> anyhow::Result<()> {
    let never = "0 0 0 1 1 * 2100";
    let users = changes.to_string();
    let vars: HashMap<String, String> = [
        ("APP_ENV", "development"),
        ("PORT", "0"),
        ("APP_BASE_URL", "http://127.0.0.1:0"),
        ("DATABASE_URL", database_url),
        ("AUTH0_EMULATOR_ADDR", "127.0.0.1:0"),
        ("AUTH0_EMULATOR_USERS", users.as_str()),
        ("AUTH0_EMULATOR_PERSIST_KEY", "false"),
        ("AUTH0_EVENTS_TOKEN", EVENTS_TOKEN),
        ("AUTH0_LOG_STREAM_TOKEN", LOGS_TOKEN),
        ("SYNC_SCHEDULE", never),
        ("SYNC_FULL_SCHEDULE", never),
        ("RUST_LOG", "warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let app = Application::build(Settings::from_vars(&vars)?).await?;
    let address = format!("http://127.0.0.1:{}", app.port());
    let emulator = app.emulator().cloned().context("the in-process emulator")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stopped = futures::FutureExt::shared(async {
        let _ = stopped.await;
    });
    let worker = app.spawn_worker(stopped.clone()).await?;
    let db = app.db().clone();
    let server = tokio::spawn(app.run_until_stopped(stopped));

    let url = |path: &str| url::Url::parse(&format!("{address}{path}"));
    emulator.deliver_streams_to(if logs {
        StreamDestinations {
            events: None,
            logs: Some(LogStreamDestination {
                url: url("/webhooks/auth0/logs")?,
                authorization: Some(LOGS_TOKEN.into()),
                format: Default::default(),
            }),
        }
    } else {
        StreamDestinations {
            events: Some(EventStreamDestination {
                url: url("/webhooks/auth0/events")?,
                token: EVENTS_TOKEN.into(),
            }),
            logs: None,
        }
    });
    println!(
        "{} changes a phase at {rate}/s through the emulator's {}, app and worker in this process",
        changes,
        if logs { "Log Stream" } else { "Event Stream" }
    );
    watch_table_changes(&db).await?;
    // The benchmark's listeners have connections of their own, not the app's pool's.
    let watcher = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(database_url)
        .await?;

    let tenant = Tenant::of(emulator.issuer()).await?;
    let user_ids: Vec<String> = {
        let mut ids = emulator.users().user_ids();
        ids.sort();
        ids.truncate(changes);
        ids
    };
    anyhow::ensure!(
        user_ids.len() == changes,
        "the emulator seeded too few users"
    );
    let api_before = emulator.faults().management_requests();

    // 1. Updates.
    let sent: Clock = Arc::default();
    let listener = listen(&watcher).await?;
    let collector = tokio::spawn(collect(listener, sent.clone(), changes, Watch::Names));
    let elapsed = at_rate(rate, &user_ids, |n, user_id| {
        let tenant = tenant.clone();
        let sent = sent.clone();
        async move {
            let name = format!("bench-{n}");
            sent.lock().unwrap().insert(name.clone(), Instant::now());
            tenant
                .patch(&user_id, json!({ "name": name }))
                .await
                .map(drop)
        }
    })
    .await?;
    let updates = collector.await??;
    report("update -> users row", &updates, changes, elapsed);

    // 2. Blocks of people with two sessions each.
    let cookies = sessions_for(&db, &user_ids).await?;
    let sent: Clock = Arc::default();
    let listener = listen(&watcher).await?;
    let blocked = tokio::spawn(collect(listener, sent.clone(), changes, Watch::Blocks));
    let listener = listen(&watcher).await?;
    let ended = tokio::spawn(collect(
        listener,
        sent.clone(),
        changes,
        Watch::SessionsEnded,
    ));
    let sample: Vec<(String, String)> = user_ids
        .iter()
        .zip(&cookies)
        .take(SIGNED_OUT_SAMPLE)
        .map(|(id, cookie)| (id.clone(), cookie.clone()))
        .collect();
    let signed_out = tokio::spawn(watch_signed_out(address.clone(), sample, sent.clone()));
    let elapsed = at_rate(rate, &user_ids, |_, user_id| {
        let tenant = tenant.clone();
        let sent = sent.clone();
        async move {
            sent.lock().unwrap().insert(user_id.clone(), Instant::now());
            tenant
                .patch(&user_id, json!({ "blocked": true }))
                .await
                .map(drop)
        }
    })
    .await?;
    report("block -> users.blocked", &blocked.await??, changes, elapsed);
    report("block -> sessions ended", &ended.await??, changes, elapsed);
    let signed_out = signed_out.await??;
    report(
        "block -> next request signed out (sample)",
        &signed_out,
        SIGNED_OUT_SAMPLE,
        elapsed,
    );

    // Where the time went, from the app's ledger: Auth0 (the emulator) to the webhook's
    // commit, and from there to the worker's.
    let stages: Vec<(f64, f64)> = sqlx::query_as(
        "SELECT extract(epoch FROM received_at - occurred_at)::float8 * 1000,
                extract(epoch FROM processed_at - received_at)::float8 * 1000
         FROM auth0_stream_events WHERE occurred_at IS NOT NULL AND processed_at IS NOT NULL",
    )
    .fetch_all(&db)
    .await?;
    let as_durations = |ms: Vec<f64>| -> Vec<Duration> {
        ms.into_iter()
            .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0))
            .collect()
    };
    let n = stages.len();
    let (delivery, processing): (Vec<f64>, Vec<f64>) = stages.into_iter().unzip();
    report(
        "  of which Auth0 -> webhook committed",
        &as_durations(delivery),
        n,
        elapsed,
    );
    report(
        "  of which webhook -> worker committed",
        &as_durations(processing),
        n,
        elapsed,
    );

    let api_calls = emulator.faults().management_requests() - api_before - 2 * changes as u64;
    println!("Management API calls made by the app: {api_calls}");
    println!(
        "failed delivery attempts: {}",
        emulator.deliveries().failed_attempts()
    );
    println!("peak RSS (VmHWM, app + emulator): {}", peak_rss());

    let _ = stop.send(());
    let _ = server.await;
    let _ = worker.await;
    Ok(())
}

/// Runs `change` for each user at `rate` per second, each in its own task (a slow request does
/// not hold up the schedule); returns how long sending took.
async fn at_rate<F, Fut>(rate: u64, user_ids: &[String], change: F) -> anyhow::Result<Duration>
where
    F: Fn(usize, String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut tasks = Vec::with_capacity(user_ids.len());
    for (n, user_id) in user_ids.iter().enumerate() {
        tick.tick().await;
        tasks.push(tokio::spawn(change(n, user_id.clone())));
    }
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

/// Triggers that notify `bench` of every `users` row written and every session ended.
async fn watch_table_changes(db: &PgPool) -> anyhow::Result<()> {
    for statement in [
        "CREATE FUNCTION bench_users() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM pg_notify('bench', 'user ' || NEW.user_id || ' ' || coalesce(NEW.blocked, false)
                               || ' ' || coalesce(NEW.name, ''));
             RETURN NEW;
         END $$",
        "CREATE TRIGGER bench_users AFTER INSERT OR UPDATE ON users
         FOR EACH ROW EXECUTE FUNCTION bench_users()",
        "CREATE FUNCTION bench_sessions() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM pg_notify('bench', 'ended ' || coalesce(OLD.user_id, ''));
             RETURN OLD;
         END $$",
        "CREATE TRIGGER bench_sessions AFTER DELETE ON sessions
         FOR EACH ROW EXECUTE FUNCTION bench_sessions()",
    ] {
        sqlx::query(statement).execute(db).await?;
    }
    Ok(())
}

async fn listen(db: &PgPool) -> anyhow::Result<PgListener> {
    let mut listener = PgListener::connect_with(db).await?;
    listener.listen("bench").await?;
    Ok(listener)
}

#[derive(Clone, Copy)]
enum Watch {
    /// `users.name` became `bench-N`.
    Names,
    /// `users.blocked` became true.
    Blocks,
    /// A session of the user was deleted.
    SessionsEnded,
}

/// Latencies (from the time recorded in `sent` under the change's key) of the first `expected`
/// notifications of the watched kind; gives up 60 s after the last one.
async fn collect(
    mut listener: PgListener,
    sent: Clock,
    expected: usize,
    watch: Watch,
) -> anyhow::Result<Vec<Duration>> {
    let mut seen: HashMap<String, Duration> = HashMap::new();
    while seen.len() < expected {
        let notification = tokio::time::timeout(Duration::from_secs(60), listener.recv())
            .await
            .context("no change for 60 s")??;
        let at = Instant::now();
        let mut words = notification.payload().splitn(4, ' ');
        let key = match (
            watch,
            words.next(),
            words.next(),
            words.next(),
            words.next(),
        ) {
            (Watch::Names, Some("user"), _, _, Some(name)) => name.to_owned(),
            (Watch::Blocks, Some("user"), Some(user), Some("true"), _) => user.to_owned(),
            (Watch::SessionsEnded, Some("ended"), Some(user), _, _) => user.to_owned(),
            _ => continue,
        };
        let started = sent.lock().unwrap().get(&key).copied();
        if let Some(started) = started {
            seen.entry(key).or_insert(at - started);
        }
    }
    Ok(seen.into_values().collect())
}

/// Two sessions for each user, written as the app writes them; returns a cookie of each user.
async fn sessions_for(db: &PgPool, user_ids: &[String]) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut owners = Vec::new();
    let mut data = Vec::new();
    let mut cookies = Vec::new();
    for user_id in user_ids {
        for device in 0..2 {
            let mut session = Session::new();
            session.insert("created_at", chrono::Utc::now().timestamp())?;
            session.insert(
                "user",
                SessionUser {
                    sub: user_id.clone(),
                    sid: None,
                    name: Some("Bench".into()),
                    email: None,
                    email_verified: None,
                    picture: None,
                    roles: vec![],
                    id_token: None,
                },
            )?;
            session.expire_in(Duration::from_secs(86_400));
            ids.push(session.id().to_owned());
            owners.push(user_id.clone());
            data.push(serde_json::to_value(&session)?);
            let cookie = session.into_cookie_value().context("no cookie value")?;
            if device == 0 {
                cookies.push(format!("quotebook_session={cookie}"));
            }
        }
    }
    sqlx::query(
        "INSERT INTO sessions (id, expires_at, data, user_id)
         SELECT id, now() + interval '1 day', data, owner
         FROM unnest($1::text[], $2::jsonb[], $3::text[]) AS s(id, data, owner)",
    )
    .bind(&ids)
    .bind(&data)
    .bind(&owners)
    .execute(db)
    .await?;
    Ok(cookies)
}

/// Polls each sampled person's `/auth/me` every 50 ms after their block was sent, until it
/// answers 401; returns those delays.
async fn watch_signed_out(
    address: String,
    people: Vec<(String, String)>,
    sent: Clock,
) -> anyhow::Result<Vec<Duration>> {
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for (user_id, cookie) in people {
        let http = http.clone();
        let sent = sent.clone();
        let url = format!("{address}/auth/me");
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                anyhow::ensure!(Instant::now() < deadline, "{user_id} was never signed out");
                let started = sent.lock().unwrap().get(&user_id).copied();
                if let Some(started) = started {
                    let status = http
                        .get(&url)
                        .header("cookie", &cookie)
                        .send()
                        .await?
                        .status();
                    if status == reqwest::StatusCode::UNAUTHORIZED {
                        return Ok(started.elapsed());
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    let mut delays = Vec::new();
    for task in tasks {
        delays.push(task.await??);
    }
    Ok(delays)
}

fn report(what: &str, latencies: &[Duration], expected: usize, sending: Duration) {
    let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        ms.get(((ms.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "{what:<44} n={:<5} p50 {:>7.1} ms  p95 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  (sent in {:.1} s)",
        ms.len(),
        at(0.50),
        at(0.95),
        at(0.99),
        ms.last().copied().unwrap_or(f64::NAN),
        sending.as_secs_f64()
    );
    if ms.len() < expected {
        println!("  only {} of {expected} observed", ms.len());
    }
}

fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}
