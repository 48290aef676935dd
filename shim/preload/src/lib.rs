//! # libplebnet_preload.so — unmodified programs on a plebnet stack
//!
//! ```text
//!   program ── socket/connect/bind/listen/accept/sendto/… ──▶ this library (LD_PRELOAD)
//!      │  read/write/poll/epoll/select/sendfile/fcntl/…            │ routing policy
//!      ▼  (no interposition: real kernel descriptors)              ▼
//!   kernel Unix socket ◀── pump threads ──▶ plebnet TcpStream / UdpSocket ──▶ stack ──▶ UdpNic/tap/tun
//! ```
//!
//! `plebnet run [--config FILE | flags] -- CMD ARGS…` sets `LD_PRELOAD`
//! and the configuration (`PLEBNET_CONFIG` or `PLEBNET_CONFIG_TOML`) and
//! execs the program. At the program's first INET socket the library
//! starts the configuration's interfaces (a [`plebnet::node::Node`]
//! without services) in the process.
//!
//! Every descriptor the program sees is a real kernel descriptor. An INET
//! socket starts as a kernel socket; when `bind`/`connect`/`listen`/
//! `sendto` decide it belongs to plebnet (overlay prefixes; see
//! docs/shim.md for the policy and strict mode), the library puts one end
//! of a Unix socket pair at that descriptor number with `dup3` and pumps
//! bytes between the other end and the plebnet socket. Everything that
//! only moves bytes or waits — read/write/readv/writev/send/recv/sendfile,
//! poll/select/epoll, fcntl/ioctl, fork — then works on the kernel
//! descriptor unchanged, and kernel and plebnet descriptors mix in one
//! wait. The library interposes only what needs plebnet's knowledge:
//! addresses, options, accept, connect, datagram addresses and names.
//!
//! Modules: [`ffi`](crate) exports the C functions (the only place with
//! `#[no_mangle]`), `calls` decides per call, `tcp`/`udp` build the
//! socket pairs and pumps, `table` tracks descriptors, `runtime` holds the
//! configuration, stacks and routing policy, `sys` the real libc.

mod addr;
mod calls;
mod ffi;
mod names;
mod opts;
mod runtime;
mod sys;
mod table;
mod tcp;
mod udp;

pub use ffi::*;
pub use runtime::{ENV_CONFIG, ENV_CONFIG_TOML, ENV_LOG, ENV_STRICT};
