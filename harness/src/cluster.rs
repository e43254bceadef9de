//! A tpc cluster of three OS processes: coordinator, password participant, history participant.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use std::collections::HashMap;

use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tpc_proto::v1::history_reader_client::HistoryReaderClient;
use tpc_proto::v1::participant_client::ParticipantClient;
use tpc_proto::v1::password_reader_client::PasswordReaderClient;
use tpc_proto::v1::password_service_client::PasswordServiceClient;
use tpc_proto::v1::transaction_manager_client::TransactionManagerClient;
use tpc_proto::v1::{
    ListTransactionsRequest, ParticipantStatus, StatusRequest, Transaction, transaction,
};

use tpc_common::Principal;
use tpc_common::tls::{Credentials, Internal};

use super::proxy::FaultProxy;

/// One of the three processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Coordinator,
    Password,
    History,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Coordinator, Service::Password, Service::History];

    pub fn name(self) -> &'static str {
        match self {
            Service::Coordinator => "coordinator",
            Service::Password => "password",
            Service::History => "history",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The identity its certificate names.
    pub fn principal(self) -> Principal {
        match self {
            Service::Coordinator => Principal::Coordinator,
            Service::Password => Principal::Password,
            Service::History => Principal::History,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// The `tpc` binary.
    pub exe: PathBuf,
    /// Where the data directories and logs go (created if missing).
    pub dir: PathBuf,
    /// `smtp://…`; without it the coordinator writes `.eml` files.
    pub smtp: Option<String>,
    /// `--smtp-ca` of the coordinator.
    pub smtp_ca: Option<PathBuf>,
    /// The SMTP AUTH password, passed to the coordinator in `TPC_SMTP_PASSWORD`.
    pub smtp_password: Option<String>,
    /// `RUST_LOG` for the processes (default `info`).
    pub rust_log: Option<String>,
    /// Hash at OWASP cost instead of the insecure fast one tests use.
    pub owasp_cost: bool,
    /// Print each process's protocol steps (log target `tpc::protocol`) to stdout as they happen,
    /// instead of logging to files: what `tpc demo` shows.
    pub narrate: bool,
    /// Connect the processes directly, without a fault proxy on each link: what a benchmark wants
    /// (the partition and latency controls then do nothing).
    pub direct_links: bool,
    /// `--history-keep` of the history participant (default: the participant's own).
    pub history_keep: Option<usize>,
    /// The coordinator's `--strategy` (default: two-phase commit).
    pub strategy: tpc_common::Strategy,
    /// Throttle password guesses as the product does by default. Off unless asked: every client of
    /// the harness calls from 127.0.0.1, and workloads that guess wrong on purpose (chaos) or at full
    /// speed (bench) would measure the throttle instead of the protocol.
    pub throttle_guesses: bool,
    /// Internal listeners in plaintext (`--insecure-internal`) instead of mutual TLS with fresh
    /// certificates, the default, as in production.
    pub insecure_internal: bool,
    /// The coordinator's decision log on etcd at these client URLs (`--log etcd`; a `tpc` built
    /// with `--features etcd`) instead of sled.
    pub etcd: Option<Vec<String>>,
}

/// The network links between the processes' internal listeners, each through a [`FaultProxy`] (TLS
/// passes through it untouched): the coordinator calls each participant, and each participant calls
/// the coordinator (`QueryDecision`).
pub const LINKS: [(Service, Service); 4] = [
    (Service::Coordinator, Service::Password),
    (Service::Coordinator, Service::History),
    (Service::Password, Service::Coordinator),
    (Service::History, Service::Coordinator),
];

/// Where `tpc coordinator` reads the SMTP AUTH password from.
const SMTP_PASSWORD_ENV: &str = "TPC_SMTP_PASSWORD";

pub struct Cluster {
    options: ClusterOptions,
    /// Public listeners.
    ports: [u16; 3],
    /// Internal listeners.
    internal_ports: [u16; 3],
    children: [Option<Child>; 3],
    links: HashMap<(Service, Service), FaultProxy>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Cluster {
    /// Starts all three processes and waits until each accepts connections.
    pub async fn start(options: ClusterOptions) -> Result<Self, BoxError> {
        std::fs::create_dir_all(options.dir.join("logs"))?;
        if !options.insecure_internal {
            tpc_common::certs::issue(&options.dir.join("certs"), &[])?;
        }
        let ports = [free_port()?, free_port()?, free_port()?];
        let internal_ports = [free_port()?, free_port()?, free_port()?];
        let mut links = HashMap::new();
        for (from, to) in LINKS.into_iter().filter(|_| !options.direct_links) {
            let target = ([127, 0, 0, 1], internal_ports[to.index()]).into();
            links.insert((from, to), FaultProxy::start(target).await?);
        }
        let mut cluster = Self {
            options,
            ports,
            internal_ports,
            children: [None, None, None],
            links,
        };
        for service in Service::ALL {
            cluster.start_service(service).await?;
        }
        Ok(cluster)
    }

    /// The public listener of `service`.
    pub fn url(&self, service: Service) -> String {
        format!("http://127.0.0.1:{}", self.ports[service.index()])
    }

    /// The internal listener of `service` (`https://` unless the cluster is insecure).
    pub fn internal_url(&self, service: Service) -> String {
        self.internal_url_at(([127, 0, 0, 1], self.internal_ports[service.index()]).into())
    }

    fn internal_url_at(&self, addr: std::net::SocketAddr) -> String {
        let scheme = if self.options.insecure_internal {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{addr}")
    }

    /// The cluster's certificate directory (absent when insecure).
    pub fn certs_dir(&self) -> PathBuf {
        self.options.dir.join("certs")
    }

    /// How a caller holding `principal`'s certificate reaches internal listeners.
    pub fn access_as(&self, principal: Principal) -> Result<Internal, BoxError> {
        Ok(if self.options.insecure_internal {
            Internal::Insecure
        } else {
            Internal::Mutual(Credentials::load(&self.certs_dir(), principal)?)
        })
    }

    /// A channel to `service`'s internal listener, presenting `principal`'s certificate.
    pub async fn internal_channel(
        &self,
        service: Service,
        principal: Principal,
    ) -> Result<Channel, BoxError> {
        Ok(self
            .access_as(principal)?
            .endpoint(&self.internal_url(service), service.principal())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect()
            .await?)
    }

    /// The proxy on the link from `from` to `to` (the direction of the calls). Panics on a cluster
    /// started with `direct_links`.
    pub fn link(&self, from: Service, to: Service) -> &FaultProxy {
        &self.links[&(from, to)]
    }

    /// The URL `from` uses to call `to`'s internal listener: through the link's proxy, if there is one.
    fn url_via_link(&self, from: Service, to: Service) -> String {
        match self.links.get(&(from, to)) {
            Some(proxy) => self.internal_url_at(proxy.addr()),
            None => self.internal_url(to),
        }
    }

    /// No byte passes between `a` and `b`, either way, until [`Cluster::heal`].
    pub fn partition(&self, a: Service, b: Service) {
        for (from, to) in [(a, b), (b, a)] {
            if let Some(link) = self.links.get(&(from, to)) {
                link.update(|f| {
                    f.hold_requests = true;
                    f.hold_replies = true;
                });
            }
        }
    }

    /// Bytes from `from` to `to` are held; the other direction flows.
    pub fn partition_one_way(&self, from: Service, to: Service) {
        if let Some(link) = self.links.get(&(from, to)) {
            link.update(|f| f.hold_requests = true);
        }
        if let Some(link) = self.links.get(&(to, from)) {
            link.update(|f| f.hold_replies = true);
        }
    }

    /// Every link back to normal.
    pub fn heal(&self) {
        for link in self.links.values() {
            link.heal();
        }
    }

    pub fn data_dir(&self, service: Service) -> PathBuf {
        self.options.dir.join(format!("{}-data", service.name()))
    }

    pub fn log_file(&self, service: Service) -> PathBuf {
        self.options
            .dir
            .join("logs")
            .join(format!("{}.log", service.name()))
    }

    pub fn dir(&self) -> &Path {
        &self.options.dir
    }

    /// Starts `service` (it must not be running) and waits until it accepts connections.
    pub async fn start_service(&mut self, service: Service) -> Result<(), BoxError> {
        self.spawn_service(service, None, &[]).await
    }

    /// Starts `service` with more command-line arguments (e.g. `--accept-data-loss`).
    pub async fn start_with_args(
        &mut self,
        service: Service,
        extra: &[&str],
    ) -> Result<(), BoxError> {
        self.spawn_service(service, None, extra).await
    }

    /// Starts `service` with fail points armed (`TPC_FAILPOINTS`, e.g. `coord.after_votes=crash`).
    pub async fn start_with_fail_points(
        &mut self,
        service: Service,
        fail_points: &str,
    ) -> Result<(), BoxError> {
        self.spawn_service(service, Some(fail_points), &[]).await
    }

    async fn spawn_service(
        &mut self,
        service: Service,
        fail_points: Option<&str>,
        extra: &[&str],
    ) -> Result<(), BoxError> {
        let listen = format!("127.0.0.1:{}", self.ports[service.index()]);
        let internal_listen = format!("127.0.0.1:{}", self.internal_ports[service.index()]);
        let data_dir = self.data_dir(service).display().to_string();
        let mut args: Vec<String> = match service {
            Service::Coordinator => vec![
                "coordinator".into(),
                "--password".into(),
                self.url_via_link(Service::Coordinator, Service::Password),
                "--history".into(),
                self.url_via_link(Service::Coordinator, Service::History),
            ],
            Service::Password | Service::History => vec![
                "participant".into(),
                service.name().into(),
                "--coordinator".into(),
                self.url_via_link(service, Service::Coordinator),
                "--argon2".into(),
                if self.options.owasp_cost {
                    "owasp"
                } else {
                    "fast"
                }
                .into(),
            ],
        };
        args.extend([
            "--listen".into(),
            listen,
            "--internal-listen".into(),
            internal_listen,
            "--data-dir".into(),
            data_dir,
        ]);
        if !self.options.insecure_internal {
            args.extend(["--certs".into(), self.certs_dir().display().to_string()]);
        }
        if let (Service::Coordinator, Some(smtp)) = (service, &self.options.smtp) {
            args.extend(["--smtp".into(), smtp.clone()]);
            if let Some(ca) = &self.options.smtp_ca {
                args.extend(["--smtp-ca".into(), ca.display().to_string()]);
            }
        }
        if service == Service::Coordinator {
            args.extend(["--strategy".into(), self.options.strategy.as_str().into()]);
            if let Some(endpoints) = &self.options.etcd {
                args.extend([
                    "--log".into(),
                    "etcd".into(),
                    "--etcd".into(),
                    endpoints.join(","),
                ]);
            }
        }
        if !self.options.throttle_guesses {
            args.extend([
                "--free-guesses".into(),
                u32::MAX.to_string(),
                "--checks-per-address".into(),
                "0".into(),
            ]);
        }
        if let (Service::History, Some(keep)) = (service, self.options.history_keep) {
            args.extend(["--history-keep".into(), keep.to_string()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut cmd = Command::new(&self.options.exe);
        cmd.args(&args)
            .env(
                "RUST_LOG",
                self.options.rust_log.as_deref().unwrap_or("info"),
            )
            .env_remove(tpc_common::fault::FAILPOINTS_ENV)
            .env_remove(SMTP_PASSWORD_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        if let Some(spec) = fail_points {
            cmd.env(tpc_common::fault::FAILPOINTS_ENV, spec);
        }
        if let (Service::Coordinator, Some(password)) = (service, &self.options.smtp_password) {
            cmd.env(SMTP_PASSWORD_ENV, password);
        }
        if self.options.narrate {
            cmd.env("RUST_LOG", "tpc::protocol=debug,error")
                .arg("--log-format")
                .arg("json")
                .stderr(Stdio::piped());
        } else {
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_file(service))?;
            cmd.stderr(Stdio::from(log));
        }
        let mut child = cmd.spawn()?;
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(narrate(service.name(), stderr));
        }
        self.children[service.index()] = Some(child);
        self.wait_ready(service).await
    }

    /// Waits until `service` accepts connections (10 s at most).
    pub async fn wait_ready(&mut self, service: Service) -> Result<(), BoxError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(child) = self.children[service.index()].as_mut()
                && let Some(status) = child.try_wait()?
            {
                return Err(format!("{} exited while starting: {status}", service.name()).into());
            }
            let up = |port: u16| tokio::net::TcpStream::connect(("127.0.0.1", port));
            if up(self.ports[service.index()]).await.is_ok()
                && up(self.internal_ports[service.index()]).await.is_ok()
            {
                // A coordinator on etcd listens as a standby first: ready once it leads.
                let leads = service != Service::Coordinator
                    || self.options.etcd.is_none()
                    || crate::ha::serving(self.ports[service.index()]).await;
                if leads {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("{} did not start listening", service.name()).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill -9`: the process dies at once, losing everything it had not forced to disk.
    pub async fn kill(&mut self, service: Service) -> Result<(), BoxError> {
        if let Some(mut child) = self.children[service.index()].take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// SIGTERM, then waits for the graceful exit.
    pub async fn stop(&mut self, service: Service) -> Result<(), BoxError> {
        if let Some(mut child) = self.children[service.index()].take() {
            if let Some(pid) = child.id() {
                // A paused process must run again to handle SIGTERM.
                signal(pid, libc::SIGCONT)?;
                signal(pid, libc::SIGTERM)?;
            }
            match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                Ok(status) => {
                    status?;
                }
                Err(_) => child.kill().await?,
            }
        }
        Ok(())
    }

    /// Waits for a process that is expected to die by itself (a crash point), returning its status.
    pub async fn wait_exit(
        &mut self,
        service: Service,
        within: Duration,
    ) -> Result<std::process::ExitStatus, BoxError> {
        let Some(mut child) = self.children[service.index()].take() else {
            return Err(format!("{} is not running", service.name()).into());
        };
        match tokio::time::timeout(within, child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.children[service.index()] = Some(child);
                Err(format!("{} did not exit", service.name()).into())
            }
        }
    }

    /// SIGSTOP: the process freezes (its sockets stay open, nothing answers) until [`Cluster::resume`].
    pub fn pause(&self, service: Service) -> Result<(), BoxError> {
        self.signal(service, libc::SIGSTOP)
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&self, service: Service) -> Result<(), BoxError> {
        self.signal(service, libc::SIGCONT)
    }

    fn signal(&self, service: Service, sig: libc::c_int) -> Result<(), BoxError> {
        let pid = self.children[service.index()]
            .as_ref()
            .and_then(Child::id)
            .ok_or_else(|| format!("{} is not running", service.name()))?;
        Ok(signal(pid, sig)?)
    }

    /// The process id of `service`, while it runs.
    pub fn pid(&self, service: Service) -> Option<u32> {
        self.children[service.index()].as_ref().and_then(Child::id)
    }

    pub fn is_running(&self, service: Service) -> bool {
        self.children[service.index()].is_some()
    }

    async fn channel(&self, service: Service) -> Result<Channel, BoxError> {
        Ok(Channel::from_shared(self.url(service))?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await?)
    }

    pub async fn client(&self) -> Result<PasswordServiceClient<Channel>, BoxError> {
        Ok(PasswordServiceClient::new(
            self.channel(Service::Coordinator).await?,
        ))
    }

    /// The coordinator's internal service, as an operator (admin certificate).
    pub async fn transactions(&self) -> Result<TransactionManagerClient<Channel>, BoxError> {
        Ok(TransactionManagerClient::new(
            self.internal_channel(Service::Coordinator, Principal::Admin)
                .await?,
        ))
    }

    pub async fn passwords(&self) -> Result<PasswordReaderClient<Channel>, BoxError> {
        Ok(PasswordReaderClient::new(
            self.channel(Service::Password).await?,
        ))
    }

    pub async fn histories(&self) -> Result<HistoryReaderClient<Channel>, BoxError> {
        Ok(HistoryReaderClient::new(
            self.channel(Service::History).await?,
        ))
    }

    /// A participant's in-doubt transactions and locked users.
    pub async fn participant_status(
        &self,
        service: Service,
    ) -> Result<ParticipantStatus, BoxError> {
        status_at(
            self.access_as(Principal::Admin)?,
            &self.internal_url(service),
            service.principal(),
        )
        .await
    }

    /// A client of `service`'s participant protocol (`Apply`, `Compensate`, `Prepare`…), for tests that
    /// play the coordinator (with its certificate).
    pub async fn participant(
        &self,
        service: Service,
    ) -> Result<ParticipantClient<Channel>, BoxError> {
        Ok(ParticipantClient::new(
            self.internal_channel(service, Principal::Coordinator)
                .await?,
        ))
    }

    /// Every transaction the coordinator knows, newest first, a page at a time (a 20 s run at ~3,000
    /// changes/s lists ~70,000 transactions, over gRPC's 4 MiB a message in one answer).
    pub async fn list_transactions(&self) -> Result<Vec<Transaction>, BoxError> {
        const PAGE: u32 = 5_000;
        let mut client = self.transactions().await?;
        let mut all: Vec<Transaction> = Vec::new();
        loop {
            let request = ListTransactionsRequest {
                state: 0,
                limit: PAGE,
                before: all.last().map(|t| t.txn_id.clone()).unwrap_or_default(),
            };
            let page = client.list_transactions(request).await?.into_inner();
            let last_page = page.transactions.len() < PAGE as usize;
            all.extend(page.transactions);
            if last_page {
                return Ok(all);
            }
        }
    }

    /// What is still in flight, if anything: a participant in doubt or holding a lock, a transaction
    /// active, committing or compensating.
    pub async fn in_flight(&self) -> Result<Option<String>, BoxError> {
        for service in [Service::Password, Service::History] {
            let status = self.participant_status(service).await?;
            if !status.in_doubt.is_empty() || status.locked_users > 0 {
                return Ok(Some(format!(
                    "{}: {} in doubt, {} users locked",
                    service.name(),
                    status.in_doubt.len(),
                    status.locked_users
                )));
            }
        }
        // Only the states still in flight, a few of each: after a long run the whole log is far
        // larger than a gRPC message may be.
        for state in [
            transaction::State::Active,
            transaction::State::Committing,
            transaction::State::Compensating,
        ] {
            let request = ListTransactionsRequest {
                state: state.into(),
                limit: 1,
                ..Default::default()
            };
            let listed = self
                .transactions()
                .await?
                .list_transactions(request)
                .await?
                .into_inner()
                .transactions;
            if let Some(t) = listed.first() {
                return Ok(Some(format!(
                    "coordinator: {} is {}",
                    t.txn_id,
                    t.state().as_str_name()
                )));
            }
        }
        Ok(None)
    }

    /// Waits until nothing is in flight; after `within`, says what still is.
    pub async fn quiesce(&self, within: Duration) -> Result<Duration, String> {
        let started = tokio::time::Instant::now();
        loop {
            let busy = match self.in_flight().await {
                Ok(busy) => busy,
                Err(e) => Some(format!("cannot observe the cluster: {e}")),
            };
            match busy {
                None => return Ok(started.elapsed()),
                Some(what) if started.elapsed() > within => return Err(what),
                Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Stops every process gracefully.
    pub async fn shutdown(&mut self) -> Result<(), BoxError> {
        for service in Service::ALL {
            self.stop(service).await?;
        }
        Ok(())
    }
}

/// A participant's status, asked at its internal listener `url` (it presents `principal`'s
/// certificate) as an operator (`access`).
pub(crate) async fn status_at(
    access: Internal,
    url: &str,
    principal: Principal,
) -> Result<ParticipantStatus, BoxError> {
    let channel = access
        .endpoint(url, principal)?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .connect()
        .await?;
    Ok(ParticipantClient::new(channel)
        .status(StatusRequest {})
        .await?
        .into_inner())
}

pub(crate) fn signal(pid: u32, sig: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child's.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Prints a process's protocol log lines (JSON, target `tpc::protocol`) as they arrive.
async fn narrate(name: &'static str, stderr: tokio::process::ChildStderr) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let label = format!("[{name}]");
    while let Ok(Some(line)) = lines.next_line().await {
        match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(v) if v["target"] == "tpc::protocol" => {
                println!(
                    "      {label:<14}{}",
                    v["message"].as_str().unwrap_or_default()
                );
            }
            Ok(_) => {}
            // Not a log line: a crash point's last words, or a panic.
            Err(_) => println!("      {label:<14}!! {line}"),
        }
    }
}

/// A free port for a service. Chosen below the kernel's ephemeral range (32768 and up on Linux), where
/// the proxies' and every client's ports come from, so none of those can take it between this choice
/// and the service binding it (a restarted service binds the same port again). Each process starts at
/// its own offset, so parallel test processes rarely meet.
pub(crate) fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (offset + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
