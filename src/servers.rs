//! `tpc up`, `tpc coordinator`, `tpc participant` and `tpc certs`: thin wrappers that bind sockets and
//! run the services until Ctrl-C or SIGTERM.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tpc_common::serve::Listeners;
use tpc_common::tls::Internal;
use tpc_common::{Principal, Strategy};
use tpc_coordinator::server as coord;
use tpc_participants::hashing::Cost;
use tpc_participants::server::{self as part, Role};

use tpc_coordinator::mailer::{SmtpAccess, SmtpPassword};

use crate::{Argon2Arg, HistoryLimits, Result, RoleArg, Security, Smtp, StrategyArg, Tuning};

fn cost(arg: Argon2Arg) -> Cost {
    match arg {
        Argon2Arg::Owasp => Cost::Owasp,
        Argon2Arg::Fast => {
            tracing::warn!("argon2 cost 'fast' is INSECURE: use it only for tests and benchmarks");
            Cost::InsecureFast
        }
    }
}

/// What every server does first: arm the fail points named in `TPC_FAILPOINTS`, if any, and allow as
/// many open files (connections) as the system lets it.
fn fail_points() -> Result<()> {
    tpc_common::serve::raise_open_files_limit();
    tpc_common::fault::setup_from_env().map_err(|e| e.into())
}

async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}").into())
}

/// Binds both listeners and chooses the internal one's protection: a server whose internal listener
/// is reachable from other hosts without TLS refuses to start (unless told it is on purpose).
async fn listeners(
    public: &str,
    internal: &str,
    security: &Security,
    me: Principal,
) -> Result<(Listeners, Internal)> {
    let internal = bind(internal).await?;
    let access = Internal::choose(
        security.certs.as_deref(),
        me,
        security.insecure_internal,
        internal.local_addr()?,
    )?;
    if let Internal::Insecure = access {
        tracing::warn!(
            addr = ?internal.local_addr().ok(),
            "the internal listener has no TLS: every caller that reaches it is trusted"
        );
    }
    let public = bind(public).await?;
    Ok((
        Listeners {
            public: public.into(),
            internal: internal.into(),
            ready: None,
        },
        access,
    ))
}

#[derive(clap::Args)]
pub struct CoordinatorArgs {
    /// Address of the public listener (PasswordService), e.g. 0.0.0.0:50051.
    #[arg(long)]
    listen: String,
    /// Address of the internal listener (decisions for the participants, admin calls).
    #[arg(long)]
    internal_listen: String,
    #[arg(long)]
    data_dir: PathBuf,
    /// URL of the password participant's internal listener.
    #[arg(long)]
    password: String,
    /// URL of the history participant's internal listener.
    #[arg(long)]
    history: String,
    #[command(flatten)]
    security: Security,
    #[command(flatten)]
    smtp: Smtp,
    /// How changes are made atomic; a data directory keeps the strategy it was first run with.
    #[arg(long, value_enum, default_value = "2pc")]
    strategy: StrategyArg,
    /// How long finished transactions stay in the log (at least 1m): `tpc txn` lists them, and a
    /// retried `request_id` gets its first outcome. The log's memory grows with the records it keeps.
    #[arg(long, default_value = "24h", value_parser = crate::parse_retention)]
    retention: std::time::Duration,
    #[command(flatten)]
    tuning: Tuning,
    #[command(flatten)]
    ha: HaArgs,
}

/// Where the decision log lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogArg {
    /// sled under --data-dir: one coordinator, nothing to install.
    Sled,
    /// etcd (--etcd): several coordinators, one leader, standbys that take over (needs a build with
    /// `--features etcd`).
    Etcd,
}

#[derive(clap::Args)]
pub struct HaArgs {
    /// Where the decision log lives.
    #[arg(long, value_enum, default_value = "sled")]
    log: LogArg,
    /// etcd's client URLs, comma-separated (with --log etcd).
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Every etcd key of this coordinator group starts with it.
    #[arg(long, default_value = "/tpc/")]
    etcd_prefix: String,
    /// How long the leader's etcd lease lasts without a keep-alive: a standby takes over from a dead
    /// leader after about this long.
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    lease_ttl: std::time::Duration,
    /// This coordinator's public URL as the others name it to clients (default: from --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// This coordinator's internal URL as the others name it (default: from --internal-listen).
    #[arg(long)]
    advertise_internal: Option<String>,
}

/// The relay's CA and AUTH password: from a file, or from `TPC_SMTP_PASSWORD`.
fn smtp_access(smtp: &Smtp) -> Result<SmtpAccess> {
    let password = match &smtp.smtp_password_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        ),
        None => std::env::var(SMTP_PASSWORD_ENV).ok(),
    };
    Ok(SmtpAccess {
        ca: smtp.smtp_ca.clone(),
        password: password.filter(|p| !p.is_empty()).map(SmtpPassword),
    })
}

/// Where the SMTP AUTH password comes from when no file is given.
pub const SMTP_PASSWORD_ENV: &str = "TPC_SMTP_PASSWORD";

pub async fn coordinator(args: CoordinatorArgs) -> Result {
    fail_points()?;
    let (listeners, internal) = listeners(
        &args.listen,
        &args.internal_listen,
        &args.security,
        Principal::Coordinator,
    )
    .await?;
    let mut config = coord::Config::new(args.data_dir, args.password, args.history);
    config.smtp_access = smtp_access(&args.smtp)?;
    config.smtp = args.smtp.smtp;
    config.strategy = args.strategy.into();
    config.retention = args.retention;
    config.cache_mib = args.tuning.cache_mib;
    config.guard = args.tuning.guard();
    config.internal = internal;
    config.public_tls = args.security.public_tls();
    match args.ha.log {
        LogArg::Sled => {
            coord::run(config, listeners, tpc_common::shutdown::signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        LogArg::Etcd => coordinate_on_etcd(config, args.ha, listeners).await,
    }
}

#[cfg(feature = "etcd")]
async fn coordinate_on_etcd(config: coord::Config, ha: HaArgs, listeners: Listeners) -> Result {
    if ha.etcd.is_empty() {
        return Err("--log etcd needs --etcd URL[,URL…]".into());
    }
    let url = |scheme: &str, addr: std::io::Result<std::net::SocketAddr>| -> Result<String> {
        Ok(format!("{scheme}://{}", addr?))
    };
    let me = tpc_ha::Addresses {
        public: match ha.advertise {
            Some(url) => url,
            None => url(
                if config.public_tls.is_some() {
                    "https"
                } else {
                    "http"
                },
                listeners.public.local_addr(),
            )?,
        },
        internal: match ha.advertise_internal {
            Some(url) => url,
            None => url(
                if matches!(config.internal, Internal::Mutual(_)) {
                    "https"
                } else {
                    "http"
                },
                listeners.internal.local_addr(),
            )?,
        },
    };
    let ha = tpc_ha::HaConfig {
        endpoints: ha.etcd,
        prefix: ha.etcd_prefix,
        me,
        lease_ttl: ha.lease_ttl,
    };
    tpc_ha::run(config, ha, listeners, tpc_common::shutdown::signal()).await?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "etcd"))]
async fn coordinate_on_etcd(_: coord::Config, _: HaArgs, _: Listeners) -> Result {
    Err("this tpc was built without etcd: build it with `cargo build --release --features etcd` (needs protoc: Debian's protobuf-compiler)".into())
}

#[derive(clap::Args)]
pub struct ParticipantArgs {
    #[arg(value_enum)]
    role: RoleArg,
    /// Address of the public listener (PasswordReader or HistoryReader).
    #[arg(long)]
    listen: String,
    /// Address of the internal listener (the protocol: Prepare, Commit, Abort…).
    #[arg(long)]
    internal_listen: String,
    #[arg(long)]
    data_dir: PathBuf,
    /// URL of the coordinator's internal listener, asked about in-doubt transactions.
    #[arg(long)]
    coordinator: String,
    #[command(flatten)]
    security: Security,
    /// This participant's store lost changes it had acknowledged (deleted, damaged, restored from
    /// an old backup) and an operator accepts that: the coordinator, which refuses such a store,
    /// starts again from it. Use it once, after repairing what can be repaired.
    #[arg(long)]
    accept_data_loss: bool,
    #[arg(long, value_enum, default_value = "owasp")]
    argon2: Argon2Arg,
    #[command(flatten)]
    history: HistoryLimits,
    #[command(flatten)]
    tuning: Tuning,
}

pub async fn participant(args: ParticipantArgs) -> Result {
    fail_points()?;
    let (role, me) = match args.role {
        RoleArg::Password => (Role::Password, Principal::Password),
        RoleArg::History => (Role::History, Principal::History),
    };
    let (listeners, internal) =
        listeners(&args.listen, &args.internal_listen, &args.security, me).await?;
    let mut config = part::Config::new(role, args.data_dir, args.coordinator);
    config.cost = cost(args.argon2);
    config.history_depth = args.history.history_depth.max(1);
    config.history_keep = args.history.history_keep.max(config.history_depth);
    config.cache_mib = args.tuning.cache_mib;
    config.guard = args.tuning.guard();
    config.internal = internal;
    config.public_tls = args.security.public_tls();
    config.accept_data_loss = args.accept_data_loss;
    part::run(config, listeners, tpc_common::shutdown::signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `tpc certs`.
pub fn certs(out: &Path, public_names: &[String]) -> Result {
    tpc_common::certs::issue(out, public_names)?;
    println!(
        "certificates in {}: ca.pem, and NAME.pem + NAME.key for coordinator, password, history, admin and public",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub struct Up {
    pub data_dir: PathBuf,
    pub port: u16,
    pub security: Security,
    pub smtp: Smtp,
    pub argon2: Argon2Arg,
    pub strategy: Strategy,
    pub tuning: Tuning,
}

/// All three services in one process: public listeners on PORT, PORT+1 and PORT+2 of 127.0.0.1,
/// internal ones on PORT+3, PORT+4 and PORT+5, with mutual TLS from fresh certificates by default.
pub async fn up(args: Up) -> Result {
    fail_points()?;
    let Up {
        data_dir,
        port,
        mut security,
        smtp,
        argon2,
        strategy,
        tuning,
    } = args;
    let addr = |offset: u16| format!("127.0.0.1:{}", port + offset);
    if security.certs.is_none() && !security.insecure_internal {
        // Fresh every start: nothing to set up, and a directory left behind is no use to anyone later.
        let dir = data_dir.join("certs");
        tpc_common::certs::issue(&dir, &[])?;
        security.certs = Some(dir);
    }
    let scheme = if security.certs.is_some() {
        "https"
    } else {
        "http"
    };
    let public_scheme = if security.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let url = |offset: u16| format!("{public_scheme}://{}", addr(offset));
    let internal_url = |offset: u16| format!("{scheme}://{}", addr(offset + 3));
    let (mut coord_l, coord_access) =
        listeners(&addr(0), &addr(3), &security, Principal::Coordinator).await?;
    let (mut pass_l, pass_access) =
        listeners(&addr(1), &addr(4), &security, Principal::Password).await?;
    let (mut hist_l, hist_access) =
        listeners(&addr(2), &addr(5), &security, Principal::History).await?;
    let mut ready = Vec::new();
    for l in [&mut coord_l, &mut pass_l, &mut hist_l] {
        let (tell, told) = tokio::sync::oneshot::channel();
        l.ready = Some(tell);
        ready.push(told);
    }

    let (stop, stopped) = watch::channel(false);
    let until_stopped = || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut coord_config = coord::Config::new(data_dir.clone(), internal_url(1), internal_url(2));
    coord_config.smtp_access = smtp_access(&smtp)?;
    coord_config.smtp = smtp.smtp.clone();
    coord_config.strategy = strategy;
    coord_config.cache_mib = tuning.cache_mib;
    coord_config.guard = tuning.guard();
    coord_config.internal = coord_access;
    coord_config.public_tls = security.public_tls();
    let participant = |role, access| {
        let mut config = part::Config::new(role, data_dir.clone(), internal_url(0));
        config.cost = cost(argon2);
        config.cache_mib = tuning.cache_mib;
        config.guard = tuning.guard();
        config.internal = access;
        config.public_tls = security.public_tls();
        config
    };
    let pass_config = participant(Role::Password, pass_access);
    let hist_config = participant(Role::History, hist_access);

    let signal = tokio::spawn(async move {
        tpc_common::shutdown::signal().await;
        let _ = stop.send(true);
    });
    // If one service fails, the others are dropped too: half a cluster is no use.
    let boxed = |e: Box<dyn std::error::Error + Send + Sync>| e;
    let served = async {
        tokio::try_join!(
            async {
                coord::run(coord_config, coord_l, until_stopped())
                    .await
                    .map_err(|e| boxed(e.into()))
            },
            async {
                part::run(pass_config, pass_l, until_stopped())
                    .await
                    .map_err(|e| boxed(e.into()))
            },
            async {
                part::run(hist_config, hist_l, until_stopped())
                    .await
                    .map_err(|e| boxed(e.into()))
            },
        )
    };
    tokio::pin!(served);
    // "Up" only once all three serve: a locked data directory or a bad --smtp fails before it.
    let all_ready = async {
        for told in ready {
            if told.await.is_err() {
                // That service failed before serving: its error comes through `served`.
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        result = &mut served => {
            signal.abort();
            result?;
            return Ok(ExitCode::SUCCESS);
        }
        _ = all_ready => {}
    }
    println!("tpc is up (data in {}):", data_dir.display());
    println!("                        public (clients)          internal (the protocol, admin)");
    for (name, offset, services) in [
        ("coordinator", 0, "PasswordService / TransactionManager"),
        ("password participant", 1, "PasswordReader / Participant"),
        ("history participant", 2, "HistoryReader / Participant"),
    ] {
        println!(
            "  {name:<21} {:<25} {:<25} {services}",
            url(offset),
            internal_url(offset)
        );
    }
    match &security.certs {
        Some(dir) => println!(
            "  internal calls        mutual TLS, certificates in {} (tpc txn uses admin.pem)",
            dir.display()
        ),
        None => println!("  internal calls        NO TLS (--insecure-internal)"),
    }
    println!(
        "  e-mail                {}",
        smtp.smtp.as_deref().map_or_else(
            || format!("{}/mail/*.eml", data_dir.display()),
            str::to_owned
        )
    );
    println!("Press Ctrl-C to stop.");

    let served = served.await;
    signal.abort();
    served?;
    Ok(ExitCode::SUCCESS)
}

/// `tpc failpoints`: every fail point, what a crash there tests, and what `error` does there.
pub fn list_fail_points() -> ExitCode {
    use tpc_common::fault::{ENABLED, FAIL_POINTS, FAILPOINTS_ENV};
    println!(
        "Fail points ({}). Arm them with {FAILPOINTS_ENV}=\"name=action;…\", action [p%][count*]crash|error|delay(ms)|off.\n",
        if ENABLED {
            "compiled in"
        } else {
            "NOT compiled in: build with the failpoints feature"
        }
    );
    for (name, crash, error) in FAIL_POINTS {
        println!("{name}\n    crash: {crash}\n    error: {error}");
    }
    ExitCode::SUCCESS
}

/// `tpc up --ha`: the highly available layout as processes on loopback, reported as it changes.
#[cfg(feature = "etcd")]
pub async fn up_ha(data_dir: &Path, owasp: bool) -> Result {
    use tpc_harness::ha::{HaCluster, HaOptions};
    if !tpc_harness::etcd::etcd_available() {
        return Err(
            "no etcd binary: install Debian's etcd-server (apt-get install etcd-server), or set TPC_ETCD"
                .into(),
        );
    }
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let dir = data_dir.join(format!("ha-{started}"));
    println!(
        "starting etcd (3 members), 2 participants, 3 coordinators and a mail server under {}",
        dir.display()
    );
    let mut cluster = HaCluster::start(HaOptions {
        exe: std::env::current_exe()?,
        dir: dir.clone(),
        coordinators: 3,
        lease_ttl: std::time::Duration::from_secs(2),
        owasp_cost: owasp,
    })
    .await?;
    println!("etcd:         {}", cluster.etcd.endpoints().join(","));
    for (i, url) in cluster.coordinator_urls().iter().enumerate() {
        println!(
            "coordinator{i}: {url}  (pid {})",
            cluster.coordinator_pid(i).unwrap_or_default()
        );
    }
    println!("password:     {}", cluster.password_url());
    println!("history:      {}", cluster.history_url());
    println!("logs:         {}", dir.join("logs").display());
    println!(
        "try:          tpc user add alice --email alice@example.com --coordinator {}   (any of them: a standby points to the leader)",
        cluster.coordinator_urls()[0]
    );
    println!(
        "              kill -9 the leader's pid and watch a standby take over; Ctrl-C stops everything"
    );
    let mut leader = None;
    let mut mails = 0;
    let shutdown = tpc_common::shutdown::signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
        }
        let now = cluster.leader().await;
        if now != leader {
            match now {
                Some(i) => println!("coordinator{i} leads"),
                None => println!("no coordinator leads"),
            }
            leader = now;
        }
        for i in 0..3 {
            if cluster.coordinator_pid(i).is_some() && !cluster.coordinator_running(i) {
                println!("coordinator{i} stopped; starting it again (it joins as a standby)");
                cluster.start_coordinator(i).await?;
            }
        }
        let received = cluster.mail.mails();
        for mail in received.iter().skip(mails) {
            println!(
                "e-mail to {}: {}",
                mail.to.join(", "),
                mail.header("Subject").unwrap_or_default()
            );
        }
        mails = received.len();
    }
    println!("stopping");
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "etcd"))]
pub async fn up_ha(_: &Path, _: bool) -> Result {
    Err("this tpc was built without etcd: build it with `cargo build --release --features etcd` (needs protoc: Debian's protobuf-compiler)".into())
}
