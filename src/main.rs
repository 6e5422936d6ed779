//! The `quotebook` command: parse arguments, load settings, run the chosen subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use quotebook::{
    config::Settings,
    startup::{Application, Database, shutdown_signal},
    telemetry,
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
    /// Serve the web app (the default).
    Serve,
    /// Apply database migrations and exit (Fly's release command).
    Migrate,
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

    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings).await,
        Command::Migrate => migrate(settings).await,
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

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown_signal()).await?;
    Ok(())
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
