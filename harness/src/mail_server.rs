//! A real SMTP server on loopback that keeps what it receives in memory, built on the `mailin` SMTP
//! state machine. It can be stopped and started again on the same port, to test that the outbox
//! retries until the mail is accepted.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use mailin::{Action, Handler, Response, SessionBuilder};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

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

type Inbox = Arc<Mutex<Vec<Mail>>>;

pub struct MailServer {
    addr: SocketAddr,
    inbox: Inbox,
    task: Option<JoinHandle<()>>,
}

impl MailServer {
    /// Starts on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inbox = Inbox::default();
        let task = Some(tokio::spawn(serve(listener, inbox.clone())));
        Ok(Self { addr, inbox, task })
    }

    /// `smtp://127.0.0.1:PORT`, for `--smtp`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
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
            self.task = Some(tokio::spawn(serve(listener, self.inbox.clone())));
        }
        Ok(())
    }
}

impl Drop for MailServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(listener: TcpListener, inbox: Inbox) {
    let mut sessions = tokio::task::JoinSet::new();
    while let Ok((stream, peer)) = listener.accept().await {
        sessions.spawn(session(stream, peer, inbox.clone()));
    }
}

/// Collects one message at a time for the session.
struct Collector {
    inbox: Inbox,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

impl Handler for Collector {
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

async fn session(stream: TcpStream, peer: SocketAddr, inbox: Inbox) -> std::io::Result<()> {
    // SMTP is a dialogue of small writes: without this, Nagle and delayed ACKs add 40 ms a message.
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let collector = Collector {
        inbox,
        from: String::new(),
        to: Vec::new(),
        data: Vec::new(),
    };
    let mut session = SessionBuilder::new("tpc-test-smtp").build(peer.ip(), collector);
    write.write_all(&session.greeting().buffer()?).await?;
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let response = session.process(&line);
        match response.action {
            Action::Reply => write.write_all(&response.buffer()?).await?,
            Action::Close => {
                write.write_all(&response.buffer()?).await?;
                return Ok(());
            }
            Action::NoReply | Action::UpgradeTls => {}
        }
    }
}
