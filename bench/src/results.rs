//! What a benchmark found, as written to `results.json`: the machine, the configuration, the floors and
//! one entry per run. The terminal table and the HTML report are both rendered from these types, so
//! the three never disagree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::machine::Machine;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub machine: Machine,
    pub config: ConfigRecord,
    pub floors: Floors,
    pub runs: Vec<Run>,
    pub burst: Option<Burst>,
}

/// The command's settings, as run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigRecord {
    pub clients: Vec<usize>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub users: usize,
    /// `fast` (INSECURE, measures the protocol) or `owasp` (the product's default cost).
    pub argon2: String,
    pub burst: Option<usize>,
    /// Client tasks sharing one HTTP/2 connection.
    pub clients_per_channel: usize,
    pub request_timeout_s: f64,
    pub tpc_version: String,
    /// The fault modes run (`--faults`), each with every strategy and client count.
    #[serde(default = "no_faults")]
    pub faults: Vec<String>,
    /// The seed of the fault schedule (the same for every strategy).
    #[serde(default)]
    pub fault_seed: u64,
    /// Concurrent readers during each measured period (`--readers`).
    #[serde(default)]
    pub readers: usize,
    /// Fraction of changes that reuse a recent password (`--reuse-rate`).
    #[serde(default)]
    pub reuse_rate: f64,
    /// The form of the clients' request ids (`--request-ids`; results from before it existed sent
    /// sequential ones).
    #[serde(default = "sequential")]
    pub request_ids: String,
    /// Mutual TLS between the services, as the product runs by default (results from before it
    /// existed read as `false`, which is what they measured).
    #[serde(default)]
    pub internal_tls: bool,
}

fn sled() -> String {
    "sled".into()
}

fn sequential() -> String {
    crate::RequestIds::Sequential.as_str().into()
}

fn no_faults() -> Vec<String> {
    vec!["none".into()]
}

/// What the machine can do at best, measured in the same invocation before any load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Floors {
    /// Bare unary round trips per second, by client count (the floor depends on concurrency).
    pub rpc_per_s: BTreeMap<usize, f64>,
    /// sled insert + forced write per second, 16 concurrent writers (flushes group-commit).
    pub forced_writes_per_s: f64,
    /// The same with one writer: every write waits for its own flush.
    pub forced_writes_1_per_s: f64,
    /// argon2id hashes per second at the run's cost, on every core.
    pub argon2_hashes_per_s: f64,
    /// How many of each a committed password change costs, from which the bounds follow.
    pub rpcs_per_change: f64,
    pub forced_writes_per_change: f64,
    pub hashes_per_change: f64,
    /// forced_writes_per_s / forced_writes_per_change.
    pub forced_write_bound_per_s: f64,
    /// argon2_hashes_per_s / hashes_per_change.
    pub argon2_bound_per_s: f64,
}

/// One load run against a fresh cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// How the change is made atomic: "2pc", "saga" (or, later, "events").
    pub strategy: String,
    pub clients: usize,
    /// The fault mode of the run: "none", "crash", "partition" or "all" (`--faults`).
    pub faults: String,
    /// Where the coordinator's decision log lived: "sled" or "etcd" (`--logs`).
    #[serde(default = "sled")]
    pub log: String,
    pub users: usize,
    /// Length of the measured window (after the warm-up).
    pub measured_s: f64,
    /// Changes committed within the measured window.
    pub committed: u64,
    pub committed_per_s: f64,
    pub refused_per_s: f64,
    /// Refusals by reason: an ABORTED outcome's reason, or a gRPC status as `Code: message`.
    pub refused: BTreeMap<String, u64>,
    /// Latency of the committed changes, client-side.
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU seconds of the three services per 1,000 committed changes (= CPU ms per change).
    pub cpu_s_per_1000: Option<f64>,
    pub cpu_s_per_1000_by_service: BTreeMap<String, f64>,
    /// CPU seconds the load generator (this process) used in the measured window.
    pub loadgen_cpu_s: Option<f64>,
    /// Peak resident memory (VmHWM) per service at the end of the run, MiB.
    pub rss_mib: BTreeMap<String, f64>,
    /// Every transaction the cluster committed (registrations, warm-up and measured changes): the
    /// divisor of the disk figures, since the data directories hold all of them.
    pub committed_total: u64,
    /// Bytes the three data directories occupy at the end (allocated blocks).
    pub disk_bytes: u64,
    pub disk_bytes_per_change: Option<f64>,
    /// The same without the coordinator's `mail/` directory (the `.eml` files).
    pub disk_bytes_per_change_without_mail: Option<f64>,
    /// Bare RPC round trips per second at this client count, against this run's coordinator.
    pub rpc_floor_per_s: f64,
    /// committed_per_s as a fraction of each bound.
    pub of_rpc_bound: f64,
    pub of_forced_write_bound: f64,
    pub of_argon2_bound: f64,
    /// Consecutive 10-second windows of the measured period (the last may be shorter).
    pub windows: Vec<Window>,
    /// The same per minute, for long runs (first minute against last, p99 per minute).
    pub per_minute: Vec<Window>,
    /// `[latency ms, fraction of committed changes at or below it]`, ascending.
    pub latency_cdf: Vec<(f64, f64)>,
    /// How long after their transaction began the e-mails of the load were on disk (an upper bound of
    /// the delay after the commit).
    #[serde(default)]
    pub mail_delay: Option<crate::mail_delay::MailDelay>,
    /// What the strategy let readers see in flight (torn and dirty reads) and left wrong at rest.
    #[serde(default)]
    pub anomalies: Option<crate::anomalies::Anomalies>,
    /// The readers' counts (absent without `--readers`).
    #[serde(default)]
    pub reads: Option<crate::readers::Reads>,
    /// The faults injected, as they happened, in seconds into the measured period.
    #[serde(default)]
    pub fault_events: Vec<crate::faults::FaultEvent>,
    /// Changes committed in each whole second of the measured period.
    #[serde(default)]
    pub per_second: Vec<u64>,
    /// What was still in flight when the anomalies at rest were counted, if the cluster never went
    /// quiet (then those counts may include changes still being finished or undone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_quiet: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Window {
    /// Start of the window, seconds into the measured period.
    pub t_s: f64,
    pub length_s: f64,
    pub committed_per_s: f64,
    /// `None` when nothing committed in the window.
    pub p99_ms: Option<f64>,
    /// Resident memory (VmRSS) per service when the window closed, MiB.
    pub rss_mib: BTreeMap<String, f64>,
}

/// Many registrations fired at once, to see how the cluster refuses what it cannot take.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Burst {
    pub requests: usize,
    pub committed: u64,
    /// Everything else, by reason or status.
    pub refused: BTreeMap<String, u64>,
    /// From the first request sent to the last answer.
    pub elapsed_s: f64,
    pub p50_ms: f64,
    pub max_ms: f64,
}
