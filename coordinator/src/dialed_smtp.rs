//! Plaintext SMTP over a test's network: the relay a simulator gives the coordinator (`tpc-sim`), so
//! that the outbox's real SMTP dialogue (lettre's client) runs against a mail server the simulation
//! can partition and crash. lettre's pooled transport dials the operating system's TCP itself, so this
//! opens one connection per e-mail through the [`Connector`] instead, and speaks SMTP on it with
//! lettre's connection type.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::extension::ClientId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::Uri;
use tpc_common::dial::{Connector, Io};

use crate::log::OutboxEntry;
use crate::mailer::{Delivery, build};

/// The most one e-mail may take, dialling included (lettre's pooled transport is given the same).
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct DialedSmtp {
    connector: Connector,
    server: Uri,
}

impl DialedSmtp {
    /// `server`: `smtp://host:port`, plaintext (a simulated network has nobody to listen in).
    pub fn new(connector: Connector, server: Uri) -> Self {
        Self { connector, server }
    }

    pub fn describe(&self) -> String {
        format!("SMTP {}, plaintext, over the test's network", self.server)
    }

    /// Sends one e-mail on a connection of its own.
    pub async fn send(self, entry: OutboxEntry) -> Delivery {
        let message = match build(&entry) {
            Ok(message) => message,
            Err(cause) => return Delivery::Undeliverable(cause),
        };
        let dialogue = async {
            let stream = (self.connector)(self.server.clone())
                .await
                .map_err(|e| format!("cannot reach the mail server: {e}"))?;
            let stream = Box::new(Dialed(Mutex::new(stream)));
            let mut connection = AsyncSmtpConnection::connect_with_transport(
                stream,
                &ClientId::Domain("tpc.local".into()),
            )
            .await
            .map_err(Refusal::from)?;
            connection
                .send(message.envelope(), &message.formatted())
                .await
                .map_err(Refusal::from)?;
            // The server has the e-mail; a failed goodbye changes nothing.
            let _ = connection.quit().await;
            Ok::<_, Refusal>(())
        };
        match tokio::time::timeout(TIMEOUT, dialogue).await {
            Ok(Ok(())) => Delivery::Sent,
            Ok(Err(Refusal::Permanent(cause))) => {
                Delivery::Undeliverable(format!("refused by the mail server: {cause}"))
            }
            Ok(Err(Refusal::Transient(cause))) => Delivery::Failed(cause),
            Err(_) => {
                Delivery::Failed(format!("the mail server did not answer within {TIMEOUT:?}"))
            }
        }
    }
}

enum Refusal {
    /// 5xx: no retry will succeed.
    Permanent(String),
    Transient(String),
}

impl From<lettre::transport::smtp::Error> for Refusal {
    fn from(e: lettre::transport::smtp::Error) -> Self {
        if e.is_permanent() {
            Refusal::Permanent(e.to_string())
        } else {
            Refusal::Transient(e.to_string())
        }
    }
}

impl From<String> for Refusal {
    fn from(cause: String) -> Self {
        Refusal::Transient(cause)
    }
}

/// A dialled stream as lettre takes one: `Sync` (the mutex; every use goes through `&mut`, so it is
/// never locked) and `Debug`.
struct Dialed(Mutex<Box<dyn Io>>);

impl Dialed {
    fn io(self: Pin<&mut Self>) -> Pin<&mut dyn Io> {
        let io = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        Pin::new(&mut **io)
    }
}

impl std::fmt::Debug for Dialed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dialed")
    }
}

impl AsyncRead for Dialed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl AsyncWrite for Dialed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
}

impl AsyncTokioStream for Dialed {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        Err(std::io::Error::other(
            "a dialled stream has no socket address",
        ))
    }
}
