//! Runs tpc the way it runs in production, to test it from outside: each service a separate OS process
//! on its own loopback port and data directory, a real SMTP server receiving the e-mail, and the
//! means to break things: `kill -9`, restart, SIGSTOP, and a TCP fault proxy on every link between the
//! coordinator and the participants (latency, dropped connections, partitions, one-way partitions).

pub mod chaos;
pub mod checker;
mod cluster;
pub mod etcd;
pub mod ha;
pub mod history;
mod mail_server;
mod output;
mod proxy;

pub use cluster::{Cluster, ClusterOptions, LINKS, Service};
pub use mail_server::{
    BUSY_MAILBOX, Inbox, Mail, MailSecurity, MailServer, REFUSED_MAILBOX, plain_session,
};
pub use output::fresh_output_dir;
pub use proxy::{FaultProxy, LinkFaults};
