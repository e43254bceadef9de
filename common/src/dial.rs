//! How a service reaches its peers: over the operating system's TCP (every server, always), or through a
//! connector a test supplies, such as a simulator's network, so that the real servers and clients can
//! run on a network the test controls.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint, Uri};

/// A byte stream to a peer.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connection being made to the peer at a URI.
pub type Connecting = Pin<Box<dyn Future<Output = io::Result<Box<dyn Io>>> + Send>>;

/// Opens connections for a test's network.
pub type Connector = Arc<dyn Fn(Uri) -> Connecting + Send + Sync>;

#[derive(Clone, Default)]
pub enum Dialer {
    /// The operating system's TCP.
    #[default]
    Tcp,
    /// A test's network.
    Custom(Connector),
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dialer::Tcp => "Tcp",
            Dialer::Custom(_) => "Custom",
        })
    }
}

impl Dialer {
    /// A channel to `endpoint` that connects on first use and reconnects on its own.
    pub fn connect_lazy(&self, endpoint: Endpoint) -> Channel {
        match self {
            Dialer::Tcp => endpoint.connect_lazy(),
            Dialer::Custom(connector) => {
                let connector = connector.clone();
                endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
                    let connecting = connector(uri);
                    async move { connecting.await.map(TokioIo::new) }
                }))
            }
        }
    }
}
