//! A server's listener and a client's connector on turmoil's network.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tpc_common::dial::{Connecting, Dialer, Io};
use tpc_common::serve::{Accepted, Listener};

/// Listens on `port` of this host, for a server's [`Listener`].
pub async fn listen(port: u16) -> std::io::Result<Listener> {
    let listener =
        turmoil::net::TcpListener::bind((IpAddr::from(Ipv4Addr::UNSPECIFIED), port)).await?;
    let local = listener.local_addr()?;
    let connections = futures_util::stream::unfold(listener, move |listener| async move {
        let accepted = listener.accept().await.map(|(stream, remote)| {
            let local = stream
                .local_addr()
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], port)));
            Accepted {
                io: Box::new(stream) as Box<dyn Io>,
                local,
                remote,
            }
        });
        Some((accepted, listener))
    });
    Ok(Listener::Accepting {
        connections: Box::pin(connections),
        local,
    })
}

/// Dials peers (`http://host:port`) over turmoil's network.
pub fn dialer() -> Dialer {
    Dialer::Custom(Arc::new(|uri: tonic::transport::Uri| -> Connecting {
        Box::pin(async move {
            let authority = uri
                .authority()
                .ok_or_else(|| std::io::Error::other(format!("no host in {uri}")))?
                .to_string();
            let stream = turmoil::net::TcpStream::connect(authority).await?;
            Ok(Box::new(stream) as Box<dyn Io>)
        })
    }))
}
