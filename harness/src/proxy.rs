//! A TCP fault proxy: sits on one network link (one direction of calls, e.g. coordinator → password
//! participant) and can add latency, drop connections, black-hole the link or hold the bytes of one
//! direction only, until healed.
//!
//! Held bytes are delivered when the link heals, as TCP retransmission would after a real partition;
//! callers with deadlines give up before that, which is the point.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

/// The faults active on a link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkFaults {
    /// Added before each chunk is forwarded, both directions.
    pub latency: Duration,
    /// New connections are accepted and closed at once.
    pub refuse: bool,
    /// Bytes from the caller to the callee are held.
    pub hold_requests: bool,
    /// Bytes from the callee back to the caller are held.
    pub hold_replies: bool,
}

pub struct FaultProxy {
    addr: SocketAddr,
    faults: watch::Sender<LinkFaults>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (faults, _) = watch::channel(LinkFaults::default());
        let connections = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn(accept(
            listener,
            target,
            faults.subscribe(),
            connections.clone(),
        ));
        Ok(Self {
            addr,
            faults,
            connections,
            accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, faults: LinkFaults) {
        self.faults.send_replace(faults);
    }

    pub fn update(&self, change: impl FnOnce(&mut LinkFaults)) {
        self.faults.send_modify(change);
    }

    /// Every fault off; held bytes flow again.
    pub fn heal(&self) {
        self.set(LinkFaults::default());
    }

    /// Closes every open connection (callers see a reset and reconnect).
    pub fn drop_connections(&self) {
        for conn in self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            conn.abort();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.drop_connections();
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    faults: watch::Receiver<LinkFaults>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
) {
    while let Ok((client, _)) = listener.accept().await {
        if faults.borrow().refuse {
            drop(client);
            continue;
        }
        let faults = faults.clone();
        let task = tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let requests = pump(client_read, server_write, faults.clone(), |f| {
                f.hold_requests
            });
            let replies = pump(server_read, client_write, faults, |f| f.hold_replies);
            // When either side closes, close both.
            tokio::select! {
                _ = requests => {}
                _ = replies => {}
            }
        });
        let mut open = connections.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|c| !c.is_finished());
        open.push(task.abort_handle());
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut faults: watch::Receiver<LinkFaults>,
    held: fn(&LinkFaults) -> bool,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        let latency = {
            let state = faults
                .wait_for(|f| !held(f))
                .await
                .map_err(|_| std::io::Error::other("proxy stopped"))?;
            state.latency
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        to.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 4];
        s.write_all(b"ping").await.unwrap();
        matches!(
            tokio::time::timeout(within, s.read_exact(&mut buf)).await,
            Ok(Ok(_))
        )
    }

    #[tokio::test]
    async fn holds_bytes_while_partitioned_and_delivers_them_on_heal() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut s, Duration::from_secs(1)).await);

        proxy.update(|f| f.hold_replies = true);
        assert!(
            !round_trip(&mut s, Duration::from_millis(200)).await,
            "one-way partition"
        );
        proxy.heal();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping", "held bytes arrive after healing");

        proxy.update(|f| f.latency = Duration::from_millis(100));
        let started = std::time::Instant::now();
        assert!(round_trip(&mut s, Duration::from_secs(1)).await);
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "latency each way"
        );
    }

    #[tokio::test]
    async fn drops_and_refuses_connections() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut s, Duration::from_secs(1)).await);
        proxy.drop_connections();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = s.write_all(b"ping").await;
        let mut buf = [0u8; 4];
        assert!(matches!(s.read(&mut buf).await, Ok(0) | Err(_)), "closed");

        proxy.update(|f| f.refuse = true);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(!round_trip(&mut s, Duration::from_millis(200)).await);
        proxy.heal();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut s, Duration::from_secs(1)).await);
    }
}
