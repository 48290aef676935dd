//! The only place in `plebnet-netstack` that talks to the operating system
//! through `unsafe` FFI.
//!
//! Contract for everything in here: each function is a thin, safe wrapper over
//! one system call; it never keeps raw pointers beyond the call, it converts
//! `-1` returns into [`std::io::Error::last_os_error`], and it retries on
//! `EINTR` where the call is idempotent. The one exception is
//! [`mapping::Mapping`], which owns a memory mapping: handing out its bytes
//! is `unsafe`, with the contract on each function.
#![allow(unsafe_code)]

mod eventfd;
pub(crate) mod mapping;
mod poll;
pub(crate) mod tun;
pub(crate) mod udp;

pub(crate) use eventfd::EventFd;
pub(crate) use poll::wait_ready;
