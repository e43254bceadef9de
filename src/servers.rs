//! `tpc up`, `tpc coordinator` and `tpc participant`: thin wrappers that bind sockets and run the
//! services until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tpc_common::Strategy;
use tpc_coordinator::server as coord;
use tpc_participants::hashing::Cost;
use tpc_participants::server::{self as part, Role};

use crate::{Argon2Arg, HistoryLimits, Result, RoleArg, Tuning};

fn cost(arg: Argon2Arg) -> Cost {
    match arg {
        Argon2Arg::Owasp => Cost::Owasp,
        Argon2Arg::Fast => {
            tracing::warn!("argon2 cost 'fast' is INSECURE: use it only for tests and benchmarks");
            Cost::InsecureFast
        }
    }
}

/// Arms the fail points named in `TPC_FAILPOINTS`, if any.
fn fail_points() -> Result<()> {
    tpc_common::fault::setup_from_env().map_err(|e| e.into())
}

async fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}").into())
}

pub async fn coordinator(
    listen: String,
    data_dir: PathBuf,
    password: String,
    history: String,
    smtp: Option<String>,
    strategy: Strategy,
    tuning: Tuning,
) -> Result {
    fail_points()?;
    let listener = bind(&listen).await?;
    let mut config = coord::Config::new(data_dir, password, history);
    config.smtp = smtp;
    config.strategy = strategy;
    config.cache_mib = tuning.cache_mib;
    config.guard = tuning.guard();
    coord::run(config, listener, tpc_common::shutdown::signal()).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn participant(
    role: RoleArg,
    listen: String,
    data_dir: PathBuf,
    coordinator: String,
    argon2: Argon2Arg,
    history: HistoryLimits,
    tuning: Tuning,
) -> Result {
    fail_points()?;
    let listener = bind(&listen).await?;
    let role = match role {
        RoleArg::Password => Role::Password,
        RoleArg::History => Role::History,
    };
    let mut config = part::Config::new(role, data_dir, coordinator);
    config.cost = cost(argon2);
    config.history_depth = history.history_depth.max(1);
    config.history_keep = history.history_keep.max(config.history_depth);
    config.cache_mib = tuning.cache_mib;
    config.guard = tuning.guard();
    part::run(config, listener, tpc_common::shutdown::signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// All three services in one process, on PORT, PORT+1 and PORT+2 of 127.0.0.1.
pub async fn up(
    data_dir: PathBuf,
    port: u16,
    smtp: Option<String>,
    argon2: Argon2Arg,
    strategy: Strategy,
    tuning: Tuning,
) -> Result {
    fail_points()?;
    let addr = |offset: u16| format!("127.0.0.1:{}", port + offset);
    let url = |offset: u16| format!("http://{}", addr(offset));
    let (coord_l, pass_l, hist_l) = (
        bind(&addr(0)).await?,
        bind(&addr(1)).await?,
        bind(&addr(2)).await?,
    );

    let (stop, stopped) = watch::channel(false);
    let until_stopped = || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut coord_config = coord::Config::new(data_dir.clone(), url(1), url(2));
    coord_config.smtp = smtp.clone();
    coord_config.strategy = strategy;
    coord_config.cache_mib = tuning.cache_mib;
    coord_config.guard = tuning.guard();
    let mut pass_config = part::Config::new(Role::Password, data_dir.clone(), url(0));
    pass_config.cost = cost(argon2);
    let mut hist_config = part::Config::new(Role::History, data_dir.clone(), url(0));
    pass_config.cache_mib = tuning.cache_mib;
    pass_config.guard = tuning.guard();
    hist_config.cost = pass_config.cost;
    hist_config.cache_mib = tuning.cache_mib;

    println!("tpc is up (data in {}):", data_dir.display());
    println!(
        "  coordinator           {}  (PasswordService, TransactionManager)",
        url(0)
    );
    println!(
        "  password participant  {}  (Participant, PasswordReader)",
        url(1)
    );
    println!(
        "  history participant   {}  (Participant, HistoryReader)",
        url(2)
    );
    println!(
        "  e-mail                {}",
        smtp.as_deref().map_or_else(
            || format!("{}/mail/*.eml", data_dir.display()),
            str::to_owned
        )
    );
    println!("Press Ctrl-C to stop.");

    let signal = tokio::spawn(async move {
        tpc_common::shutdown::signal().await;
        let _ = stop.send(true);
    });
    // If one service fails, the others are dropped too: half a cluster is no use.
    let boxed = |e: Box<dyn std::error::Error + Send + Sync>| e;
    let served = tokio::try_join!(
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
    );
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
