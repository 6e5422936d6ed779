//! Wires the application together: database, routes, middleware, listener, shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use poem::{
    EndpointExt, Route, Server, get,
    listener::{Acceptor, AcceptorExt, BoxAcceptor, Listener, TcpListener},
};
use sqlx::PgPool;

use crate::{
    auth::{
        oidc::OidcProvider,
        session::{SessionConfig, SessionMiddleware},
        session_store::PgSessionStore,
    },
    config::{IdentityProvider, Settings},
    db,
    http_stack::{self, StackSettings},
    local_postgres::LocalPostgres,
    web,
};

/// Shared state handed to every handler (cheap to clone).
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub settings: Arc<Settings>,
    pub oidc: Arc<OidcProvider>,
}

/// The database the app uses, and the local cluster behind it when we started one.
pub struct Database {
    pub pool: PgPool,
    pub local: Option<LocalPostgres>,
}

impl Database {
    /// Connects to `DATABASE_URL`, or starts the local development cluster under `data_dir`.
    pub async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let (options, local) = match &settings.database.url {
            Some(url) => (db::options_from_url(url.expose())?, None),
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
    /// Tasks that live as long as the server (session reaper, ...); aborted at shutdown.
    background: Vec<tokio::task::JoinHandle<()>>,
    acceptor: BoxAcceptor,
    app: poem::endpoint::BoxEndpoint<'static>,
    database: Database,
}

impl Application {
    /// Opens the database, migrates it, builds the routes and binds the listener (port 0 works).
    pub async fn build(mut settings: Settings) -> anyhow::Result<Self> {
        let database = Database::open(&settings).await?;
        db::migrate(&database.pool).await?;

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

        let issuer = match &settings.auth.provider {
            IdentityProvider::External { issuer } => issuer.clone(),
            IdentityProvider::Emulator { .. } => {
                anyhow::bail!("the built-in Auth0 emulator is not available yet: set AUTH0_DOMAIN")
            }
        };
        let oidc = Arc::new(OidcProvider::new(
            issuer,
            settings.auth.clone(),
            settings.callback_url(),
        )?);
        // Discovery failing at start is not fatal: login retries it and says so meanwhile.
        if let Err(err) = oidc.warm_up().await {
            tracing::warn!(error = %err, "OpenID provider not reachable at start; will retry on login");
        }

        let settings = Arc::new(settings);
        let state = AppState {
            db: database.pool.clone(),
            settings: settings.clone(),
            oidc,
        };
        let sessions = SessionMiddleware {
            store: PgSessionStore::new(database.pool.clone()),
            config: Arc::new(SessionConfig::new(
                settings.secure_cookies(),
                settings.session.idle_timeout,
                settings.session.absolute_lifetime,
            )),
        };
        let reaper = tokio::spawn(crate::auth::reap_sessions(sessions.store.clone()));

        let sessions = Arc::new(sessions);
        let app = http_stack::wrap(
            routes()
                .around(move |ep, req| {
                    let sessions = sessions.clone();
                    async move { sessions.handle(ep, req).await }
                })
                .data(state),
            StackSettings {
                body_limit: settings.body_limit,
                request_timeout: settings.request_timeout,
                trust_proxy_headers: settings.trust_proxy_headers,
            },
        );
        Ok(Self {
            port,
            background: vec![reaper],
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
        self.database.close().await;
        tracing::info!("stopped");
        result
    }
}

fn routes() -> Route {
    crate::quotes::routes()
        .nest("/auth", crate::auth::routes())
        .at("/healthz", get(web::health::healthz))
        .at("/readyz", get(web::health::readyz))
        .at("/assets/:name", get(web::assets::serve))
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
