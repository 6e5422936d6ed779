//! Debian's real PgBouncer (1.18: transaction mode, no prepared-statement support), started for a
//! test in front of the test cluster, as Neon's pooled endpoint stands in front of a compute.
//!
//! It listens only on a Unix socket (no port to clash with), and opens its server connections
//! as the role [`SERVER_ROLE`], so a test can tell on the server which sessions are the pooler's
//! (`pg_stat_activity.usename`) and which are the app's direct ones. It refuses to run as root,
//! so under root it runs as the `postgres` OS user, like the cluster.
//!
//! Self-contained: `examples/web_bench.rs --pooler` includes this file too.

use std::{
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sqlx::{ConnectOptions, Connection, PgPool};

/// The Postgres role of every server connection PgBouncer opens.
pub const SERVER_ROLE: &str = "via_pgbouncer";

pub struct PgBouncer {
    dir: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    pool_size: u32,
    child: Option<Child>,
}

/// What one server connection of the pooler holds.
#[derive(Debug)]
pub struct ServerConnection {
    pub pid: i32,
    pub prepared: Vec<String>,
    pub listening: Vec<String>,
}

impl PgBouncer {
    /// Starts PgBouncer in transaction mode with `pool_size` server connections per database,
    /// listening in `socket_dir` (created) on `port`, passing every database through to the
    /// Postgres whose socket directory is `upstream`.
    pub async fn start(socket_dir: &Path, port: u16, upstream: &Path, pool_size: u32) -> Self {
        create_server_role(upstream).await;
        let suffix: u64 = rand::random();
        let dir = std::env::temp_dir().join(format!("quotebook-pgbouncer-{suffix:016x}"));
        let run_as = postgres_user();
        for d in [&dir, &socket_dir.to_path_buf()] {
            std::fs::create_dir_all(d).expect("pgbouncer directory");
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            if let Some((uid, gid)) = run_as {
                std::os::unix::fs::chown(d, Some(uid), Some(gid)).expect("chown");
            }
        }
        let config = format!(
            "[databases]\n\
             * = host={upstream} port=5432 user={SERVER_ROLE}\n\
             [pgbouncer]\n\
             unix_socket_dir = {socket_dir}\n\
             listen_port = {port}\n\
             auth_type = any\n\
             pool_mode = transaction\n\
             default_pool_size = {pool_size}\n\
             max_client_conn = 500\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile = {dir}/pgbouncer.pid\n",
            upstream = upstream.display(),
            socket_dir = socket_dir.display(),
            dir = dir.display(),
        );
        let ini = dir.join("pgbouncer.ini");
        std::fs::write(&ini, config).expect("write pgbouncer.ini");

        let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!("PgBouncer is needed for the pooler tests: apt-get install pgbouncer")
            });
        let mut command = Command::new(binary);
        command
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = run_as {
            command.uid(uid).gid(gid);
        }
        // SAFETY: prctl only affects the child being exec'd: it is stopped if the test dies.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start pgbouncer");
        let bouncer = Self {
            dir,
            socket_dir: socket_dir.to_path_buf(),
            port,
            pool_size,
            child: Some(child),
        };
        bouncer.wait_until_ready().await;
        bouncer
    }

    /// A `postgres://` URL for `database` through this PgBouncer, with `host` as the URL's
    /// host name (libpq's `host` parameter carries the socket directory, so no DNS is needed).
    pub fn url(&self, host: &str, database: &str) -> String {
        let socket =
            url::form_urlencoded::byte_serialize(self.socket_dir.as_os_str().as_encoded_bytes())
                .collect::<String>();
        let port = if self.port == 5432 {
            String::new()
        } else {
            format!("&port={}", self.port)
        };
        format!("postgres://postgres@{host}/{database}?host={socket}{port}")
    }

    async fn wait_until_ready(&self) {
        let socket = self.socket_dir.join(format!(".s.PGSQL.{}", self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if socket.exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default();
        panic!("pgbouncer did not start: {log}");
    }

    /// Every server connection PgBouncer holds for `database`, inspected from inside: as many
    /// transactions as it has server connections are opened through it and held at once, so each
    /// lands on a different one. Panics unless they cover every session Postgres sees from the
    /// pooler (`direct` is a connection of the test's own, past the pooler).
    pub async fn server_connections(
        &self,
        database: &str,
        direct: &PgPool,
    ) -> Vec<ServerConnection> {
        let options = quotebook::db::options_from_url(&self.url("localhost", database))
            .expect("the pooler's URL");
        let mut conns = Vec::new();
        for _ in 0..self.pool_size {
            conns.push(options.connect().await.expect("connect through the pooler"));
        }
        let mut txs = Vec::new();
        for conn in &mut conns {
            txs.push(conn.begin().await.expect("begin through the pooler"));
        }
        let mut seen = Vec::new();
        for tx in &mut txs {
            let (pid, prepared, listening): (i32, Vec<String>, Vec<String>) = sqlx::query_as(
                "SELECT pg_backend_pid(),
                        ARRAY(SELECT name FROM pg_prepared_statements ORDER BY name),
                        ARRAY(SELECT pg_listening_channels())",
            )
            .fetch_one(&mut **tx)
            .await
            .expect("inspect a server connection");
            seen.push(ServerConnection {
                pid,
                prepared,
                listening,
            });
        }
        let server_side: std::collections::BTreeSet<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE usename = $1 AND datname = $2",
        )
        .bind(SERVER_ROLE)
        .bind(database)
        .fetch_all(direct)
        .await
        .expect("the pooler's sessions")
        .into_iter()
        .collect();
        let inspected: std::collections::BTreeSet<i32> = seen.iter().map(|c| c.pid).collect();
        assert_eq!(
            inspected, server_side,
            "every server connection of the pooler was inspected"
        );
        for tx in txs {
            let _ = tx.rollback().await;
        }
        for conn in conns {
            let _ = conn.close().await;
        }
        seen
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.socket_dir);
    }
}

/// The role PgBouncer logs in as: a superuser like the app's own user, under another name.
async fn create_server_role(upstream: &Path) {
    let mut conn = sqlx::postgres::PgConnectOptions::new_without_pgpass()
        .socket(upstream)
        .username("postgres")
        .database("postgres")
        .connect()
        .await
        .expect("connect to the test cluster");
    let sql = format!(
        "DO $$ BEGIN CREATE ROLE {SERVER_ROLE} SUPERUSER LOGIN; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("create the pooler's role");
    let _ = conn.close().await;
}

/// `(uid, gid)` of the `postgres` OS user when we are root (PgBouncer refuses root).
fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"postgres") && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}
