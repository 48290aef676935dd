//! # plebnet-transport — the protocol layer above the stack
//!
//! ```text
//!   relay code
//!      │
//!   transport/  Tor-style cells ─ TLS cell streams ─ multipath tunnels ─ DTLS link
//!      │              (sans-IO cores: bytes and `now` in, bytes and deadlines out)
//!   plebnet-netstack (TcpStream / UdpSocket over a userspace stack)
//! ```
//!
//! Every protocol state machine here will be sans-IO, after quinn-proto: it
//! takes the current time and received bytes as arguments and returns bytes
//! to send and its next deadline; it never reads a clock or touches a socket.
//! One driver per stack owns the I/O.
//!
//! Status: the Tor-style cell codec exists ([`cell`]: fixed- and
//! variable-length cells, an incremental decoder and an encoder into caller
//! buffers) and so do TLS cell streams ([`tls`]: cells over rustls over any
//! `TcpStreamApi` socket, split into a reader and a writer for two threads,
//! with certificate pinning; a blocking driver around rustls's sans-IO
//! connection), and so do cell channels ([`channel`]: many
//! circuits multiplexed by circuit ID over one TLS cell stream, a demux thread routing cells into bounded
//! per-circuit queues, an overflowing circuit closed alone) and multipath tunnels ([`multipath`]: a sans-IO
//! conflux core with tunnel-level streams, acknowledgement and reinjection, a bounded reorder queue and
//! responder-side joining, and a threaded driver over TLS cell streams), and the DTLS link ([`dtls`]: overlay IP
//! packets in DTLS records between peers known by certificate pin; a NIC for a plebnet stack, so every TCP
//! connection across it is TCP-over-DTLS).
#![forbid(unsafe_code)]

pub mod cell;
pub mod channel;
pub mod circuits;
pub mod dtls;
pub mod multipath;
pub mod tls;
