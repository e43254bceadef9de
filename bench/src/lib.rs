//! `tpc bench`: how fast tpc commits password changes on this machine, and how far that is from what
//! the machine could do at best.
//!
//! A run starts a real cluster (three processes on loopback, as `tpc_harness` runs them for the tests,
//! without fault proxies unless faults are injected), registers users, then drives closed-loop clients
//! that change their own users' passwords, and measures after a warm-up: committed changes per second,
//! their latency, the refusals by reason, the services' CPU per change, memory and disk per change.
//! Beside each result stand the floors measured in the same invocation before any load (bare RPC round
//! trips, forced writes, argon2 hashes), so a figure reads as a fraction of a bound.
//!
//! A run may also inject a seeded schedule of faults (`faults`), run readers that count torn and dirty
//! reads (`readers`, `inflight`), and have clients reuse recent passwords; then it counts the
//! anomalies each strategy allows.
//!
//! Layout, one concept per file:
//! - `machine`: what the machine is (cores, CPU, memory, kernel);
//! - `floors`: the floors, and the bounds they imply per change;
//! - `users`: the users, their owners and their registration;
//! - `outcome`: what an answer means to a client; `recorder`: where the clients count it;
//! - `load`: the closed-loop clients and the clock around them; `request_ids`: the ids they send;
//! - `latency`: percentiles, CDF and windows over hdrhistograms;
//! - `measure`: `/proc` readings (CPU, memory) and disk usage; `mail_delay`: how soon e-mails follow;
//! - `faults`: the seeded fault schedule and the task that plays it against the cluster;
//! - `inflight`: the changes in flight, published by the clients for the readers; dirty reads;
//! - `readers`: concurrent readers counting torn reads and trying new passwords;
//! - `anomalies`: what a strategy left wrong at rest (divergent users, wrong, missing and duplicate
//!   e-mails), beside the torn and dirty reads;
//! - `sweep`: one run at one client count on a fresh cluster;
//! - `burst`: many registrations at once, to see how overload is refused;
//! - `results`: what `results.json` holds; `table`: the terminal's rendering of it;
//! - `charts` and `report`: the self-contained `report.html`.

mod anomalies;
mod burst;
mod charts;
mod faults;
#[cfg(test)]
mod fixtures;
mod floors;
mod inflight;
mod latency;
mod load;
mod machine;
mod mail_delay;
mod measure;
mod outcome;
mod readers;
mod recorder;
mod report;
mod request_ids;
pub mod results;
mod sweep;
mod table;
mod users;

use std::path::PathBuf;
use std::time::Duration;

use tpc_common::Strategy;
use tpc_harness::Service;
use tpc_participants::hashing::Cost;
use tpc_participants::history::DEFAULT_DEPTH;

pub use faults::FaultMode;
pub use machine::Machine;
pub use request_ids::RequestIds;
use results::{ConfigRecord, Floors, Results};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `tpc` binary to run as coordinator and participants.
    pub exe: PathBuf,
    /// The strategies to run, each at every client count, in this order.
    pub strategies: Vec<Strategy>,
    /// One run per client count, in this order.
    pub clients: Vec<usize>,
    /// The fault modes, each run with every strategy and client count (the same seeded schedule for
    /// every strategy).
    pub faults: Vec<FaultMode>,
    /// Concurrent readers during each measured period, counting torn and dirty reads (0: none).
    pub readers: usize,
    /// Fraction of changes that set one of the user's recent passwords again, so the history
    /// participant refuses them.
    pub reuse_rate: f64,
    /// The form of the clients' request ids: where they land in the coordinator's index of them.
    pub request_ids: RequestIds,
    /// Measured period of each run.
    pub duration: Duration,
    /// Load before the measured period of each run: connections, caches and queues settle.
    pub warmup: Duration,
    /// Users registered before each run (raised to the client count if fewer).
    pub users: usize,
    /// The participants' argon2 cost; `InsecureFast` measures the protocol, `Owasp` the product.
    pub cost: Cost,
    /// Where each run's cluster, `results.json` and `report.html` go; must be new or empty.
    pub out: PathBuf,
    /// After the sweep, fire this many registrations at once on a fresh cluster.
    pub burst: Option<usize>,
    /// Draw progress bars on stderr (only where it is a terminal).
    pub progress: bool,
    /// Plaintext between the services instead of the default mutual TLS.
    pub insecure_internal: bool,
    /// Where the coordinator's decision log lives, each run with every strategy and client count.
    pub logs: Vec<DecisionLog>,
}

/// Where the coordinator keeps its decision log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionLog {
    /// sled in the coordinator's data directory (the default).
    Sled,
    /// A 3-member etcd cluster on loopback (`--log etcd`; a `tpc` built with `--features etcd`).
    Etcd,
}

impl DecisionLog {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionLog::Sled => "sled",
            DecisionLog::Etcd => "etcd",
        }
    }
}

impl Config {
    fn owasp(&self) -> bool {
        self.cost == Cost::Owasp
    }

    fn cost_name(&self) -> &'static str {
        if self.owasp() { "owasp" } else { "fast" }
    }
}

/// How long the forced-write and argon2 floors are measured.
const FLOOR_TIME: Duration = Duration::from_secs(2);

/// Runs the whole benchmark, printing as it goes; writes `results.json` and `report.html` to `out`.
pub async fn run(config: Config) -> Result<Results, BoxError> {
    if config.clients.is_empty() || config.clients.contains(&0) {
        return Err("--clients needs one or more counts above zero".into());
    }
    if config.strategies.is_empty() {
        return Err("--strategies needs one or more strategies".into());
    }
    if config.faults.is_empty() {
        return Err("--faults needs one or more modes".into());
    }
    if !(0.0..=1.0).contains(&config.reuse_rate) {
        return Err("--reuse-rate is a fraction between 0 and 1".into());
    }
    tpc_harness::fresh_output_dir(&config.out)?;
    let machine = Machine::read();
    let record = ConfigRecord {
        clients: config.clients.clone(),
        duration_s: config.duration.as_secs_f64(),
        warmup_s: config.warmup.as_secs_f64(),
        users: config.users,
        argon2: config.cost_name().into(),
        burst: config.burst,
        clients_per_channel: load::CLIENTS_PER_CHANNEL,
        request_timeout_s: load::REQUEST_TIMEOUT.as_secs_f64(),
        tpc_version: env!("CARGO_PKG_VERSION").into(),
        faults: config.faults.iter().map(|f| f.as_str().into()).collect(),
        fault_seed: faults::SEED,
        readers: config.readers,
        reuse_rate: config.reuse_rate,
        request_ids: config.request_ids.as_str().into(),
        internal_tls: !config.insecure_internal,
    };
    print!("{}", table::header(&machine, &record, &config.out));

    println!("floors (measured now, nothing else running):");
    let forced_writes_per_s = floors::forced_writes_per_s(
        &config.out.join("floor-forced-writes"),
        floors::GROUPED_WRITERS,
        FLOOR_TIME,
    )
    .await?;
    let forced_writes_1_per_s =
        floors::forced_writes_per_s(&config.out.join("floor-forced-writes-1"), 1, FLOOR_TIME)
            .await?;
    let argon2_hashes_per_s = floors::argon2_hashes_per_s(config.cost, FLOOR_TIME).await?;
    let hashes_per_change = floors::hashes_per_change(DEFAULT_DEPTH);
    let mut floors = Floors {
        rpc_per_s: Default::default(),
        forced_writes_per_s,
        forced_writes_1_per_s,
        argon2_hashes_per_s,
        rpcs_per_change: floors::RPCS_PER_CHANGE,
        forced_writes_per_change: floors::FORCED_WRITES_PER_CHANGE,
        hashes_per_change,
        forced_write_bound_per_s: floors::bound(
            forced_writes_per_s,
            floors::FORCED_WRITES_PER_CHANGE,
        ),
        argon2_bound_per_s: floors::bound(argon2_hashes_per_s, hashes_per_change),
    };
    print!("{}", table::floors(&floors, config.cost_name()));

    let mut runs = Vec::new();
    let mut plan = Vec::new();
    for &faults in &config.faults {
        for &log in &config.logs {
            for &strategy in &config.strategies {
                for &clients in &config.clients {
                    plan.push(sweep::Plan {
                        strategy,
                        faults,
                        log,
                        clients,
                    });
                }
            }
        }
    }
    for (i, &p) in plan.iter().enumerate() {
        let bar = progress_bar(&config, p, i + 1, plan.len());
        let (strategy, clients) = (p.strategy, p.clients);
        let on = match p.log {
            DecisionLog::Sled => String::new(),
            log => format!("-on-{}", log.as_str()),
        };
        let dir = config.out.join(match p.faults {
            FaultMode::None => format!("run-{strategy}{on}-{clients}-clients"),
            mode => format!("run-{strategy}{on}-faults-{mode}-{clients}-clients"),
        });
        let run = sweep::run_at(&config, &floors, p, &dir, &bar).await;
        bar.finish_and_clear();
        let run = run?;
        floors.rpc_per_s.insert(clients, run.rpc_floor_per_s);
        println!("{}", table::run_line(&run));
        runs.push(run);
    }

    let burst = match config.burst {
        Some(requests) if requests > 0 => {
            println!("burst: {requests} registrations at once on a fresh cluster…");
            let strategy = config.strategies[0];
            let mut cluster = sweep::start_cluster(
                &config,
                &config.out.join("burst"),
                strategy,
                FaultMode::None,
                None,
                None,
            )
            .await?;
            let channels = load::channels(&cluster.url(Service::Coordinator), requests).await?;
            let burst = burst::fire(&channels, requests).await;
            drop(channels);
            cluster.shutdown().await?;
            Some(burst)
        }
        _ => None,
    };

    let results = Results {
        machine,
        config: record,
        floors,
        runs,
        burst,
    };
    println!();
    print!("{}", table::render(&results));
    let json = config.out.join("results.json");
    std::fs::write(&json, serde_json::to_vec_pretty(&results)?)?;
    let html = config.out.join("report.html");
    std::fs::write(&html, report_html(&results))?;
    println!("results: {}", json.display());
    println!("report:  {}", html.display());
    Ok(results)
}

/// The HTML report of saved results (what `run` writes as `report.html`).
pub fn report_html(results: &Results) -> String {
    report::html(results)
}

fn progress_bar(
    config: &Config,
    plan: sweep::Plan,
    nth: usize,
    of: usize,
) -> indicatif::ProgressBar {
    if !config.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new((config.warmup + config.duration).as_secs());
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len}s  {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    let faults = match plan.faults {
        FaultMode::None => String::new(),
        mode => format!(", faults {mode}"),
    };
    let on = match plan.log {
        DecisionLog::Sled => String::new(),
        log => format!(" on {}", log.as_str()),
    };
    bar.set_prefix(format!(
        "run {nth}/{of}: {}{on}, {} clients{faults}",
        plan.strategy, plan.clients
    ));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
