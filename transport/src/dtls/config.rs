//! Settings of a DTLS endpoint: its identity, the protocol versions it
//! speaks, and its handshake timers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::error::DtlsError;

/// A certificate and its private key, both DER: what a DTLS endpoint proves
/// itself with. Peers pin the certificate (or its public key) with a
/// [`Pin`](crate::tls::Pin); no CA is involved.
#[derive(Clone)]
pub struct DtlsIdentity {
    /// The end-entity certificate, DER. ECDSA P-256 or P-384 (the curves
    /// DTLS peers commonly share; RSA is not offered).
    pub certificate: Vec<u8>,
    /// Its private key, PKCS#8 or SEC1 DER.
    pub private_key: Vec<u8>,
}

impl DtlsIdentity {
    /// A fresh self-signed ECDSA P-256 identity, for demos, tests and peers
    /// that pin each other.
    pub fn self_signed(name: &str) -> Result<Self, DtlsError> {
        let (cert, key) =
            crate::tls::self_signed(&[name]).map_err(|e| DtlsError::Config(format!("self-signed certificate: {e}")))?;
        Ok(Self { certificate: cert.as_ref().to_vec(), private_key: key.secret_der().to_vec() })
    }

    /// The certificate-SHA-256 pin of this identity, as a peer configures it.
    pub fn pin(&self) -> crate::tls::Pin {
        crate::tls::Pin::cert_sha256(&rustls::pki_types::CertificateDer::from(self.certificate.as_slice()))
    }
}

impl std::fmt::Debug for DtlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsIdentity").field("pin", &self.pin()).finish_non_exhaustive()
    }
}

/// Which DTLS versions an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DtlsVersion {
    /// DTLS 1.2 only (RFC 6347): what OpenSSL 3.0's `-dtls1_2` speaks.
    V1_2,
    /// DTLS 1.3 only (RFC 9147).
    V1_3,
    /// A client offers both and takes what the server picks; a server
    /// answers in the version of the ClientHello. The default.
    #[default]
    Auto,
}

/// Settings of a DTLS endpoint.
#[derive(Debug, Clone)]
pub struct DtlsConfig {
    /// The endpoint's certificate and key.
    pub identity: DtlsIdentity,
    /// Versions spoken.
    pub version: DtlsVersion,
    /// Largest datagram the endpoint builds: handshake messages are
    /// fragmented to fit, and small records share a datagram up to this
    /// size. One application record larger than this travels alone, as large
    /// as its data plus the record overhead.
    pub datagram_mtu: usize,
    /// First retransmission timeout of a handshake flight (doubles on each
    /// retry).
    pub flight_start_rto: Duration,
    /// Retransmissions of one flight before the handshake fails.
    pub flight_retries: usize,
    /// A handshake not finished by then fails.
    pub handshake_timeout: Duration,
    /// A server first answers a ClientHello with a stateless cookie
    /// (HelloVerifyRequest / HelloRetryRequest), so a spoofed source gets
    /// one small reply and no handshake state.
    pub server_cookie: bool,
}

impl DtlsConfig {
    /// Defaults around `identity`: both versions, 1200-byte handshake
    /// datagrams, a 250 ms first retransmission timeout with 8 retries, a
    /// 20 s handshake deadline, cookies on.
    pub fn new(identity: DtlsIdentity) -> Self {
        Self {
            identity,
            version: DtlsVersion::Auto,
            datagram_mtu: 1200,
            flight_start_rto: Duration::from_millis(250),
            flight_retries: 8,
            handshake_timeout: Duration::from_secs(20),
            server_cookie: true,
        }
    }

    /// The same with `version`.
    pub fn version(mut self, version: DtlsVersion) -> Self {
        self.version = version;
        self
    }

    /// The engine configuration, checked. Building one validates the crypto
    /// provider (about 6 ms), so configurations are shared by their
    /// settings across every session and link of the process.
    pub(crate) fn engine_config(&self) -> Result<Arc<dimpl::Config>, DtlsError> {
        type Key = (usize, Duration, usize, Duration, bool);
        static CACHE: Mutex<Vec<(Key, Arc<dimpl::Config>)>> = Mutex::new(Vec::new());
        let key =
            (self.datagram_mtu, self.flight_start_rto, self.flight_retries, self.handshake_timeout, self.server_cookie);
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, config)) = cache.iter().find(|(k, _)| *k == key) {
            return Ok(config.clone());
        }
        let config = self.build_engine_config()?;
        if cache.len() >= 16 {
            cache.remove(0);
        }
        cache.push((key, config.clone()));
        Ok(config)
    }

    fn build_engine_config(&self) -> Result<Arc<dimpl::Config>, DtlsError> {
        let config = dimpl::Config::builder()
            .mtu(self.datagram_mtu)
            .flight_start_rto(self.flight_start_rto)
            .flight_retries(self.flight_retries)
            .handshake_timeout(self.handshake_timeout)
            .use_server_cookie(self.server_cookie)
            .require_client_certificate(true)
            // Records queued before the session drains them: a NIC hands
            // over a whole batch of packets at once.
            .max_queue_tx(256)
            .max_queue_rx(64)
            .build()
            .map_err(|e| DtlsError::Config(e.to_string()))?;
        Ok(Arc::new(config))
    }
}
