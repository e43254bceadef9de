//! Where e-mail goes: an SMTP server (lettre; plaintext, STARTTLS or implicit TLS, with AUTH), or
//! `.eml` files in a directory.
//!
//! The files are written by tpc itself, a batch at a time: each as `<txn-id>.eml`, written whole
//! before it has a name (so a reader never sees half a message, and an e-mail resent after a crash
//! leaves the first copy instead of adding a second), then one `syncfs` for the whole batch before
//! any of them counts as delivered. (lettre's file transport made several thread-pool round trips
//! per file, under a random name, and never synced: a power cut could lose an e-mail already marked
//! sent.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tpc_common::TxnId;
use tpc_common::dial::Connector;

use crate::dialed_smtp::DialedSmtp;
use crate::log::OutboxEntry;

/// Sender address of every tpc e-mail.
pub const FROM: &str = "tpc <no-reply@tpc.local>";

/// [`FROM`], parsed once rather than for every e-mail.
static SENDER: LazyLock<Mailbox> =
    LazyLock::new(|| FROM.parse().expect("the sender address parses"));

#[derive(Clone)]
pub enum Mailer {
    /// An SMTP server.
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        /// What the logs say about it: host, port, TLS and user, never the password.
        described: String,
    },
    /// `.eml` files in a directory.
    Files(PathBuf),
    /// An SMTP server on a test's network.
    Dialed(DialedSmtp),
}

#[derive(Debug, thiserror::Error)]
pub enum MailerError {
    #[error("bad SMTP URL: {0}")]
    Url(String),
    #[error("cannot create the mail directory: {0}")]
    Dir(#[from] std::io::Error),
}

/// What an SMTP relay needs besides its URL.
#[derive(Debug, Clone, Default)]
pub struct SmtpAccess {
    /// A CA (PEM) to verify the relay's certificate against, instead of the public web's roots.
    pub ca: Option<PathBuf>,
    /// AUTH's password, for the user named in the URL.
    pub password: Option<SmtpPassword>,
}

/// The relay's password: never printed.
#[derive(Clone)]
pub struct SmtpPassword(pub String);

impl std::fmt::Debug for SmtpPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SmtpTls {
    None,
    StartTls,
    Implicit,
}

/// The URL as it may be shown: without anything after the user name's `:`.
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("redacted"));
            }
            parsed.to_string()
        }
        Err(_) => "the SMTP URL".into(),
    }
}

/// `user%40example.com` in a URL is the user name `user@example.com`.
fn percent_decode(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}

/// What became of one e-mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Accepted by the mail server, or on disk as a file.
    Sent,
    /// Can never be built or delivered (the reason): the message is malformed, or the mail server
    /// refused it for good (5xx). It leaves the outbox unsent, parked with the reason.
    Undeliverable(String),
    /// Not this time (the reason): try again later.
    Failed(String),
}

impl Mailer {
    /// An SMTP relay: `smtp://host[:port]` (plaintext, port 25), `smtp://host[:port]?tls=required`
    /// (STARTTLS, port 587) or `smtps://host[:port]` (implicit TLS, port 465). A user name in the URL
    /// (`smtps://tpc@host`) turns on AUTH with `access.password`; a password in the URL is refused (it
    /// would sit in the process list and the shell's history), and so is AUTH without TLS.
    pub fn smtp(url: &str, access: &SmtpAccess) -> Result<Self, MailerError> {
        let bad = |why: &str| MailerError::Url(format!("{}: {why}", redact_url(url)));
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if !parsed.password().unwrap_or_default().is_empty() {
            return Err(bad(
                "a password in the URL is refused: set TPC_SMTP_PASSWORD or --smtp-password-file",
            ));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned();
        let mut tls_required = false;
        for (key, value) in parsed.query_pairs() {
            match (key.as_ref(), value.as_ref()) {
                ("tls", "required") => tls_required = true,
                ("tls", "none") => {}
                _ => return Err(bad("the only option is tls=required (STARTTLS)")),
            }
        }
        let (mode, default_port) = match parsed.scheme() {
            "smtps" if tls_required => return Err(bad("smtps:// is TLS already; drop ?tls=")),
            "smtps" => (SmtpTls::Implicit, 465),
            "smtp" if tls_required => (SmtpTls::StartTls, 587),
            "smtp" => (SmtpTls::None, 25),
            _ => return Err(bad("expected smtp:// or smtps://")),
        };
        let port = parsed.port().unwrap_or(default_port);
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host)
            .port(port)
            .timeout(Some(Duration::from_secs(5)));
        if mode != SmtpTls::None {
            let mut params = TlsParameters::builder(host.clone());
            if let Some(ca) = &access.ca {
                let pem = std::fs::read(ca).map_err(|e| {
                    MailerError::Url(format!("cannot read the SMTP CA {}: {e}", ca.display()))
                })?;
                params =
                    params.add_root_certificate(Certificate::from_pem(&pem).map_err(|e| {
                        MailerError::Url(format!("the SMTP CA {}: {e}", ca.display()))
                    })?);
            }
            let params = params
                .build_rustls()
                .map_err(|e| MailerError::Url(format!("SMTP TLS: {e}")))?;
            builder = builder.tls(match mode {
                SmtpTls::Implicit => Tls::Wrapper(params),
                _ => Tls::Required(params),
            });
        }
        let user = percent_decode(parsed.username());
        if !user.is_empty() {
            if mode == SmtpTls::None {
                return Err(bad(
                    "AUTH sends the password: use smtps:// or smtp://…?tls=required",
                ));
            }
            let password = access.password.clone().ok_or_else(|| {
                bad("a user name needs its password in TPC_SMTP_PASSWORD or --smtp-password-file")
            })?;
            builder = builder.credentials(Credentials::new(user.clone(), password.0));
        }
        Ok(Mailer::Smtp {
            transport: builder.build(),
            described: format!(
                "SMTP {host}:{port}, {}{}",
                match mode {
                    SmtpTls::None => "plaintext",
                    SmtpTls::StartTls => "STARTTLS",
                    SmtpTls::Implicit => "TLS",
                },
                if user.is_empty() {
                    String::new()
                } else {
                    format!(", AUTH as {user}")
                }
            ),
        })
    }

    /// A plaintext SMTP server (`smtp://host:port`) reached through a test's network.
    pub fn dialed(url: &str, connector: Connector) -> Result<Self, MailerError> {
        let bad = |why: &str| MailerError::Url(format!("{}: {why}", redact_url(url)));
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if parsed.scheme() != "smtp" || parsed.query().is_some() || !parsed.username().is_empty() {
            return Err(bad("a test's network takes plain smtp://host:port only"));
        }
        let host = parsed.host_str().ok_or_else(|| bad("no host"))?;
        let server = format!("smtp://{host}:{}", parsed.port().unwrap_or(25))
            .parse()
            .map_err(|e: tonic::codegen::http::uri::InvalidUri| bad(&e.to_string()))?;
        Ok(Mailer::Dialed(DialedSmtp::new(connector, server)))
    }

    pub fn files(dir: PathBuf) -> Result<Self, MailerError> {
        std::fs::create_dir_all(&dir)?;
        Ok(Mailer::Files(dir))
    }

    pub fn describe(&self) -> String {
        match self {
            Mailer::Smtp { described, .. } => described.clone(),
            Mailer::Files(dir) => format!(".eml files in {}", dir.display()),
            Mailer::Dialed(relay) => relay.describe(),
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
            // 5xx: the server says no retry will succeed (no such mailbox, refused domain).
            Err(e) if e.is_permanent() => {
                Delivery::Undeliverable(format!("refused by the mail server: {e}"))
            }
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

/// Writes one e-mail as `dir/<txn>.eml`: written into a file with no name yet (`O_TMPFILE`), then
/// linked under its name, so a reader never sees it half written. Where the kernel, the file system,
/// a missing `/proc` or a sandbox cannot, and for one file whose unnamed write failed otherwise,
/// through a temporary name and a rename instead, which costs two more changes to a directory that
/// holds every e-mail.
fn write_file(dir: &Path, txn: TxnId, raw: &[u8]) -> std::io::Result<()> {
    let name = format!("{txn}.eml");
    if UNNAMED_FILES.load(Ordering::Relaxed) {
        match write_unnamed(dir, &name, raw) {
            Err(Unnamed::Unsupported(e)) => {
                tracing::info!(dir = %dir.display(), cause = %e, "e-mail files are written through a temporary name");
                UNNAMED_FILES.store(false, Ordering::Relaxed);
            }
            // Whatever else went wrong (a full disk, say), the other way tries again and says so.
            Err(Unnamed::Failed(e)) => {
                tracing::debug!(dir = %dir.display(), cause = %e, "an unnamed e-mail file failed; trying a temporary name")
            }
            Ok(()) => return Ok(()),
        }
    }
    write_renamed(dir, &name, raw)
}

fn write_renamed(dir: &Path, name: &str, raw: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(raw)?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name))
}

/// Whether this process still writes e-mail files with `O_TMPFILE` (until the system first says it
/// cannot; any other failure falls back for that one file only).
static UNNAMED_FILES: AtomicBool = AtomicBool::new(true);

enum Unnamed {
    /// This directory, kernel or system cannot: use a temporary name.
    Unsupported(std::io::Error),
    Failed(std::io::Error),
}

fn write_unnamed(dir: &Path, name: &str, raw: &[u8]) -> Result<(), Unnamed> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let unsupported = |e: std::io::Error| match e.raw_os_error() {
        // No O_TMPFILE here: an old kernel reads it as O_DIRECTORY (EISDIR), a file system without
        // it says EOPNOTSUPP.
        Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL) => Unnamed::Unsupported(e),
        _ => Unnamed::Failed(e),
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
        .map_err(unsupported)?;
    file.write_all(raw).map_err(Unnamed::Failed)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let from = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a path");
    let to = std::ffi::CString::new(dir.join(name).as_os_str().as_bytes())
        .map_err(|e| Unnamed::Failed(std::io::Error::other(e)))?;
    // SAFETY: both paths are NUL-terminated and live across the call; `file` keeps `fd` open.
    let linked = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if linked == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // Resent after a crash: the first copy is whole (it had its name only once written).
        Some(libc::EEXIST) => Ok(()),
        // No /proc to name the file by, or a sandbox that forbids linking through it.
        Some(libc::ENOENT) if !Path::new("/proc/self/fd").exists() => Err(Unnamed::Unsupported(e)),
        Some(libc::EPERM | libc::EACCES | libc::EXDEV) => Err(Unnamed::Unsupported(e)),
        _ => Err(Unnamed::Failed(e)),
    }
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
        .from(SENDER.clone())
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

    fn described(url: &str, access: &SmtpAccess) -> Result<String, String> {
        Mailer::smtp(url, access)
            .map(|m| m.describe())
            .map_err(|e| e.to_string())
    }

    /// (In a runtime: lettre's connection pool starts a task.)
    #[tokio::test]
    async fn smtp_urls_choose_tls_and_auth_and_never_take_a_password() {
        let none = SmtpAccess::default();
        let with_password = SmtpAccess {
            ca: None,
            password: Some(SmtpPassword("s3cret-relay-pw".into())),
        };
        let cases = [
            (
                "smtp://mail.local",
                &none,
                Ok("SMTP mail.local:25, plaintext"),
            ),
            (
                "smtp://mail.local:2525",
                &none,
                Ok("SMTP mail.local:2525, plaintext"),
            ),
            (
                "smtp://mail.local?tls=required",
                &none,
                Ok("SMTP mail.local:587, STARTTLS"),
            ),
            ("smtps://mail.local", &none, Ok("SMTP mail.local:465, TLS")),
            (
                "smtps://tpc%40example.com@mail.local:4650",
                &with_password,
                Ok("SMTP mail.local:4650, TLS, AUTH as tpc@example.com"),
            ),
            ("smtps://tpc@mail.local", &none, Err("TPC_SMTP_PASSWORD")),
            (
                "smtp://tpc@mail.local",
                &with_password,
                Err("AUTH sends the password"),
            ),
            (
                "smtps://tpc:hunter2@mail.local",
                &none,
                Err("a password in the URL is refused"),
            ),
            ("smtps://mail.local?tls=required", &none, Err("TLS already")),
            ("smtp://mail.local?tls=maybe", &none, Err("tls=required")),
            ("http://mail.local", &none, Err("expected smtp://")),
            ("smtp://", &none, Err("no host")),
        ];
        for (url, access, expected) in cases {
            let got = described(url, access);
            match expected {
                Ok(description) => assert_eq!(got.as_deref(), Ok(description), "{url}"),
                Err(part) => {
                    let message = got.expect_err(url);
                    assert!(message.contains(part), "{url}: {message}");
                    assert!(!message.contains("hunter2"), "{message}");
                }
            }
        }
        assert!(!format!("{with_password:?}").contains("s3cret"));
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
    fn files_are_named_by_transaction_and_a_resend_adds_no_second_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (good, bad) = (entry("bob@example.com"), entry("not an address"));
        let done = write_files(dir.path(), &[good.clone(), bad]);
        assert_eq!(done[0], Delivery::Sent);
        assert!(matches!(&done[1], Delivery::Undeliverable(why) if why.contains("recipient")));
        assert_eq!(
            write_files(dir.path(), std::slice::from_ref(&good)),
            [Delivery::Sent]
        );
        assert_eq!(
            names(dir.path()),
            [format!("{}.eml", good.txn)],
            "one file, no temporaries"
        );
        let raw = std::fs::read_to_string(dir.path().join(format!("{}.eml", good.txn))).unwrap();
        assert!(raw.contains("To: bob@example.com"), "{raw}");
    }

    /// Both ways of naming a file leave the same: one whole file under its name, nothing else, and a
    /// resend that adds no second file.
    #[test]
    fn unnamed_and_renamed_files_end_the_same() {
        'ways: for unnamed in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            for raw in [&b"first"[..], b"second"] {
                if unnamed {
                    match write_unnamed(dir.path(), "m.eml", raw) {
                        Ok(()) => {}
                        // Not on this file system: the other way is what runs here.
                        Err(Unnamed::Unsupported(_)) => continue 'ways,
                        Err(Unnamed::Failed(e)) => panic!("{e}"),
                    }
                } else {
                    write_renamed(dir.path(), "m.eml", raw).unwrap();
                }
            }
            assert_eq!(names(dir.path()), ["m.eml"], "unnamed: {unnamed}");
            let kept = std::fs::read(dir.path().join("m.eml")).unwrap();
            let expected: &[u8] = if unnamed { b"first" } else { b"second" };
            assert_eq!(kept, expected, "unnamed: {unnamed}");
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}
