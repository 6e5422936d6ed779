//! How fast an ended session is gone at another instance: two app instances on one Postgres,
//! sessions each instance has just read (so both remember them), then `end_sessions_of` (what
//! a block or deletion calls) at a steady rate; for each, the time until the *other* instance
//! answers `/auth/me` with 401. Prints p50/p95/p99/max of the revocation's own statement and of
//! the whole "ended to signed out elsewhere".
//!
//! ```sh
//! cargo run --release --example revocation_bench -- [--changes 1000] [--rate 50]
//! ```
//!
//! Postgres is a throwaway local cluster. Both instances run in this process (each with its own
//! pools, session memory and `LISTEN` connection), as two Fly Machines would on one database.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use async_session::SessionStore;
use quotebook::{
    auth::{current_user::SessionUser, revocation, session_store::PgSessionStore},
    config::Settings,
    local_postgres::LocalPostgres,
    startup::Application,
};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::Mutex;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let changes: usize = flag(&args, "--changes").unwrap_or(1_000);
    let rate: u64 = flag(&args, "--rate").unwrap_or(50);

    let dir = std::env::temp_dir().join(format!("quotebook-revocation-{}", std::process::id()));
    let local = tokio::task::block_in_place(|| LocalPostgres::start(&dir))?;
    let result = bench(&local, &dir, changes, rate).await;
    tokio::task::block_in_place(|| local.stop());
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

async fn instance(url: &str, dir: &std::path::Path) -> anyhow::Result<String> {
    let vars: HashMap<String, String> = [
        ("APP_ENV", "development"),
        ("PORT", "0"),
        ("APP_BASE_URL", "http://127.0.0.1:0"),
        ("DATABASE_URL", url),
        ("DATA_DIR", &dir.to_string_lossy()),
        ("AUTH0_EMULATOR_ADDR", "127.0.0.1:0"),
        ("AUTH0_EMULATOR_USERS", "0"),
        ("AUTH0_EMULATOR_PERSIST_KEY", "false"),
        ("RUST_LOG", "warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let app = Application::build(Settings::from_vars(&vars)?).await?;
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    Ok(address)
}

async fn bench(
    local: &LocalPostgres,
    dir: &std::path::Path,
    changes: usize,
    rate: u64,
) -> anyhow::Result<()> {
    let mut admin = local.connect_options("postgres").connect().await?;
    sqlx::query("CREATE DATABASE quotebook")
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    let url = local.url("quotebook");
    let here = instance(&url, dir).await?;
    let there = instance(&url, dir).await?;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(local.connect_options("quotebook"))
        .await?;

    // One signed-in session per change, made as a sign-in makes them.
    let store = PgSessionStore::new(db.clone());
    let mut sessions = Vec::with_capacity(changes);
    for n in 0..changes {
        let sub = format!("auth0|bench{n}");
        let mut session = async_session::Session::new();
        session.insert("created_at", chrono::Utc::now().timestamp())?;
        session.insert(
            "user",
            SessionUser {
                sub: sub.clone(),
                sid: Some(format!("sid-{n}")),
                name: None,
                email: None,
                email_verified: None,
                picture: None,
                roles: Vec::new(),
                id_token: None,
            },
        )?;
        session.expire_in(Duration::from_secs(3600));
        let cookie = store
            .store_session(session)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .context("a new session has a cookie")?;
        sessions.push((sub, cookie));
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let statement = Arc::new(Mutex::new(Vec::with_capacity(changes)));
    let gone = Arc::new(Mutex::new(Vec::with_capacity(changes)));
    let mut every = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut tasks = Vec::with_capacity(changes);
    let started = Instant::now();
    for (sub, cookie) in sessions {
        every.tick().await;
        let (db, http, here, there) = (db.clone(), http.clone(), here.clone(), there.clone());
        let (statement, gone) = (statement.clone(), gone.clone());
        tasks.push(tokio::spawn(async move {
            let me = |address: &str| {
                http.get(format!("{address}/auth/me"))
                    .header("cookie", format!("quotebook_session={cookie}"))
                    .send()
            };
            // Both instances read it: each now serves it from memory.
            for address in [&here, &there] {
                let status = me(address).await?.status();
                anyhow::ensure!(status == 200, "signed in at first, got {status}");
            }
            let ended = Instant::now();
            revocation::end_sessions_of(&db, &sub).await?;
            statement.lock().await.push(ended.elapsed());
            loop {
                if me(&there).await?.status() == 401 {
                    break;
                }
                anyhow::ensure!(ended.elapsed() < Duration::from_secs(5), "never signed out");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            gone.lock().await.push(ended.elapsed());
            Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    println!(
        "{changes} sessions ended at {rate}/s over {:.1} s (2 instances, one Postgres)",
        elapsed.as_secs_f64()
    );
    println!("| measure | p50 ms | p95 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    for (name, samples) in [
        ("end_sessions_of (the DELETE)", statement),
        ("ended -> 401 at the other instance", gone),
    ] {
        let mut samples = samples.lock().await.clone();
        samples.sort();
        let at = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples[i].as_secs_f64() * 1000.0
        };
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
            at(0.5),
            at(0.95),
            at(0.99),
            at(1.0)
        );
    }
    Ok(())
}
