//! Wiring of one participant process: store, node, background clock, gRPC services.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tpc_common::Principal;
use tpc_common::guard::{Guard, GuardConfig};
use tpc_common::serve::Listeners;
use tpc_common::tls::{Internal, PublicTls, TlsError};
use tpc_proto::v1::history_reader_server::HistoryReaderServer;
use tpc_proto::v1::participant_server::ParticipantServer;
use tpc_proto::v1::password_reader_server::PasswordReaderServer;
use tpc_proto::{MAX_BATCH_MESSAGE_BYTES, MAX_MESSAGE_BYTES};
use tracing::{error, info, warn};

use crate::api::{HistoryApi, ParticipantApi, PasswordApi};
use crate::engine;
use crate::hashing::{Cost, Hasher};
use crate::history::Histories;
use crate::node::Node;
use crate::password::Passwords;
use crate::resource::Resource;
use crate::store::{Store, StoreError};
use crate::witness::Witness;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Password,
    History,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub role: Role,
    pub data_dir: PathBuf,
    /// The coordinator's URL, for `QueryDecision`; several, comma-separated, when the coordinators run
    /// with a leader elected on etcd (a standby answers `UNAVAILABLE`, and the next is asked).
    pub coordinator: String,
    pub cost: Cost,
    /// History only: how many recent passwords are refused.
    pub history_depth: usize,
    /// History only: how many changes per user are kept for listing.
    pub history_keep: usize,
    /// How long a read waits for a user's in-doubt transaction before `UNAVAILABLE`.
    pub read_wait: Duration,
    pub engine: engine::Config,
    /// The store's page cache, in MiB.
    pub cache_mib: u64,
    /// Throttling of password guesses (`VerifyPassword`).
    pub guard: GuardConfig,
    /// How the internal listener (the protocol) and the calls to the coordinator are protected.
    pub internal: Internal,
    /// Server TLS on the public listener (the readers), if any.
    pub public_tls: Option<PublicTls>,
    /// The operator accepts that this store lost acknowledged data (deleted, damaged, restored from
    /// an old backup): the coordinator is told to start again from it.
    pub accept_data_loss: bool,
    /// How the coordinator is reached (TCP, or a test's network).
    pub dialer: tpc_common::dial::Dialer,
    /// A test's storage for the store, instead of sled under `data_dir` (the witness stays a file there).
    pub storage: Option<tpc_common::storage::Db>,
}

impl Config {
    pub fn new(role: Role, data_dir: PathBuf, coordinator: String) -> Self {
        Self {
            role,
            data_dir,
            coordinator,
            cost: Cost::Owasp,
            history_depth: crate::history::DEFAULT_DEPTH,
            history_keep: crate::history::DEFAULT_KEEP,
            read_wait: Duration::from_secs(3),
            engine: engine::Config::default(),
            cache_mib: tpc_common::DEFAULT_CACHE_MIB,
            guard: GuardConfig::default(),
            internal: Internal::Insecure,
            public_tls: None,
            accept_data_loss: false,
            dialer: Default::default(),
            storage: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the store's witness: {0}")]
    Witness(std::io::Error),
}

/// Serves the participant until `shutdown` completes: the readers on the public listener, the protocol on
/// the internal one.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| StoreError::Storage(sled::Error::Io(e).into()))?;
    let coordinators = config
        .coordinator
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            Ok(config.dialer.connect_lazy(
                config
                    .internal
                    .endpoint(url, Principal::Coordinator)?
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(Duration::from_secs(2))
                    .http2_keep_alive_interval(Duration::from_secs(1))
                    .keep_alive_timeout(Duration::from_secs(1))
                    .keep_alive_while_idle(true),
            ))
        })
        .collect::<Result<Vec<_>, ServeError>>()?;
    let hasher = Hasher::new(config.cost);
    let public_tls = config
        .public_tls
        .as_ref()
        .map(PublicTls::server)
        .transpose()?;
    let addr = listeners.public.local_addr().ok();
    let internal_addr = listeners.internal.local_addr().ok();
    let (internal, internal_health) =
        tpc_common::serve::router_with_health(&[PARTICIPANT], config.internal.server()).await?;
    let (public, internal, clock) = match config.role {
        Role::Password => {
            let node = open(Passwords::new(hasher), &config, coordinators)?;
            let (public, public_health) =
                tpc_common::serve::router_with_health(&[PASSWORD_READER], public_tls).await?;
            if node.lost().is_some() {
                not_serving(&internal_health, &[PARTICIPANT, PASSWORD_READER]).await;
                not_serving(&public_health, &[PASSWORD_READER]).await;
            }
            let reader = || {
                PasswordReaderServer::new(PasswordApi(
                    node.clone(),
                    Arc::new(Guard::new(config.guard)),
                ))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
            };
            let public = public.add_service(reader());
            // The events strategy's coordinator looks up e-mail addresses over its own link.
            let internal = internal
                .add_service(participant_server(node.clone(), &config))
                .add_service(reader());
            tokio::spawn(node.clone().collect_barriers_forever());
            (public, internal, tokio::spawn(node.tick_forever(TICK)))
        }
        Role::History => {
            let histories = Histories {
                hasher,
                depth: config.history_depth,
                keep: config.history_keep,
            };
            let node = open(histories, &config, coordinators)?;
            let (public, public_health) =
                tpc_common::serve::router_with_health(&[HISTORY_READER], public_tls).await?;
            if node.lost().is_some() {
                not_serving(&internal_health, &[PARTICIPANT]).await;
                not_serving(&public_health, &[HISTORY_READER]).await;
            }
            let public = public.add_service(
                HistoryReaderServer::new(HistoryApi(node.clone()))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            );
            let internal = internal.add_service(participant_server(node.clone(), &config));
            tokio::spawn(node.clone().collect_barriers_forever());
            (public, internal, tokio::spawn(node.tick_forever(TICK)))
        }
    };
    info!(
        ?addr,
        ?internal_addr,
        mutual_tls = matches!(config.internal, Internal::Mutual(_)),
        role = ?config.role,
        data_dir = %config.data_dir.display(),
        "participant listening"
    );
    let served = tpc_common::serve::run_both(public, internal, listeners, shutdown).await;
    clock.abort();
    served?;
    info!("participant stopped");
    Ok(())
}

const PARTICIPANT: &str = "tpc.v1.Participant";
const PASSWORD_READER: &str = "tpc.v1.PasswordReader";
const HISTORY_READER: &str = "tpc.v1.HistoryReader";

/// Health says NOT_SERVING for `services` and the whole server: a store that lost acknowledged changes
/// must not be load-balanced to.
async fn not_serving(health: &tonic_health::server::HealthReporter, services: &[&str]) {
    for service in services.iter().chain(&[""]) {
        health
            .set_service_status(*service, tonic_health::ServingStatus::NotServing)
            .await;
    }
}

/// How often the engine's clock ticks: in-doubt transactions are asked about within this of a restart.
const TICK: Duration = Duration::from_millis(100);

/// Opens the store and checks it against its witness: a store that lost acknowledged changes makes a
/// node that refuses everything (`witness.rs`).
fn open<R: Resource>(
    resource: R,
    config: &Config,
    coordinators: Vec<tonic::transport::Channel>,
) -> Result<Arc<Node<R>>, ServeError> {
    let store = match &config.storage {
        Some(db) => Store::on(db.clone())?,
        None => Store::open(&config.data_dir.join(R::NAME), config.cache_mib)?,
    };
    let witness = Witness::new(&config.data_dir, R::NAME);
    let mark = store.mark();
    let lost = match witness.check(R::NAME, &mark).map_err(ServeError::Witness)? {
        Some(reason) if config.accept_data_loss => {
            warn!(participant = R::NAME, %reason, "serving the store as it is: an operator accepted the loss (--accept-data-loss)");
            None
        }
        Some(reason) => {
            error!(
                participant = R::NAME,
                %reason,
                witness = %witness.path().display(),
                "the store lost acknowledged changes: this participant serves nothing (DATA_LOSS) until an operator repairs it, or restarts it with --accept-data-loss"
            );
            Some(reason)
        }
        None => None,
    };
    if lost.is_none() {
        witness.record(&mark).map_err(ServeError::Witness)?;
    }
    let node = Node::open(
        resource,
        store,
        coordinators,
        config.engine,
        config.read_wait,
        lost,
    )?;
    if node.lost().is_none() {
        tokio::spawn(node.clone().witness_forever(witness));
    }
    Ok(node)
}

fn participant_server<R: Resource>(
    node: Arc<Node<R>>,
    config: &Config,
) -> ParticipantServer<ParticipantApi<R>> {
    ParticipantServer::new(ParticipantApi {
        node,
        access: config.internal.clone(),
        accept_data_loss: config.accept_data_loss,
    })
    .max_decoding_message_size(MAX_BATCH_MESSAGE_BYTES)
}
