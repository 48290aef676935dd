//! One DTLS association with one peer, sans-IO: datagrams and `now` in,
//! datagrams to send, authenticated application data and a deadline out.
//!
//! The record layer, handshake retransmission, cookies and the replay
//! window are dimpl's; this layer adds the relay way of knowing a peer — its
//! certificate must match a configured [`Pin`] — and refuses to deliver
//! anything until it does.

use std::sync::Arc;
use std::time::Instant;

use dimpl::{Dtls, Output};
use sha2::{Digest, Sha256};

use super::config::{DtlsConfig, DtlsVersion};
use super::error::DtlsError;
use crate::tls::Pin;

/// What a session asks its driver to do.
#[derive(Debug)]
pub enum SessionEvent<'a> {
    /// Send this datagram to the peer.
    Transmit(&'a [u8]),
    /// Application data from the authenticated peer.
    Deliver(&'a [u8]),
}

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// The handshake is under way; nothing is delivered yet.
    Handshaking,
    /// The peer is authenticated; data flows both ways.
    Established,
    /// The session is over; [`DtlsSession::error`] says why.
    Closed,
}

/// One DTLS client or server association, sans-IO. See the module docs.
pub struct DtlsSession {
    dtls: Dtls,
    /// Pins the peer's certificate may match.
    pins: Vec<Pin>,
    /// Index in `pins` of the one the peer's certificate matched.
    matched: Option<usize>,
    connected: bool,
    error: Option<DtlsError>,
    deadline: Option<Instant>,
    out: Vec<u8>,
}

impl std::fmt::Debug for DtlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsSession")
            .field("state", &self.state())
            .field("matched", &self.matched)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl DtlsSession {
    /// A client that will accept only a server whose certificate matches
    /// `pin`. Its first [`handle_timeout`](Self::handle_timeout) sends the
    /// ClientHello.
    pub fn client(config: &DtlsConfig, pin: Pin, now: Instant) -> Result<Self, DtlsError> {
        Ok(Self::with_engine(config.engine_config()?, config, vec![pin], true, now))
    }

    /// A server that will accept a client whose certificate matches any of
    /// `pins`; [`peer_pin`](Self::peer_pin) tells which one did.
    pub fn server(config: &DtlsConfig, pins: Vec<Pin>, now: Instant) -> Result<Self, DtlsError> {
        Ok(Self::with_engine(config.engine_config()?, config, pins, false, now))
    }

    /// A session over an already built engine configuration (a link builds
    /// it once for all its sessions).
    pub(crate) fn with_engine(
        engine: Arc<dimpl::Config>,
        config: &DtlsConfig,
        pins: Vec<Pin>,
        client: bool,
        now: Instant,
    ) -> Self {
        let identity = dimpl::DtlsCertificate {
            certificate: config.identity.certificate.clone(),
            private_key: config.identity.private_key.clone(),
        };
        let mut dtls = match config.version {
            DtlsVersion::V1_2 => Dtls::new_12(engine, identity, now),
            DtlsVersion::V1_3 => Dtls::new_13(engine, identity, now),
            DtlsVersion::Auto => Dtls::new_auto(engine, identity, now),
        };
        if client {
            dtls.set_active(true);
        }
        Self {
            dtls,
            pins,
            matched: None,
            connected: false,
            error: None,
            // A client has its ClientHello to send at once.
            deadline: client.then_some(now),
            out: vec![0; 2048],
        }
    }

    /// Where the session is.
    pub fn state(&self) -> SessionState {
        if self.error.is_some() {
            SessionState::Closed
        } else if self.connected && self.matched.is_some() {
            SessionState::Established
        } else {
            SessionState::Handshaking
        }
    }

    /// True once the peer is authenticated and data may flow.
    pub fn is_established(&self) -> bool {
        self.state() == SessionState::Established
    }

    /// Why the session ended, once it has.
    pub fn error(&self) -> Option<&DtlsError> {
        self.error.as_ref()
    }

    /// Which of the session's pins the peer's certificate matched (an index
    /// into the pins it was made with), once it has.
    pub fn peer_pin(&self) -> Option<usize> {
        self.matched
    }

    /// The version negotiated, once known.
    pub fn version(&self) -> Option<DtlsVersion> {
        match self.dtls.protocol_version()? {
            dimpl::ProtocolVersion::DTLS1_2 => Some(DtlsVersion::V1_2),
            dimpl::ProtocolVersion::DTLS1_3 => Some(DtlsVersion::V1_3),
            _ => None,
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due (handshake
    /// retransmission), if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.error.is_some() { None } else { self.deadline }
    }

    /// Feeds one received datagram. Malformed, unauthenticated or replayed
    /// records are discarded inside; only a fatal error ends the session.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8], sink: &mut dyn FnMut(SessionEvent<'_>)) {
        if self.error.is_some() {
            return;
        }
        let result = self.dtls.handle_timeout(now).and_then(|()| self.dtls.handle_packet(datagram));
        self.after(result, sink);
    }

    /// Advances the clock: retransmits a handshake flight that is due, or
    /// fails a handshake that ran out of time.
    pub fn handle_timeout(&mut self, now: Instant, sink: &mut dyn FnMut(SessionEvent<'_>)) {
        if self.error.is_some() {
            return;
        }
        let result = self.dtls.handle_timeout(now);
        self.after(result, sink);
    }

    /// Sends `data` as one application record. Refused until the session is
    /// established, and after it ended.
    pub fn send(&mut self, data: &[u8], sink: &mut dyn FnMut(SessionEvent<'_>)) -> Result<(), DtlsError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if !self.is_established() {
            return Err(DtlsError::Protocol("the session is not established yet".into()));
        }
        let result = self.dtls.send_application_data(data).map(drop);
        self.after(result, sink);
        match &self.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Closes the session, with a close_notify if it was established.
    pub fn close(&mut self, sink: &mut dyn FnMut(SessionEvent<'_>)) {
        if self.error.is_some() {
            return;
        }
        let result = self.dtls.close();
        self.after(result, sink);
        self.fail(DtlsError::Closed);
    }

    fn fail(&mut self, error: DtlsError) {
        if self.error.is_none() {
            self.error = Some(error);
            self.deadline = None;
        }
    }

    /// Records a fatal engine error, or drains what the engine produced.
    fn after(&mut self, result: Result<(), dimpl::Error>, sink: &mut dyn FnMut(SessionEvent<'_>)) {
        match result {
            Ok(()) => self.drain(sink),
            Err(e) => self.fail(DtlsError::Protocol(e.to_string())),
        }
    }

    /// Takes every output of the engine up to its next timer.
    fn drain(&mut self, sink: &mut dyn FnMut(SessionEvent<'_>)) {
        let mut out = std::mem::take(&mut self.out);
        loop {
            match self.dtls.poll_output(&mut out) {
                Output::BufferTooSmall { needed } => {
                    out.resize(needed, 0);
                    continue;
                }
                Output::Timeout(at) => {
                    self.deadline = Some(at);
                    break;
                }
                // After a pin mismatch nothing more leaves or arrives.
                _ if self.error.is_some() => {}
                Output::Packet(datagram) => sink(SessionEvent::Transmit(datagram)),
                Output::PeerCert(der) => self.check_peer(der),
                Output::Connected => {
                    self.connected = true;
                    if self.matched.is_none() {
                        self.fail(DtlsError::NoPeerCertificate);
                    }
                }
                Output::ApplicationData(data) if self.is_established() => sink(SessionEvent::Deliver(data)),
                Output::ApplicationData(_) => {}
                Output::CloseNotify => self.fail(DtlsError::PeerClosed),
                _ => {}
            }
        }
        self.out = out;
        if matches!(self.error, Some(DtlsError::PinMismatch { .. })) {
            // Abort the handshake without a word to the impostor.
            let _ = self.dtls.close();
        }
    }

    fn check_peer(&mut self, der: &[u8]) {
        match self.pins.iter().position(|pin| pin.matches(der)) {
            Some(i) => self.matched = Some(i),
            None => {
                let presented = format!("certificate SHA-256 {}", crate::tls::hex(&Sha256::digest(der)));
                let accepted = self.pins.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ");
                self.fail(DtlsError::PinMismatch { presented, accepted });
            }
        }
    }
}
