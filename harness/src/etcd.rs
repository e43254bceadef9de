//! A real etcd cluster on loopback, for the coordinators' high availability: members started from the
//! `etcd` binary (Debian's `etcd-server`), each in a data directory of its own, killable one by one.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::cluster::free_port;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

pub struct EtcdCluster {
    dir: PathBuf,
    members: Vec<Member>,
}

/// The `etcd` binary: `$TPC_ETCD`, or `etcd` on the `PATH`.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("TPC_ETCD").map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
}

/// Whether an `etcd` binary is there to run.
pub fn etcd_available() -> bool {
    std::process::Command::new(etcd_binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl EtcdCluster {
    /// Starts `size` members under `dir` and waits until the cluster answers.
    pub async fn start(dir: &Path, size: usize) -> Result<Self, BoxError> {
        std::fs::create_dir_all(dir)?;
        let mut members = Vec::new();
        for i in 0..size {
            members.push(Member {
                name: format!("etcd{i}"),
                client_port: free_port()?,
                peer_port: free_port()?,
                child: None,
            });
        }
        let mut cluster = Self {
            dir: dir.to_owned(),
            members,
        };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy(Duration::from_secs(20)).await?;
        Ok(cluster)
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    fn spawn(&mut self, i: usize) -> Result<(), BoxError> {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let data = self.dir.join(&self.members[i].name);
        let state = if data.exists() { "existing" } else { "new" };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", self.members[i].name)))?;
        let member = &mut self.members[i];
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let child = Command::new(etcd_binary())
            .args([
                "--name",
                &member.name,
                "--data-dir",
                &data.display().to_string(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &initial_cluster,
                "--initial-cluster-state",
                state,
                "--initial-cluster-token",
                "tpc-test",
                // Loopback: a member notices a dead leader within half a second.
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                // Every change writes a few revisions: keep only the last 10,000, or etcd's space
                // quota fills up and refuses every write (docs/high-availability.md).
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "10000",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()?;
        member.child = Some(child);
        Ok(())
    }

    /// `kill -9` of member `i`.
    pub async fn kill(&mut self, i: usize) -> Result<(), BoxError> {
        if let Some(mut child) = self.members[i].child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) -> Result<(), BoxError> {
        self.spawn(i)
    }

    /// SIGSTOP of member `i`: it neither sends nor answers, as if cut off from the others and from
    /// every client.
    pub fn pause(&self, i: usize) -> Result<(), BoxError> {
        self.signal(i, libc::SIGSTOP)
    }

    /// SIGCONT of member `i`.
    pub fn resume(&self, i: usize) -> Result<(), BoxError> {
        self.signal(i, libc::SIGCONT)
    }

    fn signal(&self, i: usize, signal: libc::c_int) -> Result<(), BoxError> {
        match self.members[i].child.as_ref().and_then(Child::id) {
            Some(pid) => Ok(crate::cluster::signal(pid, signal)?),
            None => Ok(()),
        }
    }

    /// `kill -9` of every member at once.
    pub async fn kill_all(&mut self) -> Result<(), BoxError> {
        for i in 0..self.members.len() {
            self.kill(i).await?;
        }
        Ok(())
    }

    /// Starts again every member that is not running.
    pub fn restart_stopped(&mut self) -> Result<(), BoxError> {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i)?;
            }
        }
        Ok(())
    }

    /// Waits until a write through every running member succeeds (a quorum is up and has a leader).
    pub async fn wait_healthy(&mut self, within: Duration) -> Result<(), BoxError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let mut healthy = true;
            for (i, member) in self.members.iter_mut().enumerate() {
                let Some(child) = member.child.as_mut() else {
                    continue;
                };
                if let Some(status) = child.try_wait()? {
                    return Err(format!(
                        "etcd member {i} exited: {status} (see {})",
                        self.dir.join(format!("{}.log", member.name)).display()
                    )
                    .into());
                }
                healthy &= put_through(member.client_port).await;
            }
            if healthy {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("etcd did not become healthy within {within:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether a write through this member's client port succeeds: etcd's gateway speaks HTTP/JSON.
async fn put_through(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"key":"dHBjLWhlYWx0aA==","value":"b2s="}"#;
    let request = format!(
        "POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        std::io::Result::Ok(answer.starts_with("HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}
