//! Web benchmark: the release app (with its in-process emulator) on its own Postgres, loaded by
//! wrk, next to the ceilings on the same database: `pgbench -S` for reads, and pgbench running the
//! save's own upsert for writes. Prints a table.
//!
//! ```sh
//! cargo build --release && cargo run --release --example web_bench
//! ```
//! Needs `wrk` and `pgbench` (Debian: `apt-get install wrk postgresql-contrib`).
//!
//! `--only <text>` runs just the scenarios whose name contains the text (and skips pgbench unless
//! it matches "pgbench"); `--seconds N` changes the length of each run (for profiling).
//!
//! `--rtt 0,1,5` (the default) also runs the pages that read or write the database with the app
//! reaching Postgres through [`delay_proxy`], a proxy that adds that many milliseconds of round
//! trip (Neon in the same region is about 1 ms away): the app's default pool, as deployed.
//!
//! `--pooler` puts Debian's PgBouncer (transaction mode, 20 server connections) between the app
//! and Postgres for the runs without added delay, named like Neon's pooled endpoint and given to
//! the app as its only URL (as on Neon: requests through the pooler with unnamed statements,
//! session work on the derived direct URL), and counts the statements left prepared on the
//! pooler's server connections afterwards. Needs `pgbouncer` (Debian: `apt-get install
//! pgbouncer`).

mod delay_proxy;
#[path = "../../tests/api/helpers/pgbouncer.rs"]
mod pgbouncer;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use async_session::Session;
use delay_proxy::DelayProxy;
use quotebook::{auth::current_user::SessionUser, local_postgres::LocalPostgres};
use sqlx::{ConnectOptions, Connection};

const CONNECTIONS: u32 = 64;
/// Signed-in people whose requests rotate (as many as connections).
const PEOPLE: usize = 64;
/// Enough people that no session is read twice within the app's one-second memory of them.
const CROWD: usize = 50_000;
const CSRF: &str = "bench-csrf-token";
/// Turns a rotating script's requests into the htmx save the page sends (plus its CSRF header).
const PUT_REQUEST: &str = "wrk.method = \"PUT\"\n\
    wrk.body = \"message=Benchmarking+is+a+kind+of+listening.\"\n\
    wrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n\
    wrk.headers[\"HX-Request\"] = \"true\"\n";
const SIGNED_IN: &str = "GET / signed in, with a quote";
const CROWD_NAME: &str = "GET / signed in, 50k people";
const SAVE: &str = "PUT /quote (htmx)";
/// The scenarios that reach the database, run again at each round trip above zero.
const DATABASE_BOUND: [&str; 3] = [SIGNED_IN, CROWD_NAME, SAVE];

struct Row {
    rtt_ms: u32,
    name: &'static str,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    rss_mb: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let binary = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/quotebook");
    anyhow::ensure!(
        binary.exists(),
        "build the app first: cargo build --release"
    );
    for tool in ["wrk", "pgbench"] {
        anyhow::ensure!(
            Command::new("which").arg(tool).output()?.status.success(),
            "{tool} is missing (Debian: apt-get install wrk postgresql-contrib)"
        );
    }

    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let only = flag("--only");
    let seconds: u32 = flag("--seconds").map_or(Ok(10), |s| s.parse())?;
    let wanted = |name: &str| only.as_deref().is_none_or(|text| name.contains(text));
    let through_pooler = args.iter().any(|a| a == "--pooler");

    let dir = std::env::temp_dir().join(format!("quotebook-bench-{}", std::process::id()));
    let cluster = tokio::task::block_in_place(|| LocalPostgres::start(&dir))?;
    let mut admin = cluster.connect_options("postgres").connect().await?;
    sqlx::query("CREATE DATABASE bench")
        .execute(&mut admin)
        .await?;
    admin.close().await?;

    let round_trips: Vec<u32> = flag("--rtt")
        .unwrap_or_else(|| "0,1,5".into())
        .split(',')
        .map(|ms| ms.trim().parse())
        .collect::<Result<_, _>>()?;
    let pool_size = quotebook::config::Settings::from_vars(&Default::default())?
        .database
        .max_connections;

    // Neon's naming: the pooled endpoint is the direct one with `-pooler` (here a socket
    // directory, and a link to the cluster's socket without it).
    let neon = std::env::temp_dir().join(format!("quotebook-bench-neon-{}", std::process::id()));
    let bouncer = if through_pooler {
        std::fs::create_dir_all(&neon)?;
        std::fs::set_permissions(&neon, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        std::os::unix::fs::symlink(cluster.socket_dir(), neon.join("ep-bench"))?;
        Some(
            pgbouncer::PgBouncer::start(
                &neon.join("ep-bench-pooler"),
                5432,
                cluster.socket_dir(),
                20,
            )
            .await,
        )
    } else {
        None
    };
    let database_url = match &bouncer {
        Some(bouncer) => bouncer.url("ep-bench-pooler.neon.test", "bench"),
        None => cluster.url("bench"),
    };

    // The app migrates the database as it starts; the people are written after.
    let mut app = start_app(&binary, &database_url).await?;
    let pool = sqlx::PgPool::connect_with(cluster.connect_options("bench")).await?;
    let idle_rss = rss_mb(&app.process);

    // Each request comes from the next of the signed-in people, as on a real site: PEOPLE of
    // them (their sessions stay in the app's one-second memory), or CROWD (they never do).
    let people = rotating_script(&signed_in_people(&pool, &dir, "people", PEOPLE).await?);
    let crowd = rotating_script(&signed_in_people(&pool, &dir, "crowd", CROWD).await?);
    let get_script = write_script(&dir, "get.lua", &people)?;
    let crowd_script = write_script(&dir, "crowd.lua", &crowd)?;
    let put_script = write_script(
        &dir,
        "put.lua",
        &format!("{people}{PUT_REQUEST}wrk.headers[\"X-CSRF-Token\"] = \"{CSRF}\"\n"),
    )?;
    let scenarios: [(&'static str, &str, Option<&str>); 5] = [
        ("GET / signed out", "/", None),
        (SIGNED_IN, "/", Some(&get_script)),
        (CROWD_NAME, "/", Some(&crowd_script)),
        (SAVE, "/quote", Some(&put_script)),
        ("GET /assets/htmx.min.js", "/assets/htmx.min.js", None),
    ];
    let mut rows = Vec::new();
    let mut measured_rtt = Vec::new();
    for &rtt_ms in &round_trips {
        // Zero is the app on Postgres's Unix socket; the others go through a delaying proxy,
        // which serves its connections until they close.
        if rtt_ms > 0 {
            drop(app);
            let started = DelayProxy::start(
                &cluster.socket_dir().join(".s.PGSQL.5432"),
                Duration::from_millis(rtt_ms.into()),
            )?;
            let through = started.measure_rtt("bench", 200).await?;
            measured_rtt.push((rtt_ms, through));
            let url = format!(
                "postgres://postgres@127.0.0.1:{}/bench?sslmode=disable",
                started.port()
            );
            app = start_app(&binary, &url).await?;
        }
        for (name, path, script) in &scenarios {
            if wanted(name) && (rtt_ms == 0 || DATABASE_BOUND.contains(name)) {
                let url = format!("{}{path}", app.base);
                rows.push(run_wrk(rtt_ms, name, &url, *script, seconds, &app.process)?);
            }
        }
    }
    // The ceilings: pgbench's own read-only transaction, and the statement a save runs.
    let pgbench_tps = if wanted("pgbench") {
        let save_script = dir.join("save.sql");
        std::fs::write(&save_script, SAVE_SQL)?;
        let save_script = save_script.display().to_string();
        run_pgbench(&cluster, &["-i", "-s", "1", "-q"], None)?;
        Some((
            run_pgbench(&cluster, &["-S"], Some(seconds))?,
            run_pgbench(&cluster, &["-f", &save_script], Some(seconds))?,
        ))
    } else {
        None
    };

    let pooler_state = match &bouncer {
        Some(bouncer) => {
            let servers = bouncer.server_connections("bench", &pool).await;
            let prepared: usize = servers.iter().map(|s| s.prepared.len()).sum();
            let listening: usize = servers.iter().map(|s| s.listening.len()).sum();
            Some((servers.len(), prepared, listening))
        }
        None => None,
    };
    drop(app);
    drop(bouncer);
    let _ = std::fs::remove_dir_all(&neon);
    pool.close().await;
    tokio::task::block_in_place(|| cluster.stop());
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    println!(
        "{CONNECTIONS} connections, {seconds} s each, wrk -t2; the app's default pool of \
         {pool_size}; idle RSS {idle_rss:.1} MB; {}",
        if through_pooler {
            "without added delay through PgBouncer (transaction mode)"
        } else {
            "straight to Postgres"
        }
    );
    for (rtt_ms, through) in &measured_rtt {
        println!(
            "{rtt_ms} ms proxy: SELECT 1 through it takes {through:.2} ms (median); \
             pool / round trip = {:.0} queries/s",
            f64::from(pool_size) * 1000.0 / f64::from(*rtt_ms)
        );
    }
    println!(
        "{:>6} {:<32} {:>10} {:>9} {:>9} {:>7} {:>8}",
        "RTT ms", "scenario", "req/s", "p50 ms", "p99 ms", "errors", "RSS MB"
    );
    for row in &rows {
        println!(
            "{:>6} {:<32} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>8.1}",
            row.rtt_ms, row.name, row.rps, row.p50_ms, row.p99_ms, row.errors, row.rss_mb
        );
    }
    for row in rows
        .iter()
        .filter(|row| row.rtt_ms > 0 && row.name == SIGNED_IN)
    {
        let budget = f64::from(row.rtt_ms) + 2.0;
        println!(
            "at {} ms: signed-in p50 {:.2} ms (goal <= round trip + 2 = {budget:.0} ms: {})",
            row.rtt_ms,
            row.p50_ms,
            if row.p50_ms <= budget {
                "met"
            } else {
                "missed"
            }
        );
    }
    if let Some((servers, prepared, listening)) = pooler_state {
        println!(
            "on the pooler's {servers} server connections afterwards: {prepared} prepared statements, {listening} LISTENs"
        );
    }
    if let Some((tps, save_tps)) = pgbench_tps {
        println!("{:<39} {:>10.0}", "pgbench -S (same database)", tps);
        println!("{:<39} {:>10.0}", "pgbench, the save's upsert", save_tps);
        let direct = |name: &str| rows.iter().find(|row| row.rtt_ms == 0 && row.name == name);
        if let Some(signed_in) = direct(SIGNED_IN) {
            println!(
                "signed-in GET / at {:.0}% of pgbench -S",
                100.0 * signed_in.rps / tps.max(1.0)
            );
        }
        if let Some(save) = direct(SAVE) {
            println!(
                "PUT /quote at {:.0}% of pgbench running its upsert (goal >= 80%)",
                100.0 * save.rps / save_tps.max(1.0)
            );
        }
    }
    Ok(())
}

/// The app under test, killed when dropped (on an error too; the cluster stops itself on drop).
struct App {
    process: Child,
    base: String,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Starts the release binary on `database_url` and waits until it is ready.
async fn start_app(binary: &std::path::Path, database_url: &str) -> anyhow::Result<App> {
    let port = free_port()?;
    let app = App {
        process: Command::new(binary)
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PORT", port.to_string())
            // The address wrk uses is the canonical one: nothing is redirected.
            .env("APP_BASE_URL", format!("http://127.0.0.1:{port}"))
            .env("DATABASE_URL", database_url)
            .env("AUTH0_EMULATOR_ADDR", "127.0.0.1:0")
            .env("AUTH0_EMULATOR_PERSIST_KEY", "false")
            .env("RUST_LOG", "warn")
            // Lets a run try other runtime sizes (tokio reads it) without rebuilding.
            .envs(std::env::var("TOKIO_WORKER_THREADS").map(|n| ("TOKIO_WORKER_THREADS", n)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
        base: format!("http://127.0.0.1:{port}"),
    };
    wait_until_up(&app.base).await?;
    Ok(app)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_until_up(base: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        if let Ok(response) = reqwest::get(format!("{base}/readyz")).await
            && response.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the app did not become ready")
}

/// `count` signed-in people with a quote each, written in bulk the way the app stores them;
/// returns the file that lists their cookies, one per line.
async fn signed_in_people(
    pool: &sqlx::PgPool,
    dir: &std::path::Path,
    prefix: &str,
    count: usize,
) -> anyhow::Result<std::path::PathBuf> {
    let mut user_ids = Vec::with_capacity(count);
    let mut session_ids = Vec::with_capacity(count);
    let mut session_data = Vec::with_capacity(count);
    let mut cookies = String::new();
    for n in 0..count {
        let user_id = format!("auth0|{prefix}{n}");
        let mut session = Session::new();
        session.insert("created_at", chrono::Utc::now().timestamp())?;
        session.insert("csrf_token", CSRF)?;
        session.insert(
            "user",
            SessionUser {
                sub: user_id.clone(),
                sid: None,
                name: Some(format!("Bench {n}")),
                email: Some(format!("{prefix}{n}@example.com")),
                email_verified: Some(true),
                picture: None,
                roles: vec![],
                id_token: None,
            },
        )?;
        // As if extended a moment ago, and far enough ahead that no request of the run is due to
        // extend it (a write, once a minute per person): the signed-in rows measure page reads,
        // at every round trip alike.
        session.expire_in(Duration::from_secs(86_400 + 3_600));
        session_ids.push(session.id().to_owned());
        session_data.push(serde_json::to_value(&session)?);
        let value = session
            .into_cookie_value()
            .ok_or_else(|| anyhow::anyhow!("no cookie value"))?;
        cookies.push_str(&format!("quotebook_session={value}\n"));
        user_ids.push(user_id);
    }
    sqlx::query(
        "INSERT INTO users (user_id, email, name)
         SELECT id, split_part(id, '|', 2) || '@example.com', 'Bench' FROM unnest($1::text[]) AS id",
    )
    .bind(&user_ids)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO user_messages (user_id, message)
         SELECT id, 'To measure is to know.' FROM unnest($1::text[]) AS id",
    )
    .bind(&user_ids)
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO sessions (id, expires_at, data)
         SELECT id, now() + interval '1 day', data FROM unnest($1::text[], $2::jsonb[]) AS s(id, data)",
    )
    .bind(&session_ids)
    .bind(&session_data)
    .execute(pool)
    .await?;
    let file = dir.join(format!("{prefix}.txt"));
    std::fs::write(&file, cookies)?;
    Ok(file)
}

/// Writes a wrk script into `dir`; returns wrk's argument for it.
fn write_script(dir: &std::path::Path, name: &str, text: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(format!("-s{}", path.display()))
}

/// A wrk script sending each request as the next person in `cookies_file`; each wrk thread
/// starts at a different place in the list.
fn rotating_script(cookies_file: &std::path::Path) -> String {
    format!(
        "cookies = {{}}\n\
         for line in io.lines(\"{}\") do cookies[#cookies + 1] = line end\n\
         local threads = 0\n\
         function setup(thread) thread:set(\"start\", threads * 7919); threads = threads + 1 end\n\
         function init(args) i = start or 0 end\n\
         function request()\n  i = i % #cookies + 1\n  wrk.headers[\"Cookie\"] = cookies[i]\n  return wrk.format()\nend\n",
        cookies_file.display()
    )
}

fn rss_mb(child: &Child) -> f64 {
    std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn run_wrk(
    rtt_ms: u32,
    name: &'static str,
    url: &str,
    script: Option<&str>,
    seconds: u32,
    app: &Child,
) -> anyhow::Result<Row> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{CONNECTIONS}"),
        &format!("-d{seconds}s"),
        "--latency",
    ])
    .args(script)
    .arg(url);
    let child = cmd.stdout(Stdio::piped()).spawn()?;
    // RSS under load: sample half-way through the run.
    std::thread::sleep(Duration::from_secs(u64::from(seconds) / 2));
    let rss = rss_mb(app);
    let output = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let percentile = |p: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .map(|v| parse_duration_ms(v.trim()))
            .unwrap_or(f64::NAN)
    };
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let socket_errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|v| {
            v.split(',')
                .filter_map(|part| part.split_whitespace().nth(1))
                .filter_map(|n| n.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Ok(Row {
        rtt_ms,
        name,
        rps,
        p50_ms: percentile("50%"),
        p99_ms: percentile("99%"),
        errors: non_2xx + socket_errors,
        rss_mb: rss,
    })
}

fn parse_duration_ms(value: &str) -> f64 {
    let split = value
        .find(|c: char| c.is_alphabetic())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => f64::NAN,
    }
}

/// What `PUT /quote` runs, with the bench's people: the write path's ceiling.
const SAVE_SQL: &str = "\\set n random(0, 63)
INSERT INTO user_messages (user_id, message) VALUES ('auth0|people' || :n, 'Benchmarking is a kind of listening.')
    ON CONFLICT (user_id) DO UPDATE SET message = EXCLUDED.message, updated_at = clock_timestamp();
";

/// Runs pgbench on the bench database; with `seconds`, as a load of CONNECTIONS clients whose
/// TPS it returns.
fn run_pgbench(
    cluster: &LocalPostgres,
    workload: &[&str],
    seconds: Option<u32>,
) -> anyhow::Result<f64> {
    let socket = cluster.socket_dir().display().to_string();
    let mut cmd = Command::new("pgbench");
    cmd.args(["-h", &socket, "-U", "postgres"]).args(workload);
    if let Some(seconds) = seconds {
        cmd.args(["-n", "-c", &CONNECTIONS.to_string(), "-j", "2"])
            .args(["-T", &seconds.to_string()]);
    }
    let run = cmd.arg("bench").output()?;
    anyhow::ensure!(
        run.status.success(),
        "pgbench {workload:?} failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = String::from_utf8_lossy(&run.stdout);
    Ok(text
        .lines()
        .find(|l| l.starts_with("tps ="))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}
