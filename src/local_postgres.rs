//! A Postgres cluster started from the system's binaries, for `cargo run` and `cargo test` with no
//! `DATABASE_URL`.
//!
//! The server listens only on a Unix socket inside its own directory (no TCP port to clash with),
//! trusts local connections, and runs as the unprivileged `postgres` OS user when we are root
//! (Postgres refuses to run as root). It is spawned from a thread that lives as long as the
//! process, with `PR_SET_PDEATHSIG`, so even a killed app never leaves an orphan server behind.

use std::{
    io,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use sqlx::postgres::PgConnectOptions;

/// The superuser name created by `initdb`; trust authentication over the private socket.
const SUPERUSER: &str = "postgres";

#[derive(Debug, thiserror::Error)]
pub enum LocalPostgresError {
    #[error(
        "no PostgreSQL server binaries found (looked in POSTGRES_BIN_DIR, on PATH and in /usr/lib/postgresql/*/bin): \
         install them (Debian/Ubuntu: `apt-get install postgresql`) or set DATABASE_URL to an existing database"
    )]
    BinariesNotFound,
    #[error(
        "running as root, but there is no `postgres` OS user to run the server as: \
         create one (`useradd --system postgres`) or set DATABASE_URL"
    )]
    NoUnprivilegedUser,
    #[error("{step} failed: {detail}")]
    Command { step: &'static str, detail: String },
    #[error("Postgres in {dir} did not become ready within {secs} s; see {dir}/server.log")]
    NotReady { dir: String, secs: u64 },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A running local cluster; stopping it (or dropping it) shuts the server down cleanly.
#[derive(Debug)]
pub struct LocalPostgres {
    data_dir: PathBuf,
    socket_dir: PathBuf,
    child: Mutex<Option<Child>>,
}

/// The OS user the server runs as when we are root.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

impl LocalPostgres {
    /// Initialises `data_dir` if it is empty, then starts the server and waits until it answers.
    pub fn start(data_dir: &Path) -> Result<Self, LocalPostgresError> {
        let bin_dir = find_binaries().ok_or(LocalPostgresError::BinariesNotFound)?;
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(postgres_user().ok_or(LocalPostgresError::NoUnprivilegedUser)?)
        } else {
            None
        };

        std::fs::create_dir_all(data_dir)?;
        let mut data_dir = data_dir.canonicalize()?;
        if let Some(user) = run_as
            && !reachable_by(user, &data_dir)
        {
            // A checkout under a private home (/root is 0700) is out of the postgres user's
            // reach; keep the cluster, per checkout and between runs, where it can go instead.
            let fallback = shared_location_for(&data_dir);
            tracing::info!(
                wanted = %data_dir.display(),
                using = %fallback.display(),
                "the postgres OS user cannot reach the data directory (a parent is private); using a shared location"
            );
            std::fs::create_dir_all(&fallback)?;
            data_dir = fallback.canonicalize()?;
        }
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))?;
        if let Some(user) = run_as {
            std::os::unix::fs::chown(&data_dir, Some(user.uid), Some(user.gid))?;
        }
        let socket_dir = socket_dir_for(&data_dir);
        std::fs::create_dir_all(&socket_dir)?;
        if let Some(user) = run_as {
            std::os::unix::fs::chown(&socket_dir, Some(user.uid), Some(user.gid))?;
        }

        if !data_dir.join("PG_VERSION").exists() {
            let output = command(&bin_dir.join("initdb"), run_as)
                .arg("--pgdata")
                .arg(&data_dir)
                .args([
                    "--username",
                    SUPERUSER,
                    "--auth",
                    "trust",
                    "--encoding",
                    "UTF8",
                ])
                .args(["--locale", "C", "--no-sync"])
                .output()?;
            if !output.status.success() {
                return Err(LocalPostgresError::Command {
                    step: "initdb",
                    detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                });
            }
        }
        stop_stale_server(&data_dir);

        let log = std::fs::File::create(data_dir.join("server.log"))?;
        if let Some(user) = run_as {
            std::os::unix::fs::chown(data_dir.join("server.log"), Some(user.uid), Some(user.gid))?;
        }
        let mut server = command(&bin_dir.join("postgres"), run_as);
        server
            .arg("-D")
            .arg(&data_dir)
            .arg("-k")
            .arg(&socket_dir)
            .args([
                "-c",
                "listen_addresses=",
                "-c",
                "unix_socket_permissions=0777",
            ])
            .args(["-c", "max_connections=200", "-c", "fsync=on"])
            .stdout(Stdio::null())
            .stderr(log);
        let child = spawn_tied_to_process(server)?;

        let cluster = Self {
            data_dir,
            socket_dir,
            child: Mutex::new(Some(child)),
        };
        cluster.wait_until_ready(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// A server for throwaway databases (benchmarks): the one `DATABASE_URL` names, else a
    /// cluster started in `data_dir`, returned so the caller stops it. Blocks while a cluster
    /// starts.
    pub fn from_env_or_start(
        data_dir: &Path,
    ) -> anyhow::Result<(Option<LocalPostgres>, PgConnectOptions)> {
        match std::env::var("DATABASE_URL") {
            Ok(url) => Ok((None, crate::db::options_from_url(&url)?)),
            Err(_) => {
                let local = Self::start(data_dir)?;
                let server = local.connect_options("postgres");
                Ok((Some(local), server))
            }
        }
    }

    /// Connection options for `database` on this cluster.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass()
            .socket(&self.socket_dir)
            .username(SUPERUSER)
            .database(database)
    }

    /// A `postgres://` URL for `database` (the socket directory travels in `host`).
    pub fn url(&self, database: &str) -> String {
        let socket =
            url::form_urlencoded::byte_serialize(self.socket_dir.as_os_str().as_encoded_bytes())
                .collect::<String>();
        format!("postgres://{SUPERUSER}@localhost/{database}?host={socket}")
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Where the server's Unix socket lives (for `psql -h` / `pgbench -h`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// Fast shutdown (SIGINT): ends sessions, checkpoints, and exits; waits for the process.
    pub fn stop(&self) {
        let Some(mut child) = self.child.lock().ok().and_then(|mut c| c.take()) else {
            return;
        };
        signal(child.id(), libc::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Immediate shutdown as a last resort; Postgres recovers from it on the next start.
        signal(child.id(), libc::SIGQUIT);
        let _ = child.wait();
    }

    /// True while the server process is alive (used by tests that stop it on purpose).
    pub fn is_running(&self) -> bool {
        self.child
            .lock()
            .ok()
            .and_then(|mut c| c.as_mut().map(|c| matches!(c.try_wait(), Ok(None))))
            .unwrap_or(false)
    }

    fn wait_until_ready(&self, timeout: Duration) -> Result<(), LocalPostgresError> {
        let socket = self.socket_dir.join(".s.PGSQL.5432");
        let started = Instant::now();
        while started.elapsed() < timeout {
            if !self.is_running() {
                return Err(LocalPostgresError::Command {
                    step: "postgres",
                    detail: format!(
                        "the server exited at start; see {}",
                        self.data_dir.join("server.log").display()
                    ),
                });
            }
            if socket.exists() && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                // The socket accepts before recovery ends; a ready server has removed its
                // "starting" marker from postmaster.pid (line 8 becomes "ready").
                let pid_file = std::fs::read_to_string(self.data_dir.join("postmaster.pid"))
                    .unwrap_or_default();
                if pid_file.lines().nth(7).is_some_and(|s| s.trim() == "ready") {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(LocalPostgresError::NotReady {
            dir: self.data_dir.display().to_string(),
            secs: timeout.as_secs(),
        })
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory holding `initdb` and `postgres`: `POSTGRES_BIN_DIR` if set, else PATH, then
/// Debian's layout (newest version first).
pub fn find_binaries() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("POSTGRES_BIN_DIR") {
        let dir = PathBuf::from(dir);
        return has_both(&dir).then_some(dir);
    }
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|d| has_both(d))
    {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_both(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

/// Unix socket paths are limited to ~107 bytes; use the data dir when short enough.
fn socket_dir_for(data_dir: &Path) -> PathBuf {
    if data_dir.as_os_str().len() < 80 {
        return data_dir.to_path_buf();
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(data_dir.as_os_str().as_encoded_bytes());
    let name: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    std::env::temp_dir().join(format!("quotebook-pg-{name}"))
}

/// Whether `user` can traverse every parent of `dir` (the directory itself is chowned to them).
fn reachable_by(user: RunAs, dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    dir.ancestors().skip(1).all(|parent| {
        let Ok(meta) = std::fs::metadata(parent) else {
            return false;
        };
        let mode = meta.mode();
        if meta.uid() == user.uid {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        }
    })
}

/// `/var/lib/quotebook/<hash of the wanted path>/postgres`: stable per checkout.
fn shared_location_for(wanted: &Path) -> PathBuf {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(wanted.as_os_str().as_encoded_bytes());
    let name: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    PathBuf::from("/var/lib/quotebook")
        .join(name)
        .join("postgres")
}

fn command(program: &Path, run_as: Option<RunAs>) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null());
    if let Some(user) = run_as {
        // std drops root's supplementary groups when it changes the uid.
        cmd.uid(user.uid).gid(user.gid);
        cmd.env("HOME", "/tmp");
    }
    cmd
}

/// Spawns `cmd` from a thread that never exits, with the parent-death signal set, so the kernel
/// stops the server if this process dies for any reason. Its own process group keeps a terminal's
/// Ctrl-C from reaching it directly: we stop it ourselves after draining requests.
fn spawn_tied_to_process(mut cmd: Command) -> io::Result<Child> {
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe and only affects the child being exec'd.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("postgres-keeper".into())
        .spawn(move || {
            let _ = tx.send(cmd.spawn());
            loop {
                std::thread::park();
            }
        })?;
    rx.recv().map_err(io::Error::other)?
}

/// A previous run that was killed with SIGKILL leaves its server to the parent-death signal; if
/// that server is still shutting down, give it a moment instead of failing on the lock file.
fn stop_stale_server(data_dir: &Path) {
    let Ok(pid_file) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return;
    };
    let Some(pid) = pid_file
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<i32>().ok())
    else {
        return;
    };
    if !process_alive(pid) {
        return;
    }
    signal(pid as u32, libc::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(30);
    while process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: sending a signal to a process we started.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// The `postgres` OS user from /etc/passwd.
fn postgres_user() -> Option<RunAs> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() != Some(&"postgres") || fields.len() < 4 {
            return None;
        }
        Some(RunAs {
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
        })
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_private_parent_is_out_of_reach_and_gets_a_shared_location() {
        let root = std::env::temp_dir().join(format!("qb-reach-{}", std::process::id()));
        let dir = root.join("checkout/.data/postgres");
        std::fs::create_dir_all(&dir).unwrap();
        // A user who owns none of these directories only gets the "others" bits.
        let stranger = RunAs {
            uid: 54_321,
            gid: 54_321,
        };
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(reachable_by(stranger, &dir));
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!reachable_by(stranger, &dir));

        let shared = shared_location_for(&dir);
        assert!(shared.starts_with("/var/lib/quotebook"));
        assert_eq!(shared, shared_location_for(&dir), "stable between runs");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _ = std::fs::remove_dir_all(&root);
    }
}
