//! Where e-mail goes: an SMTP server (lettre), or `.eml` files in a directory.
//!
//! The files are written by tpc itself, a batch at a time: each as `<txn-id>.eml` through a temporary
//! name and a rename (so a reader never sees half a message, and an e-mail resent after a crash replaces
//! the first copy instead of adding a second), then one `syncfs` for the whole batch before any of them
//! counts as delivered. (lettre's file transport made several thread-pool round trips per file, under a
//! random name, and never synced: a power cut could lose an e-mail already marked sent.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tpc_common::TxnId;

use crate::log::OutboxEntry;

/// Sender address of every tpc e-mail.
pub const FROM: &str = "tpc <no-reply@tpc.local>";

#[derive(Clone)]
pub enum Mailer {
    /// An SMTP server.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// `.eml` files in a directory.
    Files(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum MailerError {
    #[error("bad SMTP URL: {0}")]
    Url(String),
    #[error("cannot create the mail directory: {0}")]
    Dir(#[from] std::io::Error),
}

/// What became of one e-mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Accepted by the mail server, or on disk as a file.
    Sent,
    /// Can never be built or sent (the reason): it leaves the outbox unsent.
    Undeliverable(String),
    /// Not this time (the reason): try again later.
    Failed(String),
}

impl Mailer {
    /// `smtp://host[:port]` (port 25 by default). Plaintext: this build has no TLS, which keeps it free
    /// of system libraries; point it at a local relay.
    pub fn smtp(url: &str) -> Result<Self, MailerError> {
        let rest = url
            .strip_prefix("smtp://")
            .ok_or_else(|| MailerError::Url(format!("{url}: expected smtp://host:port")))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .map_err(|_| MailerError::Url(format!("{url}: bad port")))?,
            ),
            None => (rest, 25),
        };
        if host.is_empty() {
            return Err(MailerError::Url(format!("{url}: no host")));
        }
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .timeout(Some(Duration::from_secs(5)))
            .build();
        Ok(Mailer::Smtp(transport))
    }

    pub fn files(dir: PathBuf) -> Result<Self, MailerError> {
        std::fs::create_dir_all(&dir)?;
        Ok(Mailer::Files(dir))
    }

    pub fn describe(&self) -> String {
        match self {
            Mailer::Smtp(_) => "SMTP".into(),
            Mailer::Files(dir) => format!(".eml files in {}", dir.display()),
        }
    }

    /// Sends one e-mail through the SMTP server.
    pub async fn send_smtp(
        transport: &AsyncSmtpTransport<Tokio1Executor>,
        entry: &OutboxEntry,
    ) -> Delivery {
        let message = match build(entry) {
            Ok(message) => message,
            Err(cause) => return Delivery::Undeliverable(cause),
        };
        match transport.send(message).await {
            Ok(_) => Delivery::Sent,
            Err(e) => Delivery::Failed(e.to_string()),
        }
    }
}

/// Writes `entries` as `.eml` files in `dir`, and makes them durable with one `syncfs`. Blocking:
/// run it on the blocking pool. Returns one delivery per entry, in order.
pub fn write_files(dir: &Path, entries: &[OutboxEntry]) -> Vec<Delivery> {
    let mut done: Vec<Delivery> = entries
        .iter()
        .map(|entry| match build(entry) {
            Ok(message) => match write_file(dir, entry.txn, &message.formatted()) {
                Ok(()) => Delivery::Sent,
                Err(e) => Delivery::Failed(format!("writing the e-mail file: {e}")),
            },
            Err(cause) => Delivery::Undeliverable(cause),
        })
        .collect();
    if done.contains(&Delivery::Sent)
        && let Err(e) = sync_filesystem(dir)
    {
        let cause = format!("syncing the e-mail files: {e}");
        for d in done.iter_mut().filter(|d| **d == Delivery::Sent) {
            *d = Delivery::Failed(cause.clone());
        }
    }
    done
}

fn write_file(dir: &Path, txn: TxnId, raw: &[u8]) -> std::io::Result<()> {
    let name = format!("{txn}.eml");
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(raw)?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name))
}

/// One `syncfs(2)` for the batch: every file written before it, with its directory entry, is on disk
/// when it returns; far cheaper than an `fsync` per file and one per directory.
fn sync_filesystem(dir: &Path) -> std::io::Result<()> {
    let handle = std::fs::File::open(dir)?;
    // SAFETY: syncfs only reads the descriptor, which `handle` keeps open for the call.
    let synced = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&handle)) };
    if synced == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn build(entry: &OutboxEntry) -> Result<Message, String> {
    Message::builder()
        .from(FROM.parse().map_err(|e| format!("{e}"))?)
        .to(entry.to.parse().map_err(|e| format!("recipient: {e}"))?)
        .subject(entry.subject.clone())
        .message_id(Some(entry.message_id.clone()))
        .header(ContentType::TEXT_PLAIN)
        .body(entry.body.clone())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(to: &str) -> OutboxEntry {
        let txn = TxnId::generate();
        OutboxEntry {
            txn,
            to: to.into(),
            subject: "Your password was changed".into(),
            body: "hello".into(),
            message_id: format!("<{txn}@tpc.local>"),
        }
    }

    #[test]
    fn builds_a_message_with_the_stable_id() {
        let entry = entry("alice@example.com");
        let raw = String::from_utf8(build(&entry).unwrap().formatted()).unwrap();
        assert!(
            raw.contains(&format!("Message-ID: {}", entry.message_id)),
            "{raw}"
        );
        assert!(raw.contains("To: alice@example.com"));
    }

    #[test]
    fn files_are_named_by_transaction_and_a_resend_replaces_the_first_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (good, bad) = (entry("bob@example.com"), entry("not an address"));
        let done = write_files(dir.path(), &[good.clone(), bad]);
        assert_eq!(done[0], Delivery::Sent);
        assert!(matches!(&done[1], Delivery::Undeliverable(why) if why.contains("recipient")));
        assert_eq!(
            write_files(dir.path(), std::slice::from_ref(&good)),
            [Delivery::Sent]
        );
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [format!("{}.eml", good.txn)],
            "one file, no temporaries"
        );
        let raw = std::fs::read_to_string(dir.path().join(&names[0])).unwrap();
        assert!(raw.contains("To: bob@example.com"), "{raw}");
    }
}
