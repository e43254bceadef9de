//! Development certificates: a fresh CA and one certificate per [`Principal`], plus one for the public
//! listeners, written as a certificate directory (see [`crate::tls`]).
//!
//! The CA's key is never written: nothing more can be signed with it once the directory exists, so a
//! stolen directory does not let anyone mint a coordinator. Real deployments issue from their own CA
//! with the same names (docs/security.md).

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::principal::Principal;

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("cannot make certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
}

/// The file stem of the public listeners' certificate.
pub const PUBLIC: &str = "public";

/// How long development certificates are valid.
const VALID_DAYS: i64 = 90;

/// Writes `ca.pem`, `<principal>.pem`/`.key` for every principal, and `public.pem`/`.key` valid for
/// `localhost`, `127.0.0.1`, `::1` and `public_names`. Keys are readable by their owner only.
pub fn issue(dir: &Path, public_names: &[String]) -> Result<(), CertsError> {
    std::fs::create_dir_all(dir).map_err(|cause| CertsError::Write {
        path: dir.to_owned(),
        cause,
    })?;
    let (ca_pem, issuer) = certificate_authority()?;
    write(dir, "ca.pem", ca_pem.as_bytes(), false)?;
    for principal in Principal::ALL {
        let (cert, key) = leaf(
            &issuer,
            principal.dns_name(),
            &[principal.dns_name().into()],
        )?;
        write(
            dir,
            &format!("{}.pem", principal.file_stem()),
            cert.as_bytes(),
            false,
        )?;
        write(
            dir,
            &format!("{}.key", principal.file_stem()),
            key.as_bytes(),
            true,
        )?;
    }
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    names.extend(public_names.iter().cloned());
    let (cert, key) = leaf(&issuer, "tpc public", &names)?;
    write(dir, &format!("{PUBLIC}.pem"), cert.as_bytes(), false)?;
    write(dir, &format!("{PUBLIC}.key"), key.as_bytes(), true)?;
    Ok(())
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks a little behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(VALID_DAYS);
}

fn certificate_authority() -> Result<(String, Issuer<'static, KeyPair>), CertsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "tpc development CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

/// A certificate for both ends of a connection: the internal services are each other's clients.
fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    common_name: &str,
    names: &[String],
) -> Result<(String, String), CertsError> {
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut params);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn write(dir: &Path, name: &str, bytes: &[u8], secret: bool) -> Result<(), CertsError> {
    let path = dir.join(name);
    // A file left from an earlier run keeps its mode when truncated: start afresh.
    let _ = std::fs::remove_file(&path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    options
        .open(&path)
        .and_then(|mut file| file.write_all(bytes))
        .map_err(|cause| CertsError::Write { path, cause })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn each_certificate_names_its_principal_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("tpc-certs-{}", uuid::Uuid::now_v7()));
        issue(&dir, &[]).unwrap();
        for principal in Principal::ALL {
            let der =
                CertificateDer::from_pem_file(dir.join(format!("{}.pem", principal.file_stem())))
                    .unwrap();
            assert_eq!(Principal::of_certificate(&der), Some(principal));
        }
        let public = CertificateDer::from_pem_file(dir.join("public.pem")).unwrap();
        assert_eq!(Principal::of_certificate(&public), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("coordinator.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "a key must not be readable by others");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
