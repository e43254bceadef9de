//! A connection that does not begin speaking soon after it is accepted is closed.
//!
//! A gRPC client begins with the 24-byte HTTP/2 preface, or a TLS ClientHello (longer than that),
//! the moment it connects. Neither hyper nor tonic times out a connection that sends nothing: each one
//! holds a file descriptor and a task forever, and a few thousand of them (a scan, a broken client, an
//! attacker) exhaust the descriptors until no real client can connect. So every accepted connection has
//! [`GREETING_WITHIN`] to send its first [`GREETING_BYTES`]; after that it is left to HTTP/2 keepalive
//! (a dead peer) and, under TLS, to the handshake timeout.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

/// How long a new connection may stay silent.
pub const GREETING_WITHIN: Duration = Duration::from_secs(10);

/// How much a client says first: the HTTP/2 client preface (`PRI * HTTP/2.0…`); a TLS ClientHello is
/// longer.
pub const GREETING_BYTES: usize = 24;

/// An accepted connection, closed with `TimedOut` if it has not sent [`GREETING_BYTES`] within
/// [`GREETING_WITHIN`] of being accepted.
pub struct Greeted<IO> {
    io: IO,
    /// Until the greeting is heard.
    deadline: Option<Pin<Box<Sleep>>>,
    heard: usize,
}

impl<IO> Greeted<IO> {
    pub fn new(io: IO) -> Self {
        Self::within(io, GREETING_WITHIN)
    }

    pub fn within(io: IO, within: Duration) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
            heard: 0,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Greeted<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.heard += buf.filled().len() - before;
                if this.heard >= GREETING_BYTES {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing after connecting",
                    )))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Greeted<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: Connected> Connected for Greeted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_times_out_and_a_talking_one_does_not() {
        let (client, server) = tokio::io::duplex(64);
        let mut silent = Greeted::within(server, Duration::from_secs(10));
        let mut buf = [0u8; 8];
        let err = silent.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(client);

        let (mut client, server) = tokio::io::duplex(64);
        let mut talking = Greeted::within(server, Duration::from_secs(10));
        client.write_all(&[b'P'; GREETING_BYTES]).await.unwrap();
        let mut buf = [0u8; GREETING_BYTES];
        talking.read_exact(&mut buf).await.unwrap();
        // Then quiet for much longer than the deadline: an idle client, left to keepalive.
        let quiet = tokio::time::timeout(Duration::from_secs(60), talking.read(&mut buf)).await;
        assert!(quiet.is_err(), "still open after a minute of quiet");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_before_the_whole_greeting_times_out() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut slow = Greeted::within(server, Duration::from_secs(10));
        client.write_all(b"PRI").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(slow.read(&mut buf).await.unwrap(), 3);
        let err = slow.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
