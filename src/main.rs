//! The `quotebook` command: parse arguments, load settings, run the chosen subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use futures::FutureExt;
use quotebook::{
    config::Settings,
    startup::{Application, Database, shutdown_signal},
    telemetry,
    users::{
        self,
        sync_runs::{RunStatus, SyncMode},
    },
};

#[derive(Debug, Parser)]
#[command(
    name = "quotebook",
    version,
    about = "Keep one favourite quote, signed in with Auth0."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the web app (the default), with the sync worker unless --no-worker.
    Serve {
        /// Leave background jobs to a separate `quotebook worker` process.
        #[arg(long)]
        no_worker: bool,
    },
    /// Apply database migrations and exit (Fly's release command).
    Migrate,
    /// Run one user sync from Auth0 in the foreground and print a summary.
    Sync {
        /// Copy every user (and mark deletions) instead of only the changes since the last sync.
        #[arg(long)]
        full: bool,
    },
    /// Run only the background worker (user sync jobs and their schedule).
    Worker,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("quotebook: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(settings.is_production());

    let result = match cli.command.unwrap_or(Command::Serve { no_worker: false }) {
        Command::Serve { no_worker } => serve(settings, !no_worker).await,
        Command::Migrate => migrate(settings).await,
        Command::Sync { full } => sync(settings, full).await,
        Command::Worker => worker(settings).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(
                error = format!("{err:#}"),
                "quotebook stopped with an error"
            );
            eprintln!("quotebook: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings, with_worker: bool) -> anyhow::Result<()> {
    let shutdown = shutdown_signal().shared();
    let app = Application::build(settings.clone()).await?;
    let worker = if with_worker {
        let pool = match &settings.database.direct_url {
            Some(url) => {
                let options = quotebook::db::options_from_url(url.expose())?;
                quotebook::db::connect(options, &settings.database).await?
            }
            None => app.db().clone(),
        };
        let issuer = users::management_issuer(&settings)?;
        Some(users::job::spawn_worker(
            users::syncer(pool, &settings, issuer)?,
            settings.sync.clone(),
            users::job::WorkerOptions::default(),
            shutdown.clone(),
        ))
    } else {
        None
    };
    app.run_until_stopped(shutdown).await?;
    if let Some(worker) = worker {
        worker.await??;
    }
    Ok(())
}

async fn sync(mut settings: Settings, full: bool) -> anyhow::Result<()> {
    if let Some(direct) = settings.database.direct_url.clone() {
        settings.database.url = Some(direct);
    }
    let database = Database::open(&settings).await?;
    let result = async {
        quotebook::db::migrate(&database.pool).await?;
        let issuer = users::management_issuer(&settings)?;
        let syncer = users::syncer(database.pool.clone(), &settings, issuer)?;
        let mode = if full { SyncMode::Full } else { SyncMode::Incremental };
        let run = users::foreground::sync_in_foreground(&syncer, mode, true).await?;
        println!("{}", users::foreground::summary(&run));
        anyhow::ensure!(run.status == RunStatus::Succeeded, "the sync failed");
        Ok(())
    }
    .await;
    database.close().await;
    result
}

async fn worker(mut settings: Settings) -> anyhow::Result<()> {
    if let Some(direct) = settings.database.direct_url.clone() {
        settings.database.url = Some(direct);
    }
    let database = Database::open(&settings).await?;
    let result = async {
        quotebook::db::migrate(&database.pool).await?;
        let issuer = users::management_issuer(&settings)?;
        let syncer = users::syncer(database.pool.clone(), &settings, issuer)?;
        users::job::run_worker(
            syncer,
            &settings.sync,
            users::job::WorkerOptions::default(),
            shutdown_signal(),
        )
        .await
    }
    .await;
    database.close().await;
    result
}

async fn migrate(mut settings: Settings) -> anyhow::Result<()> {
    // Migrations take a session advisory lock: use the direct (unpooled) endpoint when given.
    if let Some(direct) = settings.database.direct_url.clone() {
        settings.database.url = Some(direct);
    }
    let database = Database::open(&settings).await?;
    let result = quotebook::db::migrate(&database.pool).await;
    database.close().await;
    result?;
    tracing::info!("migrations applied");
    Ok(())
}
