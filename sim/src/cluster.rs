//! The coordinator, both participants and a mail server as turmoil hosts, each running its real server
//! (the mail server: the harness's SMTP server, keeping what it accepted across its crashes).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use tonic::transport::Channel;
use tpc_common::serve::Listeners;
use tpc_harness::{Inbox, plain_session};
use tpc_participants::hashing::Cost;
use tpc_participants::server::Role;

use crate::disks::Disks;
use crate::network::{dialer, listen};

pub const COORDINATOR: &str = "coordinator";
pub const PASSWORD: &str = "password";
pub const HISTORY: &str = "history";
pub const MAIL: &str = "mail";
/// The mail server listens here.
pub const SMTP_PORT: u16 = 25;
/// Every host listens for clients here …
pub const PUBLIC_PORT: u16 = 50051;
/// … and for the cluster's own calls here.
pub const INTERNAL_PORT: u16 = 50052;

type HostResult = Result<(), Box<dyn std::error::Error>>;

async fn listeners() -> std::io::Result<Listeners> {
    Ok(Listeners {
        public: listen(PUBLIC_PORT).await?,
        internal: listen(INTERNAL_PORT).await?,
        ready: None,
    })
}

fn internal_url(host: &str) -> String {
    format!("http://{host}:{INTERNAL_PORT}")
}

/// The engines' configurations the services run (the production defaults unless a test plants a bug).
#[derive(Debug, Clone, Copy, Default)]
pub struct Engines {
    pub coordinator: tpc_coordinator::engine::Config,
    pub participant: tpc_participants::engine::Config,
}

/// Adds the three services and the mail server to `sim`: the services' logs and stores on `disks` (a
/// host that restarts after a crash finds what its disk kept), the rest of their files (the witness)
/// under `data`, and the e-mails the mail server accepts in `mail`.
pub fn add_services(
    sim: &mut turmoil::Sim<'_>,
    data: &Path,
    disks: &Disks,
    engines: &Engines,
    mail: &Inbox,
) {
    let inbox = mail.clone();
    sim.host(MAIL, move || {
        let inbox = inbox.clone();
        async move {
            let listener =
                turmoil::net::TcpListener::bind((IpAddr::from(Ipv4Addr::UNSPECIFIED), SMTP_PORT))
                    .await?;
            loop {
                let (stream, peer) = listener.accept().await?;
                let inbox = inbox.clone();
                tokio::spawn(async move {
                    let _ = plain_session(stream, peer.ip(), inbox).await;
                });
            }
        }
    });
    let dir = data.join(COORDINATOR);
    let coordinator_disks = disks.clone();
    let coordinator_engine = engines.coordinator;
    sim.host(COORDINATOR, move || {
        let mut config = tpc_coordinator::server::Config::new(
            dir.clone(),
            internal_url(PASSWORD),
            internal_url(HISTORY),
        );
        config.dialer = dialer();
        config.guard = unthrottled();
        config.engine = coordinator_engine;
        config.storage = Some(coordinator_disks.open(COORDINATOR));
        config.smtp = Some(format!("smtp://{MAIL}:{SMTP_PORT}"));
        supervised(async move {
            tpc_coordinator::server::run(config, listeners().await?, std::future::pending())
                .await?;
            HostResult::Ok(())
        })
    });
    for (host, role) in [(PASSWORD, Role::Password), (HISTORY, Role::History)] {
        let dir = data.join(host);
        let disks = disks.clone();
        let engine = engines.participant;
        sim.host(host, move || {
            let mut config =
                tpc_participants::server::Config::new(role, dir.clone(), internal_url(COORDINATOR));
            config.cost = Cost::InsecureFast;
            config.dialer = dialer();
            // Guess throttling counts on the real clock (governor's), which a simulation does not move:
            // off here, so that a seed replays (the real-process tests cover it).
            config.guard = unthrottled();
            config.storage = Some(disks.open(host));
            config.engine = engine;
            supervised(async move {
                tpc_participants::server::run(config, listeners().await?, std::future::pending())
                    .await?;
                HostResult::Ok(())
            })
        });
    }
}

/// Runs a host's server in its own task, so that a server stopping itself on a failed disk
/// ([`tpc_common::simulation::abort`]) leaves the host waiting for the crash the simulator then gives it,
/// instead of failing the whole simulation.
async fn supervised(server: impl std::future::Future<Output = HostResult> + 'static) -> HostResult {
    let server = async move { server.await.map_err(|e| e.to_string()) };
    match tokio::task::spawn_local(server).await {
        Ok(result) => Ok(result?),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            if payload.is::<tpc_common::simulation::Aborted>() {
                std::future::pending().await
            } else {
                std::panic::resume_unwind(payload)
            }
        }
        Err(e) => Err(e.into()),
    }
}

fn unthrottled() -> tpc_common::guard::GuardConfig {
    tpc_common::guard::GuardConfig {
        free_failures: u32::MAX,
        max_backoff: Duration::ZERO,
        per_address_per_s: 0,
    }
}

/// A channel to `host`'s internal listener (the protocol and the admin calls), from a client host.
pub fn internal_channel(host: &str) -> Channel {
    dialer().connect_lazy(
        tonic::transport::Endpoint::from_shared(internal_url(host))
            .expect("a valid URL")
            .timeout(Duration::from_secs(5)),
    )
}

/// A channel to `host`'s public listener, from a client host.
pub fn public_channel(host: &str) -> Channel {
    dialer().connect_lazy(
        tonic::transport::Endpoint::from_shared(format!("http://{host}:{PUBLIC_PORT}"))
            .expect("a valid URL")
            .timeout(Duration::from_secs(5)),
    )
}
