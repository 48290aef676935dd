//! # plebnet-netstack — the bottom two layers of plebnet
//!
//! A userspace TCP/IP stack built on [smoltcp], run by one driver thread per
//! stack, over a virtual NIC.
//!
//! ```text
//!   TcpStream / TcpListener / UdpSocket / ping      (socket, std::net-like)
//!        │  lock Core briefly, copy bytes, ring the driver's doorbell
//!   Stack: Core { smoltcp Interface + sharded SocketSets, 4-tuple index, ports,
//!                 listeners, orphans, connection limits }
//!        │  polled only by the driver thread (stack::driver)
//!   StackDevice: loopback, ingress validation + drop counters, SYN guard
//!        │
//!   NIC (nic): MemLink │ UdpNic │ TunTapNic        middlewares: Impair, Capture
//! ```
//!
//! * One driver thread owns all NIC I/O and timers; it sleeps on the NIC's
//!   readiness, the next smoltcp deadline, or a wake-up from the API, and
//!   never spins.
//! * Application threads never poll smoltcp; they move bytes in and out of
//!   socket buffers under a short lock and wait on per-socket, per-direction
//!   events, so reading and writing one stream from two threads is safe and
//!   neither starves the other.
//! * Everything dropped anywhere is counted by reason ([`Stack::counters`]).
//!
//! Relay code normally reaches this crate through the `plebnet` crate's
//! `net` module and its `NetStack` trait.
#![deny(unsafe_code)]

pub mod nic;
pub mod rng;
mod socket;
mod stack;
pub mod stats;
mod sys;
pub mod wake;

pub use smoltcp;
pub use socket::{Incoming, TcpListener, TcpStream, UdpSocket};
pub use stack::{Cidr, CidrParseError, PortError, Route, Stack, StackConfig, StackError, TcpBuffers, TcpSocketInfo};
