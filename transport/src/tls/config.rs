//! Ready-made rustls configurations (ring provider, TLS 1.3 and 1.2) and self-signed certificates.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::{Pin, PinnedServerVerifier};

/// The crypto provider every helper here uses: rustls's `ring` provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration that accepts exactly the server certificate `pin` names (see
/// [`PinnedServerVerifier`]) and presents no client certificate.
pub fn client_config_pinned(pin: Pin) -> ClientConfig {
    let provider = provider();
    let verifier = Arc::new(PinnedServerVerifier::new(pin, provider.clone()));
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth()
}

/// A client configuration with ordinary WebPKI verification: the server's chain must lead to one of `roots`
/// and name the server name given to [`TlsCellStream::connect`](super::TlsCellStream::connect).
pub fn client_config_webpki(roots: RootCertStore) -> ClientConfig {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A server configuration presenting `cert` (a single self-signed or end-entity certificate) with its private
/// key `key`, and asking for no client certificate.
///
/// Fails if the key is malformed or does not belong to the certificate.
pub fn server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
}

/// A fresh self-signed certificate for the DNS names or IP addresses `names`, with its new ECDSA P-256 private
/// key (PKCS#8). For tests and demos, and for relays whose clients pin the certificate.
pub fn self_signed(names: &[&str]) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), rcgen::Error> {
    let names: Vec<String> = names.iter().map(|&n| n.to_owned()).collect();
    let certified = rcgen::generate_simple_self_signed(names)?;
    let key = PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
    Ok((certified.cert.der().clone(), key.into()))
}
