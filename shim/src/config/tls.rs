//! The `[tls]` section: the node's certificate and private key (PEM files), which its multipath responders
//! present. The files are read when the configuration is loaded, so a missing or unreadable file is a
//! configuration error with its line, not a failure at start.

use std::io::Read;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use toml::Spanned;

use super::{Checker, ConfigError};

/// The largest certificate or key file read (a guard against pointing at a device).
const MAX_PEM_FILE: u64 = 1 << 20;

/// The `[tls]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file with the node's certificate (the first certificate in the
    /// file). A relative path is relative to the configuration file's
    /// directory.
    pub certificate: Spanned<PathBuf>,
    /// PEM file with its private key (PKCS#8 `PRIVATE KEY`, PKCS#1
    /// `RSA PRIVATE KEY` or SEC1 `EC PRIVATE KEY`), relative like
    /// `certificate`.
    pub private_key: Spanned<PathBuf>,
}

/// The certificate and key a [`TlsSection`] names, read when the
/// configuration was loaded. `Debug` does not show the key.
#[derive(Debug)]
pub struct TlsIdentity {
    /// The certificate (DER).
    pub certificate: CertificateDer<'static>,
    /// Its private key (DER).
    pub private_key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity { certificate: self.certificate.clone(), private_key: self.private_key.clone_key() }
    }
}

/// Reads and decodes the files `tls` names.
pub(super) fn load_identity(c: &Checker<'_>, tls: &TlsSection) -> Result<TlsIdentity, ConfigError> {
    let read = |value: &Spanned<PathBuf>, key: &str| -> Result<(PathBuf, Vec<u8>), ConfigError> {
        let path = resolve(c.file, value.get_ref());
        read_limited(&path).map(|bytes| (path.clone(), bytes)).map_err(|e| {
            c.error(Some(value.span()), format!("tls.{key}"), format!("cannot read {}: {e}", path.display()))
        })
    };
    let (path, pem) = read(&tls.certificate, "certificate")?;
    let certificate = match CertificateDer::pem_slice_iter(&pem).next() {
        Some(Ok(cert)) => cert,
        Some(Err(e)) => {
            return Err(c.error(
                Some(tls.certificate.span()),
                "tls.certificate",
                format!("{} is not valid PEM: {e}", path.display()),
            ));
        }
        None => {
            return Err(c.error(
                Some(tls.certificate.span()),
                "tls.certificate",
                format!("{} holds no certificate (a PEM block -----BEGIN CERTIFICATE-----)", path.display()),
            ));
        }
    };
    let (path, pem) = read(&tls.private_key, "private_key")?;
    let private_key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let why = match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "holds no private key (a PEM block PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)".to_string()
            }
            other => format!("is not valid PEM: {other}"),
        };
        c.error(Some(tls.private_key.span()), "tls.private_key", format!("{} {why}", path.display()))
    })?;
    Ok(TlsIdentity { certificate, private_key })
}

/// `path`, relative to the configuration file's directory if it is relative.
fn resolve(config_file: &Path, path: &Path) -> PathBuf {
    match config_file.parent() {
        Some(dir) if path.is_relative() && !dir.as_os_str().is_empty() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// A regular file's contents, up to [`MAX_PEM_FILE`].
fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    // Look before opening: opening a FIFO would block.
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    if meta.len() > MAX_PEM_FILE {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "larger than 1 MiB"));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_PEM_FILE).read_to_end(&mut bytes)?;
    Ok(bytes)
}
