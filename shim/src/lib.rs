//! # plebnet — the socket API that relay code imports
//!
//! ```text
//!   relay code ── plebnet::net::{NetStack, TcpStream, TcpListener, UdpSocket}
//!                    │                          │
//!                 OsStack (std::net, kernel)   plebnet_netstack::Stack (userspace)
//! ```
//!
//! Code written against [`net::NetStack`] runs unchanged on the kernel's
//! stack ([`net::OsStack`]) or on a plebnet userspace stack
//! ([`net::Stack`]); the same test suite passes on both. The LD_PRELOAD
//! library for unmodified programs will live beside this crate (`shim/`).
#![forbid(unsafe_code)]

pub mod config;
pub mod net;
pub mod node;

pub use plebnet_netstack as netstack;
