//! What every tpc gRPC server has around its own services: the standard health service, server
//! reflection in both versions (so `grpcurl list` works, and older tools too), a request size limit, and graceful shutdown.

use std::future::Future;

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::ServerTlsConfig;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;

pub use crate::greeting::GREETING_WITHIN;
use crate::greeting::Greeted;

/// A server builder with health and reflection already added, over TLS if `tls` is given. `services`
/// are the fully qualified names reported as SERVING by the health service (the empty name, the whole
/// server, always is).
pub async fn router(
    services: &[&str],
    tls: Option<ServerTlsConfig>,
) -> Result<Router, tonic::transport::Error> {
    Ok(router_with_health(services, tls).await?.0)
}

/// [`router`], and the handle that changes what its health service reports.
pub async fn router_with_health(
    services: &[&str],
    tls: Option<ServerTlsConfig>,
) -> Result<(Router, tonic_health::server::HealthReporter), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in services {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    // Both versions of reflection: grpcurl speaks v1, but older tools (grpcui, the grpcio reflection
    // client) speak only v1alpha and would see nothing.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tpc_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // The descriptor sets are compiled into the binary; failing to parse them is a build bug.
    // Each lists its own version; each is told of the other, so both list both.
    let v1 = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("compiled-in descriptor sets are valid");
    let v1alpha = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("compiled-in descriptor sets are valid");
    // A peer that vanished (a dead host, a cut link) is noticed by keepalive pings and its connection
    // closed, instead of holding a descriptor forever.
    let mut server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)));
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    Ok((
        server
            .add_service(health)
            .add_service(v1)
            .add_service(v1alpha),
        reporter,
    ))
}

/// Where a server takes its connections from: a TCP listener (every server, always), or the
/// connections of a test's network (a simulator's), accepted by the test.
pub enum Listener {
    Tcp(TcpListener),
    Accepting {
        connections: Connections,
        /// The address the test's network gave the server.
        local: std::net::SocketAddr,
    },
}

/// Connections accepted on a test's network.
pub type Connections =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = std::io::Result<Accepted>> + Send>>;

/// A connection from a test's network, with the addresses of both ends.
pub struct Accepted {
    pub io: Box<dyn crate::dial::Io>,
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Listener::Tcp(listener)
    }
}

impl Listener {
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        match self {
            Listener::Tcp(listener) => listener.local_addr(),
            Listener::Accepting { local, .. } => Ok(*local),
        }
    }
}

impl tonic::transport::server::Connected for Accepted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: Some(self.local),
            remote_addr: Some(self.remote),
        }
    }
}

impl tokio::io::AsyncRead for Accepted {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Accepted {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A service's two listeners: clients on `public`, the cluster's own calls on `internal`.
pub struct Listeners {
    pub public: Listener,
    pub internal: Listener,
    /// Told when the service serves on both, its setup (stores opened, recovery) done: what `tpc up`
    /// waits for before it says it is up.
    pub ready: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Serves `public` and `internal` on their listeners until `shutdown` completes; if either server fails,
/// the other is stopped too.
pub async fn run_both(
    public: Router,
    internal: Router,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    if let Some(ready) = listeners.ready {
        let _ = ready.send(());
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let public = run(public, listeners.public, until(stopped.clone()));
    let internal = run(internal, listeners.internal, until(stopped));
    tokio::pin!(public, internal, shutdown);
    tokio::select! {
        _ = &mut shutdown => {}
        done = &mut public => {
            let _ = stop.send(true);
            return done.and(drain(internal).await);
        }
        done = &mut internal => {
            let _ = stop.send(true);
            return done.and(drain(public).await);
        }
    }
    let _ = stop.send(true);
    let (public, internal) = tokio::join!(drain(public), drain(internal));
    public.and(internal)
}

/// How long a stopping server waits for its connections to finish their calls and close. A peer that is
/// frozen (SIGSTOP, a dead host behind a live route) never closes its connection, and a graceful
/// shutdown would wait for it forever; past this, the remaining connections are dropped.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

async fn drain(
    server: impl Future<Output = Result<(), tonic::transport::Error>>,
) -> Result<(), tonic::transport::Error> {
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(done) => done,
        Err(_) => {
            tracing::warn!(
                grace_s = SHUTDOWN_GRACE.as_secs(),
                "connections still open after the shutdown grace period: dropped"
            );
            Ok(())
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then lets in-flight RPCs finish.
///
/// A connection that sends nothing for 10 s after it is accepted is closed (`greeting.rs`).
///
/// Every accepted socket gets `TCP_NODELAY`: gRPC writes a reply as several small frames, and with
/// Nagle's algorithm the last one waits for the peer's delayed ACK (~40 ms on Linux) — that alone made one
/// client's change take 44 ms instead of 2. (tonic sets it only on listeners it binds itself.)
pub async fn run(
    router: Router,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let listener = match listener {
        Listener::Tcp(listener) => listener,
        Listener::Accepting { connections, .. } => {
            return router
                .serve_with_incoming_shutdown(connections.map(|c| c.map(Greeted::new)), shutdown)
                .await;
        }
    };
    let mut warned_at: Option<std::time::Instant> = None;
    let incoming = TcpListenerStream::new(listener).then(move |accepted| {
        let pause = match &accepted {
            Ok(stream) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::warn!(cause = %e, "cannot set TCP_NODELAY on an accepted connection");
                }
                None
            }
            // Out of file descriptors (EMFILE) or the like: the listener would fail again at once, so
            // wait a moment, and say so (once in a while, not per attempt).
            Err(e) => {
                if warned_at.is_none_or(|at| at.elapsed() >= ACCEPT_WARN_EVERY) {
                    tracing::warn!(
                        cause = %e,
                        "cannot accept connections (out of file descriptors?); new clients wait"
                    );
                    warned_at = Some(std::time::Instant::now());
                }
                Some(ACCEPT_PAUSE)
            }
        };
        async move {
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
            accepted.map(Greeted::new)
        }
    });
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// After a failed accept, the listener waits this long before trying again.
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);
/// A failing listener warns at most this often.
const ACCEPT_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Raises this process's soft limit on open files to its hard limit: each client connection is a file
/// descriptor, and the usual soft limit (1,024) is far below what a server meets.
pub fn raise_open_files_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed, which outlives them.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
                && limit.rlim_cur < limit.rlim_max
            {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                    tracing::warn!(
                        soft = limit.rlim_cur,
                        "cannot raise the limit on open files"
                    );
                }
            }
        }
    }
}
