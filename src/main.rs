//! `tpc`: the command line of the tpc transaction manager.
//!
//! Servers: `tpc up` (all three services in one process), `tpc coordinator`, `tpc participant`.
//! Clients: `tpc user add`, `tpc passwd`, `tpc verify`, `tpc history`, `tpc txn list|show`.
//! Teaching: `tpc demo` runs the whole story, crash and recovery included, and narrates it.
//! Measuring: `tpc chaos` breaks it on purpose and checks every invariant; `tpc bench` measures it.

mod allocator;
mod client;
mod demo;
mod servers;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tpc_common::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "tpc",
    version,
    about = "Atomic password changes: two-phase commit across password and history services, e-mail only after commit"
)]
struct Cli {
    /// Log format on stderr (filter with RUST_LOG).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormatArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, Default)]
pub enum Argon2Arg {
    /// OWASP's cost: m=19456 KiB, t=2, p=1.
    #[default]
    Owasp,
    /// INSECURE m=8 KiB, t=1: for tests and benchmarks only.
    Fast,
}

/// Resource limits every server takes.
#[derive(clap::Args, Clone, Copy)]
pub struct Tuning {
    /// Page cache of each sled database, in MiB (sled's own default is 1 GiB per database).
    #[arg(long, default_value_t = tpc_common::DEFAULT_CACHE_MIB)]
    cache_mib: u64,
    /// Wrong passwords allowed per user and client address; after them each next attempt from that
    /// address waits 2^n s (a right password resets the count).
    #[arg(long, default_value_t = tpc_common::guard::GuardConfig::default().free_failures)]
    free_guesses: u32,
    /// The longest wait after wrong passwords, in seconds.
    #[arg(long, default_value_t = 900)]
    max_guess_wait_s: u64,
    /// Password checks (UpdatePassword, VerifyPassword) per second per client address; 0: unlimited.
    #[arg(long, default_value_t = tpc_common::guard::GuardConfig::default().per_address_per_s)]
    checks_per_address: u32,
}

impl Tuning {
    fn guard(&self) -> tpc_common::guard::GuardConfig {
        tpc_common::guard::GuardConfig {
            free_failures: self.free_guesses,
            max_backoff: std::time::Duration::from_secs(self.max_guess_wait_s),
            per_address_per_s: self.checks_per_address,
        }
    }
}

/// How a server's listeners are protected (docs/security.md).
#[derive(clap::Args, Clone)]
pub struct Security {
    /// The cluster's certificate directory (ca.pem, and this service's NAME.pem and NAME.key): mutual
    /// TLS on the internal listener and on the calls to the other services' internal listeners, whose
    /// URLs are then https://. Make one with `tpc certs`.
    #[arg(long)]
    certs: Option<PathBuf>,
    /// Serve the internal listener without TLS on a non-loopback address. Only where the network admits
    /// nothing but the cluster's own services: anyone who reaches it can commit changes.
    #[arg(long, conflicts_with = "certs")]
    insecure_internal: bool,
    /// Certificate chain (PEM) for TLS on the public listener.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl Security {
    fn public_tls(&self) -> Option<tpc_common::tls::PublicTls> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(tpc_common::tls::PublicTls {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }
}

/// Where e-mail goes.
#[derive(clap::Args, Clone)]
pub struct Smtp {
    /// SMTP relay: smtp://host[:port] (plaintext), smtp://host[:port]?tls=required (STARTTLS) or
    /// smtps://host[:port] (TLS); a user name (smtps://USER@host) turns on AUTH. Default: .eml files
    /// in DATA_DIR/mail.
    #[arg(long)]
    smtp: Option<String>,
    /// CA certificate (PEM) the relay's certificate is verified against (default: the public web's
    /// roots).
    #[arg(long, requires = "smtp")]
    smtp_ca: Option<PathBuf>,
    /// File holding the AUTH password (default: the TPC_SMTP_PASSWORD environment variable). Never on
    /// the command line.
    #[arg(long, requires = "smtp")]
    smtp_password_file: Option<PathBuf>,
}

/// What the history participant keeps.
#[derive(clap::Args, Clone, Copy)]
pub struct HistoryLimits {
    /// History only: how many recent passwords are refused.
    #[arg(long, default_value_t = tpc_participants::history::DEFAULT_DEPTH)]
    history_depth: usize,
    /// History only: how many changes per user are kept and listed (older ones are deleted).
    #[arg(long, default_value_t = tpc_participants::history::DEFAULT_KEEP)]
    history_keep: usize,
}

/// How the coordinator makes the change atomic: see docs/strategies.md.
#[derive(Clone, Copy, ValueEnum, Default)]
pub enum StrategyArg {
    /// Two-phase commit: all or nothing, the e-mail only after the commit is durable.
    #[default]
    #[value(name = "2pc")]
    TwoPc,
    /// Local commits step by step (password, then history), compensated when a step fails.
    Saga,
    /// Publish the change once, durably; each consumer applies it on its own (no atomicity).
    Events,
}

impl From<StrategyArg> for tpc_common::Strategy {
    fn from(s: StrategyArg) -> Self {
        match s {
            StrategyArg::TwoPc => Self::TwoPc,
            StrategyArg::Saga => Self::Saga,
            StrategyArg::Events => Self::Events,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Password,
    History,
}

/// Which scenario `tpc check` explores.
#[derive(Clone, Copy, ValueEnum)]
pub enum ScenarioArg {
    /// One change of one user.
    OneChange,
    /// Two changes of the same user at once.
    SameUser,
    /// Two changes of two users at once.
    TwoUsers,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
pub enum CrashableArg {
    Coordinator,
    Password,
    History,
}

#[derive(clap::Args)]
struct CheckArgs {
    #[arg(long, value_enum, default_value = "one-change")]
    scenario: ScenarioArg,
    /// Explore this many steps from the start (each delivery, flush, timer, fault is a step; one
    /// change needs about 11 to commit, 18 to commit across a coordinator crash).
    #[arg(long, default_value_t = 19)]
    depth: usize,
    /// Processes the checker may kill -9 (restarting them keeps only what they forced).
    #[arg(long, default_value_t = 1)]
    crashes: u8,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "coordinator,password,history"
    )]
    crashable: Vec<CrashableArg>,
    /// Messages the network may lose.
    #[arg(long, default_value_t = 0)]
    losses: u8,
    /// Messages the network may deliver twice.
    #[arg(long, default_value_t = 0)]
    duplicates: u8,
    /// Calls the caller may give up on while the answer is still coming.
    #[arg(long, default_value_t = 0)]
    timeouts: u8,
    /// Add a reader of user 0 (password version, history, password version again), which multiplies
    /// the states (one change to depth 19: about 4 million unique states and 11 GB, against 1 million
    /// and 1.4 GB without).
    #[arg(long)]
    reader: bool,
    /// The history participant always votes yes (fewer states; no aborts unless a fault causes one).
    #[arg(long)]
    history_always_yes: bool,
    /// Search depth first: little memory, but counterexamples are not the shortest.
    #[arg(long)]
    depth_first: bool,
    /// Checker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(clap::Args)]
struct SimArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Simulated time of faults per seed (then everything heals and the cluster goes quiet).
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    faults_for: std::time::Duration,
    /// Seeds run at once (each in a process of its own).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Print each run's log (faults, operations, outcomes, final transactions).
    #[arg(long)]
    log: bool,
    /// Run one seed in this process and print its result (what each child does).
    #[arg(long, hide = true)]
    child: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator on PORT and the password and history participants on PORT+1 and PORT+2, their
    /// internal listeners on PORT+3, PORT+4 and PORT+5 (mutual TLS with fresh certificates in
    /// DATA_DIR/certs unless --certs or --insecure-internal).
    Up {
        #[arg(long, default_value = "./tpc-data")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 50051, value_parser = clap::value_parser!(u16).range(1..=65530))]
        port: u16,
        #[command(flatten)]
        security: Security,
        #[command(flatten)]
        smtp: Smtp,
        #[arg(long, value_enum, default_value = "owasp")]
        argon2: Argon2Arg,
        #[arg(long, value_enum, default_value = "2pc")]
        strategy: StrategyArg,
        #[command(flatten)]
        tuning: Tuning,
        /// High availability, to try failover: a 3-member etcd cluster, three coordinators on it (one
        /// leads), both participants and a mail server, each a process of its own on loopback, under
        /// a fresh directory in --data-dir. Needs a build with `--features etcd` and the etcd binary
        /// (Debian's etcd-server); docs/high-availability.md.
        #[arg(long)]
        ha: bool,
    },
    /// Run the transaction manager alone.
    Coordinator(Box<servers::CoordinatorArgs>),
    /// Run one participant alone.
    Participant(servers::ParticipantArgs),
    /// Manage users.
    #[command(subcommand)]
    User(client::UserCommand),
    /// Change a user's password.
    Passwd(client::PasswdArgs),
    /// Check a user's password.
    Verify(client::VerifyArgs),
    /// Show a user's password history (dates and transactions, never hashes).
    History(client::HistoryArgs),
    /// Inspect the coordinator's transactions.
    #[command(subcommand)]
    Txn(client::TxnCommand),
    /// List the fail points (fault injection), with what a crash at each one tests.
    Failpoints,
    /// Make a development CA and a certificate per service (coordinator, password, history, admin)
    /// plus one for the public listeners, for `--certs` and `--tls-cert`. The CA's key is not kept.
    Certs {
        /// Directory to write them to.
        #[arg(long)]
        out: PathBuf,
        /// More names (DNS or IP) for the public certificate, besides localhost, 127.0.0.1 and ::1.
        #[arg(long, value_delimiter = ',')]
        public_name: Vec<String>,
    },
    /// Run real processes under a random schedule of faults while clients work, then check every
    /// invariant. Exit status 1 on any violation.
    Chaos {
        /// How long to inject faults, e.g. 60s or 2m.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: std::time::Duration,
        /// Seed of the fault schedule and the workload (default: from the clock). A run with the same
        /// seed makes the same choices, though timing still differs.
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, default_value_t = 8)]
        clients: usize,
        #[arg(long, default_value_t = 20)]
        users: usize,
        /// Where data, logs, history.jsonl and report.json go; must be new or empty
        /// (default: ./tpc-chaos-SEED-TIME).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The coordinator's strategy; a saga's and events' anomalies are counted, not failed on.
        #[arg(long, value_enum, default_value = "2pc")]
        strategy: StrategyArg,
        /// Where the coordinator's decision log lives: etcd puts it on a 3-member cluster on
        /// loopback, whose members are killed too (needs a build with `--features etcd`).
        #[arg(long, value_enum, default_value = "sled")]
        log: servers::LogArg,
    },
    /// Measure throughput, latency, CPU, memory and disk under closed-loop load, beside the floors of
    /// this machine (bare RPC, forced writes, argon2) measured in the same run. Writes results.json
    /// and report.html to OUT.
    Bench {
        /// Strategies to measure side by side, each at every client count (a comma list).
        #[arg(long, value_enum, value_delimiter = ',', default_value = "2pc")]
        strategies: Vec<StrategyArg>,
        /// Where the coordinator's decision log lives, each measured with every strategy (a comma
        /// list): etcd starts a 3-member cluster on loopback per run (needs a build with
        /// `--features etcd` and the etcd binary).
        #[arg(long, value_enum, value_delimiter = ',', default_value = "sled")]
        logs: Vec<servers::LogArg>,
        /// Concurrent clients; a comma list (1,4,16,64,256) runs a sweep, each on a fresh cluster.
        #[arg(long, value_delimiter = ',', default_value = "64")]
        clients: Vec<usize>,
        /// Measured time of each run, e.g. 20s or 10m.
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        duration: std::time::Duration,
        /// Load before the measured time of each run.
        #[arg(long, default_value = "3s", value_parser = parse_duration)]
        warmup: std::time::Duration,
        /// Users registered before each run (at least one per client).
        #[arg(long, default_value_t = 1000)]
        users: usize,
        /// Participants' hashing cost. `fast` is INSECURE and measures the protocol; `owasp` measures
        /// the secure default the product runs with.
        #[arg(long, value_enum, default_value = "fast")]
        argon2: Argon2Arg,
        /// Where the clusters' data, results.json and report.html go; must be new or empty
        /// (default: ./tpc-bench-TIME).
        #[arg(long)]
        out: Option<PathBuf>,
        /// After the sweep, fire N registrations at once on a fresh cluster and report how each ended.
        #[arg(long)]
        burst: Option<usize>,
        /// Faults during each measured period, from a fixed seed, the same for every strategy: `crash`
        /// (kill -9 and restart each participant), `partition` (cut the coordinator off from each
        /// participant), `all` (both, and the mail server down); a comma list runs each mode.
        #[arg(long, value_delimiter = ',', default_value = "none", value_parser = parse_faults)]
        faults: Vec<tpc_bench::FaultMode>,
        /// Concurrent readers during each measured period, counting torn and dirty reads.
        #[arg(long, default_value_t = 0)]
        readers: usize,
        /// Fraction of changes that reuse one of the user's recent passwords (the history refuses it).
        #[arg(long, default_value_t = 0.0)]
        reuse_rate: f64,
        /// The clients' request ids: `sequential` (`c<client>-<n>`, in order as UUIDv7s are) or
        /// `random` (UUIDv4s), which cost the coordinator's index of them more memory.
        #[arg(long, default_value = "sequential", value_parser = parse_request_ids)]
        request_ids: tpc_bench::RequestIds,
        /// Plaintext between the services instead of mutual TLS (the product's default), to measure
        /// what TLS costs.
        #[arg(long)]
        insecure_internal: bool,
        /// Measure nothing: draw the report again from a saved `results.json`, beside it
        /// (`report.html`; `NAME-report.html` for `NAME-results.json`).
        #[arg(long, value_name = "RESULTS_JSON")]
        render: Option<PathBuf>,
    },
    /// Model-check the production 2PC engines: every interleaving of one client's changes across the
    /// coordinator and both participants, with the faults allowed, to a depth (docs/testing.md).
    Check(CheckArgs),
    /// Simulate the whole cluster (the real servers and an SMTP server on a simulated network, turmoil)
    /// under seeded partitions, delays, lossy links, crashes and failing disks, and check every run
    /// (docs/testing.md).
    Sim(SimArgs),
    /// Run the whole story in a temporary directory, crash and recovery included, and narrate it.
    Demo {
        /// Keep the temporary directory (data, logs, e-mails) and print its path.
        #[arg(long)]
        keep: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    allocator::return_freed_memory_soon();
    let cli = Cli::parse();
    let format = match cli.log_format {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    };
    let result = match cli.command {
        Command::Up {
            data_dir,
            port,
            security,
            smtp,
            argon2,
            strategy,
            tuning,
            ha,
        } => {
            telemetry::init(format);
            if ha {
                servers::up_ha(&data_dir, matches!(argon2, Argon2Arg::Owasp)).await
            } else {
                servers::up(servers::Up {
                    data_dir,
                    port,
                    security,
                    smtp,
                    argon2,
                    strategy: strategy.into(),
                    tuning,
                })
                .await
            }
        }
        Command::Coordinator(args) => {
            telemetry::init(format);
            servers::coordinator(*args).await
        }
        Command::Participant(args) => {
            telemetry::init(format);
            servers::participant(args).await
        }
        Command::Certs { out, public_name } => servers::certs(&out, &public_name),
        Command::User(cmd) => client::user(cmd).await,
        Command::Passwd(args) => client::passwd(args).await,
        Command::Verify(args) => client::verify(args).await,
        Command::History(args) => client::history(args).await,
        Command::Txn(cmd) => client::txn(cmd).await,
        Command::Failpoints => Ok(servers::list_fail_points()),
        Command::Chaos {
            duration,
            seed,
            clients,
            users,
            out,
            strategy,
            log,
        } => {
            chaos(
                duration,
                seed,
                clients,
                users,
                out,
                strategy.into(),
                log == servers::LogArg::Etcd,
            )
            .await
        }
        Command::Bench {
            render: Some(results),
            ..
        } => render_report(&results),
        Command::Bench {
            strategies,
            logs,
            clients,
            duration,
            warmup,
            users,
            argon2,
            out,
            burst,
            faults,
            readers,
            reuse_rate,
            request_ids,
            insecure_internal,
            render: None,
        } => {
            let strategies = strategies.into_iter().map(Into::into).collect();
            let logs = logs
                .into_iter()
                .map(|log| match log {
                    servers::LogArg::Sled => tpc_bench::DecisionLog::Sled,
                    servers::LogArg::Etcd => tpc_bench::DecisionLog::Etcd,
                })
                .collect();
            bench(tpc_bench::Config {
                logs,
                // Set by `bench`, where an error can be returned.
                exe: PathBuf::new(),
                strategies,
                clients,
                faults,
                readers,
                reuse_rate,
                request_ids,
                duration,
                warmup,
                users,
                cost: match argon2 {
                    Argon2Arg::Owasp => tpc_participants::hashing::Cost::Owasp,
                    Argon2Arg::Fast => tpc_participants::hashing::Cost::InsecureFast,
                },
                out: out.unwrap_or_else(|| {
                    PathBuf::from(format!("tpc-bench-{}", tpc_common::now_ms() / 1000))
                }),
                burst,
                progress: true,
                insecure_internal,
            })
            .await
        }
        Command::Demo { keep } => demo::run(keep).await,
        Command::Check(args) => model_check(args),
        Command::Sim(args) => simulate(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tpc: {e}");
            ExitCode::from(2)
        }
    }
}

/// Errors end the command with a message and exit status 2.
pub type Result<T = ExitCode> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn parse_faults(raw: &str) -> std::result::Result<tpc_bench::FaultMode, String> {
    tpc_bench::FaultMode::parse(raw)
        .ok_or_else(|| format!("{raw:?}: expected none, crash, partition or all"))
}

fn parse_request_ids(raw: &str) -> std::result::Result<tpc_bench::RequestIds, String> {
    tpc_bench::RequestIds::parse(raw)
        .ok_or_else(|| format!("{raw:?}: expected sequential or random"))
}

fn parse_duration(raw: &str) -> std::result::Result<std::time::Duration, String> {
    let (number, unit) = raw
        .find(|c: char| !c.is_ascii_digit())
        .map_or((raw, "s"), |i| raw.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?}: expected e.g. 60s or 2m"))?;
    let seconds = |per: u64| {
        n.checked_mul(per)
            .map(std::time::Duration::from_secs)
            .ok_or_else(|| format!("{raw:?}: too long"))
    };
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        _ => Err(format!("{raw:?}: unit must be ms, s, m or h")),
    }
}

/// How long the coordinator keeps finished transactions: at least a minute, so that a client's
/// prompt retry always finds its first outcome.
fn parse_retention(raw: &str) -> std::result::Result<std::time::Duration, String> {
    let retention = parse_duration(raw)?;
    if retention < std::time::Duration::from_secs(60) {
        return Err(format!("{raw:?}: at least 1m"));
    }
    Ok(retention)
}

async fn chaos(
    duration: std::time::Duration,
    seed: Option<u64>,
    clients: usize,
    users: usize,
    out: Option<PathBuf>,
    strategy: tpc_common::Strategy,
    etcd: bool,
) -> Result {
    use tpc_harness::chaos::{self, ChaosConfig};
    let seed = seed.unwrap_or_else(tpc_common::now_ms);
    let out = out.unwrap_or_else(|| {
        PathBuf::from(format!("tpc-chaos-{seed}-{}", tpc_common::now_ms() / 1000))
    });
    println!(
        "tpc chaos: {strategy}{}, {} s of faults, seed {seed}, {clients} clients, {users} users; output in {}",
        if etcd { " on etcd" } else { "" },
        duration.as_secs(),
        out.display()
    );
    let report = chaos::run(ChaosConfig {
        exe: std::env::current_exe()?,
        duration,
        seed,
        clients: clients.max(1),
        users: users.max(1),
        out: out.clone(),
        progress: true,
        strategy,
        etcd,
    })
    .await?;
    print!("{}", report.render());
    println!(
        "history: {}  report: {}",
        out.join("history.jsonl").display(),
        out.join("report.json").display()
    );
    Ok(if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[allow(clippy::too_many_arguments)]
/// Runs `tpc bench` with this very binary as the cluster's services.
/// `tpc bench --render`: the report of saved results, written beside them.
fn render_report(results: &std::path::Path) -> Result {
    let saved: tpc_bench::results::Results = serde_json::from_slice(&std::fs::read(results)?)
        .map_err(|e| format!("{}: {e}", results.display()))?;
    // `results.json` → `report.html`; `x-results.json` → `x-report.html`.
    let name = results
        .file_name()
        .and_then(|n| n.to_str())
        .map_or("report.html".into(), |n| {
            n.replace("results", "report").replace(".json", ".html")
        });
    let html = results.with_file_name(name);
    std::fs::write(&html, tpc_bench::report_html(&saved))?;
    println!("report: {}", html.display());
    Ok(ExitCode::SUCCESS)
}

async fn bench(mut config: tpc_bench::Config) -> Result {
    config.exe = std::env::current_exe()?;
    let run = tpc_bench::run(config);
    // Dropping the run drops its cluster, whose processes are killed with it: Ctrl-C leaves none behind.
    tokio::select! {
        result = run => result?,
        _ = tokio::signal::ctrl_c() => return Err("interrupted; the cluster's processes were stopped".into()),
    };
    Ok(ExitCode::SUCCESS)
}

/// `tpc check`: model-checks the engines and prints what held, what was reached and any counterexample.
fn model_check(args: CheckArgs) -> Result {
    use tpc_check::{Faults, Node, Search, Setup};
    let mut setup = match args.scenario {
        ScenarioArg::OneChange => Setup::one_change(),
        ScenarioArg::SameUser => Setup::same_user(),
        ScenarioArg::TwoUsers => Setup::two_users(),
    };
    setup.faults = Faults {
        crashes: args.crashes,
        losses: args.losses,
        duplicates: args.duplicates,
        timeouts: args.timeouts,
    };
    setup.crashable = args
        .crashable
        .iter()
        .map(|c| match c {
            CrashableArg::Coordinator => Node::Coordinator,
            CrashableArg::Password => Node::Password,
            CrashableArg::History => Node::History,
        })
        .collect();
    setup.reader &= args.reader;
    setup.history_may_refuse &= !args.history_always_yes;
    let mut search = Search::to_depth(args.depth);
    search.depth_first = args.depth_first;
    if let Some(threads) = args.threads {
        search.threads = threads;
    }
    println!(
        "tpc check: {} change(s), {} user(s), reader {}, faults {:?}, depth {}, {} search on {} thread(s)",
        setup.changes.len(),
        setup.users(),
        if setup.reader { "on" } else { "off" },
        setup.faults,
        search.depth,
        if search.depth_first {
            "depth-first"
        } else {
            "breadth-first"
        },
        search.threads
    );
    let report = tpc_check::check(setup, search);
    print!("{report}");
    Ok(if report.broken().next().is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `tpc sim`: seeds, each in a child process of this binary, with a summary line per seed.
fn simulate(args: SimArgs) -> Result {
    use tpc_sim::run::SimConfig;
    if args.child {
        let mut config = SimConfig::new(args.start);
        config.faults_for = args.faults_for;
        // The simulation makes runtimes of its own, which cannot start inside this one's thread.
        std::thread::spawn(move || tpc_sim::seeds::child(&config, args.log))
            .join()
            .map_err(|_| "the simulation panicked")?;
        return Ok(ExitCode::SUCCESS);
    }
    let exe = std::env::current_exe()?;
    let faults_for = format!("{}ms", args.faults_for.as_millis());
    let started = std::time::Instant::now();
    let summaries = tpc_sim::seeds::run_seeds(
        args.start..args.start + args.seeds,
        args.jobs,
        |seed| {
            let mut command = std::process::Command::new(&exe);
            command.args([
                "sim",
                "--child",
                "--start",
                &seed.to_string(),
                "--faults-for",
                &faults_for,
            ]);
            if args.log {
                command.arg("--log");
            }
            command
        },
        |s| {
            let verdict = if s.violations.is_empty() {
                "ok"
            } else {
                "VIOLATIONS"
            };
            println!(
                "seed {}: {verdict}: {} operations, {} committed, {} faults",
                s.seed, s.operations, s.committed, s.faults
            );
            for v in &s.violations {
                println!("    {v}");
            }
            if !s.log.is_empty() {
                println!("{}", s.log);
            }
        },
    );
    let elapsed = started.elapsed().as_secs_f64();
    let failed: Vec<u64> = summaries
        .iter()
        .filter(|s| !s.violations.is_empty())
        .map(|s| s.seed)
        .collect();
    println!(
        "{} seeds in {elapsed:.1} s ({:.1} seeds/s), {} with violations",
        summaries.len(),
        summaries.len() as f64 / elapsed.max(1e-9),
        failed.len()
    );
    for seed in &failed {
        println!("replay: tpc sim --seeds 1 --start {seed} --faults-for {faults_for} --log");
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_read_in_every_unit_and_refuse_the_rest() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("20"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("2d").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration(&format!("{}h", u64::MAX)).is_err());
    }

    #[test]
    fn a_retention_under_a_minute_is_refused() {
        assert_eq!(parse_retention("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_retention("59s").is_err());
    }
}
