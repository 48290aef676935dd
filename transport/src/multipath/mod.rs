//! Multipath tunnels: Tor's conflux (proposal 329) with what it lacks — streams held by the tunnel, a
//! responder that joins legs arriving separately, data-level acknowledgements and reinjection so a dying leg
//! loses nothing, and a bounded reorder queue.
//!
//! ```text
//!   application streams (BEGIN / CONNECTED / DATA / END, SENDME credit per stream)
//!             │  one sequence space for the whole tunnel
//!   TunnelCore (sans-IO): scheduler ─▶ per-leg queues ─▶ SEQ / SWITCH / RESEND cells
//!             │                        ◀─ DATA_ACK (cumulative + per leg) frees and measures
//!             │                        ◀─ reorder queue (bounded) ─▶ in-order delivery to streams
//!   leg 1 ─ cell stream (TLS over TCP, path 1)   leg 2 ─ cell stream (path 2)   ...
//! ```
//!
//! * **One sequence space.** Every tunnel-level message (stream data and control) gets the next sequence
//!   number and may travel on any leg; the receiver delivers in sequence order whichever leg brought each
//!   message, so a stream opened on one leg keeps working when its data moves to another (the bug arti's
//!   conflux has, see seed 000). On a leg the number is implicit (previous + 1); SWITCH skips ahead, RESEND
//!   carries an explicit number for a reinjected copy.
//! * **Nothing lost.** The receiver acknowledges with DATA_ACK both the highest number it has in order
//!   (which frees the sender's copies) and how many cells each leg brought (which frees that leg's window and
//!   measures its RTT). When a leg dies, or is silent with data outstanding for max(200 ms, 3 × RTT), every
//!   cell it carried that the peer has not confirmed is put on the best other leg. Copies that arrive twice
//!   are dropped by number, so nothing is delivered twice.
//! * **Bounded reordering.** The sender never has more than [`TunnelConfig::reorder_limit`] bytes outstanding
//!   beyond the receiver's in-order point, so the receiver's reorder queue never holds more; a peer that
//!   ignores this loses its leg with [`ProtocolError::ReorderOverflow`]. Streams have their own windows
//!   (SENDME credit), so a slow reader holds back only its stream.
//! * **Joining.** Each leg does LINK → LINKED → LINKED_ACK (measuring its RTT); LINK names the tunnel by a
//!   32-byte nonce and says whether it creates or joins it. The [`Joiner`] on the responder side matches legs
//!   arriving on any address or NIC, in any order, to their tunnel.
//! * **Hostile cells** (SWITCH 0, two SWITCHes in a row, a jump beyond the window, LINKED twice, an unknown or
//!   reused nonce) close or refuse that leg alone, with a [`ProtocolError`] that says which rule broke.
//!
//! [`TunnelCore`] is the sans-IO state machine; [`driver`] runs it over real cell streams; [`NodeMultipath`]
//! gives a plebnet node (`plebnet node`) its `mp@` forwards and responders.

mod config;
mod connect;
mod core;
pub mod driver;
mod error;
mod join;
mod leg;
mod node;
mod stream;
pub mod wire;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use config::{LegOptions, Scheduler, TunnelConfig};
pub use core::{Role, TunnelCore, TunnelEvent, TunnelStats};
pub use error::{ProtocolError, TunnelError};
pub use join::{JoinDecision, Joiner};
pub use leg::{LegId, LegState, LegStats};
pub use node::NodeMultipath;
