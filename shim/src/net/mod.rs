//! std::net-like sockets, and the [`NetStack`] trait that lets relay code run
//! over the kernel or over plebnet.

mod api;
mod os;
mod userspace;

pub use api::{NetStack, TcpListenerApi, TcpStreamApi, UdpSocketApi};
pub use os::OsStack;
pub use plebnet_netstack::{Cidr, Stack, StackConfig, TcpBuffers, TcpListener, TcpStream, UdpSocket};
