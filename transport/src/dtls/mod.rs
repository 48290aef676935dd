//! The DTLS link: overlay IP packets in DTLS records over UDP, between peers
//! that know each other by certificate pin.
//!
//! ```text
//!   plebnet Stack (one TCP connection per circuit: TCP-over-DTLS)
//!        │ IP packets
//!   DtlsNic ── driver: kernel UDP socket, stack clock ↔ wall clock
//!        │
//!   DtlsLink ── sans-IO: peer table, sessions by address, who may speak
//!        │      loss repair: lost records repeated within a link round trip
//!        │
//!   DtlsSession ── sans-IO: one association; pins checked before delivery
//!        │
//!   dimpl ── DTLS 1.2/1.3 records, handshake retransmission, cookies,
//!            replay window
//! ```
//!
//! Why: over one TLS-over-TCP channel a lost segment stalls every circuit
//! behind it; over DTLS each circuit gets its own userspace TCP connection
//! and a loss stalls only its own (Reardon & Goldberg, "Improving Tor using a
//! TCP-over-DTLS Tunnel", USENIX Security 2009). The `circuits`
//! module puts both models behind one trait so they can be compared.
//!
//! [`DtlsSocket`] drives one session over a kernel socket as a blocking
//! datagram socket, which is also how plebnet talks to OpenSSL.

mod config;
mod error;
mod link;
mod nic;
mod repair;
mod session;
mod socket;
#[cfg(test)]
mod tests;

pub use config::{DtlsConfig, DtlsIdentity, DtlsVersion};
pub use error::DtlsError;
pub use link::{DtlsLink, DtlsLinkCounters, DtlsLinkLimits, DtlsPeer, LinkIo};
pub use nic::{DtlsNic, DtlsNicConfig, DtlsNicCounters, DtlsRx, DtlsTx};
pub use repair::{DEDUP_BITS, LinkRepair, MAX_KEPT};
pub use session::{DtlsSession, SessionEvent, SessionState};
pub use socket::DtlsSocket;
