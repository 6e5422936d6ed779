//! Full-sync throughput: seeds the Auth0 emulator, runs one full sync into a fresh database and
//! prints users/s, API calls, SQL statements, CPU time and peak RSS, for the sync and for the
//! emulated tenant apart.
//!
//! ```sh
//! cargo run --release --example sync_bench -- --users 1000000 [--batch 5000] [--again]
//!     [--bulk-load-min 10000]
//! ```
//!
//! `--bulk-load-min` is the smallest tenant whose first sync is a bulk load (the admin
//! search's indexes set aside, new users copied straight into `users`); a number above
//! `--users` measures the first sync without it.
//!
//! The emulator runs in a child process (this binary re-executed with `--serve-emulator`), so
//! the peak RSS printed for the sync is the sync's own, not the emulated tenant's. On the export
//! path (more than 1000 users) the sync is timed from the moment the export is ready to download:
//! the emulator's own time to build the file is printed apart, as is the time the sync's polling
//! took to notice it. `--again` runs a second full sync over the rows the first one wrote (the
//! steady state of a scheduled full sync). Postgres is `DATABASE_URL` when set (a throwaway
//! database is created on it), otherwise a throwaway local cluster; with a local cluster the CPU
//! time of all its processes is printed too. Other work on the machine skews wall-clock times,
//! so the load average is printed before and after.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use quotebook::{
    config::{DEV_CLIENT_ID, DEV_CLIENT_SECRET, Secret},
    db,
    emulator::{Emulator, EmulatorConfig},
    local_postgres::LocalPostgres,
    users::{
        auth0_api::{ApiOptions, ManagementApi},
        foreground, store,
        sync::{SyncOptions, Syncer},
        sync_runs::{RunStatus, SyncMode},
    },
};
use sqlx::{ConnectOptions, Connection, PgPool, postgres::PgPoolOptions};

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

    println!("load average before: {}", load_average());
    // The emulated tenant, in its own process.
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--serve-emulator", "--users", &users.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the emulator process")?;
    let mut lines = BufReader::new(child.stdout.take().context("emulator stdout")?).lines();
    let issuer = lines
        .next()
        .transpose()?
        .as_deref()
        .and_then(|line| line.strip_prefix("ISSUER "))
        .context("the emulator process did not report its issuer")?
        .to_owned();
    println!(
        "emulator: seeded {users} users in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // The child reports its memory and each export it builds, one line at a time.
    let reports = Arc::new(Mutex::new(Vec::<String>::new()));
    let collected = reports.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(mut reports) = collected.lock() {
                reports.push(line);
            }
        }
    });

    let result = bench(users, &issuer, &args, &reports).await;
    let _ = child.kill();
    let _ = child.wait();
    println!("load average after: {}", load_average());
    result
}

async fn bench(
    users: usize,
    issuer: &str,
    args: &[String],
    reports: &Mutex<Vec<String>>,
) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("quotebook-bench-{}", std::process::id()));
    let (local, server) = tokio::task::block_in_place(|| LocalPostgres::from_env_or_start(&dir))?;
    let name = format!("qb_bench_{}", std::process::id());
    let mut admin = server.connect().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await?;

    let api = ManagementApi::new(
        issuer.parse()?,
        DEV_CLIENT_ID,
        Secret::new(DEV_CLIENT_SECRET),
        ApiOptions::default(),
    )?;
    let mut options = SyncOptions::default();
    if let Some(batch) = flag(args, "--batch") {
        options.batch_size = batch.parse().context("--batch takes a number")?;
    }
    if let Some(min) = flag(args, "--bulk-load-min") {
        options.bulk_load_min_users = min.parse().context("--bulk-load-min takes a number")?;
    }
    if let Some(writers) = flag(args, "--writers") {
        options.writers = writers.parse().context("--writers takes a number")?;
    }
    // Room for every writer, the run's lock and its progress.
    let pool = PgPoolOptions::new()
        .max_connections(
            u32::try_from(options.writers + 2)
                .unwrap_or(u32::MAX)
                .max(4),
        )
        .connect_with(server.clone().database(&name))
        .await?;
    db::migrate(&pool).await?;
    let syncer = Syncer::new(pool.clone(), api, options);
    let postgres = PostgresCpu::find(&pool).await;

    let mut outcome = full_sync(&syncer, users, postgres.as_ref(), reports, "full sync").await;
    if outcome.is_ok() && args.iter().any(|a| a == "--again") {
        outcome = full_sync(
            &syncer,
            users,
            postgres.as_ref(),
            reports,
            "full sync again (every row exists)",
        )
        .await;
    }
    for line in reports.lock().map(|r| r.clone()).unwrap_or_default() {
        if let Some(rss) = line.strip_prefix("RSS ") {
            println!("emulator memory: {rss}");
        }
    }
    println!("sync peak RSS (VmHWM): {}", status_field("self", "VmHWM"));

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

/// Runs one full sync and prints what it took.
async fn full_sync(
    syncer: &Syncer,
    users: usize,
    postgres: Option<&PostgresCpu>,
    reports: &Mutex<Vec<String>>,
    label: &str,
) -> anyhow::Result<()> {
    let calls_before = syncer.api().calls();
    let sql_before = syncer.sql_statements();
    let exports_before = export_reports(reports).len();
    let cpu_before = own_cpu();
    let pg_before = postgres.map(PostgresCpu::seconds);
    let clock = Instant::now();
    let run = foreground::sync_in_foreground(syncer, SyncMode::Full, false).await?;
    let done = Instant::now();
    let elapsed = done - clock;
    if run.status != RunStatus::Succeeded {
        anyhow::bail!(foreground::summary(&run));
    }
    println!("{label}: {}", foreground::summary(&run));
    let ready = syncer.export_ready_at().filter(|at| *at >= clock);
    match ready {
        Some(ready) => {
            let syncing = done - ready;
            let waited = ready - clock;
            println!(
                "  {users} users in {:.2}s from the export being ready = {:.0} users/s \
                 ({:.2}s in all, {:.2}s of it waiting for the export)",
                syncing.as_secs_f64(),
                f64::from(run.fetched) / syncing.as_secs_f64(),
                elapsed.as_secs_f64(),
                waited.as_secs_f64(),
            );
            if let Some(took) = syncer.take_search_indexes_build_time() {
                println!(
                    "  of which building the admin search's indexes after the load: {:.2}s",
                    took.as_secs_f64()
                );
            }
            for line in export_reports(reports).iter().skip(exports_before) {
                println!("  emulator: {line}");
            }
        }
        None => println!(
            "  {users} users in {:.2}s = {:.0} users/s (paged: no export)",
            elapsed.as_secs_f64(),
            f64::from(run.fetched) / elapsed.as_secs_f64()
        ),
    }
    if let Some(started) = run.started_at {
        // The run's deletion pass once more: nothing is left to mark, so this is its cost.
        let clock = Instant::now();
        let deleted = store::mark_unseen_deleted(syncer.db(), started).await?;
        println!(
            "  deletion pass (users not seen by the run, over every row): {:.0} ms, {deleted} more marked",
            clock.elapsed().as_secs_f64() * 1000.0
        );
    }
    println!(
        "  API calls (HTTP requests, token included): {}",
        syncer.api().calls() - calls_before
    );
    println!("  SQL statements: {}", syncer.sql_statements() - sql_before);
    println!(
        "  CPU: sync process {:.1}s{}",
        (own_cpu() - cpu_before).as_secs_f64(),
        match (postgres, pg_before) {
            (Some(pg), Some(before)) => format!(", Postgres {:.1}s", pg.seconds() - before),
            _ => String::new(),
        }
    );
    Ok(())
}

fn export_reports(reports: &Mutex<Vec<String>>) -> Vec<String> {
    reports
        .lock()
        .map(|r| {
            r.iter()
                .filter_map(|l| l.strip_prefix("EXPORT "))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

async fn serve_emulator(users: usize) -> anyhow::Result<()> {
    let emulator = Emulator::start(EmulatorConfig {
        seed_users: users,
        ..EmulatorConfig::for_tests()
    })
    .await?;
    println!("ISSUER {}", emulator.issuer());
    let seeded = status_field("self", "VmRSS");
    // Runs until the parent kills it, reporting each export it builds and its memory.
    let mut reported = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let builds = emulator.export_builds();
        for build in builds.iter().skip(reported) {
            println!(
                "EXPORT built {} users in {:.2}s ({:.0} users/s), {:.1} MB gzipped",
                build.users,
                build.built_in.as_secs_f64(),
                build.users as f64 / build.built_in.as_secs_f64(),
                build.bytes as f64 / 1e6
            );
            println!(
                "RSS {seeded} holding the tenant; {} after building the export; peak {}",
                status_field("self", "VmRSS"),
                status_field("self", "VmHWM")
            );
        }
        reported = builds.len();
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// A field of `/proc/<pid>/status` (Linux), e.g. the peak resident set size `VmHWM`.
fn status_field(pid: &str, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// User and system CPU time of this process so far.
fn own_cpu() -> Duration {
    process_cpu("self").unwrap_or_default()
}

/// User and system CPU time of process `pid`, from `/proc/<pid>/stat`.
fn process_cpu(pid: &str) -> Option<Duration> {
    cpu_ticks(pid, 11..13)
}

/// The CPU time in `fields` of `/proc/<pid>/stat` (counted after the command name: 11 and 12
/// are the process's user and system time, 13 and 14 those of its children that ended).
fn cpu_ticks(pid: &str, fields: std::ops::Range<usize>) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let values: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let mut ticks = 0u64;
    for at in fields {
        ticks += values.get(at)?.parse::<u64>().ok()?;
    }
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis(ticks * 1000 / per_second))
}

/// The processes of a Postgres cluster on this machine: the postmaster's children.
struct PostgresCpu {
    postmaster: String,
}

impl PostgresCpu {
    /// `None` when the server runs elsewhere.
    async fn find(pool: &PgPool) -> Option<Self> {
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(pool)
            .await
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{backend}/stat")).ok()?;
        let parent = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .to_owned();
        Some(Self { postmaster: parent })
    }

    /// CPU seconds used so far by the postmaster and its children, living or ended (a
    /// connection's backend ends with it).
    fn seconds(&self) -> f64 {
        let mut total = cpu_ticks(&self.postmaster, 11..15).unwrap_or_default();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    Some(
                        stat.rsplit_once(')')?
                            .1
                            .split_whitespace()
                            .nth(1)?
                            .to_owned(),
                    )
                });
            if parent.as_deref() == Some(self.postmaster.as_str()) {
                total += process_cpu(&pid).unwrap_or_default();
            }
        }
        total.as_secs_f64()
    }
}
