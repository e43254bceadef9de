//! Wiring of the coordinator process: log, recovery, runtime, outbox dispatcher, garbage collection,
//! gRPC services.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tpc_common::guard::{Guard, GuardConfig};
use tpc_common::serve::Listeners;
use tpc_common::tls::{Internal, PublicTls, TlsError};
use tpc_common::{Backoff, Now, Strategy, TxnId, now_ms};
use tpc_proto::MAX_MESSAGE_BYTES;
use tpc_proto::v1::password_service_server::PasswordServiceServer;
use tpc_proto::v1::transaction_manager_server::TransactionManagerServer;
use tracing::{info, warn};

use crate::engine::{self, Engine, Event};
use crate::events::{Events, Sealer};
use crate::log::{Log, LogError, SETTLED_MS, TxnRecord};
use crate::mailer::{Mailer, MailerError, SmtpAccess};
use crate::outbox;
use crate::peers::Peers;
use crate::runner::Runner;
use crate::runtime::Coordinator;
use crate::saga::{self, Saga};
use crate::service::Api;

#[derive(Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub password_url: String,
    pub history_url: String,
    /// `smtp://host:port`, `smtps://…` or `smtp://…?tls=required`; without it e-mails are `.eml` files
    /// in `<data-dir>/mail/`.
    pub smtp: Option<String>,
    /// The SMTP relay's CA and AUTH password.
    pub smtp_access: SmtpAccess,
    pub engine: engine::Config,
    /// Finished transactions are kept this long for `tpc txn` and request-id deduplication.
    pub retention: Duration,
    /// The log's page cache, in MiB.
    pub cache_mib: u64,
    /// Two-phase commit, or one of the strategies it is compared with.
    pub strategy: Strategy,
    /// Throttling of password guesses.
    pub guard: GuardConfig,
    /// How the internal listener and the calls to the participants are protected.
    pub internal: Internal,
    /// Server TLS on the public listener, if any.
    pub public_tls: Option<PublicTls>,
    /// How the participants are reached (TCP, or a test's network).
    pub dialer: tpc_common::dial::Dialer,
    /// The log's storage, instead of sled under `data_dir`: a test's memory disk, or etcd (high
    /// availability).
    pub storage: Option<tpc_common::storage::Db>,
    /// Set when this coordinator was elected among several (high availability on etcd).
    pub leadership: Option<Arc<dyn crate::service::Leadership>>,
}

impl Config {
    pub fn new(data_dir: PathBuf, password_url: String, history_url: String) -> Self {
        Self {
            data_dir,
            password_url,
            history_url,
            smtp: None,
            smtp_access: SmtpAccess::default(),
            engine: engine::Config::default(),
            retention: Duration::from_secs(24 * 3600),
            cache_mib: tpc_common::DEFAULT_CACHE_MIB,
            strategy: Strategy::TwoPc,
            guard: GuardConfig::default(),
            internal: Internal::Insecure,
            public_tls: None,
            dialer: Default::default(),
            storage: None,
            leadership: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Mailer(#[from] MailerError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("strategy: {0}")]
    Strategy(String),
}

/// How much longer a call to a participant may take than the prepare deadline. A Prepare still running
/// when the deadline passes is the deadline's to abort ("prepare deadline exceeded", the participant
/// slow): with the call's own timeout equal to the deadline, the two raced under load, and a slow
/// participant was reported as unavailable and counted against its breaker.
const CALL_MARGIN: std::time::Duration = std::time::Duration::from_millis(500);

/// Recovers from the log, then serves until `shutdown` completes: `PasswordService` on the public
/// listener, `TransactionManager` (decisions for the participants, the admin calls) on the internal one.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let log = Arc::new(match &config.storage {
        Some(db) => Log::on(db.clone()),
        None => Log::open(&config.data_dir.join("coordinator"), config.cache_mib)?,
    });
    let log_at_stop = log.clone();
    let mailer = match &config.smtp {
        Some(url) => match &config.dialer {
            tpc_common::dial::Dialer::Tcp => Mailer::smtp(url, &config.smtp_access)?,
            tpc_common::dial::Dialer::Custom(connector) => Mailer::dialed(url, connector.clone())?,
        },
        None => Mailer::files(config.data_dir.join("mail"))?,
    };
    let peers = Peers::new(
        &config.dialer,
        &config.internal,
        &config.password_url,
        &config.history_url,
        config.engine.prepare_deadline + CALL_MARGIN,
    )?;
    let public_tls = config
        .public_tls
        .as_ref()
        .map(PublicTls::server)
        .transpose()?;

    check_strategy(&log, config.strategy)?;
    let (outbox, fresh_mail) = tokio::sync::mpsc::unbounded_channel();
    let coordinator = match config.strategy {
        Strategy::TwoPc => Runner::TwoPc(start_two_phase_commit(&config, &log, peers, outbox)?),
        Strategy::Saga => Runner::Saga(Saga::start(
            saga::Engine::new(saga::Config::default()),
            log.clone(),
            peers,
            outbox,
        )?),
        Strategy::Events => {
            let sealer =
                Sealer::open_or_create(&config.data_dir.join("events.key"), !log.has_deliveries()?)
                    .map_err(|e| ServeError::Strategy(e.to_string()))?;
            Runner::Events(Events::start(log.clone(), peers, sealer, outbox)?)
        }
    };

    info!(mailer = %mailer.describe(), "e-mail outbox");
    let dispatcher = tokio::spawn(outbox::dispatch_forever(
        log.clone(),
        mailer,
        fresh_mail,
        Backoff::new(Duration::from_millis(100), Duration::from_secs(1)),
    ));
    let collector = tokio::spawn(tidy_log(log.clone(), coordinator.clone(), config.retention));

    let guard = Arc::new(Guard::new(config.guard));
    let api = || Api {
        coordinator: coordinator.clone(),
        log: log.clone(),
        guard: guard.clone(),
        access: config.internal.clone(),
        leadership: config.leadership.clone(),
    };
    let (public, health) =
        tpc_common::serve::router_with_health(&["tpc.v1.PasswordService"], public_tls).await?;
    let public = public.add_service(
        PasswordServiceServer::new(api()).max_decoding_message_size(MAX_MESSAGE_BYTES),
    );
    if let Runner::TwoPc(two_phase) = &coordinator {
        tokio::spawn(report_health(two_phase.serving(), health));
    }
    let internal =
        tpc_common::serve::router(&["tpc.v1.TransactionManager"], config.internal.server())
            .await?
            .add_service(
                TransactionManagerServer::new(api()).max_decoding_message_size(MAX_MESSAGE_BYTES),
            );
    info!(
        addr = ?listeners.public.local_addr().ok(),
        internal_addr = ?listeners.internal.local_addr().ok(),
        mutual_tls = matches!(config.internal, Internal::Mutual(_)),
        data_dir = %config.data_dir.display(),
        "coordinator listening"
    );
    let served = tpc_common::serve::run_both(public, internal, listeners, shutdown).await;
    dispatcher.abort();
    collector.abort();
    if let Err(e) = log_at_stop.sync().await {
        warn!(cause = %e, "the log's last unforced writes may be lost");
    }
    info!("coordinator stopped");
    Ok(served?)
}

/// `PasswordService` is NOT_SERVING while a participant's store is lost (every change would abort), so
/// load balancers and operators' checks see it; SERVING again once an operator accepted the loss.
async fn report_health(
    mut serving: tokio::sync::watch::Receiver<bool>,
    health: tonic_health::server::HealthReporter,
) {
    loop {
        let status = if *serving.borrow_and_update() {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        health
            .set_service_status("tpc.v1.PasswordService", status)
            .await;
        if serving.changed().await.is_err() {
            return;
        }
    }
}

/// Recovery of two-phase commit: every COMMIT without END is driven to completion.
fn start_two_phase_commit(
    config: &Config,
    log: &Arc<Log>,
    peers: Peers,
    outbox: tokio::sync::mpsc::UnboundedSender<crate::log::OutboxEntry>,
) -> Result<Coordinator, ServeError> {
    let mut engine = Engine::new(config.engine);
    for (name, id, seq) in log.store_marks()? {
        if let Some(p) = crate::engine::Participant::ALL
            .into_iter()
            .find(|p| p.name() == name)
        {
            engine.remember_store(p, id, seq);
        }
    }
    let committing = log.unfinished_commits()?;
    if !committing.is_empty() {
        info!(target: "tpc::protocol", unfinished = committing.len(), "recovery: resending Commit for transactions committed before the crash");
    }
    let recovered = engine.handle(Event::Recovered { committing }, Now::current());
    Ok(Coordinator::start(
        engine,
        recovered,
        log.clone(),
        peers,
        outbox,
    ))
}

/// A data directory keeps the strategy it was first run with: one strategy's records must never be
/// read as another's (a saga's start is not a COMMIT).
fn check_strategy(log: &Log, strategy: Strategy) -> Result<(), ServeError> {
    match log.strategy()? {
        Some(recorded) if recorded != strategy => Err(ServeError::Strategy(format!(
            "the data directory was written by the {recorded} strategy; run it with --strategy {recorded}, or use another --data-dir"
        ))),
        Some(_) => Ok(()),
        None => Ok(log.set_strategy(strategy)?),
    }
}

/// Keeps the log small, every [`TIDY_EVERY`]: deletes finished transactions older than `retention`
/// (in the archive, then under their own keys) and moves those decided [`SETTLED_MS`] ago into the
/// archive.
///
/// Each pass reads the log from its oldest key in slices, each on the blocking pool: at full load the
/// log holds hundreds of thousands of records, and decoding them all on an async worker stalled prepares
/// and commits past their deadlines at every pass.
async fn tidy_log(log: Arc<Log>, coordinator: Runner, retention: Duration) {
    let mut every = tokio::time::interval(TIDY_EVERY);
    loop {
        every.tick().await;
        let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
        let forget = |collected: Vec<TxnRecord>| {
            for r in collected {
                coordinator.forgotten(r.txn, r.request_id);
            }
        };
        in_slices(&log, "garbage collection", forget, move |log, from| {
            let slice = log.collect_archive_slice(from, cutoff, GC_SLICE)?;
            Ok((slice.collected, slice.resume_after))
        })
        .await;
        in_slices(&log, "garbage collection", forget, move |log, from| {
            let slice = log.collect_garbage_slice(from, cutoff, GC_SLICE)?;
            Ok((slice.collected, slice.resume_after))
        })
        .await;
        let settled = now_ms().saturating_sub(SETTLED_MS);
        in_slices(
            &log,
            "archiving",
            |_| {},
            move |log, from| {
                let slice = log.archive_slice(from, settled, GC_SLICE)?;
                Ok((Vec::new(), slice.resume_after))
            },
        )
        .await;
    }
}

/// Runs `slice` on the blocking pool until it reports no place to resume, handing what each slice
/// collected to `each` as it comes; stops with a warning at a slice that fails (the next pass starts
/// again from the oldest key).
async fn in_slices(
    log: &Arc<Log>,
    what: &'static str,
    mut each: impl FnMut(Vec<TxnRecord>),
    slice: impl Fn(&Log, Option<TxnId>) -> Result<(Vec<TxnRecord>, Option<TxnId>), LogError>
    + Send
    + Sync
    + Copy
    + 'static,
) {
    let mut from = None;
    loop {
        let log = log.clone();
        match tpc_common::blocking::run(move || slice(&log, from)).await {
            Ok(Ok((records, resume))) => {
                each(records);
                match resume {
                    Some(last) => from = Some(last),
                    None => return,
                }
            }
            Ok(Err(e)) => {
                warn!(cause = %e, "{what} failed");
                return;
            }
            Err(_) => {
                warn!("the {what} task failed");
                return;
            }
        }
    }
}

/// How often the log is tidied: often enough that the records under their own keys stay a few
/// seconds' worth beyond [`SETTLED_MS`].
const TIDY_EVERY: Duration = Duration::from_secs(10);

/// Records looked at per slice (a few milliseconds of work).
const GC_SLICE: usize = 1_000;
