//! TLS for tpc's listeners and the calls between its services.
//!
//! Every service has two listeners. The internal one carries the protocol (Prepare, Commit, Abort,
//! QueryDecision…) and the admin calls; with a certificate directory it requires mutual TLS, and each
//! call is allowed only to the identities that need it ([`Internal::authorize`]), so holding a
//! participant's key does not let anyone Commit, and reaching the port without a cluster certificate
//! does nothing at all. The public listener carries what clients use, with optional server TLS.
//!
//! A certificate directory holds `ca.pem` (the cluster's CA) and `<name>.pem` + `<name>.key` per
//! [`Principal`]; `tpc certs` makes one for development.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use crate::principal::Principal;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "refusing to serve the internal RPCs (Prepare, Commit, QueryDecision, …) on {addr} without TLS: \
         give --certs DIR (make one with `tpc certs --out DIR`), or --insecure-internal if the network \
         already admits only the cluster's services"
    )]
    Exposed { addr: SocketAddr },
    #[error("{url}: the internal listeners of this cluster use TLS; use an https:// URL")]
    PlaintextUrl { url: String },
    #[error("{url}: an https:// URL needs the cluster's certificates (--certs DIR)")]
    NoCredentials { url: String },
    #[error("bad URL {url}: {cause}")]
    Url { url: String, cause: String },
}

/// A service's own certificate and key, and the CA every cluster certificate is signed by.
#[derive(Clone)]
pub struct Credentials {
    ca: Certificate,
    identity: Identity,
    me: Principal,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Credentials").field("me", &self.me).finish()
    }
}

impl Credentials {
    /// Reads `ca.pem`, `<me>.pem` and `<me>.key` from `dir`.
    pub fn load(dir: &Path, me: Principal) -> Result<Self, TlsError> {
        let read = |name: String| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|cause| TlsError::Read { path, cause })
        };
        Ok(Self {
            ca: Certificate::from_pem(read("ca.pem".into())?),
            identity: Identity::from_pem(
                read(format!("{}.pem", me.file_stem()))?,
                read(format!("{}.key", me.file_stem()))?,
            ),
            me,
        })
    }

    pub fn principal(&self) -> Principal {
        self.me
    }

    /// The internal listener: this service's certificate, and a client certificate from the cluster's
    /// CA required of every caller.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// Calls to `peer`: its certificate must name it, and this service presents its own.
    pub fn client(&self, peer: Principal) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(peer.dns_name())
            .timeout(HANDSHAKE_TIMEOUT)
    }
}

/// A handshake that has not finished by then is a stalled or hostile peer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the internal listener and the calls to other services' internal listeners are protected.
#[derive(Debug, Clone)]
pub enum Internal {
    /// Mutual TLS; each call is allowed to the certificates [`Internal::authorize`] names.
    Mutual(Credentials),
    /// Plain h2c and every caller trusted: only on loopback, or when asked for explicitly.
    Insecure,
}

impl Internal {
    /// The protection for an internal listener on `addr`: mutual TLS with `certs`; without them,
    /// plaintext only on loopback or with the explicit `insecure` opt-out.
    pub fn choose(
        certs: Option<&Path>,
        me: Principal,
        insecure: bool,
        addr: SocketAddr,
    ) -> Result<Self, TlsError> {
        match certs {
            Some(dir) => Ok(Internal::Mutual(Credentials::load(dir, me)?)),
            None if insecure || addr.ip().is_loopback() => Ok(Internal::Insecure),
            None => Err(TlsError::Exposed { addr }),
        }
    }

    /// The listener's TLS, if any.
    pub fn server(&self) -> Option<ServerTlsConfig> {
        match self {
            Internal::Mutual(credentials) => Some(credentials.server()),
            Internal::Insecure => None,
        }
    }

    /// An endpoint for `url`, the internal listener of `peer`: TLS exactly when the URL says
    /// `https://`, and a plaintext URL refused when this cluster uses TLS (it could only fail later,
    /// less clearly).
    pub fn endpoint(&self, url: &str, peer: Principal) -> Result<Endpoint, TlsError> {
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| TlsError::Url {
            url: url.to_owned(),
            cause: e.to_string(),
        })?;
        let https = url.starts_with("https://");
        match (self, https) {
            (Internal::Mutual(credentials), true) => endpoint
                .tls_config(credentials.client(peer))
                .map_err(|e| TlsError::Url {
                    url: url.to_owned(),
                    cause: e.to_string(),
                }),
            (Internal::Mutual(_), false) => Err(TlsError::PlaintextUrl {
                url: url.to_owned(),
            }),
            (Internal::Insecure, true) => Err(TlsError::NoCredentials {
                url: url.to_owned(),
            }),
            (Internal::Insecure, false) => Ok(endpoint),
        }
    }

    /// Lets the call through if its client certificate names one of `allowed`. Without TLS every
    /// caller is trusted: that is what `Insecure` means.
    pub fn authorize<T>(&self, request: &Request<T>, allowed: &[Principal]) -> Result<(), Status> {
        if let Internal::Insecure = self {
            return Ok(());
        }
        let caller = request
            .peer_certs()
            .and_then(|chain| chain.first().and_then(Principal::of_certificate));
        match caller {
            Some(caller) if allowed.contains(&caller) => Ok(()),
            Some(caller) => Err(Status::permission_denied(format!(
                "this call is for {} only; the caller's certificate is {caller}'s",
                names(allowed)
            ))),
            None => Err(Status::permission_denied(format!(
                "this call is for {} only; the caller's certificate names no tpc service",
                names(allowed)
            ))),
        }
    }
}

fn names(allowed: &[Principal]) -> String {
    allowed
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Server TLS for a public listener: a certificate chain and its key, in PEM files.
#[derive(Debug, Clone)]
pub struct PublicTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl PublicTls {
    pub fn server(&self) -> Result<ServerTlsConfig, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|cause| TlsError::Read {
                path: path.to_owned(),
                cause,
            })
        };
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?))
            .timeout(HANDSHAKE_TIMEOUT))
    }
}

/// A client's TLS for a public `https://` URL: verified against `ca`, or webpki's roots without one.
pub fn public_client(ca: Option<&Path>) -> Result<ClientTlsConfig, TlsError> {
    Ok(match ca {
        Some(path) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
            std::fs::read(path).map_err(|cause| TlsError::Read {
                path: path.to_owned(),
                cause,
            })?,
        )),
        None => ClientTlsConfig::new().with_webpki_roots(),
    })
}
