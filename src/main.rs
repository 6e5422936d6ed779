//! The `quotebook` command: parse arguments, load settings, run the chosen subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use futures::FutureExt;
use quotebook::{
    config::{DatabaseUse, Settings},
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
    /// Run only the background worker (user sync jobs and their schedule, and the user changes
    /// Auth0's Event Streams and Log Streams deliver).
    Worker,
    /// Run the built-in Auth0 emulator on its own (development and tests only).
    #[cfg(feature = "emulator")]
    Emulator(Box<EmulatorArgs>),
}

#[cfg(feature = "emulator")]
#[derive(Debug, clap::Args)]
struct EmulatorArgs {
    /// Port to listen on (127.0.0.1).
    #[arg(long, default_value_t = 3001)]
    port: u16,
    /// Demo users to seed (the first is an admin).
    #[arg(long, default_value_t = 50)]
    users: usize,
    /// JSON array of Auth0-shaped users to add.
    #[arg(long)]
    users_file: Option<std::path::PathBuf>,
    /// Client ID of the registered application.
    #[arg(long, default_value = quotebook::config::DEV_CLIENT_ID)]
    client_id: String,
    /// Client secret of the registered application.
    #[arg(long, default_value = quotebook::config::DEV_CLIENT_SECRET)]
    client_secret: String,
    /// Allowed callback URL (repeatable).
    #[arg(long = "callback-url", default_values_t = ["http://localhost:3000/auth/callback".to_owned()])]
    callback_urls: Vec<String>,
    /// Allowed logout URL (repeatable).
    #[arg(long = "logout-url", default_values_t = ["http://localhost:3000/".to_owned()])]
    logout_urls: Vec<String>,
    /// Management API requests per second (unlimited when absent).
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Where to keep the signing key so tokens survive restarts.
    #[arg(long, default_value = ".data/emulator-key.pem")]
    key_file: std::path::PathBuf,
    /// Namespaced ID-token claim that carries the user's roles.
    #[arg(long, default_value = quotebook::config::DEFAULT_ROLES_CLAIM)]
    roles_claim: String,
    /// Audience of an API registered in the tenant, accepted as `audience` (repeatable).
    #[arg(long = "api")]
    apis: Vec<String>,
    /// Spell the issuer without a trailing slash (as Google, Okta and Keycloak do).
    #[arg(long)]
    issuer_without_trailing_slash: bool,
    /// Event Stream webhook to deliver user events to, e.g.
    /// http://localhost:3000/webhooks/auth0/events (with --event-stream-token).
    #[arg(long, requires = "event_stream_token")]
    event_stream_url: Option<url::Url>,
    /// The Event Stream's bearer token (the app's AUTH0_EVENTS_TOKEN).
    #[arg(long, env = "AUTH0_EVENTS_TOKEN", hide_env_values = true)]
    event_stream_token: Option<String>,
    /// Log Stream (custom webhook) to deliver tenant log events to, e.g.
    /// http://localhost:3000/webhooks/auth0/logs.
    #[arg(long)]
    log_stream_url: Option<url::Url>,
    /// The Log Stream's Authorization Token (the app's AUTH0_LOG_STREAM_TOKEN).
    #[arg(long, env = "AUTH0_LOG_STREAM_TOKEN", hide_env_values = true)]
    log_stream_authorization: Option<String>,
    /// The Log Stream's Content Format: json-lines, json-array or json-object.
    #[arg(long, default_value = "json-lines")]
    log_stream_format: quotebook::emulator::LogStreamFormat,
    /// The application's Back-Channel Logout URI: logouts, blocked and deleted users send
    /// logout tokens there (every initiator). Empty: none are sent.
    #[arg(long, default_value = "http://localhost:3000/auth/backchannel-logout")]
    backchannel_logout_url: String,
}

/// Every request allocates and frees many small, short-lived blocks (poem boxes each endpoint's
/// future, hyper and maud build strings); glibc's malloc spent ~12% of a signed-in page's CPU
/// consolidating and unlinking them, mimalloc a fraction of that (`examples/web_bench.rs`: about
/// +30% requests/s). Built with `no_thp` so its arenas are not backed by 2 MiB huge pages, which
/// would add ~20 MB to the idle footprint.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        #[cfg(feature = "emulator")]
        Command::Emulator(args) => emulator(*args).await,
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
    let app = Application::build(settings).await?;
    let worker = if with_worker {
        Some(app.spawn_worker(shutdown.clone()).await?)
    } else {
        None
    };
    app.run_until_stopped(shutdown).await?;
    if let Some(worker) = worker {
        worker.await??;
    }
    Ok(())
}

async fn sync(settings: Settings, full: bool) -> anyhow::Result<()> {
    // The sync's run lock is a session advisory lock.
    let database = Database::open(&settings, DatabaseUse::Session).await?;
    let result = async {
        quotebook::db::migrate(&database.pool).await?;
        let issuer = users::management_issuer(&settings)?;
        let syncer = users::syncer(database.pool.clone(), &settings, issuer)?;
        let mode = if full {
            SyncMode::Full
        } else {
            SyncMode::Incremental
        };
        let run = users::foreground::sync_in_foreground(&syncer, mode, true).await?;
        println!("{}", users::foreground::summary(&run));
        anyhow::ensure!(run.status == RunStatus::Succeeded, "the sync failed");
        Ok(())
    }
    .await;
    database.close().await;
    result
}

async fn worker(settings: Settings) -> anyhow::Result<()> {
    // The sync records its metrics here, not in the web process: without a recorder and a
    // listener of its own they would be lost.
    quotebook::observability::recorder();
    // The job queue's LISTEN and locks, and the sync's run lock, need a session of their own.
    let database = Database::open(&settings, DatabaseUse::Session).await?;
    let result = async {
        quotebook::db::migrate(&database.pool).await?;
        let _metrics = match settings.metrics.addr {
            Some(addr) => Some(AbortOnDrop(
                quotebook::startup::serve_worker_metrics(
                    addr,
                    database.pool.clone(),
                    settings.database.max_connections,
                )
                .await?,
            )),
            None => None,
        };
        let issuer = users::management_issuer(&settings)?;
        let syncer = users::syncer(database.pool.clone(), &settings, issuer)?;
        let shutdown = shutdown_signal().shared();
        // The refreshes share the sync's Management API client: one token, one rate budget.
        let changes = users::streams::worker::run(
            database.pool.clone(),
            syncer.api().clone(),
            users::streams::worker::WorkerOptions::default(),
            shutdown.clone(),
        );
        let sync = users::job::run_worker(
            syncer,
            &settings.sync,
            users::job::WorkerOptions::default(),
            shutdown,
        );
        let (sync, changes) = tokio::join!(sync, changes);
        sync.and(changes)
    }
    .await;
    database.close().await;
    result
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    // sqlx holds a session advisory lock while migrating: never through a transaction pooler,
    // where it would stay with whichever server connection took it.
    let database = Database::open(&settings, DatabaseUse::Session).await?;
    let result = quotebook::db::migrate(&database.pool).await;
    database.close().await;
    result?;
    tracing::info!("migrations applied");
    Ok(())
}

#[cfg(feature = "emulator")]
async fn emulator(args: EmulatorArgs) -> anyhow::Result<()> {
    use quotebook::emulator::{
        BackchannelLogout, Emulator, EmulatorConfig, EventStreamDestination, Initiators,
        IssuerIdentifier, LogStreamDestination, StreamDestinations,
    };
    let emulator = Emulator::start(EmulatorConfig {
        bind: std::net::SocketAddr::from(([127, 0, 0, 1], args.port)),
        client_id: args.client_id,
        client_secret: args.client_secret,
        callback_urls: args.callback_urls,
        logout_urls: args.logout_urls,
        seed_users: args.users,
        users_file: args.users_file,
        rate_limit: args.rate_limit,
        key_file: Some(args.key_file),
        roles_claim: args.roles_claim,
        issuer: if args.issuer_without_trailing_slash {
            IssuerIdentifier::NoTrailingSlash
        } else {
            IssuerIdentifier::Auth0
        },
        apis: args.apis,
        streams: StreamDestinations {
            events: args
                .event_stream_url
                .zip(args.event_stream_token)
                .map(|(url, token)| EventStreamDestination { url, token }),
            logs: args.log_stream_url.map(|url| LogStreamDestination {
                url,
                authorization: args.log_stream_authorization,
                format: args.log_stream_format,
            }),
        },
        backchannel_logout: (!args.backchannel_logout_url.is_empty()).then_some(
            BackchannelLogout {
                url: args.backchannel_logout_url,
                initiators: Initiators::All,
            },
        ),
    })
    .await?;
    tracing::warn!(
        issuer = %emulator.issuer_identifier(),
        users = emulator.users().count(),
        "*** AUTH0 EMULATOR (development only, no real accounts) listening at {} ***",
        emulator.issuer()
    );
    shutdown_signal().await;
    emulator.shutdown();
    Ok(())
}

/// Stops a background task when its owner's scope ends, on every path out of it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
