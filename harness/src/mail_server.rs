//! A real SMTP server on loopback that keeps what it receives in memory, built on the `mailin` SMTP
//! state machine. It can be stopped and started again on the same port, to test that the outbox
//! retries until the mail is accepted. It can also speak TLS (implicit, or after STARTTLS) and require
//! AUTH, as a real relay does.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use mailin::{Action, AuthMechanism, Handler, Response, SessionBuilder};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// One accepted e-mail.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The raw message: headers and body.
    pub data: String,
}

impl Mail {
    /// The value of header `name` (first occurrence, unfolded lines are not joined).
    pub fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.data
            .lines()
            .take_while(|l| !l.is_empty())
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim())
    }

    pub fn message_id(&self) -> Option<&str> {
        self.header("Message-ID")
    }
}

/// What a mail server received. A simulator keeps it across the server's crashes: an e-mail a server
/// accepted is its to keep.
pub type Inbox = Arc<Mutex<Vec<Mail>>>;

/// How a [`MailServer`] protects its sessions.
#[derive(Clone, Default)]
pub struct MailSecurity {
    /// TLS with this certificate and key (PEM), from the first byte or after STARTTLS.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// TLS from the first byte (`smtps://`) instead of after STARTTLS.
    pub implicit: bool,
    /// AUTH PLAIN/LOGIN required with this user and password (offered only under TLS).
    pub auth: Option<(String, String)>,
}

struct Secured {
    acceptor: Option<TlsAcceptor>,
    implicit: bool,
    auth: Option<(String, String)>,
}

pub struct MailServer {
    addr: SocketAddr,
    inbox: Inbox,
    task: Option<JoinHandle<()>>,
    security: Arc<Secured>,
}

impl MailServer {
    /// Starts on a free loopback port: plaintext, no AUTH.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(MailSecurity::default()).await
    }

    /// Starts on a free loopback port with TLS and AUTH as `security` says.
    pub async fn start_with(security: MailSecurity) -> std::io::Result<Self> {
        let acceptor = match &security.tls {
            Some((cert, key)) => Some(acceptor(cert, key)?),
            None => None,
        };
        let security = Arc::new(Secured {
            acceptor,
            implicit: security.implicit,
            auth: security.auth,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inbox = Inbox::default();
        let task = Some(tokio::spawn(serve(
            listener,
            inbox.clone(),
            security.clone(),
        )));
        Ok(Self {
            addr,
            inbox,
            task,
            security,
        })
    }

    /// `smtp://127.0.0.1:PORT` (or `smtps://USER@…`, `smtp://USER@…?tls=required`), for `--smtp`.
    pub fn url(&self) -> String {
        let user = match &self.security.auth {
            Some((user, _)) => format!("{user}@"),
            None => String::new(),
        };
        match (&self.security.acceptor, self.security.implicit) {
            (None, _) => format!("smtp://{user}{}", self.addr),
            (Some(_), true) => format!("smtps://{user}{}", self.addr),
            (Some(_), false) => format!("smtp://{user}{}?tls=required", self.addr),
        }
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops accepting (the port refuses connections) until [`MailServer::resume`].
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    pub async fn resume(&mut self) -> std::io::Result<()> {
        if self.task.is_none() {
            let listener = TcpListener::bind(self.addr).await?;
            self.task = Some(tokio::spawn(serve(
                listener,
                self.inbox.clone(),
                self.security.clone(),
            )));
        }
        Ok(())
    }
}

impl Drop for MailServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(listener: TcpListener, inbox: Inbox, security: Arc<Secured>) {
    let mut sessions = tokio::task::JoinSet::new();
    while let Ok((stream, peer)) = listener.accept().await {
        sessions.spawn(session(stream, peer, inbox.clone(), security.clone()));
    }
}

fn acceptor(cert: &[u8], key: &[u8]) -> std::io::Result<TlsAcceptor> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(std::io::Error::other)?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(std::io::Error::other)?;
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(std::io::Error::other)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Collects one message at a time for the session.
struct Collector {
    inbox: Inbox,
    /// The user and password AUTH must match, if AUTH is required.
    auth: Option<(String, String)>,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

impl Collector {
    fn check(&self, user: &str, password: &str) -> Response {
        match &self.auth {
            Some((u, p)) if u == user && p == password => mailin::response::AUTH_OK,
            _ => mailin::response::INVALID_CREDENTIALS,
        }
    }
}

/// Recipients the server refuses for good (550), whatever is retried: a mailbox that does not exist.
pub const REFUSED_MAILBOX: &str = "no-such-mailbox";
/// Recipients the server refuses for now (451), every time: a mailbox that is never available.
pub const BUSY_MAILBOX: &str = "mailbox-busy";

impl Handler for Collector {
    fn rcpt(&mut self, to: &str) -> Response {
        if to.contains(REFUSED_MAILBOX) {
            mailin::response::NO_MAILBOX
        } else if to.contains(BUSY_MAILBOX) {
            mailin::response::INTERNAL_ERROR
        } else {
            mailin::response::OK
        }
    }

    fn auth_plain(&mut self, _authz: &str, user: &str, password: &str) -> Response {
        self.check(user, password)
    }

    fn auth_login(&mut self, user: &str, password: &str) -> Response {
        self.check(user, password)
    }

    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.from = from.to_owned();
        self.to = to.to_vec();
        self.data.clear();
        mailin::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let mail = Mail {
            from: std::mem::take(&mut self.from),
            to: std::mem::take(&mut self.to),
            data: String::from_utf8_lossy(&std::mem::take(&mut self.data)).into_owned(),
        };
        self.inbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(mail);
        mailin::response::OK
    }
}

async fn session(
    stream: TcpStream,
    peer: SocketAddr,
    inbox: Inbox,
    security: Arc<Secured>,
) -> std::io::Result<()> {
    // SMTP is a dialogue of small writes: without this, Nagle and delayed ACKs add 40 ms a message.
    stream.set_nodelay(true)?;
    let collector = Collector {
        inbox,
        auth: security.auth.clone(),
        from: String::new(),
        to: Vec::new(),
        data: Vec::new(),
    };
    let mut builder = SessionBuilder::new("tpc-test-smtp");
    if security.acceptor.is_some() && !security.implicit {
        builder.enable_start_tls();
    }
    if security.auth.is_some() {
        builder
            .enable_auth(AuthMechanism::Plain)
            .enable_auth(AuthMechanism::Login);
    }
    let mut session = builder.build(peer.ip(), collector);
    match (&security.acceptor, security.implicit) {
        (Some(acceptor), true) => {
            let stream = acceptor.accept(stream).await?;
            session.tls_active();
            converse(stream, &mut session, true).await.map(drop)
        }
        (acceptor, _) => {
            let Some(stream) = converse(stream, &mut session, true).await? else {
                return Ok(());
            };
            let Some(acceptor) = acceptor else {
                return Ok(());
            };
            let stream = acceptor.accept(stream).await?;
            session.tls_active();
            converse(stream, &mut session, false).await.map(drop)
        }
    }
}

/// Serves one plaintext SMTP session (no TLS, no AUTH) on any stream, such as a simulated network's,
/// keeping what it receives in `inbox`.
pub async fn plain_session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: std::net::IpAddr,
    inbox: Inbox,
) -> std::io::Result<()> {
    let collector = Collector {
        inbox,
        auth: None,
        from: String::new(),
        to: Vec::new(),
        data: Vec::new(),
    };
    let mut session = SessionBuilder::new("tpc-test-smtp").build(peer, collector);
    converse(stream, &mut session, true).await.map(drop)
}

/// Runs the SMTP dialogue on `stream` until the client quits or leaves; returns the stream if the
/// client asked for STARTTLS (the reply is sent; the handshake is the caller's).
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    session: &mut mailin::Session<Collector>,
    greet: bool,
) -> std::io::Result<Option<S>> {
    let mut stream = BufReader::new(stream);
    if greet {
        stream.write_all(&session.greeting().buffer()?).await?;
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        if stream.read_until(b'\n', &mut line).await? == 0 {
            return Ok(None);
        }
        let response = session.process(&line);
        match response.action {
            Action::Reply => stream.write_all(&response.buffer()?).await?,
            Action::Close => {
                stream.write_all(&response.buffer()?).await?;
                return Ok(None);
            }
            Action::UpgradeTls => {
                stream.write_all(&response.buffer()?).await?;
                stream.flush().await?;
                return Ok(Some(stream.into_inner()));
            }
            Action::NoReply => {}
        }
    }
}
