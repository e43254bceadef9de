//! A highly available tpc on loopback, as real processes: a 3-member etcd cluster, coordinators on it
//! (`--log etcd`, one leads, the others stand by), the two participants (given every coordinator's
//! URL), an SMTP server, mutual TLS between the services. What `tpc up --ha` starts and what the
//! failover tests kill.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};
use tpc_common::Principal;
use tpc_common::tls::{Credentials, Internal};
use tpc_proto::v1::ParticipantStatus;
use tpc_proto::v1::password_reader_client::PasswordReaderClient;
use tpc_proto::v1::password_service_client::PasswordServiceClient;

use crate::cluster::{free_port, signal};
use crate::etcd::EtcdCluster;
use crate::mail_server::MailServer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The metadata a standby names the leader in (`tpc_ha::LEADER_METADATA`).
pub const LEADER_METADATA: &str = "tpc-leader";

pub struct HaOptions {
    /// The `tpc` binary, built with `--features etcd`.
    pub exe: PathBuf,
    pub dir: PathBuf,
    pub coordinators: usize,
    /// The leader's lease TTL (`--lease-ttl`).
    pub lease_ttl: Duration,
    /// Hash at OWASP cost instead of the insecure fast one tests use.
    pub owasp_cost: bool,
}

struct Process {
    name: String,
    public: u16,
    internal: u16,
    child: Option<Child>,
}

pub struct HaCluster {
    options: HaOptions,
    pub etcd: EtcdCluster,
    pub mail: MailServer,
    coordinators: Vec<Process>,
    /// The password participant, then the history participant.
    participants: Vec<Process>,
}

impl HaCluster {
    /// Starts etcd, the mail server, the participants and the coordinators, and waits until one
    /// coordinator leads.
    pub async fn start(options: HaOptions) -> Result<Self, BoxError> {
        std::fs::create_dir_all(options.dir.join("logs"))?;
        tpc_common::certs::issue(&options.dir.join("certs"), &[])?;
        let etcd = EtcdCluster::start(&options.dir.join("etcd"), 3).await?;
        let mail = MailServer::start().await?;
        let process = |name: String| -> Result<Process, BoxError> {
            Ok(Process {
                name,
                public: free_port()?,
                internal: free_port()?,
                child: None,
            })
        };
        let coordinators = (0..options.coordinators)
            .map(|i| process(format!("coordinator{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let participants = vec![process("password".into())?, process("history".into())?];
        let mut cluster = Self {
            options,
            etcd,
            mail,
            coordinators,
            participants,
        };
        for i in 0..cluster.participants.len() {
            cluster.spawn_participant(i)?;
        }
        for i in 0..cluster.coordinators.len() {
            cluster.start_coordinator(i).await?;
        }
        for p in &cluster.participants {
            wait_listening(p).await?;
        }
        cluster.wait_for_leader(Duration::from_secs(15)).await?;
        Ok(cluster)
    }

    fn certs_dir(&self) -> PathBuf {
        self.options.dir.join("certs")
    }

    fn log(&self, name: &str) -> Result<std::fs::File, BoxError> {
        Ok(OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(name))?)
    }

    /// Where a process's log goes.
    pub fn log_file(&self, name: &str) -> PathBuf {
        self.options.dir.join("logs").join(format!("{name}.log"))
    }

    fn spawn_participant(&mut self, i: usize) -> Result<(), BoxError> {
        let coordinators = self
            .coordinators
            .iter()
            .map(|c| format!("https://127.0.0.1:{}", c.internal))
            .collect::<Vec<_>>()
            .join(",");
        let p = &self.participants[i];
        let mut cmd = Command::new(&self.options.exe);
        cmd.args([
            "participant",
            &p.name,
            "--coordinator",
            &coordinators,
            "--argon2",
            if self.options.owasp_cost {
                "owasp"
            } else {
                "fast"
            },
            "--listen",
            &format!("127.0.0.1:{}", p.public),
            "--internal-listen",
            &format!("127.0.0.1:{}", p.internal),
            "--data-dir",
            &self.options.dir.join(&p.name).display().to_string(),
            "--certs",
            &self.certs_dir().display().to_string(),
            "--free-guesses",
            &u32::MAX.to_string(),
            "--checks-per-address",
            "0",
        ]);
        let log = self.log(&self.participants[i].name)?;
        let child = configure(&mut cmd, log).spawn()?;
        self.participants[i].child = Some(child);
        Ok(())
    }

    /// Starts coordinator `i` (again) and waits until it listens (as leader or standby).
    pub async fn start_coordinator(&mut self, i: usize) -> Result<(), BoxError> {
        let c = &self.coordinators[i];
        let mut cmd = Command::new(&self.options.exe);
        cmd.args([
            "coordinator",
            "--password",
            &format!("https://127.0.0.1:{}", self.participants[0].internal),
            "--history",
            &format!("https://127.0.0.1:{}", self.participants[1].internal),
            "--listen",
            &format!("127.0.0.1:{}", c.public),
            "--internal-listen",
            &format!("127.0.0.1:{}", c.internal),
            "--data-dir",
            &self.options.dir.join(&c.name).display().to_string(),
            "--certs",
            &self.certs_dir().display().to_string(),
            "--smtp",
            &self.mail.url(),
            "--log",
            "etcd",
            "--etcd",
            &self.etcd.endpoints().join(","),
            "--lease-ttl",
            &format!("{}ms", self.options.lease_ttl.as_millis()),
            "--free-guesses",
            &u32::MAX.to_string(),
            "--checks-per-address",
            "0",
        ]);
        let log = self.log(&c.name)?;
        let child = configure(&mut cmd, log).spawn()?;
        self.coordinators[i].child = Some(child);
        wait_listening(&self.coordinators[i]).await
    }

    /// Every coordinator's public URL, in order.
    pub fn coordinator_urls(&self) -> Vec<String> {
        self.coordinators
            .iter()
            .map(|c| format!("http://127.0.0.1:{}", c.public))
            .collect()
    }

    /// The password participant's public URL (`PasswordReader`).
    pub fn password_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.participants[0].public)
    }

    /// The history participant's public URL (`HistoryReader`).
    pub fn history_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.participants[1].public)
    }

    /// Whether coordinator `i` runs (it stops by itself when it loses its leadership).
    pub fn coordinator_running(&mut self, i: usize) -> bool {
        match self.coordinators[i].child.as_mut() {
            Some(child) => {
                if matches!(child.try_wait(), Ok(None)) {
                    true
                } else {
                    self.coordinators[i].child = None;
                    false
                }
            }
            None => false,
        }
    }

    /// Coordinator `i`'s process id, for an operator's `kill -9`.
    pub fn coordinator_pid(&self, i: usize) -> Option<u32> {
        self.pid(i)
    }

    /// Which coordinator says it leads: the one whose `PasswordService` health is SERVING.
    pub async fn leader(&self) -> Option<usize> {
        for (i, c) in self.coordinators.iter().enumerate() {
            if c.child.is_some() && serving(c.public).await {
                return Some(i);
            }
        }
        None
    }

    /// Waits until some coordinator leads; returns which.
    pub async fn wait_for_leader(&self, within: Duration) -> Result<usize, BoxError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(i) = self.leader().await {
                return Ok(i);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("no coordinator leads after {within:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9` of coordinator `i`.
    pub async fn kill_coordinator(&mut self, i: usize) -> Result<(), BoxError> {
        if let Some(mut child) = self.coordinators[i].child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// SIGSTOP: coordinator `i` freezes, its connections and its etcd lease with it.
    pub fn pause_coordinator(&self, i: usize) -> Result<(), BoxError> {
        let pid = self.pid(i).ok_or("not running")?;
        Ok(signal(pid, libc::SIGSTOP)?)
    }

    /// SIGCONT.
    pub fn resume_coordinator(&self, i: usize) -> Result<(), BoxError> {
        let pid = self.pid(i).ok_or("not running")?;
        Ok(signal(pid, libc::SIGCONT)?)
    }

    fn pid(&self, i: usize) -> Option<u32> {
        self.coordinators[i].child.as_ref().and_then(Child::id)
    }

    /// Waits up to `within` for coordinator `i` to exit on its own; its exit status.
    pub async fn wait_coordinator_exit(
        &mut self,
        i: usize,
        within: Duration,
    ) -> Result<std::process::ExitStatus, BoxError> {
        let child = self.coordinators[i].child.as_mut().ok_or("not running")?;
        let status = tokio::time::timeout(within, child.wait())
            .await
            .map_err(|_| format!("coordinator{i} still runs after {within:?}"))??;
        self.coordinators[i].child = None;
        Ok(status)
    }

    /// A participant's in-doubt transactions and locked users (0: password, 1: history).
    pub async fn participant_status(&self, i: usize) -> Result<ParticipantStatus, BoxError> {
        let principal = if i == 0 {
            Principal::Password
        } else {
            Principal::History
        };
        crate::cluster::status_at(
            Internal::Mutual(Credentials::load(&self.certs_dir(), Principal::Admin)?),
            &format!("https://127.0.0.1:{}", self.participants[i].internal),
            principal,
        )
        .await
    }

    /// A reader of the password participant.
    pub async fn passwords(&self) -> Result<PasswordReaderClient<Channel>, BoxError> {
        Ok(PasswordReaderClient::new(
            Endpoint::from_shared(self.password_url())?
                .connect()
                .await?,
        ))
    }

    /// The directory everything is under.
    pub fn dir(&self) -> &Path {
        &self.options.dir
    }
}

fn configure(cmd: &mut Command, log: std::fs::File) -> &mut Command {
    cmd.env("RUST_LOG", "info")
        .env_remove(tpc_common::fault::FAILPOINTS_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
}

async fn wait_listening(p: &Process) -> Result<(), BoxError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let up = |port: u16| tokio::net::TcpStream::connect(("127.0.0.1", port));
        if up(p.public).await.is_ok() && up(p.internal).await.is_ok() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("{} did not start listening", p.name).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether the coordinator on `port` reports `PasswordService` SERVING (a standby reports NOT_SERVING).
pub(crate) async fn serving(port: u16) -> bool {
    let check = async {
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
            .connect_timeout(Duration::from_millis(300))
            .timeout(Duration::from_millis(500))
            .connect()
            .await?;
        let answer = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: "tpc.v1.PasswordService".into(),
            })
            .await?;
        Ok::<_, BoxError>(
            answer.into_inner().status()
                == tonic_health::pb::health_check_response::ServingStatus::Serving,
        )
    };
    check.await.unwrap_or(false)
}

/// A client of the coordinators that follows the leader: a standby's `UNAVAILABLE` names it in
/// [`LEADER_METADATA`]; with no name (nobody leads yet, or the leader died), it tries the next.
pub struct Follower {
    urls: Vec<String>,
    current: usize,
    clients: Vec<Option<PasswordServiceClient<Channel>>>,
}

impl Follower {
    pub fn new(urls: Vec<String>) -> Self {
        let clients = urls.iter().map(|_| None).collect();
        Self {
            urls,
            current: 0,
            clients,
        }
    }

    fn client(&mut self) -> Result<PasswordServiceClient<Channel>, BoxError> {
        let i = self.current;
        if self.clients[i].is_none() {
            let channel = Endpoint::from_shared(self.urls[i].clone())?
                .connect_timeout(Duration::from_millis(500))
                .timeout(Duration::from_secs(5))
                .connect_lazy();
            self.clients[i] = Some(PasswordServiceClient::new(channel));
        }
        Ok(self.clients[i].clone().expect("just made"))
    }

    /// Calls `call` on the leader, following a standby's pointer or trying the next coordinator on
    /// `UNAVAILABLE` or a dead connection, until `within` has passed. Safe to repeat only for calls
    /// that carry a request id.
    pub async fn call<T, F, Fut>(&mut self, within: Duration, call: F) -> Result<T, tonic::Status>
    where
        F: Fn(PasswordServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + within;
        // What a coordinator last said, over a connection that failed: the more telling answer.
        let mut said: Option<tonic::Status> = None;
        loop {
            let client = self
                .client()
                .map_err(|e| tonic::Status::internal(e.to_string()))?;
            let status = match call(client).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => status,
            };
            // A status a server sent carries its response's headers; one made up for a failed
            // connection (refused, reset by a killed leader mid-call) carries none, and is worth
            // another coordinator whatever its code.
            let answered = !status.metadata().is_empty();
            let retry = !answered
                || matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                );
            if !retry || tokio::time::Instant::now() > deadline {
                return Err(if answered {
                    status
                } else {
                    said.unwrap_or(status)
                });
            }
            if answered {
                said = Some(status.clone());
            }
            let named = status
                .metadata()
                .get(LEADER_METADATA)
                .and_then(|v| v.to_str().ok())
                .and_then(|url| self.urls.iter().position(|u| u == url));
            match named {
                Some(leader) => self.current = leader,
                None => {
                    self.current = (self.current + 1) % self.urls.len();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}
