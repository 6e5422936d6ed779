//! Wires the application together: database, routes, middleware, listener, shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use poem::{
    EndpointExt, Route, Server, get,
    listener::{Acceptor, AcceptorExt, BoxAcceptor, Listener, TcpListener},
};
use sqlx::{PgPool, postgres::PgConnectOptions};

use crate::{
    auth::{
        oidc::OidcProvider,
        session::{SessionConfig, SessionMiddleware},
        session_store::PgSessionStore,
    },
    batched_lookup::BatchedLookup,
    config::{DatabaseUse, IdentityProvider, Settings},
    db,
    http_stack::{self, StackSettings},
    local_postgres::LocalPostgres,
    observability::named,
    quotes::{self, batched_saves::BatchedSaves, queries::StoredQuote},
    web,
};

/// Shared state handed to every handler (cheap to clone).
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub settings: Arc<Settings>,
    pub oidc: Arc<OidcProvider>,
    pub sessions: PgSessionStore,
    /// Quote reads for pages, batched (see `batched_lookup`).
    pub quotes: BatchedLookup<StoredQuote>,
    /// Quote saves, batched (see `quotes::batched_saves`).
    pub saves: BatchedSaves,
}

/// The database the app uses, and the local cluster behind it when we started one.
pub struct Database {
    pub pool: PgPool,
    pub local: Option<LocalPostgres>,
}

impl Database {
    /// Connects for `what`: requests to `DATABASE_URL`, session-level work to the direct URL
    /// (`DatabaseSettings::url_for`); or starts the local development cluster under `data_dir`.
    pub async fn open(settings: &Settings, what: DatabaseUse) -> anyhow::Result<Self> {
        tracing::info!("database: {}", settings.database.describe());
        let (options, local) = match settings.database.url_for(what) {
            Some(url) => (db::options(url, settings.database.pooled(what))?, None),
            None => {
                let dir = settings.data_dir.join("postgres");
                let local = tokio::task::block_in_place(|| LocalPostgres::start(&dir))?;
                tracing::info!(data_dir = %local.data_dir().display(), "started local Postgres (no DATABASE_URL set)");
                create_database_if_missing(&local, "quotebook").await?;
                (local.connect_options("quotebook"), Some(local))
            }
        };
        let pool = db::connect(options, &settings.database).await?;
        Ok(Self { pool, local })
    }

    /// Options for a connection with a session of its own (`LISTEN`): the direct URL, or the
    /// local cluster.
    pub fn session_options(&self, settings: &Settings) -> anyhow::Result<PgConnectOptions> {
        match (settings.database.url_for(DatabaseUse::Session), &self.local) {
            (Some(url), _) => Ok(db::options(url, false)?),
            (None, Some(local)) => Ok(local.connect_options("quotebook")),
            (None, None) => anyhow::bail!("no database URL and no local cluster"),
        }
    }

    /// Closes the pool, then stops the local cluster (if any) so nothing is left running.
    pub async fn close(self) {
        self.pool.close().await;
        if let Some(local) = self.local {
            tokio::task::block_in_place(|| local.stop());
        }
    }
}

async fn create_database_if_missing(local: &LocalPostgres, name: &str) -> anyhow::Result<()> {
    use sqlx::{ConnectOptions, Connection};
    let mut conn = local.connect_options("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(())
}

pub struct Application {
    port: u16,
    settings: Arc<Settings>,
    #[cfg(feature = "emulator")]
    emulator: Option<crate::emulator::Emulator>,
    /// Tasks that live as long as the server (session reaper, ...); aborted at shutdown.
    background: Vec<tokio::task::JoinHandle<()>>,
    acceptor: BoxAcceptor,
    app: poem::endpoint::BoxEndpoint<'static>,
    database: Database,
}

impl Application {
    /// Opens the database, migrates it (through DATABASE_URL_DIRECT when set), builds the routes
    /// and binds the listener (port 0 works).
    pub async fn build(mut settings: Settings) -> anyhow::Result<Self> {
        crate::observability::recorder();
        let database = Database::open(&settings, DatabaseUse::Requests).await?;
        db::migrate_at_start(&database.pool, &settings.database).await?;

        let acceptor = TcpListener::bind((settings.host, settings.port))
            .into_acceptor()
            .await?;
        let port = acceptor
            .local_addr()
            .first()
            .and_then(|addr| addr.as_socket_addr().map(|a| a.port()))
            .unwrap_or(settings.port);
        // PORT=0 (tests): the default base URL learns the port the OS picked.
        if settings.base_url.port() == Some(0) {
            let _ = settings.base_url.set_port(Some(port));
        }

        #[cfg(feature = "emulator")]
        let emulator = match &settings.auth.provider {
            IdentityProvider::Emulator { bind } => {
                let bind = *bind;
                default_stream_tokens(&mut settings.streams);
                Some(start_emulator(&settings, bind).await?)
            }
            IdentityProvider::External { .. } => None,
        };
        let issuer = match &settings.auth.provider {
            IdentityProvider::External { issuer } => issuer.clone(),
            #[cfg(feature = "emulator")]
            IdentityProvider::Emulator { .. } => match &emulator {
                Some(emulator) => crate::config::Issuer::parse(
                    "AUTH0_EMULATOR_ADDR",
                    &emulator.issuer_identifier(),
                )?,
                None => anyhow::bail!("the Auth0 emulator did not start"),
            },
            #[cfg(not(feature = "emulator"))]
            IdentityProvider::Emulator { .. } => {
                anyhow::bail!("this build has no Auth0 emulator: set AUTH0_DOMAIN")
            }
        };
        let oidc = Arc::new(OidcProvider::new(
            issuer,
            settings.auth.clone(),
            settings.callback_url(),
        )?);
        // Discovery failing at start is not fatal: login retries it and says so meanwhile. A
        // mismatched issuer is a configuration error that retrying will not fix: say so loudly.
        match oidc.warm_up().await {
            Ok(()) => {}
            Err(err @ crate::auth::oidc::OidcError::IssuerMismatch { .. }) => tracing::error!(
                issuer = %oidc.issuer(),
                "sign-in is misconfigured: {err}; nobody can sign in until AUTH0_DOMAIN or \
                 AUTH0_ISSUER_BASE_URL names the provider's issuer (see /readyz)"
            ),
            Err(err) => {
                tracing::warn!(error = %err, "OpenID provider not usable at start; will retry on login")
            }
        }

        let settings = Arc::new(settings);
        // One store (and so one memory of recent sessions) for the middleware and the handlers.
        let session_store = PgSessionStore::new(database.pool.clone());
        let state = AppState {
            db: database.pool.clone(),
            settings: settings.clone(),
            oidc,
            sessions: session_store.clone(),
            quotes: BatchedLookup::start(
                database.pool.clone(),
                settings.request_timeout,
                quotes::queries::find_many,
            ),
            saves: BatchedSaves::start(database.pool.clone(), settings.request_timeout),
        };
        let sessions = SessionMiddleware {
            store: session_store,
            config: Arc::new(SessionConfig::new(
                settings.secure_cookies(),
                settings.session.idle_timeout,
                settings.session.absolute_lifetime,
            )),
        };
        let mut background = vec![
            tokio::spawn(crate::auth::reap_sessions(
                sessions.store.clone(),
                database.pool.clone(),
            )),
            tokio::spawn(crate::auth::session_events::listen(
                sessions.store.clone(),
                database.session_options(&settings)?,
            )),
        ];
        if let Some(addr) = settings.metrics.addr {
            background.push(serve_private_metrics(addr, state.clone()).await?);
        }

        let sessions = Arc::new(sessions);
        let canonical = Arc::new(
            web::canonical_origin::CanonicalOrigin::new(
                &settings.base_url,
                settings.trust_proxy_headers,
            )
            .scoped(if settings.is_production() {
                web::canonical_origin::Scope::EveryPage
            } else {
                web::canonical_origin::Scope::SignIn
            }),
        );
        let app = http_stack::wrap(
            routes()
                .around(move |ep, req| {
                    let sessions = sessions.clone();
                    async move { sessions.handle(ep, req).await }
                })
                // Outside the sessions: nothing is read or stored for a foreign host.
                .around(move |ep, req| {
                    let canonical = canonical.clone();
                    async move { canonical.handle(ep, req).await }
                })
                .data(state),
            StackSettings {
                body_limit: settings.body_limit,
                own_body_limits: crate::users::streams::BODY_LIMITS,
                request_timeout: settings.request_timeout,
                trust_proxy_headers: settings.trust_proxy_headers,
            },
        );
        Ok(Self {
            port,
            settings: settings.clone(),
            #[cfg(feature = "emulator")]
            emulator,
            background,
            acceptor: acceptor.boxed(),
            app,
            database,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn db(&self) -> &PgPool {
        &self.database.pool
    }

    /// The in-process Auth0 emulator, when development mode started one.
    #[cfg(feature = "emulator")]
    pub fn emulator(&self) -> Option<&crate::emulator::Emulator> {
        self.emulator.as_ref()
    }

    /// Starts the workers (the sync and its schedule, the changes Auth0 pushes) next to the web
    /// server, on the direct
    /// database URL when there is one (the job queue's `LISTEN`, its locks and the sync's run
    /// lock need a session of their own); otherwise `DATABASE_URL` keeps sessions itself.
    pub async fn spawn_worker(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
        let settings = &self.settings;
        let pool = match &settings.database.direct_url {
            Some(url) => db::connect(db::options(url, false)?, &settings.database).await?,
            None => self.database.pool.clone(),
        };
        // In development mode the app started the emulator on a port it chose.
        #[cfg(feature = "emulator")]
        let issuer = match &self.emulator {
            Some(emulator) => emulator.issuer(),
            None => crate::users::management_issuer(settings)?,
        };
        #[cfg(not(feature = "emulator"))]
        let issuer = crate::users::management_issuer(settings)?;
        let syncer = crate::users::syncer(pool.clone(), settings, issuer)?;
        let shutdown = futures::FutureExt::shared(futures::FutureExt::boxed(shutdown));
        // The refreshes share the sync's Management API client: one token, one rate budget.
        let changes = crate::users::streams::worker::spawn(
            pool,
            syncer.api().clone(),
            crate::users::streams::worker::WorkerOptions::default(),
            shutdown.clone(),
        );
        let sync = crate::users::job::spawn_worker(
            syncer,
            settings.sync.clone(),
            crate::users::job::WorkerOptions::default(),
            shutdown,
        );
        Ok(tokio::spawn(async move {
            let (sync, changes) = tokio::join!(sync, changes);
            sync??;
            changes??;
            Ok(())
        }))
    }

    /// Serves until `shutdown` resolves, drains in-flight requests (up to 10 s), then closes
    /// the pool and stops the local Postgres if we started one.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(port = self.port, "listening");
        let result = Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(self.app, shutdown, Some(Duration::from_secs(10)))
            .await;
        for task in self.background {
            task.abort();
        }
        #[cfg(feature = "emulator")]
        if let Some(emulator) = &self.emulator {
            emulator.shutdown();
        }
        self.database.close().await;
        tracing::info!("stopped");
        result
    }
}

fn routes() -> Route {
    crate::quotes::routes()
        .nest("/auth", crate::auth::routes())
        .nest("/api", crate::admin::api_routes())
        .nest("/admin", crate::admin::page_routes())
        .nest("/webhooks", crate::users::streams::routes())
        .at("/healthz", named("/healthz", get(web::health::healthz)))
        .at("/readyz", named("/readyz", get(web::health::readyz)))
        .at(
            "/assets/:name",
            named("/assets/:name", get(web::assets::serve)),
        )
        .at("/metrics", named("/metrics", get(web::metrics::scrape)))
}

/// Development mode without Auth0: the emulator on `bind`, seeded with demo users, its signing
/// key kept under the data directory so sessions survive restarts, sending back-channel logout
/// tokens to the app.
#[cfg(feature = "emulator")]
async fn start_emulator(
    settings: &Settings,
    bind: std::net::SocketAddr,
) -> anyhow::Result<crate::emulator::Emulator> {
    use crate::emulator::{BackchannelLogout, Emulator, EmulatorConfig, Initiators};
    let emulator = Emulator::start(EmulatorConfig {
        bind,
        client_id: settings.auth.client_id.clone(),
        client_secret: settings.auth.client_secret.expose().to_owned(),
        callback_urls: vec![settings.callback_url().to_string()],
        logout_urls: vec![settings.base_url.to_string()],
        seed_users: settings.emulator.seed_users,
        users_file: None,
        rate_limit: None,
        key_file: settings
            .emulator
            .persist_key
            .then(|| settings.data_dir.join("emulator-key.pem")),
        roles_claim: settings.auth.roles_claim.clone(),
        issuer: crate::emulator::IssuerIdentifier::Auth0,
        // The configured API, so sign-ins that ask for it are not refused.
        apis: settings.auth.login.audience.iter().cloned().collect(),
        streams: dev_stream_destinations(settings)?,
        // Logouts at the emulator, and users blocked or deleted there, end the app's sessions
        // at once, as a tenant whose application subscribed to every initiator would.
        backchannel_logout: Some(BackchannelLogout {
            url: settings.backchannel_logout_url().to_string(),
            initiators: Initiators::All,
        }),
    })
    .await?;
    tracing::warn!(
        issuer = %emulator.issuer(),
        "\n\n    *** AUTH0 EMULATOR: no AUTH0_DOMAIN set, so sign-in uses the built-in offline emulator ***\n    *** at {} with demo users. Development only; never used with APP_ENV=production.  ***\n",
        emulator.issuer()
    );
    Ok(emulator)
}

/// Development mode: the emulator's Event Stream and Log Stream deliver to this app, so a change
/// made in the emulator reaches `users` (and the admin page) in seconds. Their tokens are the
/// configured ones, or a random pair for this run.
#[cfg(feature = "emulator")]
fn default_stream_tokens(streams: &mut crate::config::StreamSettings) {
    let random = || {
        let bytes: [u8; 24] = rand::random();
        crate::config::Secret::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
    };
    streams.events_token.get_or_insert_with(random);
    streams.log_stream_token.get_or_insert_with(random);
}

#[cfg(feature = "emulator")]
fn dev_stream_destinations(
    settings: &Settings,
) -> anyhow::Result<crate::emulator::StreamDestinations> {
    use crate::{
        emulator::{EventStreamDestination, LogStreamDestination, StreamDestinations},
        users::streams::{event_stream, log_stream},
    };
    let url = |path: &str| settings.base_url.join(path);
    Ok(StreamDestinations {
        events: settings
            .streams
            .events_token
            .as_ref()
            .map(|token| -> anyhow::Result<_> {
                Ok(EventStreamDestination {
                    url: url(event_stream::PATH)?,
                    token: token.expose().to_owned(),
                })
            })
            .transpose()?,
        logs: settings
            .streams
            .log_stream_token
            .as_ref()
            .map(|token| -> anyhow::Result<_> {
                Ok(LogStreamDestination {
                    url: url(log_stream::PATH)?,
                    authorization: Some(token.expose().to_owned()),
                    format: Default::default(),
                })
            })
            .transpose()?,
    })
}

/// `/metrics` on its own (private) listener, e.g. Fly's metrics port.
async fn serve_private_metrics(
    addr: std::net::SocketAddr,
    state: AppState,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let acceptor = TcpListener::bind(addr).into_acceptor().await?;
    let app = Route::new()
        .at("/metrics", get(web::metrics::private_metrics))
        .data(state);
    tracing::info!(%addr, "metrics listener");
    Ok(tokio::spawn(async move {
        if let Err(err) = Server::new_with_acceptor(acceptor).run(app).await {
            tracing::error!(error = %err, "metrics listener stopped");
        }
    }))
}

/// `/metrics` of `quotebook worker` on `addr` (the sync's metrics are recorded in that process).
pub async fn serve_worker_metrics(
    addr: std::net::SocketAddr,
    db: PgPool,
    max_connections: u32,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    crate::observability::recorder();
    let acceptor = TcpListener::bind(addr).into_acceptor().await?;
    let app = Route::new()
        .at("/metrics", get(web::metrics::worker_metrics))
        .data(web::metrics::WorkerMetrics {
            db,
            max_connections,
        });
    tracing::info!(%addr, "metrics listener");
    Ok(tokio::spawn(async move {
        if let Err(err) = Server::new_with_acceptor(acceptor).run(app).await {
            tracing::error!(error = %err, "metrics listener stopped");
        }
    }))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (Fly, Docker, systemd).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received; shutting down"),
        _ = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}
