//! A coordinator among several: a standby until elected, then the leader on the etcd log, until its
//! lease is lost.
//!
//! - **Standby**: serves both listeners with [`crate::standby`] (every call `UNAVAILABLE`, naming the
//!   leader) and campaigns.
//! - **Elected**: stops the standby servers, opens the log on etcd fenced with its term, and runs the
//!   same coordinator as `tpc coordinator` with the sled log (`tpc_coordinator::server::run`):
//!   recovery loads every COMMIT without END and every unsent e-mail from etcd and drives them to the
//!   end, then it serves.
//! - **Deposed** (its lease expired: a pause, a partition from etcd): it stops at once and returns
//!   [`HaError::Deposed`]; the process exits, and a restart joins again as a standby. It must not
//!   linger: its view of what is decided is no longer the truth. Its writes could not land anyway
//!   (fenced), and it answers "aborted" to a participant only after etcd confirms it still leads.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tpc_common::Strategy;
use tpc_common::serve::{Listener, Listeners};
use tpc_common::storage::StorageError;
use tpc_coordinator::server::{Config, ServeError};
use tpc_coordinator::service::Leadership;
use tracing::{error, info};

use crate::etcd_log::{EtcdLog, Fence};
use crate::leadership::{Addresses, Election, Leader};
use crate::standby::{self, Standby};

const PUBLIC: &str = <standby::Public as standby::Listener>::SERVICE;
const INTERNAL: &str = <standby::Internal as standby::Listener>::SERVICE;

#[derive(Debug, Clone)]
pub struct HaConfig {
    /// etcd's client URLs.
    pub endpoints: Vec<String>,
    /// Every key of this coordinator group starts with it (`/tpc/` by default): several groups can
    /// share one etcd.
    pub prefix: String,
    /// Where this coordinator serves, as the others will name it.
    pub me: Addresses,
    /// How long the leader's lease lasts without a keep-alive: the time a standby waits before it
    /// takes over from a leader that died.
    pub lease_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("the log on etcd: {0}")]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot listen: {0}")]
    Listen(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] tpc_common::tls::TlsError),
    #[error("a task of the coordinator failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error(
        "this coordinator lost its leadership (its etcd lease expired) and stopped; start it again and it joins as a standby"
    )]
    Deposed,
    #[error("the log on etcd runs the 2pc strategy only")]
    Strategy,
}

/// Runs a coordinator of the group on `listeners` until `shutdown` completes or it is deposed.
pub async fn run(
    mut config: Config,
    ha: HaConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), HaError> {
    if config.strategy != Strategy::TwoPc {
        return Err(HaError::Strategy);
    }
    let addrs = (
        listeners.public.local_addr()?,
        listeners.internal.local_addr()?,
    );
    let election =
        Election::connect(&ha.endpoints, &ha.prefix, ha.me.clone(), ha.lease_ttl).await?;
    let (seen, leader) = watch::channel(election.leader().await);
    let (stop_standby, standby_stopped) = tokio::sync::oneshot::channel::<()>();
    let standby = tokio::spawn(serve_standby(
        config.clone(),
        leader,
        listeners,
        standby_stopped,
    ));
    info!(endpoints = ?ha.endpoints, "standby: campaigning to lead the coordinators");
    tokio::pin!(shutdown);
    let elected = tokio::select! {
        elected = election.campaign(&seen) => elected,
        () = &mut shutdown => {
            let _ = stop_standby.send(());
            let _ = standby.await;
            return Ok(());
        }
    };
    let _ = stop_standby.send(());
    match standby.await {
        Ok(served) => served?,
        Err(e) => return Err(HaError::Task(e)),
    }

    let endpoints = ha.endpoints.clone();
    let (prefix, fence) = (ha.prefix.clone(), elected.fence.clone());
    let log =
        tokio::task::spawn_blocking(move || EtcdLog::open(&endpoints, &prefix, fence)).await??;
    config.storage = Some(Arc::new(log));
    config.leadership = Some(Arc::new(Fenced {
        election,
        fence: elected.fence,
    }));
    let listeners = Listeners {
        public: rebind(addrs.0).await?,
        internal: rebind(addrs.1).await?,
        ready: None,
    };
    let mut lost = elected.lost;
    let deposed = async move {
        let _ = lost.wait_for(|lost| *lost).await;
    };
    info!("leader: recovering from the log on etcd, then serving");
    tokio::select! {
        served = tpc_coordinator::server::run(config, listeners, shutdown) => Ok(served?),
        () = deposed => {
            error!("lost the leadership: stopping at once");
            Err(HaError::Deposed)
        }
    }
}

/// The standby's servers on `listeners`, until `stop`.
async fn serve_standby(
    config: Config,
    leader: watch::Receiver<Leader>,
    listeners: Listeners,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), HaError> {
    let public_tls = config
        .public_tls
        .as_ref()
        .map(tpc_common::tls::PublicTls::server)
        .transpose()?;
    let (public, health) = tpc_common::serve::router_with_health(&[PUBLIC], public_tls).await?;
    health
        .set_service_status(PUBLIC, tonic_health::ServingStatus::NotServing)
        .await;
    let public = public.add_service(Standby::<standby::Public>::new(leader.clone()));
    let internal = tpc_common::serve::router(&[INTERNAL], config.internal.server()).await?;
    let internal = internal.add_service(Standby::<standby::Internal>::new(leader));
    tpc_common::serve::run_both(public, internal, listeners, async {
        let _ = stop.await;
    })
    .await?;
    Ok(())
}

/// The same address again, once the standby let it go.
async fn rebind(addr: SocketAddr) -> std::io::Result<Listener> {
    Ok(tokio::net::TcpListener::bind(addr).await?.into())
}

/// The leader's fence, checked against etcd (a linearizable read) when asked.
struct Fenced {
    election: Election,
    fence: Fence,
}

impl Leadership for Fenced {
    fn still_leading(&self) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            tokio::time::timeout(Duration::from_secs(2), self.election.term())
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                == Some(self.fence.create_revision)
        })
    }
}
