//! What the end-to-end and fault tests share: a cluster of real processes with a real SMTP server,
//! and the client calls and checks they make. Each test binary uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use tpc_harness::{Cluster, ClusterOptions, MailServer, Service};
use tpc_proto::v1::{
    GetHistoryRequest, GetUserRequest, RegisterUserRequest, TransactionResult,
    UpdatePasswordRequest, VerifyPasswordRequest, transaction_result,
};

pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub struct Env {
    pub cluster: Cluster,
    pub mail: MailServer,
    _dir: tempfile::TempDir,
}

impl Drop for Env {
    /// A failing test prints what the processes logged.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for service in Service::ALL {
                let log =
                    std::fs::read_to_string(self.cluster.log_file(service)).unwrap_or_default();
                eprintln!("==== {} log ====\n{log}", service.name());
            }
        }
    }
}

pub async fn env() -> Result<Env> {
    env_with(ClusterOptions::default()).await
}

/// A cluster whose coordinator runs `strategy`.
#[allow(dead_code)]
pub async fn env_for(strategy: tpc_common::Strategy) -> Result<Env> {
    env_with(ClusterOptions {
        strategy,
        ..Default::default()
    })
    .await
}

/// A cluster started with `options` (its binary, directory and mail server are filled in).
pub async fn env_with(options: ClusterOptions) -> Result<Env> {
    let dir = tempfile::Builder::new().prefix("tpc-e2e-").tempdir()?;
    let mail = MailServer::start().await?;
    let cluster = Cluster::start(ClusterOptions {
        exe: env!("CARGO_BIN_EXE_tpc").into(),
        dir: dir.path().to_path_buf(),
        smtp: Some(mail.url()),
        ..options
    })
    .await?;
    Ok(Env {
        cluster,
        mail,
        _dir: dir,
    })
}

impl Env {
    pub async fn register(&self, user: &str, password: &str) -> Result<TransactionResult> {
        Ok(self
            .cluster
            .client()
            .await?
            .register_user(RegisterUserRequest {
                user_id: user.into(),
                email: format!("{user}@example.com"),
                password: password.into(),
                request_id: String::new(),
            })
            .await?
            .into_inner())
    }

    pub async fn update(
        &self,
        user: &str,
        current: &str,
        new: &str,
        request_id: &str,
    ) -> Result<TransactionResult> {
        Ok(self
            .cluster
            .client()
            .await?
            .update_password(UpdatePasswordRequest {
                user_id: user.into(),
                current_password: current.into(),
                new_password: new.into(),
                request_id: request_id.into(),
            })
            .await?
            .into_inner())
    }

    /// At rest, `user`'s password was set by `history[0]`, and the history lists exactly `history`,
    /// newest first.
    #[allow(dead_code)]
    pub async fn assert_at_rest(&self, user: &str, history: &[&str]) -> Result {
        converge(self).await;
        assert_eq!(self.version(user).await?, history[0], "{user}'s password");
        assert_eq!(self.history(user).await?, history, "{user}'s history");
        Ok(())
    }

    pub async fn version(&self, user: &str) -> Result<String> {
        Ok(self
            .cluster
            .passwords()
            .await?
            .get_user(GetUserRequest {
                user_id: user.into(),
            })
            .await?
            .into_inner()
            .version)
    }

    /// How a `GetUser` of `user` ends: `Code::Ok` if it answered, else the error's code.
    pub async fn get_user_code(&self, user: &str) -> Result<tonic::Code> {
        let read = self
            .cluster
            .passwords()
            .await?
            .get_user(GetUserRequest {
                user_id: user.into(),
            })
            .await;
        Ok(read.map_or_else(|status| status.code(), |_| tonic::Code::Ok))
    }

    pub async fn history(&self, user: &str) -> Result<Vec<String>> {
        Ok(self
            .cluster
            .histories()
            .await?
            .get_history(GetHistoryRequest {
                user_id: user.into(),
            })
            .await?
            .into_inner()
            .entries
            .into_iter()
            .map(|e| e.txn_id)
            .collect())
    }

    pub async fn verify(&self, user: &str, password: &str) -> Result<bool> {
        Ok(self
            .cluster
            .passwords()
            .await?
            .verify_password(VerifyPasswordRequest {
                user_id: user.into(),
                password: password.into(),
            })
            .await?
            .into_inner()
            .valid)
    }

    /// Waits until the SMTP server holds `n` mails, then a little longer to catch extras.
    pub async fn mails_settle(&self, n: usize) -> Vec<tpc_harness::Mail> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.mail.mails().len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.mail.mails()
    }
}

/// A client of the coordinator's public listener calling from `127.0.0.<last>`: the throttle and the
/// per-address limits key on it.
pub async fn client_from(
    env: &Env,
    last: u8,
) -> Result<tpc_proto::v1::password_service_client::PasswordServiceClient<tonic::transport::Channel>>
{
    let channel = tonic::transport::Endpoint::from_shared(env.cluster.url(Service::Coordinator))?
        .local_address(Some(std::net::IpAddr::from([127, 0, 0, last])))
        .connect()
        .await?;
    Ok(tpc_proto::v1::password_service_client::PasswordServiceClient::new(channel))
}

pub fn committed(r: &TransactionResult) -> bool {
    r.outcome() == transaction_result::Outcome::Committed
}

pub fn message_id(txn: &str) -> String {
    format!("<{txn}@tpc.local>")
}

/// Fails if any file under `dir` contains one of `secrets`.
pub fn assert_no_plaintext(dir: &Path, secrets: &[&str]) {
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
            continue;
        }
        files += 1;
        let bytes = std::fs::read(&path).unwrap();
        for secret in secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "plaintext password found in {}",
                path.display()
            );
        }
    }
    assert!(
        files > 3,
        "expected data, logs and mail under {}",
        dir.display()
    );
}

/// The cluster has nothing in flight (10 s at most), or the test fails saying what still is.
pub async fn converge(env: &Env) {
    if let Err(what) = env.cluster.quiesce(Duration::from_secs(10)).await {
        panic!("the cluster did not converge: {what}");
    }
}

/// A fresh transaction id, as the coordinator would make it (participants refuse to prepare old ones).
pub fn uuid_like() -> String {
    tpc_common::TxnId::generate().to_string()
}
