//! Who may call an internal RPC: the identities of a tpc cluster, each named in its certificate.
//!
//! A certificate names its holder in a DNS subject-alternative name (`tpc-coordinator`, …), not a host:
//! callers check the name they expect whatever address they dial, so the same certificates work behind
//! proxies, on loopback and across hosts. rustls has already verified the chain against the cluster's
//! CA by the time a name is read here.

use std::fmt;

use rustls_pki_types::{CertificateDer, ServerName};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Principal {
    /// Drives transactions: the only caller of Prepare, Commit, Abort, Apply and Compensate.
    Coordinator,
    /// Asks the coordinator about its in-doubt transactions.
    Password,
    History,
    /// An operator's tools: `tpc txn`, participant status.
    Admin,
}

impl Principal {
    pub const ALL: [Principal; 4] = [
        Principal::Coordinator,
        Principal::Password,
        Principal::History,
        Principal::Admin,
    ];

    /// The file stem of its certificate and key in a certificate directory.
    pub fn file_stem(self) -> &'static str {
        match self {
            Principal::Coordinator => "coordinator",
            Principal::Password => "password",
            Principal::History => "history",
            Principal::Admin => "admin",
        }
    }

    /// The DNS name its certificate carries.
    pub fn dns_name(self) -> &'static str {
        match self {
            Principal::Coordinator => "tpc-coordinator",
            Principal::Password => "tpc-password",
            Principal::History => "tpc-history",
            Principal::Admin => "tpc-admin",
        }
    }

    /// The principal a verified certificate names, if exactly one.
    pub fn of_certificate(der: &CertificateDer<'_>) -> Option<Principal> {
        let cert = webpki::EndEntityCert::try_from(der).ok()?;
        let mut named = Principal::ALL.into_iter().filter(|p| {
            ServerName::try_from(p.dns_name())
                .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
        });
        match (named.next(), named.next()) {
            (Some(one), None) => Some(one),
            // A certificate naming two roles would let one key act as both: refuse it.
            _ => None,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_stem())
    }
}
