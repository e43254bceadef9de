//! Runs tpc the way it runs in production, to test it from outside: each service a separate OS process
//! on its own loopback port and data directory, a real SMTP server receiving the e-mail, and the
//! means to break things (`kill -9`, restart).

mod cluster;
mod mail_server;

pub use cluster::{Cluster, ClusterOptions, Service};
pub use mail_server::{Mail, MailServer};
