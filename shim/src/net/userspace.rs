//! A plebnet userspace stack behind the [`NetStack`] trait.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use plebnet_netstack::{Stack, TcpListener, TcpStream, UdpSocket};

use super::NetStack;
use super::api::delegate_socket_apis;

impl NetStack for Stack {
    type TcpStream = TcpStream;
    type TcpListener = TcpListener;
    type UdpSocket = UdpSocket;

    fn tcp_connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        TcpStream::connect(self, addr)
    }
    fn tcp_connect_timeout(&self, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        TcpStream::connect_timeout(self, addr, timeout)
    }
    fn tcp_listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        TcpListener::bind(self, addr)
    }
    fn udp_bind(&self, addr: SocketAddr) -> io::Result<UdpSocket> {
        UdpSocket::bind(self, addr)
    }
}

delegate_socket_apis!(TcpStream, TcpListener, UdpSocket);
