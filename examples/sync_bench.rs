//! Full-sync throughput: seeds the Auth0 emulator, runs one full sync into a fresh database and
//! prints users/s, API calls, SQL statements and peak RSS.
//!
//! ```sh
//! cargo run --release --example sync_bench -- --users 100000 [--batch 1000]
//! ```
//!
//! The emulator runs in a child process (this binary re-executed with `--serve-emulator`), so
//! the peak RSS printed is the sync's own, not the emulated tenant's. Postgres is `DATABASE_URL`
//! when set (a throwaway database is created on it), otherwise a throwaway local cluster.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::Context;
use quotebook::{
    config::{DEV_CLIENT_ID, DEV_CLIENT_SECRET, Secret},
    db,
    emulator::{Emulator, EmulatorConfig},
    local_postgres::LocalPostgres,
    users::{
        auth0_api::{ApiOptions, ManagementApi},
        foreground,
        sync::{SyncOptions, Syncer},
        sync_runs::{RunStatus, SyncMode},
    },
};
use sqlx::{ConnectOptions, Connection, postgres::PgPoolOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let users: usize = flag(&args, "--users")
        .map(|v| v.parse().context("--users takes a number"))
        .transpose()?
        .unwrap_or(10_000);
    if args.iter().any(|a| a == "--serve-emulator") {
        return serve_emulator(users).await;
    }

    // The emulated tenant, in its own process.
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--serve-emulator", "--users", &users.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the emulator process")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("emulator stdout")?).read_line(&mut line)?;
    let issuer = line
        .trim()
        .strip_prefix("ISSUER ")
        .context("the emulator process did not report its issuer")?
        .to_owned();
    println!(
        "seeded {users} users in the emulator in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let result = bench(users, &issuer).await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

async fn bench(users: usize, issuer: &str) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("quotebook-bench-{}", std::process::id()));
    let (local, server) = match std::env::var("DATABASE_URL") {
        Ok(url) => (None, db::options_from_url(&url)?),
        Err(_) => {
            let local = tokio::task::block_in_place(|| LocalPostgres::start(&dir))?;
            let server = local.connect_options("postgres");
            (Some(local), server)
        }
    };
    let name = format!("qb_bench_{}", std::process::id());
    let mut admin = server.connect().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await?;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(server.clone().database(&name))
        .await?;
    db::migrate(&pool).await?;

    let api = ManagementApi::new(
        issuer.parse()?,
        DEV_CLIENT_ID,
        Secret::new(DEV_CLIENT_SECRET),
        ApiOptions::default(),
    )?;
    let mut options = SyncOptions::default();
    if let Some(batch) = flag(&std::env::args().collect::<Vec<_>>(), "--batch") {
        options.batch_size = batch.parse().context("--batch takes a number")?;
    }
    let syncer = Syncer::new(pool.clone(), api, options);
    let clock = Instant::now();
    let run = foreground::sync_in_foreground(&syncer, SyncMode::Full, false).await;
    let elapsed = clock.elapsed().as_secs_f64();

    let outcome = match run {
        Ok(run) if run.status == RunStatus::Succeeded => {
            println!("{}", foreground::summary(&run));
            println!(
                "full sync: {users} users in {elapsed:.2}s = {:.0} users/s",
                run.fetched as f64 / elapsed
            );
            println!(
                "API calls (HTTP requests, token included): {}",
                syncer.api().calls()
            );
            println!("SQL statements: {}", syncer.sql_statements());
            println!("peak RSS (VmHWM): {}", peak_rss());
            Ok(())
        }
        Ok(run) => Err(anyhow::anyhow!(foreground::summary(&run))),
        Err(err) => Err(err),
    };

    pool.close().await;
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
    outcome
}

async fn serve_emulator(users: usize) -> anyhow::Result<()> {
    let emulator = Emulator::start(EmulatorConfig {
        seed_users: users,
        ..EmulatorConfig::for_tests()
    })
    .await?;
    println!("ISSUER {}", emulator.issuer());
    // Runs until the parent kills it.
    std::future::pending::<()>().await;
    Ok(())
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The process's peak resident set size, from /proc (Linux).
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
