//! Admin search at scale: fills `users` with a million realistic profiles and times the search
//! the admin API and page run (a page of matches and their total, read together) for queries
//! as a person types them, deep pages included. Prints p50/p95 per kind of query.
//!
//! ```sh
//! cargo run --release --example search_bench [-- --users 1000000 --runs 20 --verbose]
//! ```
//!
//! Postgres is a throwaway local cluster (default settings: 128 MB of shared buffers), or the
//! server `DATABASE_URL` points at, where the database is filled once and reused (`--refill`
//! starts it again). The database has the locale `--locale` (default `C.UTF-8`, where letters
//! beyond ASCII are letters to `lower()` and `pg_trgm`; `C` is what the development cluster
//! uses). The app's migrations create the indexes; the fill goes through them, as a sync would,
//! and is followed by `VACUUM ANALYZE` of `users` and `user_search` (autovacuum's steady state;
//! until it has run after a large sync, index-only walks still visit the table).

use std::time::Instant;

use anyhow::Context;
use quotebook::{
    db,
    local_postgres::LocalPostgres,
    users::search::{self, Filter, Position},
};
use sqlx::{ConnectOptions, Connection, PgPool, postgres::PgPoolOptions};

const FILL_USERS: &str = include_str!("fill_users.sql");
const PER_PAGE: u32 = 25;

/// Kinds of query, each a list of what a person types (keystroke by keystroke where it matters).
const KINDS: &[(&str, &[&str])] = &[
    ("no filter (everyone)", &[""]),
    ("1 character", &["j", "s", "m", "a", "z", "x", "q", "ö"]),
    (
        "2 characters",
        &["jo", "sm", "mü", "zo", "xi", "qq", "zq", "o'"],
    ),
    (
        "3+ characters, typed",
        &[
            "joh", "john", "john.", "john.s", "john.sm", "smi", "smit", "smith", "mül", "müll",
            "garc", "garcía", "o'br", "van d", "zoë", "jürg", "1987", "acme", "@acme",
        ],
    ),
    (
        "a whole email",
        &["jerry.stephens@outlook.com", "ingrid_reyes1@acme-corp.com"],
    ),
    (
        "matching a large share",
        &["com", "gmail", "gmail.com", "mail", ".com"],
    ),
    (
        "rare or nothing",
        &["qxz", "zzz", "nobody@nowhere.test", "xylophone"],
    ),
];

struct Sample {
    kind: &'static str,
    query: &'static str,
    page: &'static str,
    times_ms: Vec<f64>,
    total: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let users: i64 = flag(&args, "--users")
        .map(|v| v.parse().context("--users takes a number"))
        .transpose()?
        .unwrap_or(1_000_000);
    let runs: usize = flag(&args, "--runs")
        .map(|v| v.parse().context("--runs takes a number"))
        .transpose()?
        .unwrap_or(20);
    let verbose = args.iter().any(|a| a == "--verbose");
    let refill = args.iter().any(|a| a == "--refill");
    let locale = flag(&args, "--locale").unwrap_or_else(|| "C.UTF-8".into());
    anyhow::ensure!(
        locale
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
        "--locale takes a locale name such as C or C.UTF-8"
    );

    let dir = std::env::temp_dir().join(format!("quotebook-search-bench-{}", std::process::id()));
    let (local, server) = tokio::task::block_in_place(|| LocalPostgres::from_env_or_start(&dir))?;
    let result = bench(&server, &locale, users, runs, verbose, refill).await;
    if let Some(local) = local {
        tokio::task::block_in_place(|| local.stop());
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn bench(
    server: &sqlx::postgres::PgConnectOptions,
    locale: &str,
    users: i64,
    runs: usize,
    verbose: bool,
    refill: bool,
) -> anyhow::Result<()> {
    let database = format!(
        "search_bench_{}",
        locale.to_ascii_lowercase().replace(['.', '-'], "_")
    );
    let mut admin = server.connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(&database)
            .fetch_one(&mut admin)
            .await?;
    if refill && exists {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {database} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await?;
    }
    if refill || !exists {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {database} TEMPLATE template0 LOCALE '{locale}'"
        )))
        .execute(&mut admin)
        .await?;
    }
    admin.close().await?;

    // The app's default pool size: a page and its total run on two of its connections.
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect_with(server.clone().database(&database))
        .await?;
    db::migrate(&pool).await?;
    let present: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&pool)
        .await?;
    if present != users {
        fill(&pool, users).await?;
    }
    print_sizes(&pool).await?;

    let mut samples = Vec::new();
    for (kind, queries) in KINDS {
        for query in *queries {
            let filter = Filter::parse(Some(query));
            // Deep pages: the old `page=N` finds them (slowly, once, untimed) and hands out
            // cursors from there; a page half-way and one 90% of the way through are timed.
            let (first, total) = search::search(&pool, &filter, Position::First, PER_PAGE).await?;
            let pages = u32::try_from((total.count / i64::from(PER_PAGE)).max(0))?;
            let mut positions = vec![("first", Position::First)];
            if first.next.is_some() {
                for (label, number) in [("middle", pages / 2), ("deep", pages / 10 * 9)] {
                    let start = number.saturating_sub(1);
                    let (before, _) =
                        search::search(&pool, &filter, Position::Offset(start), PER_PAGE).await?;
                    if let Some(next) = before.next {
                        positions.push((label, Position::Cursor(next)));
                    }
                }
            }
            for (label, position) in positions {
                let mut times_ms = Vec::with_capacity(runs);
                let mut shown = String::new();
                // One untimed run warms the caches, as the previous keystroke would have.
                for run in 0..=runs {
                    let started = Instant::now();
                    let (page, total) =
                        search::search(&pool, &filter, position.clone(), PER_PAGE).await?;
                    if run > 0 {
                        times_ms.push(started.elapsed().as_secs_f64() * 1000.0);
                    }
                    shown = format!("{} rows, {}", page.users.len(), search::describe(total));
                }
                samples.push(Sample {
                    kind,
                    query,
                    page: label,
                    times_ms,
                    total: shown,
                });
            }
        }
    }
    pool.close().await;

    if verbose {
        println!(
            "{:<28} {:<7} {:>8} {:>8}  result",
            "query", "page", "p50 ms", "p95 ms"
        );
        for sample in &samples {
            let mut times = sample.times_ms.clone();
            println!(
                "{:<28} {:<7} {:>8.1} {:>8.1}  {}",
                format!("{:?}", sample.query),
                sample.page,
                percentile(&mut times, 0.50),
                percentile(&mut times, 0.95),
                sample.total
            );
        }
        println!();
    }
    println!(
        "{users} users, locale {locale}; {runs} timed runs per query and page (a page of \
         {PER_PAGE} and its total)"
    );
    println!(
        "{:<26} {:>8} {:>8} {:>8} {:>8}",
        "kind", "queries", "p50 ms", "p95 ms", "max ms"
    );
    let mut all = Vec::new();
    for (kind, _) in KINDS {
        let mut times: Vec<f64> = samples
            .iter()
            .filter(|s| s.kind == *kind)
            .flat_map(|s| s.times_ms.iter().copied())
            .collect();
        let queries = samples.iter().filter(|s| s.kind == *kind).count();
        all.extend(times.iter().copied());
        println!(
            "{:<26} {:>8} {:>8.1} {:>8.1} {:>8.1}",
            kind,
            queries,
            percentile(&mut times, 0.50),
            percentile(&mut times, 0.95),
            percentile(&mut times, 1.0)
        );
    }
    for page in ["first", "middle", "deep"] {
        let mut times: Vec<f64> = samples
            .iter()
            .filter(|s| s.page == page)
            .flat_map(|s| s.times_ms.iter().copied())
            .collect();
        println!(
            "{:<26} {:>8} {:>8.1} {:>8.1} {:>8.1}",
            format!("{page} pages"),
            samples.iter().filter(|s| s.page == page).count(),
            percentile(&mut times, 0.50),
            percentile(&mut times, 0.95),
            percentile(&mut times, 1.0)
        );
    }
    println!(
        "{:<26} {:>8} {:>8.1} {:>8.1} {:>8.1}",
        "all",
        samples.len(),
        percentile(&mut all.clone(), 0.50),
        percentile(&mut all.clone(), 0.95),
        percentile(&mut all, 1.0)
    );
    Ok(())
}

async fn fill(pool: &PgPool, users: i64) -> anyhow::Result<()> {
    let started = Instant::now();
    sqlx::query("TRUNCATE users CASCADE").execute(pool).await?;
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT setseed(0.18)")
        .execute(&mut *conn)
        .await?;
    sqlx::query(FILL_USERS)
        .bind(users)
        .execute(&mut *conn)
        .await?;
    let filled = started.elapsed();
    let started = Instant::now();
    sqlx::query("VACUUM ANALYZE users")
        .execute(&mut *conn)
        .await?;
    println!(
        "filled {users} users in {:.1} s ({:.0} rows/s, through the app's indexes); VACUUM ANALYZE {:.1} s",
        filled.as_secs_f64(),
        users as f64 / filled.as_secs_f64().max(f64::EPSILON),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn print_sizes(pool: &PgPool) -> anyhow::Result<()> {
    let sizes: Vec<(String, String)> = sqlx::query_as(
        "SELECT relname::text, pg_size_pretty(pg_relation_size(oid)) FROM pg_class
         WHERE relname IN ('users', 'user_search')
            OR oid IN (SELECT indexrelid FROM pg_index
                       WHERE indrelid IN ('users'::regclass, 'user_search'::regclass))
         ORDER BY pg_relation_size(oid) DESC",
    )
    .fetch_all(pool)
    .await?;
    let sizes: Vec<String> = sizes
        .into_iter()
        .map(|(name, size)| format!("{name} {size}"))
        .collect();
    println!("sizes: {}", sizes.join(", "));
    Ok(())
}

/// The `p` quantile (0-1) of `values`, nearest rank; NaN when empty.
fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}
