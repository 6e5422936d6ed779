//! A user-space TCP proxy in front of Postgres that a test can break the way Neon breaks: every
//! connection dropped at once (a compute restart), connects that take seconds (a suspended
//! compute waking), or nothing listening at all (the endpoint down).

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream, UnixStream},
    task::JoinHandle,
};

pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    listener: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    /// The Postgres Unix socket every connection is forwarded to.
    upstream: PathBuf,
    delay_ms: AtomicU64,
    connections: Mutex<Vec<JoinHandle<()>>>,
}

impl TcpProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to the Unix socket `upstream`
    /// (`<socket dir>/.s.PGSQL.5432`).
    pub async fn start(upstream: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream,
            delay_ms: AtomicU64::new(0),
            connections: Mutex::default(),
        });
        let task = tokio::spawn(accept(listener, shared.clone()));
        Self {
            addr,
            shared,
            listener: Mutex::new(Some(task)),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// New connections reach Postgres only after `delay` (the TCP handshake is immediate, as
    /// at Neon's proxy, which accepts and then waits for the compute).
    pub fn set_connect_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Closes every open connection at once, both ways, as a compute restart does.
    pub fn kill_connections(&self) {
        let connections = std::mem::take(&mut *self.shared.connections.lock().expect("lock"));
        for connection in connections {
            connection.abort();
        }
    }

    /// Stops listening (new connections are refused) and kills the open ones.
    pub fn stop(&self) {
        if let Some(task) = self.listener.lock().expect("lock").take() {
            task.abort();
        }
        self.kill_connections();
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        let mut listener = None;
        // The aborted listener closes its socket when its task is dropped: give it a moment.
        for _ in 0..100 {
            match TcpListener::bind(self.addr).await {
                Ok(bound) => {
                    listener = Some(bound);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let listener = listener.expect("rebind the proxy's port");
        let task = tokio::spawn(accept(listener, self.shared.clone()));
        *self.listener.lock().expect("lock") = Some(task);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((client, _)) = listener.accept().await {
        let task = tokio::spawn(forward(client, shared.clone()));
        let mut connections = shared.connections.lock().expect("lock");
        connections.retain(|c| !c.is_finished());
        connections.push(task);
    }
}

async fn forward(mut client: TcpStream, shared: Arc<Shared>) {
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let Ok(mut server) = UnixStream::connect(&shared.upstream).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
