//! The kernel's stack behind the [`NetStack`] trait.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use super::NetStack;
use super::api::delegate_socket_apis;

/// The operating system's TCP/IP stack, through std::net.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsStack;

impl NetStack for OsStack {
    type TcpStream = std::net::TcpStream;
    type TcpListener = std::net::TcpListener;
    type UdpSocket = std::net::UdpSocket;

    fn tcp_connect(&self, addr: SocketAddr) -> io::Result<Self::TcpStream> {
        std::net::TcpStream::connect(addr)
    }
    fn tcp_connect_timeout(&self, addr: SocketAddr, timeout: Duration) -> io::Result<Self::TcpStream> {
        std::net::TcpStream::connect_timeout(&addr, timeout)
    }
    fn tcp_listen(&self, addr: SocketAddr) -> io::Result<Self::TcpListener> {
        std::net::TcpListener::bind(addr)
    }
    fn udp_bind(&self, addr: SocketAddr) -> io::Result<Self::UdpSocket> {
        std::net::UdpSocket::bind(addr)
    }
}

delegate_socket_apis!(std::net::TcpStream, std::net::TcpListener, std::net::UdpSocket);
