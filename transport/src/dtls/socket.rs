//! DtlsSocket: one DTLS session over a kernel UDP socket, blocking — a
//! datagram socket whose peer is authenticated by pin. The driver of a
//! single [`DtlsSession`]; useful on its own and to talk to other DTLS
//! implementations (OpenSSL's `s_server`/`s_client` in the interop tests).

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::config::{DtlsConfig, DtlsVersion};
use super::link::is_client_hello;
use super::session::{DtlsSession, SessionEvent, SessionState};
use crate::tls::Pin;

/// A blocking DTLS datagram socket with one authenticated peer.
#[derive(Debug)]
pub struct DtlsSocket {
    socket: UdpSocket,
    peer: SocketAddr,
    session: DtlsSession,
    inbox: VecDeque<Vec<u8>>,
    buf: Vec<u8>,
}

impl DtlsSocket {
    /// Handshakes as a client with the server at `peer`, which must present
    /// a certificate matching `pin`; gives up after `timeout`.
    pub fn connect(
        socket: UdpSocket,
        peer: SocketAddr,
        config: &DtlsConfig,
        pin: Pin,
        timeout: Duration,
    ) -> io::Result<Self> {
        let session = DtlsSession::client(config, pin, Instant::now())?;
        let mut this = Self { socket, peer, session, inbox: VecDeque::new(), buf: vec![0; 65_535] };
        this.socket.set_nonblocking(false)?;
        this.handshake(Instant::now() + timeout)?;
        Ok(this)
    }

    /// Waits (up to `timeout`) for a client's ClientHello on `socket` and
    /// handshakes with it; the client must present a certificate matching
    /// one of `pins`. Datagrams from other addresses are ignored.
    pub fn accept(socket: UdpSocket, config: &DtlsConfig, pins: Vec<Pin>, timeout: Duration) -> io::Result<Self> {
        let deadline = Instant::now() + timeout;
        socket.set_nonblocking(false)?;
        let mut buf = vec![0; 65_535];
        let (len, peer) = loop {
            socket.set_read_timeout(Some(remaining(deadline)?))?;
            let (len, from) = socket.recv_from(&mut buf).map_err(timed_out)?;
            if is_client_hello(&buf[..len]) {
                break (len, from);
            }
        };
        let session = DtlsSession::server(config, pins, Instant::now())?;
        let mut this = Self { socket, peer, session, inbox: VecDeque::new(), buf };
        let hello = this.buf[..len].to_vec();
        this.feed(&hello);
        this.handshake(deadline)?;
        Ok(this)
    }

    /// The peer's underlay address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The DTLS version negotiated.
    pub fn version(&self) -> Option<DtlsVersion> {
        self.session.version()
    }

    /// Sends `data` as one record.
    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let (socket, peer) = (&self.socket, self.peer);
        let mut failed = None;
        self.session.send(data, &mut |e| {
            if let SessionEvent::Transmit(d) = e
                && let Err(err) = socket.send_to(d, peer)
            {
                failed = Some(err);
            }
        })?;
        failed.map_or(Ok(()), Err)
    }

    /// The next record from the peer, waiting up to `timeout` (forever if
    /// `None`). `TimedOut` when none came; an error once the session ended
    /// (`ConnectionReset` when the peer closed it).
    pub fn recv(&mut self, timeout: Option<Duration>) -> io::Result<Vec<u8>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(data) = self.inbox.pop_front() {
                return Ok(data);
            }
            if let Some(e) = self.session.error() {
                return Err(e.clone().into());
            }
            self.wait(deadline)?;
        }
    }

    /// Closes the session with a close_notify.
    pub fn close(&mut self) {
        let (socket, peer) = (&self.socket, self.peer);
        self.session.close(&mut |e| {
            if let SessionEvent::Transmit(d) = e {
                let _ = socket.send_to(d, peer);
            }
        });
    }

    fn handshake(&mut self, deadline: Instant) -> io::Result<()> {
        loop {
            match self.session.state() {
                SessionState::Established => return Ok(()),
                SessionState::Closed => {
                    return Err(self.session.error().cloned().expect("closed with a reason").into());
                }
                SessionState::Handshaking => self.wait(Some(deadline))?,
            }
        }
    }

    /// Services the session's timer, then waits for one datagram from the
    /// peer until the timer or `deadline`.
    fn wait(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        let now = Instant::now();
        if self.session.poll_timeout().is_some_and(|t| t <= now) {
            let (socket, peer, inbox) = (&self.socket, self.peer, &mut self.inbox);
            self.session.handle_timeout(now, &mut |e| route(e, socket, peer, inbox));
            return Ok(());
        }
        let until = [self.session.poll_timeout(), deadline].into_iter().flatten().min();
        let wait = match until {
            Some(t) if deadline == Some(t) => remaining(t)?,
            Some(t) => t.saturating_duration_since(now).max(Duration::from_millis(1)),
            None => Duration::from_secs(3600),
        };
        self.socket.set_read_timeout(Some(wait))?;
        match self.socket.recv_from(&mut self.buf) {
            Ok((len, from)) if from == self.peer => {
                let datagram = self.buf[..len].to_vec();
                self.feed(&datagram);
            }
            Ok(_) => {} // not our peer: ignored
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
        Ok(())
    }

    fn feed(&mut self, datagram: &[u8]) {
        let (socket, peer, inbox) = (&self.socket, self.peer, &mut self.inbox);
        self.session.handle_datagram(Instant::now(), datagram, &mut |e| route(e, socket, peer, inbox));
    }
}

fn route(event: SessionEvent<'_>, socket: &UdpSocket, peer: SocketAddr, inbox: &mut VecDeque<Vec<u8>>) {
    match event {
        SessionEvent::Transmit(d) => {
            if let Err(e) = socket.send_to(d, peer) {
                log::debug!("dtls socket: send to {peer} failed: {e}");
            }
        }
        SessionEvent::Deliver(data) => inbox.push_back(data.to_vec()),
    }
}

/// Time left until `deadline`, or `TimedOut` if none.
fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "DTLS: timed out"));
    }
    Ok(left)
}

fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::new(io::ErrorKind::TimedOut, "DTLS: timed out waiting for a ClientHello")
    } else {
        e
    }
}
