//! A TCP proxy in front of Postgres's Unix socket that delays every chunk by half a round trip in
//! each direction: a database "in the next building" without `tc netem`.
//!
//! It is a delay line, not a bandwidth limit: chunks keep their order and are released at
//! arrival + delay, so pipelined traffic is not serialised behind each delay. Each direction of
//! each connection has a reader thread and a writer thread with blocking I/O: `thread::sleep`
//! keeps to within tens of microseconds, where Tokio's timer rounds up to whole milliseconds.
//! As root the threads run with real-time priority, so a machine saturated by wrk, the app and
//! Postgres does not stretch the delay; [`DelayProxy::measure_rtt`] prints what it really adds.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

pub struct DelayProxy {
    port: u16,
}

impl DelayProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards each connection to `socket` (Postgres's
    /// `.s.PGSQL.5432`), `round_trip / 2` each way.
    pub fn start(socket: &Path, round_trip: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let socket = socket.to_path_buf();
        let one_way = round_trip / 2;
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if let Err(err) = forward(client, &socket, one_way) {
                    eprintln!("delay proxy: {err}");
                }
            }
        });
        Ok(Self { port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The median of `samples` `SELECT 1` round trips through the proxy, in milliseconds.
    pub async fn measure_rtt(&self, database: &str, samples: usize) -> anyhow::Result<f64> {
        use sqlx::{ConnectOptions, Connection};
        let mut conn = sqlx::postgres::PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .port(self.port)
            .username("postgres")
            .database(database)
            .connect()
            .await?;
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            let started = Instant::now();
            sqlx::query("SELECT 1").execute(&mut conn).await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        conn.close().await?;
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }
}

fn forward(client: TcpStream, socket: &PathBuf, one_way: Duration) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let server = UnixStream::connect(socket)?;
    let (client_read, server_write) = (client.try_clone()?, server.try_clone()?);
    delay_line(client_read, server_write, one_way);
    delay_line(server, client, one_way);
    Ok(())
}

trait HalfClose {
    fn close_write(&self);
}

impl HalfClose for TcpStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl HalfClose for UnixStream {
    fn close_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// Copies `from` to `to`, each chunk released `delay` after it was read.
fn delay_line<R, W>(mut from: R, mut to: W, delay: Duration)
where
    R: Read + Send + 'static,
    W: Write + HalfClose + Send + 'static,
{
    let (chunks, due) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        real_time_priority();
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buffer) {
            if chunks
                .send((Instant::now() + delay, buffer[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    });
    thread::spawn(move || {
        real_time_priority();
        for (at, chunk) in due {
            let wait = at.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                thread::sleep(wait);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        to.close_write();
    });
}

/// SCHED_FIFO for the calling thread when allowed (root); otherwise it stays as it is.
fn real_time_priority() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: sched_setscheduler with pid 0 changes only the calling thread; `param` is valid.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO, &param);
    }
}
