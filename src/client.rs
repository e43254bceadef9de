//! The client commands: talk to a running tpc over gRPC, print for people (default) or `--json`.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tpc_common::Principal;
use tpc_common::tls::{self, Credentials, Internal};
use tpc_proto::v1::history_reader_client::HistoryReaderClient;
use tpc_proto::v1::password_reader_client::PasswordReaderClient;
use tpc_proto::v1::password_service_client::PasswordServiceClient;
use tpc_proto::v1::transaction_manager_client::TransactionManagerClient;
use tpc_proto::v1::{
    GetHistoryRequest, GetTransactionRequest, GetUserRequest, ListTransactionsRequest,
    RegisterUserRequest, Transaction, TransactionResult, UpdatePasswordRequest,
    VerifyPasswordRequest, transaction, transaction_result,
};

use crate::Result;

/// Where a standby coordinator names the leader (high availability, docs/high-availability.md).
const LEADER_METADATA: &str = "tpc-leader";

#[derive(Args, Clone)]
pub struct Conn {
    /// The coordinator's public listener (`https://…` for TLS).
    #[arg(long, default_value = "http://127.0.0.1:50051", global = true)]
    coordinator: String,
    /// CA certificate (PEM) that `https://` servers are verified against (default: the public web's
    /// roots).
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for a server's answer (and for a connection) before giving up.
    #[arg(long, default_value_t = 10, global = true)]
    timeout: u64,
}

impl Conn {
    async fn channel(&self, url: &str) -> Result<Channel> {
        let mut endpoint =
            Endpoint::from_shared(url.to_owned()).map_err(|e| format!("{url}: {e}"))?;
        if url.starts_with("https://") {
            endpoint = endpoint.tls_config(tls::public_client(self.ca.as_deref())?)?;
        }
        connect(endpoint, url, self.timeout()).await
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout.max(1))
    }

    /// Sends a change and prints its outcome. A call that was sent but got no answer may have committed:
    /// the user is told so, with the request id that tells them which (exit status 3). A standby
    /// coordinator (high availability) answers `UNAVAILABLE` naming the leader: the change goes there
    /// instead, with the same request id.
    async fn change<F, Fut>(&self, request_id: String, send: F) -> Result
    where
        F: Fn(PasswordServiceClient<Channel>, String) -> Fut,
        Fut: std::future::Future<
                Output = std::result::Result<tonic::Response<TransactionResult>, tonic::Status>,
            >,
    {
        let client = PasswordServiceClient::new(self.channel(&self.coordinator).await?);
        // Made here when not given, so that it can be named if the answer never comes.
        let request_id = if request_id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            request_id
        };
        let mut answer = send(client, request_id.clone()).await;
        if let Err(e) = &answer
            && e.code() == tonic::Code::Unavailable
            && let Some(leader) = e.metadata().get(LEADER_METADATA)
            && let Ok(leader) = leader.to_str()
        {
            eprintln!(
                "tpc: {} is a standby; sending to the leader, {leader}",
                self.coordinator
            );
            let client = PasswordServiceClient::new(self.channel(leader).await?);
            answer = send(client, request_id.clone()).await;
        }
        match answer {
            Ok(result) => Ok(print_result(&result.into_inner(), self.json)),
            Err(e) if outcome_unknown(&e) => {
                eprintln!(
                    "tpc: no answer from {} within {} s ({}): the outcome is unknown.\n     \
                     Request id {request_id}: run the same command again with --request-id {request_id} \
                     (it returns the first outcome, or makes the change if it never happened).",
                    self.coordinator,
                    self.timeout().as_secs(),
                    e.message()
                );
                Ok(ExitCode::from(OUTCOME_UNKNOWN))
            }
            Err(e) => Err(status(e)),
        }
    }

    /// A participant's URL: given explicitly, or the coordinator's port + `offset` (the `tpc up` layout).
    fn sibling(&self, explicit: &Option<String>, offset: u16) -> Result<String> {
        if let Some(url) = explicit {
            return Ok(url.clone());
        }
        let (base, port) = self
            .coordinator
            .trim_end_matches('/')
            .rsplit_once(':')
            .ok_or("coordinator URL has no port")?;
        let port: u16 = port.parse().map_err(|_| "coordinator URL has a bad port")?;
        Ok(format!("{base}:{}", port + offset))
    }
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Register a user (one transaction: password + history + "account created" e-mail).
    Add {
        user: String,
        #[arg(long)]
        email: String,
        /// Read the password from the first line of stdin instead of prompting.
        #[arg(long)]
        password_stdin: bool,
        /// Idempotency key; retrying with the same key returns the first outcome.
        #[arg(long, default_value = "")]
        request_id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a user's e-mail and current password version.
    Show {
        user: String,
        /// The password participant (default: coordinator port + 1).
        #[arg(long)]
        password_service: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Args)]
pub struct PasswdArgs {
    user: String,
    /// Read the current password (line 1) and the new one (line 2) from stdin.
    #[arg(long)]
    password_stdin: bool,
    #[arg(long, default_value = "")]
    request_id: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
pub struct VerifyArgs {
    user: String,
    #[arg(long)]
    password_stdin: bool,
    /// The password participant (default: coordinator port + 1).
    #[arg(long)]
    password_service: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
pub struct HistoryArgs {
    user: String,
    /// The history participant (default: coordinator port + 2).
    #[arg(long)]
    history_service: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand)]
pub enum TxnCommand {
    /// List transactions, newest first.
    List {
        /// active, committing, committed or aborted.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only transactions older than this one: the last id of the page before, to page on.
        #[arg(long)]
        before: Option<String>,
        #[command(flatten)]
        admin: AdminConn,
    },
    /// Show one transaction.
    Show {
        txn: String,
        #[command(flatten)]
        admin: AdminConn,
    },
}

/// The exit status of a change whose outcome is unknown (sent, never answered).
const OUTCOME_UNKNOWN: u8 = 3;

/// Whether a failed call may still have reached the coordinator and run: it was sent on a connection
/// that then broke, or its answer did not come in time. (A refusal has a code of its own.)
fn outcome_unknown(e: &tonic::Status) -> bool {
    // A refusal that says when to retry (overload, an unreachable participant) started nothing.
    e.metadata().get("grpc-retry-pushback-ms").is_none()
        && matches!(
            e.code(),
            tonic::Code::Cancelled
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unavailable
                | tonic::Code::Unknown
                | tonic::Code::Internal
        )
}

async fn connect(endpoint: Endpoint, url: &str, timeout: Duration) -> Result<Channel> {
    endpoint
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}").into())
}

/// The coordinator's internal listener, where the admin calls are, with an operator's certificate.
#[derive(Args, Clone)]
pub struct AdminConn {
    /// The coordinator's internal listener (`tpc up`: PORT+3).
    #[arg(long, default_value = "https://127.0.0.1:50054")]
    internal: String,
    /// The cluster's certificate directory, for its CA and `admin.pem`/`admin.key` (`tpc up` writes
    /// one in DATA_DIR/certs).
    #[arg(long, default_value = "./tpc-data/certs")]
    certs: PathBuf,
    #[command(flatten)]
    conn: Conn,
}

impl AdminConn {
    async fn transactions(&self) -> Result<TransactionManagerClient<Channel>> {
        let access = if self.internal.starts_with("https://") {
            Internal::Mutual(Credentials::load(&self.certs, Principal::Admin)?)
        } else {
            Internal::Insecure
        };
        let endpoint = access.endpoint(&self.internal, Principal::Coordinator)?;
        Ok(TransactionManagerClient::new(
            connect(endpoint, &self.internal, self.conn.timeout()).await?,
        ))
    }
}

/// Reads secrets: prompted without echo on a terminal, else one per line from stdin.
struct Secrets {
    from_stdin: bool,
    lines: std::io::Lines<std::io::StdinLock<'static>>,
}

impl Secrets {
    fn new(from_stdin: bool) -> Self {
        Self {
            from_stdin: from_stdin || !std::io::stdin().is_terminal(),
            lines: std::io::stdin().lock().lines(),
        }
    }

    fn read(&mut self, prompt: &str) -> Result<String> {
        if self.from_stdin {
            return Ok(self
                .lines
                .next()
                .ok_or("stdin ended before a password was read")??);
        }
        Ok(rpassword::prompt_password(prompt)?)
    }
}

fn status(e: tonic::Status) -> Box<dyn std::error::Error + Send + Sync> {
    format!("{:?}: {}", e.code(), e.message()).into()
}

fn print_result(result: &TransactionResult, json: bool) -> ExitCode {
    let committed = result.outcome() == transaction_result::Outcome::Committed;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "txn_id": result.txn_id,
                "outcome": if committed { "COMMITTED" } else { "ABORTED" },
                "reason": result.reason,
                "request_id": result.request_id,
            })
        );
    } else if committed {
        println!("COMMITTED  txn {}", result.txn_id);
    } else {
        println!("ABORTED    txn {}: {}", result.txn_id, result.reason);
    }
    if committed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

pub async fn user(cmd: UserCommand) -> Result {
    match cmd {
        UserCommand::Add {
            user,
            email,
            password_stdin,
            request_id,
            conn,
        } => {
            let mut secrets = Secrets::new(password_stdin);
            let password = secrets.read("Password: ")?;
            conn.change(request_id, |mut client, request_id| {
                let request = RegisterUserRequest {
                    user_id: user.clone(),
                    email: email.clone(),
                    password: password.clone(),
                    request_id,
                };
                async move { client.register_user(request).await }
            })
            .await
        }
        UserCommand::Show {
            user,
            password_service,
            conn,
        } => {
            let url = conn.sibling(&password_service, 1)?;
            let mut client = PasswordReaderClient::new(conn.channel(&url).await?);
            let u = client
                .get_user(GetUserRequest { user_id: user })
                .await
                .map_err(status)?
                .into_inner();
            if conn.json {
                println!(
                    "{}",
                    serde_json::json!({"user_id": u.user_id, "email": u.email, "version": u.version})
                );
            } else {
                println!(
                    "user     {}\nemail    {}\nversion  {}",
                    u.user_id, u.email, u.version
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub async fn passwd(args: PasswdArgs) -> Result {
    let mut secrets = Secrets::new(args.password_stdin);
    let current_password = secrets.read("Current password: ")?;
    let new_password = secrets.read("New password: ")?;
    let user = args.user;
    args.conn
        .change(args.request_id, |mut client, request_id| {
            let request = UpdatePasswordRequest {
                user_id: user.clone(),
                current_password: current_password.clone(),
                new_password: new_password.clone(),
                request_id,
            };
            async move { client.update_password(request).await }
        })
        .await
}

pub async fn verify(args: VerifyArgs) -> Result {
    let password = Secrets::new(args.password_stdin).read("Password: ")?;
    let url = args.conn.sibling(&args.password_service, 1)?;
    let mut client = PasswordReaderClient::new(args.conn.channel(&url).await?);
    let valid = client
        .verify_password(VerifyPasswordRequest {
            user_id: args.user,
            password,
        })
        .await
        .map_err(status)?
        .into_inner()
        .valid;
    if args.conn.json {
        println!("{}", serde_json::json!({ "valid": valid }));
    } else {
        println!("{}", if valid { "valid" } else { "INVALID" });
    }
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub async fn history(args: HistoryArgs) -> Result {
    let url = args.conn.sibling(&args.history_service, 2)?;
    let mut client = HistoryReaderClient::new(args.conn.channel(&url).await?);
    let history = client
        .get_history(GetHistoryRequest { user_id: args.user })
        .await
        .map_err(status)?
        .into_inner();
    let rows: Vec<(String, String)> = history
        .entries
        .iter()
        .map(|e| (time(e.changed_at.as_ref()), e.txn_id.clone()))
        .collect();
    if args.conn.json {
        let entries: Vec<_> = rows
            .iter()
            .map(|(at, txn)| serde_json::json!({"changed_at": at, "txn_id": txn}))
            .collect();
        println!("{}", serde_json::Value::Array(entries));
    } else {
        for (at, txn) in rows {
            println!("{at}  {txn}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn txn(cmd: TxnCommand) -> Result {
    match cmd {
        TxnCommand::List {
            state,
            limit,
            before,
            admin,
        } => {
            let conn = &admin.conn;
            let state = match state.as_deref() {
                None => transaction::State::Unspecified,
                Some(s) => transaction::State::from_str_name(&s.to_uppercase())
                    .ok_or("state must be active, committing, committed or aborted")?,
            };
            let list = admin
                .transactions()
                .await?
                .list_transactions(ListTransactionsRequest {
                    state: state.into(),
                    limit,
                    before: before.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            if conn.json {
                let all: Vec<_> = list.transactions.iter().map(txn_json).collect();
                println!("{}", serde_json::Value::Array(all));
            } else {
                println!(
                    "{:<36}  {:<10}  {:<8}  {:<12}  {:<5}  reason",
                    "txn", "state", "kind", "user", "mail"
                );
                for t in &list.transactions {
                    println!(
                        "{:<36}  {:<10}  {:<8}  {:<12}  {:<5}  {}",
                        t.txn_id,
                        t.state().as_str_name(),
                        t.kind,
                        t.user_id,
                        if t.email_sent { "sent" } else { "-" },
                        t.reason
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TxnCommand::Show { txn, admin } => {
            let conn = &admin.conn;
            let t = admin
                .transactions()
                .await?
                .get_transaction(GetTransactionRequest { txn_id: txn })
                .await
                .map_err(status)?
                .into_inner();
            if conn.json {
                println!("{}", txn_json(&t));
            } else {
                println!("txn         {}", t.txn_id);
                println!("state       {}", t.state().as_str_name());
                println!("kind        {}", t.kind);
                println!("user        {}", t.user_id);
                println!("request id  {}", t.request_id);
                println!("started     {}", time(t.started_at.as_ref()));
                println!("decided     {}", time(t.decided_at.as_ref()));
                println!("acked by    {}", t.acked_by.join(", "));
                println!(
                    "e-mail      {}",
                    match (t.email_sent, t.email_error.is_empty()) {
                        (true, _) => "sent".to_owned(),
                        (false, true) => "not sent".to_owned(),
                        (false, false) => format!("never sent: {}", t.email_error),
                    }
                );
                if !t.reason.is_empty() {
                    println!("reason      {}", t.reason);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn txn_json(t: &Transaction) -> serde_json::Value {
    serde_json::json!({
        "txn_id": t.txn_id,
        "state": t.state().as_str_name(),
        "kind": t.kind,
        "user_id": t.user_id,
        "request_id": t.request_id,
        "reason": t.reason,
        "started_at": time(t.started_at.as_ref()),
        "decided_at": time(t.decided_at.as_ref()),
        "acked_by": t.acked_by,
        "email_sent": t.email_sent,
        "email_error": t.email_error,
    })
}

fn time(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(String::new, |t| {
        tpc_coordinator::email::rfc3339(t.seconds as u64 * 1000 + t.nanos as u64 / 1_000_000)
    })
}
