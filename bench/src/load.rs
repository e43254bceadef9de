//! The load: closed-loop clients changing their own users' passwords as fast as the cluster answers,
//! and the clock around them that starts measuring after the warm-up and reads the services' CPU and
//! memory at the edges of the measured period.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};
use tpc_harness::Service;
use tpc_proto::v1::UpdatePasswordRequest;
use tpc_proto::v1::password_service_client::PasswordServiceClient;

use crate::faults::SharedProcesses;
use crate::inflight::{Change, Heard, InFlight};
use crate::measure;
use crate::outcome::{self, Outcome};
use crate::recorder::{Recorded, Recorder, WINDOW};
use crate::request_ids::{IdMaker, RequestIds};
use crate::users::Account;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Client tasks per HTTP/2 connection: many clients of a real deployment come through a few
/// connections (a web tier), and one connection per client would measure connection handling.
pub const CLIENTS_PER_CHANNEL: usize = 16;

/// How long a client waits for an answer before it counts the request as refused (outcome unknown).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections to `url` for `clients` clients, established now, so that connecting is not measured.
/// `TCP_NODELAY`: without it Nagle's algorithm against delayed ACKs adds ~40 ms to small requests.
pub async fn channels(url: &str, clients: usize) -> Result<Vec<Channel>, BoxError> {
    let mut channels = Vec::new();
    for _ in 0..clients.div_ceil(CLIENTS_PER_CHANNEL).max(1) {
        let channel = Endpoint::from_shared(url.to_owned())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await?;
        channels.push(channel);
    }
    Ok(channels)
}

/// What the clients do besides changing passwords.
#[derive(Clone, Default)]
pub struct Workload {
    /// Where each change is published while in flight, for the readers (`None` without readers).
    pub board: Option<Arc<InFlight>>,
    /// The fraction of changes that set one of the user's recent passwords again (refused by the
    /// history participant).
    pub reuse_rate: f64,
    /// The form of the request ids the clients send.
    pub request_ids: RequestIds,
}

/// One closed-loop client: changes its users' passwords round-robin, one request at a time.
async fn client(
    id: usize,
    mut accounts: Vec<Account>,
    mut service: PasswordServiceClient<Channel>,
    recorder: Arc<Recorder>,
    workload: Workload,
    stop: Arc<AtomicBool>,
) {
    let mut rng = fastrand::Rng::with_seed(0xc11e_0000 + id as u64);
    let mut ids = IdMaker::new(workload.request_ids, id);
    let mut n = 0u64;
    for turn in 0.. {
        if stop.load(Ordering::Relaxed) || accounts.is_empty() {
            return;
        }
        n += 1;
        let count = accounts.len();
        let account = &mut accounts[turn % count];
        let reused = (workload.reuse_rate > 0.0 && rng.f64() < workload.reuse_rate)
            .then(|| account.reused_password(rng.usize(..)))
            .flatten();
        let new = reused.unwrap_or_else(|| account.next_password());
        let request = UpdatePasswordRequest {
            user_id: account.user.clone(),
            current_password: account.current.clone(),
            new_password: new.clone(),
            request_id: ids.id(n),
        };
        let change = workload.board.as_ref().map(|board| {
            let change = Arc::new(Change::new(
                request.user_id.clone(),
                new.clone(),
                request.request_id.clone(),
            ));
            board.publish(change.clone());
            (board, change)
        });
        let started = Instant::now();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, service.update_password(request)).await;
        let at = Instant::now();
        let outcome =
            answer.map_or_else(|_| outcome::timed_out(REQUEST_TIMEOUT), outcome::classify);
        if let Some((board, change)) = &change {
            let heard = match &outcome {
                Outcome::Committed => Heard::Committed,
                Outcome::Refused { unknown: true, .. } => Heard::Unknown,
                Outcome::Refused { .. } => Heard::Aborted,
            };
            board.answered(change, heard);
        }
        match outcome {
            Outcome::Committed => {
                account.changed_to(new);
                recorder.committed(at, at - started);
            }
            Outcome::Refused {
                reason,
                unknown,
                pushback,
            } => {
                recorder.refused(at, &reason);
                if reason.contains("invalid credentials") {
                    // An earlier change whose answer was lost did commit after all.
                    if let Some(maybe) = account.maybe.take() {
                        account.changed_to(maybe);
                    }
                } else if unknown {
                    account.maybe = Some(new);
                } else {
                    // Refused (a reused password, a conflict): the current password is unchanged.
                }
                if let Some(pause) = pushback {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// What happened between the end of the warm-up and the end of the run.
pub struct LoadOutcome {
    pub recorded: Recorded,
    /// Resident memory per service as each window closed.
    pub window_rss: Vec<BTreeMap<String, f64>>,
    /// CPU seconds per service in the measured period (absent if a process could not be read).
    pub cpu_s: BTreeMap<String, f64>,
    pub loadgen_cpu_s: Option<f64>,
    /// Peak resident memory per service at the end.
    pub peak_rss_mib: BTreeMap<String, f64>,
    pub measured: Duration,
}

/// The three services' process ids, by name.
pub type Pids = Vec<(Service, u32)>;

fn pids(processes: &SharedProcesses) -> Pids {
    processes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pids
        .clone()
}

/// CPU seconds per service: its running process, plus any it replaced after a crash.
fn cpu(processes: &SharedProcesses) -> BTreeMap<String, f64> {
    let (pids, retired) = {
        let procs = processes.lock().unwrap_or_else(|p| p.into_inner());
        (procs.pids.clone(), procs.retired_cpu_s.clone())
    };
    let mut cpu: BTreeMap<String, f64> = pids
        .iter()
        .filter_map(|&(s, pid)| Some((s.name().to_owned(), measure::cpu_seconds(Some(pid))?)))
        .collect();
    for (name, s) in retired {
        *cpu.entry(name).or_default() += s;
    }
    cpu
}

fn memory(processes: &SharedProcesses, key: &str) -> BTreeMap<String, f64> {
    pids(processes)
        .iter()
        .filter_map(|&(s, pid)| Some((s.name().to_owned(), measure::memory_mib(pid, key)?)))
        .collect()
}

/// Runs `accounts.len()` clients from `begun` for `warmup + duration`, measuring the last `duration`.
#[allow(clippy::too_many_arguments)]
pub async fn drive(
    channels: &[Channel],
    accounts: Vec<Vec<Account>>,
    workload: Workload,
    processes: &SharedProcesses,
    begun: Instant,
    warmup: Duration,
    duration: Duration,
    bar: &indicatif::ProgressBar,
) -> LoadOutcome {
    let from = begun + warmup;
    let until = from + duration;
    let recorder = Arc::new(Recorder::new(from, duration));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = accounts
        .into_iter()
        .enumerate()
        .map(|(id, owned)| {
            let service = PasswordServiceClient::new(channels[id % channels.len()].clone());
            tokio::spawn(client(
                id,
                owned,
                service,
                recorder.clone(),
                workload.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let tick = |bar: &indicatif::ProgressBar| {
        let now = Instant::now();
        bar.set_position(now.duration_since(begun).as_secs());
        let measured = now.saturating_duration_since(from).as_secs_f64();
        if measured > 0.0 {
            let committed = recorder.committed.load(Ordering::Relaxed) as f64;
            let refused = recorder.refused.load(Ordering::Relaxed) as f64;
            bar.set_message(format!(
                "{:.0} committed/s, {:.0} refused/s",
                committed / measured,
                refused / measured
            ));
        } else {
            bar.set_message("warming up");
        }
    };
    while Instant::now() < from {
        tick(bar);
        tokio::time::sleep(Duration::from_millis(200).min(from - Instant::now())).await;
    }
    let (cpu_from, self_from) = (cpu(processes), measure::cpu_seconds(None));
    let mut window_rss = Vec::new();
    let mut next_window = from + WINDOW;
    loop {
        let now = Instant::now();
        if now >= next_window.min(until) {
            window_rss.push(memory(processes, "VmRSS"));
            if next_window >= until {
                break;
            }
            next_window += WINDOW;
            continue;
        }
        tick(bar);
        tokio::time::sleep(Duration::from_millis(200).min(next_window.min(until) - now)).await;
    }
    let (cpu_until, self_until) = (cpu(processes), measure::cpu_seconds(None));
    let peak_rss_mib = memory(processes, "VmHWM");
    let measured = Instant::now().duration_since(from).min(duration);
    tick(bar);

    // Let each client finish the request it is in; one the cluster sits on is abandoned.
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let abort = client.abort_handle();
        if tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), client)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    let cpu_s = cpu_until
        .iter()
        .filter_map(|(name, until)| Some((name.clone(), until - cpu_from.get(name)?)))
        .collect();
    LoadOutcome {
        recorded: recorder.finish(),
        window_rss,
        cpu_s,
        loadgen_cpu_s: self_from.zip(self_until).map(|(a, b)| b - a),
        peak_rss_mib,
        measured,
    }
}
