//! Peer identity the relay way: accept exactly one pinned end-entity certificate or public key, whatever its
//! name, issuer or dates, and still check that the peer holds its private key.

use std::fmt;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, OtherError, SignatureScheme};
use sha2::{Digest, Sha256};

/// The fingerprint a client expects of the server's end-entity certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pin {
    /// SHA-256 of the whole certificate (DER). Changes whenever the certificate is reissued.
    CertSha256([u8; 32]),
    /// SHA-256 of the certificate's SubjectPublicKeyInfo (DER), as in HPKP: survives reissuing the certificate
    /// for the same key.
    SpkiSha256([u8; 32]),
}

impl Pin {
    /// The [`Pin::CertSha256`] of `cert`.
    pub fn cert_sha256(cert: &CertificateDer<'_>) -> Pin {
        Pin::CertSha256(Sha256::digest(cert.as_ref()).into())
    }

    /// The [`Pin::SpkiSha256`] of `cert`, or `None` if its DER cannot be walked to the SubjectPublicKeyInfo.
    pub fn spki_sha256(cert: &CertificateDer<'_>) -> Option<Pin> {
        spki_of(cert.as_ref()).map(|spki| Pin::SpkiSha256(Sha256::digest(spki).into()))
    }

    /// The fingerprint of `cert` of this pin's kind (`None` if an SPKI pin meets an unparseable certificate).
    fn fingerprint_of(&self, cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
        match self {
            Pin::CertSha256(_) => Some(Sha256::digest(cert.as_ref()).into()),
            Pin::SpkiSha256(_) => spki_of(cert.as_ref()).map(|spki| Sha256::digest(spki).into()),
        }
    }

    /// True if `cert` (DER) has this pin's fingerprint.
    pub fn matches(&self, cert: &[u8]) -> bool {
        self.fingerprint_of(&CertificateDer::from(cert)).is_some_and(|fp| fp == *self.digest())
    }

    /// How `cert` (DER) looks to this pin, for error messages: its fingerprint of this pin's kind, in hex.
    pub(crate) fn describe(&self, cert: &[u8]) -> String {
        match self.fingerprint_of(&CertificateDer::from(cert)) {
            Some(fp) => hex(&fp),
            None => "a certificate whose SubjectPublicKeyInfo could not be parsed".to_owned(),
        }
    }

    fn digest(&self) -> &[u8; 32] {
        match self {
            Pin::CertSha256(d) | Pin::SpkiSha256(d) => d,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Pin::CertSha256(_) => "certificate SHA-256",
            Pin::SpkiSha256(_) => "SPKI SHA-256",
        }
    }
}

/// Lower-case hex, as fingerprints are usually printed.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pin({} {})", self.kind(), hex(self.digest()))
    }
}

/// The server presented a certificate other than the pinned one; the handshake error wraps it.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "certificate does not match the pinned fingerprint: pinned {kind} {pinned}, the server presented {presented}; \
     this is not the peer you pinned, or its certificate changed",
    kind = .pin.kind(), pinned = hex(.pin.digest()), presented = .presented
)]
pub struct PinMismatch {
    /// The pin the client expected.
    pub pin: Pin,
    /// Hex fingerprint (of the pin's kind) of what the server presented, or a note that it could not be parsed.
    pub presented: String,
}

/// A rustls [`ServerCertVerifier`] that accepts exactly the pinned end-entity certificate (ignoring its
/// names, issuer, dates and any intermediates) and verifies the handshake signatures with the crypto
/// provider's algorithms, so the server must hold the pinned certificate's private key.
#[derive(Debug)]
pub struct PinnedServerVerifier {
    pin: Pin,
    provider: Arc<CryptoProvider>,
}

impl PinnedServerVerifier {
    /// A verifier for `pin` that checks signatures with `provider`'s algorithms.
    pub fn new(pin: Pin, provider: Arc<CryptoProvider>) -> Self {
        PinnedServerVerifier { pin, provider }
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.pin.matches(end_entity) {
            return Ok(ServerCertVerified::assertion());
        }
        let mismatch = PinMismatch { pin: self.pin, presented: self.pin.describe(end_entity) };
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(mismatch)))))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// One DER element: tag, the whole element (header included), and its contents.
struct Tlv<'a> {
    tag: u8,
    whole: &'a [u8],
    contents: &'a [u8],
}

/// Splits the first DER element off `der`; `None` on malformed or high-tag-number input.
fn next_tlv(der: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, rest) = der.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    let header = der.len() - rest.len();
    if rest.len() < len {
        return None;
    }
    let tlv = Tlv { tag, whole: &der[..header + len], contents: &rest[..len] };
    Some((tlv, &rest[len..]))
}

/// The SubjectPublicKeyInfo element (DER, header included) of an X.509 certificate (RFC 5280 §4.1):
/// Certificate = SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
/// validity, subject, subjectPublicKeyInfo, ... }, ... }.
fn spki_of(cert: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const VERSION: u8 = 0xa0;
    let (certificate, _) = next_tlv(cert)?;
    let (tbs, _) = next_tlv(certificate.contents)?;
    if certificate.tag != SEQUENCE || tbs.tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs.contents;
    let (first, after) = next_tlv(rest)?;
    if first.tag == VERSION {
        rest = after;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        rest = next_tlv(rest)?.1;
    }
    let (spki, _) = next_tlv(rest)?;
    (spki.tag == SEQUENCE).then_some(spki.whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walker_rejects_garbage() {
        assert!(spki_of(&[]).is_none());
        assert!(spki_of(&[0x30, 0x82, 0xff]).is_none());
        assert!(spki_of(&[0x30, 0x03, 0x30, 0x01, 0x00]).is_none());
    }

    #[test]
    fn spki_of_a_generated_certificate_is_its_public_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["relay.example".to_owned()]).unwrap().self_signed(&key).unwrap();
        assert_eq!(spki_of(cert.der()), Some(&key.public_key_der()[..]));
        let other = rcgen::CertificateParams::new(vec!["other.example".to_owned()]).unwrap().self_signed(&key).unwrap();
        assert_eq!(Pin::spki_sha256(cert.der()), Pin::spki_sha256(other.der()), "same key, same SPKI pin");
        assert_ne!(Pin::cert_sha256(cert.der()), Pin::cert_sha256(other.der()));
    }
}
